//! Waiting on conditions instead of sleeping for a guessed time, and a port held closed.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// How long [`eventually`] waits before failing the test.
pub const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it is true; fails the test naming `what` after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(PATIENCE, what, check).await;
}

/// [`eventually`] with another patience, for what is known to be slow (compiling wasm modules
/// in a debug build).
pub async fn eventually_within<F, Fut>(patience: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn listening(addr: SocketAddr) {
    eventually(&format!("something to listen on {addr}"), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

/// A loopback port bound without listening: connecting to it is refused, and no other test can
/// take it while this value lives (a port found by binding and dropping could be reused by a
/// parallel test before the test uses it).
pub struct ClosedPort {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind a loopback port");
        let addr = socket.local_addr().expect("the bound address");
        Self {
            addr,
            _socket: socket,
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// Waits until the gRPC server at `addr` reports SERVING on `grpc.health.v1` (the
/// user-service is NOT_SERVING until its first database probe).
#[cfg(feature = "grpc")]
pub async fn grpc_serving(addr: SocketAddr) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    eventually(
        &format!("the gRPC server on {addr} to report SERVING"),
        || async {
            let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("a valid URI")
                .connect()
                .await
            else {
                return false;
            };
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_ok_and(|response| response.get_ref().status == ServingStatus::Serving as i32)
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_refuses_connections_while_held() {
        let closed = ClosedPort::new();
        let error = tokio::net::TcpStream::connect(closed.addr)
            .await
            .expect_err("nothing listens");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        // Held: nobody else can bind it meanwhile.
        assert!(std::net::TcpListener::bind(closed.addr).is_err());
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for never")]
    async fn eventually_names_what_never_happened() {
        tokio::time::pause();
        eventually("never", || async { false }).await;
    }
}
