//! Native gRPC (h2c, prior knowledge) through the gateway with a tonic client.

use std::time::Duration;

use prost::Message;
use tokio_stream::StreamExt;

use crate::helpers::*;

#[tokio::test]
async fn unary_streaming_and_concurrency_pass_through() {
    let backend = Backend::start("native").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let mut client = kitchen_client(gw.addr).await;
    let echoed = client
        .echo(kitchen::Sink {
            id: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echoed.served_by, "native");

    let mut stream = client
        .count(kitchen::CountRequest { n: 5, fail_code: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(tick) = stream.next().await {
        seen.push(tick.unwrap().index);
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);

    // Many concurrent calls over one downstream connection (upstream h2 streams > 1).
    let calls = (0..32).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .slow(kitchen::SlowRequest { millis: 100 })
                .await
                .map(|_| i)
        }
    });
    let started = std::time::Instant::now();
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    // Sanity bound, not a benchmark: serialised calls would need 3.2 s.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "calls were not multiplexed"
    );
}

#[tokio::test]
async fn error_status_and_details_arrive_in_trailers() {
    let backend = Backend::start("native").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let mut client = kitchen_client(gw.addr).await;
    let status = client
        .fail(kitchen::FailRequest {
            code: 6,
            message: "exists".into(),
            field: "id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert_eq!(status.message(), "exists");
    let details = meshgate_proto::google::rpc::Status::decode(status.details()).unwrap();
    assert_eq!(details.code, 6);

    let mut stream = client
        .count(kitchen::CountRequest { n: 1, fail_code: 9 })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn gateway_errors_for_grpc_clients_are_grpc_statuses() {
    let nothing_listens = ClosedPort::new();
    let gw = spawn_gateway(&[nothing_listens.addr]).await;
    let mut client = kitchen_client(gw.addr).await;
    let status = client.echo(kitchen::Sink::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    let backend = Backend::start("slow").await;
    let mut config = test_config(&[backend.addr]);
    config.timeout = Duration::from_millis(300);
    let gw = spawn_gateway_with(config, Default::default()).await;
    let mut client = kitchen_client(gw.addr).await;
    let status = client
        .slow(kitchen::SlowRequest { millis: 3000 })
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_at_the_edge() {
    let backend = Backend::start("limits").await;
    let mut config = test_config(&[backend.addr]);
    config.max_body_bytes = 4 * 1024;
    let gw = spawn_gateway_with(config, Default::default()).await;
    let mut client = kitchen_client(gw.addr).await;
    let sink = |bytes: usize| kitchen::Sink {
        blob: vec![1u8; bytes],
        ..Default::default()
    };
    let fits = client.echo(sink(3 * 1024)).await.unwrap().into_inner();
    assert_eq!(fits.blob.len(), 3 * 1024);
    let refused = client.echo(sink(64 * 1024)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("4096"), "{}", refused.message());
    // The connection and the gateway carry on.
    let after = client.echo(sink(10)).await.unwrap().into_inner();
    assert_eq!(after.served_by, "limits");
}
