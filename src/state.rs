//! The state every part of a running gateway shares: the live snapshot, the
//! limiter store, the metrics, and the record of reloads. Built once at start;
//! the proxy, the admin listener, the reloader and background tasks hold it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::access_log::{AccessLog, LogTarget, RequestIds};
use crate::config::Loader;
use crate::limit::store::redis::RedisStore;
use crate::limit::{Limits, MemoryStore, MonotonicClock};
use crate::metrics::Metrics;
use crate::policy::{Alpn, TlsVersion};
use crate::schema::Problem;
use crate::snapshot::{PartSettings, RedisBackend, Snapshot};
use crate::tls::CertStore;

/// State shared by the proxy, the admin listener and background tasks. The
/// store and metrics outlive any one config snapshot.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
    pub(crate) clock: MonotonicClock,
    pub(crate) config_path: PathBuf,
    /// Loads the file at a reload, with the parts beside the gateway.
    pub(crate) loader: Loader,
    /// What the listeners were started with (a reload cannot move them).
    pub(crate) startup: Startup,
    pub(crate) reloader: Reloader,
    /// `TOLLGATE_ADMIN_TOKEN` at start; overrides `server.admin_token`.
    pub(crate) admin_token_env: Option<String>,
    /// Turns true when a graceful shutdown begins (the listeners have
    /// closed): open tunnels then close with 1001.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// The certificates of each TLS listener (by its `listen` as started),
    /// refilled from the config at every successful reload.
    pub(crate) certificates: Vec<(String, Arc<CertStore>)>,
    /// The access log's writer, opened at start (its format follows the
    /// config).
    pub(crate) access_log: AccessLog,
    pub(crate) request_ids: RequestIds,
}

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("store.redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("access_log.path: cannot open {path}: {error}")]
    AccessLog { path: String, error: std::io::Error },
}

impl Shared {
    /// Binds `snapshot`'s metric handles to `metrics` and serves it; `loader`
    /// (which loaded it) loads the file again at a reload. Fails only on
    /// Redis settings the config check let through but the client refuses.
    pub fn new(
        mut snapshot: Snapshot,
        metrics: Metrics,
        config_path: PathBuf,
        loader: Loader,
    ) -> Result<Self, SharedError> {
        snapshot.bind_metrics(&metrics);
        metrics
            .config_generation
            .set(snapshot.source.generation as i64);
        metrics
            .last_reload_success
            .set(unix_seconds(snapshot.source.loaded_at));
        let memory = MemoryStore::new(
            snapshot.store.max_keys,
            Some(metrics.store_evictions.clone()),
        );
        let clock = MonotonicClock::default();
        let limits = match &snapshot.store.redis {
            None => Limits::memory(memory, clock.clone()),
            Some(backend) => Limits::redis(
                RedisStore::new(backend.redis.clone())?,
                backend.breaker,
                memory,
                clock.clone(),
                metrics.store.clone(),
            ),
        };
        let settings = &snapshot.access_log;
        let access_log = AccessLog::start(
            settings.target.clone(),
            settings.buffer,
            metrics.access_log_dropped.clone(),
        )
        .map_err(|error| SharedError::AccessLog {
            path: match &settings.target {
                LogTarget::File(path) => path.display().to_string(),
                LogTarget::Stdout => "stdout".into(),
            },
            error,
        })?;
        let certificates = snapshot
            .server
            .tls
            .iter()
            .map(|t| (t.listen.clone(), Arc::new(CertStore::new(t.certs.clone()))))
            .collect();
        Ok(Shared {
            access_log,
            request_ids: RequestIds::default(),
            certificates,
            startup: Startup::of(&snapshot),
            snapshot: ArcSwap::from_pointee(snapshot),
            limits,
            metrics,
            clock,
            config_path,
            loader,
            reloader: Reloader::default(),
            admin_token_env: std::env::var("TOLLGATE_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Trigger {
    File,
    Signal,
    Admin,
}

/// Names added, removed and changed between two configs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Changes {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
    pub(crate) changed: Vec<String>,
}

/// What a reload did to limiter state, by `rule/limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct LimitChanges {
    /// Same definition: counters carried over.
    pub(crate) kept: Vec<String>,
    /// Same name, new definition: counters start fresh.
    pub(crate) reset: Vec<String>,
    pub(crate) added: Vec<String>,
    /// Gone: their state is released.
    pub(crate) removed: Vec<String>,
}

/// The answer to a successful reload.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReloadSummary {
    pub(crate) generation: u64,
    pub(crate) rules: Changes,
    pub(crate) upstreams: Changes,
    pub(crate) limits: LimitChanges,
    /// Settings that changed in the file but only take effect after a restart.
    pub(crate) restart_required: Vec<String>,
    pub(crate) warnings: Vec<Problem>,
}

/// The last reload attempt, for `GET /-/config`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LastReload {
    pub(crate) at: String,
    pub(crate) trigger: Trigger,
    /// `success`, `failure`, or `reverted` (the file is back to the running
    /// config after a failure).
    pub(crate) result: &'static str,
    pub(crate) problems: Vec<Problem>,
    pub(crate) restart_required: Vec<String>,
}

