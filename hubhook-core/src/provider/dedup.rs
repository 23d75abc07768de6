//! Acting on each registry event once, however often it is delivered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use sha2::Sha256;
use tokio::sync::watch;

use super::REMEMBERED_EVENTS;

/// Event ids a hook has acted on recently, so a redelivered event acts once. Kept as
/// SHA-256 digests: ids are sender-chosen text of any length.
///
/// "Seen" is decided atomically: a request claims the new ids of its envelope under one
/// lock, and a concurrent redelivery of any of them waits until that request has been
/// answered (committed: seen; refused: claimable again). No request holds claims while
/// it waits, so two envelopes that share events cannot wait for each other.
#[derive(Debug, Default)]
pub(crate) struct RecentEvents(Mutex<Remembered>);

#[derive(Debug, Default)]
struct Remembered {
    /// Events acted on, as a set to look up and in arrival order to forget the oldest.
    done: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    /// Events a request is accepting now; the receiver wakes when it is done.
    claimed: HashMap<[u8; 32], watch::Receiver<()>>,
}

/// The events of one request that it alone may accept; released (claimable again) when
/// dropped without [`Claim::commit`].
#[derive(Debug)]
pub(crate) struct Claim {
    events: Arc<RecentEvents>,
    keys: Vec<[u8; 32]>,
    /// Dropped when the claim ends, which wakes every waiter; `None` when nothing was
    /// claimed, so nothing can wait on it.
    _done: Option<watch::Sender<()>>,
}

impl RecentEvents {
    /// Claims the new ones among `ids` (`None`: an event without an id, always new).
    /// Returns which to act on, in order, and the claim to commit once they are
    /// accepted. Waits while another request is accepting any of them.
    pub(crate) async fn claim(self: &Arc<Self>, ids: &[Option<&str>]) -> (Vec<bool>, Claim) {
        if ids.iter().all(Option::is_none) {
            // Nothing to claim (most providers send no ids): no lock, no channel.
            let claim = Claim {
                events: self.clone(),
                keys: Vec::new(),
                _done: None,
            };
            return (vec![true; ids.len()], claim);
        }
        let keys: Vec<Option<[u8; 32]>> = ids.iter().map(|id| id.map(digest)).collect();
        loop {
            let mut busy = {
                let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
                match keys.iter().flatten().find_map(|k| guard.claimed.get(k)) {
                    Some(busy) => busy.clone(),
                    None => {
                        let (tx, rx) = watch::channel(());
                        let mut act = Vec::with_capacity(keys.len());
                        let mut claimed = Vec::new();
                        for key in &keys {
                            let new = match key {
                                None => true,
                                Some(k) if guard.done.contains(k) => false,
                                // The same id twice in one envelope acts once.
                                Some(k) if claimed.contains(k) => false,
                                Some(k) => {
                                    guard.claimed.insert(*k, rx.clone());
                                    claimed.push(*k);
                                    true
                                }
                            };
                            act.push(new);
                        }
                        let claim = Claim {
                            events: self.clone(),
                            keys: claimed,
                            _done: Some(tx),
                        };
                        return (act, claim);
                    }
                }
            };
            // Ends with an error when the other request's claim is dropped.
            let _ = busy.changed().await;
        }
    }
}

impl Claim {
    /// The claimed events were accepted: they are seen from now on.
    pub(crate) fn commit(mut self) {
        let keys = std::mem::take(&mut self.keys);
        if keys.is_empty() {
            return;
        }
        let mut guard = self.events.0.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            guard.claimed.remove(&key);
            if guard.done.insert(key) {
                guard.order.push_back(key);
                if guard.order.len() > REMEMBERED_EVENTS {
                    if let Some(old) = guard.order.pop_front() {
                        guard.done.remove(&old);
                    }
                }
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut guard = self.events.0.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            guard.claimed.remove(key);
        }
    }
}

fn digest(id: &str) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[&'static str]) -> Vec<Option<&'static str>> {
        ids.iter().map(|id| Some(*id)).collect()
    }

    #[tokio::test]
    async fn recent_events_forget_the_oldest() {
        let recent = Arc::new(RecentEvents::default());
        for i in 0..=REMEMBERED_EVENTS {
            let id = i.to_string();
            let (act, claim) = recent.claim(&[Some(id.as_str())]).await;
            assert_eq!(act, [true]);
            claim.commit();
        }
        let (act, _claim) = recent
            .claim(&[Some("0"), Some("1"), Some(&REMEMBERED_EVENTS.to_string())])
            .await;
        assert_eq!(act, [true, false, false]);
    }

    #[tokio::test]
    async fn a_claim_released_without_commit_can_be_claimed_again() {
        let recent = Arc::new(RecentEvents::default());
        let (act, claim) = recent.claim(&ids(&["a", "a", "b"])).await;
        assert_eq!(
            act,
            [true, false, true],
            "one id twice in an envelope acts once"
        );
        // A concurrent redelivery waits for the first request to end.
        let waiter = {
            let recent = recent.clone();
            tokio::spawn(async move { recent.claim(&ids(&["b", "c"])).await.0 })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while b is being accepted");
        drop(claim);
        assert_eq!(
            waiter.await.expect("task"),
            [true, true],
            "refused: b is new again"
        );

        let (_, claim) = recent.claim(&ids(&["d"])).await;
        claim.commit();
        assert_eq!(recent.claim(&ids(&["d", "e"])).await.0, [false, true]);
    }
}
