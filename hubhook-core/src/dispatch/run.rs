//! One attempt of a handler: its timeout, its cancellation, and its panics caught.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::handler::{panic_message, Context, Handler, HandlerError, Outcome};
use crate::HubMessage;

/// How long a handler gets to clean up (kill children, roll back) once told to stop.
pub(crate) const CLEANUP: Duration = Duration::from_secs(5);

pub(crate) async fn run(
    handler: &dyn Handler,
    msg: &HubMessage,
    ctx: &Context,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Result<Outcome, HandlerError> {
    let mut work = CatchUnwind(handler.handle(msg, ctx));
    let stop = async {
        match timeout {
            Some(limit) => tokio::select! {
                () = tokio::time::sleep(limit) => HandlerError::Timeout(limit),
                () = cancel.cancelled() => HandlerError::Cancelled,
            },
            None => {
                cancel.cancelled().await;
                HandlerError::Cancelled
            }
        }
    };
    tokio::select! {
        result = &mut work => result,
        reason = stop => {
            // Tell the handler through its context, then give it a moment to clean up
            // before it is dropped mid-flight. The run counts as stopped either way.
            cancel.cancel();
            let _ = tokio::time::timeout(CLEANUP, &mut work).await;
            Err(reason)
        }
    }
}

/// Turns a panic inside the wrapped future into `HandlerError::Panicked`.
struct CatchUnwind<F>(F);

impl<F> Future for CatchUnwind<Pin<Box<F>>>
where
    F: Future<Output = Result<Outcome, HandlerError>> + ?Sized,
{
    type Output = Result<Outcome, HandlerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(HandlerError::Panicked(panic_message(&*payload)))),
        }
    }
}
