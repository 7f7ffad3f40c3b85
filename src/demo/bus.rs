//! Where accepted events travel before they are fanned out: within this
//! process, or over a Redis Pub/Sub channel that every demo instance
//! subscribes to, so a client of instance B sees what was posted to A.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::schema::VehicleEvent;
use super::Demo;

/// How long a publish may take before the event is refused with 503.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusSettings {
    Memory,
    Redis { url: String, channel: String },
}

pub(crate) enum Bus {
    Memory,
    Redis(Box<RedisBus>),
}

pub(crate) struct RedisBus {
    client: redis::Client,
    /// Made on the first publish, inside the demo service's runtime: the
    /// manager spawns its tasks on the runtime it is made in, and the bus is
    /// built before any runtime runs. `None` if it could not be made.
    publisher: OnceLock<Option<ConnectionManager>>,
    channel: String,
    subscribed: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BusError {
    #[error("the event bus is unavailable: {0}")]
    Unavailable(String),
}

impl Bus {
    pub fn new(settings: &BusSettings) -> Self {
        match settings {
            BusSettings::Memory => Bus::Memory,
            BusSettings::Redis { url, channel } => match redis::Client::open(url.as_str()) {
                Ok(client) => Bus::Redis(Box::new(RedisBus {
                    client,
                    publisher: OnceLock::new(),
                    channel: channel.clone(),
                    subscribed: Arc::new(AtomicBool::new(false)),
                })),
                // The config compiler checked the URL; this cannot happen.
                Err(e) => {
                    tracing::error!("bad Redis URL for the demo bus, using memory: {e}");
                    Bus::Memory
                }
            },
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Bus::Memory => "memory",
            Bus::Redis(_) => "redis",
        }
    }

    /// Whether events from other instances can arrive.
    pub(crate) fn connected(&self) -> bool {
        match self {
            Bus::Memory => true,
            Bus::Redis(r) => r.subscribed.load(Ordering::Relaxed),
        }
    }

    /// Sends accepted events to every instance (this one included).
    pub(crate) async fn publish(
        &self,
        demo: &Demo,
        events: Vec<VehicleEvent>,
    ) -> Result<(), BusError> {
        match self {
            Bus::Memory => {
                for event in events {
                    demo.deliver(event);
                }
                Ok(())
            }
            Bus::Redis(r) => r.publish(events).await,
        }
    }

    /// Starts the Redis subscriber, which feeds `demo` until aborted.
    pub(crate) fn spawn_subscriber(&self, demo: Arc<Demo>) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Bus::Memory => None,
            Bus::Redis(r) => {
                let (client, channel, subscribed) =
                    (r.client.clone(), r.channel.clone(), r.subscribed.clone());
                Some(tokio::spawn(subscribe_forever(
                    client, channel, subscribed, demo,
                )))
            }
        }
    }
}

impl RedisBus {
    /// The publishing connection, made on first use. Lazy: it connects on
    /// its first command and reconnects by itself, so the demo starts
    /// whether or not Redis is up yet.
    fn publisher(&self) -> Option<ConnectionManager> {
        self.publisher
            .get_or_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(PUBLISH_TIMEOUT))
                    .set_response_timeout(Some(PUBLISH_TIMEOUT));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .inspect_err(|e| tracing::error!("cannot set up the Redis publisher: {e}"))
                    .ok()
            })
            .clone()
    }

    /// Publishes a batch as one message, so it arrives whole or not at all.
    /// Refused while our own subscription is down: events accepted then would
    /// reach nobody, this instance included.
    async fn publish(&self, events: Vec<VehicleEvent>) -> Result<(), BusError> {
        if !self.subscribed.load(Ordering::Relaxed) {
            return Err(BusError::Unavailable(
                "not subscribed to the Redis channel".into(),
            ));
        }
        let Some(mut conn) = self.publisher() else {
            return Err(BusError::Unavailable("no Redis connection".into()));
        };
        let json =
            serde_json::to_string(&events).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let mut command = redis::cmd("PUBLISH");
        command.arg(&self.channel).arg(json);
        let publish = command.query_async::<i64>(&mut conn);
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("Redis did not answer in time".into())),
        }
    }
}

/// Subscribes, delivers every message, and resubscribes with backoff when the
/// connection is lost (Redis restarted, network blip).
async fn subscribe_forever(
    client: redis::Client,
    channel: String,
    subscribed: Arc<AtomicBool>,
    demo: Arc<Demo>,
) {
    let mut backoff = RECONNECT_MIN;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    tracing::info!(%channel, "demo bus subscribed");
                    subscribed.store(true, Ordering::Relaxed);
                    backoff = RECONNECT_MIN;
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        match serde_json::from_slice::<Vec<VehicleEvent>>(
                            message.get_payload_bytes(),
                        ) {
                            Ok(events) => events.into_iter().for_each(|e| demo.deliver(e)),
                            Err(e) => tracing::warn!("ignoring a malformed bus message: {e}"),
                        }
                    }
                    subscribed.store(false, Ordering::Relaxed);
                    tracing::warn!("demo bus connection lost; resubscribing");
                }
                Err(e) => tracing::warn!("demo bus cannot subscribe: {e}"),
            },
            Err(e) => tracing::debug!("demo bus cannot connect: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_bus_is_built_outside_any_runtime() {
        // `tollgate run` builds the demo before Pingora starts its runtimes.
        // The address is never dialled.
        let bus = Bus::new(&BusSettings::Redis {
            url: "redis://127.0.0.1:0".into(),
            channel: "c".into(),
        });
        assert_eq!(bus.name(), "redis");
        assert!(!bus.connected());
    }
}
