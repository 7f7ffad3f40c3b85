//! Hot reload: three triggers (a watcher on the config's directory, SIGHUP,
//! and `POST /-/reload`) and one path — read, parse, compile, validate, swap.
//! A file that fails anywhere changes nothing. Limits keep their counters
//! because limiter state is keyed by each limit's definition, not its position.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{self, ConfigError};

use crate::limit::LimitId;
use crate::metrics::ReloadResult;
use crate::schema::Problem;
use crate::snapshot::Snapshot;
use crate::state::{unix_seconds, Changes, LimitChanges, ReloadSummary, Shared, Startup, Trigger};

/// Events closer together than this are one edit (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(50);
/// The longest a burst of events can delay a reload.
const MAX_DEBOUNCE: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub(crate) enum ReloadOutcome {
    Reloaded(Box<ReloadSummary>),
    /// The file has the bytes the gateway already runs.
    Unchanged,
    Failed(ConfigError),
}

/// What reading the file found.
enum Candidate {
    /// The bytes the gateway already runs.
    Unchanged,
    /// Nothing to do yet (the file is gone mid-save, or is the broken file
    /// already reported).
    NotYet,
    Compiled(Box<Snapshot>),
}

/// Reloads the config file. Concurrent calls run one after another, each
/// reading the file afresh, so the last write wins.
pub(crate) async fn reload(shared: &Arc<Shared>, trigger: Trigger) -> ReloadOutcome {
    let _serial = shared.reloader.serial.lock().await;
    let candidate = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || read_and_compile(&shared, trigger)).await
    };
    let candidate = candidate.unwrap_or_else(|join| {
        Err(ConfigError {
            file: shared.config_path.clone(),
            problems: vec![Problem {
                severity: crate::schema::Severity::Error,
                file: None,
                path: String::new(),
                line: 1,
                column: 1,
                message: format!("the reload task failed: {join}"),
            }],
        })
    });
    match candidate {
        Ok(Candidate::NotYet) => ReloadOutcome::Unchanged,
        Ok(Candidate::Unchanged) => {
            let reverted = shared.reloader.state().failed_sha256.take().is_some();
            if reverted {
                // The broken edit was undone: the failure no longer describes the file.
                shared
                    .reloader
                    .remember(trigger, "reverted", Vec::new(), Vec::new());
            }
            ReloadOutcome::Unchanged
        }
        Ok(Candidate::Compiled(runtime)) => {
            let summary = apply(shared, *runtime);
            {
                let mut state = shared.reloader.state();
                state.failed_sha256 = None;
                state.last_summary = Some((
                    shared.snapshot.load().source.sha256.clone(),
                    summary.clone(),
                ));
            }
            shared.reloader.remember(
                trigger,
                "success",
                summary.warnings.clone(),
                summary.restart_required.clone(),
            );
            tracing::info!(
                ?trigger,
                generation = summary.generation,
                rules_added = summary.rules.added.len(),
                rules_removed = summary.rules.removed.len(),
                rules_changed = summary.rules.changed.len(),
                limits_kept = summary.limits.kept.len(),
                limits_reset = summary.limits.reset.len(),
                "config reloaded"
            );
            for setting in &summary.restart_required {
                tracing::warn!("{setting} changed in the file; it takes effect after a restart");
            }
            ReloadOutcome::Reloaded(Box::new(summary))
        }
        Err(error) => {
            shared.metrics.reload(ReloadResult::Failure);
            shared
                .reloader
                .remember(trigger, "failure", error.problems.clone(), Vec::new());
            tracing::error!(
                ?trigger,
                "config reload failed, the running config stays: {error}"
            );
            ReloadOutcome::Failed(error)
        }
    }
}

/// Reads and compiles the file. A file that fails must leave no trace, not
/// even metric series: the compiled snapshot is bound to the registry only
/// when `apply` swaps it in.
fn read_and_compile(shared: &Shared, trigger: Trigger) -> Result<Candidate, ConfigError> {
    let path = &shared.config_path;
    let text = match std::fs::metadata(path) {
        // Saves that rename the old file away first leave a moment without
        // one; the next event comes when the new file is in place.
        Err(e) if trigger == Trigger::File && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Candidate::NotYet)
        }
        _ => config::read_file(path)?,
    };
    // With a consumers file the running version is the digest of both files,
    // known once compiled; without one, the text's own digest.
    if config::sha256_hex(text.as_bytes()) == shared.snapshot.load().source.sha256 {
        return Ok(Candidate::Unchanged);
    }
    match shared.loader.load_str(&text, path) {
        Ok(runtime) if runtime.source.sha256 == shared.snapshot.load().source.sha256 => {
            Ok(Candidate::Unchanged)
        }
        Ok(runtime) => Ok(Candidate::Compiled(Box::new(runtime))),
        Err(e) => {
            // The same text failing the same way (a neighbour file's events)
            // is not reported again; a fix in the consumers file alone is
            // seen, since its problems were part of the failure.
            let failure = config::sha256_hex(format!("{text}\n{:?}", e.problems).as_bytes());
            let mut state = shared.reloader.state();
            if trigger == Trigger::File && state.failed_sha256.as_deref() == Some(&failure) {
                return Ok(Candidate::NotYet);
            }
            state.failed_sha256 = Some(failure);
            Err(e)
        }
    }
}

