//! A TCP proxy the tests put in front of the real PostgreSQL, to cut the database off (close
//! every connection and refuse new ones), pause traffic, and restore it.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Bytes are held (connections stay up) until the state changes.
    Paused,
    /// Every connection is closed and new ones are dropped on accept.
    Cut,
}

pub struct TcpProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (state, _) = watch::channel(State::Open);
        let states = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *states.borrow() == State::Cut {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let state = states.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = pump(client_read, server_write, state.clone()) => {}
                        () = pump(server_read, client_write, state) => {}
                    }
                });
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    pub fn pause(&self) {
        self.state.send_replace(State::Paused);
    }

    pub fn restore(&self) {
        self.state.send_replace(State::Open);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.state.send_replace(State::Cut);
        self.accept.abort();
    }
}

/// Copies one direction, holding bytes while paused and returning (closing both halves) on cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = state.wait_for(|s| *s == State::Cut) => {
                let _ = changed;
                return;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match state.wait_for(|s| *s != State::Paused).await.map(|s| *s) {
            Ok(State::Open) => {}
            _ => return,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
