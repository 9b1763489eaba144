//! Failure modes: Redis down, PostgreSQL down and back, shutdown with calls in flight.

use std::time::Duration;

use meshgate_proto::user::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest,
};
use meshgate_test_support::wait::{ClosedPort, eventually};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    Backend, TestDatabase, postgres_server_addr, spawn_app_with, spawn_configured, unique_email,
};
use crate::proxy::TcpProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_succeeds_with_redis_unreachable() {
    let closed = ClosedPort::new();
    let app = spawn_app_with(Backend::Postgres, |config| {
        config.redis_url = Some(format!("redis://{}", closed.addr));
    })
    .await;
    let mut client = app.client.clone();
    let user = app.create("No Cache", &unique_email(), 30).await.unwrap();
    let fetched = client
        .get_user(GetUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.user.unwrap().id, user.id);
    let updated = client
        .update_user(UpdateUserRequest {
            id: user.id.clone(),
            name: "Still Works".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.user.unwrap().name, "Still Works");
    let listed = client
        .list_users(ListUsersRequest { page: 1, limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 1);
    client
        .delete_user(DeleteUserRequest {
            id: user.id.clone(),
        })
        .await
        .unwrap();
    let gone = client
        .get_user(GetUserRequest { id: user.id })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    app.wait_for_health(ServingStatus::Serving).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("user_cache_errors_total"),
        "the failures are counted: {metrics}"
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_unavailable_and_health_recovers() {
    let database = TestDatabase::create().await;
    let proxy = TcpProxy::start(postgres_server_addr()).await;
    let url = database.url_via(&proxy);
    let app = spawn_configured(Some(database), |config| {
        config.database_url = Some(url);
        config.db_acquire_timeout_ms = 500;
    })
    .await;
    let mut client = app.client.clone();
    app.create("Before", &unique_email(), 30).await.unwrap();
    app.wait_for_health(ServingStatus::Serving).await;

    proxy.cut();
    let create = app.create("During", &unique_email(), 30).await.unwrap_err();
    assert_eq!(create.code(), Code::Unavailable, "{create:?}");
    let get = client
        .get_user(GetUserRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::Unavailable, "{get:?}");
    assert!(
        !get.message().contains("refused") && !get.message().contains("pool"),
        "{}",
        get.message()
    );
    app.wait_for_health(ServingStatus::NotServing).await;

    proxy.restore();
    app.wait_for_health(ServingStatus::Serving).await;
    app.create("After", &unique_email(), 30).await.unwrap();
    let listed = client
        .list_users(ListUsersRequest { page: 1, limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 2);
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_calls_finish() {
    let database = TestDatabase::create().await;
    let proxy = TcpProxy::start(postgres_server_addr()).await;
    let url = database.url_via(&proxy);
    let mut app = spawn_configured(Some(database), |config| {
        config.database_url = Some(url);
        config.db_acquire_timeout_ms = 10_000;
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;

    // Hold every database byte, so the calls below are stuck inside the server.
    proxy.pause();
    let calls: Vec<_> = (0..5)
        .map(|n| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .create_user(CreateUserRequest {
                        name: format!("In flight {n}"),
                        email: format!(
                            "in-flight-{n}-{}@example.com",
                            uuid::Uuid::new_v4().simple()
                        ),
                        age: 30,
                    })
                    .await
            })
        })
        .collect();
    eventually("five CreateUser calls in flight", || async {
        app.metrics()
            .await
            .contains(r#"grpc_server_in_flight{grpc_method="CreateUser"} 5"#)
    })
    .await;
    app.signal_shutdown();
    // New connections are refused while the old calls are still running.
    eventually("new connections to be refused", || async {
        tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
            .unwrap()
            .connect()
            .await
            .is_err()
    })
    .await;
    proxy.restore();
    for call in calls {
        let user = call
            .await
            .unwrap()
            .expect("an in-flight call completes")
            .into_inner();
        assert!(user.user.is_some());
    }
    app.stopped().await.expect("clean shutdown");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deadline_ends_a_stuck_call() {
    let database = TestDatabase::create().await;
    let proxy = TcpProxy::start(postgres_server_addr()).await;
    let url = database.url_via(&proxy);
    let app = spawn_configured(Some(database), |config| {
        config.database_url = Some(url);
        config.db_acquire_timeout_ms = 30_000;
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    proxy.pause();
    let mut request = tonic::Request::new(GetUserRequest {
        id: uuid::Uuid::new_v4().to_string(),
    });
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = app.client.clone().get_user(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // Without the deadline the call would wait for the 30 s pool timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    proxy.restore();
    app.teardown().await;
}

#[tokio::test]
async fn oversized_messages_are_rejected() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |config| {
        config.max_message_bytes = 1024;
    })
    .await;
    let status = app
        .create(&"x".repeat(4096), &unique_email(), 30)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    app.create("Small", &unique_email(), 30).await.unwrap();
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_withdraws_readiness_first_and_keeps_serving_for_the_drain_delay() {
    let mut app = spawn_app_with(Backend::Sqlite, |config| {
        // Long enough that the calls below land inside it even on a loaded machine.
        config.drain_delay_ms = 5_000;
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    app.signal_shutdown();
    app.wait_for_service_health("readiness", ServingStatus::NotServing)
        .await;
    assert_eq!(app.health("").await, ServingStatus::NotServing);
    assert_eq!(
        app.health("user.UserService").await,
        ServingStatus::NotServing
    );
    assert_eq!(app.health("liveness").await, ServingStatus::Serving);
    // Still serving, also on a new connection (a load balancer that has not looked yet).
    let mut fresh = meshgate_proto::user::user_service_client::UserServiceClient::connect(format!(
        "http://{}",
        app.grpc_addr
    ))
    .await
    .expect("new connections are accepted while draining");
    fresh
        .list_users(ListUsersRequest { page: 1, limit: 1 })
        .await
        .expect("calls are served while draining");
    app.stopped().await.expect("clean shutdown after the delay");
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_does_not_follow_the_database() {
    let database = TestDatabase::create().await;
    let proxy = TcpProxy::start(postgres_server_addr()).await;
    let url = database.url_via(&proxy);
    let app = spawn_configured(Some(database), |config| {
        config.database_url = Some(url);
        config.db_acquire_timeout_ms = 300;
        config.readiness_failure_threshold = 2;
    })
    .await;
    app.wait_for_service_health("readiness", ServingStatus::Serving)
        .await;
    proxy.cut();
    app.wait_for_service_health("readiness", ServingStatus::NotServing)
        .await;
    assert_eq!(app.health("liveness").await, ServingStatus::Serving);
    proxy.restore();
    app.wait_for_service_health("readiness", ServingStatus::Serving)
        .await;
    app.teardown().await;
}

/// The degraded mode (user-service/README.md): with the database unreachable, what the cache
/// holds is still answered; everything else is UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_still_answers_what_the_cache_holds() {
    let database = TestDatabase::create().await;
    let proxy = TcpProxy::start(postgres_server_addr()).await;
    let url = database.url_via(&proxy);
    let app = spawn_configured(Some(database), |config| {
        config.database_url = Some(url);
        config.db_acquire_timeout_ms = 300;
    })
    .await;
    let mut client = app.client.clone();
    let cached = app.create("Cached", &unique_email(), 30).await.unwrap();
    let page = ListUsersRequest { page: 1, limit: 10 };
    let listed = client.list_users(page).await.unwrap().into_inner();
    let doomed = app.create("Deleted", &unique_email(), 30).await.unwrap();
    client
        .delete_user(DeleteUserRequest {
            id: doomed.id.clone(),
        })
        .await
        .unwrap();

    proxy.cut();
    app.wait_for_service_health("readiness", ServingStatus::NotServing)
        .await;
    let read = client
        .get_user(GetUserRequest {
            id: cached.id.clone(),
        })
        .await
        .expect("a cached user is served during the outage")
        .into_inner();
    assert_eq!(read.user.unwrap(), cached);
    let gone = client
        .get_user(GetUserRequest { id: doomed.id })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "the tombstone answers");
    let uncached = client
        .get_user(GetUserRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(uncached.code(), Code::Unavailable, "{uncached:?}");
    let write = app.create("During", &unique_email(), 30).await.unwrap_err();
    assert_eq!(write.code(), Code::Unavailable, "{write:?}");
    // The page cached before the delete is behind the generation the delete bumped: a miss.
    let list = client.list_users(page).await.unwrap_err();
    assert_eq!(list.code(), Code::Unavailable, "{list:?}");
    assert_eq!(listed.total, 1);
    assert_eq!(app.health("liveness").await, ServingStatus::Serving);

    proxy.restore();
    app.wait_for_service_health("readiness", ServingStatus::Serving)
        .await;
    let listed = client.list_users(page).await.unwrap().into_inner();
    assert_eq!(listed.total, 1);
    // Cached again: served during a second outage.
    proxy.cut();
    app.wait_for_service_health("readiness", ServingStatus::NotServing)
        .await;
    let again = client.list_users(page).await.unwrap().into_inner();
    assert_eq!(again.total, 1, "a cached page is served during the outage");
    proxy.restore();
    app.teardown().await;
}
