//! `HubhookService` and each of its `Endpoint`s as a `tower::Service`, for axum and hyper
//! stacks. Both are always ready and never fail: every problem is an HTTP status.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;

use crate::service::Endpoint;
use crate::HubhookService;

/// `tower::Service` for a cheaply cloned type with an `async fn respond(&self, Request<B>)`.
macro_rules! responds_as_tower_service {
    ($($service:ty),+) => {$(
        impl<B> tower::Service<Request<B>> for $service
        where
            B: Body<Data = Bytes> + Send + 'static,
            B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        {
            type Response = Response<Full<Bytes>>;
            type Error = Infallible;
            type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: Request<B>) -> Self::Future {
                let service = self.clone();
                Box::pin(async move { Ok(service.respond(req).await) })
            }
        }
    )+};
}

// The whole service (it routes by path), and one endpoint (mounted at a path of the
// stack's choosing).
responds_as_tower_service!(HubhookService, Endpoint);
