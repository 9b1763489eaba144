//! gRPC-web, binary and text, unary and server streaming, over HTTP/1.1 and HTTP/2.

use base64::Engine;
use prost::Message;

use crate::helpers::*;

async fn call(
    client: &reqwest::Client,
    gw: &TestGateway,
    method: &str,
    body: Vec<u8>,
    text: bool,
) -> (reqwest::Response, Vec<u8>) {
    let content_type = if text {
        "application/grpc-web-text"
    } else {
        "application/grpc-web+proto"
    };
    let response = client
        .post(gw.url(&format!("/kitchen.v1.KitchenService/{method}")))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header("origin", ORIGIN)
        .body(body)
        .send()
        .await
        .unwrap();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap().to_vec();
    let mut rebuilt = reqwest::Response::from(http::Response::new(Vec::<u8>::new()));
    *rebuilt.headers_mut() = headers;
    (rebuilt, bytes)
}

#[tokio::test]
async fn unary_and_streaming_in_both_modes_over_both_http_versions() {
    let backend = Backend::start("web").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    for client in [h1(), h2()] {
        for text in [false, true] {
            let sink = kitchen::Sink {
                id: "w1".into(),
                big: i64::MIN,
                tags: vec!["x".into()],
                ..Default::default()
            };
            let (response, body) =
                call(&client, &gw, "Echo", grpc_web_request(&sink, text), text).await;
            let expected_type = if text {
                "application/grpc-web-text+proto"
            } else {
                "application/grpc-web+proto"
            };
            assert_eq!(response.headers()["content-type"], expected_type);
            assert_eq!(response.headers()["access-control-allow-origin"], ORIGIN);
            let reply = parse_grpc_web(&body, text);
            assert_eq!(reply.trailers["grpc-status"], "0", "text={text}");
            assert_eq!(reply.messages.len(), 1);
            let echoed = kitchen::Sink::decode(reply.messages[0].clone()).unwrap();
            assert_eq!(echoed.big, i64::MIN);
            assert_eq!(echoed.served_by, "web");

            let count = kitchen::CountRequest { n: 4, fail_code: 0 };
            let (_, body) = call(&client, &gw, "Count", grpc_web_request(&count, text), text).await;
            let reply = parse_grpc_web(&body, text);
            let indexes: Vec<u32> = reply
                .messages
                .iter()
                .map(|m| kitchen::Tick::decode(m.clone()).unwrap().index)
                .collect();
            assert_eq!(indexes, vec![0, 1, 2, 3]);
            assert_eq!(reply.trailers["grpc-status"], "0");
        }
    }
}

#[tokio::test]
async fn errors_travel_in_the_trailer_frame_or_trailers_only() {
    let backend = Backend::start("web").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let client = h1();
    // Status after messages: in the final 0x80 frame.
    let count = kitchen::CountRequest { n: 2, fail_code: 8 };
    let (_, body) = call(&client, &gw, "Count", grpc_web_request(&count, true), true).await;
    let reply = parse_grpc_web(&body, true);
    assert_eq!(reply.messages.len(), 2);
    assert_eq!(reply.trailers["grpc-status"], "8");
    assert_eq!(reply.trailers["grpc-message"], "stream failed");

    // Immediate failure: trailers-only, status in the headers, details kept.
    let fail = kitchen::FailRequest {
        code: 3,
        message: "bad name".into(),
        field: "name".into(),
    };
    let (response, body) = call(&client, &gw, "Fail", grpc_web_request(&fail, false), false).await;
    assert!(body.is_empty());
    assert_eq!(response.headers()["grpc-status"], "3");
    assert_eq!(response.headers()["grpc-message"], "bad name");
    let details = response.headers()["grpc-status-details-bin"]
        .to_str()
        .unwrap();
    let details = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(details.trim_end_matches('='))
        .unwrap();
    let status = meshgate_proto::google::rpc::Status::decode(details.as_slice()).unwrap();
    assert_eq!(
        status.details[0].type_url,
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(response.headers()["access-control-allow-origin"], ORIGIN);
}

#[tokio::test]
async fn text_body_with_padding_mid_stream_and_garbage() {
    let backend = Backend::start("web").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let client = h2();
    // One frame split in two separately padded base64 pieces.
    let sink = kitchen::Sink {
        id: "pad".into(),
        ..Default::default()
    };
    let payload = sink.encode_to_vec();
    let frame = meshgate_wire::grpc::message_frame(&payload);
    let (a, b) = frame.split_at(4);
    let engine = base64::engine::general_purpose::STANDARD;
    let body = format!("{}{}", engine.encode(a), engine.encode(b));
    assert!(engine.encode(a).ends_with('='));
    let (_, reply) = call(&client, &gw, "Echo", body.into_bytes(), true).await;
    let reply = parse_grpc_web(&reply, true);
    assert_eq!(
        kitchen::Sink::decode(reply.messages[0].clone()).unwrap().id,
        "pad"
    );

    let (response, body) = call(&client, &gw, "Echo", b"!!!not base64!!!".to_vec(), true).await;
    assert!(body.is_empty());
    assert_eq!(response.headers()["grpc-status"], "3");
    let (response, _) = call(&client, &gw, "Echo", vec![0, 0, 0, 0, 9, 1], false).await;
    assert_eq!(response.headers()["grpc-status"], "3");
    let (response, _) = call(&client, &gw, "Nope", grpc_web_request(&sink, false), false).await;
    assert_eq!(
        response.headers()["grpc-status"],
        "12",
        "unknown method is UNIMPLEMENTED"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_trailers_only_unavailable() {
    let nothing_listens = ClosedPort::new();
    let gw = spawn_gateway(&[nothing_listens.addr]).await;
    let sink = kitchen::Sink::default();
    let (response, body) = call(&h1(), &gw, "Echo", grpc_web_request(&sink, false), false).await;
    assert!(body.is_empty());
    assert_eq!(response.headers()["grpc-status"], "14");
    let message = response.headers()["grpc-message"].to_str().unwrap();
    assert!(
        !message.contains("127.0.0.1"),
        "no socket details leak: {message}"
    );
}

/// Over HTTP/1.1 every answer is framed — a unary one by its length, a stream chunked — so one
/// connection serves call after call (close-delimited bodies closed it after each).
#[tokio::test]
async fn an_http1_connection_serves_unary_and_streaming_calls_in_turn() {
    use http_body_util::BodyExt;

    let backend = Backend::start("web").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let echo = kitchen::Sink {
        id: "k1".into(),
        ..Default::default()
    };
    let count = kitchen::CountRequest { n: 3, fail_code: 0 };
    let calls = [
        ("Echo", grpc_web_request(&echo, false), 1),
        ("Count", grpc_web_request(&count, false), 3),
        ("Echo", grpc_web_request(&echo, false), 1),
    ];
    for (method, body, messages) in calls {
        sender
            .ready()
            .await
            .unwrap_or_else(|e| panic!("the connection closed before {method}: {e}"));
        let request = http::Request::post(format!("/kitchen.v1.KitchenService/{method}"))
            .header("host", gw.addr.to_string())
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let headers = response.headers().clone();
        let framed = headers.contains_key("content-length")
            || headers
                .get("transfer-encoding")
                .is_some_and(|value| value == "chunked");
        assert!(framed, "{method}: {headers:?}");
        assert_ne!(
            headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{method}"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let reply = parse_grpc_web(&body, false);
        assert_eq!(reply.trailers["grpc-status"], "0", "{method}");
        assert_eq!(reply.messages.len(), messages, "{method}");
    }
}
