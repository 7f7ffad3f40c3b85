//! The `demo:` section of the config file: its input types, defaults and
//! checks, and what it compiles to. The core's schema keeps the section
//! opaque; [`DemoPart`] is the `config::Part` through which the binary has it
//! parsed and checked with the rest of the file, its problems located the
//! same way (`demo.listen`, `demo.redis.url`, ...).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::BusSettings;
use crate::config::compile::{overlaps, parse_listen, Report};
use crate::config::{FileText, Part, Section};
use crate::limit::store::redis::redact_url;
use crate::schema::input::ServerInput;
use crate::schema::{ConfigInput, Problem};
use crate::snapshot::PartSettings;

/// The section's key, and the part's name in `restart_required`.
pub const NAME: &str = "demo";

/// The `demo:` section as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DemoInput {
    #[serde(default = "default_true")]
    pub(crate) enabled: bool,
    #[serde(default = "default_listen")]
    pub(crate) listen: String,
    #[serde(default)]
    pub(crate) bus: DemoBus,
    #[serde(default)]
    pub(crate) redis: DemoRedisInput,
    /// Messages buffered per WebSocket client before its oldest are dropped.
    #[serde(default = "default_client_queue")]
    pub(crate) client_queue: usize,
}

fn default_true() -> bool {
    true
}

fn default_listen() -> String {
    "127.0.0.1:8081".into()
}

/// Two full batches: a fast client never loses events to one batch arriving
/// at once.
fn default_client_queue() -> usize {
    1024
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DemoBus {
    /// Events stay in this process.
    #[default]
    Memory,
    /// Events go through a Redis Pub/Sub channel shared by every instance.
    Redis,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DemoRedisInput {
    #[serde(default = "default_redis_url")]
    pub(crate) url: String,
    #[serde(default = "default_channel")]
    pub(crate) channel: String,
}

impl Default for DemoRedisInput {
    fn default() -> Self {
        DemoRedisInput {
            url: default_redis_url(),
            channel: default_channel(),
        }
    }
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".into()
}

fn default_channel() -> String {
    "tollgate:vehicles".into()
}

/// The `demo:` section, compiled: what the demo upstream runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSettings {
    pub listen: SocketAddr,
    pub bus: BusSettings,
    /// Messages buffered per WebSocket client before its oldest are dropped.
    pub client_queue: usize,
}

/// The file as the demo reads it: its own section (every other key is the
/// core's, and ignored here).
#[derive(Deserialize)]
struct DemoFile {
    #[serde(default)]
    demo: Option<DemoInput>,
}

/// The demo as a part beside the gateway, reading the `demo:` section.
pub struct DemoPart;

impl Part for DemoPart {
    fn name(&self) -> &'static str {
        NAME
    }

    fn parse(&self, file: &FileText<'_>) -> Result<Box<dyn Section>, Problem> {
        // A file the core read without a `demo:` key needs no second look.
        if file.input().is_some_and(|input| input.demo.is_none()) {
            return Ok(Box::new(DemoSection(None)));
        }
        let read: DemoFile = file.deserialize()?;
        Ok(Box::new(DemoSection(read.demo)))
    }
}

/// The `demo:` section, parsed (`None` when the file has none).
struct DemoSection(Option<DemoInput>);

impl Section for DemoSection {
    fn compile(&self, input: &ConfigInput, report: &mut Report<'_, '_>) -> Option<PartSettings> {
        let demo = self.0.as_ref().filter(|d| d.enabled)?;
        compile(demo, &input.server, report).map(PartSettings::new)
    }

    fn shown(&self) -> Value {
        let mut shown = serde_json::to_value(&self.0).unwrap_or(Value::Null);
        if let Some(Value::String(url)) = shown.pointer_mut("/redis/url") {
            *url = redact_url(url);
        }
        shown
    }
}

fn compile(
    d: &DemoInput,
    server: &ServerInput,
    report: &mut Report<'_, '_>,
) -> Option<DemoSettings> {
    let listen = report.check("demo.listen", parse_listen(&d.listen));
    if let Some(addr) = listen {
        let taken = server
            .listen
            .iter()
            .chain([&server.admin])
            .filter_map(|a| parse_listen(a).ok());
        if taken
            .into_iter()
            .any(|t| t.port() == addr.port() && overlaps(t.ip(), addr.ip()))
        {
            report.error(
                "demo.listen",
                "the demo upstream needs its own address, not the gateway's or the admin's",
            );
        }
    }
    if !(1..=65_536).contains(&d.client_queue) {
        report.error(
            "demo.client_queue",
            "client_queue must be between 1 and 65536",
        );
    }
    let bus = match d.bus {
        DemoBus::Memory => BusSettings::Memory,
        DemoBus::Redis => {
            if let Err(e) = redis::Client::open(d.redis.url.as_str()) {
                report.error(
                    "demo.redis.url",
                    format!("{:?} is not a Redis URL: {e}", redact_url(&d.redis.url)),
                );
            }
            if d.redis.channel.is_empty() {
                report.error("demo.redis.channel", "the channel name must not be empty");
            }
            BusSettings::Redis {
                url: d.redis.url.clone(),
                channel: d.redis.channel.clone(),
            }
        }
    };
    Some(DemoSettings {
        listen: listen?,
        bus,
        client_queue: d.client_queue,
    })
}
