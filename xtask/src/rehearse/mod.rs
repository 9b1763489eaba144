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

pub mod client;
mod dns;
mod events;
mod net;
mod pods;
mod postgres;
mod probe;
mod proxy;

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

// ---------------------------------------------------------------------------------------------
// Shared state: what the kubelet knows (probe results, exits) and what routing needs.

#[derive(Debug, Clone)]
enum TargetPort {
    Number(u16),
    Name(String),
}

struct ServicePort {
    name: String,
    port: u16,
    target: TargetPort,
    endpoints: Arc<Endpoints>,
}

struct ServiceState {
    namespace: String,
    name: String,
    selector: BTreeMap<String, String>,
    headless: bool,
    ports: Vec<ServicePort>,
    published: Option<Vec<Ipv4Addr>>,
}

struct PodState {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
    ports: Vec<(Option<String>, u16)>,
    /// Containers that must be running and ready (init containers excluded).
    containers: Vec<String>,
    /// Readiness not decided by probes (the database stand-in): up or down.
    fixed_ready: Option<bool>,
    /// A Deployment's pod (must stay up), not a Job's.
    long_running: bool,
    /// Its containers are being started (their probes not registered yet): not Ready.
    starting: bool,
    /// Our binaries it runs (`edge-gateway`...).
    binaries: Vec<String>,
    ready: bool,
}

#[derive(Default)]
struct Board {
    trackers: BTreeMap<(usize, String, ProbeKind), Tracker>,
    /// (pod, container) → how it ended.
    exits: BTreeMap<(usize, String), ExitRecord>,
    pods: Vec<PodState>,
    services: Vec<ServiceState>,
    /// Liveness/startup failures: each one a restart by the kubelet.
    restarts: Vec<String>,
    /// Pods being stopped at teardown (their exits and probe failures are expected).
    stopping: BTreeSet<usize>,
}

#[derive(Debug, Clone)]
struct ExitRecord {
    code: Option<i32>,
    text: String,
    /// At teardown, after the SIGTERM.
    expected: bool,
}

impl Board {
    fn container_ready(&self, pod: usize, container: &str) -> bool {
        if self.exits.contains_key(&(pod, container.to_owned())) {
            return false;
        }
        let state = |kind| {
            self.trackers
                .get(&(pod, container.to_owned(), kind))
                .map(|t| t.state)
        };
        match state(ProbeKind::Readiness) {
            Some(ready) => ready == Some(true),
            None => !matches!(state(ProbeKind::Startup), Some(None | Some(false))),
        }
    }

    /// A startup or liveness probe of the pod failed: the kubelet restarts its container.
    fn restarting(&self, pod: usize) -> bool {
        self.trackers.iter().any(|((p, _, kind), tracker)| {
            *p == pod && *kind != ProbeKind::Readiness && tracker.state == Some(false)
        })
    }

    fn pod_ready(&self, pod: usize) -> bool {
        let state = &self.pods[pod];
        if self.stopping.contains(&pod) {
            return false;
        }
        state.fixed_ready.unwrap_or_else(|| {
            !state.starting
                && !state.containers.is_empty()
                && state
                    .containers
                    .iter()
                    .all(|c| self.container_ready(pod, c))
        })
    }
}

struct Shared {
    board: Mutex<Board>,
    changed: watch::Sender<u64>,
    dns: dns::ClusterDns,
    started: Instant,
}

