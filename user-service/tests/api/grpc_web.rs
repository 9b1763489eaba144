//! gRPC-web served by the service itself (`GRPC_WEB`, tonic-web), checked the way the edge's
//! gRPC-web is: a real HTTP client over HTTP/1.1 and HTTP/2, binary and text bodies, the status
//! in the trailer frame of the body, CORS preflights from allowed and refused origins. Frames
//! are built and read with `meshgate-wire`'s codec (the edge gateway's), which is independent of
//! tonic-web.

use bytes::Bytes;
use http::HeaderMap;
use meshgate_proto::user::{GetUserRequest, GetUserResponse};
use meshgate_wire::grpc_web::{Frame, Mode, RequestDecoder, ResponseEncoder, decode_trailers};
use prost::Message;
use tonic_types::StatusExt;

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with, unique_email};

const ALLOWED: &str = "https://app.example";
const REFUSED: &str = "https://evil.example";

async fn spawn_with_grpc_web() -> TestApp {
    spawn_app_with(Backend::Sqlite, |config| {
        config.grpc_web = true;
        config.grpc_web_allowed_origins = vec![ALLOWED.to_owned()];
    })
    .await
}

fn h1() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

fn h2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

struct Reply {
    headers: HeaderMap,
    messages: Vec<Bytes>,
    trailers: HeaderMap,
}

/// One unary gRPC-web call of `method` from the browser origin `origin`.
async fn call(
    client: &reqwest::Client,
    app: &TestApp,
    method: &str,
    message: &impl Message,
    mode: Mode,
    origin: &str,
) -> Reply {
    let response = client
        .post(format!(
            "http://{}/user.UserService/{method}",
            app.grpc_addr
        ))
        .header("content-type", mode.content_type())
        // tonic-web picks the response encoding from `accept`, as grpc-web clients send it.
        .header("accept", mode.content_type())
        .header("x-grpc-web", "1")
        .header("origin", origin)
        .body(ResponseEncoder::new(mode).message(&message.encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "gRPC-web answers in grpc-status");
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    let mut decoder = RequestDecoder::new(mode, 1 << 20);
    let mut frames = Vec::new();
    decoder.push(&body, &mut frames).unwrap();
    decoder.finish(&mut frames).unwrap();
    let (trailer_frames, message_frames): (Vec<Frame>, Vec<Frame>) =
        frames.into_iter().partition(Frame::is_trailers);
    let trailers = match trailer_frames.as_slice() {
        [frame] => decode_trailers(&frame.payload),
        // Trailers-only: the status is in the headers.
        [] => headers.clone(),
        more => panic!("{} trailer frames", more.len()),
    };
    Reply {
        headers,
        messages: message_frames.into_iter().map(|f| f.payload).collect(),
        trailers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_user_in_both_modes_over_both_http_versions() {
    let app = spawn_with_grpc_web().await;
    let user = app
        .create("Grace Hopper", &unique_email(), 85)
        .await
        .unwrap();
    for (version, client) in [("HTTP/1.1", h1()), ("HTTP/2", h2())] {
        for mode in [Mode::Binary, Mode::Text] {
            let request = GetUserRequest {
                id: user.id.clone(),
            };
            let reply = call(&client, &app, "GetUser", &request, mode, ALLOWED).await;
            let content_type = reply.headers["content-type"].to_str().unwrap();
            assert!(
                content_type.starts_with(match mode {
                    Mode::Binary => "application/grpc-web",
                    Mode::Text => "application/grpc-web-text",
                }) && (mode == Mode::Text || !content_type.contains("text")),
                "{version} {mode:?}: {content_type}"
            );
            assert_eq!(reply.headers["access-control-allow-origin"], ALLOWED);
            assert_eq!(reply.trailers["grpc-status"], "0", "{version} {mode:?}");
            assert_eq!(reply.messages.len(), 1, "{version} {mode:?}");
            let got = GetUserResponse::decode(reply.messages[0].clone())
                .unwrap()
                .user
                .unwrap();
            assert_eq!(got, user, "{version} {mode:?}");
        }
    }
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_their_grpc_status_and_message() {
    let app = spawn_with_grpc_web().await;
    for mode in [Mode::Binary, Mode::Text] {
        let missing = GetUserRequest {
            id: uuid::Uuid::new_v4().to_string(),
        };
        let reply = call(&h2(), &app, "GetUser", &missing, mode, ALLOWED).await;
        assert!(reply.messages.is_empty());
        assert_eq!(reply.trailers["grpc-status"], "5", "{mode:?}: NOT_FOUND");

        let malformed = GetUserRequest {
            id: "not-a-uuid".to_owned(),
        };
        let reply = call(&h1(), &app, "GetUser", &malformed, mode, ALLOWED).await;
        assert_eq!(
            reply.trailers["grpc-status"], "3",
            "{mode:?}: INVALID_ARGUMENT"
        );
        // The rich error details survive the trip: the field is named.
        let status = tonic::Status::from_header_map(&reply.trailers).unwrap();
        assert_eq!(
            status
                .get_error_details()
                .bad_request()
                .unwrap()
                .field_violations[0]
                .field,
            "id",
            "{mode:?}"
        );
        // Browsers may read the status only if it is exposed to them.
        let exposed = reply.headers["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(exposed.contains("grpc-status"), "{exposed}");
    }
    app.teardown().await;
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    h1().request(
        reqwest::Method::OPTIONS,
        format!("http://{}/user.UserService/GetUser", app.grpc_addr),
    )
    .header("origin", origin)
    .header("access-control-request-method", "POST")
    .header(
        "access-control-request-headers",
        "content-type,x-grpc-web,x-user-agent,x-tenant",
    )
    .send()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_listed_origin_and_no_other() {
    let app = spawn_with_grpc_web().await;
    let allowed = preflight(&app, ALLOWED).await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(headers["access-control-allow-origin"], ALLOWED);
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let allow_headers = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allow_headers.contains("x-grpc-web") && allow_headers.contains("x-tenant"),
        "custom metadata may be sent: {allow_headers}"
    );

    // A refused origin gets no grant, so the browser blocks the call: neither the preflight
    // nor a call made anyway carries Access-Control-Allow-Origin.
    let refused = preflight(&app, REFUSED).await;
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "{:?}",
        refused.headers()
    );
    let request = GetUserRequest {
        id: uuid::Uuid::new_v4().to_string(),
    };
    let reply = call(&h2(), &app, "GetUser", &request, Mode::Binary, REFUSED).await;
    assert!(reply.headers.get("access-control-allow-origin").is_none());
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_is_off_by_default() {
    let app = spawn_app(Backend::Sqlite).await;
    let user = app.create("Off", &unique_email(), 30).await.unwrap();
    let request = GetUserRequest { id: user.id };
    // HTTP/1.1 is not served at all, and over HTTP/2 a gRPC-web body is not understood.
    let url = format!("http://{}/user.UserService/GetUser", app.grpc_addr);
    let body = ResponseEncoder::new(Mode::Binary).message(&request.encode_to_vec());
    let over_h1 = h1()
        .post(&url)
        .header("content-type", Mode::Binary.content_type())
        .body(body.clone())
        .send()
        .await;
    assert!(over_h1.is_err(), "HTTP/1.1 answered: {over_h1:?}");
    let over_h2 = h2()
        .post(&url)
        .header("content-type", Mode::Binary.content_type())
        .header("origin", ALLOWED)
        .body(body)
        .send()
        .await
        .unwrap();
    let content_type = over_h2
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        !content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/grpc-web")),
        "answered as gRPC-web: {content_type:?}"
    );
    assert!(
        over_h2
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    app.teardown().await;
}
