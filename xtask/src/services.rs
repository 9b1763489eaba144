//! The PostgreSQL, Redis and NATS (JetStream) servers the tests need: the ones `DATABASE_URL`,
//! `REDIS_URL` and `NATS_URL` name; else the ones answering on the default local ports; else
//! throwaway servers started from the installed binaries in a temporary folder and stopped (their
//! folder removed) when the [`Services`] is dropped or the chore is interrupted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process::{self, Children, OnInterrupt};
use crate::util::TempDir;

const POSTGRES_PORT: u16 = 5432;
const REDIS_PORT: u16 = 6379;
const NATS_PORT: u16 = 4222;
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Where the servers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The environment's URLs, else the default ports, else throwaway servers.
    Reuse,
    /// Throwaway servers only (ignores the environment and the default ports).
    Throwaway,
}

/// The URLs the tests get; throwaway servers live as long as this.
#[derive(Debug)]
pub struct Services {
    pub database_url: String,
    pub redis_url: String,
    pub nats_url: String,
    started: Arc<Mutex<Started>>,
    _interrupt: OnInterrupt,
}

impl Services {
    /// Finds or starts all three.
    pub fn ensure(mode: Mode) -> anyhow::Result<Self> {
        let started: Arc<Mutex<Started>> = Arc::default();
        let on_signal = Arc::clone(&started);
        let interrupt = process::on_interrupt(move || lock(&on_signal).stop());
        let mut services = Self {
            database_url: String::new(),
            redis_url: String::new(),
            nats_url: String::new(),
            started,
            _interrupt: interrupt,
        };
        services.database_url = services.postgres(mode)?;
        services.redis_url = services.redis(mode)?;
        services.nats_url = services.nats(mode)?;
        Ok(services)
    }

