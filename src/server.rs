//! Assembles the Pingora server: the proxy listener(s), the admin listener and
//! background housekeeping, all sharing one `Shared` state, plus whatever
//! services the caller adds (the parts beside the gateway: see `app`).

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::ConnectorOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;
use tokio::sync::Notify;

use crate::admin::{self, AdminApp};
use crate::config::{ConfigError, Loader};
use crate::metrics::Metrics;
use crate::proxy::connection::Front;
use crate::proxy::edge::Roles;
use crate::proxy::Gateway;
use crate::reload::ConfigWatcher;
use crate::snapshot::Snapshot;
use crate::state::{Shared, SharedError};

/// How often expired limiter state is dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often expired `sync: batched` allowances are given back.
const SETTLE_INTERVAL: Duration = Duration::from_millis(250);

/// After the grace period Pingora shuts its runtimes down: what still runs
/// there is dropped at once, so this only bounds how long blocking work (a
/// config being compiled) may hold up the exit.
const RUNTIME_EXIT_TIMEOUT_SECONDS: u64 = 1;

/// Settings for the process, not the config file.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessOptions {
    /// Seconds requests in flight get after SIGTERM; `None` takes
    /// `server.grace_period` from the config.
    pub grace_period_seconds: Option<u64>,
    /// Reload on SIGHUP and reopen the access log on SIGUSR1. Off when
    /// embedded (tests), where the signal would reach every gateway of the
    /// process.
    pub handle_sighup: bool,
    /// The server is the process's one and lives as long as it (the
    /// binary). Only then may `server.work_stealing: false` put each thread
    /// on a runtime of its own: Pingora finds those runtimes through a
    /// `thread_local` table keyed by thread ids, which are recycled and
    /// never cleared, so once such a server stops inside a running process,
    /// any thread started later may inherit an exited thread's entry and
    /// have Pingora spawn its connections onto a dead runtime (seen as
    /// gateways in one test process that reset every connection). Embedded
    /// servers (tests) always steal work.
    pub owns_process: bool,
}

/// Why the gateway could not be set up from its config.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Shared(#[from] SharedError),
}

/// Loads the config with `loader` and builds the state the services share.
pub fn load_shared(config_path: &Path, loader: Loader) -> Result<Arc<Shared>, LoadError> {
    let runtime = loader.load_file(config_path)?;
    for warning in &runtime.warnings {
        tracing::warn!("{}:{warning}", config_path.display());
    }
    Ok(Arc::new(Shared::new(
        runtime,
        Metrics::new(),
        config_path.to_path_buf(),
        loader,
    )?))
}

/// Fails early, with the address in the message, when a listener cannot bind
/// (Pingora would panic in a service thread instead).
pub fn check_bindable(shared: &Shared) -> Result<(), String> {
    let rt = shared.snapshot.load();
    for addr in public_listeners(&rt).iter().chain([&rt.server.admin]) {
        bindable(addr)?;
    }
    Roles::of(shared).map(drop)
}

/// The addresses of the proxy's listeners: plain, TLS and redirecting.
fn public_listeners(rt: &Snapshot) -> Vec<String> {
    let mut all = rt.server.listen.clone();
    for tls in &rt.server.tls {
        all.push(tls.listen.clone());
        all.extend(tls.redirect_from.iter().map(|a| a.to_string()));
    }
    all
}

