//! Downstream connection limits: slow header senders (slowloris) are closed at the header
//! deadline while others are served, idle HTTP/1.1 and HTTP/2 connections are closed, caps
//! refuse with a clear 503, the open-file limit is never reached, and a broken chunked body
//! closes its connection.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::helpers::*;

/// Reads until the peer closes (or errors); returns what was read, or `None` after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| seen)
}

async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// The gateway answers the connection 503 "too many open connections" and closes it.
async fn assert_refused(mut stream: TcpStream) {
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("refused connections are closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many open connections"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_senders_are_closed_at_the_deadline_while_others_are_served() {
    const SLOW: usize = 2_000;
    let backend = Backend::start("fast").await;
    let mut config = test_config(&[backend.addr]);
    config.connections.header_read_timeout = Duration::from_secs(1);
    let gw = spawn_gateway_with(config, Default::default()).await;

    // Each slow client sends a request line, then one header line every 300 ms: every read
    // makes progress, so only a deadline on the whole header closes them.
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let addr = gw.addr;
        slow.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /v1/sinks/slow HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
            for line in 0.. {
                let mut probe = [0u8; 1];
                tokio::select! {
                    read = stream.read(&mut probe) => {
                        // Closed by the gateway (0 bytes or reset): done, and no answer given.
                        assert!(matches!(read, Ok(0) | Err(_)), "a slow request was answered");
                        return line;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
                if stream
                    .write_all(format!("x-slow-{line}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return line;
                }
            }
            unreachable!()
        }));
    }
    // Meanwhile, well-behaved clients are served. A connection each, closed after its answer:
    // a kept-alive one would sit idle past the header deadline and be counted too.
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..20 {
        let response = client.get(gw.url("/v1/sinks/ok")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let lines = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(slow))
        .await
        .expect("every slow client is closed");
    let lines: Vec<usize> = lines.into_iter().map(Result::unwrap).collect();
    // At 300 ms a line and a 1 s deadline, none got far (a per-read timeout never fires).
    assert!(lines.iter().all(|&n| n <= 10), "{:?}", lines.iter().max());
    // Each close is counted once (the count may trail the client seeing the close by a
    // moment); the fast clients are not counted.
    eventually(
        "every slow client to be counted as a header timeout",
        || async { gw.metric("meshgate_gateway_header_timeouts_total", &[]) >= SLOW as f64 },
    )
    .await;
    assert_eq!(
        gw.metric("meshgate_gateway_header_timeouts_total", &[]),
        SLOW as f64
    );
}

#[tokio::test]
async fn idle_http1_and_http2_connections_are_closed() {
    let backend = Backend::start("idle").await;
    let mut config = test_config(&[backend.addr]);
    config.connections.idle_timeout = Duration::from_secs(1);
    let gw = spawn_gateway_with(config, Default::default()).await;

    // HTTP/1.1 keep-alive: one request, then silence.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let seen = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("idle keep-alive connection closed");
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );

    // HTTP/2 (h2c): one request, then silence until the gateway closes the connection.
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(gw.addr).await.unwrap());
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/healthz", gw.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("idle HTTP/2 connection closed by the gateway")
        .unwrap()
        .ok();
}