impl Shared {
    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, line: impl AsRef<str>) {
        println!(
            "  +{:>6.2}s {}",
            self.started.elapsed().as_secs_f64(),
            line.as_ref()
        );
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Recomputes pod readiness, endpoints and headless DNS records after a change.
    async fn reconcile(&self) {
        let mut dns_updates = Vec::new();
        {
            let mut board = self.board();
            for index in 0..board.pods.len() {
                let ready = board.pod_ready(index);
                if board.pods[index].ready != ready {
                    board.pods[index].ready = ready;
                    if !board.pods[index].long_running {
                        continue;
                    }
                    self.log(format!(
                        "pod {} {}",
                        board.pods[index].name,
                        if ready { "Ready" } else { "NotReady" }
                    ));
                }
            }
            let board = &mut *board;
            for service in &mut board.services {
                let members: Vec<&PodState> = board
                    .pods
                    .iter()
                    .filter(|p| {
                        p.ready
                            && p.namespace == service.namespace
                            && selector_matches(&service.selector, &p.labels)
                    })
                    .collect();
                for port in &service.ports {
                    let addresses: Vec<SocketAddr> = members
                        .iter()
                        .filter_map(|pod| {
                            let number = match &port.target {
                                TargetPort::Number(n) => Some(*n),
                                TargetPort::Name(name) => pod
                                    .ports
                                    .iter()
                                    .find(|(n, _)| n.as_deref() == Some(name.as_str()))
                                    .map(|(_, number)| *number),
                            }?;
                            Some(SocketAddr::from((pod.ip, number)))
                        })
                        .collect();
                    port.endpoints.set(addresses);
                }
                if service.headless {
                    let ips: Vec<Ipv4Addr> = members.iter().map(|p| p.ip).collect();
                    if service.published.as_ref() != Some(&ips) {
                        service.published = Some(ips.clone());
                        dns_updates
                            .push((dns::service_fqdn(&service.name, &service.namespace), ips));
                    }
                }
            }
        }
        for (fqdn, ips) in dns_updates {
            if let Err(error) = self.dns.set(&fqdn, &ips).await {
                self.log(format!("DNS update of {fqdn} failed: {error:#}"));
            }
        }
    }

    /// Waits until `done` holds (re-checked on every change), at most `limit`.
    async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Board) -> bool,
    ) -> anyhow::Result<()> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(&self.board()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                bail!("{what}: not within {limit:?}");
            }
        }
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
            tasks: vec![reconciler],
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

    async fn sync_application(&mut self, app: &'a Application) -> anyhow::Result<()> {
        println!(
            "\n== Application {} (wave {}) ← {}: {} objects",
            app.name,
            app.wave,
            app.source,
            app.objects.len()
        );
        let mut step: Option<(Phase, i64)> = None;
        for object in sync_order(&app.objects) {
            let (object_phase, hook) = phase(object);
            let wave = sync_wave(object);
            if step.is_some_and(|s| s != (object_phase, wave)) {
                // Argo CD applies the next phase or wave once everything before it is healthy.
                self.wait_healthy(&app.name).await?;
            }
            step = Some((object_phase, wave));
            let namespace = object.namespace_or(&app.namespace).to_owned();
            let label = format!(
                "{} [{}{}]",
                object.described(),
                match object_phase {
                    Phase::PreSync => "PreSync hook",
                    Phase::Sync if hook => "Sync hook",
                    Phase::Sync => "Sync",
                    Phase::PostSync => "PostSync hook",
                    Phase::SyncFail => "SyncFail hook",
                    Phase::Skip => "Skip",
                },
                if wave == 0 {
                    String::new()
                } else {
                    format!(", wave {wave}")
                }
            );
            if matches!(object_phase, Phase::Skip | Phase::SyncFail) {
                println!("  {label}: never applied by a successful sync");
                continue;
            }
            self.apply(app, object, &namespace, &label).await?;
        }
        self.wait_healthy(&app.name).await
    }

    async fn apply(
        &mut self,
        app: &Application,
        object: &'a Object,
        namespace: &str,
        label: &str,
    ) -> anyhow::Result<()> {
        let mut id = object.id();
        if id.namespace.is_none()
            && !matches!(
                object.kind(),
                "Namespace" | "ClusterRole" | "ClusterRoleBinding"
            )
        {
            id.namespace = Some(namespace.to_owned());
        }
        self.applied.insert(id);
        self.store.apply(object, namespace)?;
        match (object.group(), object.kind()) {
            ("", "ConfigMap" | "Secret" | "ServiceAccount") => println!("  {label}: applied"),
            ("", "Service") => self.add_service(object, namespace, label).await?,
            ("apps", "Deployment" | "StatefulSet" | "ReplicaSet" | "DaemonSet") => {
                let full = pod_template(object).context("no pod template")?;
                let root = self.root;
                let runnable = pods::runnable_template(object, |image| {
                    stand_ins(image).is_some() || our_image(root, image).is_ok_and(|i| i.is_some())
                });
                let Some(runnable) = runnable else {
                    let image = self.foreign_image(&full)?.unwrap_or_default();
                    println!(
                        "  {label}: not rehearsed: image {image} is not built here and has no local stand-in"
                    );
                    return Ok(());
                };
                let template = PodTemplate {
                    workload: object,
                    template: &runnable.template,
                };
                let replicas = self.replicas(app, object);
                println!("  {label}: {replicas} pod(s)");
                for (container, image) in &runnable.left_out {
                    println!(
                        "    container {container} left out: image {image} is not built here and has no local stand-in"
                    );
                }
                self.check_references(&full, label);
                let mut pods = Vec::new();
                for index in 0..replicas {
                    let pod_name = format!("{}-{index}", object.name());
                    let pod = self
                        .start_pod(&template, namespace, &pod_name, true)
                        .await?;
                    if let Some(fqdn) = pods::stable_dns_name(object, &pod_name, namespace) {
                        let ip = self.shared.board().pods[pod].ip;
                        self.shared.dns.set(&fqdn, &[ip]).await?;
                    }
                    pods.push(pod);
                }
                self.pending_health.push((pods, object.described()));
            }
            ("batch", "Job") => {
                let template = pod_template(object).context("no pod template")?;
                if let Some(image) = self.foreign_image(&template)? {
                    println!(
                        "  {label}: not rehearsed: image {image} is not built here and has no local stand-in"
                    );
                    return Ok(());
                }
                println!("  {label}: run to completion");
                self.check_references(&template, label);
                self.run_job(object, &template, namespace).await?;
            }
            ("batch", "CronJob") => println!(
                "  {label}: not run (scheduled); its containers are in the config contract"
            ),
            ("postgresql.cnpg.io", "Cluster") => {
                self.start_database(object, namespace, label).await?
            }
            (group, kind) => println!("  {label}: {}", not_rehearsed(group, kind)),
        }
        Ok(())
    }

    /// The first image of the pod that is neither ours nor stood in by a host program.
    fn foreign_image(&self, template: &PodTemplate<'_>) -> anyhow::Result<Option<String>> {
        for (container, _) in template.containers() {
            let image = container["image"].as_str().unwrap_or("");
            if our_image(self.root, image)?.is_none() && stand_ins(image).is_none() {
                return Ok(Some(image.to_owned()));
            }
        }
        Ok(None)
    }

    /// `spec.replicas`, else the minimum of the autoscaler that targets it (or its Rollout).
    fn replicas(&self, app: &Application, object: &Object) -> u64 {
        if let Some(replicas) = object.value["spec"]["replicas"].as_u64() {
            return replicas.min(MAX_REPLICAS);
        }
        let name = object.name();
        let rollout_names: Vec<&str> = app
            .objects
            .iter()
            .filter(|o| o.kind() == "Rollout" && o.value["spec"]["workloadRef"]["name"] == name)
            .map(Object::name)
            .collect();
        let from_hpa = app.objects.iter().find_map(|hpa| {
            let target = &hpa.value["spec"]["scaleTargetRef"];
            let hit = hpa.kind() == "HorizontalPodAutoscaler"
                && ((target["kind"] == "Deployment" && target["name"] == name)
                    || (target["kind"] == "Rollout"
                        && rollout_names.contains(&target["name"].as_str().unwrap_or(""))));
            hit.then(|| hpa.value["spec"]["minReplicas"].as_u64().unwrap_or(1))
        });
        from_hpa.unwrap_or(1).clamp(1, MAX_REPLICAS)
    }

    /// A pod can only be created once what it references exists (otherwise the API server
    /// refuses it, or the kubelet cannot start it): a hook that needs a later object hangs.
    fn check_references(&mut self, template: &PodTemplate<'_>, label: &str) {
        for missing in missing_references(template, &self.applied) {
            let declared = self
                .env
                .objects()
                .find(|(app, o)| {
                    o.kind() == missing.kind
                        && o.name() == missing.name
                        && Some(o.namespace_or(&app.namespace)) == missing.namespace.as_deref()
                })
                .map(|(app, o)| {
                    let (p, _) = phase(o);
                    format!(
                        "it is declared in {} ({:?} phase, wave {} of Application {}), applied after this point",
                        o.origin.file_or_source(),
                        p,
                        sync_wave(o),
                        app.name
                    )
                })
                .unwrap_or_else(|| "nothing declares it (and it is not made out of band or by an operator)".into());
            self.fail(format!(
                "{label}: its pods cannot be created: {missing} does not exist yet — {declared} \
                 (the rehearsal goes on as if it existed)"
            ));
        }
    }

    async fn add_service(
        &mut self,
        object: &Object,
        namespace: &str,
        label: &str,
    ) -> anyhow::Result<()> {
        let spec = &object.value["spec"];
        if spec["type"].as_str() == Some("ExternalName") {
            println!("  {label}: ExternalName: not rehearsed");
            return Ok(());
        }
        let headless = spec["clusterIP"].as_str() == Some("None");
        let ports: Vec<(String, u16, TargetPort)> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p["port"].as_u64()?).ok()?;
                let target = match &p["targetPort"] {
                    Value::Number(n) => TargetPort::Number(u16::try_from(n.as_u64()?).ok()?),
                    Value::String(name) => match name.parse() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(name.clone()),
                    },
                    _ => TargetPort::Number(port),
                };
                Some((p["name"].as_str().unwrap_or("").to_owned(), port, target))
            })
            .collect();
        self.register_service(
            namespace,
            object.name(),
            string_map(&spec["selector"]),
            headless,
            ports,
            label,
        )
        .await
    }

    async fn register_service(
        &mut self,
        namespace: &str,
        name: &str,
        selector: BTreeMap<String, String>,
        headless: bool,
        ports: Vec<(String, u16, TargetPort)>,
        label: &str,
    ) -> anyhow::Result<()> {
        let fqdn = dns::service_fqdn(name, namespace);
        let mut service_ports = Vec::new();
        let address = if headless {
            None
        } else {
            Some(self.network.allocate_service_ip()?)
        };
        for (port_name, port, target) in ports {
            let endpoints = Arc::new(Endpoints::default());
            if let Some(vip) = address {
                self.tasks
                    .push(proxy::serve(SocketAddr::from((vip, port)), endpoints.clone()).await?);
            }
            service_ports.push(ServicePort {
                name: port_name,
                port,
                target,
                endpoints,
            });
        }
        if let Some(vip) = address {
            self.shared.dns.set(&fqdn, &[vip]).await?;
        }
        let shown_ports: Vec<String> = service_ports
            .iter()
            .map(|p| {
                format!(
                    "{}:{}→{}",
                    p.name,
                    p.port,
                    match &p.target {
                        TargetPort::Number(n) => n.to_string(),
                        TargetPort::Name(n) => n.clone(),
                    }
                )
            })
            .collect();
        println!(
            "  {label}: DNS {fqdn} → {}; ports {}",
            address.map_or_else(
                || "ready pod IPs (headless)".to_owned(),
                |a| format!("ClusterIP {a}")
            ),
            shown_ports.join(", ")
        );
        self.shared.board().services.push(ServiceState {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            selector,
            headless,
            ports: service_ports,
            published: None,
        });
        self.shared.notify();
        Ok(())
    }

    async fn start_database(
        &mut self,
        object: &Object,
        namespace: &str,
        label: &str,
    ) -> anyhow::Result<()> {
        let cluster = self
            .databases
            .iter()
            .find(|c| c.cluster == object.name() && c.namespace == namespace)
            .cloned()
            .context("database cluster vanished")?;
        let pod_name = format!("{}-1", cluster.cluster);
        let network = self.network.add_pod(&pod_name, namespace)?;
        let parameters: Vec<(String, String)> = object.value["spec"]["postgresql"]["parameters"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        let dir = self.work.join("databases").join(&cluster.cluster);
        std::fs::create_dir_all(&dir)?;
        let server = postgres::Postgres::bootstrap(&cluster, &parameters, &dir, &network.netns)
            .await
            .with_context(|| format!("{label}: the PostgreSQL stand-in"))?;
        let labels: BTreeMap<String, String> = [
            ("cnpg.io/cluster", cluster.cluster.as_str()),
            ("cnpg.io/instanceRole", "primary"),
            ("role", "primary"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let pod = {
            let mut board = self.shared.board();
            board.pods.push(PodState {
                name: pod_name.clone(),
                namespace: namespace.to_owned(),
                labels,
                ip: network.ip,
                ports: vec![(Some("postgresql".into()), 5432)],
                containers: Vec::new(),
                fixed_ready: Some(true),
                long_running: true,
                starting: false,
                binaries: Vec::new(),
                ready: false,
            });
            board.pods.len() - 1
        };
        println!(
            "  {label}: stood in by PostgreSQL {} (host binaries) as pod {pod_name} ({}): database {:?} owned by {:?}, \
             parameters {}; {} instance(s) declared, the primary rehearsed (replication and failover are the operator's)",
            server.version,
            network.ip,
            cluster.database,
            cluster.owner,
            parameters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            cluster.instances
        );
        // What the operator creates next to it: the Services and the application Secret.
        let selector = |role: Option<&str>| -> BTreeMap<String, String> {
            let mut s = BTreeMap::from([("cnpg.io/cluster".to_owned(), cluster.cluster.clone())]);
            if let Some(role) = role {
                s.insert("cnpg.io/instanceRole".into(), role.into());
            }
            s
        };
        let [rw, ro, r] = cluster.service_names();
        for (service, role) in [(rw, Some("primary")), (ro, Some("replica")), (r, None)] {
            let label = format!("  (operator) Service {namespace}/{service}");
            self.register_service(
                namespace,
                &service,
                selector(role),
                false,
                vec![("postgres".into(), 5432, TargetPort::Number(5432))],
                label.trim(),
            )
            .await?;
            self.applied.insert(ObjectId {
                kind: "Service".into(),
                namespace: Some(namespace.to_owned()),
                name: service,
            });
        }
        let secret = cluster.app_secret();
        println!(
            "  (operator) Secret {namespace}/{}: {}",
            secret.name, secret.made_by
        );
        self.applied.insert(ObjectId {
            kind: "Secret".into(),
            namespace: Some(namespace.to_owned()),
            name: secret.name.clone(),
        });
        self.store
            .add_secret(&secret.namespace, &secret.name, secret.data);
        self.postgres.push((pod, server));
        self.shared.notify();
        Ok(())
    }

    /// Creates a pod: its network, then its containers (init containers to completion first).
    async fn start_pod(
        &mut self,
        template: &PodTemplate<'_>,
        namespace: &str,
        pod_name: &str,
        long_running: bool,
    ) -> anyhow::Result<usize> {
        let network = self.network.add_pod(pod_name, namespace)?;
        let labels = template.labels();
        let context = PodContext {
            name: pod_name.to_owned(),
            namespace: namespace.to_owned(),
            ip: network.ip.to_string(),
            node_name: "rehearsal".into(),
            labels: labels.clone(),
            annotations: template.annotations(),
        };
        let grace = Duration::from_secs(
            template.spec()["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30)
                .min(10),
        );
        let mut plans = Vec::new();
        for (container, init) in template.containers() {
            let image = our_image(self.root, container["image"].as_str().unwrap_or(""))?;
            let plan = plan_container(
                &self.store,
                &context,
                template,
                container,
                init,
                image.as_ref(),
            )
            .with_context(|| format!("{}: pod {pod_name}", template.workload.described()))?;
            let secrets = secret_env_values(container, &self.store, namespace);
            plans.push((plan, image, secrets));
        }
        let pod = {
            let mut board = self.shared.board();
            board.pods.push(PodState {
                name: pod_name.to_owned(),
                namespace: namespace.to_owned(),
                labels,
                ip: network.ip,
                ports: plans
                    .iter()
                    .filter(|(p, ..)| !p.init)
                    .flat_map(|(p, ..)| p.ports.clone())
                    .collect(),
                containers: plans
                    .iter()
                    .filter(|(p, ..)| !p.init)
                    .map(|(p, ..)| p.name.clone())
                    .collect(),
                fixed_ready: None,
                long_running,
                starting: true,
                binaries: plans
                    .iter()
                    .filter_map(|(_, image, _)| image.as_ref().map(|i| i.binary.clone()))
                    .collect(),
                ready: false,
            });
            board.pods.len() - 1
        };
        self.shared.log(format!(
            "pod {pod_name} ({}) in {}",
            network.ip, network.netns
        ));
        let pod_dir = self.work.join("pods").join(pod_name);
        for (plan, image, secrets) in plans {
            let programs = self.programs(&plan, image.as_ref())?;
            let binds = ["resolv.conf", "hosts"]
                .iter()
                .map(|file| BindSpec {
                    source: network.etc_dir.join(file),
                    target: format!("/etc/{file}"),
                    read_only: true,
                })
                .collect();
            let sandbox = Sandbox {
                programs,
                binds,
                hostname: pod_name.to_owned(),
                isolate_network: false,
            };
            let spec = prepare(
                &pod_dir,
                &pod_dir.join(&plan.name),
                &plan,
                plan.argv.clone(),
                sandbox,
            )?;
            self.shared.log(format!(
                "  container {}: {}{}",
                plan.name,
                plan.shown_argv(&secrets),
                if plan.mounts.is_empty() {
                    String::new()
                } else {
                    format!(
                        "  [{}]",
                        plan.mounts
                            .iter()
                            .map(|m| format!("{} ← {}", m.mount_path, m.from))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            ));
            let process =
                self.spawn_container(pod, &network.netns, &pod_dir, &plan, &spec, grace)?;
            let target = Target {
                ip: network.ip,
                pid: Some(process),
                uid: plan.security.uid,
                gid: plan.security.gid,
                env: Arc::new(plan.env.clone()),
            };
            if let Some(last) = self.processes.last_mut() {
                last.pre_stop = plan.pre_stop.clone().map(|hook| (hook, target.clone()));
            }
            if plan.init {
                let name = plan.name.clone();
                self.shared
                    .wait_for(
                        &format!("init container {name} of {pod_name}"),
                        HEALTH_LIMIT,
                        |b| b.exits.contains_key(&(pod, name.clone())),
                    )
                    .await?;
                let exit = self.shared.board().exits[&(pod, name.clone())].clone();
                if exit.code != Some(0) {
                    bail!("init container {name} of {pod_name} failed: {}", exit.text);
                }
                continue;
            }
            self.start_kubelet(pod, &plan, target);
        }
        self.shared.board().pods[pod].starting = false;
        self.shared.notify();
        Ok(pod)
    }

    /// The binaries a container needs in its root: ours at the image's ENTRYPOINT path, or the
    /// host programs standing in for a foreign image's.
    fn programs(
        &self,
        plan: &ContainerPlan,
        image: Option<&ImageConfig>,
    ) -> anyhow::Result<Vec<Program>> {
        if let Some(image) = image {
            return Ok(vec![Program {
                host_path: self.binaries[&image.binary].clone(),
                target: image.binary_path_in_image().to_owned(),
            }]);
        }
        let table = stand_ins(&plan.image).with_context(|| {
            format!(
                "container {}: image {} is neither ours nor stood in",
                plan.name, plan.image
            )
        })?;
        let mut programs = Vec::new();
        for (name, candidates) in table {
            let host_path = candidates.iter().find_map(|c| which(c)).with_context(|| {
                format!(
                    "none of {candidates:?} is installed (the stand-in for {name} of {})",
                    plan.image
                )
            })?;
            programs.push(Program {
                host_path,
                target: format!("/usr/local/bin/{name}"),
            });
        }
        let shown: Vec<String> = programs
            .iter()
            .map(|p| format!("{} as {}", p.host_path.display(), p.target))
            .collect();
        println!(
            "    (image {} stood in by {})",
            plan.image,
            shown.join(", ")
        );
        Ok(programs)
    }

    fn spawn_container(
        &mut self,
        pod: usize,
        netns: &str,
        pod_dir: &Path,
        plan: &ContainerPlan,
        spec: &crate::container::LaunchSpec,
        grace: Duration,
    ) -> anyhow::Result<u32> {
        let spec_file = pod_dir.join(format!("{}.launch.json", plan.name));
        std::fs::write(&spec_file, serde_json::to_vec(spec)?)?;
        let log = pod_dir.join(format!("{}.log", plan.name));
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(std::env::current_exe()?)
            .arg("container")
            .arg(&spec_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches the rehearsal, which stops
            // the containers the kubelet's way.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting a container")?;
        let pid = child.id().context("the container exited at once")?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let shared = self.shared.clone();
        let name = plan.name.clone();
        let init = plan.init;
        self.tasks.push(tokio::spawn(async move {
            // Both streams into one log file, as `kubectl logs` shows them.
            let log_file = Mutex::new(std::fs::File::create(&log).ok());
            let copy = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
                let log_file = &log_file;
                async move {
                    let Some(stream) = stream else { return };
                    let mut lines = tokio::io::BufReader::new(stream).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        use std::io::Write;
                        if let Some(file) =
                            log_file.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                        {
                            let _ = writeln!(file, "{line}");
                        }
                    }
                }
            };
            let (status, (), ()) = tokio::join!(
                child.wait(),
                copy(stdout.map(|s| Box::new(s) as _)),
                copy(stderr.map(|s| Box::new(s) as _))
            );
            let (code, text) = match status {
                Ok(status) => (status.code(), status.to_string()),
                Err(error) => (None, error.to_string()),
            };
            let mut board = shared.board();
            let expected = board.stopping.contains(&pod);
            let pod_name = board.pods[pod].name.clone();
            if !(expected || init && code == Some(0)) {
                shared.log(format!(
                    "container {name} of pod {pod_name} exited ({text}): {}",
                    postgres::tail(&log, 6)
                ));
            }
            board.exits.insert(
                (pod, name),
                ExitRecord {
                    code,
                    text,
                    expected,
                },
            );
            drop(board);
            shared.notify();
        }));
        self.processes.push(ContainerProcess {
            pod,
            name: plan.name.clone(),
            pid,
            grace,
            log: pod_dir.join(format!("{}.log", plan.name)),
            pre_stop: None,
        });
        Ok(pid)
    }

    /// The prober: startup first; then liveness and readiness, each on its own period.
    fn start_kubelet(&mut self, pod: usize, plan: &ContainerPlan, target: Target) {
        let probes = [
            (ProbeKind::Startup, plan.probes.startup.clone()),
            (ProbeKind::Liveness, plan.probes.liveness.clone()),
            (ProbeKind::Readiness, plan.probes.readiness.clone()),
        ];
        {
            let mut board = self.shared.board();
            for (kind, probe) in &probes {
                if let Some(probe) = probe {
                    let tracker = Tracker::new(*kind, probe.clone());
                    self.shared.log(format!("  {}", tracker.describe()));
                    board
                        .trackers
                        .insert((pod, plan.name.clone(), *kind), tracker);
                }
            }
        }
        let shared = self.shared.clone();
        let container = plan.name.clone();
        self.tasks.push(tokio::spawn(async move {
            let [startup, liveness, readiness] = probes;
            if let (kind, Some(probe)) = startup
                && !probe_loop(&shared, pod, &container, kind, &probe, &target).await
            {
                return;
            }
            let run = |(kind, probe): (ProbeKind, Option<crate::workload::Probe>)| {
                let shared = shared.clone();
                let container = container.clone();
                let target = target.clone();
                async move {
                    if let Some(probe) = probe {
                        probe_loop(&shared, pod, &container, kind, &probe, &target).await;
                    }
                }
            };
            tokio::join!(run(liveness), run(readiness));
        }));
    }

    async fn run_job(
        &mut self,
        object: &Object,
        template: &PodTemplate<'_>,
        namespace: &str,
    ) -> anyhow::Result<()> {
        let attempts = object.value["spec"]["backoffLimit"]
            .as_u64()
            .unwrap_or(6)
            .min(2)
            + 1;
        for attempt in 1..=attempts {
            let pod = self
                .start_pod(
                    template,
                    namespace,
                    &format!("{}-{attempt}", object.name()),
                    false,
                )
                .await?;
            let containers = self.shared.board().pods[pod].containers.clone();
            let started = Instant::now();
            self.shared
                .wait_for(
                    &format!("Job {} to complete", object.name()),
                    HEALTH_LIMIT,
                    |board| {
                        containers
                            .iter()
                            .all(|c| board.exits.contains_key(&(pod, c.clone())))
                    },
                )
                .await?;
            let board = self.shared.board();
            let failed: Vec<String> = containers
                .iter()
                .filter_map(|c| {
                    let exit = &board.exits[&(pod, c.clone())];
                    (exit.code != Some(0)).then(|| format!("{c} {}", exit.text))
                })
                .collect();
            drop(board);
            if failed.is_empty() {
                self.shared.log(format!(
                    "Job {} complete in {:.1} s (attempt {attempt})",
                    object.name(),
                    started.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
            self.shared.log(format!(
                "Job {} attempt {attempt} failed: {}",
                object.name(),
                failed.join(", ")
            ));
        }
        self.fail(format!(
            "{}: the Job failed {attempts} times (backoffLimit)",
            object.described()
        ));
        Ok(())
    }

    /// Argo CD waits for every resource of the phase/wave to be healthy before going on.
    async fn wait_healthy(&mut self, app: &str) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut self.pending_health);
        for (pods, what) in pending {
            let result = self
                .shared
                .wait_for(&format!("{what}: all pods Ready"), HEALTH_LIMIT, |board| {
                    pods.iter().all(|p| board.pods[*p].ready)
                        || pods.iter().any(|p| {
                            board.pods[*p]
                                .containers
                                .iter()
                                .any(|c| board.exits.contains_key(&(*p, c.clone())))
                        })
                        || pods.iter().any(|p| board.restarting(*p))
                })
                .await;
            if let Some(restart) = {
                let board = self.shared.board();
                pods.iter().find(|p| board.restarting(**p)).and_then(|p| {
                    board
                        .restarts
                        .iter()
                        .find(|r| r.starts_with(&format!("pod {} ", board.pods[*p].name)))
                        .cloned()
                })
            } {
                bail!("{what}: {restart} (Application {app} never becomes healthy)");
            }
            let board = self.shared.board();
            let crashed: Vec<String> =
                pods.iter()
                    .flat_map(|p| {
                        board.pods[*p]
                            .containers
                            .iter()
                            .filter_map(|c| {
                                board.exits.get(&(*p, c.clone())).map(|e| {
                                    format!("{}/{c} exited {}", board.pods[*p].name, e.text)
                                })
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
            let unready: Vec<String> = pods
                .iter()
                .filter(|p| !board.pods[**p].ready)
                .map(|p| describe_unready(&board, *p))
                .collect();
            drop(board);
            if !crashed.is_empty() {
                bail!(
                    "{what} crashed (Application {app} never becomes healthy): {}",
                    crashed.join("; ")
                );
            }
            if let Err(error) = result {
                bail!("{error:#}: {}", unready.join("; "));
            }
            self.shared.log(format!("{what}: all pods Ready"));
        }
        Ok(())
    }

    /// The client pod drives the three protocols through the edge's Service name.
    async fn drive_traffic(&mut self, when: &str) {
        let Some(edge) = self.edge_address() else {
            self.fail(
                "no Service routes to an edge-gateway pod: nothing to drive traffic through".into(),
            );
            return;
        };
        println!("\n== traffic {when}: client pod in namespace {CLIENT_NAMESPACE} → {edge}");
        let result = async {
            let network = self.network.add_pod("rehearsal-client", CLIENT_NAMESPACE)?;
            let mut child = tokio::process::Command::new("ip")
                .args(["netns", "exec", &network.netns])
                .arg(std::env::current_exe()?)
                .args(["rehearsal-client", "--edge", &edge])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let mut lines =
                tokio::io::BufReader::new(child.stdout.take().context("client stdout")?).lines();
            let mut failed = Vec::new();
            let read = async {
                while let Ok(Some(line)) = lines.next_line().await {
                    println!("  client: {line}");
                    if line.starts_with("FAIL") {
                        failed.push(line);
                    }
                }
                child.wait().await
            };
            let status = tokio::time::timeout(Duration::from_secs(90), read)
                .await
                .context("the client took longer than 90 s")??;
            if !status.success() || !failed.is_empty() {
                bail!(
                    "traffic {when}: {}",
                    if failed.is_empty() {
                        format!("client exited {status}")
                    } else {
                        failed.join("; ")
                    }
                );
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            for tail in self.log_tails() {
                println!("  log {tail}");
            }
            self.fail(format!("{error:#}"));
        }
    }

    /// `<service>.<namespace>:<port>` of the Service whose pods run the edge-gateway image.
    fn edge_address(&self) -> Option<String> {
        let board = self.shared.board();
        let edge_pods: Vec<&PodState> = board
            .pods
            .iter()
            .filter(|p| p.binaries.iter().any(|b| b == EDGE_BINARY))
            .collect();
        board.services.iter().find_map(|service| {
            let selects = edge_pods.iter().any(|p| {
                p.namespace == service.namespace && selector_matches(&service.selector, &p.labels)
            });
            let port = service
                .ports
                .iter()
                .find(|p| p.name == "http")
                .or(service.ports.first())?;
            selects.then(|| format!("{}.{}:{}", service.name, service.namespace, port.port))
        })
    }

    /// PostgreSQL stops: pods whose readiness follows it leave the endpoints, but no liveness
    /// probe may fail (the kubelet would restart every pod during a failover). Then it comes
    /// back, everything must be Ready again and serve.
    async fn database_outage(&mut self) -> anyhow::Result<()> {
        let (db_pod, name) = {
            let (pod, server) = &self.postgres[0];
            (*pod, server.cluster.cluster.clone())
        };
        println!("\n== dependency outage: PostgreSQL {name} stopped");
        let restarts_before = self.shared.board().restarts.len();
        // Each liveness probe must run past its failure threshold while the database is down.
        let baseline: BTreeMap<(usize, String, ProbeKind), (u64, u32)> = self
            .shared
            .board()
            .trackers
            .iter()
            .filter(|(k, _)| k.2 == ProbeKind::Liveness)
            .map(|(k, t)| (k.clone(), (t.checks, t.probe.failure_threshold)))
            .collect();
        self.postgres[0].1.stop().await?;
        self.shared.board().pods[db_pod].fixed_ready = Some(false);
        self.shared.notify();
        let observed = self
            .shared
            .wait_for(
                "every liveness probe checked past its failure threshold during the outage",
                HEALTH_LIMIT,
                |board| {
                    baseline.iter().all(|(key, (checks, threshold))| {
                        board
                            .trackers
                            .get(key)
                            .is_none_or(|t| t.checks > checks + u64::from(*threshold))
                    })
                },
            )
            .await;
        let unready: Vec<String> = {
            let board = self.shared.board();
            board
                .pods
                .iter()
                .enumerate()
                .filter(|(i, p)| *i != db_pod && p.long_running && !p.ready)
                .map(|(_, p)| p.name.clone())
                .collect()
        };
        self.shared.log(format!(
            "during the outage: NotReady (left the endpoints): {}",
            if unready.is_empty() {
                "none".into()
            } else {
                unready.join(", ")
            }
        ));
        if unready.is_empty() {
            self.note("no pod's readiness followed the database: traffic kept reaching pods that cannot serve it".into());
        }
        observed?;
        let new_restarts: Vec<String> = self.shared.board().restarts[restarts_before..].to_vec();
        for restart in new_restarts {
            self.fail(format!(
                "while PostgreSQL was down: {restart} (liveness must not follow a dependency)"
            ));
        }
        println!("\n== dependency outage: PostgreSQL {name} started again");
        self.postgres[0].1.start().await?;
        self.shared.board().pods[db_pod].fixed_ready = Some(true);
        self.shared.notify();
        let all = self.shared.board().pods.len();
        let recovered = self
            .shared
            .wait_for("every pod Ready again", HEALTH_LIMIT, |board| {
                (0..all).all(|p| board.pods[p].ready || !board.pods[p].long_running)
            })
            .await;
        if let Err(error) = recovered {
            let board = self.shared.board();
            let unready: Vec<String> = (0..all)
                .filter(|p| !board.pods[*p].ready && board.pods[*p].long_running)
                .map(|p| describe_unready(&board, p))
                .collect();
            drop(board);
            self.fail(format!(
                "after PostgreSQL came back: {error:#}: {}",
                unready.join("; ")
            ));
            return Ok(());
        }
        self.shared.log("every pod Ready again");
        self.drive_traffic("after the outage").await;
        Ok(())
    }

    fn check_no_restarts(&mut self) {
        let board = self.shared.board();
        let restarts = board.restarts.clone();
        let crashed: Vec<String> = board
            .exits
            .iter()
            .filter(|((pod, name), exit)| {
                // Init containers exit by design; the main containers of a Deployment must not.
                !exit.expected
                    && board.pods[*pod].long_running
                    && board.pods[*pod].containers.contains(name)
            })
            .map(|((pod, name), exit)| {
                format!(
                    "pod {} container {name} exited ({})",
                    board.pods[*pod].name, exit.text
                )
            })
            .collect();
        drop(board);
        for restart in restarts {
            if !self.failures.iter().any(|f| f.contains(&restart)) {
                self.fail(restart);
            }
        }
        for crash in crashed {
            self.fail(crash);
        }
    }

    /// SIGTERM every container (the kubelet's stop), SIGKILL after the grace period, stop the
    /// databases; the namespaces and files go when `self` and the work dir drop.
    async fn shutdown(&mut self) {
        println!("\n== teardown");
        let running: Vec<(usize, String, u32, Duration)> = {
            let board = self.shared.board();
            self.processes
                .iter()
                .filter(|p| !board.exits.contains_key(&(p.pod, p.name.clone())))
                .map(|p| (p.pod, p.name.clone(), p.pid, p.grace))
                .collect()
        };
        // The kubelet's stop: the pod leaves the endpoints and its preStop hooks run, then
        // SIGTERM.
        {
            let mut board = self.shared.board();
            for (pod, ..) in &running {
                board.stopping.insert(*pod);
            }
        }
        self.shared.notify();
        let mut hooks = tokio::task::JoinSet::new();
        for process in self
            .processes
            .iter()
            .filter(|p| running.iter().any(|r| r.2 == p.pid))
        {
            let Some((hook, target)) = process.pre_stop.clone() else {
                continue;
            };
            let grace = process.grace;
            hooks.spawn(async move {
                match hook {
                    Hook::Sleep { seconds } => {
                        tokio::time::sleep(scaled(seconds).min(grace)).await;
                        Ok(())
                    }
                    Hook::Action(action) => probe::check(&action, &target, grace).await,
                }
            });
        }
        let hook_count = hooks.len();
        let hook_errors: Vec<String> = hooks
            .join_all()
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if hook_count > 0 {
            self.shared.log(format!(
                "preStop hooks: {hook_count} run (sleeps scaled by {}){}",
                probe::TIME_SCALE,
                if hook_errors.is_empty() {
                    String::new()
                } else {
                    format!(", failed: {}", hook_errors.join("; "))
                }
            ));
        }
        for (_, _, pid, _) in &running {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        }
        let grace = running.iter().map(|r| r.3).max().unwrap_or_default();
        let keys: Vec<(usize, String)> = running.iter().map(|(p, n, ..)| (*p, n.clone())).collect();
        let stopped = self
            .shared
            .wait_for("containers stopping after SIGTERM", grace, |board| {
                keys.iter().all(|k| board.exits.contains_key(k))
            })
            .await;
        let summary = {
            let board = self.shared.board();
            let mut summary = Vec::new();
            for (pod, name, pid, _) in &running {
                match board.exits.get(&(*pod, name.clone())) {
                    Some(exit) => {
                        summary.push(format!("{}/{name}: {}", board.pods[*pod].name, exit.text))
                    }
                    None => {
                        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
                        summary.push(format!(
                            "{}/{name}: killed after {grace:?}",
                            board.pods[*pod].name
                        ));
                    }
                }
            }
            summary
        };
        if !running.is_empty() {
            self.shared.log(format!("SIGTERM: {}", summary.join(", ")));
        }
        if stopped.is_err() {
            self.note(format!(
                "some containers did not stop within their grace period ({grace:?})"
            ));
        }
        for (_, server) in &mut self.postgres {
            let _ = server.stop().await;
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.network.teardown();
    }

    /// Copies every container's log to `dir/<pod>/<container>.log` (the work dir goes away).
    fn keep_logs(&self, dir: &Path) {
        let board = self.shared.board();
        for process in &self.processes {
            let pod_dir = dir.join(&board.pods[process.pod].name);
            let copied = std::fs::create_dir_all(&pod_dir).and_then(|()| {
                std::fs::copy(&process.log, pod_dir.join(format!("{}.log", process.name)))
            });
            if let Err(error) = copied {
                eprintln!("keeping {}: {error}", process.log.display());
            }
        }
        println!("container logs kept in {}", dir.display());
    }

    /// The last lines of every long-running container's log (for a failed traffic step).
    fn log_tails(&self) -> Vec<String> {
        let board = self.shared.board();
        self.processes
            .iter()
            .filter(|p| board.pods[p.pod].long_running)
            .map(|p| {
                format!(
                    "{}/{}: {}",
                    board.pods[p.pod].name,
                    p.name,
                    postgres::tail(&p.log, 3)
                )
            })
            .collect()
    }

    fn summary(&self, started: Instant) -> bool {
        println!(
            "\n== rehearsal of {}: {} in {:.1} s after the build ({} pods, {} notes)",
            self.env.name,
            if self.failures.is_empty() {
                "ok"
            } else {
                "FAILED"
            },
            started.elapsed().as_secs_f64(),
            self.shared.board().pods.len(),
            self.notes.len()
        );
        for failure in &self.failures {
            println!("FAIL {failure}");
        }
        self.failures.is_empty()
    }
}

/// What a pod of `template` references that does not exist yet.
fn missing_references(template: &PodTemplate<'_>, applied: &BTreeSet<ObjectId>) -> Vec<ObjectId> {
    references(template)
        .into_iter()
        .filter(|id| !applied.contains(id))
        .collect()
}

fn describe_unready(board: &Board, pod: usize) -> String {
    let state = &board.pods[pod];
    let reasons: Vec<String> = board
        .trackers
        .iter()
        .filter(|((p, _, _), t)| {
            *p == pod && t.state != Some(true) && t.kind != ProbeKind::Liveness
        })
        .map(|((_, c, _), t)| {
            format!(
                "{c} {} {} ({} checks, last error: {})",
                t.kind,
                probe::describe_action(&t.probe.action),
                t.checks,
                t.last_error.as_deref().unwrap_or("none")
            )
        })
        .collect();
    format!(
        "{} NotReady: {}",
        state.name,
        if reasons.is_empty() {
            "no probe result yet".into()
        } else {
            reasons.join(", ")
        }
    )
}

/// One probe's loop; returns whether it passed (for a startup probe: whether to go on).
async fn probe_loop(
    shared: &Shared,
    pod: usize,
    container: &str,
    kind: ProbeKind,
    probe: &crate::workload::Probe,
    target: &Target,
) -> bool {
    tokio::time::sleep(scaled(probe.initial_delay_seconds)).await;
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1));
    let key = (pod, container.to_owned(), kind);
    loop {
        if shared
            .board()
            .exits
            .contains_key(&(pod, container.to_owned()))
        {
            return false;
        }
        let result = probe::check(&probe.action, target, timeout).await;
        let (changed, pod_name, error) = {
            let mut board = shared.board();
            let pod_name = board.pods[pod].name.clone();
            let Some(tracker) = board.trackers.get_mut(&key) else {
                return false;
            };
            let changed = tracker.record(result);
            let error = tracker.last_error.clone().unwrap_or_default();
            if changed == Some(false)
                && matches!(kind, ProbeKind::Liveness | ProbeKind::Startup)
                && !board.stopping.contains(&pod)
            {
                board.restarts.push(format!(
                    "pod {pod_name} container {container}: {kind} failed {} times ({error}): \
                     the kubelet would restart the container",
                    probe.failure_threshold
                ));
            }
            (changed, pod_name, error)
        };
        // Every check counts (the outage step waits on check counts), not only flips.
        shared.notify();
        if let Some(state) = changed {
            shared.log(format!(
                "pod {pod_name} container {container} {kind} {}",
                if state {
                    "passing".to_owned()
                } else {
                    format!("FAILED: {error}")
                }
            ));
            if kind == ProbeKind::Startup {
                return state;
            }
        }
        tokio::time::sleep(scaled(probe.period_seconds)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::test_object as object;

    /// The seeded bad case of issue 11: a PreSync hook whose pod uses a Sync-phase
    /// ServiceAccount cannot start on the first sync; as a hook of the same phase it can.
    #[test]
    fn a_hook_using_a_sync_phase_object_is_caught_at_its_turn() {
        let job = |sa_annotations: &str| {
            vec![
                object(&format!(
                    "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: migrate, namespace: ns{sa_annotations}}}"
                )),
                object(
                    "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate, namespace: ns, annotations: {argocd.argoproj.io/hook: PreSync}}\n\
                     spec: {template: {spec: {serviceAccountName: migrate, containers: [{name: m, image: x}]}}}",
                ),
            ]
        };
        let missing_at_the_job = |objects: &[Object]| {
            let mut applied = BTreeSet::new();
            for object in sync_order(objects) {
                if let Some(template) = pod_template(object) {
                    return missing_references(&template, &applied);
                }
                applied.insert(object.id());
            }
            unreachable!("no Job")
        };
        let missing = missing_at_the_job(&job(""));
        assert_eq!(
            missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["ServiceAccount ns/migrate"]
        );
        let fixed = job(
            ", annotations: {argocd.argoproj.io/hook: PreSync, argocd.argoproj.io/sync-wave: \"-2\"}",
        );
        assert!(missing_at_the_job(&fixed).is_empty());
    }
}
