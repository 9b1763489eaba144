//! Faults under concurrent load through the gateway, with counts: one of two real user-service
//! processes SIGKILLed (failures bounded by the requests in flight at the kill), and the
//! gateway process SIGTERMed (readiness 503 first, no in-flight request lost). The DNS record
//! set change under load is `discovery`.
//!
//! The user-service runs in its own process: this test binary started again on the ignored
//! test `faults::user_service_process`, which serves on embedded SQLite when
//! `EDGE_FAULT_USER_SERVICE_DB` is set and prints its address.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use meshgate_proto::user;
use serde_json::{Value, json};

use crate::helpers::*;

const CHILD_DB: &str = "EDGE_FAULT_USER_SERVICE_DB";

/// The user-service, when this binary is started as a fault-test child process.
#[test]
#[ignore = "run as a child process by the fault tests"]
fn user_service_process() {
    let Some(db) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let config = meshgate_test_support::user_service::config(db.into());
        let app = user_service::Application::build(config).await.unwrap();
        println!("LISTENING {}", app.grpc_addr());
        let _ = app.run_until_stopped(std::future::pending::<()>()).await;
    });
}

/// A user-service child process; killed when dropped.
struct ServiceProcess {
    addr: SocketAddr,
    child: Child,
}

impl ServiceProcess {
    fn start(db: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "faults::user_service_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the user-service child printed its address")
                .unwrap();
            // libtest prints the test's name first, on the same line.
            if let Some((_, addr)) = line.split_once("LISTENING ") {
                break addr.trim().parse().unwrap();
            }
        };
        // Keep draining its stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { addr, child }
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_user_service_fails_at_most_the_requests_in_flight() {
    let db = std::env::temp_dir().join(format!("edge-fault-{}.db", uuid::Uuid::new_v4()));
    let mut victim = ServiceProcess::start(&db);
    let survivor = ServiceProcess::start(&db);
    wait_grpc_serving(victim.addr).await;
    wait_grpc_serving(survivor.addr).await;
    let gw = spawn_gateway(&[victim.addr, survivor.addr]).await;
    let created: Value = h2()
        .post(gw.url("/v1/users"))
        .json(&json!({"name": "Kim", "email": "kim@example.com", "age": 40}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();

    // REST GETs (retryable) and native gRPC GetUser calls (passed through, so a call already
    // sent to the killed instance cannot be retried), concurrently.
    let rest = Load::start(h2(), gw.url(&format!("/v1/users/{id}")), 8);
    let grpc_client =
        user::user_service_client::UserServiceClient::connect(format!("http://{}", gw.addr))
            .await
            .unwrap();
    let grpc = Load::run(
        8,
        Arc::new(move || {
            let (mut client, id) = (grpc_client.clone(), id.clone());
            Box::pin(async move {
                client
                    .get_user(user::GetUserRequest { id })
                    .await
                    .map(|_| None)
                    .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
            })
        }),
    );
    rest.run_for(300).await;
    grpc.run_for(300).await;

    let before = rest.in_flight() + grpc.in_flight();
    victim.sigkill();
    let after = rest.in_flight() + grpc.in_flight();
    let in_flight_at_kill = before.max(after);
    rest.run_for(1_000).await;
    grpc.run_for(1_000).await;

    let (rest, grpc) = (rest.finish().await, grpc.finish().await);
    let total = rest.ok + rest.failed.len() + grpc.ok + grpc.failed.len();
    let failed = rest.failed.len() + grpc.failed.len();
    eprintln!(
        "FAULT sigkill: requests={total} failed={failed} (rest {}, grpc {}) in_flight_at_kill={in_flight_at_kill}",
        rest.failed.len(),
        grpc.failed.len()
    );
    assert!(
        failed <= in_flight_at_kill,
        "{failed} failed > {in_flight_at_kill} in flight at the kill: rest {:?} grpc {:?}",
        rest.failed,
        grpc.failed
    );
    drop(survivor);
    let _ = std::fs::remove_file(db);
}

/// A raw `GET` on a new connection: the status, or why there is none.
async fn get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    match client.get(format!("http://{addr}{path}")).send().await {
        Ok(response) => Ok(response.status().as_u16()),
        Err(e) if e.is_connect() => Err("connect".to_owned()),
        Err(e) => Err(format!("transport: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_gateway_drains_with_readiness_first_and_loses_no_request() {
    let backend = Backend::start("drain").await;
    let config = binary_config(
        ANY_PORT,
        15,
        &format!(
            "  upstreams: [\"{up}\"]\n  descriptor_sets: [\"{kitchen}\"]\n  shutdown: {{drain_delay_ms: 3000}}\n",
            up = backend.addr,
            kitchen = KITCHEN_DESCRIPTORS,
        ),
    );
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info,pingora=warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let log = ChildLog::collect(&mut gateway);
    let (addr, _) = log.listening().await;
    gateway_ready(addr).await;

    // Every request on a new connection: a refused connect was never in flight; anything
    // else that is not a 2xx is a lost request.
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let load = Load::start(client, format!("http://{addr}/v1/sinks/drain"), 8);
    load.run_for(100).await;

    let sigterm = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Readiness goes first, while the listener still answers.
    eventually("/readyz to answer 503", || async {
        get_status(addr, "/readyz").await == Ok(503)
    })
    .await;
    let ready_503_at = sigterm.elapsed();
    // Requests started during the drain delay run past the moment the listener closes.
    let slow: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get_status(addr, "/v1/slow/4000")))
        .collect();
    // Served on during the delay; then the clients stop sending new requests, as a load
    // balancer does once readiness failed (connections the kernel queued on the listening
    // socket after that would be reset with it: they never reached the gateway).
    load.run_for(100).await;
    let stats = load.finish().await;

    let exited = tokio::task::spawn_blocking(move || gateway.wait().unwrap())
        .await
        .unwrap();
    let exited_after = sigterm.elapsed();
    let slow: Vec<_> = futures::future::join_all(slow)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let refused = stats
        .failed
        .iter()
        .filter(|why| why.starts_with("connect"))
        .count();
    let lost: Vec<&String> = stats
        .failed
        .iter()
        .filter(|why| !why.starts_with("connect"))
        .collect();
    eprintln!(
        "FAULT sigterm: ok={} refused={refused} lost={} readyz_503_after={ready_503_at:?} exited_after={exited_after:?}",
        stats.ok,
        lost.len()
    );
    assert!(exited.success(), "{exited:?}");
    assert_eq!(
        slow,
        vec![Ok(200); 4],
        "requests in flight at the close finish"
    );
    assert!(lost.is_empty(), "lost in-flight requests: {lost:?}");
    assert_eq!(
        refused, 0,
        "the listener stayed open through the drain delay"
    );
    // It exits once idle, long before the 15 s grace period would end.
    assert!(exited_after < Duration::from_secs(10), "{exited_after:?}");
}
