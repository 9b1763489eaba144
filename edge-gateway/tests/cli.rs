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

#[test]
fn sigterm_stops_the_gateway() {
    let port = free_port();
    let dir = std::env::temp_dir();
    let id = uuid::Uuid::new_v4();
    let path = write_config(&format!(
        "server:\n  version: 1\n  threads: 1\n  pid_file: {dir}/gw-{id}.pid\n  upgrade_sock: {dir}/gw-{id}.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\ngateway:\n  listen: 127.0.0.1:{port}\n  metrics_listen: \"\"\n",
        dir = dir.display()
    ));
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(up, "gateway did not start listening");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("gateway did not stop on SIGTERM");
}