    /// `(name, value)` of the three variables, for a child's environment.
    pub fn env(&self) -> [(&'static str, &str); 3] {
        [
            ("DATABASE_URL", &self.database_url),
            ("REDIS_URL", &self.redis_url),
            ("NATS_URL", &self.nats_url),
        ]
    }

    /// Whether any server was started here (rather than found).
    pub fn started_any(&self) -> bool {
        let started = lock(&self.started);
        started.postgres.is_some() || started.servers.is_some()
    }

    fn postgres(&self, mode: Mode) -> anyhow::Result<String> {
        if mode == Mode::Reuse {
            if let Some(url) = env_url("DATABASE_URL") {
                return Ok(url);
            }
            if process::port_answers(process::loopback(POSTGRES_PORT)) {
                // A server that refuses the tests' URL (password auth, no `test` database) is
                // not one they can use.
                let refuses = crate::util::which("psql").is_some_and(|psql| {
                    !process::succeeds(Command::new(psql).args([
                        DEFAULT_DATABASE_URL,
                        "-qAtc",
                        "select 1",
                    ]))
                });
                if !refuses {
                    return Ok(DEFAULT_DATABASE_URL.to_owned());
                }
                eprintln!(
                    "note: a PostgreSQL on 127.0.0.1:{POSTGRES_PORT} answers but refuses \
                     {DEFAULT_DATABASE_URL}; starting a throwaway one"
                );
            }
        }
        let bin = postgres_server_binaries()?;
        let (initdb, pg_ctl) = (bin.join("initdb"), bin.join("pg_ctl"));
        let psql = Some(bin.join("psql"))
            .filter(|psql| crate::util::is_executable(psql))
            .or_else(|| crate::util::which("psql"))
            .context("psql not found next to the PostgreSQL server binaries or on PATH")?;
        let mut started = lock(&self.started);
        let dir = started.dir()?.join("pg");
        std::fs::create_dir_all(&dir)?;
        // initdb refuses to run as root: the throwaway cluster runs as an unprivileged user.
        let run_as = if process::is_root() {
            let (uid, gid, name) = postgres_user();
            for path in [started.dir()?, dir.as_path()] {
                nix::unistd::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", path.display()))?;
            }
            Some(name)
        } else {
            None
        };
        let as_user = |program: &Path| {
            let mut command = match &run_as {
                Some(user) => {
                    let mut command = Command::new("runuser");
                    command.args(["-u", user, "--"]).arg(program);
                    command
                }
                None => Command::new(program),
            };
            command.stdin(Stdio::null());
            command
        };
        let data = dir.join("data");
        let initdb_log = dir.join("initdb.log");
        let status = as_user(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(std::fs::File::create(&initdb_log)?)
            .stderr(std::fs::File::create(dir.join("initdb.err"))?)
            .status()
            .context("running initdb")?;
        if !status.success() {
            bail!(
                "initdb failed:\n{}",
                process::tail(&dir.join("initdb.err"), 20)
            );
        }
        // Registered before the start: a half-started server is stopped too.
        started.postgres = Some(StartedPostgres {
            pg_ctl: as_user(&pg_ctl),
            data: data.clone(),
        });
        // `pg_ctl start -w` waits for the postmaster of this data folder; it fails when that
        // could not bind the port (its log: "Address already in use").
        let port = process::start_on_free_port("the throwaway PostgreSQL", |port| {
            println!(
                "starting a throwaway PostgreSQL on 127.0.0.1:{port} ({})",
                dir.display()
            );
            let server_log = dir.join(format!("server-{port}.log"));
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
                dir.display()
            );
            let started_ok = process::succeeds(
                as_user(&pg_ctl)
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(&server_log)
                    .args(["-w", "-o", &options, "start"]),
            );
            let log = process::tail(&server_log, 20);
            if !started_ok && !log.contains("already in use") {
                bail!("pg_ctl start failed:\n{log}");
            }
            Ok(started_ok)
        })?;
        process::run(
            Command::new(psql)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .args(["-qc", "create database test", "postgres"])
                .stdout(Stdio::null()),
        )?;
        Ok(format!("postgres://postgres@127.0.0.1:{port}/test"))
    }

    fn redis(&self, mode: Mode) -> anyhow::Result<String> {
        if mode == Mode::Reuse {
            if let Some(url) = env_url("REDIS_URL") {
                return Ok(url);
            }
            if process::port_answers(process::loopback(REDIS_PORT)) {
                return Ok(format!("redis://127.0.0.1:{REDIS_PORT}"));
            }
        }
        let Some(server) =
            crate::util::which("valkey-server").or_else(|| crate::util::which("redis-server"))
        else {
            bail!(
                "Redis or Valkey is needed: set REDIS_URL, run one on 127.0.0.1:{REDIS_PORT}, or \
                 install a server (Debian/Ubuntu: apt-get install -y redis-server or \
                 valkey-server; macOS: brew install redis)"
            );
        };
        let name = file_name(&server);
        let mut started = lock(&self.started);
        let dir = started.dir()?.join("redis");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("redis.log");
        let servers = started.servers();
        // Redis takes a port number (0 turns TCP off): a port lost to another process is
        // retried, and the server answering must report this child's pid.
        let port = process::start_on_free_port(&format!("the throwaway {name}"), |port| {
            println!("starting a throwaway {name} on 127.0.0.1:{port}");
            let pid = servers.spawn(
                &name,
                Command::new(&server)
                    .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                    .arg("--dir")
                    .arg(&dir)
                    .arg("--logfile")
                    .arg(&log)
                    .stdin(Stdio::null()),
            )?;
            servers
                .wait_for_own(&name, Duration::from_secs(5), || {
                    redis_pid(port) == Some(pid)
                })
                .with_context(|| {
                    format!(
                        "{name} did not start; its log:\n{}",
                        process::tail(&log, 20)
                    )
                })
        })?;
        Ok(format!("redis://127.0.0.1:{port}"))
    }

    /// The fault tests start (and kill) nats-servers of their own, so the binary is needed even
    /// when a server is found.
    fn nats(&self, mode: Mode) -> anyhow::Result<String> {
        let Some(server) =
            crate::util::which("nats-server").or_else(|| executable("/usr/sbin/nats-server"))
        else {
            bail!(
                "nats-server is needed (the event tests start and kill their own): \
                 Debian/Ubuntu: apt-get install -y nats-server; macOS: brew install nats-server"
            );
        };
        if mode == Mode::Reuse {
            if let Some(url) = env_url("NATS_URL") {
                return Ok(url);
            }
            if process::port_answers(process::loopback(NATS_PORT)) {
                return Ok(format!("nats://127.0.0.1:{NATS_PORT}"));
            }
        }
        let mut started = lock(&self.started);
        let dir = started.dir()?.join("nats");
        std::fs::create_dir_all(&dir)?;
        println!("starting a throwaway nats-server -js on a free port");
        let log = dir.join("nats.log");
        let servers = started.servers();
        // Port -1: nats-server binds any free port itself.
        let pid = servers.spawn(
            "nats-server",
            Command::new(&server)
                .args(["-js", "-a", "127.0.0.1", "-p", "-1"])
                .arg("-sd")
                .arg(dir.join("store"))
                .arg("-l")
                .arg(&log)
                .stdin(Stdio::null()),
        )?;
        let ports = servers
            .wait_listening("nats-server", pid, 1, Duration::from_secs(5))
            .with_context(|| {
                format!(
                    "nats-server did not start; its log:\n{}",
                    process::tail(&log, 20)
                )
            })?;
        let port = ports[0];
        println!("the throwaway nats-server listens on 127.0.0.1:{port}");
        Ok(format!("nats://127.0.0.1:{port}"))
    }
}

/// `cargo xtask services`: prints the three URLs; with a command, runs it with them in its
/// environment; throwaway servers are stopped when it ends (without a command: on Ctrl-C).
pub fn run(mode: Mode, command: &[String]) -> anyhow::Result<bool> {
    let services = Services::ensure(mode)?;
    for (name, value) in services.env() {
        println!("{name}={value}");
    }
    if let [program, args @ ..] = command {
        let status = Command::new(program)
            .args(args)
            .envs(services.env())
            .status()
            .with_context(|| format!("running {program}"))?;
        return Ok(status.success());
    }
    if services.started_any() {
        println!("the throwaway servers run until Ctrl-C");
        loop {
            std::thread::park();
        }
    }
    Ok(true)
}

impl Drop for Services {
    fn drop(&mut self) {
        lock(&self.started).stop();
    }
}

/// What was started here, in a folder of its own.
#[derive(Debug, Default)]
struct Started {
    dir: Option<TempDir>,
    postgres: Option<StartedPostgres>,
    servers: Option<Children>,
}

#[derive(Debug)]
struct StartedPostgres {
    /// `pg_ctl`, as the user that runs the cluster.
    pg_ctl: Command,
    data: PathBuf,
}

impl Started {
    fn dir(&mut self) -> anyhow::Result<&Path> {
        if self.dir.is_none() {
            crate::util::sweep_stale_temp_dirs();
            let dir = TempDir::new("services")?;
            // Readable by the unprivileged user a root run starts PostgreSQL as.
            std::fs::set_permissions(
                dir.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )?;
            self.dir = Some(dir);
        }
        Ok(self
            .dir
            .as_ref()
            .map(TempDir::path)
            .unwrap_or(Path::new("")))
    }

