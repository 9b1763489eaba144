//! Per-request overhead of each filter on the real `.wasm` in `proxy-wasm-host`, on a REST and
//! a gRPC request (full exchange: request headers+body, response headers+body(+trailers),
//! stream teardown), plus module sizes and memory per worker VM.
//!
//! Build the modules, then: `cargo bench -p meshgate-filter-tests --bench filters`
//! (`BENCH_ITERATIONS` overrides the 5000 measured exchanges per case; `BENCH_THRASH_KIB`
//! evicts the caches between samples).

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_filter_host::{Chain, ManualClock, Plugin, PluginOptions, Request, Response, Runtime};
use meshgate_filter_tests::fixtures::user_response;
use meshgate_test_support::wasm::{module_bytes, module_path};
use prost::Message;

const RATE_LIMIT: (&str, &str) = (
    "meshgate_rate_limit",
    r#"{"rules":[{"name":"per-key","methods":["user.UserService/GetUser"],
        "key":[{"type":"header","name":"x-api-key"},{"type":"field","path":"id"}],
        "requests":1000000000,"periodSeconds":1}]}"#,
);
const CACHE_HEADERS: (&str, &str) = (
    "meshgate_cache_headers",
    r#"{"policies":[{"name":"reads","methods":["user.UserService/GetUser"],
        "cacheControl":{"scope":"private","maxAge":30},"vary":["authorization"],"etag":true}]}"#,
);
const SPAN_ENRICHMENT: (&str, &str) = (
    "meshgate_span_enrichment",
    r#"{"fields":[{"path":"id"},{"path":"user.email","from":"response","redact":"sha256"}]}"#,
);

/// The bundle's pluginConfig: the three configs above under their keys.
fn bundle() -> (&'static str, String) {
    (
        "meshgate_filters",
        format!(
            r#"{{"spanEnrichment":{},"rateLimit":{},"cacheHeaders":{}}}"#,
            SPAN_ENRICHMENT.1, RATE_LIMIT.1, CACHE_HEADERS.1
        ),
    )
}

fn load(runtime: &Runtime, (module, config): (&str, &str), workers: usize) -> Arc<Plugin> {
    let override_config = std::env::var("BENCH_SPAN_CONFIG").ok();
    let config = match (&override_config, module) {
        (Some(c), "meshgate_span_enrichment") => c.as_str(),
        _ => config,
    };
    let wasm = module_bytes(module);
    let options = PluginOptions {
        workers,
        clock: ManualClock::new(1_800_000_000_000_000_000),
        ..PluginOptions::default()
    };
    Arc::new(
        Plugin::load(runtime, module, &wasm, config, options).unwrap_or_else(|e| panic!("{e}")),
    )
}

fn frame(message: &impl Message) -> Vec<u8> {
    meshgate_wire::grpc::message_frame(&message.encode_to_vec())
}

fn rest_exchange(chain: &Chain) {
    let request = Request::new("GET", "/v1/users/u-12345")
        .header("x-api-key", "k1")
        .header("authorization", "Bearer t")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    let body = br#"{"id":"u-12345","name":"Ada Lovelace","email":"ada@example.com","age":36}"#;
    let exchange = chain.on_request(request);
    let done = exchange.on_response(
        Response::new(200)
            .header("content-type", "application/json")
            .body(body.to_vec()),
    );
    assert_eq!(done.response.status, 200);
}

