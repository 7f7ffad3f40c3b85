//! The Redis store: gateways that share one Redis (a single server, a Redis
//! Cluster, or a master found through Redis Sentinel) share their limits. One
//! Lua script decides every limit of a request in one atomic round trip, on
//! Redis's clock, so gateway clocks do not matter and a denied request spends
//! nothing.
//!
//! The script implements the algorithms of `limit::algorithm` in microseconds; the
//! differential test in `tests/redis_store.rs` holds the two to the same answers.
//!
//! Keys are `<prefix>:{<client digest>}:<limit id>`: the hash tag is the client
//! key, so on a cluster all the limits of one key share a slot and are decided
//! together. Limits of one request keyed differently (per IP and per API key)
//! may land in different slots; those are decided slot by slot and the slots
//! that spent are refunded when another denies. Between the two steps a
//! concurrent request may see the spent quota: a transient under-admission,
//! never an over-admission.

mod sentinel;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use arrayvec::ArrayVec;
use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use sentinel::{MasterConnection, SentinelError, Sentinels};

use crate::identity::{ClientKey, KeyDigest};
use crate::limit::{
    BanMark, BanPolicy, Check, Decision, Decisions, Limiter, Nanos, Permit, Store, StoreError,
    MAX_CHECKS,
};

const DECIDE: &str = concat!(include_str!("clock.lua"), include_str!("decide.lua"));
const REFUND: &str = concat!(include_str!("clock.lua"), include_str!("refund.lua"));
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
    /// The master the sentinels at `nodes` know as `master`, followed across
    /// failovers.
    Sentinel {
        master: String,
        nodes: Vec<String>,
    },
}

/// A concurrency permit held in Redis: the members `<id>#1..=cost` of the
/// limit's sorted set, scored by when they expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub(crate) key: String,
    pub(crate) id: String,
    pub(crate) cost: u64,
}

/// How to reach Redis; connected on first use, in the background.
enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
    Sentinel(Box<Sentinels>),
}

/// The store; cheap to clone (tasks that must finish after their caller is
/// gone, such as refunds, own a clone).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// Set once the first connection succeeds. A single Redis's or a
    /// cluster's then reconnects by itself; a master found through Sentinel
    /// is replaced once lost (`AnyConnection::is_lost`).
    connection: ArcSwapOption<AnyConnection>,
    connecting: AtomicBool,
    connect_attempted: Notify,
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

/// One check as the script takes it, owned so that a decision can outlive
/// its caller.
#[derive(Debug)]
struct ScriptCheck {
    key: String,
    algorithm: &'static str,
    params: [u64; 3],
    cost: u64,
    enforced: bool,
    quota: u64,
    holds_permits: bool,
    /// The penalty box: its key and policy.
    ban: Option<(String, BanPolicy)>,
}

/// Integers per check in `decide.lua`'s reply.
const REPLY_PER_CHECK: usize = 8;

/// A request's decision, planned: its checks, their slots, its id.
struct ScriptCall {
    checks: ArrayVec<ScriptCheck, MAX_CHECKS>,
    groups: ArrayVec<Group, MAX_CHECKS>,
    id: String,
    now: String,
}

