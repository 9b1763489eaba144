//! The `user-service` binary: config errors exit 2 with one line, SIGTERM drains and exits 0,
//! `migrate` applies migrations.

use std::process::Stdio;
use std::time::Duration;

use meshgate_proto::user::CreateUserRequest;
use meshgate_proto::user::user_service_client::UserServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_user-service");

fn command(dir: &std::path::Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("SQLITE_PATH", dir.join("users.db"))
        .env("GRPC_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("user-service-bin-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn config_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = temp_dir();
    let mut command = command(&dir);
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    let _ = std::fs::remove_dir_all(dir);
    stderr
}

#[tokio::test]
async fn bad_config_exits_2_with_one_line_naming_the_setting() {
    let line = config_error(&["--grpc-addr", "not-an-address"], &[]).await;
    assert!(
        line.contains("--grpc-addr") && line.contains("GRPC_ADDR"),
        "{line}"
    );
    let line = config_error(&[], &[("METRICS_ADDR", "9090")]).await;
    assert!(line.contains("METRICS_ADDR"), "{line}");
    let line = config_error(&[], &[("CACHE_TTL_SECS", "0")]).await;
    assert!(line.contains("CACHE_TTL_SECS"), "{line}");
    let line = config_error(&[], &[("DATABASE_URL", "mysql://root:hunter2@db/users")]).await;
    assert!(
        line.contains("DATABASE_URL") && !line.contains("hunter2"),
        "{line}"
    );
    let line = config_error(&[], &[("REDIS_URL", "http://cache")]).await;
    assert!(line.contains("REDIS_URL"), "{line}");
    let line = config_error(&[], &[("LOG_FORMAT", "xml")]).await;
    assert!(line.contains("LOG_FORMAT"), "{line}");
}

#[tokio::test]
async fn migrate_subcommand_applies_the_sqlite_migrations() {
    let dir = temp_dir();
    let output = command(&dir).arg("migrate").output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("migrations applied"));
    assert!(dir.join("users.db").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = temp_dir();
    let mut child = command(&dir)
        .env("MIGRATE_ON_START", "true")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let grpc_addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if log["fields"]["message"] == "user-service listening" {
                return log["fields"]["grpc_addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("the service exited before listening");
    })
    .await
    .expect("the service starts within 30 s");

    let mut client = UserServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    client
        .create_user(CreateUserRequest {
            name: "Bin".into(),
            email: "bin@example.com".into(),
            age: 30,
        })
        .await
        .unwrap();

    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    let rest = rest.join("\n");
    assert!(
        rest.contains("SIGTERM received") && rest.contains("shutdown complete"),
        "{rest}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