/// Swaps in a validated runtime and tidies what the old one leaves behind.
fn apply(shared: &Arc<Shared>, mut new: Snapshot) -> ReloadSummary {
    let old = shared.snapshot.load_full();
    new.source.generation = old.source.generation + 1;
    new.source.loaded_at = SystemTime::now();
    new.bind_metrics(&shared.metrics);
    new.carry_top_keys(Some(&old));
    let summary = summarize(&old, &new, &shared.startup);
    let removed: Vec<LimitId> = {
        let live: HashSet<LimitId> = limit_ids(&new).into_values().collect();
        limit_ids(&old)
            .into_values()
            .filter(|id| !live.contains(id))
            .collect()
    };
    // A server that stays in its upstream keeps its health (an ejection,
    // a check's count).
    for upstream in &mut new.upstreams {
        if let Some(before) = old.upstreams.iter().find(|u| u.name == upstream.name) {
            upstream.inherit_health(before);
        }
    }
    // New handshakes get the new certificates from here on; a listener the
    // file no longer has keeps serving its last ones until a restart.
    for (listen, certs) in &shared.certificates {
        if let Some(listener) = new.server.tls.iter().find(|t| &t.listen == listen) {
            certs.replace(listener.certs.clone());
        }
    }
    shared.snapshot.store(Arc::new(new));

    let metrics = &shared.metrics;
    metrics.reload(ReloadResult::Success);
    metrics.config_generation.set(summary.generation as i64);
    metrics
        .last_reload_success
        .set(unix_seconds(SystemTime::now()));
    {
        let new = shared.snapshot.load();
        let live = plan_series(&new);
        for (rule, plan) in plan_series(&old) {
            if !live.contains(&(rule, plan)) {
                metrics.forget_plan(rule, plan);
            }
        }
    }
    for rule in &old.rules {
        let limits: Vec<&str> = rule.all_limits().map(|l| l.name.as_str()).collect();
        if summary.rules.removed.contains(&rule.name) {
            metrics.forget_rule(&rule.name, &limits);
        }
    }
    for name in &summary.limits.removed {
        if let Some((rule, limit)) = name.split_once('/') {
            metrics.forget_limit(rule, limit);
        }
    }
    for upstream in &summary.upstreams.removed {
        metrics.forget_upstream(upstream);
    }
    let current = shared.snapshot.load();
    for gone in &old.upstreams {
        let kept = current.upstreams.iter().find(|u| u.name == gone.name);
        for server in &gone.servers {
            if !kept.is_some_and(|u| u.servers.contains(server)) {
                metrics.forget_server(&gone.name, &server.to_string());
            }
        }
    }
    if !removed.is_empty() {
        schedule_release(shared.clone(), removed);
    }
    summary
}

/// Releases the state of removed limits after `store.release_after`, unless a
/// later reload brought them back (a reverted edit keeps its counters).
fn schedule_release(shared: Arc<Shared>, removed: Vec<LimitId>) {
    let delay = shared.snapshot.load().store.release_after;
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        // Under the reload lock, so the live set cannot change meanwhile.
        let _serial = shared.reloader.serial.lock().await;
        let live: Vec<LimitId> = limit_ids(&shared.snapshot.load()).into_values().collect();
        let gone: Vec<LimitId> = removed
            .into_iter()
            .filter(|id| !live.contains(id))
            .collect();
        if gone.is_empty() {
            return;
        }
        let store = shared.clone();
        let released =
            tokio::task::spawn_blocking(move || store.limits.memory.release_limits(&gone, &live))
                .await;
        tracing::debug!(?released, "released the state of removed limits");
    });
}

/// The (rule, plan) pairs whose requests a snapshot counts apart.
fn plan_series(rt: &Snapshot) -> HashSet<(&str, &str)> {
    rt.rules
        .iter()
        .filter(|r| r.needs_consumer)
        .flat_map(|r| rt.plans.iter().map(|p| (r.name.as_str(), p.name.as_str())))
        .collect()
}