impl RedisStore {
    /// Builds the store without connecting (and without needing a runtime):
    /// the gateway starts, and falls back on `on_error`, while Redis is down.
    pub fn new(settings: RedisSettings) -> Result<Self, RedisError> {
        let target =
            match &settings.target {
                RedisTarget::Single(url) => Target::Single(redis::Client::open(url.as_str())?),
                RedisTarget::Cluster(urls) => Target::Cluster(Box::new(
                    ClusterClient::builder(urls.iter().map(String::as_str))
                        .connection_timeout(settings.connect_timeout)
                        .response_timeout(settings.timeout)
                        .retries(1)
                        .build()?,
                )),
                RedisTarget::Sentinel { master, nodes } => Target::Sentinel(Box::new(
                    Sentinels::new(master, nodes, settings.connect_timeout, settings.timeout)?,
                )),
            };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                target,
                connection: ArcSwapOption::empty(),
                connecting: AtomicBool::new(false),
                connect_attempted: Notify::new(),
                decide: Script::new(DECIDE),
                refund: Script::new(REFUND),
                lease: Script::new(LEASE),
                settings,
                instance: instance_id(),
                next_id: AtomicU64::new(0),
            }),
        })
    }

    pub(crate) fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// Decides on Redis's clock.
    pub async fn decide_shared(&self, checks: &[Check<'_>]) -> Result<Decisions, RedisError> {
        self.decide_at(checks, None).await
    }

    /// Decides at `now_micros` instead of Redis's clock when given: tests pin
    /// the time to compare with the memory store.
    pub async fn decide_at(
        &self,
        checks: &[Check<'_>],
        now_micros: Option<u64>,
    ) -> Result<Decisions, RedisError> {
        let plan = self.plan(checks, now_micros);
        let takes_leases = plan.checks.iter().any(|check| check.holds_permits);
        if plan.groups.len() == 1 && !takes_leases {
            return self.run(&plan).await;
        }
        // Several slots (decided one by one, refunded on a denial) or leases:
        // in a task of its own, so that a caller timing out stops neither a
        // refund nor the release of leases taken after it gave up.
        let store = self.clone();
        let (answer, decided) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let result = store.run(&plan).await;
            if let Err(Ok(unclaimed)) = answer.send(result) {
                store.release_orphans(leases(&unclaimed.permits));
            }
        });
        decided.await.map_err(|e| {
            RedisError::from((redis::ErrorKind::Client, "decision task", e.to_string()))
        })?
    }

    fn script_check(&self, c: &Check<'_>) -> ScriptCheck {
        let (algorithm, a, b, p) = script_params(&c.limiter, self.inner.settings.lease);
        let key = self.state_key(&c.key, c.limit.0);
        ScriptCheck {
            ban: c.ban.map(|policy| (ban_key(&key), policy)),
            key,
            algorithm,
            params: [a, b, p],
            cost: c.cost,
            enforced: c.enforced,
            quota: c.limiter.quota(),
            holds_permits: c.limiter.holds_permits(),
        }
    }

    fn plan(&self, checks: &[Check<'_>], now_micros: Option<u64>) -> ScriptCall {
        let checks: ArrayVec<ScriptCheck, MAX_CHECKS> =
            checks.iter().map(|c| self.script_check(c)).collect();
        ScriptCall {
            groups: self.groups(&checks),
            checks,
            id: format!(
                "{}.{:x}",
                self.inner.instance,
                self.inner.next_id.fetch_add(1, Ordering::Relaxed)
            ),
            now: now_micros.map_or_else(String::new, |n| n.to_string()),
        }
    }

    async fn run(&self, plan: &ScriptCall) -> Result<Decisions, RedisError> {
        let replies = join_all(plan.groups.iter().map(|group| {
            self.invoke::<Vec<i64>>(&self.inner.decide, plan, &group.members, &plan.now)
        }))
        .await;
        let mut decisions = [Decision::allowed(0, 0, 0); MAX_CHECKS];
        let mut failure = None;
        // Per group: its reply when it spent (answered, no enforced denial).
        let mut spent: ArrayVec<Option<&Vec<i64>>, MAX_CHECKS> = ArrayVec::new();
        let mut denied = false;
        for (group, reply) in plan.groups.iter().zip(&replies) {
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => {
                    failure = Some(e.clone());
                    spent.push(None);
                    continue;
                }
            };
            let mut group_denied = false;
            for (k, &i) in group.members.iter().enumerate() {
                let Some((decision, ban_left, _)) = decode_with_ban(reply, k, plan.checks[i].quota)
                else {
                    failure = Some(bad_reply());
                    continue;
                };
                if decision.ban == BanMark::Started {
                    let decided_at = reply.last().copied().unwrap_or_default();
                    self.index_ban(&plan.checks[i], decided_at, ban_left);
                }
                group_denied |= plan.checks[i].enforced && !decision.allowed;
                decisions[i] = decision;
            }
            denied |= group_denied;
            spent.push((!group_denied).then_some(reply));
        }
        if (denied || failure.is_some()) && plan.groups.len() > 1 {
            self.refund(plan, &spent).await;
        }
        if let Some(e) = failure {
            let maybe_taken = plan
                .checks
                .iter()
                .filter(|check| check.holds_permits)
                .map(|check| Lease {
                    key: check.key.clone(),
                    id: plan.id.clone(),
                    cost: check.cost,
                })
                .collect();
            self.release_orphans(maybe_taken);
            return Err(e);
        }
        let mut permits = Vec::new();
        if !denied {
            for (i, check) in plan.checks.iter().enumerate() {
                if check.holds_permits && decisions[i].allowed {
                    permits.push(Permit::Lease(Lease {
                        key: check.key.clone(),
                        id: plan.id.clone(),
                        cost: check.cost,
                    }));
                }
            }
        }
        Ok(Decisions {
            decisions: decisions[..plan.checks.len()].iter().copied().collect(),
            permits,
            at: None,
        })
    }

    /// Gives back what the groups that spent took. A refund that fails is
    /// logged, not returned: the request's answer stands, and the quota comes
    /// back when its keys expire.
    async fn refund(&self, plan: &ScriptCall, spent: &[Option<&Vec<i64>>]) {
        let calls = plan.groups.iter().zip(spent).filter_map(|(group, reply)| {
            let reply = (*reply)?;
            let admitted: ArrayVec<usize, MAX_CHECKS> = group
                .members
                .iter()
                .enumerate()
                .filter(|(k, _)| reply.get(k * REPLY_PER_CHECK) == Some(&1))
                .map(|(_, &i)| i)
                .collect();
            let decided_at = reply.last().copied().unwrap_or_default().to_string();
            Some(async move {
                self.invoke::<i64>(&self.inner.refund, plan, &admitted, &decided_at)
                    .await
            })
        });
        for result in join_all(calls).await {
            if let Err(e) = result {
                tracing::warn!("refunding a request denied in another slot failed: {e}");
            }
        }
    }

    /// Runs `script` over the checks `members` of `plan`.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        plan: &ScriptCall,
        members: &[usize],
        now: &str,
    ) -> Result<T, RedisError> {
        let call = script_call(script, plan, members, now, false);
        let mut connection = self.connection().await?;
        call.invoke_async::<T>(&mut connection).await
    }

    /// Lists a ban that just started in its limit's index (`bans_key`), so
    /// that any gateway can list the bans running: in the background, since
    /// the request's answer does not wait for it. Scored by when it ends, in
    /// microseconds on Redis's clock.
    fn index_ban(&self, check: &ScriptCheck, decided_at: i64, left: Nanos) {
        let (Some((ban_key, policy)), Ok(runtime)) =
            (&check.ban, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let Some(index) = self.bans_key_of_state(&check.key) else {
            return;
        };
        let store = self.clone();
        let ban_key = ban_key.clone();
        let ends = decided_at.saturating_add(micros(left) as i64);
        let keep = micros(policy.max) / 1000 + 1;
        runtime.spawn(async move {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .zadd(&index, &ban_key, ends)
                .ignore()
                .pexpire(&index, keep as i64)
                .ignore();
            let Ok(mut connection) = store.connection().await else {
                return;
            };
            if let Err(e) = pipe.query_async::<()>(&mut connection).await {
                tracing::debug!("listing a ban in Redis failed: {e}");
            }
        });
    }

    /// `<prefix>:bans:<limit id>`: the index of a limit's bans, named from
    /// one of the limit's state keys.
    fn bans_key_of_state(&self, state_key: &str) -> Option<String> {
        let limit = state_key.rsplit(':').next()?;
        Some(format!("{}:bans:{limit}", self.inner.settings.prefix))
    }

    /// The state of the key named by `digest` under a limit, without
    /// spending: what a request of cost 0 would be told, and its ban.
    pub(crate) async fn peek(
        &self,
        limit: u64,
        limiter: &Limiter,
        ban: Option<BanPolicy>,
        digest: &KeyDigest,
    ) -> Result<(Decision, Nanos, u32), RedisError> {
        let (algorithm, a, b, p) = script_params(limiter, self.inner.settings.lease);
        let key = self.state_key_of(digest, limit);
        let mut checks = ArrayVec::new();
        checks.push(ScriptCheck {
            ban: ban.map(|policy| (ban_key(&key), policy)),
            key,
            algorithm,
            params: [a, b, p],
            cost: 0,
            enforced: true,
            quota: limiter.quota(),
            holds_permits: false,
        });
        let plan = ScriptCall {
            groups: self.groups(&checks),
            checks,
            id: "peek".into(),
            now: String::new(),
        };
        let call = script_call(&self.inner.decide, &plan, &[0], "", true);
        let mut connection = self.connection().await?;
        let reply: Vec<i64> = call.invoke_async(&mut connection).await?;
        decode_with_ban(&reply, 0, limiter.quota()).ok_or_else(bad_reply)
    }

    /// Forgets the state and the ban of the key named by `digest` under a
    /// limit. Returns whether a ban was running.
    pub(crate) async fn forget(&self, limit: u64, digest: &KeyDigest) -> Result<bool, RedisError> {
        let key = self.state_key_of(digest, limit);
        let ban = ban_key(&key);
        let index = self.bans_key_of_state(&key).ok_or_else(bad_reply)?;
        let mut connection = self.connection().await?;
        // Read first: the record says whether a ban was running.
        let until: Option<i64> = redis::cmd("HGET")
            .arg(&ban)
            .arg("until")
            .query_async(&mut connection)
            .await?;
        let now = redis_now_micros(&mut connection).await?;
        redis::cmd("DEL")
            .arg(&key)
            .arg(&ban)
            .query_async::<()>(&mut connection)
            .await?;
        redis::cmd("ZREM")
            .arg(&index)
            .arg(&ban)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(until.is_some_and(|u| u > now))
    }

    /// The bans of a limit running now, from its index: at most `most`,
    /// those ending last first.
    pub(crate) async fn active_bans(
        &self,
        limit: u64,
        most: usize,
    ) -> Result<Vec<SharedBan>, RedisError> {
        let index = format!("{}:bans:{}", self.inner.settings.prefix, hex_of(limit));
        let mut connection = self.connection().await?;
        let now = redis_now_micros(&mut connection).await?;
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(now)
            .query_async::<()>(&mut connection)
            .await?;
        let listed: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(most.saturating_sub(1))
            .arg("REV")
            .arg("WITHSCORES")
            .query_async(&mut connection)
            .await?;
        let mut bans = Vec::with_capacity(listed.len());
        for (ban_key, ends) in listed {
            let Some(digest) = digest_in_key(&ban_key) else {
                continue;
            };
            let offences: Option<u32> = redis::cmd("HGET")
                .arg(&ban_key)
                .arg("offences")
                .query_async(&mut connection)
                .await?;
            bans.push(SharedBan {
                digest,
                left: (ends.saturating_sub(now).max(0) as u64).saturating_mul(1000),
                offences: offences.unwrap_or(1),
            });
        }
        Ok(bans)
    }

    /// Publishes this gateway's top keys of a limit (digest → requests,
    /// refusals) for the other gateways to merge: one hash per gateway and
    /// limit that lapses after `fresh` unless published again, and the
    /// limit's roll of gateways that published, scored by when.
    pub(crate) async fn publish_top(
        &self,
        limit: u64,
        entries: &[(KeyDigest, u64, u64)],
        fresh: Duration,
    ) -> Result<(), RedisError> {
        let (roll, mine) = self.top_keys_of(limit, &self.inner.instance);
        let mut connection = self.connection().await?;
        let fresh_ms = fresh.as_millis() as i64;
        // Each key is written with its expiry in one transaction (a key's
        // own slot, so this holds on a cluster too): a reader never sees a
        // key without a TTL, and a publish cut short leaves none behind.
        let mut publish = redis::pipe();
        publish.atomic().del(&mine).ignore();
        if !entries.is_empty() {
            let mut set = redis::cmd("HSET");
            set.arg(&mine);
            for (digest, requests, refusals) in entries {
                set.arg(digest.to_string())
                    .arg(format!("{requests}:{refusals}"));
            }
            publish
                .add_command(set)
                .ignore()
                .pexpire(&mine, fresh_ms)
                .ignore();
        }
        publish.query_async::<()>(&mut connection).await?;
        let now = redis_now_micros(&mut connection).await? / 1000;
        // Gateways that stopped publishing (restarted, scaled away) leave
        // the roll once their copies have expired: it holds the live ones.
        redis::pipe()
            .atomic()
            .zadd(&roll, &self.inner.instance, now)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&roll)
            .arg("-inf")
            .arg(now - fresh_ms * 10)
            .ignore()
            .pexpire(&roll, fresh_ms * 10)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
    }

    /// What the other gateways published for a limit within `fresh`: per
    /// gateway, digest → (requests, refusals).
    pub(crate) async fn others_top(
        &self,
        limit: u64,
        fresh: Duration,
    ) -> Result<Vec<Vec<(KeyDigest, u64, u64)>>, RedisError> {
        let (roll, _) = self.top_keys_of(limit, "");
        let mut connection = self.connection().await?;
        let now = redis_now_micros(&mut connection).await? / 1000;
        let since = now - fresh.as_millis() as i64;
        let gateways: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&roll)
            .arg(since)
            .arg("+inf")
            .query_async(&mut connection)
            .await?;
        let mut published = Vec::new();
        for gateway in gateways.iter().filter(|g| **g != self.inner.instance) {
            let (_, theirs) = self.top_keys_of(limit, gateway);
            let fields: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(&theirs)
                .query_async(&mut connection)
                .await?;
            published.push(
                fields
                    .iter()
                    .filter_map(|(digest, counts)| {
                        let (requests, refusals) = counts.split_once(':')?;
                        Some((
                            KeyDigest::parse(digest)?,
                            requests.parse().ok()?,
                            refusals.parse().ok()?,
                        ))
                    })
                    .collect(),
            );
        }
        Ok(published)
    }

    /// The roll of gateways that publish a limit's top keys, and the hash
    /// of `gateway`'s.
    fn top_keys_of(&self, limit: u64, gateway: &str) -> (String, String) {
        let prefix = &self.inner.settings.prefix;
        let limit = hex_of(limit);
        (
            format!("{prefix}:top:{limit}:gateways"),
            format!("{prefix}:top:{limit}:{gateway}"),
        )
    }

    /// Pushes the expiry of held leases to now + lease.
    pub(crate) async fn renew(&self, leases: &[Lease]) -> Result<(), RedisError> {
        self.lease_op("renew", leases).await
    }

    /// Gives back leases a call may have taken after its caller gave up: a
    /// call that timed out still runs once Redis answers again (after a
    /// stall, a pause), possibly behind a reconnection, so the release is
    /// sent again over the next seconds. Each lease's id is its call's own,
    /// so a late release takes back nothing anyone holds; one never taken is
    /// no matter. A stall longer than the last try leaves them to expire.
    fn release_orphans(&self, leases: Vec<Lease>) {
        const TRIES: [Duration; 5] = [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_secs(1),
            Duration::from_secs(3),
            Duration::from_secs(10),
        ];
        self.release_in_background(leases, &TRIES);
    }

    /// Releases `leases` at each of `tries` (from now), each try bounded by
    /// the store's timeout; without a runtime (at shutdown), or if Redis
    /// does not answer, they expire.
    fn release_in_background(&self, leases: Vec<Lease>, tries: &'static [Duration]) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if leases.is_empty() {
            return;
        }
        let store = self.clone();
        runtime.spawn(async move {
            let timeout = store.inner.settings.timeout;
            let mut waited = Duration::ZERO;
            for &at in tries {
                tokio::time::sleep(at.saturating_sub(waited)).await;
                waited = at;
                if let Ok(Err(e)) = tokio::time::timeout(timeout, store.release(&leases)).await {
                    tracing::debug!("releasing concurrency leases failed (they expire): {e}");
                }
            }
        });
    }

    /// Gives leases back.
    pub async fn release(&self, leases: &[Lease]) -> Result<(), RedisError> {
        self.lease_op("release", leases).await
    }

    async fn lease_op(&self, op: &str, leases: &[Lease]) -> Result<(), RedisError> {
        let lease_micros = micros(self.inner.settings.lease.as_nanos() as Nanos);
        for lease in leases {
            let mut call = self.inner.lease.prepare_invoke();
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

    /// Renews the leases among `permits` every lease/3 until the returned
    /// handle is aborted, so a long-lived connection keeps its permits while a
    /// crashed gateway's expire. `None` without leases (or a runtime).
    pub(crate) fn keep_renewed(&self, permits: &[Permit]) -> Option<AbortHandle> {
        let leases = leases(permits);
        if leases.is_empty() {
            return None;
        }
        let store = self.clone();
        let every = self.inner.settings.lease / 3;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let renewing = runtime.spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let timeout = store.inner.settings.timeout;
                if let Ok(Err(e)) = tokio::time::timeout(timeout, store.renew(&leases)).await {
                    tracing::debug!("renewing concurrency leases failed: {e}");
                }
            }
        });
        Some(renewing.abort_handle())
    }

    /// Whether Redis answers, within `timeout`. A master found through
    /// Sentinel must also still be the master.
    async fn probe(&self, timeout: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut connection = match tokio::time::timeout_at(deadline, self.connection()).await {
            Ok(connected) => connected.map_err(store_error)?,
            Err(_) => return Err(StoreError::Timeout),
        };
        // A write, not a PING: a Redis out of memory (noeviction) or a
        // read-only replica answers PING but refuses every decision, and
        // the breaker must stay open (and /readyz say so) while it does.
        let probe_key = format!(
            "{}:probe:{}",
            self.inner.settings.prefix, self.inner.instance
        );
        let answer = async {
            if let AnyConnection::Master(master) = &mut connection {
                master.check_role().await?;
            }
            redis::cmd("SET")
                .arg(&probe_key)
                .arg(1)
                .arg("PX")
                .arg(1000)
                .query_async::<()>(&mut connection)
                .await
        };
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(answered) => answered.map_err(store_error),
            Err(_) => {
                // A master that stops answering may be hung while the
                // sentinels promote another: the next call asks them. Only
                // probes give up on it (once the breaker is open, or for
                // /readyz), so a slow decision does not cost a reconnection.
                if let AnyConnection::Master(master) = &connection {
                    master.give_up("does not answer");
                }
                Err(StoreError::Timeout)
            }
        }
    }

    /// The connection, unless none is made or it is lost.
    fn usable_connection(&self) -> Option<AnyConnection> {
        let current = self.inner.connection.load();
        current.as_deref().filter(|c| !c.is_lost()).cloned()
    }

    /// The connection, once made. The first caller starts connecting in a
    /// task of its own, bounded by `connect_timeout`, so that callers with a
    /// short timeout cannot abort it half-way (a cluster needs several round
    /// trips, Sentinel a question and a connection); callers wait for that
    /// attempt.
    async fn connection(&self) -> Result<AnyConnection, RedisError> {
        if let Some(connection) = self.usable_connection() {
            return Ok(connection);
        }
        let attempted = self.inner.connect_attempted.notified();
        tokio::pin!(attempted);
        attempted.as_mut().enable();
        if let Some(connection) = self.usable_connection() {
            return Ok(connection);
        }
        if !self.inner.connecting.swap(true, Ordering::AcqRel) {
            let store = self.clone();
            tokio::spawn(async move { store.connect().await });
        }
        attempted.await;
        self.usable_connection()
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Io, "not connected to Redis yet")))
    }

    async fn connect(&self) {
        let settings = &self.inner.settings;
        let attempt = async {
            match &self.inner.target {
                Target::Single(client) => {
                    // Short reconnect back-off: Redis coming back must be
                    // noticed within a second; the breaker spaces attempts.
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(settings.connect_timeout))
                        .set_response_timeout(Some(settings.timeout))
                        .set_number_of_retries(1)
                        .set_min_delay(Duration::from_millis(10))
                        .set_max_delay(Duration::from_millis(100));
                    ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map(AnyConnection::Single)
                        .map_err(ConnectError::from)
                }
                Target::Cluster(client) => client
                    .get_async_connection()
                    .await
                    .map(AnyConnection::Cluster)
                    .map_err(ConnectError::from),
                Target::Sentinel(sentinels) => sentinels
                    .connect_master()
                    .await
                    .map(AnyConnection::Master)
                    .map_err(ConnectError::from),
            }
        };
        let longest = match &self.inner.target {
            Target::Sentinel(sentinels) => sentinels.longest_attempt(),
            Target::Single(_) | Target::Cluster(_) => settings.connect_timeout * 2,
        };
        // A master lost before: its successor is news, and failing to find
        // one is what the breaker and its probes already report.
        let lost = self.inner.connection.load_full();
        match tokio::time::timeout(longest, attempt).await {
            Ok(Ok(connection)) => {
                if let (Some(AnyConnection::Master(old)), AnyConnection::Master(new)) =
                    (lost.as_deref(), &connection)
                {
                    if old.address() != new.address() {
                        tracing::info!(
                            "redis master moved from {} to {}",
                            old.address(),
                            new.address()
                        );
                    }
                }
                self.inner.connection.store(Some(Arc::new(connection)));
            }
            Ok(Err(e)) if lost.is_some() => tracing::debug!("cannot reconnect to Redis: {e}"),
            Ok(Err(e)) => tracing::warn!("cannot connect to Redis: {e}"),
            Err(_) => tracing::warn!("cannot connect to Redis within {longest:?}"),
        }
        self.inner.connecting.store(false, Ordering::Release);
        self.inner.connect_attempted.notify_waiters();
    }

    /// `<prefix>:{<digest of the client key>}:<limit id>`. The digest keeps
    /// client data (which may hold secrets such as API keys) out of Redis and
    /// bounds the key length.
    fn state_key(&self, key: &ClientKey<'_>, limit: u64) -> String {
        self.state_key_of(&key.digest(), limit)
    }

    /// The state key of the client key whose digest is `digest`.
    fn state_key_of(&self, digest: &KeyDigest, limit: u64) -> String {
        let prefix = &self.inner.settings.prefix;
        let mut out = String::with_capacity(prefix.len() + 54);
        out.push_str(prefix);
        out.push_str(":{");
        push_hex(&mut out, &digest.0);
        out.push_str("}:");
        push_hex(&mut out, &limit.to_be_bytes());
        out
    }

    /// One group on a single node; one per hash slot on a cluster.
    fn groups(&self, checks: &[ScriptCheck]) -> ArrayVec<Group, MAX_CHECKS> {
        let mut groups = ArrayVec::<Group, MAX_CHECKS>::new();
        let cluster = matches!(self.inner.target, Target::Cluster(_));
        for (i, check) in checks.iter().enumerate() {
            let slot = if cluster { hash_slot(&check.key) } else { 0 };
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

/// The Redis leases among `permits`.
fn leases(permits: &[Permit]) -> Vec<Lease> {
    permits
        .iter()
        .filter_map(|p| match p {
            Permit::Lease(lease) => Some(lease.clone()),
            Permit::Local { .. } => None,
        })
        .collect()
}

impl Store for RedisStore {
    /// Bounded by `timeout`. Redis keeps the time: the script reads `TIME`,
    /// so the gateways sharing it share one clock.
    async fn decide(&self, checks: &[Check<'_>]) -> Result<Decisions, StoreError> {
        let decided = tokio::time::timeout(self.inner.settings.timeout, self.decide_shared(checks));
        match decided.await {
            Ok(Ok(decided)) => Ok(decided),
            // The client's own response timeout equals ours.
            Ok(Err(e)) => Err(store_error(e)),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Gives the leases among `permits` back in the background, once.
    fn release_permits(&self, permits: &[Permit]) {
        self.release_in_background(leases(permits), &[Duration::ZERO]);
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        self.probe(timeout).await
    }
}

fn store_error(e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

/// Any kind of connection, as the `redis` crate's commands take it.
#[derive(Clone)]
enum AnyConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Master(MasterConnection),
}

impl AnyConnection {
    /// Whether it must be replaced before the next call: only a master found
    /// through Sentinel is ever lost; the others reconnect by themselves.
    fn is_lost(&self) -> bool {
        match self {
            AnyConnection::Master(master) => master.is_lost(),
            AnyConnection::Single(_) | AnyConnection::Cluster(_) => false,
        }
    }
}

/// Why a connection attempt failed, for the log.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Sentinel(#[from] SentinelError),
}

impl redis::aio::ConnectionLike for AnyConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AnyConnection::Single(c) => c.req_packed_command(cmd),
            AnyConnection::Cluster(c) => c.req_packed_command(cmd),
            AnyConnection::Master(c) => c.req_packed_command(cmd),
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
            AnyConnection::Master(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConnection::Single(c) => c.get_db(),
            AnyConnection::Cluster(c) => c.get_db(),
            AnyConnection::Master(c) => c.get_db(),
        }
    }
}

/// The values of a URL query's `pass` and `password` parameters (how the
/// redis crate takes a Unix socket's password).
pub(crate) fn query_passwords(query: &str) -> impl Iterator<Item = &str> {
    query.split('&').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        matches!(name, "pass" | "password").then_some(value)
    })
}

