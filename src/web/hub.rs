//! Fan-out of event messages to WebSocket clients. Each client has its own
//! bounded queue; publishing never waits: a client whose queue is full is
//! dropped on the spot (its socket task is told to close), so one client
//! that stops reading never slows the agent, the other clients or HTTP.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

struct Slot {
    id: u64,
    tx: mpsc::Sender<Arc<str>>,
    /// Dropped (so the receiver wakes) when the client is dropped.
    _kick: oneshot::Sender<()>,
}

pub struct Hub {
    clients: Mutex<Vec<Slot>>,
    next_id: AtomicU64,
    capacity: usize,
    dropped: AtomicU64,
}

/// One client's side: its queue, and the signal that it was dropped.
pub struct Subscription {
    pub id: u64,
    pub rx: mpsc::Receiver<Arc<str>>,
    /// Completes (with an error) once the hub dropped this client.
    pub kicked: oneshot::Receiver<()>,
    hub: Arc<Hub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(self.id);
    }
}

impl Hub {
    pub fn new(capacity: usize) -> Arc<Hub> {
        Arc::new(Hub {
            clients: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        })
    }

    /// Registers a client; messages published from now on are queued for it.
    pub fn join(self: &Arc<Hub>) -> Subscription {
        self.try_join(usize::MAX)
            .expect("usize::MAX clients cannot all be connected")
    }

    /// Registers a client unless `max` are registered already. Checked and
    /// added under one lock, so concurrent upgrades cannot overshoot: each
    /// client costs a socket, a task and a queue of up to `capacity`
    /// messages, and upgraded streams leave the HTTP connection cap.
    pub fn try_join(self: &Arc<Hub>, max: usize) -> Option<Subscription> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.capacity);
        let (kick, kicked) = oneshot::channel();
        {
            let mut clients = crate::sync::lock(&self.clients);
            if clients.len() >= max {
                return None;
            }
            clients.push(Slot {
                id,
                tx,
                _kick: kick,
            });
        }
        Some(Subscription {
            id,
            rx,
            kicked,
            hub: self.clone(),
        })
    }

    fn leave(&self, id: u64) {
        crate::sync::lock(&self.clients).retain(|s| s.id != id);
    }

    /// Queues `message` for every client; drops those whose queue is full.
    /// Returns how many were dropped.
    pub fn publish(&self, message: Arc<str>) -> usize {
        let mut clients = crate::sync::lock(&self.clients);
        let before = clients.len();
        clients.retain(|slot| slot.tx.try_send(message.clone()).is_ok());
        let dropped = before - clients.len();
        self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    pub fn clients(&self) -> usize {
        crate::sync::lock(&self.clients).len()
    }

    /// Clients dropped for not reading, since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_client_is_dropped_and_told_others_keep_getting_messages() {
        let hub = Hub::new(2);
        let mut slow = hub.join();
        let mut fast = hub.join();
        for n in 0..2 {
            assert_eq!(hub.publish(Arc::from(format!("m{n}"))), 0);
            assert_eq!(&*fast.rx.recv().await.unwrap(), format!("m{n}"));
        }
        // slow's queue (2) is full: the third message drops it, not fast.
        assert_eq!(hub.publish(Arc::from("m2")), 1);
        assert_eq!(&*fast.rx.recv().await.unwrap(), "m2");
        assert_eq!(hub.clients(), 1);
        assert!(
            (&mut slow.kicked).await.is_err(),
            "slow is told it was dropped"
        );
        assert_eq!(hub.dropped_total(), 1);
        drop(fast);
        assert_eq!(hub.clients(), 0, "a client that leaves is forgotten");
    }

    #[test]
    fn try_join_stops_at_the_cap_and_a_leaver_frees_a_place() {
        let hub = Hub::new(2);
        let a = hub.try_join(2).expect("first");
        let _b = hub.try_join(2).expect("second");
        assert!(hub.try_join(2).is_none(), "a third is refused");
        assert_eq!(hub.clients(), 2);
        drop(a);
        assert!(hub.try_join(2).is_some(), "a place was freed");
    }
}
