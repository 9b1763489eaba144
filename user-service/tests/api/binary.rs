//! The `user-service` binary: config errors exit 2 with one line, SIGTERM drains and exits 0,
//! `migrate` applies migrations.

use std::time::Duration;

use meshgate_proto::user::user_service_client::UserServiceClient;
use meshgate_proto::user::{CreateUserRequest, TestErrorRequest};
use meshgate_test_support::otlp::start_collector;
use tokio::process::Command;

use crate::process::ServiceProcess;

fn command(dir: &std::path::Path) -> Command {
    let sqlite_path = dir.join("users.db");
    crate::process::command(&[
        ("SQLITE_PATH", sqlite_path.to_str().expect("a UTF-8 path")),
        ("DRAIN_DELAY_MS", "200"),
    ])
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
    for (env, bad) in [
        ("READINESS_FAILURE_THRESHOLD", "0"),
        ("DRAIN_DELAY_MS", "-1"),
        ("DRAIN_DELAY_MS", "600001"),
        ("SHUTDOWN_GRACE_SECS", "forever"),
        ("CACHE_BREAKER_FAILURES", "0"),
        ("CACHE_BREAKER_COOLDOWN_MS", "5"),
    ] {
        let line = config_error(&[], &[(env, bad)]).await;
        assert!(line.contains(env), "{env}={bad}: {line}");
    }
    let line = config_error(&["--drain-delay-ms", "soon"], &[]).await;
    assert!(
        line.contains("--drain-delay-ms") && line.contains("DRAIN_DELAY_MS"),
        "{line}"
    );
}

