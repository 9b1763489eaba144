//! `cargo xtask rehearse --env dev|prod`: a local deployment rehearsal.
//!
//! The environment's app of apps is rendered and synced in Argo CD's order (Application waves;
//! within each, PreSync hooks, then waves and kinds). What a node runs is run for real, with
//! the binaries of this checkout in place of our images:
//!
//! - every pod gets a network namespace and address ([`net`]), the kubelet's resolv.conf and
//!   hosts; Services get DNS names from a real DNS server ([`dns`]) and ClusterIPs served by a
//!   kube-proxy stand-in ([`proxy`]) whose endpoints follow readiness;
//! - every container runs with its exact command, args, env and mounted files
//!   ([`crate::container`]); every declared probe is run as the kubelet runs it ([`probe`]);
//! - a CloudNativePG Cluster is stood in for by a PostgreSQL bootstrapped as it declares
//!   ([`postgres`]); what only an operator or the mesh can do is reported, not faked;
//! - a client pod drives REST, gRPC-web and gRPC through the edge by its Service name
//!   ([`client`]); then PostgreSQL is stopped and restarted to check that liveness does not
//!   follow a dependency and that everything recovers.
//!
//! Everything made (namespaces, processes, files) is removed at the end, on failure and on
//! Ctrl-C/SIGTERM.
//!
//! The [`Rehearsal`]'s steps, one concern per module: the sync ([`sync`]), Services and the
//! database stand-in ([`cluster`]), pods and their probes ([`pods`]), what the kubelet knows
//! ([`board`]), the checks once synced ([`checks`]), the teardown and summary ([`teardown`]).

mod board;
mod checks;
pub mod client;
mod cluster;
mod dns;
mod events;
mod net;
mod pods;
mod postgres;
mod probe;
mod proxy;
mod runnable;
mod sync;
mod teardown;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::argo::{
    Application, Environment, Phase, phase, render_environment, sync_order, sync_wave,
};
use crate::container::{BindSpec, Program, Sandbox, prepare};
use crate::images::{Build, ImageConfig, build_binaries, our_image};
use crate::objects::{Object, ObjectId, selector_matches, string_map};
use crate::secrets::{DatabaseCluster, database_clusters, template_secrets};
use crate::util::{TempDir, require_root, which};
use crate::workload::{
    ContainerPlan, Hook, PodContext, PodTemplate, Store, plan_container, pod_template, references,
    secret_env_values,
};
use board::{
    Board, ExitRecord, PodState, ServicePort, ServiceState, Shared, TargetPort, describe_unready,
};
use probe::{ProbeKind, Target, Tracker, scaled};
use proxy::Endpoints;

/// Replicas started per workload at most (prod's autoscalers ask for 3).
const MAX_REPLICAS: u64 = 3;
/// How long an Application may take to become healthy, a Job to complete.
const HEALTH_LIMIT: Duration = Duration::from_secs(90);
/// The whole rehearsal of one environment.
const REHEARSAL_LIMIT: Duration = Duration::from_secs(300);
/// Our binary that serves REST, gRPC-web and gRPC: the client drives traffic through it.
const EDGE_BINARY: &str = "edge-gateway";
/// The client pod's Kubernetes namespace: the Istio ingress gateway's, the edge's only caller.
const CLIENT_NAMESPACE: &str = "istio-system";

/// Images we do not build whose programs the host has: each program name (bound at
/// `/usr/local/bin/<name>` in the container) and the host programs that can stand in for it,
/// first found wins. The rest of such an image (a shell, sed, grep) is the host's.
type StandIns = &'static [(&'static str, &'static [&'static str])];
const STAND_INS: &[(&str, StandIns)] = &[
    (
        "docker.io/valkey/valkey",
        &[
            ("valkey-server", &["valkey-server", "redis-server"]),
            ("valkey-cli", &["valkey-cli", "redis-cli"]),
        ],
    ),
    (
        "docker.io/library/nats",
        &[("nats-server", &["nats-server"])],
    ),
];

/// `registry/name:tag@digest` → `registry/name`.
fn image_repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => image,
    }
}

fn stand_ins(image: &str) -> Option<StandIns> {
    let repository = image_repository(image);
    STAND_INS
        .iter()
        .find(|(wanted, _)| *wanted == repository)
        .map(|(_, programs)| *programs)
}

