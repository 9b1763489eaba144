//! Compressed gRPC-web requests (`grpc-encoding: gzip`, compressed-flag frames), binary and
//! text, over HTTP/1.1 and HTTP/2: decompressed for the upstream; a gzip bomb, an unknown
//! encoding, a flag without an encoding and corrupt data answer the gRPC spec's statuses.

use std::io::Write;

use edge_gateway::hooks::FilterChain;
use prost::Message;

use crate::helpers::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// One gRPC-web request frame, base64 for text mode.
fn body(flags: u8, payload: &[u8], text: bool) -> Vec<u8> {
    let frame = meshgate_wire::grpc::encode_frame(flags, payload);
    if text {
        meshgate_wire::grpc_web::encode_text(&frame).into_bytes()
    } else {
        frame
    }
}

async fn echo(
    client: &reqwest::Client,
    gw: &TestGateway,
    body: Vec<u8>,
    text: bool,
    encoding: Option<&str>,
) -> (http::HeaderMap, Vec<u8>) {
    let content_type = if text {
        "application/grpc-web-text"
    } else {
        "application/grpc-web+proto"
    };
    let mut request = client
        .post(gw.url("/kitchen.v1.KitchenService/Echo"))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("grpc-encoding", encoding);
    }
    let response = request.send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "gRPC-web answers 200 with a grpc-status"
    );
    let headers = response.headers().clone();
    (headers, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn gzip_messages_reach_the_upstream_decompressed() {
    let backend = Backend::start("gzip").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    for client in [h1(), h2()] {
        for text in [false, true] {
            let sink = kitchen::Sink {
                id: format!("gz-{text}"),
                big: i64::MIN,
                tags: vec!["compressible ".repeat(200), "second".into()],
                ..Default::default()
            };
            let plain = sink.encode_to_vec();
            let compressed = gzip(&plain);
            assert!(compressed.len() < plain.len() / 4);
            let (headers, reply) =
                echo(&client, &gw, body(1, &compressed, text), text, Some("gzip")).await;
            assert!(!headers.contains_key("grpc-status"), "{headers:?}");
            let reply = parse_grpc_web(&reply, text);
            assert_eq!(reply.trailers["grpc-status"], "0", "text={text}");
            let echoed = kitchen::Sink::decode(reply.messages[0].clone()).unwrap();
            assert_eq!(echoed.id, sink.id);
            assert_eq!(echoed.tags, sink.tags);
            assert_eq!(echoed.big, i64::MIN);
            assert_eq!(echoed.served_by, "gzip");

            // gzip announced, this message sent uncompressed (flag 0): passed as it is.
            let (_, reply) = echo(&client, &gw, body(0, &plain, text), text, Some("gzip")).await;
            let reply = parse_grpc_web(&reply, text);
            assert_eq!(reply.trailers["grpc-status"], "0");
            assert_eq!(
                kitchen::Sink::decode(reply.messages[0].clone()).unwrap().id,
                sink.id
            );
        }
    }
}

#[tokio::test]
async fn bombs_unknown_encodings_and_bad_flags_get_the_spec_statuses() {
    let backend = Backend::start("gzip").await;
    let mut config = test_config(&[backend.addr]);
    config.max_body_bytes = 64 * 1024;
    let gw = spawn_gateway_with(config, FilterChain::default()).await;
    let client = h2();
    let message = kitchen::Sink {
        id: "x".into(),
        ..Default::default()
    }
    .encode_to_vec();

    for text in [false, true] {
        // 32 MiB of zeros in ~32 KiB: inflating stops at max_body_bytes.
        let bomb = gzip(&vec![0u8; 32 << 20]);
        assert!(bomb.len() < 48 * 1024, "bomb is {} bytes", bomb.len());
        let (headers, reply) = echo(&client, &gw, body(1, &bomb, text), text, Some("gzip")).await;
        assert!(reply.is_empty(), "trailers-only");
        assert_eq!(
            headers["grpc-status"], "8",
            "RESOURCE_EXHAUSTED, text={text}"
        );
        assert!(
            headers["grpc-message"].to_str().unwrap().contains("65536"),
            "{headers:?}"
        );

        // An encoding the gateway cannot decode: UNIMPLEMENTED, saying what it accepts.
        let (headers, _) = echo(&client, &gw, body(1, &message, text), text, Some("snappy")).await;
        assert_eq!(headers["grpc-status"], "12", "text={text}");
        assert_eq!(headers["grpc-accept-encoding"], "identity,gzip");

        // The compressed flag without a compressing grpc-encoding: INTERNAL.
        for encoding in [None, Some("identity")] {
            let (headers, _) =
                echo(&client, &gw, body(1, &gzip(&message), text), text, encoding).await;
            assert_eq!(headers["grpc-status"], "13", "{encoding:?}, text={text}");
        }

        // Flagged as gzip but not gzip: INTERNAL, nothing reaches the service.
        let (headers, _) = echo(&client, &gw, body(1, &message, text), text, Some("gzip")).await;
        assert_eq!(headers["grpc-status"], "13", "text={text}");
        assert!(
            headers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("decompress"),
            "{headers:?}"
        );
    }
}
