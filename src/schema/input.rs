//! The config file as written: serde types that mirror the YAML, nothing more.
//! Every struct refuses unknown fields, so a typo is an error rather than a
//! silently ignored setting. Values are checked and compiled in `compile`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, value::MapAccessDeserializer, value::SeqAccessDeserializer, IntoDeserializer,
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::policy::{AccessLogFormat, Alpn, Http1Path, OnError, TlsVersion};
use crate::policy::{HeaderStyle, MissingPolicy, Mode, OnLimit};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigInput {
    #[serde(default)]
    pub(crate) server: ServerInput,
    #[serde(default)]
    pub(crate) store: StoreInput,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<String, UpstreamInput>,
    #[serde(default)]
    pub(crate) rules: Vec<RuleInput>,
    /// Named sets of limits a consumer's requests get on the rules that say
    /// `plan:`.
    #[serde(default)]
    pub(crate) plans: BTreeMap<String, PlanInput>,
    /// Who the clients are: API keys, each naming a consumer and its plan.
    #[serde(default)]
    pub(crate) consumers: Option<ConsumersInput>,
    /// One line per request, to stdout or a file.
    #[serde(default)]
    pub(crate) access_log: AccessLogInput,
    /// A section the core does not read: a part beside the gateway that
    /// the binary adds parses and checks it (see `config::part`).
    #[serde(default)]
    pub(crate) demo: Option<Opaque>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogInput {
    /// `off` (the default), `json` or `text`.
    #[serde(default)]
    pub(crate) format: AccessLogFormat,
    /// `stdout` (the default) or a file, relative to the config file;
    /// reopened on SIGUSR1.
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// Lines that may wait to be written; more are dropped and counted
    /// (default 8192).
    #[serde(default)]
    pub(crate) buffer: Option<usize>,
}

/// A section of the file read by a part beside the gateway, not by the core:
/// any YAML is accepted here (the part reports its problems), and the part
/// shows it in `GET /-/config`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Opaque;

impl<'de> Deserialize<'de> for Opaque {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(deserializer).map(|_| Opaque)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerInput {
    #[serde(default = "default_listen")]
    pub(crate) listen: Vec<String>,
    #[serde(default = "default_admin")]
    pub(crate) admin: String,
    /// Bearer token for the admin API (all but /healthz and /readyz);
    /// `TOLLGATE_ADMIN_TOKEN` overrides it.
    #[serde(default)]
    pub(crate) admin_token: Option<String>,
    /// Reload when the config file changes on disk (SIGHUP and
    /// `POST /-/reload` work either way).
    #[serde(default = "default_true")]
    pub(crate) watch: bool,
    /// Worker threads for the proxy; defaults to the number of CPUs.
    #[serde(default)]
    pub(crate) threads: Option<usize>,
    /// One tokio runtime whose threads steal each other's tasks (`true`), or
    /// one runtime per proxy thread (`false`). Unset: `false` with one proxy
    /// thread (nothing to steal from; measured faster, BENCHMARKS.md), `true`
    /// with more (stealing keeps latency even across threads).
    #[serde(default)]
    pub(crate) work_stealing: Option<bool>,
    /// `pingora` (Pingora's proxy phases) or `fast` (tollgate's own HTTP/1.1
    /// request loop); read per connection, so a reload applies it to new ones.
    #[serde(default)]
    pub(crate) http1_path: Http1Path,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
    #[serde(default = "default_ipv6_prefix")]
    pub(crate) ipv6_prefix: u8,
    #[serde(default)]
    pub(crate) api_key: ApiKeyInput,
    /// Which rate-limit headers responses carry unless a rule says otherwise.
    #[serde(default)]
    pub(crate) headers: HeaderStyle,
    /// The longest a client may take to send a request's headers, counted
    /// from their first byte (default 10s).
    #[serde(default)]
    pub(crate) header_timeout: Option<String>,
    /// The longest a request body may stop arriving, between two reads
    /// (default 60s).
    #[serde(default)]
    pub(crate) body_timeout: Option<String>,
    /// The longest a connection may wait for a request: before its first
    /// byte and between keep-alive requests (default 60s).
    #[serde(default)]
    pub(crate) idle_timeout: Option<String>,
    /// Open connections per client IP (an IPv6 client: per `ipv6_prefix`
    /// network); more are closed at once. Off unless set.
    #[serde(default)]
    pub(crate) max_connections_per_ip: Option<u32>,
    /// After SIGTERM, how long requests in flight get to finish (default 10s).
    #[serde(default)]
    pub(crate) grace_period: Option<String>,
    /// The largest request body, for rules that set none (413 beyond it).
    #[serde(default)]
    pub(crate) max_body_bytes: Option<u64>,
    /// The largest request head: its request line and header fields (431
    /// beyond it; default 64 KiB).
    #[serde(default)]
    pub(crate) max_header_bytes: Option<u64>,
    /// Listeners that terminate TLS (HTTP/1.1 and HTTP/2 by ALPN).
    #[serde(default)]
    pub(crate) tls: Vec<TlsListenerInput>,
    /// The longest a TLS handshake may take, from the connection's accept
    /// (default 10s).
    #[serde(default)]
    pub(crate) handshake_timeout: Option<String>,
    /// What `GET /readyz` requires beyond a running gateway.
    #[serde(default)]
    pub(crate) readyz: ReadyzInput,
    /// Show limit keys as counted on the admin endpoints (default: only
    /// their digests, since keys may be API keys or tokens).
    #[serde(default)]
    pub(crate) admin_show_keys: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadyzInput {
    /// Not ready (503) while some upstream has no healthy server.
    #[serde(default)]
    pub(crate) require_healthy_upstreams: bool,
}

/// A listener that terminates TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsListenerInput {
    pub(crate) listen: String,
    /// Certificate/key pairs (PEM files, relative to the config file); a
    /// handshake gets the first whose names cover its SNI, else the first.
    pub(crate) certs: Vec<CertInput>,
    #[serde(default)]
    pub(crate) min_version: TlsVersion,
    /// Protocols offered by ALPN, preferred first (default h2, http/1.1).
    #[serde(default = "default_alpn")]
    pub(crate) alpn: Vec<Alpn>,
    /// Plain-HTTP addresses whose every request is redirected (308) to this
    /// listener.
    #[serde(default)]
    pub(crate) redirect_from: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertInput {
    pub(crate) cert: String,
    pub(crate) key: String,
}

fn default_alpn() -> Vec<Alpn> {
    vec![Alpn::H2, Alpn::Http11]
}

impl Default for ServerInput {
    fn default() -> Self {
        ServerInput {
            listen: default_listen(),
            admin: default_admin(),
            admin_token: None,
            watch: true,
            threads: None,
            work_stealing: None,
            http1_path: Http1Path::default(),
            trusted_proxies: Vec::new(),
            ipv6_prefix: default_ipv6_prefix(),
            api_key: ApiKeyInput::default(),
            headers: HeaderStyle::default(),
            header_timeout: None,
            body_timeout: None,
            idle_timeout: None,
            max_connections_per_ip: None,
            grace_period: None,
            max_body_bytes: None,
            max_header_bytes: None,
            tls: Vec::new(),
            handshake_timeout: None,
            readyz: ReadyzInput::default(),
            admin_show_keys: false,
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
}

fn default_admin() -> String {
    "127.0.0.1:9090".into()
}

fn default_ipv6_prefix() -> u8 {
    64
}

/// A plan: limits counted per consumer, or none at all.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanInput {
    #[serde(default)]
    pub(crate) limits: Vec<LimitInput>,
    /// Consumers on this plan skip the limits of every rule that says `plan:`.
    #[serde(default)]
    pub(crate) exempt: bool,
}

/// The consumers: in a file of their own (watched like the config), or listed
/// here.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumersInput {
    /// A YAML file with a `consumers:` list, relative to the config file.
    #[serde(default)]
    pub(crate) file: Option<String>,
    /// Consumers listed in the config itself.
    #[serde(default)]
    pub(crate) list: Vec<ConsumerInput>,
    /// The plan of requests without a key; unset, they are refused (401).
    #[serde(default)]
    pub(crate) anonymous: Option<String>,
    /// Headers that tell the upstream who the consumer is; any copy the
    /// client sent is removed.
    #[serde(default)]
    pub(crate) forward: ForwardInput,
    /// Consumers named by verified bearer JWTs.
    #[serde(default)]
    pub(crate) jwt: Option<JwtInput>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtInput {
    /// A JWKS file (relative to the config, watched like it), or
    /// `{ secret_env: NAME }` for a shared secret.
    pub(crate) keys: JwtKeysInput,
    pub(crate) algorithms: Vec<JwtAlgorithmInput>,
    /// Required `iss`, when set.
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    /// Required `aud`, when set.
    #[serde(default)]
    pub(crate) audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default 30s).
    #[serde(default)]
    pub(crate) leeway: Option<String>,
    /// The claim naming the consumer (default `sub`).
    #[serde(default)]
    pub(crate) consumer_claim: Option<String>,
    /// The claim naming the consumer's plan.
    #[serde(default)]
    pub(crate) plan_claim: Option<String>,
    /// The plan of a token whose plan claim is missing or names no plan;
    /// unset, such a token is refused.
    #[serde(default)]
    pub(crate) default_plan: Option<String>,
}

/// A JWKS file's path, or a secret from the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum JwtKeysInput {
    File(String),
    Secret(SecretEnvInput),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretEnvInput {
    pub(crate) secret_env: String,
}

/// Dispatches on the YAML shape, so each shape keeps precise messages.
impl<'de> Deserialize<'de> for JwtKeysInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;

        impl<'de> de::Visitor<'de> for KeysVisitor {
            type Value = JwtKeysInput;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JWKS file's path, or { secret_env: NAME }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<JwtKeysInput, E> {
                Ok(JwtKeysInput::File(v.to_string()))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<JwtKeysInput, A::Error> {
                SecretEnvInput::deserialize(MapAccessDeserializer::new(map))
                    .map(JwtKeysInput::Secret)
            }
        }

        deserializer.deserialize_any(KeysVisitor)
    }
}

/// The JWT signature algorithms tollgate verifies, by their JOSE names.
/// `none` is not one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) enum JwtAlgorithmInput {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForwardInput {
    /// Header for the consumer's id, e.g. `x-consumer-id`.
    #[serde(default)]
    pub(crate) id: Option<String>,
    /// Header for the consumer's plan, e.g. `x-consumer-plan`.
    #[serde(default)]
    pub(crate) plan: Option<String>,
}

