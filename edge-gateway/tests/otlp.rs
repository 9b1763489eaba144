//! OTLP span export: the gateway binary (endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT`, service
//! name from `gateway.otlp.service_name`) in front of the real user-service (in process,
//! exporting its own spans), both sending to one in-test OTLP/gRPC collector. The gateway's
//! SERVER span continues the caller's traceparent and is the parent of the service's span.
//!
//! Its own test binary: the user-service's telemetry is a process-wide tracing subscriber.
//! Needs the span-enrichment module (see tests/gateway/wasm_filters.rs for the build command).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use meshgate_proto::user::{self, user_service_client::UserServiceClient};
use meshgate_test_support::otlp::start_collector;
use meshgate_test_support::process::{ChildLog, ready};
use meshgate_test_support::user_service::{EmbeddedUserService, sqlite_path};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::any_value::Value as AnyValue,
    trace::v1::{Span, span::SpanKind, status::StatusCode as OtlpStatus},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn span_enrichment_module() -> PathBuf {
    meshgate_test_support::wasm::module("meshgate_span_enrichment")
}

/// A received span with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<AnyValue> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    fn string(&self, key: &str) -> Option<String> {
        match self.attribute(key)? {
            AnyValue::StringValue(value) => Some(value),
            other => panic!("{key} is not a string: {other:?}"),
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attribute(key)? {
            AnyValue::IntValue(value) => Some(value),
            other => panic!("{key} is not an int: {other:?}"),
        }
    }
}

struct Spans {
    received: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    spans: Vec<Received>,
}

impl Spans {
    /// Drains what has arrived; waits up to `wait` for more.
    async fn collect(&mut self, wait: Duration) {
        while let Ok(Some(export)) = tokio::time::timeout(wait, self.received.recv()).await {
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| match kv.value.clone()?.value? {
                        AnyValue::StringValue(name) => Some(name),
                        _ => None,
                    })
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        self.spans.push(Received {
                            service: service.clone(),
                            span,
                        });
                    }
                }
            }
        }
    }

    fn in_trace(&self, trace_id: &[u8]) -> Vec<&Received> {
        self.spans
            .iter()
            .filter(|s| s.span.trace_id == trace_id)
            .collect()
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn random_hex(bytes: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..bytes * 2].to_owned()
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    log: ChildLog,
}

