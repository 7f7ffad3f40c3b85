//! The `tollgate` command line: parse arguments, then hand over to the library.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use pingora::server::RunArgs;
use tollgate::app;
use tollgate::check::{self, Hypothetical};
use tollgate::replay;
use tollgate::schema::Severity;
use tollgate::server::ProcessOptions;

/// mimalloc: a request allocates a few dozen small, short-lived buffers across
/// threads; glibc's malloc spent about 15 % of a proxied request's
/// instructions on them (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `print!` without its panic: a reader that went away (`tollgate check |
/// head -1`) loses the rest of the output, and the command still ends with
/// its own exit code.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `println!` without its panic (see `out!`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A rate-limiting reverse proxy built on Pingora"
)]
struct Cli {
    /// The config file.
    #[arg(
        short,
        long,
        global = true,
        env = "TOLLGATE_CONFIG",
        default_value = "config.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic (the default).
    Run,
    /// Validate the config file; exit 1 listing every problem.
    Check {
        /// Explain what happens to a request, e.g. 'POST /events?x=1'.
        #[arg(long, value_name = "METHOD PATH")]
        explain: Option<String>,
        /// A request header for --explain, as 'name: value' (repeatable).
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The connecting peer's IP for --explain.
        #[arg(long, default_value = "127.0.0.1")]
        ip: IpAddr,
        /// An API key for --explain, sent where `server.api_key` looks first.
        #[arg(long, value_name = "KEY")]
        api_key: Option<String>,
        /// A bearer token (a JWT) for --explain.
        #[arg(long, value_name = "JWT")]
        token: Option<String>,
    },
    /// What the config (-c, the candidate) would have done to the requests
    /// of JSON access logs: replayed in recorded order at recorded times,
    /// reported beside what the log says happened.
    Replay {
        /// Access logs (JSON lines, gzip or not); `-` reads stdin.
        #[arg(required = true, value_name = "ACCESS_LOG")]
        logs: Vec<PathBuf>,
        /// Only requests from this time on (RFC 3339, or `2026-12-01 10:00:00` in UTC).
        #[arg(long, value_name = "TIME", value_parser = replay::parse_window_time)]
        since: Option<SystemTime>,
        /// Only requests before this time.
        #[arg(long, value_name = "TIME", value_parser = replay::parse_window_time)]
        until: Option<SystemTime>,
        /// Show keys as counted (client IPs, consumer ids) instead of digests.
        #[arg(long)]
        show_keys: bool,
        /// How many changed keys to list each way.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Logs go to stderr (stdout carries `check`'s report), coloured only on a terminal.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::Check {
            explain,
            mut headers,
            ip,
            api_key,
            token,
        } => {
            headers.extend(token.map(|t| format!("authorization: Bearer {t}")));
            check(cli.config, explain, headers, api_key, ip)
        }
        Command::Replay {
            logs,
            since,
            until,
            show_keys,
            top,
            json,
        } => {
            let options = replay::Options {
                paths: logs,
                window: replay::Window { since, until },
                show_keys,
                top,
            };
            replay_logs(cli.config, &options, json)
        }
    }
}

fn replay_logs(config_path: PathBuf, options: &replay::Options, json: bool) -> ExitCode {
    let Some(candidate) = load_or_report(&config_path) else {
        return ExitCode::from(1);
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build();
    let report = match runtime {
        Ok(runtime) => runtime.block_on(replay::replay(&candidate, options, &mut |progress| {
            eprintln!("{progress}")
        })),
        Err(e) => {
            eprintln!("tollgate: cannot start a runtime for replay: {e}");
            return ExitCode::from(1);
        }
    };
    match report {
        Ok(report) if json => match serde_json::to_string_pretty(&report) {
            Ok(text) => outln!("{text}"),
            Err(e) => {
                eprintln!("tollgate: {e}");
                return ExitCode::from(1);
            }
        },
        Ok(report) => out!("{}", report.text()),
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

/// The config at `config_path`, or `None` after printing every problem.
fn load_or_report(config_path: &Path) -> Option<tollgate::snapshot::Snapshot> {
    match app::loader().load_file(config_path) {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            let errors = e
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            for problem in &e.problems {
                outln!("{}:{problem}", problem.file_or(config_path).display());
            }
            outln!(
                "{}: {errors} error(s); the file was not accepted",
                config_path.display()
            );
            None
        }
    }
}

/// Takes over SIGHUP at once: its default action kills the process, and the
/// reload handler is only installed once the services run. tokio keeps the
/// handler installed for the life of the process.
fn survive_early_sighup() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build();
    let installed = runtime.map(|rt| {
        rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        })
    });
    if let Err(e) | Ok(Err(e)) = installed {
        tracing::warn!("cannot take over SIGHUP early: {e}");
    }
}

fn run(config_path: PathBuf) -> ExitCode {
    survive_early_sighup();
    let shared = match app::load_shared(&config_path) {
        Ok(shared) => shared,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = app::check_bindable(&shared) {
        eprintln!("tollgate: {e}");
        return ExitCode::from(1);
    }
    {
        let rt = shared.snapshot.load();
        tracing::info!(
            config = %config_path.display(),
            listen = ?rt.server.listen,
            admin = %rt.server.admin,
            rules = rt.rules.len(),
            "tollgate starting"
        );
    }
    // SIGTERM: the listeners close at once and requests in flight get
    // `server.grace_period`. SIGINT stops at once.
    let options = ProcessOptions {
        grace_period_seconds: None,
        handle_sighup: true,
        owns_process: true,
    };
    app::build_server(shared, options).run(RunArgs::default());
    ExitCode::SUCCESS
}

fn check(
    config_path: PathBuf,
    explain: Option<String>,
    mut headers: Vec<String>,
    api_key: Option<String>,
    ip: IpAddr,
) -> ExitCode {
    let Some(runtime) = load_or_report(&config_path) else {
        return ExitCode::from(1);
    };
    for warning in &runtime.warnings {
        outln!("{}:{warning}", config_path.display());
    }
    match explain {
        None => {
            outln!("{}: ok", config_path.display());
            out!("{}", check::summary(&runtime));
        }
        Some(request) => match Hypothetical::parse(
            &request,
            {
                headers.extend(api_key.map(|key| check::api_key_header(&runtime, &key)));
                &headers
            },
            ip,
        ) {
            Ok(req) => {
                let runtime_for_explain = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime_for_explain {
                    Ok(tokio) => out!("{}", tokio.block_on(check::explain(&runtime, &req))),
                    Err(e) => {
                        eprintln!("tollgate: cannot start a runtime for --explain: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            Err(e) => {
                eprintln!("tollgate: {e}");
                return ExitCode::from(2);
            }
        },
    }
    ExitCode::SUCCESS
}
