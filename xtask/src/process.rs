//! Running the chores' programs: nested cargo, commands with their exit status, the one wait
//! loop (ports, HTTP endpoints), the ports a server bound (or a free one for a server that needs a
//! number), Debian packages installed when running as root, the servers a chore starts (stopped
//! when it ends), and the cleanup run on Ctrl-C/SIGTERM.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

/// `cargo` (the one that runs us) in the repository root, without the variables `cargo run`
/// set for this binary: they are not a nested build's business.
pub fn cargo(root: &Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*key)
        {
            command.env_remove(&*key);
        }
    }
    command
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative to the root) or `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    if target.is_relative() {
        root.join(target)
    } else {
        target
    }
}

/// `program arg...` as a person would type it, for messages.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` to the end; an error names it unless it exits 0.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running `{}`", describe(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(command));
    }
    Ok(())
}

/// Whether `program` runs and exits 0 (output discarded): for probes like `psql -c 'select 1'`.
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Something accepts TCP connections on `address`.
pub fn port_answers(address: SocketAddr) -> bool {
    TcpStream::connect_timeout(&address, Duration::from_millis(300)).is_ok()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `ready` every 100 ms until it says yes; fails naming `what` after `limit`, or at once
/// when `ready` fails (say, the process being waited for exited).
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what} not ready after {}s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many ports a server that takes a port number is tried on before the chore gives up.
const PORT_ATTEMPTS: usize = 5;

/// Starts a server that must be given a port number (it cannot bind port 0 and report it, nor
/// be handed a socket: Redis, PostgreSQL). The port is found free by binding and releasing it, so
/// another process may bind it first: `start(port)` starts the server and answers whether it came
/// up on the port as itself (verified: its pid, its own start-up check), or `false` when it lost
/// the port; then another port is tried. Servers that can bind port 0 do, and their ports are
/// read back ([`listening_ports`], their logs) instead.
pub fn start_on_free_port(
    what: &str,
    mut start: impl FnMut(u16) -> anyhow::Result<bool>,
) -> anyhow::Result<u16> {
    for _ in 0..PORT_ATTEMPTS {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free port")?
            .port();
        if start(port)? {
            return Ok(port);
        }
    }
    bail!("{what} lost {PORT_ATTEMPTS} free ports to other processes")
}

