//! The service's endpoints as values of their own, for stacks that route by path
//! themselves (axum, tower): each hook, the health check and the metrics.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;

use super::{HubhookService, HEALTH_PATH, METRICS_PATH};

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    /// The hook at this index of the service's hooks.
    Hook(usize),
    Health,
    Metrics,
}

/// One endpoint of a [`HubhookService`]: one hook, the health check or the metrics. It
/// answers every request it is given as that endpoint, whatever the request's path, so a
/// router that mounts it writes the path once. With the `tower` feature it is a
/// `tower::Service`.
///
/// ```
/// # use hubhook_core::{Hook, HubhookService, Provider};
/// let service = HubhookService::builder()
///     .hook(Hook::new("/hooks/registry", Provider::Registry).api_key("a-long-random-key"))
///     .hook(Hook::new("/hooks/ci", Provider::Registry).api_key("a-long-random-key"))
///     .build()?;
/// let paths: Vec<String> = service.hook_endpoints().iter().map(|e| e.path().to_owned()).collect();
/// assert_eq!(paths, ["/hooks/registry", "/hooks/ci"]);
/// # Ok::<(), hubhook_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Endpoint {
    service: HubhookService,
    which: Which,
}

impl Endpoint {
    /// The path the service's own router answers this endpoint at: the hook's path,
    /// `/healthz` or `/metrics`. Mount it there to keep one path per endpoint.
    pub fn path(&self) -> &str {
        match self.which {
            Which::Hook(i) => &self.service.inner.hooks[i].hook.path,
            Which::Health => HEALTH_PATH,
            Which::Metrics => METRICS_PATH,
        }
    }

    /// Answers one request as this endpoint. Never fails: every problem is an HTTP status.
    pub async fn respond<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let response = self.service.answer(self.which, req).await;
        self.service.counted(response)
    }
}

impl HubhookService {
    /// Each hook as an [`Endpoint`], in the order they were added.
    pub fn hook_endpoints(&self) -> Vec<Endpoint> {
        (0..self.inner.hooks.len())
            .map(|i| self.endpoint(Which::Hook(i)))
            .collect()
    }

    /// The health check as an [`Endpoint`]: 200 `ok` to GET and HEAD.
    pub fn health_endpoint(&self) -> Endpoint {
        self.endpoint(Which::Health)
    }

    /// The metrics as an [`Endpoint`]: the Prometheus text format to GET and HEAD.
    pub fn metrics_endpoint(&self) -> Endpoint {
        self.endpoint(Which::Metrics)
    }

    fn endpoint(&self, which: Which) -> Endpoint {
        Endpoint {
            service: self.clone(),
            which,
        }
    }
}
