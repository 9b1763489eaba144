//! `WatchUsers` (a server stream of the real user-service) through the gateway: native gRPC,
//! gRPC-web (binary and text, HTTP/1.1 and HTTP/2) and REST as Server-Sent Events, each read
//! incrementally: the first event must arrive while the stream is still open. Also: streams
//! outlive the request timeout, errors after the start (trailer frame, `event: error`), a client
//! that stops reading is cut off while writes go on, and clients that leave cancel the upstream
//! watch.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meshgate_proto::user;
use prost::Message;
use serde_json::{Value, json};

use crate::helpers::*;

/// A gateway in front of `service` whose request timeout (1 s) is shorter than the waits of
/// these tests: streams must not be bound by it.
async fn gateway_for(service: &UserService) -> TestGateway {
    let mut config = test_config(&[service.addr]);
    config.timeout = Duration::from_secs(1);
    spawn_gateway_with(config, Default::default()).await
}

/// Creates a user through the gateway's REST API; returns its id.
async fn create_user(gw: &TestGateway, name: &str) -> String {
    let created = h1()
        .post(gw.url("/v1/users"))
        .json(&json!({
            "name": name,
            "email": format!("{}@example.com", uuid::Uuid::new_v4().simple()),
            "age": 30,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `user_watchers_active` of the service.
async fn watchers(service: &UserService) -> u64 {
    let text = scrape_metrics(service.metrics_addr).await;
    meshgate_test_support::metrics_contract::value(&text, "user_watchers_active", &[])
        .unwrap_or(0.0) as u64
}

async fn wait_for_watchers(service: &UserService, wanted: u64) {
    eventually(&format!("{wanted} watchers on the service"), || async {
        watchers(service).await == wanted
    })
    .await;
}

/// The next body chunk within 10 s (`None`: the body ended).
async fn chunk(response: &mut reqwest::Response) -> Option<Bytes> {
    tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("a chunk within 10 s")
        .expect("the body reads")
}

#[tokio::test]
async fn native_grpc_streams_through_the_edge_beyond_the_request_timeout() {
    let service = UserService::start(sqlite_path()).await;
    let gw = gateway_for(&service).await;
    let mut client =
        user::user_service_client::UserServiceClient::connect(format!("http://{}", gw.addr))
            .await
            .unwrap();
    let mut stream = client
        .watch_users(user::WatchUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Idle for longer than the gateway's request timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = create_user(&gw, "Native").await;
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the stream goes on");
    assert_eq!(event.r#type, "user.created");
    assert_eq!(event.user_id, id);
    assert_eq!(event.user.unwrap().name, "Native");
    drop(stream);
    wait_for_watchers(&service, 0).await;
}

#[tokio::test]
async fn grpc_web_streams_frames_as_they_arrive_then_the_trailer_frame() {
    let service = UserService::start(sqlite_path()).await;
    let gw = gateway_for(&service).await;
    for (client, version) in [(h1(), "HTTP/1.1"), (h2(), "HTTP/2")] {
        for text in [false, true] {
            let content_type = if text {
                "application/grpc-web-text"
            } else {
                "application/grpc-web+proto"
            };
            let mut response = client
                .post(gw.url("/user.UserService/WatchUsers"))
                .header("content-type", content_type)
                .header("x-grpc-web", "1")
                .header("origin", ORIGIN)
                // The client's own deadline ends the stream (after the request timeout).
                .header("grpc-timeout", "2500m")
                .body(grpc_web_request(&user::WatchUsersRequest::default(), text))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["access-control-allow-origin"], ORIGIN);
            // Idle for longer than the gateway's request timeout, then a write.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let id = create_user(&gw, "Web").await;
            let mut body = BytesMut::new();
            let first = loop {
                let frames = grpc_web_frames(&body, text).0;
                if let Some(first) = frames.first() {
                    break first.clone();
                }
                let next = chunk(&mut response)
                    .await
                    .unwrap_or_else(|| panic!("{version} text={text}: ended before an event"));
                body.extend_from_slice(&next);
            };
            assert_eq!(first.0, 0, "{version} text={text}: a message frame first");
            let event = user::UserEvent::decode(first.1).unwrap();
            assert_eq!(
                (event.r#type.as_str(), event.user_id.as_str()),
                ("user.created", id.as_str())
            );
            // The first event came while the stream was still open: the rest follows.
            while let Some(next) = chunk(&mut response).await {
                body.extend_from_slice(&next);
            }
            let frames = grpc_web_frames(&body, text).0;
            let (flags, trailers) = frames.last().unwrap();
            assert_eq!(
                *flags, 0x80,
                "{version} text={text}: the trailer frame ends it"
            );
            let trailers = String::from_utf8(trailers.to_vec()).unwrap();
            assert!(
                trailers.contains("grpc-status:4"),
                "{version} text={text}: DEADLINE_EXCEEDED: {trailers}"
            );
        }
    }
    wait_for_watchers(&service, 0).await;
}

/// Reads SSE chunks until `text` holds a complete event with a `data:` field; returns (the
/// event's fields, all text read so far).
async fn next_sse_event(
    response: &mut reqwest::Response,
    text: &mut String,
) -> Vec<(String, String)> {
    loop {
        if let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let fields: Vec<(String, String)> = block
                .lines()
                .filter(|line| !line.starts_with(':') && !line.is_empty())
                .filter_map(|line| line.split_once(": "))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect();
            if !fields.is_empty() {
                return fields;
            }
            continue;
        }
        let next = chunk(response).await.expect("the event stream goes on");
        text.push_str(std::str::from_utf8(&next).unwrap());
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.as_str())
}

#[tokio::test]
async fn rest_serves_server_sent_events_incrementally_and_errors_as_an_error_event() {
    let mut service = UserService::start(sqlite_path()).await;
    let gw = gateway_for(&service).await;
    let watched = create_user(&gw, "Watched").await;
    let mut streams = Vec::new();
    for (client, query) in [(h1(), String::new()), (h2(), format!("?userId={watched}"))] {
        let mut response = client
            .get(gw.url(&format!("/v1/users:watch{query}")))
            .header("accept", "text/event-stream")
            .header("origin", ORIGIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        assert_eq!(response.headers()["access-control-allow-origin"], ORIGIN);
        if response.version() == reqwest::Version::HTTP_11 {
            // Chunks mark the end; a body framed by closing the connection would not.
            assert_eq!(response.headers()["transfer-encoding"], "chunked");
            assert_eq!(response.headers()["connection"], "keep-alive");
        }
        let opened = chunk(&mut response).await.unwrap();
        assert!(opened.starts_with(b":"), "a comment opens the stream");
        streams.push((response, String::new()));
    }
    wait_for_watchers(&service, 2).await;
    // Idle for longer than the gateway's request timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let other = create_user(&gw, "Other").await;
    let renamed = h1()
        .put(gw.url(&format!("/v1/users/{watched}")))
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);

    let (everyone, seen) = &mut streams[0];
    let first = next_sse_event(everyone, seen).await;
    assert_eq!(field(&first, "id"), Some("1"));
    let data: Value = serde_json::from_str(field(&first, "data").unwrap()).unwrap();
    assert_eq!(data["type"], "user.created");
    assert_eq!(data["userId"], other.as_str());
    // The unary responses' JSON mapping: camelCase names, int64 as strings.
    assert_eq!(data["user"]["name"], "Other");
    assert!(data["version"].is_string(), "{data}");
    let second = next_sse_event(everyone, seen).await;
    assert_eq!(field(&second, "id"), Some("2"));
    let data: Value = serde_json::from_str(field(&second, "data").unwrap()).unwrap();
    assert_eq!(
        (data["type"].as_str(), data["userId"].as_str()),
        (Some("user.updated"), Some(watched.as_str()))
    );

    // The filtered stream saw only the watched user's update.
    let (filtered, seen) = &mut streams[1];
    let only = next_sse_event(filtered, seen).await;
    let data: Value = serde_json::from_str(field(&only, "data").unwrap()).unwrap();
    assert_eq!(data["type"], "user.updated");
    assert_eq!(data["user"]["name"], "Renamed");

    // The service drains: its watchers end with UNAVAILABLE, which each stream reports as an
    // error event carrying the google.rpc.Status JSON, then ends.
    service.stop().await;
    for (response, seen) in &mut streams {
        let error = next_sse_event(response, seen).await;
        assert_eq!(field(&error, "event"), Some("error"), "{error:?}");
        let status: Value = serde_json::from_str(field(&error, "data").unwrap()).unwrap();
        assert_eq!(status["code"], 14, "{status}");
        assert!(status["message"].is_string());
        // Then the body ends right there: no byte after the error event, not even an empty
        // chunk (a chunk deadline of 10 s fails a stream that stays open).
        assert!(seen.is_empty(), "more after the error event: {seen:?}");
        let after = chunk(response).await;
        assert!(
            after.is_none(),
            "a chunk after the error event over {:?}: {after:?}",
            response.version()
        );
    }
}

#[tokio::test]
async fn a_malformed_filter_is_refused_before_the_stream_starts() {
    let service = UserService::start(sqlite_path()).await;
    let gw = gateway_for(&service).await;
    let response = h1()
        .get(gw.url("/v1/users:watch?userId=not-a-uuid"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert!(
        body.to_string().contains("user_id") || body.to_string().contains("userId"),
        "{body}"
    );
    assert_eq!(watchers(&service).await, 0);
}

/// Clients that leave (an HTTP/1.1 connection closed, an HTTP/2 stream reset) cancel their
/// upstream watch: the service's watcher gauge returns to 0.
#[tokio::test]
async fn clients_that_leave_cancel_the_upstream_watch() {
    let service = UserService::start(sqlite_path()).await;
    let gw = gateway_for(&service).await;
    let mut open = Vec::new();
    for client in [h1(), h2()] {
        let mut sse = client
            .get(gw.url("/v1/users:watch"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        chunk(&mut sse).await.unwrap();
        let web = client
            .post(gw.url("/user.UserService/WatchUsers"))
            .header("content-type", "application/grpc-web+proto")
            .body(grpc_web_request(&user::WatchUsersRequest::default(), false))
            .send()
            .await
            .unwrap();
        assert_eq!(web.status(), 200);
        open.push(sse);
        open.push(web);
    }
    wait_for_watchers(&service, 4).await;
    drop(open);
    wait_for_watchers(&service, 0).await;
    // The gateway is still fine.
    create_user(&gw, "After").await;
}

/// An event-stream client that stops reading (a 64 KiB HTTP/2 window): the gateway keeps
/// reading the upstream (the shared upstream connection never stalls, writes go on), buffers a
/// bounded number of messages for the client, then ends its stream with RESOURCE_EXHAUSTED and
/// cancels the upstream watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_while_writes_go_on() {
    let service = UserService::start(sqlite_path()).await;
    let gw = gateway_for(&service).await;
    let slow_client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(Some(65_535))
        .http2_initial_connection_window_size(Some(65_535))
        .build()
        .unwrap();
    let mut slow = slow_client
        .get(gw.url("/v1/users:watch"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    wait_for_watchers(&service, 1).await;
    // Enough events to fill the client's window and the gateway's buffer (256 messages).
    let writes = 600;
    for index in 0..writes {
        tokio::time::timeout(
            Duration::from_secs(10),
            create_user(&gw, &format!("Busy {index}")),
        )
        .await
        .expect("a write never waits for a slow watcher");
    }
    // The gateway cut the watch upstream once its buffer for the client was full.
    wait_for_watchers(&service, 0).await;
    let mut text = String::new();
    let mut events = 0;
    let error = loop {
        let fields = next_sse_event(&mut slow, &mut text).await;
        if field(&fields, "event") == Some("error") {
            break fields;
        }
        events += 1;
    };
    assert!(events < writes, "only what was buffered: {events}");
    let status: Value = serde_json::from_str(field(&error, "data").unwrap()).unwrap();
    assert_eq!(status["code"], 8, "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("behind"),
        "{status}"
    );
}
