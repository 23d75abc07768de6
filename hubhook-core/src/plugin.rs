//! Handler plugins: a small, versioned C ABI, the host that loads it, and the Rust side
//! that exports it. This module is the only place in the crate with `unsafe` code.
//!
//! Rust trait objects and tokio's thread-locals do not cross a `dlopen` boundary safely, so
//! nothing Rust-specific does. A plugin library exports one function,
//! [`hubhook_plugin_v1`](SYMBOL), returning a pointer to a [`PluginTable`]. Only borrowed
//! `(ptr, len)` byte strings ([`HhStr`]) cross; text coming back (an outcome, an error) is
//! written through a host callback ([`HhSink`]) that copies it, so neither side ever frees
//! the other's memory. The table starts with its own size and ABI version, which the host
//! checks before reading anything else; later versions may only append fields.
//!
//! - Writing a plugin in Rust: implement [`Handler`] and [`Plugin`] and call
//!   [`export_plugin!`](crate::export_plugin). Panics are caught at the boundary; the
//!   handler runs on a tokio runtime the plugin owns.
//! - Writing one in C: `hubhook_plugin.h` at the root of the repository.
//! - Loading one: [`PluginHandler::load`].
//!
//! The calls, and what each side promises:
//!
//! | call | host promises | plugin promises |
//! |---|---|---|
//! | `init(config, error)` | `config` is JSON, valid during the call | returns a state pointer, or null after writing why to `error` |
//! | `handle(state, delivery, out)` | may call from several threads at once, on blocking threads | thread-safe; writes a summary (ok) or the reason (otherwise) to `out`; returns a status |
//! | `destroy(state)` | called once, after every `handle` returned | frees the state |
//!
//! The library is never unloaded: a call that timed out may still be running in it.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Context, Handler, HandlerError, HubMessage, Outcome};

/// The ABI version this build speaks.
pub const ABI_VERSION: u32 = 1;
/// The symbol a plugin library exports: `const PluginTable *hubhook_plugin_v1(void)`.
pub const SYMBOL: &str = "hubhook_plugin_v1";

/// `handle` succeeded; `out` holds a one-line summary.
pub const STATUS_OK: i32 = 0;
/// `handle` failed; `out` says why.
pub const STATUS_ERROR: i32 = 1;
/// The delivery JSON could not be read; `out` says why.
pub const STATUS_BAD_INPUT: i32 = 2;
/// The handler panicked; `out` holds the panic message.
pub const STATUS_PANIC: i32 = 3;

/// Most bytes the host keeps from one sink.
const SINK_LIMIT: usize = 64 * 1024;

/// A borrowed byte string: `len` bytes at `ptr`, valid for the duration of the call that
/// passes it (for the table's `name` and `version`, for the life of the library).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HhStr {
    /// The first byte; may be null when `len` is 0.
    pub ptr: *const u8,
    /// The number of bytes.
    pub len: usize,
}