/// `url` with any user and password replaced, for logs and admin output:
/// the user info (up to the last `@` before the query: a password may hold
/// a `/`) and a `pass` or `password` query parameter (a Unix socket's).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let query_start = rest.find(['?', '#']).unwrap_or(rest.len());
    let mut redacted = match rest[..query_start].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_string(),
    };
    let query = rest[query_start..].trim_start_matches(['?', '#']);
    for password in query_passwords(query) {
        if !password.is_empty() {
            redacted = redacted.replace(password, "<redacted>");
        }
    }
    redacted
}

/// The script's name and parameters for an algorithm, times in microseconds
/// (rounded up: a limit is never looser in Redis than in memory). The order
/// is `decide.lua`'s: a time, a count, and what else the algorithm takes.
fn script_params(limiter: &Limiter, lease: Duration) -> (&'static str, u64, u64, u64) {
    let [a, b, c] = match limiter {
        Limiter::Gcra(g) => [micros(g.interval), g.burst, 0],
        Limiter::LeakyBucket(l) => [micros(l.interval), l.capacity, u64::from(l.delay)],
        Limiter::TokenBucket(t) => [micros(t.interval), t.capacity, t.debt],
        Limiter::FixedWindow(w) => [micros(w.period), w.limit, 0],
        Limiter::SlidingLog(w) => [micros(w.period), w.limit, 0],
        Limiter::SlidingCounter(w) => [micros(w.period), w.limit, 0],
        Limiter::Concurrent(c) => [micros(lease.as_nanos() as Nanos), c.max, 0],
    };
    (limiter.spec().lua, a, b, c)
}