/// `rule/limit` → the limit's counter identity.
fn limit_ids(rt: &Snapshot) -> HashMap<String, LimitId> {
    rt.rules
        .iter()
        .flat_map(|r| {
            r.all_limits()
                .map(move |l| (format!("{}/{}", r.name, l.name), l.id))
        })
        .collect()
}

/// Compares two configs by name, and by serialized definition for changes.
fn changes<'a, T: Serialize + 'a>(
    old: impl IntoIterator<Item = (&'a str, &'a T)>,
    new: impl IntoIterator<Item = (&'a str, &'a T)>,
) -> Changes {
    let text = |v: &T| serde_json::to_string(v).unwrap_or_default();
    let old: HashMap<&str, String> = old.into_iter().map(|(n, v)| (n, text(v))).collect();
    let new: Vec<(&str, String)> = new.into_iter().map(|(n, v)| (n, text(v))).collect();
    let mut c = Changes::default();
    for (name, definition) in &new {
        match old.get(name) {
            None => c.added.push(name.to_string()),
            Some(before) if before != definition => c.changed.push(name.to_string()),
            Some(_) => {}
        }
    }
    let new_names: HashSet<&str> = new.iter().map(|(n, _)| *n).collect();
    c.removed = old
        .keys()
        .filter(|n| !new_names.contains(*n))
        .map(|n| n.to_string())
        .collect();
    c.removed.sort();
    c
}

fn summarize(old: &Snapshot, new: &Snapshot, startup: &Startup) -> ReloadSummary {
    let (old_in, new_in) = (&old.source.input, &new.source.input);
    let rules = changes(
        old_in.rules.iter().map(|r| (r.name.as_str(), r)),
        new_in.rules.iter().map(|r| (r.name.as_str(), r)),
    );
    let upstreams = changes(
        old_in.upstreams.iter().map(|(n, u)| (n.as_str(), u)),
        new_in.upstreams.iter().map(|(n, u)| (n.as_str(), u)),
    );
    let (old_ids, new_ids) = (limit_ids(old), limit_ids(new));
    let mut limits = LimitChanges::default();
    for rule in &new.rules {
        for limit in rule.all_limits() {
            let name = format!("{}/{}", rule.name, limit.name);
            match old_ids.get(&name) {
                Some(id) if *id == limit.id => limits.kept.push(name),
                Some(_) => limits.reset.push(name),
                None => limits.added.push(name),
            }
        }
    }
    limits.removed = old_ids
        .keys()
        .filter(|n| !new_ids.contains_key(*n))
        .cloned()
        .collect();
    limits.removed.sort();
    let restart_required = restart_required(startup, new);
    ReloadSummary {
        generation: new.source.generation,
        rules,
        upstreams,
        limits,
        restart_required,
        warnings: new.warnings.clone(),
    }
}

/// Settings of `rt` that differ from what the process started with and so
/// are not in effect until a restart.
pub(crate) fn restart_required(startup: &Startup, rt: &Snapshot) -> Vec<String> {
    let now = Startup::of(rt);
    let mut differ = Vec::new();
    if now.listen != startup.listen {
        differ.push("server.listen".to_string());
    }
    if now.admin != startup.admin {
        differ.push("server.admin".to_string());
    }
    if now.threads != startup.threads {
        differ.push("server.threads".to_string());
    }
    if now.work_stealing != startup.work_stealing {
        differ.push("server.work_stealing".to_string());
    }
    if now.idle_timeout != startup.idle_timeout {
        differ.push("server.idle_timeout".to_string());
    }
    if now.grace_period != startup.grace_period {
        differ.push("server.grace_period".to_string());
    }
    for (name, settings) in &now.parts {
        let started = startup.parts.iter().find(|(n, _)| n == name);
        if started.map(|(_, s)| s) != Some(settings) {
            differ.push(name.to_string());
        }
    }
    if now.max_keys != startup.max_keys {
        differ.push("store.memory.max_keys".to_string());
    }
    if now.redis != startup.redis {
        differ.push("store.backend/store.redis".to_string());
    }
    if now.access_log != startup.access_log {
        differ.push("access_log.path/buffer".to_string());
    }
    if now.tls != startup.tls {
        differ.push("server.tls (listeners, versions, alpn, redirects)".to_string());
    }
    differ
}

/// Watches the config's directory and SIGHUP, and reloads on either.
///
/// The directory (not the file) is watched because editors and
/// `mv`-into-place replace the file, and Kubernetes swaps a symlink beside
/// it; when the file is a symlink, its target's directory is watched too.
/// Only events that mean "a file is complete" count: a closed write, a
/// rename, a removal. A writer that is still writing has not closed the file.
pub(crate) struct ConfigWatcher {
    pub(crate) shared: Arc<Shared>,
    pub(crate) handle_sighup: bool,
}