/// Whether a listener could bind `addr` now; the error names it.
pub(crate) fn bindable(addr: &str) -> Result<(), String> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Builds the Pingora server with all tollgate services, and `extra` ones.
pub fn build_server(
    shared: Arc<Shared>,
    options: ProcessOptions,
    extra: Vec<Box<dyn ServiceWithDependents>>,
) -> Server {
    let rt = shared.snapshot.load_full();
    let grace_period = options
        .grace_period_seconds
        .unwrap_or(rt.server.grace_period.as_secs());
    let conf = ServerConf {
        threads: rt.server.threads,
        work_stealing: rt.server.work_stealing || !options.owns_process,
        grace_period_seconds: Some(grace_period),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_EXIT_TIMEOUT_SECONDS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);

    let gateway = pingora::proxy::http_proxy(&server.configuration, Gateway::new(shared.clone()));
    // `check_bindable` reported a listener that cannot be set up; here it
    // is left out rather than served as plain HTTP.
    let (roles, listeners) = match Roles::of(&shared) {
        Ok(roles) => (roles, public_listeners(&rt)),
        Err(e) => {
            tracing::error!("{e}: the TLS listeners are not started");
            (Roles::default(), rt.server.listen.clone())
        }
    };
    // The fast loop's upstream pool is sized and bound as Pingora's own.
    let upstreams = ConnectorOptions::from_server_conf(&server.configuration);
    let front = Front::new(shared.clone(), gateway, upstreams, roles);
    let mut proxy = Service::new("tollgate proxy".into(), front);
    for addr in &listeners {
        proxy.add_tcp(addr);
    }

    let mut admin = Service::new("tollgate admin".into(), AdminApp::new(shared.clone()));
    admin.add_tcp(&rt.server.admin);
    admin.threads = Some(1);

    server.add_services(extra);

    let mut sweeper = background_service(
        "tollgate sweeper",
        Sweeper {
            shared: shared.clone(),
        },
    );
    sweeper.threads = Some(1);

    let mut watcher = background_service(
        "tollgate config watcher",
        ConfigWatcher {
            shared: shared.clone(),
            handle_sighup: options.handle_sighup,
        },
    );
    watcher.threads = Some(1);

    if shared.limits.has_breaker() {
        let mut probe = background_service(
            "tollgate redis probe",
            BreakerProbe {
                shared: shared.clone(),
            },
        );
        probe.threads = Some(1);
        server.add_service(probe);
    }

    let mut checker = background_service(
        "tollgate health checks",
        HealthChecker {
            shared: shared.clone(),
        },
    );
    checker.threads = Some(1);
    server.add_service(checker);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(sweeper);
    server.add_service(watcher);
    server
}