/// One consumer: an id, a plan, and the API keys that name it, in clear or
/// as `sha256:` and the hex digest of the key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerInput {
    pub(crate) id: String,
    pub(crate) plan: String,
    pub(crate) keys: Vec<String>,
}

/// The consumers file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumersFileInput {
    pub(crate) consumers: Vec<ConsumerInput>,
}

/// Which of the consumer's plan limits a rule applies: `true` (all),
/// `false` (none), or a list of their names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum PlanSelectInput {
    All(bool),
    Named(Vec<String>),
}

/// Dispatches on the YAML shape, so each shape keeps precise messages.
impl<'de> Deserialize<'de> for PlanSelectInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PlanSelectVisitor;

        impl<'de> de::Visitor<'de> for PlanSelectVisitor {
            type Value = PlanSelectInput;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a list of plan limit names")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PlanSelectInput, E> {
                Ok(PlanSelectInput::All(v))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<PlanSelectInput, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(PlanSelectInput::Named)
            }
        }

        deserializer.deserialize_any(PlanSelectVisitor)
    }
}

/// Where `key: api_key` finds the key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyInput {
    #[serde(default = "default_api_key_headers")]
    pub(crate) headers: Vec<String>,
    #[serde(default = "default_true")]
    pub(crate) bearer: bool,
    #[serde(default)]
    pub(crate) query: Option<String>,
}