/// Settings Pingora binds at start; a reload can only report their change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Startup {
    pub(crate) listen: Vec<String>,
    pub(crate) admin: String,
    pub(crate) threads: usize,
    pub(crate) work_stealing: bool,
    /// Pingora takes the grace period and HTTP/2's idle timeout at start.
    pub(crate) grace_period: Duration,
    pub(crate) idle_timeout: Duration,
    /// Each part beside the gateway by name, with the settings it runs with.
    pub(crate) parts: Vec<(&'static str, Option<PartSettings>)>,
    pub(crate) max_keys: usize,
    pub(crate) redis: Option<RedisBackend>,
    /// Each TLS listener's address, versions, ALPN and redirects (not its
    /// certificates, which follow the config).
    pub(crate) tls: Vec<(String, TlsVersion, Vec<Alpn>, Vec<std::net::SocketAddr>)>,
    /// Where the access log writes, and its buffer.
    pub(crate) access_log: (LogTarget, usize),
}

impl Startup {
    pub(crate) fn of(rt: &Snapshot) -> Self {
        Startup {
            listen: rt.server.listen.clone(),
            admin: rt.server.admin.clone(),
            threads: rt.server.threads,
            work_stealing: rt.server.work_stealing,
            grace_period: rt.server.grace_period,
            idle_timeout: rt.server.idle_timeout,
            parts: rt
                .parts
                .iter()
                .map(|p| (p.name, p.settings.clone()))
                .collect(),
            max_keys: rt.store.max_keys,
            redis: rt.store.redis.clone(),
            tls: rt
                .server
                .tls
                .iter()
                .map(|t| {
                    (
                        t.listen.clone(),
                        t.min_version,
                        t.alpn.clone(),
                        t.redirect_from.clone(),
                    )
                })
                .collect(),
            access_log: (rt.access_log.target.clone(), rt.access_log.buffer),
        }
    }
}

/// Serializes reloads and remembers how the last one went.
#[derive(Debug, Default)]
pub(crate) struct Reloader {
    pub(crate) serial: tokio::sync::Mutex<()>,
    state: Mutex<ReloaderState>,
}

#[derive(Debug, Default)]
pub(crate) struct ReloaderState {
    pub(crate) last: Option<LastReload>,
    /// The last `HISTORY` reloads, newest last, for the dashboard.
    pub(crate) history: std::collections::VecDeque<LastReload>,
    /// Hash of the last failure (the text and its problems), so that
    /// directory noise does not re-report an unchanged broken file.
    pub(crate) failed_sha256: Option<String>,
    /// The last successful reload, by the hash it loaded, so that a
    /// `POST /-/reload` after the watcher already applied an edit still gets
    /// the summary of what changed.
    pub(crate) last_summary: Option<(String, ReloadSummary)>,
    pub(crate) watching: bool,
}

/// Reloads remembered for the dashboard.
const HISTORY: usize = 20;

impl Reloader {
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, ReloaderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn last(&self) -> Option<LastReload> {
        self.state().last.clone()
    }

    /// Whether the file watcher is established.
    pub(crate) fn watching(&self) -> bool {
        self.state().watching
    }

    /// The summary of the reload that loaded the file with this hash.
    pub(crate) fn summary_of(&self, sha256: &str) -> Option<ReloadSummary> {
        match &self.state().last_summary {
            Some((hash, summary)) if hash == sha256 => Some(summary.clone()),
            _ => None,
        }
    }

    pub(crate) fn remember(
        &self,
        trigger: Trigger,
        result: &'static str,
        problems: Vec<Problem>,
        restart: Vec<String>,
    ) {
        let reload = LastReload {
            at: rfc3339(SystemTime::now()),
            trigger,
            result,
            problems,
            restart_required: restart,
        };
        let mut state = self.state();
        if state.history.len() == HISTORY {
            state.history.pop_front();
        }
        state.history.push_back(reload.clone());
        state.last = Some(reload);
    }

    /// The last reloads, oldest first.
    pub(crate) fn history(&self) -> Vec<LastReload> {
        self.state().history.iter().cloned().collect()
    }
}

/// Seconds since the Unix epoch, for gauges.
pub(crate) fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A time as RFC 3339 text, for `GET /-/config`.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
