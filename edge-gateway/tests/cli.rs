//! The binary: config errors exit 2 naming the key; SIGTERM shuts down cleanly.

use std::{process::Command, time::Duration};

use meshgate_test_support::process::ChildLog;

const BIN: &str = env!("CARGO_BIN_EXE_edge-gateway");

fn write_config(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("edge-gateway-cli-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Both the check (`--test`) and a real start refuse `config` before binding anything: exit
/// 2 and one line naming `key`.
fn assert_refused_naming(config: &std::path::Path, key: &str) {
    for test_only in [true, false] {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(config);
        if test_only {
            command.arg("--test");
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "one line expected, got: {stderr}"
        );
    }
}

#[test]
fn bad_resilience_keys_exit_2_naming_the_key_also_under_test() {
    let cases = [
        (
            "gateway:\n  connections: {max: 0}\n",
            "gateway.connections.max",
        ),
        (
            "gateway:\n  connections: {header_read_timeout_ms: 0}\n",
            "gateway.connections.header_read_timeout_ms",
        ),
        (
            "gateway:\n  load_balancing: {panic_threshold_percent: 120}\n",
            "gateway.load_balancing.panic_threshold_percent",
        ),
        (
            "gateway:\n  outlier_detection: {base_ejection_ms: 0}\n",
            "gateway.outlier_detection.base_ejection_ms",
        ),
        (
            "gateway:\n  shutdown: {drain_delay_ms: 999999}\n",
            "gateway.shutdown.drain_delay_ms",
        ),
        (
            "gateway:\n  dns: {min_refresh_ms: 9000, max_refresh_ms: 10}\n",
            "gateway.dns.max_refresh_ms",
        ),
        (
            "gateway:\n  upstreams: [\"user-service\"]\n",
            "gateway.upstreams[0]",
        ),
        (
            "gateway:\n  retry: {budget_window_secs: 0}\n",
            "gateway.retry.budget_window_secs",
        ),
    ];
    for (text, key) in cases {
        assert_refused_naming(&write_config(text), key);
    }
    // Upstream names with explicit nameservers validate; a bad nameserver flag is named.
    let names = write_config(
        "gateway:\n  upstreams: [\"user-service.meshgate.svc.cluster.local:50051\"]\n  dns: {nameservers: [\"127.0.0.1:5353\"], search: [meshgate.svc.cluster.local], ndots: 5}\n",
    );
    let output = Command::new(BIN)
        .args(["--test", "--config"])
        .arg(&names)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(BIN)
        .args(["--test", "--config"])
        .arg(&names)
        .env("GATEWAY_DNS_NAMESERVERS", "dns.example:53")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("gateway.dns.nameservers[0]"));
}

/// Runs the gateway with config file `path`; it must exit with `code`, naming `named` on stderr.
fn assert_exits_naming(path: &std::path::Path, code: i32, named: &str) {
    let output = Command::new(BIN)
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(code));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(named), "{stderr}");
}

/// Every address is bound before any worker starts: one that cannot be listened on (here an
/// address of no local interface, TEST-NET-1) ends the start at once with exit 1 naming it,
/// instead of a gateway running without a listener.
#[test]
fn an_address_that_cannot_be_listened_on_exits_1_naming_it() {
    let path = write_config(
        "server:\n  version: 1\n  threads: 2\ngateway:\n  listen: 192.0.2.1:8080\n  metrics_listen: \"\"\n",
    );
    assert_exits_naming(&path, 1, "cannot listen on 192.0.2.1:8080");
}

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let path = write_config("gateway:\n  cors:\n    allowed_origins: [\"ftp://x\"]\n");
    assert_exits_naming(&path, 2, "gateway.cors.allowed_origins[0]");

    let path = write_config("gateway:\n  listn: 0.0.0.0:1\n");
    assert_exits_naming(&path, 2, "listn");

    let output = Command::new(BIN)
        .env("GATEWAY_UPSTREAMS", "not-an-address")
        .arg("--test")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("gateway.upstreams[0]"));
}

