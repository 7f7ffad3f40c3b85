//! Load generator for the demo: simulated vehicles post positions at a target
//! rate for a while, then a summary of what the gateway answered.
//!
//! ```sh
//! cargo run --release --example loadgen -- --vehicles 50 --rate 300 --duration 10s
//! ```
//!
//! Requests are scheduled at fixed times (open loop), so a slow gateway shows
//! up as latency instead of silently lowering the rate; latency is measured
//! from each request's scheduled time. Targets outside loopback are refused
//! unless `--allow-remote` is given.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

/// A bound on one run, so a typo cannot turn into an endless flood.
const MAX_REQUESTS: u64 = 10_000_000;

#[derive(Parser, Debug)]
#[command(about = "Simulated vehicles posting events through tollgate")]
struct Args {
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Simulated vehicles (each posts in turn).
    #[arg(long, default_value_t = 20)]
    vehicles: usize,
    /// Total requests per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long to run, e.g. 10s or 2m.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Requests in flight at most; beyond it the schedule slips.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Allow a target outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    allow_remote: bool,
}

/// A vehicle on a random walk around a city.
struct Vehicle {
    id: String,
    lat: f64,
    lon: f64,
    heading: f64,
    speed: f64,
}

/// xorshift64*: plenty for simulated traffic, no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Vehicle {
    fn new(i: usize, rng: &mut Rng) -> Self {
        Vehicle {
            id: format!("vehicle-{i:04}"),
            lat: 52.52 + (rng.next() - 0.5) * 0.1,
            lon: 13.40 + (rng.next() - 0.5) * 0.16,
            heading: rng.next() * std::f64::consts::TAU,
            speed: 20.0 + rng.next() * 60.0,
        }
    }

    /// Moves on and returns the event to post.
    fn step(&mut self, rng: &mut Rng) -> serde_json::Value {
        self.heading += (rng.next() - 0.5) * 0.6;
        self.speed = (self.speed + (rng.next() - 0.5) * 10.0).clamp(0.0, 130.0);
        let km = self.speed / 3600.0; // about a second of driving
        self.lat = (self.lat + km / 111.0 * self.heading.cos()).clamp(-90.0, 90.0);
        self.lon = (self.lon + km / 68.0 * self.heading.sin()).clamp(-180.0, 180.0);
        serde_json::json!({ "id": self.id, "lat": self.lat, "lon": self.lon, "speed": self.speed })
    }
}

fn check_loopback(url: &str, allow_remote: bool) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).context("--url is not a URL")?;
    let host = parsed.host_str().context("--url has no host")?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<IpAddr> = (host.trim_matches(|c| c == '[' || c == ']'), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .map(|a| a.ip())
        .collect();
    if !allow_remote && !addrs.iter().all(|ip| ip.is_loopback()) {
        bail!("{host} is not a loopback address; pass --allow-remote to load a remote gateway");
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_loopback(&args.url, args.allow_remote)?;
    if !(args.rate.is_finite() && args.rate > 0.0) || args.vehicles == 0 || args.concurrency == 0 {
        bail!("--rate, --vehicles and --concurrency must be positive (and the rate finite)");
    }
    let total = (args.rate * args.duration.as_secs_f64()).round();
    if total > MAX_REQUESTS as f64 {
        bail!("{total} requests is more than this tool sends in one run ({MAX_REQUESTS})");
    }
    let total = total as u64;
    let endpoint = format!("{}/events", args.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut fleet: Vec<Vehicle> = (0..args.vehicles)
        .map(|i| Vehicle::new(i, &mut rng))
        .collect();
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );

    println!(
        "{} vehicles, {:.0} requests/s for {:?} against {endpoint}",
        args.vehicles, args.rate, args.duration
    );
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let permit = permits.clone().acquire_owned().await?;
        let which = (i as usize) % fleet.len();
        let body = fleet[which].step(&mut rng);
        let (client, endpoint, latencies, tally, bar) = (
            client.clone(),
            endpoint.clone(),
            latencies.clone(),
            tally.clone(),
            bar.clone(),
        );
        tasks.spawn(async move {
            let status = match client.post(&endpoint).json(&body).send().await {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(e) if e.is_timeout() => "timeout".to_string(),
                Err(_) => "error".to_string(),
            };
            let took = scheduled.elapsed().as_micros() as u64;
            let _ = latencies
                .lock()
                .map(|mut h| h.saturating_record(took.max(1)));
            if let Ok(mut t) = tally.lock() {
                *t.statuses.entry(status).or_default() += 1;
                let accepted = t.statuses.get("202").copied().unwrap_or(0);
                let limited = t.statuses.get("429").copied().unwrap_or(0);
                bar.set_message(format!("202: {accepted}  429: {limited}"));
            }
            bar.inc(1);
            drop(permit);
        });
        // Reap finished requests as we go, so handles do not pile up.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    bar.finish();

    let tally = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    let h = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram poisoned"))?;
    let done: u64 = tally.statuses.values().sum();
    println!(
        "\nrequests   {done} in {:.2} s ({:.1}/s achieved, {:.0}/s asked)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        args.rate
    );
    for (status, count) in &tally.statuses {
        println!("  {status:>8}  {count}");
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "latency    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    Ok(())
}