impl HhStr {
    /// A string borrowing `bytes`.
    pub const fn new(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// Views the bytes.
    ///
    /// # Safety
    ///
    /// `ptr` must point to `len` readable bytes that stay valid and unchanged for `'a`
    /// (or `len` must be 0).
    pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            return &[];
        }
        // SAFETY: the caller guarantees `len` readable bytes at `ptr` for 'a; null and
        // empty were handled above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A callback the host passes for text coming back: the plugin calls `write` (any number
/// of times) and the host copies the bytes before it returns.
#[repr(C)]
#[derive(Debug)]
pub struct HhSink {
    /// The host's context; pass it back unchanged.
    pub ctx: *mut c_void,
    /// Appends `text` to what the host collects.
    pub write: unsafe extern "C" fn(ctx: *mut c_void, text: HhStr),
}

impl HhSink {
    /// Writes `text` through the sink.
    pub fn write_str(&self, text: &str) {
        // SAFETY: `write` and `ctx` came together from the host, which keeps `ctx` valid
        // for the call this sink was passed to; `text` is valid for this call.
        unsafe { (self.write)(self.ctx, HhStr::new(text.as_bytes())) }
    }
}

/// The function table a plugin exports. Fields are only ever appended in later ABI
/// versions; `size` tells the host how much of it the plugin knows.
#[repr(C)]
#[derive(Debug)]
pub struct PluginTable {
    /// `sizeof(PluginTable)` as the plugin was built.
    pub size: usize,
    /// [`ABI_VERSION`] as the plugin was built.
    pub abi_version: u32,
    /// The plugin's name (static).
    pub name: HhStr,
    /// The plugin's version (static).
    pub version: HhStr,
    /// Builds the plugin's state from its JSON configuration; null on failure.
    pub init: unsafe extern "C" fn(config: HhStr, error: HhSink) -> *mut c_void,
    /// Handles one delivery (`{"delivery", "attempt", "message"}` as JSON).
    pub handle: unsafe extern "C" fn(state: *mut c_void, delivery: HhStr, out: HhSink) -> i32,
    /// Frees the state.
    pub destroy: unsafe extern "C" fn(state: *mut c_void),
}

// SAFETY: a table holds function pointers and pointers to immutable static strings; the
// plugin promises (see the module docs) that all of them may be used from any thread.
unsafe impl Sync for PluginTable {}
// SAFETY: as above.
unsafe impl Send for PluginTable {}

/// Why a plugin could not be loaded or started. Every variant names the library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The library file could not be opened (missing, not a library, wrong architecture).
    #[error("plugin {path}: cannot load the library: {reason}")]
    Open {
        /// The library.
        path: PathBuf,
        /// The loader's reason.
        reason: String,
    },
    /// The library does not export `hubhook_plugin_v1`.
    #[error("plugin {path}: no `hubhook_plugin_v1` symbol: it is not a hubhook plugin, or was built for another ABI version")]
    NoSymbol {
        /// The library.
        path: PathBuf,
    },
    /// `hubhook_plugin_v1` returned null.
    #[error("plugin {path}: hubhook_plugin_v1 returned no table")]
    NoTable {
        /// The library.
        path: PathBuf,
    },
    /// The table speaks another ABI version.
    #[error("plugin {path}: ABI version {found}, this hubhook speaks version {expected}; rebuild the plugin against this hubhook")]
    AbiVersion {
        /// The library.
        path: PathBuf,
        /// The version in its table.
        found: u32,
        /// [`ABI_VERSION`].
        expected: u32,
    },
    /// The table is smaller than this ABI version's.
    #[error("plugin {path}: its table is {size} bytes, version {ABI_VERSION} needs {expected}; rebuild the plugin against this hubhook")]
    TableSize {
        /// The library.
        path: PathBuf,
        /// The size it declares.
        size: usize,
        /// `size_of::<PluginTable>()`.
        expected: usize,
    },
    /// `init` refused the configuration.
    #[error("plugin {path}: init failed: {reason}")]
    Init {
        /// The library.
        path: PathBuf,
        /// What the plugin said.
        reason: String,
    },
}

/// The host side: a plugin library loaded and initialised, usable as a [`Handler`].
///
/// ```no_run
/// use hubhook_core::{plugin::PluginHandler, Route};
///
/// let notify = PluginHandler::load("/usr/lib/hubhook/libnotify.so", &serde_json::json!({
///     "url": "http://127.0.0.1:9000/hooks",
/// }))?
/// .with_name("notify");
/// let route = Route::new(notify);
/// # Ok::<(), hubhook_core::plugin::PluginError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PluginHandler {
    name: String,
    plugin: String,
    version: String,
    instance: Arc<Instance>,
    calls: Arc<tokio::sync::Semaphore>,
}

/// Calls of one plugin that may run at once. A call past its timeout keeps its thread until
/// it returns; the bound keeps a hung plugin from taking every blocking thread of the
/// process (and with them everything else that needs one).
const MAX_CALLS: usize = 16;

/// An initialised plugin state; destroyed when the last user (a handler clone or a call
/// still running on a blocking thread) lets go of it.
#[derive(Debug)]
struct Instance {
    path: PathBuf,
    table: &'static PluginTable,
    state: *mut c_void,
}

// SAFETY: the plugin promises its state may be used from any thread, concurrently (see
// the module docs); the pointer itself is only handed back to the plugin.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: `state` came from this table's `init`, is non-null, and this is its one
        // and only destroy: the Arc guarantees no `handle` call is still using it.
        unsafe { (self.table.destroy)(self.state) }
    }
}

