//! The binary: config errors exit 2 naming the key; SIGTERM shuts down cleanly.

use std::{process::Command, time::Duration};

const BIN: &str = env!("CARGO_BIN_EXE_edge-gateway");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("edge-gateway-cli-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let path = write_config("gateway:\n  cors:\n    allowed_origins: [\"ftp://x\"]\n");
    let output = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("gateway.cors.allowed_origins[0]"),
        "{stderr}"
    );

    let path = write_config("gateway:\n  listn: 0.0.0.0:1\n");
    let output = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("listn"));

    let output = Command::new(BIN)
        .env("GATEWAY_UPSTREAMS", "not-an-address")
        .arg("--test")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("gateway.upstreams[0]"));
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

fn server_config(port: u16) -> std::path::PathBuf {
    let dir = std::env::temp_dir();
    let id = uuid::Uuid::new_v4();
    write_config(&format!(
        "server:\n  version: 1\n  threads: 1\n  pid_file: {dir}/gw-{id}.pid\n  upgrade_sock: {dir}/gw-{id}.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\ngateway:\n  listen: 127.0.0.1:{port}\n  metrics_listen: \"\"\n",
        dir = dir.display()
    ))
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
    let port = free_port();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(server_config(port))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(port);
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let access: serde_json::Value = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["target"] == "access" && entry["fields"]["status"] == 200)
        .unwrap_or_else(|| panic!("no JSON access log line in:\n{stdout}"));
    let fields = &access["fields"];
    assert_eq!(fields["trace_id"].as_str().unwrap().len(), 32, "{access}");
    assert_eq!(fields["route"], "/healthz");
    assert_eq!(fields["protocol"], "admin");
    assert!(fields["latency_ms"].is_number());
    assert!(fields.get("grpc_method").is_some());
}

#[test]
fn graceful_upgrade_hands_the_listener_over() {
    let port = free_port();
    let config = server_config(port);
    let mut old = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .spawn()
        .unwrap();
    wait_healthy(port);
    let mut new = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--upgrade")
        .spawn()
        .unwrap();
    // The new process waits on the upgrade socket; SIGQUIT makes the old one send its listeners.
    std::thread::sleep(Duration::from_millis(300));
    signal(&old, "QUIT");
    assert!(wait_exit(&mut old).success());
    wait_healthy(port);
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process keeps serving"
    );
    signal(&new, "TERM");
    assert!(wait_exit(&mut new).success());
}
