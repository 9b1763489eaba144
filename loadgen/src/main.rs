//! meshgate-loadgen: a closed-loop load generator for the user service.
//!
//! `concurrency` workers each send one request, wait for the answer, record its latency
//! (hdrhistogram, microseconds) and repeat, until `--requests` have been sent or `--duration`
//! has passed. Prints throughput and latency percentiles.
//!
//! Loopback targets only: this is a benchmark tool, not a way to load someone else's server.
//! Scenarios describe *what* to send ([`Operation`]); a [`Transport`] decides *how* (native
//! gRPC, and REST and gRPC-web through the edge gateway in `http.rs`).
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;

mod grpc;
mod http;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "meshgate-loadgen",
    about = "Closed-loop load generator (loopback only)."
)]
struct Args {
    /// Target base URL, e.g. http://127.0.0.1:50051. Must be a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// What to send.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// How to send it.
    #[arg(long, value_enum, default_value_t = TransportKind::Grpc)]
    transport: TransportKind,
    /// Requests in flight at any time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// HTTP/2 connections shared by the workers.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Stop after this many requests (in total).
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Stop after this many seconds (default 10 when --requests is not given).
    #[arg(long)]
    duration: Option<f64>,
    /// Users created before the run (get-hit and list read them).
    #[arg(long, default_value_t = 1000)]
    seed_users: usize,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// GetUser on seeded users, each read once before the run so every request hits the cache.
    GetHit,
    /// GetUser on random ids that do not exist: every request misses the cache and queries
    /// the database (answered NOT_FOUND, which counts as the expected outcome).
    GetMiss,
    /// CreateUser with a fresh email each time.
    Create,
    /// ListUsers over the first five pages of 10.
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TransportKind {
    /// Native gRPC over HTTP/2 (tonic client).
    Grpc,
    /// REST/JSON over HTTP/2 (h2c) through the edge gateway.
    Rest,
    /// gRPC-web (binary) over HTTP/2 (h2c) through the edge gateway.
    GrpcWeb,
}

/// One request, independent of how it is carried.
#[derive(Debug, Clone)]
pub enum Operation {
    GetUser {
        id: String,
    },
    CreateUser {
        name: String,
        email: String,
        age: i32,
    },
    ListUsers {
        page: i32,
        limit: i32,
    },
}

/// The answer class of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    Failed,
}

/// Carries operations to the target. Implementations must be cheap to share between workers.
pub trait Transport: Send + Sync + 'static {
    fn call(&self, worker: usize, op: Operation) -> impl Future<Output = Outcome> + Send;
    /// Creates a user during setup and returns its id.
    fn seed(&self, op: Operation) -> impl Future<Output = anyhow::Result<String>> + Send;
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_loopback(&args.target)?;
    if args.concurrency == 0 || args.connections == 0 {
        bail!("--concurrency and --connections must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.transport {
            TransportKind::Grpc => {
                // More connections than workers would sit idle.
                let connections = args.connections.min(args.concurrency);
                let transport = grpc::GrpcTransport::connect(&args.target, connections).await?;
                run(args, Arc::new(transport)).await
            }
            TransportKind::Rest => {
                let transport = http::RestTransport::new(&args.target, args.connections)?;
                run(args, Arc::new(transport)).await
            }
            TransportKind::GrpcWeb => {
                let transport = http::GrpcWebTransport::new(&args.target, args.connections)?;
                run(args, Arc::new(transport)).await
            }
        }
    })
}

fn ensure_loopback(target: &str) -> anyhow::Result<()> {
    let uri: tonic::codegen::http::Uri = target
        .parse()
        .with_context(|| format!("--target {target:?} is not a URL"))?;
    let host = uri.host().context("--target has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("--target must be a loopback address (127.0.0.1, ::1, localhost), got {host}");
    }
    Ok(())
}