/// Whether the script computes `limiter` exactly: Lua numbers are doubles,
/// exact up to 2^53, and timestamps (about 2^51 µs) are added to the largest
/// product an algorithm forms, so that must stay below 2^52. Buckets multiply
/// their interval by a cost of at most the capacity; the sliding counter
/// weighs counts by the period; the fixed window and the log never multiply.
pub(crate) fn exact_in_lua(limiter: &Limiter) -> bool {
    let (_, a, b, c) = script_params(limiter, Duration::ZERO);
    let largest = match limiter {
        // A token bucket's debt is a count too; a leaky bucket's third
        // parameter is a flag.
        Limiter::TokenBucket(_) => u128::from(a) * (u128::from(b) + u128::from(c) + 1),
        Limiter::Gcra(_) | Limiter::LeakyBucket(_) | Limiter::SlidingCounter(_) => {
            u128::from(a) * (u128::from(b) + 1)
        }
        Limiter::FixedWindow(_) | Limiter::SlidingLog(_) | Limiter::Concurrent(_) => u128::from(a),
    };
    largest < 1 << 52
}

fn micros(nanos: Nanos) -> u64 {
    nanos.div_ceil(1000).max(1)
}

/// A call of `script` over the checks `members` of `plan`; `peek` decides
/// without writing (ARGV[2] negative).
fn script_call<'a>(
    script: &'a Script,
    plan: &ScriptCall,
    members: &[usize],
    now: &str,
    peek: bool,
) -> redis::ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    let n = members.len() as i64;
    call.arg(now).arg(if peek { -n } else { n });
    // KEYS: the state keys in order, then the ban keys (decide.lua finds
    // each by its index).
    let mut ban_keys: ArrayVec<&str, MAX_CHECKS> = ArrayVec::new();
    for &i in members {
        let check = &plan.checks[i];
        call.key(&check.key)
            .arg(check.algorithm)
            .arg(&check.params[..])
            .arg(check.cost)
            .arg(u8::from(check.enforced))
            .arg(&plan.id);
        match &check.ban {
            Some((ban_key, policy)) => {
                ban_keys.push(ban_key);
                call.arg(members.len() + ban_keys.len())
                    .arg(policy.after)
                    .arg(micros(policy.within))
                    .arg(micros(policy.duration))
                    .arg(policy.escalate)
                    .arg(micros(policy.max))
                    .arg(u8::from(policy.enforced));
            }
            None => {
                // Seven numbers (a `u8` slice would be one binary argument).
                call.arg(&[0u32; 7][..]);
            }
        }
    }
    for ban_key in ban_keys {
        call.key(ban_key);
    }
    call
}

