//! Built-in handlers for [hubhook-core](hubhook_core): what most deployments need without
//! writing code.
//!
//! - [`LogHandler`]: one line per pushed image, as text or JSON.
//! - [`ShellHandler`]: runs a program with the payload in its environment and on stdin.
//! - [`DockerHandler`]: redeploys a container (pull, swap, health gate, rollback) or a
//!   Swarm service through the `docker` CLI.
//! - [`ComposeHandler`]: redeploys services of a Docker Compose project through Compose
//!   (pull, `up -d --no-deps`, health gate, rollback).
//!
//! ```
//! use hubhook_core::HubhookService;
//! use hubhook_handlers::{LogFormat, LogHandler};
//!
//! let service = HubhookService::builder()
//!     .api_key("secret")
//!     .handler(LogHandler::new("log").format(LogFormat::Json))
//!     .build()?;
//! # Ok::<(), hubhook_core::Error>(())
//! ```

#![deny(unsafe_code)]

mod docker;
mod log;
mod shell;

pub use docker::{
    BlueGreen, ComposeError, ComposeHandler, DockerError, DockerHandler, Health,
    DEFAULT_STEP_TIMEOUT,
};
pub use log::{LogFormat, LogHandler};
pub use shell::{ShellError, ShellHandler, DEFAULT_OUTPUT_TAIL};
