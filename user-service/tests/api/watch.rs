//! `WatchUsers` (issue 16, live updates): other clients' writes as they commit, from the
//! process's own commits (both backends, no broker) and from JetStream across replicas; the
//! user filter; a watcher that stops reading cut off with RESOURCE_EXHAUSTED while writes go on;
//! disconnects leave no watcher behind; a malformed filter.

use std::time::Duration;

use meshgate_proto::user::user_service_client::UserServiceClient;
use meshgate_proto::user::{
    DeleteUserRequest, ListUserEventsRequest, UpdateUserRequest, UserEvent as WireEvent,
    WatchUsersRequest,
};
use tonic::Code;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::helpers::{
    Backend, TestApp, TestDatabase, spawn_app, spawn_app_with, spawn_configured, unique_email,
};
use crate::on_both_backends;
use crate::throwaway::ThrowawayNats;

/// A watch call on `client`, returned once the service has answered (and subscribed).
async fn watch_on(client: &UserServiceClient<Channel>, user_id: &str) -> Streaming<WireEvent> {
    client
        .clone()
        .watch_users(WatchUsersRequest {
            user_id: user_id.to_owned(),
        })
        .await
        .expect("WatchUsers answers")
        .into_inner()
}

async fn next_event(stream: &mut Streaming<WireEvent>) -> WireEvent {
    tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("an event within 15 s")
        .expect("the stream stays healthy")
        .expect("the stream goes on")
}

