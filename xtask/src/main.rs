//! `cargo xtask <command>`: meshgate's own tooling.
//!
//! - `config-contract`: every container of ours the manifests ship, run by the real binary in
//!   validate-only mode with its exact args, env and mounted files (see [`contract`]).
//! - `rehearse`: a local deployment rehearsal of an environment in network namespaces (see
//!   [`rehearse`]).
//!
//! Both need root (namespaces, mounts); `./scripts/test` runs them.

mod argo;
mod container;
mod contract;
mod images;
mod objects;
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
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every container of ours the manifests ship through its binary's `--test`.
    ConfigContract {
        /// Environments (root Applications in deploy/argocd/bootstrap/); default: all.
        #[arg(long = "env", value_parser = ["dev", "prod"])]
        envs: Vec<String>,
    },
    /// Internal: become the container described by a launch spec (used by the others).
    #[command(hide = true)]
    Container { spec: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Container { spec } => container::main(&spec),
        Command::ConfigContract { envs } => {
            let envs: Vec<&str> = if envs.is_empty() {
                argo::ENVIRONMENTS.to_vec()
            } else {
                envs.iter().map(String::as_str).collect()
            };
            finish(contract::run(&util::repo_root(), &envs))
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
