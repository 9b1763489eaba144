//! The real user-service in process, on embedded SQLite: what the gateway's tests put behind
//! the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use user_service::{Application, Config};

/// A fresh SQLite file name in the temp dir.
pub fn sqlite_path() -> PathBuf {
    std::env::temp_dir().join(format!("meshgate-test-{}.db", uuid::Uuid::new_v4()))
}

/// The embedded config on `sqlite_path` (gRPC and metrics on port 0, bound by the service
/// itself) with test timings: a quick first readiness probe, a short shutdown grace.
pub fn config(sqlite_path: PathBuf) -> Config {
    let mut config = Config::embedded(sqlite_path);
    config.shutdown_grace_secs = 1;
    config.health_probe_interval_ms = 100;
    config
}

/// A running user-service; stopped by [`EmbeddedUserService::stop`] or when dropped.
pub struct EmbeddedUserService {
    pub addr: SocketAddr,
    /// Its `/metrics` (HTTP).
    pub metrics_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl EmbeddedUserService {
    /// On the SQLite file `sqlite_path` (two services on one file share their users).
    pub async fn start(sqlite_path: PathBuf) -> Self {
        Self::start_with(config(sqlite_path)).await
    }

    /// With `config`; returns once it reports SERVING (NOT_SERVING until its first database
    /// probe: a gateway started earlier would take it out of rotation).
    pub async fn start_with(config: Config) -> Self {
        let app = Application::build(config)
            .await
            .expect("the user-service starts");
        let addr = app.grpc_addr();
        let metrics_addr = app.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = app
                .run_until_stopped(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        crate::wait::grpc_serving(addr).await;
        Self {
            addr,
            metrics_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops accepting, drains (`shutdown_grace_secs`) and waits for the service to exit.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
