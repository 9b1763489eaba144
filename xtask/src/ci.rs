//! `cargo xtask ci` (what `.ci/run` and the GitHub workflow run): formatting, lints and the
//! dependency policy, then exactly the README's test command (`./scripts/test`). Stops at the first failing check:
//! the suite is the long part.

use std::path::Path;

use crate::process;

const FUZZ_MANIFEST: &str = "edge-gateway/fuzz/Cargo.toml";
const CARGO_DENY_VERSION: &str = "0.20.2";

#[derive(Debug, clap::Args)]
pub struct CiArgs {
    /// Also check the RustSec advisories (their database is a git repository on GitHub: the
    /// workflow reaches it, the CI machine does not).
    #[arg(long)]
    advisories: bool,
    #[command(flatten)]
    test: crate::suite::TestArgs,
}

impl CiArgs {
    pub fn test_args(&self) -> &crate::suite::TestArgs {
        &self.test
    }
}

pub fn run(root: &Path, args: &CiArgs) -> anyhow::Result<bool> {
    let cargo = || process::cargo(root);
    lint(root, "workspace", &["--all"], &["--workspace"])?;
    // The fuzz targets live outside the workspace (own Cargo.lock; refresh it with a plain
    // `cargo check --manifest-path edge-gateway/fuzz/Cargo.toml` when the gateway's deps change).
    let fuzz = ["--manifest-path", FUZZ_MANIFEST];
    lint(root, "fuzz targets", &fuzz, &fuzz)?;
    // Licences, banned and duplicate crates, sources (deny.toml). Installed once into
    // ~/.cargo/bin, so later runs skip the build.
    println!("== cargo deny");
    if crate::util::which("cargo-deny").is_none() {
        process::run(cargo().args([
            "install",
            "--locked",
            "cargo-deny",
            "--version",
            CARGO_DENY_VERSION,
        ]))?;
    }
    let mut deny = cargo();
    deny.args(["deny", "--locked", "check", "licenses", "bans", "sources"]);
    if args.advisories {
        deny.arg("advisories");
    }
    process::run(&mut deny)?;
    // The README's test command itself, so CI proves what a new user runs.
    println!("== ./scripts/test");
    let status = std::process::Command::new(root.join("scripts/test"))
        .args(args.test_args().to_cli_args())
        .current_dir(root)
        .status()?;
    Ok(status.success())
}

/// `cargo fmt --check` and `cargo clippy --all-targets --locked -D warnings` over one set of
/// crates: `fmt_scope` and `clippy_scope` name it (`--all` / `--workspace`, or a manifest).
fn lint(root: &Path, what: &str, fmt_scope: &[&str], clippy_scope: &[&str]) -> anyhow::Result<()> {
    println!("== {what}: cargo fmt --check, cargo clippy");
    process::run(
        process::cargo(root)
            .arg("fmt")
            .args(fmt_scope)
            .arg("--check"),
    )?;
    process::run(process::cargo(root).arg("clippy").args(clippy_scope).args([
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))
}
