//! The Redis store: gateways that share one Redis (or one Redis Cluster) share
//! their limits. One Lua script decides every limit of a request in one atomic
//! round trip, on Redis's clock, so gateway clocks do not matter and a denied
//! request spends nothing.
//!
//! The script implements the algorithms of `limit::*` in microseconds; the
//! differential test in `tests/redis_store.rs` holds the two to the same answers.
//!
//! Keys are `<prefix>:{<client digest>}:<limit id>`: the hash tag is the client
//! key, so on a cluster all the limits of one key share a slot and are decided
//! together. Limits of one request keyed differently (per IP and per API key)
//! may land in different slots; those are decided slot by slot and the slots
//! that spent are refunded when another denies. Between the two steps a
//! concurrent request may see the spent quota: a transient under-admission,
//! never an over-admission.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrayvec::ArrayVec;
use futures_util::future::try_join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};
use ring::digest;

use super::memory::MAX_CHECKS;
use super::{Check, Decided, Decision, Limiter, Nanos, Permit};
use crate::identity::{ClientKey, KeyValue};

const DECIDE: &str = include_str!("decide.lua");
const REFUND: &str = include_str!("refund.lua");
const LEASE: &str = include_str!("lease.lua");

/// Hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// Where the shared state lives and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// Prepended to every key, so several deployments can share a Redis.
    pub prefix: String,
    /// The most a decision waits for Redis before `on_error` applies.
    pub timeout: Duration,
    /// The most a (re)connection attempt takes.
    pub connect_timeout: Duration,
    /// How long a concurrency permit lives in Redis unless renewed, so that a
    /// gateway that dies does not hold its permits for ever.
    pub lease: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

/// A concurrency permit held in Redis: the members `<id>#1..=cost` of the
/// limit's sorted set, scored by when they expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub(crate) key: String,
    pub(crate) id: String,
    pub(crate) cost: u64,
}

enum Connection {
    Single(ConnectionManager),
    /// Connected on first use, so the gateway starts while the cluster is down.
    Cluster(Box<LazyCluster>),
}

struct LazyCluster {
    client: ClusterClient,
    connection: tokio::sync::OnceCell<ClusterConnection>,
}

pub struct RedisStore {
    connection: Connection,
    decide: Script,
    refund: Script,
    lease: Script,
    settings: RedisSettings,
    /// Makes request ids unique across gateways.
    instance: String,
    next_id: AtomicU64,
}

/// The checks of one request that share a hash slot.
struct Group {
    slot: u16,
    members: ArrayVec<usize, MAX_CHECKS>,
}

