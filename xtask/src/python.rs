//! The Python tools' virtual environments, cached outside the repository
//! (`${XDG_CACHE_HOME:-~/.cache}/meshgate/<name>`) and rebuilt when their requirements change.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::process;

/// The validator's tools (kubectl, kubernetes-validate, yamllint, ...): `MESHGATE_VENV`.
pub const VALIDATE: Venv = Venv {
    name: "venv",
    override_var: "MESHGATE_VENV",
    requirements: "scripts/lib/validate-requirements.txt",
};

/// The Rust tests' helpers (openapi-spec-validator, PyYAML) and the logs contract:
/// `MESHGATE_TEST_VENV`.
pub const TESTS: Venv = Venv {
    name: "test-venv",
    override_var: "MESHGATE_TEST_VENV",
    requirements: "scripts/lib/test-requirements.txt",
};

#[derive(Debug, Clone, Copy)]
pub struct Venv {
    name: &'static str,
    override_var: &'static str,
    requirements: &'static str,
}

impl Venv {
    /// Where it lives: `$<override_var>`, else the cache folder.
    pub fn dir(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os(self.override_var) {
            return PathBuf::from(dir);
        }
        cache_dir().join(self.name)
    }

    /// Creates or updates the venv (once per requirements file content); returns its python.
    pub fn ensure(&self, root: &Path) -> anyhow::Result<PathBuf> {
        let dir = self.dir();
        let python = dir.join("bin/python");
        let requirements = root.join(self.requirements);
        let text = std::fs::read(&requirements)
            .with_context(|| format!("reading {}", requirements.display()))?;
        let want = hex::encode(Sha256::digest(&text));
        let stamp = dir.join(".requirements.sha256");
        let have = std::fs::read_to_string(&stamp).unwrap_or_default();
        if crate::util::is_executable(&python) && have.trim() == want {
            return Ok(python);
        }
        if crate::util::which("python3").is_none() {
            bail!("python3 (3.11+) is required");
        }
        println!("== installing Python tools into {} (once)", dir.display());
        process::run(Command::new("python3").arg("-m").arg("venv").arg(&dir)).context(
            "'python3 -m venv' failed; on Debian/Ubuntu: apt-get install -y python3-venv",
        )?;
        process::run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements),
        )?;
        std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
        Ok(python)
    }
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/meshgate`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("meshgate")
}