impl PluginHandler {
    /// Loads the library at `path`, checks its table, and initialises it with `config`.
    /// The handler is named after the plugin until [`with_name`](Self::with_name).
    pub fn load(path: impl AsRef<Path>, config: &serde_json::Value) -> Result<Self, PluginError> {
        let path = path.as_ref().to_owned();
        // SAFETY: loading a library runs its initialisers. That is the point of a plugin:
        // the operator chose this file. The library is leaked below and never unloaded,
        // so nothing taken from it can dangle.
        let library =
            unsafe { libloading::Library::new(&path) }.map_err(|e| PluginError::Open {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let library: &'static libloading::Library = Box::leak(Box::new(library));
        type Entry = unsafe extern "C" fn() -> *const PluginTable;
        // SAFETY: the symbol's type is fixed by the ABI this module defines; a library that
        // exports the name with another type breaks the contract it claims to follow.
        let entry: libloading::Symbol<'static, Entry> =
            unsafe { library.get(SYMBOL.as_bytes()) }
                .map_err(|_| PluginError::NoSymbol { path: path.clone() })?;
        // SAFETY: calling the entry point takes no arguments and only returns a pointer.
        let table = unsafe { entry() };
        if table.is_null() {
            return Err(PluginError::NoTable { path });
        }
        // Read the size first, then the version, and only then the rest: an older or
        // foreign table may be shorter than ours.
        // SAFETY: every table version starts with `size: usize`; the pointer is non-null
        // and points into the library, which stays loaded.
        let size = unsafe { std::ptr::addr_of!((*table).size).read_unaligned() };
        let version_end =
            std::mem::offset_of!(PluginTable, abi_version) + std::mem::size_of::<u32>();
        if size < version_end {
            return Err(PluginError::TableSize {
                path,
                size,
                expected: std::mem::size_of::<PluginTable>(),
            });
        }
        // SAFETY: the table declares at least `version_end` bytes, so `abi_version` is in it.
        let found = unsafe { std::ptr::addr_of!((*table).abi_version).read_unaligned() };
        if found != ABI_VERSION {
            return Err(PluginError::AbiVersion {
                path,
                found,
                expected: ABI_VERSION,
            });
        }
        if size < std::mem::size_of::<PluginTable>() {
            return Err(PluginError::TableSize {
                path,
                size,
                expected: std::mem::size_of::<PluginTable>(),
            });
        }
        // SAFETY: the table is complete for this version (checked above), lives in a
        // library that is never unloaded, and is never written by the host.
        let table: &'static PluginTable = unsafe { &*table };
        // SAFETY: name and version are static strings of the library (ABI contract).
        let (plugin, version) = unsafe {
            (
                String::from_utf8_lossy(table.name.as_bytes()).into_owned(),
                String::from_utf8_lossy(table.version.as_bytes()).into_owned(),
            )
        };
        let config = config.to_string();
        let mut error = Vec::new();
        // SAFETY: `config` and `error` outlive the call; the sink writes only into `error`.
        let state = unsafe { (table.init)(HhStr::new(config.as_bytes()), sink(&mut error)) };
        if state.is_null() {
            let reason = String::from_utf8_lossy(&error).trim().to_owned();
            return Err(PluginError::Init {
                path,
                reason: if reason.is_empty() {
                    "the plugin gave no reason".into()
                } else {
                    reason
                },
            });
        }
        Ok(Self {
            name: plugin.clone(),
            plugin,
            version,
            instance: Arc::new(Instance { path, table, state }),
            calls: Arc::new(tokio::sync::Semaphore::new(MAX_CALLS)),
        })
    }

    /// Names the handler (in logs and metrics); default: the plugin's own name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The plugin's name and version, as its table gives them.
    pub fn plugin(&self) -> (&str, &str) {
        (&self.plugin, &self.version)
    }

    /// The library's path.
    pub fn path(&self) -> &Path {
        &self.instance.path
    }
}

#[async_trait]
impl Handler for PluginHandler {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let delivery = serde_json::json!({
            "delivery": ctx.delivery().as_str(),
            "attempt": ctx.attempt(),
            "message": msg,
        })
        .to_string();
        let instance = self.instance.clone();
        let Ok(permit) = self.calls.clone().try_acquire_owned() else {
            return Err(HandlerError::Failed(format!(
                "plugin {} has {MAX_CALLS} calls still running (hung?); not starting another",
                self.plugin
            )));
        };
        // A plugin call blocks its thread; it runs where blocking is allowed. If the run
        // times out, the call keeps its thread, its permit and the state until it returns.
        let call = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut out = Vec::new();
            // SAFETY: `state` is live (the Arc is held for the call), `delivery` and `out`
            // outlive the call, and the plugin allows concurrent calls.
            let status = unsafe {
                (instance.table.handle)(
                    instance.state,
                    HhStr::new(delivery.as_bytes()),
                    sink(&mut out),
                )
            };
            (status, String::from_utf8_lossy(&out).trim().to_owned())
        });
        let (status, text) = call
            .await
            .map_err(|e| HandlerError::Failed(format!("plugin call failed: {e}")))?;
        match status {
            STATUS_OK => Ok(Outcome::new(text)),
            STATUS_PANIC => Err(HandlerError::Panicked(text)),
            STATUS_BAD_INPUT => Err(HandlerError::Failed(format!(
                "the plugin could not read the delivery: {text}"
            ))),
            STATUS_ERROR => Err(HandlerError::Failed(text)),
            other => Err(HandlerError::Failed(format!(
                "the plugin returned unknown status {other}: {text}"
            ))),
        }
    }
}

