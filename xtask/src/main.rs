//! `cargo xtask <command>`: meshgate's own tooling.
//!
//! - `config-contract`: every container of ours the manifests ship, run by the real binary in
//!   validate-only mode with its exact args, env and mounted files (see [`contract`]).
//! - `rehearse`: a local deployment rehearsal of an environment in network namespaces (see
//!   [`rehearse`]).
//! - `architecture`: the modules ARCHITECTURE.md calls pure do no I/O (see [`architecture`]).
//!
//! The first two need root (namespaces, mounts); `./scripts/test` runs them.

mod architecture;
mod argo;
mod container;
mod contract;
mod images;
mod objects;
mod rehearse;
mod render;
mod secrets;
mod util;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "meshgate's own tooling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Build the binaries as `cargo test --workspace` does (what ./scripts/test uses: a no-op
    /// after its cargo test stage) instead of `cargo build -p <package>`.
    #[arg(long, global = true)]
    test_build: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every container of ours the manifests ship through its binary's `--test`.
    ConfigContract {
        /// Environments (root Applications in deploy/argocd/bootstrap/); default: all.
        #[arg(long = "env", value_parser = ["dev", "prod"])]
        envs: Vec<String>,
    },
    /// Rehearse a deployment of an environment locally (network namespaces, real binaries).
    Rehearse {
        /// Environments to rehearse, one after the other; default: all.
        #[arg(long = "env", value_parser = ["dev", "prod"])]
        envs: Vec<String>,
        /// Copy every container's log to DIR/<env>/<pod>/<container>.log before cleaning up.
        #[arg(long, value_name = "DIR")]
        keep_logs: Option<PathBuf>,
    },
    /// Check that the modules ARCHITECTURE.md lists as pure do no I/O.
    Architecture,
    /// Internal: become the container described by a launch spec (used by the others).
    #[command(hide = true)]
    Container { spec: PathBuf },
    /// Internal: the rehearsal's client pod.
    #[command(hide = true)]
    RehearsalClient {
        /// The edge as `service.namespace:port`.
        #[arg(long)]
        edge: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = util::repo_root();
    let build = if cli.test_build {
        images::Build::LikeWorkspaceTests
    } else {
        images::Build::Packages
    };
    let chosen = |envs: &[String]| -> Vec<String> {
        if envs.is_empty() {
            argo::ENVIRONMENTS.iter().map(|e| (*e).to_owned()).collect()
        } else {
            envs.to_vec()
        }
    };
    match cli.command {
        Command::Container { spec } => container::main(&spec),
        Command::Architecture => finish(architecture::run(&root)),
        Command::RehearsalClient { edge } => rehearse::client::main(&edge),
        Command::ConfigContract { envs } => {
            let envs = chosen(&envs);
            let envs: Vec<&str> = envs.iter().map(String::as_str).collect();
            finish(contract::run(&root, &envs, build))
        }
        Command::Rehearse { envs, keep_logs } => {
            // One environment per process: each rehearsal enters its own node namespace.
            let envs = chosen(&envs);
            if let [env] = envs.as_slice() {
                return finish(rehearse::run(&root, env, keep_logs.as_deref(), build));
            }
            let mut ok = true;
            for env in &envs {
                let mut command =
                    std::process::Command::new(std::env::current_exe().unwrap_or_default());
                command.args(["rehearse", "--env", env]);
                if cli.test_build {
                    command.arg("--test-build");
                }
                if let Some(dir) = &keep_logs {
                    command.arg("--keep-logs").arg(dir);
                }
                ok &= command.status().is_ok_and(|s| s.success());
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn finish(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
