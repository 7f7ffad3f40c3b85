//! Per-client bounded queues. Each WebSocket client has its own queue, filled
//! only with the events it wants (`?id=`); when a client falls behind, its
//! oldest events are dropped and counted, and it is told how many. Publishing
//! never waits for a client.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::Notify;

use super::metrics::DemoMetrics;
use super::Published;

pub(crate) struct Fanout {
    clients: RwLock<HashMap<u64, Arc<ClientQueue>>>,
    next_id: AtomicU64,
    capacity: usize,
}

pub(crate) struct ClientQueue {
    only: Option<String>,
    pending: Mutex<Pending>,
    ready: Notify,
}

#[derive(Default)]
struct Pending {
    events: VecDeque<Arc<Published>>,
    dropped: u64,
}

/// A client's place in the fan-out; leaves it when dropped.
pub(crate) struct Subscription<'a> {
    fanout: &'a Fanout,
    id: u64,
    queue: Arc<ClientQueue>,
}

impl Fanout {
    pub fn new(capacity: usize) -> Self {
        Fanout {
            clients: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn subscribe(&self, only: Option<String>) -> Subscription<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(ClientQueue {
            only,
            pending: Mutex::new(Pending::default()),
            ready: Notify::new(),
        });
        self.clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, queue.clone());
        Subscription {
            fanout: self,
            id,
            queue,
        }
    }

    /// Queues an event for every client that wants it.
    pub(crate) fn publish(&self, event: &Arc<Published>, metrics: &DemoMetrics) {
        let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
        for client in clients.values() {
            if client.only.as_ref().is_some_and(|id| *id != event.id) {
                continue;
            }
            let overflowed = {
                let mut pending = client
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let overflowed = pending.events.len() >= self.capacity;
                if overflowed {
                    pending.events.pop_front();
                    pending.dropped += 1;
                }
                pending.events.push_back(event.clone());
                overflowed
            };
            if overflowed {
                metrics.dropped(1);
            }
            client.ready.notify_one();
        }
    }
}

impl Subscription<'_> {
    /// Waits for events; returns them with how many were dropped before them.
    pub(crate) async fn next(&self) -> (Vec<Arc<Published>>, u64) {
        loop {
            {
                let mut pending = self
                    .queue
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !pending.events.is_empty() || pending.dropped > 0 {
                    let events = std::mem::take(&mut pending.events).into();
                    return (events, std::mem::take(&mut pending.dropped));
                }
            }
            // A push between the check and here leaves a permit: no lost wake-up.
            self.queue.ready.notified().await;
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.fanout
            .clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Arc<Published> {
        Arc::new(Published {
            id: id.into(),
            json: format!("{{\"id\":\"{id}\"}}").into(),
        })
    }

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest_and_says_how_many() {
        let metrics = DemoMetrics::register(&prometheus::Registry::new()).unwrap();
        let fanout = Fanout::new(2);
        let sub = fanout.subscribe(None);
        for id in ["a", "b", "c", "d"] {
            fanout.publish(&event(id), &metrics);
        }
        let (events, dropped) = sub.next().await;
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!((ids, dropped), (vec!["c", "d"], 2));
    }

    #[tokio::test]
    async fn a_filtered_client_only_queues_its_vehicle() {
        let metrics = DemoMetrics::register(&prometheus::Registry::new()).unwrap();
        let fanout = Fanout::new(1);
        let sub = fanout.subscribe(Some("x".into()));
        for id in ["a", "x", "b", "c"] {
            fanout.publish(&event(id), &metrics);
        }
        let (events, dropped) = sub.next().await;
        assert_eq!(
            (events.len(), dropped),
            (1, 0),
            "others' events are neither queued nor counted"
        );
    }

    #[test]
    fn dropping_a_subscription_leaves_the_fanout() {
        let fanout = Fanout::new(1);
        let sub = fanout.subscribe(None);
        drop(sub);
        assert!(fanout.clients.read().unwrap().is_empty());
    }
}
