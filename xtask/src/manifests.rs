//! `cargo xtask validate-manifests`: everything under mesh/, deploy/ and .github/workflows
//! validated offline by scripts/lib/validate_manifests.py (its docstring lists the steps), with
//! its tools: the Python ones in a cached venv ([`crate::python::VALIDATE`]), promtool from
//! Debian's `prometheus`, amtool and the Alertmanager from `prometheus-alertmanager` (installed
//! as root when missing; otherwise the run says what to install).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::process;

#[derive(Debug, Default, clap::Args)]
pub struct ValidateArgs {
    /// Only the bad-input tests: prove each validator rejects its seeded input (deploy/tests/bad/).
    #[arg(long, conflicts_with = "no_self_test")]
    self_test: bool,
    /// Validate only, without the self-test.
    #[arg(long)]
    no_self_test: bool,
    /// Folder of upstream CRD YAML (default: ../shared/crds; `cargo xtask fetch-crds DIR` fills one).
    #[arg(long, env = "MESHGATE_CRDS_DIR", value_name = "DIR")]
    crds_dir: Option<PathBuf>,
}

pub fn run(root: &Path, args: &ValidateArgs) -> anyhow::Result<bool> {
    let python = crate::python::VALIDATE.ensure(root)?;
    process::ensure_program("promtool", "prometheus")?;
    process::ensure_program("amtool", "prometheus-alertmanager")?;
    process::ensure_program("prometheus-alertmanager", "prometheus-alertmanager")?;
    // Step nats-config runs every shipped NATS config through the real nats-server.
    process::ensure_program("nats-server", "nats-server")?;
    let venv_bin = python.parent().unwrap_or(Path::new("."));
    let path = std::env::join_paths(
        std::iter::once(venv_bin.to_path_buf()).chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths),
        ),
    )?;
    let mut command = Command::new(&python);
    command
        .current_dir(root)
        .env("PATH", path)
        // No __pycache__ inside the repository.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("scripts/lib/validate_manifests.py");
    if args.self_test {
        command.arg("--self-test");
    }
    if args.no_self_test {
        command.arg("--no-self-test");
    }
    if let Some(dir) = &args.crds_dir {
        command.arg("--crds-dir").arg(dir);
    }
    let status = command
        .status()
        .context("running scripts/lib/validate_manifests.py")?;
    Ok(status.success())
}