impl RedisStore {
    /// Builds the store without connecting: the gateway starts (and falls back
    /// on `on_error`) while Redis is down, and connects when Redis is back.
    pub fn new(settings: RedisSettings) -> Result<Self, RedisError> {
        let connection = match &settings.target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                // Short reconnect back-off: Redis coming back must be noticed
                // within a second, and the breaker already spaces the attempts.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(Some(settings.timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(100));
                Connection::Single(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            RedisTarget::Cluster(urls) => Connection::Cluster(Box::new(LazyCluster {
                client: ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.timeout)
                    .retries(1)
                    .build()?,
                connection: tokio::sync::OnceCell::new(),
            })),
        };
        Ok(RedisStore {
            connection,
            decide: Script::new(DECIDE),
            refund: Script::new(REFUND),
            lease: Script::new(LEASE),
            settings,
            instance: instance_id(),
            next_id: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Decides on Redis's clock.
    pub async fn decide_shared(&self, checks: &[Check<'_>]) -> Result<Decided, RedisError> {
        self.decide_at(checks, None).await
    }

    /// Decides at `now_micros` instead of Redis's clock when given: tests pin
    /// the time to compare with the memory store.
    pub async fn decide_at(
        &self,
        checks: &[Check<'_>],
        now_micros: Option<u64>,
    ) -> Result<Decided, RedisError> {
        let keys: ArrayVec<String, MAX_CHECKS> = checks
            .iter()
            .map(|c| self.state_key(&c.key, c.limit.0))
            .collect();
        let id = format!(
            "{}.{:x}",
            self.instance,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let groups = self.groups(&keys);
        let now_arg = now_micros.map_or_else(String::new, |n| n.to_string());
        let calls = groups.iter().map(|group| {
            let mut call = self.decide.prepare_invoke();
            call.arg(&now_arg).arg(group.members.len());
            for &i in &group.members {
                call.key(&keys[i]);
                push_check(&mut call, &checks[i], &id, self.settings.lease);
            }
            async move {
                let mut connection = self.connection().await?;
                call.invoke_async::<Vec<i64>>(&mut connection).await
            }
        });
        let replies = try_join_all(calls).await?;

        let mut decisions = [Decision::allowed(0, 0, 0); MAX_CHECKS];
        let mut denied_in = ArrayVec::<bool, MAX_CHECKS>::new();
        for (group, reply) in groups.iter().zip(&replies) {
            let mut denied = false;
            for (k, &i) in group.members.iter().enumerate() {
                let decision = decode(reply, k, &checks[i].limiter).ok_or_else(bad_reply)?;
                denied |= checks[i].enforced && !decision.allowed;
                decisions[i] = decision;
            }
            denied_in.push(denied);
        }
        let denied = denied_in.iter().any(|&d| d);
        if denied && groups.len() > 1 {
            self.refund(checks, &keys, &groups, &replies, &denied_in, &id)
                .await?;
        }
        let mut permits = Vec::new();
        if !denied {
            for (i, check) in checks.iter().enumerate() {
                if check.limiter.holds_permits() && decisions[i].allowed {
                    permits.push(Permit::Lease(Lease {
                        key: keys[i].clone(),
                        id: id.clone(),
                        cost: check.cost,
                    }));
                }
            }
        }
        Ok(Decided {
            decisions: decisions[..checks.len()].iter().copied().collect(),
            permits,
        })
    }

    /// Gives back what the slots without a denial spent.
    async fn refund(
        &self,
        checks: &[Check<'_>],
        keys: &[String],
        groups: &[Group],
        replies: &[Vec<i64>],
        denied_in: &[bool],
        id: &str,
    ) -> Result<(), RedisError> {
        let calls = groups
            .iter()
            .zip(replies)
            .zip(denied_in)
            .filter(|(_, &denied)| !denied)
            .map(|((group, reply), _)| {
                let decided_at = reply.last().copied().unwrap_or_default();
                let mut call = self.refund.prepare_invoke();
                let spent: ArrayVec<usize, MAX_CHECKS> = group
                    .members
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| reply.get(k * 5) == Some(&1))
                    .map(|(_, &i)| i)
                    .collect();
                call.arg(decided_at).arg(spent.len());
                for &i in &spent {
                    call.key(&keys[i]);
                    push_check(&mut call, &checks[i], id, self.settings.lease);
                }
                async move {
                    let mut connection = self.connection().await?;
                    call.invoke_async::<i64>(&mut connection).await
                }
            });
        try_join_all(calls).await.map(|_| ())
    }

    /// Pushes the expiry of held leases to now + lease.
    pub async fn renew(&self, leases: &[Lease]) -> Result<(), RedisError> {
        self.lease_op("renew", leases).await
    }

    /// Gives leases back.
    pub async fn release(&self, leases: &[Lease]) -> Result<(), RedisError> {
        self.lease_op("release", leases).await
    }

    async fn lease_op(&self, op: &str, leases: &[Lease]) -> Result<(), RedisError> {
        let lease_micros = micros(self.settings.lease.as_nanos() as Nanos);
        for lease in leases {
            let mut call = self.lease.prepare_invoke();
            call.key(&lease.key)
                .arg(op)
                .arg(&lease.id)
                .arg(lease.cost)
                .arg(lease_micros);
            let mut connection = self.connection().await?;
            call.invoke_async::<i64>(&mut connection).await?;
        }
        Ok(())
    }

    /// Whether Redis answers a PING.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(|_| ())
    }

    async fn connection(&self) -> Result<AnyConnection, RedisError> {
        match &self.connection {
            Connection::Single(manager) => Ok(AnyConnection::Single(manager.clone())),
            Connection::Cluster(cluster) => cluster
                .connection
                .get_or_try_init(|| cluster.client.get_async_connection())
                .await
                .map(|c| AnyConnection::Cluster(c.clone())),
        }
    }

    /// `<prefix>:{<digest of the client key>}:<limit id>`. The digest keeps
    /// client data (which may hold secrets such as API keys) out of Redis and
    /// bounds the key length.
    fn state_key(&self, key: &ClientKey<'_>, limit: u64) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for value in key.values() {
            match value {
                KeyValue::Ip(ip) => {
                    ctx.update(b"i");
                    match ip {
                        std::net::IpAddr::V4(v4) => ctx.update(&v4.octets()),
                        std::net::IpAddr::V6(v6) => ctx.update(&v6.octets()),
                    }
                }
                KeyValue::Text(text) => {
                    ctx.update(b"t");
                    ctx.update(&(text.len() as u64).to_be_bytes());
                    ctx.update(text);
                }
                KeyValue::Global => ctx.update(b"g"),
            }
        }
        let digest = ctx.finish();
        let mut tag = String::with_capacity(32);
        for byte in &digest.as_ref()[..16] {
            tag.push_str(&format!("{byte:02x}"));
        }
        format!("{}:{{{tag}}}:{limit:016x}", self.settings.prefix)
    }

    /// One group on a single node; one per hash slot on a cluster.
    fn groups(&self, keys: &[String]) -> ArrayVec<Group, MAX_CHECKS> {
        let mut groups = ArrayVec::<Group, MAX_CHECKS>::new();
        let cluster = matches!(self.connection, Connection::Cluster(_));
        for (i, key) in keys.iter().enumerate() {
            let slot = if cluster { hash_slot(key) } else { 0 };
            match groups.iter_mut().find(|g| g.slot == slot) {
                Some(group) => group.members.push(i),
                None => {
                    let mut members = ArrayVec::new();
                    members.push(i);
                    groups.push(Group { slot, members });
                }
            }
        }
        groups
    }
}

/// Either kind of connection, as the `redis` crate's commands take it.
enum AnyConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for AnyConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AnyConnection::Single(c) => c.req_packed_command(cmd),
            AnyConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            AnyConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            AnyConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConnection::Single(c) => c.get_db(),
            AnyConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// `url` with any user and password replaced, for logs and admin output.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The script's seven arguments for one check.
fn push_check(
    call: &mut redis::ScriptInvocation<'_>,
    check: &Check<'_>,
    id: &str,
    lease: Duration,
) {
    let (algorithm, a, b, c) = script_params(&check.limiter, lease);
    call.arg(algorithm)
        .arg(a)
        .arg(b)
        .arg(c)
        .arg(check.cost)
        .arg(u8::from(check.enforced))
        .arg(id);
}

/// The script's name and parameters for an algorithm, times in microseconds
/// (rounded up: a limit is never looser in Redis than in memory).
fn script_params(limiter: &Limiter, lease: Duration) -> (&'static str, u64, u64, u64) {
    match limiter {
        Limiter::Gcra(g) => ("gcra", micros(g.interval), g.burst, 0),
        Limiter::LeakyBucket(l) if l.delay => ("leaky_shape", micros(l.interval), l.capacity, 0),
        Limiter::LeakyBucket(l) => ("leaky", micros(l.interval), l.capacity, 0),
        Limiter::TokenBucket(t) => ("token", micros(t.interval), t.capacity, t.debt),
        Limiter::FixedWindow(w) => ("fixed", micros(w.period), w.limit, 0),
        Limiter::SlidingLog(w) => ("log", micros(w.period), w.limit, 0),
        Limiter::SlidingCounter(w) => ("counter", micros(w.period), w.limit, 0),
        Limiter::Concurrent(c) => ("conc", micros(lease.as_nanos() as Nanos), c.max, 0),
    }
}

/// Whether the script computes `limiter` exactly: Lua numbers are doubles,
/// exact up to 2^53, and timestamps (about 2^51 µs) are added to the largest
/// product an algorithm forms, so that must stay below 2^52. Buckets multiply
/// their interval by a cost of at most the capacity; the sliding counter
/// weighs counts by the period; the fixed window and the log never multiply.
pub fn exact_in_lua(limiter: &Limiter) -> bool {
    let (_, a, b, c) = script_params(limiter, Duration::ZERO);
    let largest = match limiter {
        Limiter::Gcra(_)
        | Limiter::LeakyBucket(_)
        | Limiter::TokenBucket(_)
        | Limiter::SlidingCounter(_) => u128::from(a) * (u128::from(b) + u128::from(c) + 1),
        Limiter::FixedWindow(_) | Limiter::SlidingLog(_) | Limiter::Concurrent(_) => u128::from(a),
    };
    largest < 1 << 52
}

fn micros(nanos: Nanos) -> u64 {
    nanos.div_ceil(1000).max(1)
}

/// The `k`th decision of a script reply.
fn decode(reply: &[i64], k: usize, limiter: &Limiter) -> Option<Decision> {
    let v = reply.get(k * 5..k * 5 + 5)?;
    let nanos = |us: i64| (us.max(0) as u64).saturating_mul(1000);
    Some(Decision {
        allowed: v[0] == 1,
        limit: limiter.quota(),
        remaining: v[1].max(0) as u64,
        reset_after: nanos(v[2]),
        retry_after: if v[3] < 0 { Nanos::MAX } else { nanos(v[3]) },
        delay: nanos(v[4]),
    })
}

fn bad_reply() -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "the decide script returned a short reply",
    ))
}

/// Redis Cluster's slot of a key: CRC16 (XMODEM) of its hash tag.
fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS
}

/// A random id for this process.
fn instance_id() -> String {
    let mut bytes = [0u8; 6];
    // Without randomness ids are still unique within this process; only
    // members of sliding logs and leases shared with another gateway could
    // collide, and `SystemRandom` does not fail on supported platforms.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_slots_follow_the_cluster_spec() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(hash_slot("123456789"), 12739);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        assert_eq!(hash_slot("foo{}{bar}"), hash_slot("foo{}{bar}"));
        assert_eq!(hash_slot("foo{{bar}}zap"), hash_slot("{bar"));
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("redis://user:hunter2@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@h:1"), "rediss://<redacted>@h:1");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock"),
            "redis+unix:///run/redis.sock"
        );
    }

    #[test]
    fn microseconds_round_up() {
        assert_eq!(micros(1), 1);
        assert_eq!(micros(1000), 1);
        assert_eq!(micros(1001), 2);
        assert_eq!(micros(333_333_334), 333_334);
    }
}
