//! Receive container-registry webhooks and act on them.
//!
//! A registry (Docker Hub, a self-hosted registry) POSTs a webhook when an image is pushed.
//! hubhook-core authenticates it, decodes it into a [`HubMessage`], answers `202 Accepted`
//! at once and runs your [`Handler`]s in the background: redeploy a container, run a
//! script, log a line.
//!
//! # Example
//!
//! A listener on a free port with one handler, shut down again after one request:
//!
//! ```
//! use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
//! use hubhook_core::{HubhookService, Listener, Route};
//!
//! struct Redeploy;
//!
//! #[async_trait]
//! impl Handler for Redeploy {
//!     fn name(&self) -> &str {
//!         "redeploy"
//!     }
//!
//!     async fn handle(&self, msg: &HubMessage, _ctx: &Context) -> Result<Outcome, HandlerError> {
//!         // `msg.image()` is checked against the image-reference grammar: safe in an argv.
//!         Ok(Outcome::new(format!("would deploy {}", msg.image())))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = HubhookService::builder()
//!     .path("/hubhook")
//!     .api_key("change-me-to-something-long")
//!     .route(Route::new(Redeploy).repo("acme/*").tag("latest"))
//!     .build()?;
//! let listener = Listener::builder(service)
//!     .addr("127.0.0.1:0".parse()?)
//!     .bind()
//!     .await?;
//! let url = format!("http://{}/hubhook?apikey=change-me-to-something-long", listener.local_addr());
//! let stop = listener.shutdown_handle();
//! let server = tokio::spawn(listener.serve());
//! // ... Docker Hub (or `hubhook send`) posts to `url` ...
//! # let _ = url;
//! stop.shutdown();
//! server.await??;
//! # Ok(())
//! # }
//! ```
//!
//! # The HTTP contract
//!
#![doc = include_str!("../../docs/HTTP.md")]
//!
//! # Features
//!
//! - `tls` (default): HTTPS through rustls with the `ring` provider ([`TlsConfig`]).
//! - `tower`: [`HubhookService`] and each of its [`Endpoint`]s (a hook, the health check,
//!   the metrics) implement `tower::Service`, to mount them in axum or any tower stack.
//! - `plugin`: handler plugins as dynamic libraries, through a small C ABI: load them with
//!   [`plugin::PluginHandler`], write them in Rust with [`export_plugin!`] (see
//!   `docs/PLUGINS.md`).
//! - `journal`: the durable delivery journal ([`journal::Journal`], SQLite): every
//!   accepted delivery on disk before its 2xx, every attempt recorded, unfinished
//!   deliveries resumed by [`HubhookService::recover`], history read by
//!   [`journal::History`].
//! - `callback`: answer Docker Hub's `callback_url` over HTTPS, to allowlisted hosts only
//!   ([`callback::Callbacks`]).
//!
//! Every handler has a queue ([`Route`]): one run per coalescing key ([`Coalesce`]) at a
//! time, latest wins, `max_concurrency`, `max_queued`, a timeout and retries with
//! jittered exponential backoff.

#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod auth;
#[cfg(feature = "callback")]
pub mod callback;
pub mod client;
pub mod dispatch;
mod error;
mod handler;
#[cfg(feature = "journal")]
pub mod journal;
pub mod listener;
pub mod message;
mod metrics;
#[cfg(feature = "notify")]
pub mod notify;
mod observe;
#[cfg(feature = "plugin")]
pub mod plugin;
mod provider;
pub mod reference;
pub mod service;
#[cfg(feature = "tls")]
pub mod tls;

pub use async_trait::async_trait;

// The README's example must compile.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
pub use dispatch::{Coalesce, Pattern, Route};
pub use error::Error;
pub use handler::{Context, DeliveryId, Handler, HandlerError, InvalidDeliveryId, Outcome};
pub use listener::{Listener, ListenerBuilder, ShutdownHandle};
pub use message::{HubMessage, MessageError, PushData, Repository};
pub use observe::{DeliveryStatus, RunStatus, UnknownStatus};
pub use provider::{Generic, Provider};
pub use service::{Endpoint, Hook, HubhookService, HubhookServiceBuilder, Recovery, ReplayError};
#[cfg(feature = "tls")]
pub use tls::TlsConfig;