impl Default for ApiKeyInput {
    fn default() -> Self {
        ApiKeyInput {
            headers: default_api_key_headers(),
            bearer: true,
            query: None,
        }
    }
}

fn default_api_key_headers() -> Vec<String> {
    vec!["x-api-key".into()]
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreInput {
    #[serde(default)]
    pub(crate) backend: StoreBackend,
    /// How long a limit removed by a reload keeps its state (default 60s), so
    /// that undoing an edit does not reset counters.
    #[serde(default)]
    pub(crate) release_after: Option<String>,
    #[serde(default)]
    pub(crate) memory: MemoryStoreInput,
    /// Required when `backend: redis`.
    #[serde(default)]
    pub(crate) redis: Option<RedisStoreInput>,
    /// What requests get while Redis fails (default `local`).
    #[serde(default)]
    pub(crate) on_error: Option<OnError>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisStoreInput {
    /// One Redis server.
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// Seed nodes of a Redis Cluster (instead of `url`).
    #[serde(default)]
    pub(crate) urls: Option<Vec<String>>,
    /// A master found through Redis Sentinel (instead of `url` or `urls`).
    #[serde(default)]
    pub(crate) sentinel: Option<SentinelInput>,
    /// Key prefix (default `tollgate`).
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    /// Longest wait for a decision (default 25ms).
    #[serde(default)]
    pub(crate) timeout: Option<String>,
    /// Longest wait for a (re)connection (default 1s).
    #[serde(default)]
    pub(crate) connect_timeout: Option<String>,
    /// Lifetime of a concurrency permit unless renewed (default 30s).
    #[serde(default)]
    pub(crate) lease: Option<String>,
    #[serde(default)]
    pub(crate) breaker: BreakerInput,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SentinelInput {
    /// The name the sentinels know the master by (`sentinel monitor NAME`).
    pub(crate) master: String,
    /// The sentinels' URLs, asked in this order. Their user and password
    /// are used for the master too.
    pub(crate) nodes: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerInput {
    /// Consecutive failures that open it (default 3).
    #[serde(default)]
    pub(crate) failures: Option<u32>,
    /// How long it stays open before a probe (default 250ms).
    #[serde(default)]
    pub(crate) cooldown: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemoryStoreInput {
    /// Most limiter states held (default 1,000,000).
    #[serde(default)]
    pub(crate) max_keys: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoreBackend {
    /// State in this process; the embedded default.
    #[default]
    Memory,
    /// State in Redis, shared by every gateway pointing at it.
    Redis,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamInput {
    pub(crate) servers: Vec<ServerEntryInput>,
    /// Active health checks: an HTTP GET of `path` (200 passes), or a TCP
    /// connect when no path is given.
    #[serde(default)]
    pub(crate) health: Option<HealthInput>,
    /// Passive ejection: a server whose connects fail so many times in a
    /// row gets no requests for a while.
    #[serde(default)]
    pub(crate) passive: Option<PassiveInput>,
    #[serde(default)]
    pub(crate) tls: bool,
    /// TLS server name; defaults to the host part of the first server.
    #[serde(default)]
    pub(crate) sni: Option<String>,
    #[serde(default = "default_true")]
    pub(crate) verify_cert: bool,
    /// Replaces the client's `Host` header (useful for name-based upstreams).
    #[serde(default)]
    pub(crate) host_header: Option<String>,
    #[serde(default)]
    pub(crate) connect_timeout: Option<String>,
    #[serde(default)]
    pub(crate) read_timeout: Option<String>,
    #[serde(default)]
    pub(crate) write_timeout: Option<String>,
    /// Read timeout of upgraded (WebSocket) connections.
    #[serde(default)]
    pub(crate) tunnel_idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleInput {
    pub(crate) name: String,
    #[serde(rename = "match")]
    pub(crate) matches: MatchInput,
    pub(crate) upstream: String,
    #[serde(default)]
    pub(crate) limits: Vec<LimitInput>,
    /// The consumer's plan limits, decided with `limits` in one step.
    #[serde(default)]
    pub(crate) plan: Option<PlanSelectInput>,
    #[serde(default)]
    pub(crate) exempt: Vec<ExemptInput>,
    /// Overrides `server.headers` for this rule.
    #[serde(default)]
    pub(crate) headers: Option<HeaderStyle>,
    /// Replaces the default 429 answer.
    #[serde(default)]
    pub(crate) deny: Option<DenyInput>,
    /// Overrides `store.on_error` for this rule.
    #[serde(default)]
    pub(crate) on_error: Option<OnError>,
    /// Limits inside the WebSocket connections of this rule.
    #[serde(default)]
    pub(crate) websocket: Option<WebSocketInput>,
    /// The largest request body (413 beyond it); overrides
    /// `server.max_body_bytes`.
    #[serde(default)]
    pub(crate) max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebSocketInput {
    /// A limit on client-to-upstream data messages; `key: connection` counts
    /// per connection, any other key across connections (and gateways).
    #[serde(default)]
    pub(crate) messages: Option<LimitInput>,
    /// The largest client message (all its fragments); larger ones close the
    /// connection with 1009.
    #[serde(default)]
    pub(crate) max_message_bytes: Option<u64>,
    /// What a message over the limit gets (default `drop`).
    #[serde(default)]
    pub(crate) on_limit: Option<OnLimit>,
    /// Closed when nothing moves either way for this long (default: the
    /// upstream's `tunnel_idle_timeout`).
    #[serde(default)]
    pub(crate) idle_timeout: Option<String>,
    /// Closed (1001) after this long, however busy.
    #[serde(default)]
    pub(crate) max_lifetime: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchInput {
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) methods: Vec<String>,
    #[serde(default)]
    pub(crate) host: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitInput {
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) key: KeyInput,
    /// `100/second`…; or `concurrent:` instead.
    #[serde(default)]
    pub(crate) rate: Option<String>,
    /// In-flight requests (open connections) per key, instead of a rate.
    #[serde(default)]
    pub(crate) concurrent: Option<u64>,
    /// Default `gcra`.
    #[serde(default)]
    pub(crate) algorithm: Option<AlgorithmInput>,
    #[serde(default)]
    pub(crate) burst: Option<u64>,
    /// `token_bucket` only: tokens a client may borrow and must pay back.
    #[serde(default)]
    pub(crate) debt: Option<u64>,
    /// `leaky_bucket` only: delay excess requests instead of refusing them.
    #[serde(default)]
    pub(crate) delay: Option<bool>,
    /// What one request costs (default 1).
    #[serde(default)]
    pub(crate) cost: Option<CostInput>,
    #[serde(default)]
    pub(crate) missing: Option<MissingPolicy>,
    #[serde(default)]
    pub(crate) mode: Mode,
    /// With the Redis store: `exact` (default, one round trip per request)
    /// or `batched` (admit from a small allowance reserved in Redis).
    #[serde(default)]
    pub(crate) sync: Option<SyncInput>,
    /// Units reserved per Redis call with `sync: batched` (default 10).
    #[serde(default)]
    pub(crate) batch: Option<u64>,
    /// The penalty box: a key refused this often is refused outright a while.
    #[serde(default)]
    pub(crate) ban: Option<BanInput>,
}

/// A limit's penalty box: `{ after: 20, within: 1m, for: 10m, escalate: 2, max: 24h }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BanInput {
    /// Refusals within `within` that start a ban.
    pub(crate) after: u32,
    /// The window the refusals are counted in (default 1m).
    #[serde(default)]
    pub(crate) within: Option<String>,
    /// The first ban's length.
    #[serde(rename = "for")]
    pub(crate) duration: String,
    /// Each repeat offence multiplies the length by this (default 1).
    #[serde(default)]
    pub(crate) escalate: Option<u32>,
    /// The longest ban, and how long offences are remembered after one
    /// (default 24h).
    #[serde(default)]
    pub(crate) max: Option<String>,
    /// `shadow`: count the bans that would have happened, refuse nothing.
    /// Default: the limit's mode.
    #[serde(default)]
    pub(crate) mode: Option<Mode>,
}

/// How a limit on the Redis store talks to Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SyncInput {
    /// One atomic round trip per request.
    #[default]
    Exact,
    /// Requests are admitted from an allowance reserved in Redis `batch`
    /// units at a time; unused units go back after a second.
    Batched,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AlgorithmInput {
    #[default]
    Gcra,
    TokenBucket,
    LeakyBucket,
    FixedWindow,
    SlidingWindowLog,
    SlidingWindowCounter,
}

/// A request's cost: a number, or read from a header with a cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum CostInput {
    Fixed(u64),
    Header(HeaderCostInput),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderCostInput {
    pub(crate) header: String,
    /// The most one request may cost; larger values are refused with 400.
    pub(crate) max: u64,
    /// The cost when the header is absent.
    #[serde(default = "default_cost")]
    pub(crate) default: u64,
}

fn default_cost() -> u64 {
    1
}

/// A number, or a `{ header, max, default }` mapping, each with its own
/// precise error messages.
impl<'de> Deserialize<'de> for CostInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CostVisitor;

        impl<'de> de::Visitor<'de> for CostVisitor {
            type Value = CostInput;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, or { header: NAME, max: N, default: N }")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CostInput, E> {
                Ok(CostInput::Fixed(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CostInput, E> {
                u64::try_from(v)
                    .map(CostInput::Fixed)
                    .map_err(|_| E::custom("a cost cannot be negative"))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<CostInput, A::Error> {
                HeaderCostInput::deserialize(MapAccessDeserializer::new(map)).map(CostInput::Header)
            }
        }

        deserializer.deserialize_any(CostVisitor)
    }
}

/// One part of a key as written: `ip`, `api_key`, `consumer`, `global`,
/// `connection` (WebSocket message limits only), `{ header: NAME }`,
/// `{ cookie: NAME }` or `{ query: NAME }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KeyPartInput {
    Ip,
    Connection,
    ApiKey,
    Consumer,
    Global,
    Header(String),
    Cookie(String),
    Query(String),
    JwtClaim(String),
}

/// A key: one part, or a list of parts for a composite key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum KeyInput {
    One(KeyPartInput),
    Composite(Vec<KeyPartInput>),
}

impl KeyInput {
    pub(crate) fn parts(&self) -> &[KeyPartInput] {
        match self {
            KeyInput::One(part) => std::slice::from_ref(part),
            KeyInput::Composite(parts) => parts,
        }
    }
}

/// Dispatches on the YAML shape so that each shape keeps the precise error
/// messages of the part type (an untagged enum would say "did not match any
/// variant" instead).
impl<'de> Deserialize<'de> for KeyInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor(PhantomData<KeyInput>);

        impl<'de> de::Visitor<'de> for KeyVisitor {
            type Value = KeyInput;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("ip, api_key, consumer, global, connection, { header: NAME }, { cookie: NAME }, { query: NAME }, { jwt_claim: NAME }, or a list of these")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyInput, E> {
                KeyPartInput::deserialize(v.into_deserializer()).map(KeyInput::One)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<KeyInput, A::Error> {
                KeyPartInput::deserialize(MapAccessDeserializer::new(map)).map(KeyInput::One)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<KeyInput, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(KeyInput::Composite)
            }
        }

        deserializer.deserialize_any(KeyVisitor(PhantomData))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExemptInput {
    /// Client IPs in these CIDRs skip the rule's limits.
    Ip(Vec<String>),
    /// Requests whose header matches a glob skip the rule's limits.
    Header(HeaderExemptInput),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderExemptInput {
    pub(crate) name: String,
    pub(crate) value: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DenyInput {
    #[serde(default)]
    pub(crate) status: Option<u16>,
    /// Body template; `{rule}`, `{limit}` and `{retry_after}` are filled in.
    #[serde(default)]
    pub(crate) body: Option<String>,
    #[serde(default)]
    pub(crate) content_type: Option<String>,
}

/// An upstream server: `host:port`, or `{ address: host:port, weight: N }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum ServerEntryInput {
    Address(String),
    Weighted(WeightedServerInput),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightedServerInput {
    pub(crate) address: String,
    #[serde(default = "default_weight")]
    pub(crate) weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl ServerEntryInput {
    pub(crate) fn address(&self) -> &str {
        match self {
            ServerEntryInput::Address(a) => a,
            ServerEntryInput::Weighted(w) => &w.address,
        }
    }

    pub(crate) fn weight(&self) -> u32 {
        match self {
            ServerEntryInput::Address(_) => 1,
            ServerEntryInput::Weighted(w) => w.weight,
        }
    }
}

/// Dispatches on the YAML shape, so each shape keeps precise messages.
impl<'de> Deserialize<'de> for ServerEntryInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServerVisitor;

        impl<'de> de::Visitor<'de> for ServerVisitor {
            type Value = ServerEntryInput;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("host:port, or { address: host:port, weight: N }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ServerEntryInput, E> {
                Ok(ServerEntryInput::Address(v.to_string()))
            }

            fn visit_map<A: de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ServerEntryInput, A::Error> {
                WeightedServerInput::deserialize(MapAccessDeserializer::new(map))
                    .map(ServerEntryInput::Weighted)
            }
        }

        deserializer.deserialize_any(ServerVisitor)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthInput {
    /// HTTP check of this path; unset: a TCP connect.
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// Between checks of a server (default 5s).
    #[serde(default)]
    pub(crate) interval: Option<String>,
    /// For one check (default 1s).
    #[serde(default)]
    pub(crate) timeout: Option<String>,
    /// Passes in a row that bring a server back (default 2).
    #[serde(default)]
    pub(crate) healthy: Option<u32>,
    /// Failures in a row that take a server out (default 3).
    #[serde(default)]
    pub(crate) unhealthy: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassiveInput {
    /// Failed connects in a row (default 3).
    #[serde(default)]
    pub(crate) failures: Option<u32>,
    /// How long an ejected server gets no requests (default 10s).
    #[serde(default)]
    pub(crate) eject_for: Option<String>,
}