    fn servers(&mut self) -> &Children {
        self.servers.get_or_insert_with(Children::new)
    }

    /// Stops everything started (idempotent) and removes the folder.
    fn stop(&mut self) {
        if let Some(mut postgres) = self.postgres.take() {
            let _ = process::succeeds(
                postgres
                    .pg_ctl
                    .arg("-D")
                    .arg(&postgres.data)
                    .args(["-m", "fast", "stop"]),
            );
        }
        self.servers = None;
        self.dir = None;
    }
}

/// Waits for a server just spawned as `name` to listen on `port`; fails with its log when it
/// exits or does not come up within 5 s.
/// The pid of the Redis server answering on 127.0.0.1:`port` (`INFO server`), if one answers.
fn redis_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&process::loopback(port), Duration::from_millis(300))
            .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.split("process_id:").nth(1)
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            return pid.trim().parse().ok();
        }
    }
}

fn lock(started: &Mutex<Started>) -> std::sync::MutexGuard<'_, Started> {
    started.lock().unwrap_or_else(PoisonError::into_inner)
}

fn env_url(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|url| !url.is_empty())
}

fn executable(path: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    crate::util::is_executable(&path).then_some(path)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The host's PostgreSQL server binaries: the newest `/usr/lib/postgresql/<version>/bin`, else
/// the folder of a `postgres` on PATH. (The rehearsal's database stand-in uses them too.)
pub fn postgres_server_binaries() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|dir| dir.join("postgres").is_file())
        .collect();
    dirs.sort_by_key(|dir| {
        dir.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = dirs.pop() {
        return Ok(dir);
    }
    if let Some(postgres) = crate::util::which("postgres") {
        return Ok(postgres.parent().unwrap_or(Path::new("/")).to_path_buf());
    }
    bail!(
        "PostgreSQL is needed: set DATABASE_URL, run one on 127.0.0.1:{POSTGRES_PORT} (user \
         postgres, trust auth, database test), or install the server binaries (Debian/Ubuntu: \
         apt-get install -y postgresql; macOS: brew install postgresql)"
    )
}

/// The unprivileged account (uid, gid, name) a PostgreSQL started as root runs as: it refuses
/// root.
pub fn postgres_user() -> (nix::unistd::Uid, nix::unistd::Gid, String) {
    ["postgres", "nobody"]
        .into_iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
        .map_or_else(
            || {
                let nobody = 65534;
                (
                    nix::unistd::Uid::from_raw(nobody),
                    nix::unistd::Gid::from_raw(nobody),
                    "nobody".to_owned(),
                )
            },
            |user| (user.uid, user.gid, user.name),
        )
}
