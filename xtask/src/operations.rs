//! `cargo xtask test-operations`: the shipped operations configs, run by the real programs
//! against a locally running stack:
//!
//! 1. synthetic probes: Debian's prometheus-blackbox-exporter with deploy/synthetic/blackbox.yml
//!    probes the real user-service + edge-gateway (the edge's TLS listener, with a certificate
//!    made here and trusted through SSL_CERT_FILE) at the path of each Probe in
//!    deploy/synthetic/probes.yaml: every module must report `probe_success 1`, and 0 against
//!    an endpoint it must refuse (so a module that accepts anything fails too);
//! 2. logs contract: the JSON log lines both binaries wrote meanwhile (including a request with a
//!    W3C trace that fails in the user-service) must carry every field the Fluent Bit pipeline,
//!    the index template and the Kibana data view name, with the expected types
//!    (scripts/lib/log_contract.py).
//!
//! Closes with `N passed, N failed` on stdout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize as _;
use serde_norway::Value;

use crate::process::{self, Children};
use crate::stack;

const BLACKBOX_CONFIG: &str = "deploy/synthetic/blackbox.yml";
const PROBES: &str = "deploy/synthetic/probes.yaml";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[derive(Debug, Default)]
struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    fn ok(&mut self, what: &str) {
        eprintln!("[test-operations] ok   {what}");
        self.passed += 1;
    }

    fn bad(&mut self, what: &str) {
        eprintln!("[test-operations] FAIL {what}");
        self.failed += 1;
    }

    fn check(&mut self, passed: bool, what: &str) {
        if passed {
            self.ok(what)
        } else {
            self.bad(what)
        }
    }
}

