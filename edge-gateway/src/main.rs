//! `edge-gateway`: parse config before binding anything; bad config exits 2, an address that
//! cannot be listened on 1.

use std::path::PathBuf;

use clap::Parser;
use edge_gateway::{
    config::{GatewayConfig, Overrides},
    discovery::UpstreamTarget,
    dns, lifecycle,
    server::build_server,
    state::StartError,
    wasm_filters,
};

#[derive(Debug, Parser)]
#[command(
    name = "edge-gateway",
    version,
    about = "meshgate edge gateway (REST, gRPC-web, gRPC on one port)"
)]
struct Args {
    /// YAML config file (pingora `server` section + `gateway` section).
    #[arg(short, long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    /// Take over the listening sockets of a running gateway (pingora graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,
    /// Validate the config and exit.
    #[arg(short, long)]
    test: bool,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora=warn".into()),
        )
        .with_current_span(false)
        .init();
    let config = match GatewayConfig::load(args.config.as_deref(), &args.overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("edge-gateway: {error}");
            std::process::exit(2);
        }
    };
    // Modules are compiled and configured now: a bad module or a refused pluginConfig exits 2.
    let filters = match wasm_filters::load(&config.filters) {
        Ok(filters) => filters,
        Err(error) => {
            eprintln!("edge-gateway: {error}");
            std::process::exit(2);
        }
    };
    // Upstream names need a resolver configuration (the system's or gateway.dns): checked now
    // so a container without a usable /etc/resolv.conf fails here, not at the first lookup.
    let names = config
        .upstream
        .targets
        .iter()
        .any(|target| matches!(target, UpstreamTarget::Name { .. }));
    if names && let Err(error) = dns::resolver_config(&config.upstream.dns) {
        eprintln!(
            "edge-gateway: invalid config key `{}`: {}",
            error.key, error.reason
        );
        std::process::exit(2);
    }
    if args.test {
        println!("config ok");
        return;
    }
    let opt = pingora::server::configuration::Opt {
        upgrade: args.upgrade,
        ..Default::default()
    };
    let upstreams: Vec<String> = config
        .upstream
        .targets
        .iter()
        .map(UpstreamTarget::label)
        .collect();
    let drain_delay = config.drain_delay;
    // Every address is bound while building, unless a graceful upgrade hands the old process's
    // sockets over: port 0 becomes a free port, reported in the "listening" line (whoever
    // starts the gateway learns its ports from it; a port picked free and released could be
    // taken before the gateway binds it).
    let (mut server, state) = match build_server(config, Some(opt), filters) {
        Ok(built) => built,
        Err(error @ StartError::Listen { .. }) => {
            eprintln!("edge-gateway: {error}");
            std::process::exit(1);
        }
        Err(error) => {
            eprintln!("edge-gateway: {error}");
            std::process::exit(2);
        }
    };
    let listen = state.config.listen;
    let metrics = state.config.metrics_listen;
    let tls = state.config.tls.as_ref().map(|(addr, _, _)| *addr);
    server.bootstrap();
    tracing::info!(%listen, ?metrics, ?tls, ?upstreams, "edge-gateway listening: REST, gRPC-web and gRPC (h2c) on http://{listen}");
    // SIGTERM: /readyz 503 while serving on for the drain delay, then pingora stops accepting;
    // the process exits as soon as no request is in flight (at the latest when
    // `grace_period_seconds` ends and pingora drops what is left), after flushing spans.
    let exiting_state = state.clone();
    lifecycle::exit_when_drained(
        server.watch_execution_phase(),
        state.lifecycle.clone(),
        move || exiting_state.flush_spans(),
    );
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(lifecycle::DrainingSignals {
            lifecycle: state.lifecycle.clone(),
            drain_delay,
        }),
    });
    state.flush_spans();
    std::process::exit(0);
}
