//! The `Handler` trait and what a handler receives and returns.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::HubMessage;

/// Something that acts on a pushed image: runs a script, redeploys a container, logs a line.
///
/// Handlers run off the request path, after the webhook has been answered, and may run
/// concurrently with themselves for different deliveries. A panic inside `handle` is caught
/// and reported as a failed run; it does not affect other deliveries.
///
/// ```
/// use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
///
/// struct Announce;
///
/// #[async_trait]
/// impl Handler for Announce {
///     fn name(&self) -> &str {
///         "announce"
///     }
///
///     async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
///         Ok(Outcome::new(format!("{} pushed ({})", msg.image(), ctx.delivery())))
///     }
/// }
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// A short name for logs and metrics (`"deploy-site"`).
    fn name(&self) -> &str;

    /// Acts on one message. Watch [`Context::cancelled`] in long work: it fires when the
    /// server shuts down past its grace period or the run's deadline passes.
    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError>;
}

/// What a successful run reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// One line saying what was done (`"deployed acme/site:v2"`).
    pub summary: String,
}

impl Outcome {
    /// An outcome with a summary line.
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
        }
    }
}

/// Why a handler run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The work was tried and failed; the text says why (an exit status, an output tail).
    #[error("{0}")]
    Failed(String),
    /// The message does not fit this handler's configuration (a tag it may not deploy);
    /// nothing was done.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The run took longer than its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The run stopped because the server is shutting down.
    #[error("cancelled")]
    Cancelled,
    /// A newer delivery for the same coalescing key replaced this one before it ran (or
    /// between its attempts); the newer one runs instead.
    #[error("superseded by delivery {0}")]
    Superseded(DeliveryId),
    /// The handler panicked; the text is the panic message.
    #[error("panicked: {0}")]
    Panicked(String),
    /// Any other error.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// The identity of one accepted webhook: a ULID (26 characters, Crockford base32) that
/// sorts by arrival time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId([u8; 26]);

impl DeliveryId {
    /// A new id for now. Ids from one process are unique and strictly increasing, also
    /// within a millisecond (the random part counts up, as in monotonic ULIDs).
    pub fn generate() -> Self {
        use std::sync::Mutex;
        // (last millisecond, its 80-bit random part, a SplitMix64 state seeded once from
        // the OS): one syscall per process instead of one per delivery.
        static STATE: Mutex<Option<(u64, u128, u64)>> = Mutex::new(None);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64 & 0xFFFF_FFFF_FFFF)
            .unwrap_or(0);
        let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let (last, random, seed) = state.get_or_insert_with(|| {
            let mut bytes = [0u8; 8];
            // Without an entropy source, the time still makes ids unique in this process.
            let _ = getrandom::getrandom(&mut bytes);
            (0, 0, u64::from_le_bytes(bytes) ^ millis)
        });
        if millis > *last {
            *last = millis;
            let high = u128::from(splitmix(seed) & 0xFFFF);
            *random = (high << 64) | u128::from(splitmix(seed));
        } else {
            // Same millisecond, or the clock stepped back: count up from the last id.
            *random = (*random + 1) & ((1 << 80) - 1);
            if *random == 0 {
                *last += 1;
            }
        }
        let value = (u128::from(*last) << 80) | *random;
        drop(state);
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (25 - i);
            *slot = ALPHABET[((value >> shift) & 0x1F) as usize];
        }
        Self(out)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII from ALPHABET is ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The text is not a delivery id (26 characters of Crockford base32).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a delivery id")]
pub struct InvalidDeliveryId(pub String);

impl std::str::FromStr for DeliveryId {
    type Err = InvalidDeliveryId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let bytes = s.as_bytes();
        // The first character holds only 3 bits of the 128.
        if bytes.len() != 26 || bytes[0] > b'7' || !bytes.iter().all(|b| ALPHABET.contains(b)) {
            return Err(InvalidDeliveryId(s.chars().take(40).collect()));
        }
        let mut id = [0u8; 26];
        id.copy_from_slice(bytes);
        Ok(Self(id))
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeliveryId({})", self.as_str())
    }
}

/// What a handler knows about the run it is in.
#[derive(Debug, Clone)]
pub struct Context {
    delivery: DeliveryId,
    attempt: u32,
    cancel: CancellationToken,
    deadline: Option<Instant>,
}

impl Context {
    /// A context for the first attempt of `delivery`, with no deadline and a fresh
    /// cancellation signal. Useful to call a handler directly, in tests or in a plugin host.
    pub fn new(delivery: DeliveryId) -> Self {
        Self {
            delivery,
            attempt: 1,
            cancel: CancellationToken::new(),
            deadline: None,
        }
    }

    /// Sets the attempt number (1 for the first run).
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the instant by which the run should be over.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Uses `token` as the cancellation signal.
    #[must_use]
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// The delivery this run belongs to.
    pub fn delivery(&self) -> DeliveryId {
        self.delivery
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the run should be over, if there is a limit.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the run has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the run is asked to stop; use it in a `select!` around long work.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}

/// The text of a panic payload, when it has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_increase_within_a_millisecond() {
        let ids: Vec<DeliveryId> = (0..10_000).map(|_| DeliveryId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    }

    #[test]
    fn delivery_ids_are_distinct_and_sortable() {
        // Ids made one after the other sort in that order, within one millisecond too.
        let a = DeliveryId::generate();
        let b = DeliveryId::generate();
        assert_ne!(a, b);
        assert!(a < b, "{a} < {b}");
        assert_eq!(a.as_str().len(), 26);
        assert_eq!(a.as_str().parse::<DeliveryId>(), Ok(a));
        assert!("01M8B5SD7KPZMFH3WBT9NWCNJ".parse::<DeliveryId>().is_err());
        assert!(
            "01M8B5SD7KPZMFH3WBT9NWCNJU".parse::<DeliveryId>().is_err(),
            "U is not base32"
        );
        assert!(
            "81M8B5SD7KPZMFH3WBT9NWCNJN".parse::<DeliveryId>().is_err(),
            "overflows 128 bits"
        );
    }
}
