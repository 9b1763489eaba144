//! Running the chores' programs: nested cargo, commands with their exit status, the one wait
//! loop (ports, HTTP endpoints), free ports, Debian packages installed when running as root, the
//! servers a chore starts (stopped when it ends), and the cleanup run on Ctrl-C/SIGTERM.

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

/// `N` ports the kernel reports free now, all different (bound together, then released: a
/// small race, acceptable for servers that take a port number, not a socket).
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding a free port")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
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
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports::<4>().unwrap();
        for (i, port) in ports.iter().enumerate() {
            assert!(!ports[..i].contains(port));
            TcpListener::bind(loopback(*port)).unwrap();
        }
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