/// A self-signed certificate and its key, written next to each other; returns (cert, key).
fn self_signed_files(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.join(format!("{name}-cert.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn unusable_tls_files_exit_2_naming_gateway_tls() {
    let dir = std::env::temp_dir().join(format!("edge-gateway-cli-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed_files(&dir, "good");
    let (_, other_key) = self_signed_files(&dir, "other");
    let missing = dir.join("missing.pem");
    let tls_config = |cert: &std::path::Path, key: &std::path::Path| {
        write_config(&format!(
            // Port 0 (on two addresses: the config refuses one for both): neither the check nor a
            // refused start binds anything.
            "gateway:\n  listen: 127.0.0.1:0\n  metrics_listen: \"\"\n  tls:\n    listen: 127.0.0.2:0\n    cert_path: {}\n    key_path: {}\n",
            cert.display(),
            key.display()
        ))
    };

    let output = Command::new(BIN)
        .arg("--config")
        .arg(tls_config(&cert, &key))
        .arg("--test")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let cases = [
        (missing.clone(), key.clone(), "gateway.tls.cert_path"),
        (cert.clone(), missing.clone(), "gateway.tls.key_path"),
        (cert.clone(), other_key.clone(), "gateway.tls"),
    ];
    for (cert_path, key_path, named) in cases {
        assert_refused_naming(&tls_config(&cert_path, &key_path), named);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn shipped_config_validates() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.yaml");
    let output = Command::new(BIN)
        .args(["--config", config, "--test"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A server's config file: on `port` (0: any free one, reported in its "listening" line) with
/// `workers` proxy workers, its pid file and upgrade socket named by `id`.
fn server_config(id: uuid::Uuid, port: u16, workers: usize) -> std::path::PathBuf {
    let dir = std::env::temp_dir();
    write_config(&format!(
        "server:\n  version: 1\n  threads: {workers}\n  pid_file: {dir}/gw-{id}.pid\n  upgrade_sock: {sock}\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\ngateway:\n  listen: 127.0.0.1:{port}\n  metrics_listen: \"\"\n  shutdown: {{drain_delay_ms: 200}}\n",
        dir = dir.display(),
        sock = upgrade_sock(id).display(),
    ))
}

/// Where the `--upgrade` process of server `id` listens for the old one's sockets.
fn upgrade_sock(id: uuid::Uuid) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gw-{id}.sock"))
}

/// Starts the gateway with `config` (on port 0, logging JSON at info on stdout) and waits for
/// the port it bound.
fn start_on_any_port(config: &std::path::Path) -> (std::process::Child, ChildLog, u16) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = ChildLog::collect(&mut child);
    let (addr, _) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(log.listening());
    (child, log, addr.port())
}

/// `GET /healthz` over a raw HTTP/1.1 connection; the status line, if any.
fn healthz(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.lines().next().map(str::to_owned)
}

fn wait_healthy(port: u16) {
    for _ in 0..200 {
        if healthz(port).is_some_and(|line| line.contains("200")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("gateway on port {port} never answered /healthz");
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("gateway did not exit");
}

#[test]
fn sigterm_stops_the_gateway_and_requests_are_access_logged() {
    let (mut child, log, port) = start_on_any_port(&server_config(uuid::Uuid::new_v4(), 0, 1));
    wait_healthy(port);
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).success());
    // The log reader sees the last lines shortly after the exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let access = loop {
        let found = log
            .lines()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|entry| entry["target"] == "access" && entry["fields"]["status"] == 200);
        if let Some(access) = found {
            break access;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no JSON access log line in:\n{}",
            log.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(25));
    };
    let fields = &access["fields"];
    assert_eq!(fields["trace_id"].as_str().unwrap().len(), 32, "{access}");
    assert_eq!(fields["route"], "/healthz");
    assert_eq!(fields["protocol"], "admin");
    assert!(fields["latency_ms"].is_number());
    assert!(fields.get("grpc_method").is_some());
}

#[test]
fn graceful_upgrade_hands_the_listener_over() {
    // The old process binds any port; the new one is configured with the port it got, the
    // address the old one hands its socket over under. Its workers share that one socket, as
    // many as they are (two in the old process, three in the new).
    let id = uuid::Uuid::new_v4();
    let (mut old, _log, port) = start_on_any_port(&server_config(id, 0, 2));
    wait_healthy(port);
    let upgrade_sock = upgrade_sock(id);
    let mut new = Command::new(BIN)
        .arg("--config")
        .arg(server_config(id, port, 3))
        .arg("--upgrade")
        .spawn()
        .unwrap();
    // The new process waits on the upgrade socket; SIGQUIT makes the old one send its listeners.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !upgrade_sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the new process never listened on {upgrade_sock:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&old, "QUIT");
    assert!(wait_exit(&mut old).success());
    wait_healthy(port);
    // Connection after connection is accepted (by whichever worker) and served.
    for _ in 0..12 {
        assert!(healthz(port).is_some(), "a new connection was served");
    }
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process keeps serving"
    );
    signal(&new, "TERM");
    assert!(wait_exit(&mut new).success());
}