#[tokio::test]
async fn connection_caps_refuse_with_a_503_and_spare_established_clients() {
    let backend = Backend::start("caps").await;
    let mut config = test_config(&[backend.addr]);
    config.connections.max = 6;
    config.connections.max_per_client_ip = 3;
    let gw = spawn_gateway_with(config, Default::default()).await;
    let refused = |reason: &str| {
        gw.metric(
            "meshgate_gateway_connections_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(
        (refused("max_per_client_ip"), refused("max_connections")),
        (0.0, 0.0)
    );

    // An established keep-alive client.
    let established = reqwest::Client::builder()
        .http1_only()
        .local_address("127.0.0.1".parse::<std::net::IpAddr>().unwrap())
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    assert_eq!(get_status(&established, gw.url("/v1/sinks/e")).await, 200);
    // Two more from 127.0.0.1 fill its share of 3; the next is refused.
    let mut held = vec![
        connect_from("127.0.0.1", gw.addr).await,
        connect_from("127.0.0.1", gw.addr).await,
    ];
    eventually("3 connections admitted", || async {
        gw.open_connections() == 3
    })
    .await;
    assert_refused(connect_from("127.0.0.1", gw.addr).await).await;
    // Other addresses still get in, up to the total of 6.
    for local in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        held.push(connect_from(local, gw.addr).await);
    }
    eventually("6 connections admitted", || async {
        gw.open_connections() == 6
    })
    .await;
    assert_refused(connect_from("127.0.0.5", gw.addr).await).await;
    // The established client keeps being served on its connection.
    for _ in 0..5 {
        assert_eq!(get_status(&established, gw.url("/v1/sinks/e")).await, 200);
    }
    // Each refusal counted once, under its reason.
    assert_eq!(refused("max_per_client_ip"), 1.0);
    assert_eq!(refused("max_connections"), 1.0);
    drop(held);
}

#[tokio::test]
async fn a_broken_chunked_body_closes_the_connection() {
    let backend = Backend::start("chunks").await;
    let gw = spawn_gateway(&[backend.addr]).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n\
              GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let seen = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the gateway closes the connection after the framing error");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 400"), "{seen}");
    assert_eq!(
        seen.matches("HTTP/1.1").count(),
        1,
        "nothing after the broken body is read as a request: {seen}"
    );
}

/// A well-formed id no user has.
const MISSING: &str = "00000000-0000-4000-8000-00000000fd00";

/// Kills the child process when the test ends, passed or not.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_open_file_limit_is_never_reached_and_established_clients_keep_service() {
    use std::{
        io::{Read, Write},
        process::{Command, Stdio},
    };
    // The gateway binary under a 512-descriptor limit: it caps connections at 512 - 256.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backend = runtime.block_on(Backend::start("fd"));
    let config = binary_config(
        ANY_PORT,
        0,
        &format!(
            "  upstreams: [\"{}\"]\n  connections: {{max: 100000, header_read_timeout_ms: 60000}}\n",
            backend.addr
        ),
    );
    let mut child = ChildGuard(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 512 && exec {} --config {}",
                env!("CARGO_BIN_EXE_edge-gateway"),
                config.display()
            ))
            .env("RUST_LOG", "info,pingora=warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = ChildLog::collect(&mut child.0);
    let (addr, _) = runtime.block_on(log.listening());
    let get = |stream: &mut std::net::TcpStream, path: &str| -> String {
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut established = (0..200)
        .find_map(|_| {
            std::net::TcpStream::connect(addr).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(25));
                None
            })
        })
        .expect("gateway listening");
    assert!(get(&mut established, "/healthz").starts_with("HTTP/1.1 200"));
    // 400 more connections: 255 are admitted, the rest refused with a 503 (never an accept()
    // failing on EMFILE, which would stall every new connection).
    let streams: Vec<std::net::TcpStream> = (0..400)
        .map(|_| {
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect();
    let answered = |stream: &std::net::TcpStream| {
        let mut buf = [0u8; 16];
        match stream.peek(&mut buf) {
            Ok(n) if n > 0 => Some(buf.starts_with(b"HTTP/1.1 503")),
            _ => None,
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while streams.iter().filter(|s| answered(s).is_some()).count() < 145
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = streams.iter().filter(|s| answered(s) == Some(true)).count();
    let idle: Vec<_> = streams.iter().filter(|s| answered(s).is_none()).collect();
    assert_eq!(
        idle.len(),
        255,
        "admitted up to the cap below the descriptor limit"
    );
    assert_eq!(refused, 145);
    // The established client is still served, through an upstream connection opened now (the
    // upstream's own answer: its in-memory user service knows no such user).
    established
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for _ in 0..3 {
        let answer = get(&mut established, &format!("/v1/users/{MISSING}"));
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(
            answer.contains(&format!("user {MISSING} not found")),
            "{answer}"
        );
    }
    drop(child);
    drop(idle);
    drop(backend);
}
