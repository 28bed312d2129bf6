//! The cap on open connections. A connection that has not yet finished its
//! TLS handshake and HTTP/2 preface is "pending"; when the cap is reached,
//! a new connection takes the place of the oldest pending one, so a flood of
//! connections that never speak cannot lock out a health check. Only when
//! every open connection has spoken are new ones refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

#[derive(Clone)]
pub struct ConnectionLimit {
    max: usize,
    open: Arc<AtomicUsize>,
    pending: Arc<Mutex<PendingSet>>,
}

#[derive(Default)]
struct PendingSet {
    next_id: u64,
    /// Oldest first.
    by_age: BTreeMap<u64, CancellationToken>,
}

/// What `admit` decided.
pub enum Admission {
    Admitted(Slot, Pending),
    /// Admitted in place of an older connection that had not spoken yet.
    Replaced(Slot, Pending),
    Refused,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            open: Arc::default(),
            pending: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now (including ones evicted but not yet dropped).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Called by the accept loops for each new connection; one decision at
    /// a time, so together they never pass the cap. The count may pass it
    /// for a moment by the connections just evicted (each is closed at its
    /// next poll).
    pub fn admit(&self) -> Admission {
        let mut set = self.pending_set();
        let mut replaced = false;
        if self.open.load(Ordering::Relaxed) >= self.max {
            match set.by_age.pop_first() {
                Some((_, token)) => {
                    token.cancel();
                    replaced = true;
                }
                None => return Admission::Refused,
            }
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            open: Arc::clone(&self.open),
        };
        let token = CancellationToken::new();
        let id = set.next_id;
        set.next_id += 1;
        set.by_age.insert(id, token.clone());
        drop(set);
        let pending = Pending {
            id,
            token,
            set: Arc::clone(&self.pending),
        };
        if replaced {
            Admission::Replaced(slot, pending)
        } else {
            Admission::Admitted(slot, pending)
        }
    }

    fn pending_set(&self) -> std::sync::MutexGuard<'_, PendingSet> {
        self.pending.lock().expect("pending connections lock")
    }
}

/// One open connection, counted until dropped.
pub struct Slot {
    open: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection that has not spoken yet; it leaves the pending set when
/// dropped (it spoke, or it closed).
pub struct Pending {
    id: u64,
    token: CancellationToken,
    set: Arc<Mutex<PendingSet>>,
}

impl Pending {
    /// Completes when a newer connection took this one's place.
    pub fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.by_age.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> (Slot, Pending) {
        match admission {
            Admission::Admitted(slot, pending) => (slot, pending),
            Admission::Replaced(..) => panic!("replaced, expected admitted"),
            Admission::Refused => panic!("refused, expected admitted"),
        }
    }

    #[test]
    fn at_the_cap_the_oldest_silent_connection_makes_room_and_spoken_ones_never_do() {
        let limit = ConnectionLimit::new(2);
        let (_a, a_pending) = admitted(limit.admit());
        let (_b, b_pending) = admitted(limit.admit());
        assert_eq!(limit.open(), 2);

        // Full: the oldest that has not spoken (a) is told to go.
        let Admission::Replaced(c, c_pending) = limit.admit() else {
            panic!("expected a replacement");
        };
        assert!(a_pending.token.is_cancelled());
        assert!(!b_pending.token.is_cancelled());
        drop(a_pending);
        drop(_a);
        assert_eq!(limit.open(), 2);

        // b and c speak: nobody is left to replace, so the next is refused.
        drop(b_pending);
        drop(c_pending);
        assert!(matches!(limit.admit(), Admission::Refused));

        // A connection that closes frees its slot.
        drop(c);
        assert!(matches!(limit.admit(), Admission::Admitted(..)));
    }

    #[test]
    fn accept_loops_admitting_at_once_never_pass_the_cap() {
        let limit = ConnectionLimit::new(50);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limit = limit.clone();
                std::thread::spawn(move || {
                    let mut slots = Vec::new();
                    for _ in 0..100 {
                        // Every connection speaks at once: none can be
                        // replaced, so past the cap all are refused.
                        if let Admission::Admitted(slot, _spoke) = limit.admit() {
                            slots.push(slot);
                        }
                    }
                    slots
                })
            })
            .collect();
        // Every thread's slots stay open until all are counted.
        let slots: Vec<Vec<Slot>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(slots.iter().map(Vec::len).sum::<usize>(), 50);
    }
}