/// The TCP ports process `pid` listens on (Linux: its socket descriptors matched against the
/// kernel's table of listening IPv4 sockets), in no particular order.
pub fn listening_ports(pid: u32) -> anyhow::Result<Vec<u16>> {
    let mut inodes = std::collections::HashSet::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?;
    for fd in fds.flatten() {
        // A descriptor may close while we look; only sockets read as `socket:[inode]`.
        if let Ok(target) = std::fs::read_link(fd.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|target| target.strip_prefix("socket:["))
                .and_then(|rest| rest.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .with_context(|| format!("reading /proc/{pid}/net/tcp"))?;
    Ok(listening_in_table(&table, &inodes))
}

/// The ports of the listening sockets (state `0A`) among `inodes` in a `/proc/net/tcp` table.
fn listening_in_table(table: &str, inodes: &std::collections::HashSet<String>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !inodes.contains(*inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// The program `name` from PATH; when missing, the Debian `package` that ships it is installed
/// with apt-get if we are root (its service, which we do not want running, disabled again),
/// else the error says what to install.
pub fn ensure_program(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(found) = crate::util::which(name) {
        return Ok(found);
    }
    if !is_root() || crate::util::which("apt-get").is_none() {
        bail!("{name} not found: install Debian's {package} (sudo apt-get install -y {package})");
    }
    println!("== installing {name} (Debian package '{package}')");
    let install = |update: bool| {
        if update {
            let _ = succeeds(Command::new("apt-get").args(["update", "-qq"]));
        }
        succeeds(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", package])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if !install(false) && !install(true) {
        bail!("apt-get install {package} failed");
    }
    if crate::util::which("systemctl").is_some() {
        let _ = succeeds(Command::new("systemctl").args(["disable", "--now", package]));
    }
    crate::util::which(name).with_context(|| format!("{package} installed no {name}"))
}

/// A command's stdout and stderr, both appended to one new file (as `>file 2>&1` does).
pub fn log_to(command: &mut Command, path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    command.stdout(file.try_clone()?).stderr(file);
    Ok(())
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Cleanup on Ctrl-C / SIGTERM / SIGHUP

type Cleanup = Box<dyn FnOnce() + Send>;

static CLEANUPS: Mutex<Vec<(u64, Cleanup)>> = Mutex::new(Vec::new());

/// Runs its cleanup if the process is interrupted while it lives; dropping it unregisters the
/// cleanup (the owner then cleans up on the normal path).
#[derive(Debug)]
pub struct OnInterrupt(u64);

pub fn on_interrupt(cleanup: impl FnOnce() + Send + 'static) -> OnInterrupt {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    CLEANUPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((id, Box::new(cleanup)));
    OnInterrupt(id)
}

impl Drop for OnInterrupt {
    fn drop(&mut self) {
        CLEANUPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _)| *id != self.0);
    }
}

/// From here on, SIGINT, SIGTERM and SIGHUP run the registered cleanups (newest first) and exit
/// 130. The handlers are installed before this returns; children start with the default
/// dispositions (exec resets caught signals), so Ctrl-C still reaches them.
pub fn handle_interrupts() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the signal handler's runtime")?;
    let (mut term, mut int, mut hup) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        )
    };
    std::thread::spawn(move || {
        let name = runtime.block_on(async {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => "SIGHUP",
            }
        });
        eprintln!("\ninterrupted ({name}): cleaning up");
        let cleanups =
            std::mem::take(&mut *CLEANUPS.lock().unwrap_or_else(PoisonError::into_inner));
        for (_, cleanup) in cleanups.into_iter().rev() {
            cleanup();
        }
        std::process::exit(130);
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The servers a chore starts

/// Processes a chore started: each stopped (SIGTERM, then SIGKILL after 10 s) when this is
/// dropped or the chore is interrupted.
#[derive(Debug)]
pub struct Children {
    running: Arc<Mutex<Vec<(String, Child)>>>,
    _interrupt: OnInterrupt,
}

impl Children {
    pub fn new() -> Self {
        let running: Arc<Mutex<Vec<(String, Child)>>> = Arc::default();
        let on_signal = Arc::clone(&running);
        // Reap children as they exit, as a shell does: a test that stops one of these servers
        // (the browser tests SIGTERM the user-service) waits for its pid to disappear, and an
        // unreaped zombie never does. `Child` keeps the status, so `exited` still reports it.
        let reaped = Arc::downgrade(&running);
        std::thread::spawn(move || {
            while let Some(running) = reaped.upgrade() {
                for (_, child) in running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter_mut()
                {
                    let _ = child.try_wait();
                }
                drop(running);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            running,
            _interrupt: on_interrupt(move || stop_all(&on_signal)),
        }
    }

    /// Starts `command` as `name`; returns its pid.
    pub fn spawn(&self, name: &str, command: &mut Command) -> anyhow::Result<u32> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} (`{}`)", describe(command)))?;
        let pid = child.id();
        self.lock().push((name.to_owned(), child));
        Ok(pid)
    }

    /// How `name` exited, if it has.
    pub fn exited(&self, name: &str) -> Option<ExitStatus> {
        self.lock()
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, child)| child.try_wait().ok().flatten())
    }

    /// Waits until `name` (one of these) listens on 127.0.0.1:`port`; fails when it exits
    /// first or after `limit`.
    pub fn wait_for_port(&self, name: &str, port: u16, limit: Duration) -> anyhow::Result<()> {
        wait_until(&format!("{name} (127.0.0.1:{port})"), limit, || {
            if let Some(status) = self.exited(name) {
                bail!("{name} exited during start-up ({status})");
            }
            Ok(port_answers(loopback(port)))
        })
    }

    /// Waits until `name` (just started on a port it was given) answers as itself
    /// (`is_ours`); `false` when it exited first (it could not bind the port), and it is
    /// forgotten, so that it can be started again under the same name. See
    /// [`start_on_free_port`].
    pub fn wait_for_own(
        &self,
        name: &str,
        limit: Duration,
        mut is_ours: impl FnMut() -> bool,
    ) -> anyhow::Result<bool> {
        let mut lost = false;
        wait_until(name, limit, || {
            lost = self.exited(name).is_some();
            Ok(lost || is_ours())
        })?;
        if lost {
            self.lock().retain(|(n, _)| n != name);
        }
        Ok(!lost)
    }

    /// Waits until `name` (process `pid`, started on port 0) listens on `count` ports and
    /// returns them; fails when it exits first or after `limit`.
    pub fn wait_listening(
        &self,
        name: &str,
        pid: u32,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<Vec<u16>> {
        let mut ports = Vec::new();
        wait_until(&format!("{name} listening"), limit, || {
            if let Some(status) = self.exited(name) {
                bail!("{name} exited during start-up ({status})");
            }
            ports = listening_ports(pid)?;
            Ok(ports.len() >= count)
        })?;
        Ok(ports)
    }

    /// The first child that has exited, if any.
    pub fn first_exited(&self) -> Option<(String, ExitStatus)> {
        self.lock().iter_mut().find_map(|(name, child)| {
            let status = child.try_wait().ok().flatten()?;
            Some((name.clone(), status))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Child)>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Children {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        stop_all(&self.running);
    }
}

fn stop_all(running: &Mutex<Vec<(String, Child)>>) {
    let mut children = std::mem::take(&mut *running.lock().unwrap_or_else(PoisonError::into_inner));
    for (_, child) in &children {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (_, child) in &mut children {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_by_its_process() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = listening_ports(std::process::id()).unwrap();
        assert!(ports.contains(&port), "{port} not in {ports:?}");
        drop(listener);
        let ports = listening_ports(std::process::id()).unwrap();
        assert!(!ports.contains(&port), "{port} still in {ports:?}");
    }

    #[test]
    fn only_listening_sockets_of_the_process_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0100007F:1F92 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 333 1";
        let ours = ["111", "333"].map(str::to_owned).into_iter().collect();
        assert_eq!(listening_in_table(table, &ours), vec![8080]);
    }

    #[test]
    fn a_lost_port_is_tried_again_on_another() {
        let mut tried = Vec::new();
        let port = start_on_free_port("the server", |port| {
            tried.push(port);
            Ok(tried.len() == 3)
        })
        .unwrap();
        assert_eq!(tried.len(), 3);
        assert_eq!(port, tried[2]);
        let error = start_on_free_port("the server", |_| Ok(false)).unwrap_err();
        assert!(error.to_string().contains("lost 5 free ports"), "{error}");
    }

    #[test]
    fn waiting_for_a_port_sees_a_listener_a_timeout_and_an_exit() {
        let children = Children::new();
        children
            .spawn("sleeper", Command::new("sleep").arg("30"))
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        children
            .wait_for_port("sleeper", port, Duration::from_secs(2))
            .unwrap();
        drop(listener);
        let error = children
            .wait_for_port("sleeper", port, Duration::from_millis(300))
            .unwrap_err();
        assert!(error.to_string().contains("not ready after"), "{error}");

        children
            .spawn("quitter", Command::new("sh").args(["-c", "exit 3"]))
            .unwrap();
        let error = children
            .wait_for_port("quitter", port, Duration::from_secs(10))
            .unwrap_err();
        assert!(error.to_string().contains("quitter exited"), "{error}");
    }

    #[test]
    fn children_are_stopped_when_dropped() {
        let children = Children::new();
        let pid = children
            .spawn("sleeper", Command::new("sleep").arg("30"))
            .unwrap();
        assert!(children.exited("sleeper").is_none());
        drop(children);
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(!alive, "sleep {pid} survived");
    }

    /// Someone else stops a child (as the browser tests stop the user-service): its pid must
    /// disappear, as it would under a shell, and `exited` still tells how it ended.
    #[test]
    fn a_child_stopped_by_someone_else_is_reaped() {
        let children = Children::new();
        let pid = children
            .spawn("sleeper", Command::new("sleep").arg("30"))
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
        wait_until("the pid to disappear", Duration::from_secs(5), || {
            Ok(nix::sys::signal::kill(pid, None).is_err())
        })
        .unwrap();
        assert!(
            children
                .exited("sleeper")
                .is_some_and(|status| !status.success())
        );
    }
}
