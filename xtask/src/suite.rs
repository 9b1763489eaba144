//! `cargo xtask test` (what `./scripts/test` runs): the whole test suite. Every stage runs, in
//! order; a failing stage fails the run without hiding the ones after it. The last line is
//! `N passed, N failed`: the Rust tests, plus one failure per failed stage.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::process;
use crate::services::{Mode, Services};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Start throwaway PostgreSQL, Redis and NATS servers even when the environment names
    /// servers (DATABASE_URL, REDIS_URL, NATS_URL) or some answer on the default ports.
    #[arg(long, env = "MESHGATE_THROWAWAY_SERVICES")]
    throwaway_services: bool,
    /// Passed on to `cargo test --workspace --locked --no-fail-fast` (a test name filter; after
    /// `--`, arguments of the test binaries).
    #[arg(allow_hyphen_values = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<String>,
    /// What follows a leading `--` (clap takes that `--` for its own): the test binaries'.
    #[arg(last = true, hide = true)]
    test_binary_args: Vec<String>,
    /// Run only this stage (repeatable; default: every stage). The summary names the ones left
    /// out.
    #[arg(long, value_enum, value_name = "STAGE")]
    only: Vec<Stage>,
}

/// The suite's stages, in the order they run (the services come first, always).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The wasm filter modules (`build-filters`).
    Filters,
    /// `cargo test --workspace`.
    Cargo,
    /// `validate-manifests`.
    Manifests,
    /// `config-contract --test-build`.
    ConfigContract,
    /// `rehearse --test-build`.
    Rehearsals,
    /// `test-browser`.
    Browser,
    /// `test-operations`.
    Operations,
}

impl TestArgs {
    /// These arguments as `cargo xtask test` (and `./scripts/test`) take them.
    pub fn to_cli_args(&self) -> Vec<String> {
        use clap::ValueEnum;
        let mut args = Vec::new();
        if self.throwaway_services {
            args.push("--throwaway-services".to_owned());
        }
        for stage in &self.only {
            if let Some(value) = stage.to_possible_value() {
                args.extend(["--only".to_owned(), value.get_name().to_owned()]);
            }
        }
        args.extend(self.cargo_test_args.iter().cloned());
        if !self.test_binary_args.is_empty() {
            args.push("--".to_owned());
            args.extend(self.test_binary_args.iter().cloned());
        }
        args
    }

    /// The arguments for `cargo test`, as they were written.
    pub fn cargo_test_args(&self) -> Vec<String> {
        let mut args = self.cargo_test_args.clone();
        if !self.test_binary_args.is_empty() {
            args.push("--".to_owned());
            args.extend(self.test_binary_args.iter().cloned());
        }
        args
    }
}

fn say(stage: &str) {
    println!("\x1b[1m== {stage}\x1b[0m");
}

