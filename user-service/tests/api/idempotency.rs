//! `Idempotency-Key` on CreateUser (issue 16): replays, conflicts, bad keys, expiry, concurrent
//! duplicates (the interleaving forced with a table lock), and the REST header through the edge.

use std::time::Duration;

use meshgate_proto::user::user_service_client::UserServiceClient;
use meshgate_proto::user::{CreateUserRequest, ListUserEventsRequest, User};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{Backend, spawn_app, spawn_edge, unique_email, wait_for_lock_waiters};
use crate::on_both_backends;

async fn create_with_key(
    client: &UserServiceClient<Channel>,
    key: &str,
    name: &str,
    email: &str,
) -> Result<User, tonic::Status> {
    let mut request = tonic::Request::new(CreateUserRequest {
        name: name.to_owned(),
        email: email.to_owned(),
        age: 30,
    });
    request.metadata_mut().insert(
        "idempotency-key",
        key.parse().expect("an ASCII metadata value"),
    );
    let response = client.clone().create_user(request).await?;
    Ok(response
        .into_inner()
        .user
        .expect("CreateUser returns the user"))
}

async fn total_users(client: &UserServiceClient<Channel>) -> i32 {
    client
        .clone()
        .list_users(meshgate_proto::user::ListUsersRequest { page: 1, limit: 1 })
        .await
        .unwrap()
        .into_inner()
        .total
}

async fn a_retried_create_returns_the_original_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = uuid::Uuid::new_v4().to_string();
    let email = unique_email();
    let first = create_with_key(&app.client, &key, "Ada", &email)
        .await
        .unwrap();
    // Changed since: the replay still answers the original response.
    app.client
        .clone()
        .update_user(meshgate_proto::user::UpdateUserRequest {
            id: first.id.clone(),
            age: 44,
            ..Default::default()
        })
        .await
        .unwrap();
    let again = create_with_key(&app.client, &key, "Ada", &email)
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(total_users(&app.client).await, 1);

    let other = create_with_key(&app.client, &key, "Ada", &unique_email())
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::InvalidArgument);
    assert!(
        other
            .message()
            .contains("idempotency-key was already used with a different request"),
        "{}",
        other.message()
    );
    assert_eq!(total_users(&app.client).await, 1);

    // One created event: the replay wrote nothing.
    let events = app
        .client
        .clone()
        .list_user_events(ListUserEventsRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let kinds: Vec<_> = events.iter().map(|event| event.r#type.as_str()).collect();
    assert_eq!(kinds, ["user.created", "user.updated"]);

    // Another key is another request.
    let second = create_with_key(&app.client, "another-key", "Bob", &unique_email())
        .await
        .unwrap();
    assert_ne!(second.id, first.id);
    app.teardown().await;
}

async fn malformed_keys_are_refused_by_name(backend: Backend) {
    let app = spawn_app(backend).await;
    let oversized = "k".repeat(256);
    for (key, problem) in [
        (
            oversized.as_str(),
            "idempotency-key must be at most 255 characters",
        ),
        (
            "has space",
            "idempotency-key must be visible ASCII characters",
        ),
    ] {
        let status = create_with_key(&app.client, key, "Ada", &unique_email())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key}");
        assert!(status.message().contains(problem), "{}", status.message());
    }
    let status = create_with_key(&app.client, "", "Ada", &unique_email())
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("idempotency-key must not be empty")
    );
    assert_eq!(total_users(&app.client).await, 0);
    app.teardown().await;
}

on_both_backends!(
    a_retried_create_returns_the_original_user,
    malformed_keys_are_refused_by_name
);

/// An expired key is a new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_creates_again() {
    let app = spawn_app(Backend::Postgres).await;
    let first = create_with_key(&app.client, "expiring", "Ada", &unique_email())
        .await
        .unwrap();
    let mut connection = PgConnection::connect(app.database_url().unwrap())
        .await
        .unwrap();
    connection
        .execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .await
        .unwrap();
    let second = create_with_key(&app.client, "expiring", "Bob", &unique_email())
        .await
        .unwrap();
    assert_ne!(second.id, first.id);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the expired row was reclaimed");
    app.teardown().await;
}

/// Two calls with one key race: the first claims the key and is held (a table lock blocks its
/// insert into users); the second then waits on the key. Released, they answer the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_create_one_user() {
    let app = spawn_app(Backend::Postgres).await;
    let url = app.database_url().unwrap().to_owned();
    let mut blocker = PgConnection::connect(&url).await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    blocker
        .execute("LOCK TABLE users IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let email = unique_email();
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (client, email) = (app.client.clone(), email.clone());
            tokio::spawn(async move { create_with_key(&client, "racing", "Ada", &email).await })
        })
        .collect();
    // One waits on the users lock, the other on the first's uncommitted key.
    wait_for_lock_waiters(&url, 2).await;
    blocker.execute("COMMIT").await.unwrap();
    let mut ids = Vec::new();
    for call in calls {
        let user = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap()
            .unwrap()
            .expect("both calls succeed");
        ids.push(user.id);
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(total_users(&app.client).await, 1);
    app.teardown().await;
}

/// Through the edge: the REST `Idempotency-Key` header reaches the service as metadata; a
/// replay answers 201 with the same user, a different body 400 naming the key; the events
/// route is transcoded from the annotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_header_reaches_the_service_through_the_edge() {
    use edge_gateway::config::GatewayConfig;

    let app = spawn_app(Backend::Sqlite).await;
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut gateway = spawn_edge(GatewayConfig::for_upstreams(any_port, vec![app.grpc_addr])).await;
    let listen = gateway.state.config.listen;
    let http = reqwest::Client::new();
    let url = format!("http://{listen}/v1/users");
    let email = unique_email();
    let post = |body: serde_json::Value| {
        http.post(&url)
            .header("Idempotency-Key", "rest-key-1")
            .json(&body)
            .send()
    };
    let body = serde_json::json!({"name": "Ada", "email": email, "age": 30});
    let mut first = None;
    for _ in 0..100 {
        // The edge health-checks its upstream before routing to it.
        match post(body.clone()).await {
            Ok(response) if response.status() != 503 => {
                first = Some(response);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let first = first.expect("the edge routes to the service");
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = post(body.clone()).await.unwrap();
    assert_eq!(again.status(), 201);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let other = post(serde_json::json!({"name": "Eve", "email": unique_email(), "age": 30}))
        .await
        .unwrap();
    assert_eq!(other.status(), 400);
    let other: serde_json::Value = other.json().await.unwrap();
    assert_eq!(other["code"], 3);
    assert!(
        other["message"]
            .as_str()
            .unwrap()
            .contains("idempotency-key was already used"),
        "{other}"
    );

    let id = first["id"].as_str().unwrap();
    let events = http
        .get(format!("http://{listen}/v1/users/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let events: serde_json::Value = events.json().await.unwrap();
    assert_eq!(events["events"][0]["type"], "user.created");
    assert_eq!(events["events"][0]["user"]["id"], id);
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    gateway.stop();
    app.teardown().await;
}
