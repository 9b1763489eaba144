//! `edge-gateway`: parse config before binding anything; bad config exits 2.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
};

use clap::Parser;
use edge_gateway::{
    config::{GatewayConfig, Overrides},
    discovery::UpstreamTarget,
    dns, lifecycle,
    server::{Listeners, build_server_on},
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
    // A graceful upgrade takes the old process's sockets, whatever their ports.
    let listeners = if args.upgrade {
        Listeners::default()
    } else {
        match bind_any_ports(&config) {
            Ok(listeners) => listeners,
            Err(error) => {
                eprintln!("edge-gateway: cannot bind a listener on port 0: {error}");
                std::process::exit(1);
            }
        }
    };
    let (mut server, state) = match build_server_on(config, Some(opt), filters, listeners) {
        Ok(built) => built,
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

/// Listeners configured with port 0 are bound here, on any free port, and their addresses are
/// the ones the "listening" line reports. Whoever starts the gateway learns its ports from that
/// line: a port it picked free and released could be taken before the gateway binds it.
fn bind_any_ports(config: &GatewayConfig) -> std::io::Result<Listeners> {
    let bind = |addr: SocketAddr| {
        (addr.port() == 0)
            .then(|| TcpListener::bind(addr))
            .transpose()
    };
    Ok(Listeners {
        main: bind(config.listen)?,
        tls: match &config.tls {
            Some((addr, ..)) => bind(*addr)?,
            None => None,
        },
        metrics: match config.metrics_listen {
            Some(addr) => bind(addr)?,
            None => None,
        },
    })
}
