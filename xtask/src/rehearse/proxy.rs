//! ClusterIP Services as kube-proxy's userspace mode implemented them: a listener on the
//! virtual IP and port (in the node namespace) that hands each new connection to one of the
//! Service's ready endpoints in turn, and refuses connections while there is none (as the
//! iptables mode's REJECT rule does). Endpoints follow pod readiness (an EndpointSlice).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The ready endpoints of one Service port, shared with its listener.
#[derive(Debug, Default)]
pub struct Endpoints {
    addresses: RwLock<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// Connections handed to an endpoint / refused for want of one.
    pub forwarded: AtomicUsize,
    pub refused: AtomicUsize,
}

impl Endpoints {
    pub fn set(&self, addresses: Vec<SocketAddr>) {
        *self.addresses.write().unwrap_or_else(|e| e.into_inner()) = addresses;
    }

    fn pick(&self) -> Option<SocketAddr> {
        let addresses = self.addresses.read().unwrap_or_else(|e| e.into_inner());
        if addresses.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(addresses[turn % addresses.len()])
    }
}

/// Listens on `vip` and forwards until the returned task is aborted.
pub async fn serve(vip: SocketAddr, endpoints: Arc<Endpoints>) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(vip).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                continue;
            };
            let Some(target) = endpoints.pick() else {
                // Closed at once: the client's connection ends before any byte.
                endpoints.refused.fetch_add(1, Ordering::Relaxed);
                drop(inbound);
                continue;
            };
            endpoints.forwarded.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut inbound = inbound;
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_rotate_over_ready_endpoints_and_are_refused_without_any() {
        let mut backends = Vec::new();
        for id in [b'a', b'b'] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            backends.push(listener.local_addr().unwrap());
            tokio::spawn(async move {
                loop {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    socket.write_all(&[id]).await.unwrap();
                }
            });
        }
        let endpoints = Arc::new(Endpoints::default());
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let vip = probe.local_addr().unwrap();
        drop(probe);
        let task = serve(vip, endpoints.clone()).await.unwrap();
        let read_one = || async {
            let mut socket = TcpStream::connect(vip).await.unwrap();
            let mut byte = [0u8; 1];
            match socket.read(&mut byte).await {
                Ok(1) => Some(byte[0]),
                _ => None,
            }
        };
        assert_eq!(
            read_one().await,
            None,
            "no endpoint: the connection is reset"
        );
        endpoints.set(backends.clone());
        let mut seen = vec![read_one().await.unwrap(), read_one().await.unwrap()];
        seen.sort_unstable();
        assert_eq!(seen, [b'a', b'b']);
        assert_eq!(endpoints.refused.load(Ordering::Relaxed), 1);
        assert_eq!(endpoints.forwarded.load(Ordering::Relaxed), 2);
        task.abort();
    }
}