/// A sink that appends to `buffer` (up to [`SINK_LIMIT`] bytes).
fn sink(buffer: &mut Vec<u8>) -> HhSink {
    unsafe extern "C" fn write(ctx: *mut c_void, text: HhStr) {
        // SAFETY: `ctx` is the `&mut Vec<u8>` made below, alive for the call the sink was
        // passed to; the plugin passes back what it was given.
        let buffer = unsafe { &mut *(ctx as *mut Vec<u8>) };
        // SAFETY: the plugin passes `len` readable bytes valid for this call.
        let bytes = unsafe { text.as_bytes() };
        let room = SINK_LIMIT.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    HhSink {
        ctx: buffer as *mut Vec<u8> as *mut c_void,
        write,
    }
}

/// What a Rust plugin's handler needs besides [`Handler`]: building it from the JSON
/// configuration the host passes to `init`.
pub trait Plugin: Handler + Sized {
    /// Builds the handler from its configuration (`[handler.config]` in hubhook.toml).
    /// The error text reaches the operator.
    fn from_config(config: serde_json::Value) -> Result<Self, String>;
}

/// The plugin side of the ABI, used by [`export_plugin!`](crate::export_plugin). Not for
/// direct use.
#[doc(hidden)]
pub mod export {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;
    use crate::handler::panic_message;
    use crate::DeliveryId;

    struct State<T> {
        handler: T,
        runtime: tokio::runtime::Runtime,
    }

    /// `init` for plugin type `T`.
    ///
    /// # Safety
    ///
    /// Called by the host under the ABI's rules: `config` valid for the call, `error` a
    /// live sink.
    pub unsafe extern "C" fn init<T: Plugin>(config: HhStr, error: HhSink) -> *mut c_void {
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<*mut c_void, String> {
            // SAFETY: the host passes `len` readable bytes valid for this call.
            let bytes = unsafe { config.as_bytes() };
            let config: serde_json::Value = serde_json::from_slice(bytes)
                .map_err(|e| format!("configuration is not JSON: {e}"))?;
            let handler = T::from_config(config)?;
            // The plugin's own runtime: the host's tokio does not cross the boundary.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("hubhook-plugin")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the plugin's runtime: {e}"))?;
            Ok(Box::into_raw(Box::new(State { handler, runtime })) as *mut c_void)
        }));
        match result {
            Ok(Ok(state)) => state,
            Ok(Err(reason)) => {
                error.write_str(&reason);
                std::ptr::null_mut()
            }
            Err(panic) => {
                error.write_str(&format!("init panicked: {}", panic_message(&*panic)));
                std::ptr::null_mut()
            }
        }
    }

    /// `handle` for plugin type `T`.
    ///
    /// # Safety
    ///
    /// `state` must come from `init::<T>` and not be destroyed; `delivery` valid for the
    /// call; `out` a live sink.
    pub unsafe extern "C" fn handle<T: Plugin>(
        state: *mut c_void,
        delivery: HhStr,
        out: HhSink,
    ) -> i32 {
        // SAFETY: the host passes back the pointer `init::<T>` returned, still alive.
        let state = unsafe { &*(state as *const State<T>) };
        // SAFETY: the host passes `len` readable bytes valid for this call.
        let bytes = unsafe { delivery.as_bytes() };
        let result = catch_unwind(AssertUnwindSafe(|| {
            let (msg, ctx) = match read_delivery(bytes) {
                Ok(pair) => pair,
                Err(reason) => return (STATUS_BAD_INPUT, reason),
            };
            match state.runtime.block_on(state.handler.handle(&msg, &ctx)) {
                Ok(outcome) => (STATUS_OK, outcome.summary),
                Err(HandlerError::Panicked(text)) => (STATUS_PANIC, text),
                Err(e) => (STATUS_ERROR, e.to_string()),
            }
        }));
        let (status, text) = result.unwrap_or_else(|panic| (STATUS_PANIC, panic_message(&*panic)));
        out.write_str(&text);
        status
    }

    /// `destroy` for plugin type `T`.
    ///
    /// # Safety
    ///
    /// `state` must come from `init::<T>`, with no call using it, and is never used again.
    pub unsafe extern "C" fn destroy<T: Plugin>(state: *mut c_void) {
        // SAFETY: the pointer came from Box::into_raw in init::<T>; the host destroys once.
        let state = unsafe { Box::from_raw(state as *mut State<T>) };
        // Dropping a runtime inside another runtime's thread panics; the host calls this
        // from wherever the last handle went, so shut it down without blocking.
        let State { handler, runtime } = *state;
        drop(handler);
        runtime.shutdown_background();
    }

    fn read_delivery(bytes: &[u8]) -> Result<(HubMessage, Context), String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("delivery is not JSON: {e}"))?;
        let delivery: DeliveryId = value["delivery"]
            .as_str()
            .unwrap_or("")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let attempt = value["attempt"]
            .as_u64()
            .unwrap_or(1)
            .min(u64::from(u32::MAX)) as u32;
        let message = serde_json::to_vec(&value["message"]).map_err(|e| e.to_string())?;
        let msg = HubMessage::from_serialized(&message).map_err(|e| e.to_string())?;
        Ok((msg, Context::new(delivery).with_attempt(attempt)))
    }
}

