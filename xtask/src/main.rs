//! `cargo xtask <command>`: meshgate's chores, in Rust (`cargo xtask --help` lists them; see
//! xtask/README.md). `./scripts/test` and `./scripts/run` are `cargo xtask test` and
//! `cargo xtask run` after making sure a fresh machine has the pinned toolchain.
//!
//! - the suite: `test` runs every stage ([`suite`]); the stages run alone too: `build-filters`
//!   ([`filters`]), `validate-manifests` ([`manifests`]), `config-contract` ([`contract`]),
//!   `rehearse` ([`rehearse`]), `test-browser` ([`web`]), `test-operations` ([`operations`]),
//!   `architecture` ([`architecture`]); `services` finds or starts the servers the tests need
//!   ([`services`]);
//! - `ci`: formatting, lints and cargo deny, then `test` ([`ci`]);
//! - `run`: the whole stack on embedded defaults ([`stack`]); `build-web` builds the page;
//! - `fetch-crds`: the pinned upstream CRDs for the manifest validation ([`crds`]).
//!
//! `config-contract` and `rehearse` need root (namespaces, mounts); CI runs as root.

mod architecture;
mod argo;
mod ci;
mod container;
mod contract;
mod crds;
mod filters;
mod images;
mod manifests;
mod objects;
mod operations;
mod process;
mod python;
mod rehearse;
mod render;
mod secrets;
mod services;
mod stack;
mod suite;
mod util;
mod web;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "meshgate's chores (./scripts/test is `cargo xtask test`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Build the binaries as `cargo test --workspace` does (what `cargo xtask test` uses: a
    /// no-op after its cargo test stage) instead of `cargo build -p <package>`.
    #[arg(long, global = true)]
    test_build: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole test suite, every stage (what ./scripts/test and CI run); ends with `N passed, N failed`.
    Test(suite::TestArgs),
    /// What CI runs (.ci/run, the GitHub workflow): cargo fmt --check, clippy, cargo deny, then `test`.
    Ci(ci::CiArgs),
    /// The whole stack on embedded defaults (SQLite, in-process cache), no servers needed; Ctrl-C stops it.
    Run(stack::RunArgs),
    /// Find or start the PostgreSQL, Redis and NATS the tests need and print their URLs.
    Services {
        /// Start throwaway servers even when the environment names servers (DATABASE_URL,
        /// REDIS_URL, NATS_URL) or some answer on the default ports.
        #[arg(long, env = "MESHGATE_THROWAWAY_SERVICES")]
        throwaway: bool,
        /// Run this with the URLs in its environment, then stop what was started (without one:
        /// throwaway servers run until Ctrl-C).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Build the proxy-wasm filter modules (wasm32-wasip1, `wasm` profile).
    BuildFilters,
    /// Build the browser page into web/dist (npm ci when the lockfile changed, npm run build).
    BuildWeb,
    /// Validate mesh/, deploy/ and .github/workflows offline, then prove each validator rejects a bad input.
    ValidateManifests(manifests::ValidateArgs),
    /// Put the upstream CRDs (pinned in scripts/lib/crds.lock, verified by sha256) into DIR.
    FetchCrds {
        dir: PathBuf,
        /// Copy from a local folder laid out like DIR instead of downloading (verified too).
        #[arg(long, value_name = "SRC")]
        from: Option<PathBuf>,
    },
    /// The web page in headless Chromium against a real user-service and edge gateway.
    TestBrowser,
    /// The shipped synthetic probes and logs pipeline, run by their real programs against the real stack.
    TestOperations,
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
    if matches!(
        cli.command,
        Command::Test(_)
            | Command::Ci(_)
            | Command::Run(_)
            | Command::Services { .. }
            | Command::TestBrowser
            | Command::TestOperations
    ) && let Err(error) = process::handle_interrupts()
    {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Test(args) => finish(suite::run(&root, &args)),
        Command::Ci(args) => finish(ci::run(&root, &args)),
        Command::Run(args) => finish(stack::run(&root, &args)),
        Command::Services { throwaway, command } => finish(services::run(
            if throwaway {
                services::Mode::Throwaway
            } else {
                services::Mode::Reuse
            },
            &command,
        )),
        Command::BuildFilters => finish(filters::build(&root).map(|()| true)),
        Command::BuildWeb => finish(web::build(&root).map(|()| true)),
        Command::ValidateManifests(args) => finish(manifests::run(&root, &args)),
        Command::FetchCrds { dir, from } => finish(crds::fetch(&root, &dir, from.as_deref())),
        Command::TestBrowser => finish(web::test_browser(&root)),
        Command::TestOperations => finish(operations::run(&root)),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn test_arguments_reach_cargo_test_as_written() {
        for args in [
            &["user_service"][..],
            &["user_service", "--", "--nocapture"],
            &["--", "--nocapture"],
            &["-p", "xtask", "counts"],
        ] {
            let cli = Cli::try_parse_from(["cargo xtask", "test"].iter().chain(args)).unwrap();
            let Command::Test(test) = cli.command else {
                panic!("not the test command")
            };
            assert_eq!(test.cargo_test_args(), args, "{args:?}");
        }
    }

    /// `ci` hands its test arguments to `./scripts/test`: they must mean the same there.
    #[test]
    fn ci_passes_its_test_arguments_on_unchanged() {
        for args in [
            &[][..],
            &["--throwaway-services", "--only", "cargo", "user_service"],
            &["--only", "manifests", "--only", "browser"],
            &["user_service", "--", "--nocapture"],
        ] {
            let cli = Cli::try_parse_from(["cargo xtask", "ci"].iter().chain(args)).unwrap();
            let Command::Ci(ci) = cli.command else {
                panic!("not the ci command")
            };
            let cli_args = ci.test_args().to_cli_args();
            assert_eq!(cli_args, args, "{args:?}");
        }
    }

    /// Every visible command has a one-line about (what `cargo xtask --help` lists), the xtask
    /// README's table names every one, and every `cargo xtask <command>` the docs mention exists.
    #[test]
    fn the_docs_and_the_help_name_the_same_commands() {
        let cli = Cli::command();
        let visible: Vec<&str> = cli
            .get_subcommands()
            .filter(|command| !command.is_hide_set())
            .map(|command| {
                assert!(
                    command.get_about().is_some(),
                    "{} has no about",
                    command.get_name()
                );
                command.get_name()
            })
            .collect();
        let root = util::repo_root();
        let table = std::fs::read_to_string(root.join("xtask/README.md")).unwrap();
        for name in &visible {
            assert!(
                table.contains(&format!("| `{name}")),
                "xtask/README.md does not list `{name}`"
            );
        }
        for doc in ["README.md", "ARCHITECTURE.md", "xtask/README.md", ".ci/run"] {
            let text = std::fs::read_to_string(root.join(doc)).unwrap();
            for (at, _) in text.match_indices("cargo xtask ") {
                let name: String = text[at + "cargo xtask ".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect();
                if name.starts_with(|c: char| c.is_ascii_lowercase()) {
                    assert!(
                        visible.contains(&name.as_str()),
                        "{doc} mentions `cargo xtask {name}`, which does not exist"
                    );
                }
            }
        }
    }
}
