//! The built-in demo upstream: a live vehicle-event API. Vehicles post
//! positions, WebSocket clients watch them move, and a map page draws them.
//! It runs in the gateway process as a background service, and the default
//! config routes to it, so `cargo run --release` shows the whole product.
//!
//! A part beside the gateway, not of it: the core never imports this module.
//! The binary's assembly (`app`) adds [`DemoPart`] to the config loader,
//! which reads the `demo:` section (`settings`), and starts `service`
//! when the section turns the demo on. Its metrics are its own ([`metrics`]).

mod bus;
mod fanout;
mod http;
pub mod metrics;
pub mod schema;
pub(crate) mod settings;
mod ws;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};

use bus::Bus;
pub use bus::BusSettings;
use fanout::Fanout;
pub use metrics::DemoMetrics;
use schema::VehicleEvent;
pub use settings::{DemoPart, DemoSettings, NAME};

/// The most vehicles whose latest position is kept; beyond it the stalest go.
const MAX_VEHICLES: usize = 10_000;

/// An accepted event as it is fanned out: its id (for `?id=` filters) and
/// its JSON, serialized once for every client.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) id: String,
    pub(crate) json: Utf8Bytes,
}

struct Latest {
    event: VehicleEvent,
    received: Instant,
}

/// The demo's state, shared by its handlers.
pub struct Demo {
    vehicles: RwLock<HashMap<String, Latest>>,
    fanout: Fanout,
    bus: Bus,
    metrics: DemoMetrics,
}

impl Demo {
    pub fn new(settings: &DemoSettings, metrics: DemoMetrics) -> Arc<Self> {
        Arc::new(Demo {
            vehicles: RwLock::new(HashMap::new()),
            fanout: Fanout::new(settings.client_queue),
            bus: Bus::new(&settings.bus),
            metrics,
        })
    }

    /// Records an event as the vehicle's latest and sends it to every
    /// WebSocket client. Called for each event the bus delivers.
    fn deliver(&self, event: VehicleEvent) {
        let json = match serde_json::to_string(&event) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!("cannot serialize a vehicle event: {e}");
                return;
            }
        };
        let id = event.id.clone();
        {
            let mut vehicles = self
                .vehicles
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            // The newest position wins, whatever order events arrive in
            // (timestamps are normalized UTC, so they compare as text).
            let newer = vehicles.get(&id).is_none_or(|l| l.event.ts <= event.ts);
            if newer {
                let received = Instant::now();
                vehicles.insert(id.clone(), Latest { event, received });
            }
            if vehicles.len() > MAX_VEHICLES {
                forget_stalest(&mut vehicles);
            }
        }
        self.fanout.publish(
            &Arc::new(Published {
                id,
                json: json.into(),
            }),
            &self.metrics,
        );
    }

    fn latest(&self, id: &str) -> Option<VehicleEvent> {
        let vehicles = self.vehicles.read().unwrap_or_else(PoisonError::into_inner);
        vehicles.get(id).map(|l| l.event.clone())
    }

    fn all_latest(&self) -> Vec<VehicleEvent> {
        let vehicles = self.vehicles.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<VehicleEvent> = vehicles.values().map(|l| l.event.clone()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

/// Drops the stalest tenth, so the map stays bounded under a flood of ids.
fn forget_stalest(vehicles: &mut HashMap<String, Latest>) {
    let mut ages: Vec<(Instant, String)> = vehicles
        .iter()
        .map(|(id, l)| (l.received, id.clone()))
        .collect();
    ages.sort_unstable();
    for (_, id) in ages.into_iter().take(MAX_VEHICLES / 10) {
        vehicles.remove(&id);
    }
}

/// The demo upstream as a background service of the gateway's server, its
/// metrics registered in `registry` (the gateway's, so that `/metrics` shows
/// them). Fails only when that registry has them already.
pub(crate) fn service(
    settings: DemoSettings,
    registry: &prometheus::Registry,
) -> prometheus::Result<GenBackgroundService<DemoService>> {
    let demo = Demo::new(&settings, DemoMetrics::register(registry)?);
    let mut service = background_service("tollgate demo upstream", DemoService { settings, demo });
    service.threads = Some(1);
    Ok(service)
}

/// Runs the demo's HTTP server (and, with a Redis bus, its subscriber).
pub struct DemoService {
    pub settings: DemoSettings,
    pub demo: Arc<Demo>,
}

#[async_trait]
impl BackgroundService for DemoService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match tokio::net::TcpListener::bind(self.settings.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(
                    "the demo upstream cannot listen on {}: {e}",
                    self.settings.listen
                );
                return;
            }
        };
        let subscriber = self.demo.bus.spawn_subscriber(self.demo.clone());
        tracing::info!(listen = %self.settings.listen, "demo upstream serving");
        let served = axum::serve(listener, http::router(self.demo.clone()))
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("the demo upstream stopped: {e}");
        }
        if let Some(task) = subscriber {
            task.abort();
        }
    }
}