/// Exports a [`Plugin`] type as a hubhook plugin library: put it in a `cdylib` crate.
///
/// ```ignore
/// use hubhook_core::plugin::Plugin;
/// use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
///
/// struct Hello { greeting: String }
///
/// #[async_trait]
/// impl Handler for Hello {
///     fn name(&self) -> &str { "hello" }
///     async fn handle(&self, msg: &HubMessage, _: &Context) -> Result<Outcome, HandlerError> {
///         Ok(Outcome::new(format!("{} {}", self.greeting, msg.image())))
///     }
/// }
///
/// impl Plugin for Hello {
///     fn from_config(config: serde_json::Value) -> Result<Self, String> {
///         Ok(Hello { greeting: config["greeting"].as_str().unwrap_or("hello").to_owned() })
///     }
/// }
///
/// hubhook_core::export_plugin!(Hello);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[no_mangle]
        pub extern "C" fn hubhook_plugin_v1() -> *const $crate::plugin::PluginTable {
            static TABLE: $crate::plugin::PluginTable = $crate::plugin::PluginTable {
                size: ::core::mem::size_of::<$crate::plugin::PluginTable>(),
                abi_version: $crate::plugin::ABI_VERSION,
                name: $crate::plugin::HhStr::new(env!("CARGO_PKG_NAME").as_bytes()),
                version: $crate::plugin::HhStr::new(env!("CARGO_PKG_VERSION").as_bytes()),
                init: $crate::plugin::export::init::<$plugin>,
                handle: $crate::plugin::export::handle::<$plugin>,
                destroy: $crate::plugin::export::destroy::<$plugin>,
            };
            &TABLE
        }
    };
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// The layout hubhook_plugin.h describes, on 64-bit targets. Changing it breaks every
    /// plugin: append fields and bump nothing, or bump ABI_VERSION.
    #[test]
    fn table_layout_matches_the_header() {
        assert_eq!(std::mem::size_of::<HhStr>(), 16);
        assert_eq!(std::mem::size_of::<HhSink>(), 16);
        assert_eq!(std::mem::offset_of!(PluginTable, size), 0);
        assert_eq!(std::mem::offset_of!(PluginTable, abi_version), 8);
        assert_eq!(std::mem::offset_of!(PluginTable, name), 16);
        assert_eq!(std::mem::offset_of!(PluginTable, version), 32);
        assert_eq!(std::mem::offset_of!(PluginTable, init), 48);
        assert_eq!(std::mem::offset_of!(PluginTable, handle), 56);
        assert_eq!(std::mem::offset_of!(PluginTable, destroy), 64);
        assert_eq!(std::mem::size_of::<PluginTable>(), 72);
    }
}
