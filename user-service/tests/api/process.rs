//! The `user-service` binary as a child process: started with a clean environment, its JSON log
//! read for the addresses it listens on, signalled like Kubernetes does.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BINARY: &str = env!("CARGO_BIN_EXE_user-service");

/// The binary with an empty environment but `env`, loopback port 0 for both listeners and
/// stdout/stderr piped.
pub fn command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("GRPC_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

pub struct ServiceProcess {
    pub child: Child,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Every stdout line so far (JSON logs).
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
    /// Raised: the reader stops reading stdout but keeps the pipe open (a stalled log reader).
    reading_paused: tokio::sync::watch::Sender<bool>,
}

impl ServiceProcess {
    /// Spawns `command` and waits (up to 30 s) for its "user-service listening" log line.
    pub async fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("the user-service binary starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = stdout.next_line().await.expect("stdout is readable") {
                lines.lock().unwrap().push(line.clone());
                let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if log["fields"]["message"] == "user-service listening" {
                    let addr = |field: &str| {
                        log["fields"][field]
                            .as_str()
                            .and_then(|addr| addr.parse().ok())
                            .expect("the log names the address")
                    };
                    return (addr("grpc_addr"), addr("metrics_addr"));
                }
            }
            panic!("the service exited before listening");
        })
        .await
        .expect("the service starts within 30 s");
        let (grpc_addr, metrics_addr) = listening;
        let (reading_paused, mut paused) = tokio::sync::watch::channel(false);
        let reader = tokio::spawn({
            let lines = lines.clone();
            async move {
                loop {
                    if paused.wait_for(|paused| !*paused).await.is_err() {
                        // The ServiceProcess is gone; keep draining so the child never blocks.
                        while let Ok(Some(_)) = stdout.next_line().await {}
                        return;
                    }
                    match stdout.next_line().await {
                        Ok(Some(line)) => lines.lock().unwrap().push(line),
                        _ => return,
                    }
                }
            }
        });
        Self {
            child,
            grpc_addr,
            metrics_addr,
            lines,
            reader,
            reading_paused,
        }
    }

    /// Stops reading the child's stdout without closing it: its pipe fills up and stays full,
    /// as when a container runtime stops draining a container's output.
    pub fn pause_reading_stdout(&self) {
        self.reading_paused.send_replace(true);
    }

    pub async fn signal(&self, signal: &str) {
        crate::throwaway::signal(self.child.id().expect("running"), signal).await;
    }

    /// Waits (up to 60 s) for the exit; answers the status and the whole log.
    pub async fn exited(mut self) -> (std::process::ExitStatus, String) {
        self.reading_paused.send_replace(false);
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("exits within 60 s")
            .expect("an exit status");
        let _ = self.reader.await;
        let log = self.lines.lock().unwrap().join("\n");
        (status, log)
    }
}
