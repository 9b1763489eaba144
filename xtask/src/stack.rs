//! `cargo xtask run`: the whole stack on embedded defaults, no servers needed (user-service on a
//! SQLite file with an in-process cache, the edge gateway in front of it); and the pieces the
//! browser and operations tests start the same stack with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process::{self, Children};

/// The shipped gateway config (the facade's REST contract).
pub const GATEWAY_CONFIG: &str = "edge-gateway/config/gateway.yaml";

/// Where `cargo xtask run` listens and keeps its data.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where the SQLite file lives (default: ./.meshgate).
    #[arg(long, env = "MESHGATE_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// The edge's port.
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 8080)]
    gateway_port: u16,
    /// The user-service's gRPC port.
    #[arg(long, env = "GRPC_PORT", default_value_t = 50051)]
    grpc_port: u16,
    #[arg(long, env = "SERVICE_METRICS_PORT", default_value_t = 9090)]
    service_metrics_port: u16,
    #[arg(long, env = "GATEWAY_METRICS_PORT", default_value_t = 9091)]
    gateway_metrics_port: u16,
}

/// The user-service on a SQLite file, its own migrations applied: never the environment's
/// PostgreSQL or Redis. Port 0 binds any free port; [`spawn_listening`] reads them back.
pub fn user_service(
    bin: &Path,
    grpc_port: u16,
    metrics_port: u16,
    sqlite: &Path,
    log_format: &str,
) -> Command {
    let mut command = Command::new(bin.join("user-service"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .args(["--migrate-on-start", "--log-format", log_format])
        .arg("--sqlite-path")
        .arg(sqlite)
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")]);
    command
}

/// The edge gateway with `config`, none of its settings taken from the environment.
pub fn gateway(bin: &Path, config: &Path) -> Command {
    let mut command = Command::new(bin.join("edge-gateway"));
    for name in [
        "GATEWAY_CONFIG",
        "GATEWAY_LISTEN",
        "GATEWAY_METRICS_LISTEN",
        "GATEWAY_UPSTREAMS",
        "GATEWAY_CORS_ORIGINS",
        "GATEWAY_STATIC_DIR",
    ] {
        command.env_remove(name);
    }
    command.arg("--config").arg(config);
    command
}

/// How a server started on port 0 reports the addresses it bound: the line (`marker`) and its
/// address fields.
pub struct Listening<const N: usize> {
    marker: &'static str,
    keys: [&'static str; N],
}

/// A [`user_service`]: gRPC, metrics.
pub const USER_SERVICE_LISTENING: Listening<2> = Listening {
    marker: "user-service listening",
    keys: ["grpc_addr", "metrics_addr"],
};

/// A [`gateway`]: the main listener, metrics.
pub const GATEWAY_LISTENING: Listening<2> = Listening {
    marker: "edge-gateway listening",
    keys: ["listen", "metrics"],
};

/// A [`gateway`] with a TLS listener: the main listener, metrics, TLS.
pub const GATEWAY_TLS_LISTENING: Listening<3> = Listening {
    marker: "edge-gateway listening",
    keys: ["listen", "metrics", "tls"],
};

/// Starts `command` (a [`user_service`] or [`gateway`] on port 0, logging at info to `log`) as
/// `name` and reads the addresses it bound from its listening line. Returns its pid too.
pub fn spawn_listening<const N: usize>(
    children: &Children,
    name: &str,
    command: &mut Command,
    log: &Path,
    listening: &Listening<N>,
) -> anyhow::Result<(u32, [SocketAddr; N])> {
    let pid = children.spawn(name, command)?;
    let addresses = logged_addresses(children, name, log, listening.marker, listening.keys)?;
    Ok((pid, addresses))
}

/// The addresses a server started on port 0 reports: the values of `keys` on the first line of
/// `log` that contains `marker`. Waits for the line; fails when `name` exits first.
fn logged_addresses<const N: usize>(
    children: &Children,
    name: &str,
    log: &Path,
    marker: &str,
    keys: [&str; N],
) -> anyhow::Result<[SocketAddr; N]> {
    let mut found = None;
    process::wait_until(
        &format!("{name}'s listening line"),
        Duration::from_secs(30),
        || {
            if let Some(status) = children.exited(name) {
                bail!("{name} exited during start-up ({status})");
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            found = text
                .lines()
                .find(|line| line.contains(marker))
                .map(|line| keys.map(|key| field_addr(line, key)));
            Ok(found.is_some())
        },
    )
    .with_context(|| {
        format!(
            "{name}'s log ({}):\n{}",
            log.display(),
            process::tail(log, 20)
        )
    })?;
    let values = found.unwrap_or([None; N]);
    let mut addresses = [SocketAddr::from(([0, 0, 0, 0], 0)); N];
    for ((address, value), key) in addresses.iter_mut().zip(values).zip(keys) {
        *address =
            value.with_context(|| format!("{name}'s listening line has no address `{key}`"))?;
    }
    Ok(addresses)
}

/// The address logged as `key` on a tracing line: a JSON field (`"key":"…"`) or text
/// (`key=…`, ANSI colours stripped); `Some(…)` (an optional address) is unwrapped.
fn field_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let plain = strip_ansi(line);
    let json = format!("\"{key}\":\"");
    let text = format!("{key}=");
    let start = plain.find(&json).map(|at| at + json.len()).or_else(|| {
        plain.match_indices(&text).find_map(|(at, _)| {
            let before = plain[..at].chars().next_back();
            (!before.is_some_and(|c| c.is_alphanumeric() || c == '_')).then_some(at + text.len())
        })
    })?;
    let value: String = plain[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | ','))
        .collect();
    let value = value
        .strip_prefix("Some(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or(&value);
    value.parse().ok()
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Waits until `url` answers 2xx; fails with the last lines of `log` when `name` (one of
/// `children`) exits first or after 30 s.
pub fn wait_http(children: &Children, name: &str, url: &str, log: &Path) -> anyhow::Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    process::wait_until(&format!("{name} at {url}"), Duration::from_secs(30), || {
        if let Some(status) = children.exited(name) {
            bail!("{name} exited during start-up ({status})");
        }
        Ok(client
            .get(url)
            .send()
            .is_ok_and(|response| response.status().is_success()))
    })
    .with_context(|| {
        format!(
            "{name}'s log ({}):\n{}",
            log.display(),
            process::tail(log, 20)
        )
    })
}

/// Builds the user-service and the edge gateway as `cargo test --workspace` does: after the
/// suite's cargo stage a no-op, not a rebuild with another feature set. Returns the binaries'
/// folder.
pub fn build_like_workspace_tests(root: &Path) -> anyhow::Result<PathBuf> {
    process::run(process::cargo(root).args(["test", "--workspace", "--locked", "--no-run"]))?;
    Ok(process::target_dir(root).join("debug"))
}

/// `cargo xtask run`.
pub fn run(root: &Path, args: &RunArgs) -> anyhow::Result<bool> {
    let data = args.data.clone().unwrap_or_else(|| root.join(".meshgate"));
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    println!("== building (release)");
    process::run(process::cargo(root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "user-service",
        "-p",
        "edge-gateway",
    ]))?;
    let bin = process::target_dir(root).join("release");
    let static_dir = if crate::util::which("npm").is_some() {
        match crate::web::build(root) {
            Ok(()) => Some(root.join("web/dist")),
            Err(error) => {
                eprintln!("note: the web page did not build ({error:#}); serving without it");
                None
            }
        }
    } else {
        None
    };

    let children = Children::new();
    let start = Duration::from_secs(10);
    children.spawn(
        "user-service",
        &mut user_service(
            &bin,
            args.grpc_port,
            args.service_metrics_port,
            &data.join("users.db"),
            "text",
        ),
    )?;
    children.wait_for_port("user-service", args.grpc_port, start)?;
    let mut edge = gateway(&bin, &root.join(GATEWAY_CONFIG));
    edge.args(["--listen", &format!("127.0.0.1:{}", args.gateway_port)])
        .args([
            "--metrics-listen",
            &format!("127.0.0.1:{}", args.gateway_metrics_port),
        ])
        .args(["--upstream", &format!("127.0.0.1:{}", args.grpc_port)]);
    if let Some(dir) = &static_dir {
        edge.arg("--static-dir").arg(dir);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        edge.env("RUST_LOG", "info,pingora=warn");
    }
    children.spawn("edge-gateway", &mut edge)?;
    children.wait_for_port("edge-gateway", args.gateway_port, start)?;

    let gateway = format!("http://127.0.0.1:{}", args.gateway_port);
    let page_note = if static_dir.is_some() {
        ""
    } else {
        "(needs npm: run cargo xtask build-web)"
    };
    println!(
        "
meshgate is up (embedded defaults: SQLite at {db}, in-process cache)
  REST + gRPC-web + gRPC   {gateway}        e.g. curl -s {gateway}/v1/users
  OpenAPI                  {gateway}/openapi.json
  web page                 {gateway}/      {page_note}
  gateway metrics          http://127.0.0.1:{gateway_metrics}/metrics
  user-service gRPC        127.0.0.1:{grpc} (reflection on)   metrics http://127.0.0.1:{service_metrics}/metrics
Ctrl-C stops everything.",
        db = data.join("users.db").display(),
        gateway_metrics = args.gateway_metrics_port,
        grpc = args.grpc_port,
        service_metrics = args.service_metrics_port,
    );
    loop {
        if let Some((name, status)) = children.first_exited() {
            eprintln!("{name} exited ({status}); stopping");
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_addresses_are_read_from_json_and_text_lines() {
        let json = r#"{"fields":{"message":"edge-gateway listening","listen":"127.0.0.1:4000","metrics":"Some(127.0.0.1:4001)"}}"#;
        assert_eq!(
            field_addr(json, "listen"),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            field_addr(json, "metrics"),
            Some("127.0.0.1:4001".parse().unwrap())
        );
        let text = "\u{1b}[2m2026\u{1b}[0m INFO user-service listening \u{1b}[3mgrpc_addr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5000 \u{1b}[3mmetrics_addr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5001";
        assert_eq!(
            field_addr(text, "grpc_addr"),
            Some("127.0.0.1:5000".parse().unwrap())
        );
        assert_eq!(
            field_addr(text, "metrics_addr"),
            Some("127.0.0.1:5001".parse().unwrap())
        );
        assert_eq!(field_addr("metrics=None", "metrics"), None);
        assert_eq!(field_addr("xlisten=127.0.0.1:1", "listen"), None);
    }
}