/// The `k`th decision of a script reply, with the key's ban record as far as
/// the script saw it (time left, offences).
fn decode_with_ban(reply: &[i64], k: usize, quota: u64) -> Option<(Decision, Nanos, u32)> {
    let v = reply.get(k * REPLY_PER_CHECK..(k + 1) * REPLY_PER_CHECK)?;
    let nanos = |us: i64| (us.max(0) as u64).saturating_mul(1000);
    let decision = Decision {
        allowed: v[0] == 1,
        limit: quota,
        remaining: v[1].max(0) as u64,
        reset_after: nanos(v[2]),
        retry_after: if v[3] < 0 { Nanos::MAX } else { nanos(v[3]) },
        delay: nanos(v[4]),
        ban: match v[5] {
            1 => BanMark::Banned,
            2 => BanMark::Started,
            _ => BanMark::None,
        },
    };
    Some((
        decision,
        nanos(v[6]),
        v[7].clamp(0, i64::from(u32::MAX)) as u32,
    ))
}

/// A ban running in Redis, as a limit's index lists it.
#[derive(Debug, Clone)]
pub(crate) struct SharedBan {
    pub(crate) digest: KeyDigest,
    pub(crate) left: Nanos,
    pub(crate) offences: u32,
}

/// Redis's clock in microseconds.
async fn redis_now_micros(connection: &mut AnyConnection) -> Result<i64, RedisError> {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(connection).await?;
    Ok(seconds.saturating_mul(1_000_000).saturating_add(micros))
}