/// Why kinds are not rehearsed (reported for each such object).
fn not_rehearsed(group: &str, kind: &str) -> &'static str {
    match (group, kind) {
        ("", "Namespace") => "namespace created (its name is the DNS search domain of its pods)",
        ("networking.k8s.io", "NetworkPolicy") => {
            "not enforced: needs the cluster's CNI (the validator checks the selectors)"
        }
        ("policy", "PodDisruptionBudget") => "not rehearsed: evictions need a cluster",
        ("autoscaling", "HorizontalPodAutoscaler") => {
            "minReplicas sets the rehearsed pod count; scaling needs metrics-server"
        }
        ("argoproj.io", "Rollout") => {
            "operator-owned (Argo Rollouts): canary steps, traffic shifting and analysis need the \
             controller and Istio; its pods use the Deployment's template, rehearsed as that Deployment"
        }
        ("argoproj.io", "AnalysisTemplate") => {
            "operator-owned (Argo Rollouts): its queries need Prometheus"
        }
        ("argoproj.io", "Application" | "AppProject") => {
            "Argo CD: modelled by the sync order itself"
        }
        ("networking.istio.io" | "security.istio.io" | "telemetry.istio.io", _) => {
            "operator-owned (Istio): mTLS, routing and authorization need istiod and the sidecars"
        }
        ("extensions.istio.io", "WasmPlugin") => {
            "operator-owned (Istio): the sidecars pull and run the module (the filters' own tests \
             run them in a proxy-wasm host)"
        }
        ("postgresql.cnpg.io", _) => {
            "operator-owned (CloudNativePG): backups and scheduling need the operator"
        }
        ("monitoring.coreos.com", _) => {
            "operator-owned (Prometheus Operator): scraping and rules need Prometheus"
        }
        ("opentelemetry.io", _) => {
            "operator-owned (OpenTelemetry Operator): no collector runs here"
        }
        ("cert-manager.io" | "acme.cert-manager.io", _) => {
            "operator-owned (cert-manager): issuing certificates needs the controller"
        }
        ("elasticsearch.k8s.elastic.co" | "kibana.k8s.elastic.co", _) => {
            "operator-owned (Elastic Cloud on Kubernetes): no Elasticsearch runs here"
        }
        ("barmancloud.cnpg.io", _) => {
            "operator-owned (CloudNativePG barman-cloud plugin): backups need the object store"
        }
        ("rbac.authorization.k8s.io", _) => {
            "not rehearsed: no API server here to authorize against"
        }
        _ => "not rehearsed: no local equivalent",
    }
}

/// Runs the rehearsal of `env_name`; `Ok(false)` when it found problems.
pub fn run(
    root: &Path,
    env_name: &str,
    keep_logs: Option<&Path>,
    build: Build,
) -> anyhow::Result<bool> {
    require_root("the deployment rehearsal")?;
    net::preflight()?;
    for tool in ["setpriv", "nsenter"] {
        which(tool).with_context(|| format!("{tool} (util-linux) not found"))?;
    }
    postgres::server_binaries()?;
    let kubectl = crate::render::kubectl()?;
    net::sweep_stale();
    crate::util::sweep_stale_temp_dirs();
    let started = Instant::now();
    let env = render_environment(root, &kubectl, env_name)?;
    let rendered = started.elapsed();
    let images = our_images(root, &env)?;
    let binaries = build_binaries(root, &images, build)?;
    println!(
        "rehearsal of {env_name}: {} ← {} ({} Applications; rendered in {:.1} s, binaries built in {:.1} s)",
        env.root_file,
        env.root_source,
        env.applications.len(),
        rendered.as_secs_f64(),
        (started.elapsed() - rendered).as_secs_f64()
    );
    let started = Instant::now();
    let work = TempDir::new(&format!("rehearsal-{env_name}"))?;
    let network = net::Network::create()?;
    // This thread (and so every runtime thread it starts) enters the node's namespace: the
    // kubelet, kube-proxy and DNS stand-ins live there, the host's network is never touched.
    let node = std::fs::File::open(format!("/run/netns/{}", network.node))?;
    nix::sched::setns(&node, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the node namespace")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let mut rehearsal = Rehearsal::new(root, &env, binaries, work.path(), network).await?;
        let result = tokio::select! {
            result = tokio::time::timeout(REHEARSAL_LIMIT, rehearsal.rehearse()) => {
                result.unwrap_or_else(|_| Err(anyhow!("the rehearsal took longer than {REHEARSAL_LIMIT:?}")))
            }
            signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
        };
        if let Err(error) = &result {
            rehearsal.fail(format!("{error:#}"));
        }
        rehearsal.shutdown().await;
        if let Some(dir) = keep_logs {
            rehearsal.keep_logs(&dir.join(env_name));
        }
        Ok::<_, anyhow::Error>(rehearsal.summary(started))
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

fn our_images(root: &Path, env: &Environment) -> anyhow::Result<Vec<ImageConfig>> {
    let mut images = Vec::new();
    for (_, object) in env.objects() {
        if let Some(template) = pod_template(object) {
            for (container, _) in template.containers() {
                if let Some(image) = our_image(root, container["image"].as_str().unwrap_or(""))? {
                    images.push(image);
                }
            }
        }
    }
    Ok(images)
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
    }
}

/// A timer that must fire every [`LAG_TICK`]: when it fires more than [`LAG_REPORTED`] late,
/// every task of this runtime (probes, kube-proxy, DNS) waited as long, and their timeouts are
/// the runtime's, not the pods'. Logged, so a stall says which side it was on.
const LAG_TICK: Duration = Duration::from_millis(100);
const LAG_REPORTED: Duration = Duration::from_millis(500);

async fn watch_runtime_lag(shared: Arc<Shared>) {
    let mut expected = tokio::time::Instant::now() + LAG_TICK;
    loop {
        tokio::time::sleep_until(expected).await;
        let now = tokio::time::Instant::now();
        let lag = now - expected;
        if lag > LAG_REPORTED {
            shared.log(format!(
                "the rehearsal's runtime stalled: a {LAG_TICK:?} timer fired {:.2} s late \
                 (probes, kube-proxy and DNS waited as long)",
                lag.as_secs_f64()
            ));
        }
        expected = now + LAG_TICK;
    }
}

// ---------------------------------------------------------------------------------------------

struct ContainerProcess {
    pod: usize,
    name: String,
    pid: u32,
    grace: Duration,
    log: PathBuf,
    /// Run before the SIGTERM at teardown, in the container.
    pre_stop: Option<(Hook, Target)>,
}

struct Rehearsal<'a> {
    root: &'a Path,
    env: &'a Environment,
    binaries: BTreeMap<String, PathBuf>,
    work: PathBuf,
    network: net::Network,
    shared: Arc<Shared>,
    store: Store,
    /// Objects that exist so far (what a pod may reference).
    applied: BTreeSet<ObjectId>,
    databases: Vec<DatabaseCluster>,
    postgres: Vec<(usize, postgres::Postgres)>,
    processes: Vec<ContainerProcess>,
    tasks: Vec<JoinHandle<()>>,
    /// Workloads whose pods an Application's health waits for: (pod indices, description).
    pending_health: Vec<(Vec<usize>, String)>,
    failures: Vec<String>,
    notes: Vec<String>,
}