pub fn run(root: &Path, args: &TestArgs) -> anyhow::Result<bool> {
    say("services");
    let services = Services::ensure(if args.throwaway_services {
        Mode::Throwaway
    } else {
        Mode::Reuse
    })?;
    for (name, value) in services.env() {
        println!("{name}={value}");
    }

    say("python test tools");
    // openapi-spec-validator checks the gateway's /openapi.json in the Rust tests.
    let python = crate::python::TESTS.ensure(root)?;

    let wanted = |stage: Stage| args.only.is_empty() || args.only.contains(&stage);
    if wanted(Stage::Filters) {
        say("wasm filter modules");
        crate::filters::build(root)?;
    }

    let mut counts = Counts::default();
    if wanted(Stage::Cargo) {
        say("cargo test (workspace)");
        let mut cargo = process::cargo(root);
        // --no-fail-fast: one failing test binary must not hide the results of the others.
        cargo
            .args(["test", "--workspace", "--locked", "--no-fail-fast"])
            .args(args.cargo_test_args())
            .env("MESHGATE_PYTHON", &python)
            .envs(services.env());
        let cargo_ok;
        (cargo_ok, counts) = run_counting(&mut cargo, &mut std::io::stdout())?;
        if !cargo_ok && counts.failed == 0 {
            // cargo failed without a failing test: a build error counts as one failure.
            counts.failed = 1;
        }
    }

    // Every shipped config through the real binaries, then a local deployment of each
    // environment (they need root; kubectl comes from the manifests stage's venv).
    let stages: [(Stage, &str, &dyn Fn() -> bool); 5] = [
        (Stage::Manifests, "manifests", &|| {
            report(crate::manifests::run(root, &Default::default()))
        }),
        (Stage::ConfigContract, "config contract", &|| {
            xtask(&["config-contract", "--test-build"])
        }),
        (Stage::Rehearsals, "deployment rehearsals", &|| {
            xtask(&["rehearse", "--test-build"])
        }),
        (Stage::Browser, "browser", &|| {
            report(crate::web::test_browser(root))
        }),
        (
            Stage::Operations,
            "operations (synthetic probes, logs contract)",
            &|| report(crate::operations::run(root)),
        ),
    ];
    let mut outcomes = Vec::new();
    let mut left_out = Vec::new();
    for (stage, title, run) in stages {
        let name = title.split(" (").next().unwrap_or(title);
        if wanted(stage) {
            say(title);
            outcomes.push((name, run()));
        } else {
            left_out.push(name);
        }
    }

    counts.failed += outcomes.iter().filter(|(_, ok)| !ok).count() as u64;
    say(&format!(
        "summary (target dir: {})",
        process::target_dir(root).display()
    ));
    let mut line: Vec<String> = outcomes
        .iter()
        .map(|(name, ok)| format!("{name}: {}", if *ok { "ok" } else { "FAILED" }))
        .collect();
    if !left_out.is_empty() {
        line.push(format!("not run (--only): {}", left_out.join(", ")));
    }
    println!("{}", line.join("  "));
    println!("{} passed, {} failed", counts.passed, counts.failed);
    Ok(counts.failed == 0)
}

/// A stage run in this process: an error fails it, saying why.
fn report(result: anyhow::Result<bool>) -> bool {
    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        false
    })
}

/// Another command of this xtask, in its own process (the rehearsal enters namespaces).
fn xtask(args: &[&str]) -> bool {
    let exe = std::env::current_exe().unwrap_or_else(|_| "cargo-xtask".into());
    report(
        Command::new(exe)
            .args(args)
            .status()
            .map(|status| status.success())
            .context("running this xtask"),
    )
}

/// Tests counted from cargo test's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
}

impl Counts {
    /// Adds a `test result: ok. 12 passed; 0 failed; ...` line (others are ignored).
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let number_before = |word: &str| {
            rest.split(';')
                .filter_map(|part| part.trim().rsplit_once(' '))
                .find(|(_, name)| *name == word)
                .and_then(|(number, _)| number.rsplit(' ').next()?.parse::<u64>().ok())
        };
        self.passed += number_before("passed").unwrap_or(0);
        self.failed += number_before("failed").unwrap_or(0);
    }
}

/// Runs `command` with its stdout and stderr merged, copied to `out`, counting its tests.
fn run_counting(command: &mut Command, out: &mut impl Write) -> anyhow::Result<(bool, Counts)> {
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut child = command
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("running `{}`", process::describe(command)))?;
    // The command still holds the pipe's write ends: drop them, so that the reader ends when
    // the child (and everything it started) closes theirs.
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut counts = Counts::default();
    for line in BufReader::new(reader).split(b'\n') {
        let line = line?;
        out.write_all(&line)?;
        out.write_all(b"\n")?;
        counts.add_line(&String::from_utf8_lossy(&line));
    }
    let status = child.wait()?;
    Ok((status.success(), counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_the_result_lines_only() {
        let mut counts = Counts::default();
        for line in [
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            "test it_says_7 passed ... ok",
            "   Doc-tests x",
        ] {
            counts.add_line(line);
        }
        assert_eq!(
            counts,
            Counts {
                passed: 15,
                failed: 2
            }
        );
    }

    #[test]
    fn run_counting_merges_stdout_and_stderr_and_reports_the_status() {
        let mut out = Vec::new();
        let (ok, counts) = run_counting(
            Command::new("sh").args([
                "-c",
                "echo 'test result: ok. 2 passed; 0 failed;'; \
                 echo 'test result: FAILED. 1 passed; 1 failed;' >&2; exit 3",
            ]),
            &mut out,
        )
        .unwrap();
        assert!(!ok);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "test result: ok. 2 passed; 0 failed;\ntest result: FAILED. 1 passed; 1 failed;\n"
        );
        assert_eq!(
            counts,
            Counts {
                passed: 3,
                failed: 1
            }
        );
    }
}