/// Events that can mean a new version of the config is complete.
fn completes_a_file(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
            | EventKind::Other
            | EventKind::Any
    )
}

fn watch_directories(
    files: &[&Path],
    events: mpsc::Sender<()>,
) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) if !completes_a_file(&event.kind) => {}
            // Errors (such as a queue overflow) may hide an edit: look again.
            _ => {
                let _ = events.try_send(());
            }
        }
    })?;
    // Each file's directory, and its target's when it is a symlink; each
    // directory once.
    let mut dirs: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    let targets = files.iter().flat_map(|&path| {
        [
            Some(parent_dir(path)),
            std::fs::canonicalize(path).ok().map(|t| parent_dir(&t)),
        ]
    });
    for dir in targets.flatten() {
        let canonical = std::fs::canonicalize(&dir).ok();
        if !dirs
            .iter()
            .any(|(d, c)| *d == dir || (c.is_some() && *c == canonical))
        {
            dirs.push((dir, canonical));
        }
    }
    for (dir, _) in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Which directory each watched name stands for now (device and inode of
/// the file's directory and of its symlink target's): a change means a
/// directory was replaced under the same name.
fn directory_identities(files: &[&Path]) -> Vec<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let identity = |dir: PathBuf| std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()));
    files
        .iter()
        .flat_map(|&path| {
            [
                identity(parent_dir(path)),
                std::fs::canonicalize(path)
                    .ok()
                    .and_then(|target| identity(parent_dir(&target))),
            ]
        })
        .collect()
}

fn parent_dir(path: &Path) -> std::path::PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Waits out a burst of events: until 50 ms pass without one, or 250 ms after
/// the first, so a busy neighbour file cannot postpone a reload for ever.
async fn debounce(events: &mut mpsc::Receiver<()>) {
    let until = tokio::time::Instant::now() + MAX_DEBOUNCE;
    loop {
        let quiet = tokio::time::Instant::now() + DEBOUNCE;
        match tokio::time::timeout_at(quiet.min(until), events.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < until => continue,
            _ => return,
        }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::channel(1);
        // The files the config names are watched where they are at start;
        // one moved elsewhere by a later edit is seen on SIGHUP or
        // `POST /-/reload`.
        let named = self.shared.snapshot.load().source.other_files.clone();
        let files: Vec<&Path> = std::iter::once(self.shared.config_path.as_path())
            .chain(named.iter().map(PathBuf::as_path))
            .collect();
        let mut watched = directory_identities(&files);
        let mut _watcher = match watch_directories(&files, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch the config file, reload with SIGHUP or POST /-/reload: {e}"
                );
                None
            }
        };
        let listen = |kind: tokio::signal::unix::SignalKind, name: &str| {
            if !self.handle_sighup {
                return None;
            }
            match tokio::signal::unix::signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot listen for {name}: {e}");
                    None
                }
            }
        };
        let mut hangup = listen(tokio::signal::unix::SignalKind::hangup(), "SIGHUP");
        // logrotate's signal: the access log file is reopened.
        let mut rotate = listen(tokio::signal::unix::SignalKind::user_defined1(), "SIGUSR1");
        // An edit made while the gateway was starting had no watcher to see it.
        if _watcher.is_some() {
            self.shared.reloader.state().watching = true;
            if self.shared.snapshot.load().server.watch {
                reload(&self.shared, Trigger::File).await;
            }
        }
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let usr1 = async {
                match rotate.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = rx.recv() => {
                    debounce(&mut rx).await;
                    if self.shared.snapshot.load().server.watch {
                        reload(&self.shared, Trigger::File).await;
                    }
                    // A directory swapped in under the watched one's name
                    // (`mv conf.new conf`): the watch went with the old one.
                    let now = directory_identities(&files);
                    if _watcher.is_some() && now != watched {
                        match watch_directories(&files, tx.clone()) {
                            Ok(w) => {
                                _watcher = Some(w);
                                watched = now;
                            }
                            // The old watch stays; its next event tries again.
                            Err(e) => tracing::warn!(
                                "cannot watch the config's new directory, reload with SIGHUP or POST /-/reload: {e}"
                            ),
                        }
                    }
                }
                Some(()) = hup => {
                    reload(&self.shared, Trigger::Signal).await;
                }
                Some(()) = usr1 => self.shared.access_log.reopen(),
                _ = shutdown.changed() => return,
            }
        }
    }
}
