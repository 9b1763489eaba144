//! Servers a fault test may stop and kill: a Redis and a PostgreSQL cluster of its own, started
//! from the installed binaries on free loopback ports and removed when dropped. The shared
//! test servers are never touched.
//!
//! These servers take a port number, so a port is found by binding and releasing, and a
//! parallel test may take it before the server binds it. The server then fails to start (or,
//! for a restart on its port, the test fails saying so); a first start is tried again on
//! another port. Readiness checks that the server answering is this one (its pid, its name),
//! never another test's on a reused port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How many ports a first start tries before the test fails.
const PORT_ATTEMPTS: usize = 5;

/// How long a server may take to answer once started.
const START_PATIENCE: Duration = Duration::from_secs(5);

/// A loopback port with nothing listening (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Sends `signal` (`STOP`, `CONT`, `TERM`, `KILL`) to a process.
pub async fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("user-service-{what}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

// === Redis ===

pub struct ThrowawayRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ThrowawayRedis {
    pub async fn start() -> Self {
        let mut redis = Self {
            port: 0,
            dir: temp_dir("redis"),
            child: None,
        };
        for _ in 0..PORT_ATTEMPTS {
            redis.port = free_port();
            if redis.launch().await {
                return redis;
            }
        }
        panic!("the throwaway Redis lost {PORT_ATTEMPTS} ports to other processes");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("redis is running")
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        assert!(
            self.launch().await,
            "the throwaway Redis could not bind its port {} again",
            self.port
        );
    }

    /// Starts the server on `self.port`; false when it exited before answering (the port was
    /// taken).
    async fn launch(&mut self) -> bool {
        let server = ["valkey-server", "redis-server"]
            .into_iter()
            .find(|name| which(name).is_some())
            .expect("redis-server or valkey-server is installed (apt-get install -y redis-server)");
        let mut child = Command::new(server)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis starts");
        let pid = child.id().expect("just started");
        let url = self.url();
        let deadline = tokio::time::Instant::now() + START_PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if child.try_wait().expect("the child's status").is_some() {
                return false;
            }
            if redis_pid(&url).await == Some(pid) {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the throwaway Redis did not answer");
    }

    /// Sends `sig` and, for a terminating signal, waits until the process is gone.
    pub async fn signal(&mut self, sig: &str) {
        signal(self.pid(), sig).await;
        if matches!(sig, "TERM" | "KILL") {
            let mut child = self.child.take().expect("running");
            tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .expect("redis exits")
                .expect("redis exit status");
        }
    }
}

/// The pid of the Redis server answering at `url` (`INFO server`), if one answers.
async fn redis_pid(url: &str) -> Option<u32> {
    let info = async {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut connection)
            .await
            .ok()
    };
    let info = tokio::time::timeout(Duration::from_millis(500), info)
        .await
        .ok()??;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // A stopped process must be continued to die of SIGKILL's aftermath cleanly.
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

// === PostgreSQL ===

/// A PostgreSQL cluster in a temp dir (`initdb` + `pg_ctl`), trust auth, user `postgres`.
/// As root, the server runs as the `postgres` user (initdb refuses root).
pub struct ThrowawayPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
}

impl ThrowawayPostgres {
    pub async fn start() -> Self {
        let bin = postgres_bin_dir().expect(
            "PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on PATH \
             (apt-get install -y postgresql)",
        );
        let dir = temp_dir("pg");
        let run_as = is_root().then(|| {
            if user_exists("postgres") {
                "postgres"
            } else {
                "nobody"
            }
        });
        if let Some(user) = run_as {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(&dir)
                .status()
                .await
                .expect("chown runs");
            assert!(status.success());
        }
        let mut cluster = Self {
            dir,
            bin,
            port: 0,
            run_as,
        };
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(cluster.data()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        succeed("initdb", initdb).await;
        for _ in 0..PORT_ATTEMPTS {
            cluster.port = free_port();
            match cluster.try_start_server().await {
                Ok(()) => return cluster,
                Err(log) if log.contains("already in use") => {}
                Err(log) => panic!("pg_ctl start: {log}"),
            }
        }
        panic!("the throwaway PostgreSQL lost {PORT_ATTEMPTS} ports to other processes");
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        };
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    /// The URL of database `name` (create it with [`Self::create_database`]).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub async fn create_database(&self, name: &str) {
        use sqlx::{Connection, Executor};
        let mut connection = sqlx::postgres::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("the throwaway PostgreSQL answers");
        connection
            .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .expect("CREATE DATABASE");
    }

    pub async fn start_server(&self) {
        if let Err(log) = self.try_start_server().await {
            panic!("pg_ctl start on port {}: {log}", self.port);
        }
    }

    /// `pg_ctl start -w`: it fails when the postmaster could not start (its port taken: the
    /// server log says `Address already in use`). The error is pg_ctl's output and the log.
    async fn try_start_server(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-o", &options, "start"]);
        let output = start.output().await.expect("pg_ctl runs");
        if output.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Err(format!(
            "{}{}\n{log}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// `pg_ctl stop -m fast`: sessions are terminated, the server shuts down cleanly.
    pub async fn stop_server(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"]);
        succeed("pg_ctl stop", stop).await;
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", user, "--"]).arg(pg_ctl);
                command
            }
            None => std::process::Command::new(pg_ctl),
        };
        let _ = command
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command`; a failure fails the test with its stderr.
async fn succeed(what: &str, mut command: Command) {
    let output = command
        .output()
        .await
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn postgres_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| dir.join("initdb").is_file())
        .collect();
    // The newest major version first (directory names are the version numbers).
    candidates.sort_by_key(|dir| {
        dir.parent()
            .and_then(Path::file_name)
            .and_then(|name| name.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates
        .pop()
        .or_else(|| which("initdb").and_then(|path| path.parent().map(Path::to_path_buf)))
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn user_exists(name: &str) -> bool {
    std::process::Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

// === NATS ===

/// A `nats-server -js` on a free port with its own store directory, which survives restarts
/// (JetStream streams and consumers persist like in production).
pub struct ThrowawayNats {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Cluster flags (name, listen, routes) of a [`ThrowawayNats::cluster`] member.
    cluster_args: Vec<String>,
}

impl ThrowawayNats {
    pub async fn start() -> Self {
        let mut nats = Self {
            port: 0,
            dir: temp_dir("nats"),
            child: None,
            cluster_args: Vec::new(),
        };
        for _ in 0..PORT_ATTEMPTS {
            nats.port = free_port();
            if nats.launch().await {
                return nats;
            }
        }
        panic!("the throwaway nats-server lost {PORT_ATTEMPTS} ports to other processes");
    }

    /// `size` servers routed to each other: one JetStream cluster, as prod's StatefulSet runs.
    pub async fn cluster(size: usize) -> Vec<Self> {
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for route_port in &route_ports {
            let mut nats = Self {
                port: free_port(),
                dir: temp_dir("nats"),
                child: None,
                cluster_args: vec![
                    "--cluster_name".into(),
                    "throwaway".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route_port}"),
                    "--routes".into(),
                    routes.clone(),
                ],
            };
            nats.restart().await;
            members.push(nats);
        }
        members
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port and store directory.
    pub async fn restart(&mut self) {
        assert!(
            self.launch().await,
            "the throwaway nats-server could not bind its port {} again",
            self.port
        );
    }

    /// The server name it runs under, which its INFO line carries: the one answering on the
    /// port is this one.
    fn name(&self) -> String {
        format!(
            "throwaway-{}",
            self.dir.file_name().unwrap_or_default().to_string_lossy()
        )
    }

    /// Starts the server on `self.port`; false when it exited before answering (the port was
    /// taken).
    async fn launch(&mut self) -> bool {
        let server = which("nats-server")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
            .expect("nats-server is installed (apt-get install -y nats-server)");
        let name = self.name();
        let mut child = Command::new(server)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-n",
                &name,
                "-sd",
            ])
            .arg(&self.dir)
            .args(&self.cluster_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        let deadline = tokio::time::Instant::now() + START_PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if child.try_wait().expect("the child's status").is_some() {
                return false;
            }
            if nats_server_name(self.port).await.as_deref() == Some(name.as_str()) {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the throwaway nats-server did not answer");
    }

    /// SIGKILL, waiting until the process is gone.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().expect("kill nats-server");
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("nats-server exits")
            .expect("nats-server exit status");
    }
}

/// The `server_name` of the NATS server on `port`, from the INFO line it greets a client with.
async fn nats_server_name(port: u16) -> Option<String> {
    use tokio::io::AsyncBufReadExt;
    let greeting = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .ok()?;
        Some(line)
    };
    let line = tokio::time::timeout(Duration::from_millis(500), greeting)
        .await
        .ok()??;
    let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?.trim()).ok()?;
    info["server_name"].as_str().map(str::to_owned)
}

impl Drop for ThrowawayNats {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