pub fn run(root: &Path) -> anyhow::Result<bool> {
    let mut tally = Tally::default();
    let result = checks(root, &mut tally);
    if let Err(error) = result {
        tally.bad(&format!("{error:#}"));
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(tally.failed == 0)
}

fn checks(root: &Path, tally: &mut Tally) -> anyhow::Result<()> {
    let log = |message: &str| eprintln!("[test-operations] {message}");
    let blackbox = process::ensure_program(
        "prometheus-blackbox-exporter",
        "prometheus-blackbox-exporter",
    )?;
    let python = crate::python::TESTS.ensure(root)?;
    if !root.join("web/dist/index.html").is_file() {
        log("building web/ (cargo xtask build-web)");
        crate::web::build(root)?;
    }
    log("building user-service and edge-gateway");
    let bin = stack::build_like_workspace_tests(root)?;

    let work_dir = crate::util::TempDir::new("operations")?;
    let work = work_dir.path();
    let file = |name: &str| -> anyhow::Result<Stdio> {
        Ok(std::fs::File::create(work.join(name))?.into())
    };

    // A CA made here, trusted by the blackbox exporter as its only root (SSL_CERT_FILE), and the
    // edge's certificate for 127.0.0.1 signed by it: the modules verify TLS exactly as they do
    // against the public certificate in the cluster.
    let pki = TestPki::generate()?;
    std::fs::write(work.join("ca.crt"), &pki.ca_pem)?;
    std::fs::write(work.join("tls.crt"), &pki.cert_pem)?;
    std::fs::write(work.join("tls.key"), &pki.key_pem)?;

    // Every server binds port 0 and its ports are read back: a port picked free here and
    // released could be taken by another process first.
    let children = Children::new();
    log("user-service on a free port (SQLite, JSON logs)");
    let (_, [grpc, metrics]) = stack::spawn_listening(
        &children,
        "user-service",
        stack::user_service(&bin, 0, 0, &work.join("users.db"), "json")
            .env("RUST_LOG", "info")
            .stdout(file("user-service.log")?)
            .stderr(file("user-service.stderr")?),
        &work.join("user-service.log"),
        &stack::USER_SERVICE_LISTENING,
    )?;
    stack::wait_http(
        &children,
        "user-service",
        &format!("http://{metrics}/metrics"),
        &work.join("user-service.stderr"),
    )?;

    let config = work.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "server:
  version: 1
  threads: 2
  pid_file: {work}/edge-gateway.pid
  upgrade_sock: {work}/edge-gateway.sock
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
gateway:
  listen: 127.0.0.1:0
  metrics_listen: 127.0.0.1:0
  upstreams:
    - {grpc}
  static_dir: {dist}
  health_check:
    interval_ms: 500
    timeout_ms: 500
  tls:
    listen: 127.0.0.1:0
    cert_path: {work}/tls.crt
    key_path: {work}/tls.key
",
            work = work.display(),
            dist = root.join("web/dist").display(),
        ),
    )?;
    let (_, [gateway, gateway_metrics, tls]) = stack::spawn_listening(
        &children,
        "edge-gateway",
        stack::gateway(&bin, &config)
            .env("RUST_LOG", "info,pingora=warn")
            .stdout(file("edge-gateway.log")?)
            .stderr(file("edge-gateway.stderr")?),
        &work.join("edge-gateway.log"),
        &stack::GATEWAY_TLS_LISTENING,
    )?;
    let (gateway_port, gateway_metrics, tls_port) =
        (gateway.port(), gateway_metrics.port(), tls.port());
    log(&format!(
        "edge-gateway on 127.0.0.1:{gateway_port}, TLS on 127.0.0.1:{tls_port}"
    ));
    stack::wait_http(
        &children,
        "edge-gateway",
        &format!("http://127.0.0.1:{gateway_port}/readyz"),
        &work.join("edge-gateway.stderr"),
    )?;

    // --- 1. synthetic probes
    log(&format!(
        "blackbox exporter on a free port with {BLACKBOX_CONFIG}"
    ));
    let check = Command::new(&blackbox)
        .current_dir(root)
        .arg(format!("--config.file={BLACKBOX_CONFIG}"))
        .arg("--config.check")
        .output()
        .context("running prometheus-blackbox-exporter --config.check")?;
    tally.check(
        check.status.success(),
        &format!(
            "blackbox exporter accepts {BLACKBOX_CONFIG}{}",
            if check.status.success() {
                String::new()
            } else {
                format!(": {}", String::from_utf8_lossy(&check.stderr).trim())
            }
        ),
    );
    let mut exporter = Command::new(&blackbox);
    exporter
        .current_dir(root)
        .arg(format!("--config.file={BLACKBOX_CONFIG}"))
        .arg("--web.listen-address=127.0.0.1:0")
        .env("SSL_CERT_FILE", work.join("ca.crt"))
        .env("SSL_CERT_DIR", "/nonexistent");
    process::log_to(&mut exporter, &work.join("blackbox.log"))?;
    let blackbox_pid = children.spawn("blackbox", &mut exporter)?;
    let ports = children.wait_listening("blackbox", blackbox_pid, 1, Duration::from_secs(30))?;
    let [blackbox_port] = ports[..] else {
        bail!("the blackbox exporter listens on {ports:?}: which one is its web port?");
    };
    stack::wait_http(
        &children,
        "blackbox",
        &format!("http://127.0.0.1:{blackbox_port}/-/healthy"),
        &work.join("blackbox.log"),
    )?;

    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).with_context(|| format!("reading {path}"))
    };
    let plan = probe_plan(
        &read(BLACKBOX_CONFIG)?,
        &read(PROBES)?,
        tls_port,
        gateway_metrics,
    )?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    for case in plan {
        let (module, target, succeeds) = match case {
            ProbeCase::Run {
                module,
                target,
                succeeds,
            } => (module, target, succeeds),
            ProbeCase::Unprobed(module) => {
                tally.bad(&format!(
                    "module {module} is in blackbox.yml but no Probe in {PROBES} uses it"
                ));
                continue;
            }
        };
        let body = client
            .get(format!("http://127.0.0.1:{blackbox_port}/probe"))
            .query(&[
                ("module", module.as_str()),
                ("target", target.as_str()),
                ("debug", "true"),
            ])
            .send()
            .and_then(|response| response.text())
            .unwrap_or_else(|error| format!("request failed: {error}"));
        let got = probe_success(&body);
        let want = if succeeds { "1" } else { "0" };
        if got == Some(want) {
            tally.ok(&format!(
                "module {module} on {target}: probe_success {want}"
            ));
        } else {
            tally.bad(&format!(
                "module {module} on {target}: probe_success {}, expected {want}",
                got.unwrap_or("missing")
            ));
            let lines: Vec<&str> = body
                .lines()
                .filter(|line| line.contains("level=error") || line.contains("level=info"))
                .collect();
            for line in &lines[lines.len().saturating_sub(8)..] {
                eprintln!("    {line}");
            }
        }
    }

    // --- 2. logs contract
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let edge = format!("http://127.0.0.1:{gateway_port}");
    let status_of = |path: &str| {
        client
            .get(format!("{edge}{path}"))
            .header("traceparent", &traceparent)
            .send()
            .map(|response| response.status().as_u16())
    };
    match status_of("/v1/users?limit=1") {
        Ok(status) if (200..300).contains(&status) => {}
        other => tally.bad(&format!("GET /v1/users through the edge: {other:?}")),
    }
    // A server error in the user-service: it logs inside its request span (trace_id, span_id).
    match status_of("/v1/test-error/500") {
        Ok(500) => {}
        other => tally.bad(&format!(
            "GET /v1/test-error/500 answered {other:?}, expected 500"
        )),
    }
    // Both binaries write a line per request once it is over: wait for them (bounded).
    let traced = |name: &str| {
        std::fs::read_to_string(work.join(name))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(TRACE_ID))
            .count()
    };
    let _ = process::wait_until("the requests' log lines", Duration::from_secs(10), || {
        Ok(traced("user-service.log") >= 1 && traced("edge-gateway.log") >= 2)
    });
    tally.check(
        traced("edge-gateway.log") >= 1,
        &format!("edge-gateway logged the request's trace id {TRACE_ID}"),
    );
    tally.check(
        traced("user-service.log") >= 1,
        &format!("user-service logged the failed call's trace id {TRACE_ID}"),
    );
    let contract = Command::new(&python)
        .current_dir(root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("scripts/lib/log_contract.py")
        .arg(format!(
            "edge-gateway={}",
            work.join("edge-gateway.log").display()
        ))
        .arg(format!(
            "user-service={}",
            work.join("user-service.log").display()
        ))
        .output()
        .context("running scripts/lib/log_contract.py")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&contract.stdout),
        String::from_utf8_lossy(&contract.stderr)
    );
    if contract.status.success() {
        tally.ok(text.lines().last().unwrap_or("logs contract"));
    } else {
        tally.bad("logs contract:");
        for line in text.lines() {
            eprintln!("    {line}");
        }
    }

    if tally.failed != 0 {
        for name in ["user-service.stderr", "edge-gateway.stderr", "blackbox.log"] {
            eprintln!("\n--- {name} (last 15 lines)");
            eprintln!("{}", process::tail(&work.join(name), 15));
        }
    }
    if std::env::var_os("KEEP_WORK_DIR").is_some() {
        let kept = work.with_extension("kept");
        let _ = std::fs::rename(work, &kept);
        eprintln!("[test-operations] kept {}", kept.display());
    }
    Ok(())
}