/// The client key digest in a state or ban key's hash tag.
fn digest_in_key(key: &str) -> Option<KeyDigest> {
    let open = key.find('{')?;
    let close = open + key[open..].find('}')?;
    KeyDigest::parse(&key[open + 1..close])
}

fn hex_of(limit: u64) -> String {
    let mut out = String::with_capacity(16);
    push_hex(&mut out, &limit.to_be_bytes());
    out
}

/// The key of a state key's ban record: the same hash tag, so the same slot.
fn ban_key(state_key: &str) -> String {
    let mut key = String::with_capacity(state_key.len() + 4);
    key.push_str(state_key);
    key.push_str(":ban");
    key
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

/// A random id for this process, so that sliding-log members and leases of
/// different gateways never collide. Should the system's randomness fail,
/// the process id and the time stand in.
fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&std::process::id().to_be_bytes());
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        ctx.update(&since_epoch.as_nanos().to_be_bytes());
        bytes.copy_from_slice(&ctx.finish().as_ref()[..8]);
    }
    let mut id = String::with_capacity(16);
    push_hex(&mut id, &bytes);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_slots_follow_the_cluster_spec() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(hash_slot("123456789"), 12739);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        let whole = |key: &str| crc16::State::<crc16::XMODEM>::calculate(key.as_bytes()) % SLOTS;
        assert_eq!(hash_slot("foo{}{bar}"), whole("foo{}{bar}"));
        assert_ne!(hash_slot("{a}x"), whole("{a}x"));
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
    fn a_password_with_a_slash_or_in_the_query_is_redacted() {
        assert_eq!(
            redact_url("redis://default:Ab3/xYz+9Q==@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?pass=S3cretPW&db=1"),
            "redis+unix:///run/redis.sock?pass=<redacted>&db=1"
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