fn grpc_exchange(chain: &Chain) {
    let request_body = frame(&meshgate_proto::user::GetUserRequest {
        id: "u-12345".into(),
    });
    let request = Request::new("POST", "/user.UserService/GetUser")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", "k1")
        .body(request_body);
    let exchange = chain.on_request(request);
    let done = exchange.on_response(
        Response::new(200)
            .header("content-type", "application/grpc")
            .body(frame(&user_response()))
            .trailer("grpc-status", "0"),
    );
    assert_eq!(done.response.status, 200);
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

/// `BENCH_THRASH_KIB=<n>`: between samples, write n KiB of unrelated memory (untimed), as a
/// proxy's own work does between two requests on a thread. It shows how much of a filter's
/// cost comes from finding its VM's memory and code out of the CPU caches.
fn thrash_buffer() -> Vec<u8> {
    let kib: usize = std::env::var("BENCH_THRASH_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    vec![0; kib * 1024]
}

fn thrash(buffer: &mut [u8], round: usize) {
    for line in buffer.chunks_mut(64) {
        line[0] = line[0].wrapping_add(round as u8);
    }
    std::hint::black_box(&buffer);
}

fn measure(chain: &Chain, exchange: fn(&Chain), iterations: usize) -> (f64, f64) {
    for _ in 0..iterations / 10 {
        exchange(chain);
    }
    let mut buffer = thrash_buffer();
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|round| {
            thrash(&mut buffer, round);
            let start = Instant::now();
            exchange(chain);
            start.elapsed()
        })
        .collect();
    samples.sort();
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let runtime = Runtime::new().expect("wasmtime runtime");
    let bundle = bundle();
    let filters = [
        RATE_LIMIT,
        CACHE_HEADERS,
        SPAN_ENRICHMENT,
        (bundle.0, bundle.1.as_str()),
    ];

    println!("## Module sizes\n");
    println!("| module | bytes | KiB |\n| --- | ---: | ---: |");
    for (module, _) in filters {
        let bytes = std::fs::metadata(module_path(module)).map_or(0, |m| m.len());
        println!("| {module}.wasm | {bytes} | {:.0} |", bytes as f64 / 1024.0);
    }

    let plugins: Vec<Arc<Plugin>> = filters.iter().map(|f| load(&runtime, *f, 1)).collect();
    let none = Chain::new(Vec::new());
    let cases: Vec<(String, Chain)> = vec![
        ("no filter (host baseline)".into(), none),
        (
            "rate-limit".into(),
            Chain::new(vec![Arc::clone(&plugins[0])]),
        ),
        (
            "cache-headers".into(),
            Chain::new(vec![Arc::clone(&plugins[1])]),
        ),
        (
            "span-enrichment".into(),
            Chain::new(vec![Arc::clone(&plugins[2])]),
        ),
        (
            "all three".into(),
            Chain::new(vec![
                Arc::clone(&plugins[2]),
                Arc::clone(&plugins[0]),
                Arc::clone(&plugins[1]),
            ]),
        ),
        (
            "all three, bundled (meshgate_filters)".into(),
            Chain::new(vec![Arc::clone(&plugins[3])]),
        ),
    ];
    println!("\n## Per-request time ({iterations} exchanges per case, µs)\n");
    println!(
        "| chain | REST p50 | REST p99 | gRPC p50 | gRPC p99 | REST overhead p50 | gRPC overhead p50 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut baseline = (0.0, 0.0);
    for (i, (name, chain)) in cases.iter().enumerate() {
        let rest = measure(chain, rest_exchange, iterations);
        let grpc = measure(chain, grpc_exchange, iterations);
        if i == 0 {
            baseline = (rest.0, grpc.0);
        }
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            rest.0,
            rest.1,
            grpc.0,
            grpc.1,
            rest.0 - baseline.0,
            grpc.0 - baseline.1
        );
    }

    println!("\n## Memory per worker VM (RSS growth while starting 16 VMs, KiB per VM)\n");
    println!("| module | KiB per VM |\n| --- | ---: |");
    for filter in filters {
        let before = rss_bytes();
        let plugin = load(&runtime, filter, 16);
        // One exchange per VM so each has touched its request path.
        let chain = Chain::new(vec![Arc::clone(&plugin)]);
        for _ in 0..16 {
            rest_exchange(&chain);
        }
        let after = rss_bytes();
        println!(
            "| {} | {:.0} |",
            filter.0,
            (after.saturating_sub(before)) as f64 / 16.0 / 1024.0
        );
        drop(chain);
        drop(plugin);
    }
}