impl<'a> Rehearsal<'a> {
    async fn new(
        root: &'a Path,
        env: &'a Environment,
        binaries: BTreeMap<String, PathBuf>,
        work: &Path,
        network: net::Network,
    ) -> anyhow::Result<Self> {
        let dns = dns::ClusterDns::start(SocketAddr::from((net::DNS_ADDRESS, 53))).await?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            board: Mutex::new(Board::default()),
            changed,
            dns,
            started: Instant::now(),
        });
        let reconciler = {
            let shared = shared.clone();
            let mut changes = shared.changed.subscribe();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    shared.reconcile().await;
                }
            })
        };
        let watchdog = tokio::spawn(watch_runtime_lag(shared.clone()));
        let mut rehearsal = Self {
            root,
            env,
            binaries,
            work: work.to_path_buf(),
            network,
            shared,
            store: Store::default(),
            applied: BTreeSet::new(),
            databases: database_clusters(env),
            postgres: Vec::new(),
            processes: Vec::new(),
            tasks: vec![reconciler, watchdog],
            pending_health: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        };
        // README step 2: the out-of-band Secrets exist before the first sync.
        for secret in template_secrets(root)? {
            rehearsal.shared.log(format!(
                "Secret {}/{} {} (test values)",
                secret.namespace, secret.name, secret.made_by
            ));
            rehearsal.applied.insert(ObjectId {
                kind: "Secret".into(),
                namespace: Some(secret.namespace.clone()),
                name: secret.name.clone(),
            });
            rehearsal
                .store
                .add_secret(&secret.namespace, &secret.name, secret.data);
        }
        Ok(rehearsal)
    }

    fn fail(&mut self, message: String) {
        println!("  FAIL {message}");
        self.failures.push(message);
    }

    fn note(&mut self, message: String) {
        println!("  note {message}");
        self.notes.push(message);
    }

    async fn rehearse(&mut self) -> anyhow::Result<()> {
        let env = self.env;
        for app in &env.applications {
            self.sync_application(app).await?;
        }
        let failures_before = self.failures.len();
        self.drive_traffic("after the sync").await;
        if self.failures.len() == failures_before {
            self.check_event_flow().await;
        }
        if self.failures.len() == failures_before && !self.postgres.is_empty() {
            self.database_outage().await?;
        }
        self.check_no_restarts();
        Ok(())
    }
}