/// One blackbox probe to make, or a module no Probe uses.
#[derive(Debug, PartialEq, Eq)]
enum ProbeCase {
    Run {
        module: String,
        target: String,
        succeeds: bool,
    },
    Unprobed(String),
}

/// Each Probe's (module, target) with the public host replaced by the local TLS listener, and a
/// target each module must refuse: the REST module the web page, the web module the REST API,
/// the gRPC module (and any other) the edge's plain metrics port (no TLS, no gRPC).
fn probe_plan(
    blackbox_yaml: &str,
    probes_yaml: &str,
    tls_port: u16,
    metrics_port: u16,
) -> anyhow::Result<Vec<ProbeCase>> {
    let blackbox: Value = serde_norway::from_str(blackbox_yaml).context("blackbox.yml")?;
    let modules: BTreeSet<String> = blackbox
        .get("modules")
        .and_then(Value::as_mapping)
        .map(|modules| {
            modules
                .keys()
                .filter_map(|key| key.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let local_host = format!("127.0.0.1:{tls_port}");
    let mut local: BTreeMap<String, String> = BTreeMap::new();
    for document in serde_norway::Deserializer::from_str(probes_yaml) {
        let probe = Value::deserialize(document).context("probes.yaml")?;
        if probe.get("kind").and_then(Value::as_str) != Some("Probe") {
            continue;
        }
        let spec = &probe["spec"];
        let module = spec["module"]
            .as_str()
            .context("a Probe without spec.module")?;
        let targets = spec["targets"]["staticConfig"]["static"]
            .as_sequence()
            .context("a Probe without spec.targets.staticConfig.static")?;
        for target in targets.iter().filter_map(Value::as_str) {
            local.insert(module.to_owned(), with_host(target, &local_host));
        }
    }
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut plan: Vec<ProbeCase> = modules
        .iter()
        .filter(|module| !local.contains_key(*module))
        .map(|module| ProbeCase::Unprobed(module.clone()))
        .collect();
    for (module, target) in &local {
        let wrong = match module.as_str() {
            "http_rest" => local.get("http_web"),
            "http_web" => local.get("http_rest"),
            _ => None,
        };
        plan.push(ProbeCase::Run {
            module: module.clone(),
            target: target.clone(),
            succeeds: true,
        });
        plan.push(ProbeCase::Run {
            module: module.clone(),
            target: wrong.cloned().unwrap_or_else(|| metrics.clone()),
            succeeds: false,
        });
    }
    Ok(plan)
}

/// `target` with its host (and port) replaced by `host`: a URL keeps scheme, path and query; a
/// bare `host:port` becomes `host`.
fn with_host(target: &str, host: &str) -> String {
    match target.split_once("://") {
        Some((scheme, rest)) => {
            let tail = rest.find(['/', '?', '#']).map_or("", |at| &rest[at..]);
            format!("{scheme}://{host}{tail}")
        }
        None => host.to_owned(),
    }
}

/// The value of the last `probe_success` sample in a blackbox `/probe` answer.
fn probe_success(body: &str) -> Option<&str> {
    body.lines()
        .rev()
        .filter_map(|line| line.strip_prefix("probe_success "))
        .map(str::trim)
        .find(|value| matches!(*value, "0" | "1"))
}

/// A CA and a certificate for 127.0.0.1 it signed.
struct TestPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TestPki {
    fn generate() -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "meshgate-test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "meshgate-test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_replaced_keeping_path_and_query() {
        assert_eq!(
            with_host(
                "https://meshgate.example.com/v1/users?limit=1",
                "127.0.0.1:9"
            ),
            "https://127.0.0.1:9/v1/users?limit=1"
        );
        assert_eq!(
            with_host("https://meshgate.example.com", "127.0.0.1:9"),
            "https://127.0.0.1:9"
        );
        assert_eq!(
            with_host("meshgate.example.com:443", "127.0.0.1:9"),
            "127.0.0.1:9"
        );
    }

    #[test]
    fn the_plan_probes_each_module_where_it_must_pass_and_where_it_must_fail() {
        let blackbox =
            "modules:\n  http_rest: {}\n  http_web: {}\n  grpc_health: {}\n  spare: {}\n";
        let probe = |module: &str, target: &str| {
            format!(
                "kind: Probe\nspec:\n  module: {module}\n  targets:\n    staticConfig:\n      \
                 static: [\"{target}\"]\n"
            )
        };
        let probes = [
            probe("http_rest", "https://x.example/v1/users?limit=1"),
            probe("http_web", "https://x.example/"),
            probe("grpc_health", "x.example:443"),
            "kind: Service\n".to_owned(),
        ]
        .join("---\n");
        let plan = probe_plan(blackbox, &probes, 1, 2).unwrap();
        let run = |module: &str, target: &str, succeeds| ProbeCase::Run {
            module: module.to_owned(),
            target: target.to_owned(),
            succeeds,
        };
        assert_eq!(
            plan,
            vec![
                ProbeCase::Unprobed("spare".to_owned()),
                run("grpc_health", "127.0.0.1:1", true),
                run("grpc_health", "127.0.0.1:2", false),
                run("http_rest", "https://127.0.0.1:1/v1/users?limit=1", true),
                run("http_rest", "https://127.0.0.1:1/", false),
                run("http_web", "https://127.0.0.1:1/", true),
                run("http_web", "https://127.0.0.1:1/v1/users?limit=1", false),
            ]
        );
    }

    #[test]
    fn probe_success_reads_the_last_sample() {
        let body = "logs\nprobe_success 0\nprobe_duration_seconds 1\nprobe_success 1\n";
        assert_eq!(probe_success(body), Some("1"));
        assert_eq!(probe_success("nothing"), None);
    }
}