fn summary(event: &WireEvent) -> (String, String, i64) {
    (event.r#type.clone(), event.user_id.clone(), event.version)
}

/// Without a broker the feed is the process's commits: a watcher sees every write made after
/// it subscribed, in order, with the same event ids the outbox recorded; a filtered watcher
/// sees one user's.
async fn watchers_see_other_clients_writes(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut everyone = watch_on(&app.client, "").await;
    let watched = app.create("Watched", &unique_email(), 30).await.unwrap();
    let mut only_watched = watch_on(&app.client, &watched.id).await;
    let other = app.create("Other", &unique_email(), 31).await.unwrap();
    let mut client = app.client.clone();
    client
        .update_user(UpdateUserRequest {
            id: watched.id.clone(),
            name: "Renamed".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .delete_user(DeleteUserRequest {
            id: watched.id.clone(),
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next_event(&mut everyone).await);
    }
    let summaries: Vec<_> = seen.iter().map(summary).collect();
    assert_eq!(
        summaries,
        [
            ("user.created".to_owned(), watched.id.clone(), 1),
            ("user.created".to_owned(), other.id.clone(), 1),
            ("user.updated".to_owned(), watched.id.clone(), 2),
            ("user.deleted".to_owned(), watched.id.clone(), 3),
        ]
    );
    assert_eq!(seen[2].user.as_ref().unwrap().name, "Renamed");
    assert!(seen[3].user.is_none(), "a delete carries no snapshot");

    let filtered = [
        next_event(&mut only_watched).await,
        next_event(&mut only_watched).await,
    ];
    assert_eq!(
        filtered.iter().map(summary).collect::<Vec<_>>(),
        [
            ("user.updated".to_owned(), watched.id.clone(), 2),
            ("user.deleted".to_owned(), watched.id.clone(), 3),
        ]
    );

    // The events watched are the events recorded (same ids).
    let recorded: Vec<String> = client
        .list_user_events(ListUserEventsRequest {
            id: watched.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|event| event.event_id)
        .collect();
    let watched_ids: Vec<String> = seen
        .iter()
        .filter(|event| event.user_id == watched.id)
        .map(|event| event.event_id.clone())
        .collect();
    assert_eq!(recorded, watched_ids);

    app.wait_for_metric("user_watchers_active 2").await;
    drop((everyone, only_watched));
    app.wait_for_metric("user_watchers_active 0").await;
    app.teardown().await;
}

on_both_backends!(watchers_see_other_clients_writes);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_user_filter_is_invalid_argument_naming_the_field() {
    let app = spawn_app(Backend::Sqlite).await;
    let status = app
        .client
        .clone()
        .watch_users(WatchUsersRequest {
            user_id: "not-a-uuid".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("user_id"), "{status:?}");
    let details = status.get_error_details();
    let fields: Vec<_> = details
        .bad_request()
        .expect("BadRequest details")
        .field_violations
        .iter()
        .map(|violation| violation.field.as_str())
        .collect();
    assert_eq!(fields, ["user_id"]);
    assert!(app.metrics().await.contains("user_watchers_active 0"));
    app.teardown().await;
}

/// A client that stops reading: its HTTP/2 window (2 KiB here) fills, the service stops
/// sending, and the shared ring (8 events here) moves on without it. Writes never wait for it;
/// when it reads again it gets what was in flight, then RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_while_writes_go_on() {
    const WRITES: usize = 80;
    let app = spawn_app_with(Backend::Sqlite, |config| config.watch_buffer_events = 8).await;
    let small_window = Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .initial_stream_window_size(Some(2048))
        .connect()
        .await
        .unwrap();
    let mut stalled = watch_on(&UserServiceClient::new(small_window), "").await;
    app.wait_for_metric("user_watchers_active 1").await;

    for index in 0..WRITES {
        tokio::time::timeout(
            Duration::from_secs(10),
            app.create("Busy", &unique_email(), 20 + (index % 50) as i32),
        )
        .await
        .expect("a write never waits for a watcher")
        .expect("writes succeed while a watcher stalls");
    }

    let mut delivered = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(15), stalled.message())
            .await
            .expect("the stream moves once read")
        {
            Ok(Some(_)) => delivered += 1,
            Ok(None) => panic!("the stream ended without a status after {delivered} events"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("fell behind by"),
        "{}",
        status.message()
    );
    assert!(delivered < WRITES, "only what was in flight: {delivered}");
    app.wait_for_metric("user_watchers_cut_off_total 1").await;
    app.wait_for_metric("user_watchers_active 0").await;
    app.teardown().await;
}

/// A client that goes away (stream reset, or its connection closed) leaves no watcher behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_watchers_are_released() {
    let app = spawn_app(Backend::Sqlite).await;
    let reset = watch_on(&app.client, "").await;
    let own_connection = Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let closed = watch_on(&UserServiceClient::new(own_connection), "").await;
    app.wait_for_metric("user_watchers_active 2").await;
    drop(reset);
    app.wait_for_metric("user_watchers_active 1").await;
    drop(closed);
    app.wait_for_metric("user_watchers_active 0").await;
    // Writes after the watchers left are unaffected.
    app.create("After", &unique_email(), 40).await.unwrap();
    app.teardown().await;
}

/// Draining ends open watch streams with UNAVAILABLE (so clients watch again elsewhere) instead
/// of holding the shutdown until its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_ends_watchers_with_unavailable() {
    let mut app = spawn_app_with(Backend::Sqlite, |config| config.drain_delay_ms = 0).await;
    let mut watcher = watch_on(&app.client, "").await;
    app.signal_shutdown();
    let status = tokio::time::timeout(Duration::from_secs(10), watcher.message())
        .await
        .expect("the stream ends during the drain")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    app.stopped().await.expect("the server stops cleanly");
    app.teardown().await;
}

/// With a broker, each replica's feed is one JetStream consumer: a watcher on replica B sees
/// the writes made on replica A, in per-user order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_a_watcher_sees_writes_of_another_replica() {
    let nats = ThrowawayNats::start().await;
    let database = TestDatabase::create().await;
    let database_url = database.url.clone();
    let replica = |url: String, nats_url: String| {
        move |config: &mut user_service::Config| {
            config.database_url = Some(url);
            config.nats_url = Some(nats_url);
        }
    };
    let writer = spawn_configured(Some(database), replica(database_url.clone(), nats.url())).await;
    let reader: TestApp = spawn_configured(None, replica(database_url, nats.url())).await;
    let mut watcher = watch_on(&reader.client, "").await;

    let user = writer.create("Remote", &unique_email(), 33).await.unwrap();
    writer
        .client
        .clone()
        .update_user(UpdateUserRequest {
            id: user.id.clone(),
            age: 34,
            ..Default::default()
        })
        .await
        .unwrap();
    let events = [
        next_event(&mut watcher).await,
        next_event(&mut watcher).await,
    ];
    assert_eq!(
        events.iter().map(summary).collect::<Vec<_>>(),
        [
            ("user.created".to_owned(), user.id.clone(), 1),
            ("user.updated".to_owned(), user.id.clone(), 2),
        ]
    );
    assert_eq!(events[1].user.as_ref().unwrap().age, 34);
    drop(watcher);
    reader.wait_for_metric("user_watchers_active 0").await;
    reader.teardown().await;
    writer.teardown().await;
}