impl Gateway {
    async fn start(upstream: SocketAddr, collector: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("gw-otlp-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = json!({
            "server": {
                "version": 1,
                "threads": 2,
                "pid_file": dir.join("gw.pid"),
                "upgrade_sock": dir.join("gw.sock"),
                "grace_period_seconds": 0,
                "graceful_shutdown_timeout_seconds": 2,
            },
            "gateway": {
                "listen": "127.0.0.1:0",
                "metrics_listen": "",
                "upstreams": [upstream.to_string()],
                "health_check": {"interval_ms": 200, "timeout_ms": 1000},
                "otlp": {"service_name": "edge-gateway-otlp-test"},
                "filters": [{
                    "name": "span-enrichment",
                    "module": span_enrichment_module(),
                    "workers": 1,
                    "config": {"fields": [{"path": "id"}]},
                }],
            }
        });
        let path = dir.join("gateway.yaml");
        std::fs::write(&path, config.to_string()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info,pingora=warn")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let log = ChildLog::collect(&mut child);
        let (addr, _) = log.listening().await;
        let gateway = Self {
            child,
            addr,
            dir,
            log,
        };
        ready(gateway.addr).await;
        gateway
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM: the gateway drains, flushes its spans and exits 0.
    fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "gateway exit {status}: {:?}",
                    self.log.lines()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway did not exit after SIGTERM");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_exports_its_server_span_as_the_parent_of_the_services_span() {
    let (collector, received) = start_collector().await;
    let mut spans = Spans {
        received,
        spans: Vec::new(),
    };

    // The real user-service, exporting its own spans to the same collector.
    let guard = user_service::telemetry::init(
        &user_service::telemetry::TelemetrySettings {
            format: user_service::telemetry::LogFormat::Json,
            filter: "info".to_owned(),
            otlp_endpoint: Some(format!("http://{collector}")),
            service_name: "user-service-behind-gateway".to_owned(),
        },
        user_service::telemetry::discard(),
    )
    .unwrap();
    let service = EmbeddedUserService::start(sqlite_path()).await;
    let mut gateway = Gateway::start(service.addr, collector).await;
    let client = reqwest::Client::new();

    let email = format!("otlp-{}@example.com", uuid::Uuid::new_v4());
    let created = client
        .post(gateway.url("/v1/users"))
        .json(&json!({"name": "Span Parent", "email": email, "age": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // 1. REST with the caller's W3C context.
    let (rest_trace, rest_parent) = (random_hex(16), random_hex(8));
    let fetched = client
        .get(gateway.url(&format!("/v1/users/{id}")))
        .header("traceparent", format!("00-{rest_trace}-{rest_parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), reqwest::StatusCode::OK);
    let answered = fetched.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let gateway_span_id = answered.split('-').nth(2).unwrap().to_owned();

    // 2. Native gRPC with a B3 context, answered NOT_FOUND.
    let (grpc_trace, grpc_parent) = (random_hex(16), random_hex(8));
    let mut users = UserServiceClient::connect(gateway.url("")).await.unwrap();
    let mut request = tonic::Request::new(user::GetUserRequest {
        id: uuid::Uuid::new_v4().to_string(),
    });
    request.metadata_mut().insert(
        "b3",
        format!("{grpc_trace}-{grpc_parent}-1").parse().unwrap(),
    );
    let status = users.get_user(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // 3. A caller that asked not to sample: no span.
    let unsampled_trace = random_hex(16);
    let response = client
        .get(gateway.url(&format!("/v1/users/{id}")))
        .header(
            "traceparent",
            format!("00-{unsampled_trace}-{}-00", random_hex(8)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);

    // The gateway flushes at shutdown; the service's spans are flushed by dropping its guard.
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    spans.collect(Duration::from_secs(3)).await;

    // The REST span.
    let in_rest_trace = spans.in_trace(&hex(&rest_trace));
    let gateway_span = in_rest_trace
        .iter()
        .find(|s| s.service == "edge-gateway-otlp-test")
        .unwrap_or_else(|| panic!("no gateway span in the REST trace: {in_rest_trace:#?}"));
    assert_eq!(gateway_span.span.name, "GET /v1/users/{id}");
    assert_eq!(gateway_span.span.kind, SpanKind::Server as i32);
    assert_eq!(gateway_span.span.parent_span_id, hex(&rest_parent));
    assert_eq!(
        gateway_span.span.span_id,
        hex(&gateway_span_id),
        "the exported span id is the one propagated"
    );
    assert!(gateway_span.span.end_time_unix_nano >= gateway_span.span.start_time_unix_nano);
    let expected_strings: HashMap<&str, &str> = HashMap::from([
        ("meshgate.protocol", "rest"),
        ("meshgate.route", "GET /v1/users/{id}"),
        ("http.route", "/v1/users/{id}"),
        ("http.request.method", "GET"),
        ("rpc.system", "grpc"),
        ("rpc.service", "user.UserService"),
        ("rpc.method", "GetUser"),
        // The span-enrichment filter's attributes.
        ("meshgate.grpc_method", "GetUser"),
        ("meshgate.request.id", id.as_str()),
    ]);
    for (key, value) in expected_strings {
        assert_eq!(
            gateway_span.string(key).as_deref(),
            Some(value),
            "{key} in {:#?}",
            gateway_span.span.attributes
        );
    }
    assert_eq!(gateway_span.int("http.response.status_code"), Some(200));
    assert_eq!(gateway_span.int("rpc.grpc.status_code"), Some(0));
    assert_ne!(
        gateway_span.span.status.as_ref().map(|s| s.code),
        Some(OtlpStatus::Error as i32)
    );

    // The service's span is the gateway span's child.
    let service_span = in_rest_trace
        .iter()
        .find(|s| s.service == "user-service-behind-gateway" && s.span.name == "GetUser")
        .unwrap_or_else(|| panic!("no user-service GetUser span in the trace: {in_rest_trace:#?}"));
    assert_eq!(service_span.span.parent_span_id, gateway_span.span.span_id);

    // The gRPC span: B3 context continued, an error status.
    let in_grpc_trace = spans.in_trace(&hex(&grpc_trace));
    let grpc_span = in_grpc_trace
        .iter()
        .find(|s| s.service == "edge-gateway-otlp-test")
        .unwrap_or_else(|| panic!("no gateway span in the gRPC trace: {in_grpc_trace:#?}"));
    assert_eq!(grpc_span.span.name, "user.UserService/GetUser");
    assert_eq!(grpc_span.span.kind, SpanKind::Server as i32);
    assert_eq!(grpc_span.span.parent_span_id, hex(&grpc_parent));
    assert_eq!(
        grpc_span.string("meshgate.protocol").as_deref(),
        Some("grpc")
    );
    assert_eq!(grpc_span.int("rpc.grpc.status_code"), Some(5));
    assert_eq!(
        grpc_span.span.status.as_ref().map(|s| s.code),
        Some(OtlpStatus::Error as i32)
    );
    assert!(
        in_grpc_trace
            .iter()
            .any(|s| s.service == "user-service-behind-gateway"
                && s.span.parent_span_id == grpc_span.span.span_id),
        "the service's span is not the gateway span's child: {in_grpc_trace:#?}"
    );

    // Not sampled by the caller: not exported by the gateway.
    let unsampled = spans.in_trace(&hex(&unsampled_trace));
    assert!(
        unsampled
            .iter()
            .all(|s| s.service != "edge-gateway-otlp-test"),
        "{unsampled:#?}"
    );
    drop(service);
}