/// `--test` exits 0 with one line and touches nothing: the URLs name hosts that do not exist
/// (a start would fail to connect to them), and the SQLite file is not created.
#[tokio::test]
async fn test_flag_validates_without_connecting_or_creating_anything() {
    let dir = temp_dir();
    for args in [
        &["--test"][..],
        &["migrate", "--test"],
        &["--test", "serve"],
    ] {
        let output = command(&dir)
            .args(args)
            .env(
                "DATABASE_URL",
                "postgresql://users:secret@users-db-rw.meshgate.invalid:5432/users",
            )
            .env(
                "REDIS_URL",
                "redis://:secret@valkey.meshgate.invalid:6379/0",
            )
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
        assert!(
            stdout.starts_with("config ok") && stdout.contains("postgres"),
            "{stdout}"
        );
        assert!(!stdout.contains("secret"), "{stdout}");
    }
    let output = command(&dir).arg("--test").output().await.unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("database sqlite"));
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "--test left files behind"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn test_flag_rejects_bad_settings_and_unusable_files_naming_them() {
    let line = config_error(&["--test"], &[("REDIS_URL", "http://cache")]).await;
    assert!(line.contains("REDIS_URL"), "{line}");
    let line = config_error(&["migrate", "--test"], &[("GRPC_ADDR", "nope")]).await;
    assert!(line.contains("GRPC_ADDR"), "{line}");
    // The SQLite file's directory is a file: a start could not create the database.
    let dir = temp_dir();
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let sqlite = blocker.join("users.db");
    let line = config_error(&["--test"], &[("SQLITE_PATH", sqlite.to_str().unwrap())]).await;
    assert!(line.contains("SQLITE_PATH"), "{line}");
    let _ = std::fs::remove_dir_all(dir);
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
    let mut command = command(&dir);
    command.env("MIGRATE_ON_START", "true");
    let service = ServiceProcess::spawn(command).await;
    let grpc_addr = service.grpc_addr;

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

    // A call that logs (UNAVAILABLE is logged at WARN) inside a continued W3C trace.
    let mut request = tonic::Request::new(TestErrorRequest {
        status_code: "503".into(),
    });
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    client.test_error(request).await.unwrap_err();

    service.signal("TERM").await;
    let (status, log) = service.exited().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        log.contains("SIGTERM received") && log.contains("shutdown complete"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A log reader that stops draining stdout (the pipe fills and stays full) must cost log lines,
/// not the threads answering RPCs and probes: every call still answers in time, and the lines
/// that did not fit are counted.
#[tokio::test]
async fn a_stdout_nobody_reads_costs_log_lines_not_liveness() {
    let dir = temp_dir();
    let mut command = command(&dir);
    command
        .env("MIGRATE_ON_START", "true")
        .env("LOG_QUEUE_LINES", "16");
    let service = ServiceProcess::spawn(command).await;
    service.pause_reading_stdout();
    let mut client = UserServiceClient::connect(format!("http://{}", service.grpc_addr))
        .await
        .unwrap();

    // Each UNAVAILABLE answer logs a WARN line of a few hundred bytes: 2000 of them are many
    // times what a 64 KiB pipe and a 16-line queue hold.
    const CALLS: usize = 2000;
    const { assert!(CALLS * 200 > 4 * 65_536) };
    for call in 0..CALLS {
        let request = TestErrorRequest {
            status_code: "503".into(),
        };
        let status = tokio::time::timeout(Duration::from_secs(5), client.test_error(request))
            .await
            .unwrap_or_else(|_| panic!("call {call} got no answer while stdout was full"))
            .expect_err("TestError 503 fails");
        assert_eq!(status.code(), tonic::Code::Unavailable, "call {call}");
    }
    let metrics = tokio::time::timeout(
        Duration::from_secs(5),
        crate::helpers::scrape(service.metrics_addr),
    )
    .await
    .expect("/metrics answers while stdout is full");
    let dropped: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("user_service_log_lines_dropped_total "))
        .expect("the drop counter is exported")
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0, "no log line was dropped:\n{metrics}");

    // Reading again: the process logs and exits as usual.
    service.signal("TERM").await;
    let (status, log) = service.exited().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(log.contains("shutdown complete"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_in_the_callers_trace() {
    let (collector_addr, mut received) = start_collector().await;

    let dir = temp_dir();
    let mut command = command(&dir);
    command
        .env("MIGRATE_ON_START", "true")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .env("OTEL_SERVICE_NAME", "user-service-otlp-test");
    let service = ServiceProcess::spawn(command).await;
    let grpc_addr = service.grpc_addr;

    let mut client = UserServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(CreateUserRequest {
        name: "Traced".into(),
        email: "traced@example.com".into(),
        age: 30,
    });
    request.metadata_mut().insert(
        "x-b3-traceid",
        "80f198ee56343ba864fe8b2a57d3eff7".parse().unwrap(),
    );
    request
        .metadata_mut()
        .insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-b3-sampled", "1".parse().unwrap());
    client.create_user(request).await.unwrap();

    // SIGTERM flushes the batch exporter on the way out.
    service.signal("TERM").await;
    let (status, _) = service.exited().await;
    assert!(status.success());

    let mut spans = Vec::new();
    while let Ok(Some(export)) = tokio::time::timeout(Duration::from_secs(5), received.recv()).await
    {
        for resource in export.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    let trace_id = [
        0x80, 0xf1, 0x98, 0xee, 0x56, 0x34, 0x3b, 0xa8, 0x64, 0xfe, 0x8b, 0x2a, 0x57, 0xd3, 0xef,
        0xf7,
    ];
    let names: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .map(|s| s.name.clone())
        .collect();
    assert!(
        names.contains(&"CreateUser".to_owned()),
        "spans in the B3 trace: {names:?}"
    );
    assert!(
        names.contains(&"db.query".to_owned()),
        "spans in the B3 trace: {names:?}"
    );
    assert!(
        names.contains(&"cache".to_owned()),
        "spans in the B3 trace: {names:?}"
    );
    let rpc = spans.iter().find(|s| s.name == "CreateUser").unwrap();
    assert_eq!(
        rpc.parent_span_id,
        [0xe4, 0x57, 0xb5, 0xa2, 0xe4, 0xd8, 0x6b, 0xd1]
    );
    let _ = std::fs::remove_dir_all(dir);
}
