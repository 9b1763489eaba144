//! The edge gateway's binary as a child process: its JSON log lines, and the addresses it
//! bound (it is started on port 0, so no other test can take its ports first).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A gateway process's stdout (JSON log lines), collected line by line as it writes them.
///
/// Start the gateway with `listen` (and `metrics_listen`) on port 0: it binds its sockets
/// itself and reports their addresses in its "listening" line ([`ChildLog::listening`]). A port
/// picked free by the test and released could be taken by a parallel test before the child
/// binds it.
pub struct ChildLog {
    lines: Arc<Mutex<Vec<String>>>,
}

impl ChildLog {
    /// Collects `child`'s stdout, which must be piped (and logging at info).
    pub fn collect(child: &mut std::process::Child) -> Self {
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().expect("the log lock").push(line);
            }
        });
        Self { lines }
    }

    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("the log lock").clone()
    }

    /// The main and metrics addresses the gateway listens on, from its "listening" line
    /// (written once its sockets are bound; after its filters' modules compiled, which takes
    /// seconds in a debug build).
    pub async fn listening(&self) -> (SocketAddr, Option<SocketAddr>) {
        let found = Arc::new(Mutex::new(None));
        crate::wait::eventually_within(SLOW_START, "the gateway's listening line", || {
            let found = found.clone();
            async move {
                let line = self.lines().into_iter().find_map(|line| {
                    let record: serde_json::Value = serde_json::from_str(&line).ok()?;
                    let fields = &record["fields"];
                    let addr = fields["listen"].as_str()?.parse().ok()?;
                    // Logged as `Some(127.0.0.1:9091)` or `None`.
                    let metrics = fields["metrics"]
                        .as_str()?
                        .strip_prefix("Some(")
                        .and_then(|rest| rest.strip_suffix(')'))
                        .map(|addr| addr.parse().expect("a metrics address"));
                    Some((addr, metrics))
                });
                let seen = line.is_some();
                *found.lock().expect("the lock") = line;
                seen
            }
        })
        .await;
        found
            .lock()
            .expect("the lock")
            .take()
            .expect("the line was found")
    }
}

/// How long a gateway process may take to start: compiling wasm modules takes seconds in a
/// debug build, more on a loaded machine.
pub const SLOW_START: Duration = Duration::from_secs(60);

/// Waits until the gateway on `addr` answers `GET /readyz` with 200 (it serves and has a
/// healthy upstream).
pub async fn ready(addr: SocketAddr) {
    let what = format!("the gateway on {addr} to be ready");
    crate::wait::eventually_within(SLOW_START, &what, || answers_ready(addr)).await;
}

async fn answers_ready(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = b"GET /readyz HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n";
    let mut response = Vec::new();
    stream.write_all(request).await.is_ok()
        && stream.read_to_end(&mut response).await.is_ok()
        && response.starts_with(b"HTTP/1.1 200")
}