/// Probes Redis while the circuit breaker is open, so that shared limits are
/// back as soon as Redis answers rather than when a request happens to probe.
struct BreakerProbe {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for BreakerProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.shared.limits.keep_probing() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Runs the upstreams' active health checks when they are due (each server
/// on its upstream's interval, each check a task of its own) and keeps the
/// servers' health gauges current.
struct HealthChecker {
    shared: Arc<Shared>,
}

/// How often due checks are looked for and the gauges refreshed.
const HEALTH_TICK: Duration = Duration::from_millis(100);

impl HealthChecker {
    fn tick(&self) {
        let rt = self.shared.snapshot.load_full();
        let now = self.shared.clock.now();
        for (u, upstream) in rt.upstreams.iter().enumerate() {
            for (i, health) in upstream.health.iter().enumerate() {
                let server = upstream.servers[i];
                self.shared.metrics.server_health(
                    &upstream.name,
                    &server.to_string(),
                    health.available(now),
                );
                let Some(active) = &upstream.active else {
                    continue;
                };
                if !health.claim_check(now, active.settings.interval) {
                    continue;
                }
                let rt = rt.clone();
                tokio::spawn(async move {
                    let upstream = &rt.upstreams[u];
                    let Some(active) = &upstream.active else {
                        return;
                    };
                    let passed = active.passes(server).await;
                    if let Some(up) = upstream.health[i].record_check(passed, &active.settings) {
                        let verdict = if up { "healthy" } else { "unhealthy" };
                        tracing::warn!(upstream = %upstream.name, %server, "server is {verdict}");
                    }
                });
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(HEALTH_TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Drops expired limiter state in the background, never on the request path.
struct Sweeper {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        let mut settle = tokio::time::interval(SETTLE_INTERVAL);
        let mut share = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                // Other gateways on the same Redis merge this one's top
                // keys; a hung Redis must not hold up the sweeping.
                _ = share.tick() => {
                    let sharing = admin::share_top_keys(&self.shared);
                    let _ = tokio::time::timeout(Duration::from_secs(1), sharing).await;
                }
                _ = tick.tick() => {
                    let removed = self.shared.limits.memory.sweep(self.shared.clock.now());
                    tracing::debug!(removed, "swept expired limiter state");
                }
                // Unused `sync: batched` units go back to Redis.
                _ = settle.tick() => self.shared.limits.settle(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A shutdown trigger for embedding the gateway (tests, examples): Pingora's
/// own watcher waits for Unix signals instead.
struct NotifyShutdown(Arc<Notify>);

#[async_trait]
impl ShutdownSignalWatch for NotifyShutdown {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A gateway running on its own thread until stopped or dropped.
pub struct Running {
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts the server, with `extra` services, on a new thread. Pingora
    /// builds its own runtimes, so this must not be called from inside a
    /// tokio runtime's worker.
    pub fn start(shared: Arc<Shared>, extra: Vec<Box<dyn ServiceWithDependents>>) -> Self {
        let stop = Arc::new(Notify::new());
        let server = build_server(
            shared.clone(),
            ProcessOptions {
                grace_period_seconds: Some(0),
                handle_sighup: false,
                owns_process: false,
            },
            extra,
        );
        let signal = NotifyShutdown(stop.clone());
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            })
        });
        Running {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server and waits until its listeners are closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_for(yaml: &str, options: ProcessOptions) -> Server {
        let yaml = format!(
            "{yaml}\nupstreams: {{ api: {{ servers: [\"127.0.0.1:9\"] }} }}\nrules: [{{ name: all, match: {{ path: \"/**\" }}, upstream: api }}]\n"
        );
        let runtime = crate::config::load_str(&yaml, Path::new("test.yaml")).unwrap();
        let shared = Shared::new(
            runtime,
            Metrics::new(),
            "test.yaml".into(),
            Loader::default(),
        )
        .unwrap();
        build_server(Arc::new(shared), options, Vec::new())
    }

    #[test]
    fn requests_in_flight_get_ten_seconds_after_sigterm_by_default() {
        let server = server_for(
            "server: { listen: [\"127.0.0.1:1\"] }",
            ProcessOptions::default(),
        );
        assert_eq!(server.configuration.grace_period_seconds, Some(10));
    }

    /// Whether the binary (which owns its process) runs `server` with work stealing.
    fn binary_steals_work(server: &str) -> bool {
        let options = ProcessOptions {
            owns_process: true,
            ..ProcessOptions::default()
        };
        let yaml = format!("server: {{ listen: [\"127.0.0.1:1\"], {server} }}");
        server_for(&yaml, options).configuration.work_stealing
    }

    #[test]
    fn the_binary_runs_one_proxy_thread_on_a_runtime_of_its_own_by_default() {
        assert!(!binary_steals_work("threads: 1"));
    }

    #[test]
    fn the_binary_steals_work_between_several_proxy_threads_by_default() {
        assert!(binary_steals_work("threads: 2"));
    }

    #[test]
    fn the_binary_puts_each_proxy_thread_on_a_runtime_of_its_own_when_the_config_asks() {
        assert!(!binary_steals_work("threads: 2, work_stealing: false"));
    }

    #[test]
    fn the_binary_steals_work_when_the_config_asks() {
        assert!(binary_steals_work("threads: 1, work_stealing: true"));
    }

    #[test]
    fn an_embedded_server_steals_work_whatever_the_config_says() {
        let yaml = "server: { listen: [\"127.0.0.1:1\"], threads: 1, work_stealing: false }";
        let server = server_for(yaml, ProcessOptions::default());
        assert!(server.configuration.work_stealing);
    }

    #[test]
    fn the_grace_period_is_read_from_the_config() {
        let yaml = "server: { listen: [\"127.0.0.1:1\"], grace_period: 3s }";
        let server = server_for(yaml, ProcessOptions::default());
        assert_eq!(server.configuration.grace_period_seconds, Some(3));
    }
}