async fn run<T: Transport>(args: Args, transport: Arc<T>) -> anyhow::Result<()> {
    let seeded = seed(&args, &*transport).await?;
    let plan = Arc::new(Plan {
        scenario: args.scenario,
        seeded,
    });
    // Warm up connections and (for get-hit) the cache with one pass over the seeded users.
    if args.scenario == Scenario::GetHit {
        for id in &plan.seeded {
            transport
                .call(0, Operation::GetUser { id: id.clone() })
                .await;
        }
    }

    let budget = match (args.requests, args.duration) {
        (Some(requests), _) => Budget::Requests(Arc::new(AtomicU64::new(requests))),
        (None, seconds) => {
            Budget::Until(Instant::now() + Duration::from_secs_f64(seconds.unwrap_or(10.0)))
        }
    };
    let started = Instant::now();
    let cpu_before = process_cpu_micros();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|worker| {
            let transport = transport.clone();
            let plan = plan.clone();
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .expect("static histogram bounds");
                let mut tally = Tally::default();
                let mut sequence = 0u64;
                while budget.take() {
                    let op = plan.next(worker, sequence);
                    sequence += 1;
                    let sent = Instant::now();
                    let outcome = transport.call(worker, op).await;
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    latencies.saturating_record(micros.max(1));
                    tally.count(plan.scenario, outcome);
                }
                (latencies, tally)
            })
        })
        .collect();
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut tally = Tally::default();
    for worker in workers {
        let (worker_latencies, worker_tally) = worker.await?;
        latencies.add(&worker_latencies)?;
        tally.ok += worker_tally.ok;
        tally.errors += worker_tally.errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = tally.ok + tally.errors;
    // The generator's own CPU per request: on a shared machine it competes with what it measures.
    let client_cpu = match (cpu_before, process_cpu_micros()) {
        (Some(before), Some(after)) if total > 0 => {
            format!("{:.1}", (after - before) as f64 / total as f64)
        }
        _ => "n/a".to_owned(),
    };
    println!(
        "scenario={:?} transport={:?} concurrency={} connections={} requests={} errors={} \
         seconds={:.2} throughput={:.0} req/s p50={:.3} ms p99={:.3} ms max={:.3} ms \
         client_cpu_us_per_request={client_cpu}",
        args.scenario,
        args.transport,
        args.concurrency,
        args.connections.min(args.concurrency),
        total,
        tally.errors,
        elapsed,
        total as f64 / elapsed,
        latencies.value_at_quantile(0.50) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0,
    );
    if tally.errors > 0 {
        eprintln!("warning: {} requests failed", tally.errors);
    }
    Ok(())
}

/// This process's user + system CPU time in µs (Linux `/proc/self/stat`), if readable.
fn process_cpu_micros() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI Rust targets.
    Some(ticks * 10_000)
}

async fn seed<T: Transport>(args: &Args, transport: &T) -> anyhow::Result<Vec<String>> {
    if !matches!(args.scenario, Scenario::GetHit | Scenario::List) {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(args.seed_users);
    for n in 0..args.seed_users.max(1) {
        let op = Operation::CreateUser {
            name: format!("Load {n}"),
            email: format!("load-{}@bench.example", uuid::Uuid::new_v4()),
            age: 30,
        };
        ids.push(transport.seed(op).await.context("seeding users")?);
    }
    Ok(ids)
}

/// What each worker sends next. Deterministic per (worker, sequence) so runs are comparable.
struct Plan {
    scenario: Scenario,
    seeded: Vec<String>,
}

impl Plan {
    fn next(&self, worker: usize, sequence: u64) -> Operation {
        let spread = (worker as u64).wrapping_mul(7919).wrapping_add(sequence);
        match self.scenario {
            Scenario::GetHit => {
                let index = usize::try_from(spread % self.seeded.len() as u64).unwrap_or(0);
                Operation::GetUser {
                    id: self.seeded[index].clone(),
                }
            }
            Scenario::GetMiss => Operation::GetUser {
                id: uuid::Uuid::new_v4().to_string(),
            },
            Scenario::Create => Operation::CreateUser {
                name: format!("Bench {worker}-{sequence}"),
                email: format!("bench-{}@bench.example", uuid::Uuid::new_v4()),
                age: 30,
            },
            Scenario::List => Operation::ListUsers {
                page: i32::try_from(spread % 5).unwrap_or(0) + 1,
                limit: 10,
            },
        }
    }
}

/// When to stop.
#[derive(Clone)]
enum Budget {
    Requests(Arc<AtomicU64>),
    Until(Instant),
}

impl Budget {
    fn take(&self) -> bool {
        match self {
            Self::Requests(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            Self::Until(deadline) => Instant::now() < *deadline,
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
}

impl Tally {
    fn count(&mut self, scenario: Scenario, outcome: Outcome) {
        let expected = match scenario {
            Scenario::GetMiss => outcome == Outcome::NotFound,
            _ => outcome == Outcome::Ok,
        };
        if expected {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(ensure_loopback("http://127.0.0.1:50051").is_ok());
        assert!(ensure_loopback("http://[::1]:50051").is_ok());
        assert!(ensure_loopback("http://localhost:8080").is_ok());
        assert!(ensure_loopback("http://10.0.0.1:50051").is_err());
        assert!(ensure_loopback("http://example.com").is_err());
    }

    #[test]
    fn request_budget_is_exact() {
        let budget = Budget::Requests(Arc::new(AtomicU64::new(3)));
        let taken = (0..10).filter(|_| budget.take()).count();
        assert_eq!(taken, 3);
    }

    #[test]
    fn get_miss_counts_not_found_as_expected() {
        let mut tally = Tally::default();
        tally.count(Scenario::GetMiss, Outcome::NotFound);
        tally.count(Scenario::GetHit, Outcome::NotFound);
        assert_eq!((tally.ok, tally.errors), (1, 1));
    }
}
