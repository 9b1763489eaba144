//! A CloudNativePG Cluster's primary, stood in for by a throwaway PostgreSQL from the host's
//! server binaries: bootstrapped as the Cluster's `initdb` section says (database, owner with
//! a password, the declared `postgresql.parameters`, CNPG's `host all all all scram-sha-256`
//! rule), listening on its pod IP in its own network namespace. It can be stopped and started
//! again (the dependency-outage step).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::secrets::DatabaseCluster;

pub use crate::services::postgres_server_binaries as server_binaries;

/// An unprivileged account PostgreSQL will run as (it refuses root).
fn run_as() -> (u32, u32) {
    let (uid, gid, _) = crate::services::postgres_user();
    (uid.as_raw(), gid.as_raw())
}

pub struct Postgres {
    pub cluster: DatabaseCluster,
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    netns: String,
    child: Option<Child>,
    pub version: String,
}

impl Postgres {
    /// `initdb`, the Cluster's parameters, then start and create the owner and database.
    pub async fn bootstrap(
        cluster: &DatabaseCluster,
        parameters: &[(String, String)],
        dir: &Path,
        netns: &str,
    ) -> anyhow::Result<Self> {
        let bin = server_binaries()?;
        let (uid, gid) = run_as();
        let data = dir.join("pgdata");
        let socket_dir = dir.join("run");
        std::fs::create_dir_all(&socket_dir)?;
        for path in [dir, &socket_dir] {
            nix::unistd::chown(path, Some(uid.into()), Some(gid.into()))?;
        }
        let output = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .uid(uid)
            .gid(gid)
            .output()
            .await
            .context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let mut conf = String::from(
            "\n# The rehearsal's CloudNativePG stand-in\nlisten_addresses = '*'\nport = 5432\nfsync = off\n",
        );
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            socket_dir.display()
        ));
        for (name, value) in parameters {
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        append(&data.join("postgresql.conf"), &conf)?;
        // CloudNativePG's default pg_hba: password (SCRAM) authentication from anywhere.
        append(
            &data.join("pg_hba.conf"),
            "host all all all scram-sha-256\n",
        )?;
        let version = std::fs::read_to_string(data.join("PG_VERSION"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut postgres = Self {
            cluster: cluster.clone(),
            bin,
            log: dir.join("postgres.log"),
            data,
            socket_dir,
            netns: netns.to_owned(),
            child: None,
            version,
        };
        postgres.start().await?;
        // One statement per call: CREATE DATABASE cannot run inside a transaction block.
        postgres
            .psql(&format!(
                "CREATE ROLE \"{}\" LOGIN PASSWORD '{}'",
                cluster.owner, cluster.password
            ))
            .await?;
        postgres
            .psql(&format!(
                "CREATE DATABASE \"{}\" OWNER \"{}\"",
                cluster.database, cluster.owner
            ))
            .await?;
        Ok(postgres)
    }

    /// Starts the server in its network namespace and waits until it accepts connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let (uid, gid) = run_as();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--pdeathsig", "KILL", "--"])
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        for _ in 0..300 {
            if self.psql("SELECT 1").await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("postgres exited {status}: {}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "postgres did not accept connections within 15 s: {}",
            self.log_tail()
        )
    }

    /// Fast shutdown (SIGINT), as a primary losing its pod would stop.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                child.kill().await?;
            }
        }
        Ok(())
    }

    async fn psql(&self, sql: &str) -> anyhow::Result<()> {
        let output = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                "5432",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-qAtc",
                sql,
            ])
            .output()
            .await?;
        if !output.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 5)
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The last `lines` lines of a log file, on one line.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}
