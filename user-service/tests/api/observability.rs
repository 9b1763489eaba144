//! Health, reflection, trace continuation (W3C and B3) and /metrics.

use meshgate_proto::user::{GetUserRequest, TestErrorRequest};
use tonic::Request;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_types::StatusExt;

use crate::helpers::{Backend, TestApp, spawn_app, unique_email};
use crate::on_both_backends;

on_both_backends!(health_is_serving_while_the_database_answers);

async fn health_is_serving_while_the_database_answers(backend: Backend) {
    let app = spawn_app(backend).await;
    app.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(app.health("").await, ServingStatus::Serving);
    app.teardown().await;
}

#[tokio::test]
async fn reflection_lists_the_user_service() {
    let app = spawn_app(Backend::Sqlite).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"user.UserService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // v1alpha answers too (older grpcurl versions use it).
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::FileContainingSymbol(
            "user.UserService".into(),
        )),
    };
    let mut responses = V1Alpha::new(app.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    assert!(matches!(
        response.message_response,
        Some(tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
    app.teardown().await;
}

async fn trace_id_of_test_error(app: &TestApp, headers: &[(&'static str, &'static str)]) -> String {
    let mut request = Request::new(TestErrorRequest {
        status_code: "503".into(),
    });
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    let status = app.client.clone().test_error(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo details");
    let trace_id = info.metadata["trace_id"].clone();
    assert!(status.message().contains(&trace_id), "{}", status.message());
    assert_eq!(
        status
            .metadata()
            .get("x-trace-id")
            .unwrap()
            .to_str()
            .unwrap(),
        trace_id
    );
    trace_id
}

#[tokio::test]
async fn a_b3_only_request_continues_its_trace() {
    let app = spawn_app(Backend::Sqlite).await;
    let multi = trace_id_of_test_error(
        &app,
        &[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(multi, "80f198ee56343ba864fe8b2a57d3eff7");
    let single = trace_id_of_test_error(
        &app,
        &[("b3", "463ac35c9f6413ad48485a3953bb6124-0020000000000001-1")],
    )
    .await;
    assert_eq!(single, "463ac35c9f6413ad48485a3953bb6124");
    app.teardown().await;
}

#[tokio::test]
async fn a_w3c_traceparent_request_continues_its_trace() {
    let app = spawn_app(Backend::Sqlite).await;
    let id = trace_id_of_test_error(
        &app,
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    )
    .await;
    assert_eq!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
    let fresh = trace_id_of_test_error(&app, &[]).await;
    assert_ne!(fresh, id, "without headers a new trace starts");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_cache_results_and_pool_use() {
    let app = spawn_app(Backend::Postgres).await;
    let user = app.create("Metered", &unique_email(), 30).await.unwrap();
    let mut client = app.client.clone();
    for _ in 0..3 {
        client
            .get_user(GetUserRequest {
                id: user.id.clone(),
            })
            .await
            .unwrap();
    }
    let missing = uuid::Uuid::new_v4().to_string();
    client
        .get_user(GetUserRequest { id: missing })
        .await
        .unwrap_err();
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"grpc_server_handled_total{grpc_code="OK",grpc_method="GetUser"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="GetUser"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"grpc_server_handled_total{grpc_code="OK",grpc_method="CreateUser"} 1"#),
        "{metrics}"
    );
    // Create wrote the user through to Redis, so all three reads hit; the unknown id missed.
    assert!(
        metrics.contains(r#"user_cache_requests_total{cache="user",result="hit"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"user_cache_requests_total{cache="user",result="miss"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("grpc_server_handling_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"db_pool_connections{state="max"} 10"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("db_query_duration_seconds_count{operation=\"insert_user\"} 1"),
        "{metrics}"
    );

    // And the entry really is in Redis under this test's prefix.
    let redis = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut connection = redis.get_multiplexed_async_connection().await.unwrap();
    let cached: Option<String> = redis::cmd("GET")
        .arg(format!("{}user:{}", app.key_prefix, user.id))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(cached.is_some_and(|json| json.contains(&user.email)));
    app.teardown().await;
}
