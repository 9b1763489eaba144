//! `cargo xtask fetch-crds DIR`: the upstream CRDs `cargo xtask validate-manifests` checks
//! custom resources against, each pinned to a release tag and verified by sha256
//! (scripts/lib/crds.lock). For CI runners that have no ../shared/crds; the CRDs are never
//! committed to this repository. Lock entries under `pending/` go to `DIR-pending` (CRDs a plain
//! YAML safe loader refuses; the validator reads them from there, like ../shared/crds-pending).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::process;

pub const LOCK: &str = "scripts/lib/crds.lock";

/// One pinned CRD file.
#[derive(Debug, PartialEq, Eq)]
struct Pin {
    sha256: String,
    /// Where it goes, relative to DIR (`pending/...`: relative to DIR-pending).
    path: String,
    repo: String,
    tag: String,
    upstream: String,
}

impl Pin {
    fn url(&self) -> String {
        format!(
            "https://raw.githubusercontent.com/{}/{}/{}",
            self.repo, self.tag, self.upstream
        )
    }

    /// The file under `dir` (or `dir`-pending) this pin names.
    fn under(&self, dir: &Path) -> PathBuf {
        match self.path.strip_prefix("pending/") {
            Some(rest) => {
                let mut pending = dir.as_os_str().to_owned();
                pending.push("-pending");
                PathBuf::from(pending).join(rest)
            }
            None => dir.join(&self.path),
        }
    }
}

/// `sha256 path repo tag upstream` lines; `#` comments and blank lines skipped.
fn parse_lock(text: &str) -> anyhow::Result<Vec<Pin>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(number, line)| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [sha256, path, repo, tag, upstream] = fields[..] else {
                bail!(
                    "{LOCK}:{}: expected `sha256 path repo tag upstream-path`",
                    number + 1
                );
            };
            Ok(Pin {
                sha256: sha256.to_owned(),
                path: path.to_owned(),
                repo: repo.to_owned(),
                tag: tag.to_owned(),
                upstream: upstream.to_owned(),
            })
        })
        .collect()
}

/// Downloads (or, with `from`, copies from a folder laid out like `dest`) every pinned CRD into
/// `dest`; a file whose sha256 differs from its pin is removed and fails the run.
pub fn fetch(root: &Path, dest: &Path, from: Option<&Path>) -> anyhow::Result<bool> {
    let lock =
        std::fs::read_to_string(root.join(LOCK)).with_context(|| format!("reading {LOCK}"))?;
    let mut ok = true;
    for pin in parse_lock(&lock)? {
        let out = pin.under(dest);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let fetched = match from {
            Some(source) => {
                let source = pin.under(source);
                std::fs::copy(&source, &out)
                    .map(drop)
                    .with_context(|| format!("copying {}", source.display()))
            }
            None => process::run(
                Command::new("curl")
                    .args(["-fsSL", "--retry", "3", "-o"])
                    .arg(&out)
                    .arg(pin.url()),
            ),
        };
        if let Err(error) = fetched {
            eprintln!("error: {}: {error:#}", pin.path);
            ok = false;
            continue;
        }
        let got = hex::encode(Sha256::digest(std::fs::read(&out)?));
        if got != pin.sha256 {
            eprintln!(
                "error: {} does not match its pinned sha256 ({} {})",
                pin.path, pin.repo, pin.tag
            );
            let _ = std::fs::remove_file(&out);
            ok = false;
        }
    }
    if ok {
        println!("CRDs in {}", dest.display());
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_names_where_each_file_goes_and_where_it_comes_from() {
        let pins = parse_lock(
            "# comment\n\nabc argo-cd/app.yaml argoproj/argo-cd v3.5.1 manifests/crds/app.yaml\n\
             def pending/am.yaml prometheus-operator/prometheus-operator v0.1 x/am.yaml\n",
        )
        .unwrap();
        assert_eq!(pins.len(), 2);
        assert_eq!(
            pins[0].url(),
            "https://raw.githubusercontent.com/argoproj/argo-cd/v3.5.1/manifests/crds/app.yaml"
        );
        assert_eq!(
            pins[0].under(Path::new("/c")),
            PathBuf::from("/c/argo-cd/app.yaml")
        );
        assert_eq!(
            pins[1].under(Path::new("/c")),
            PathBuf::from("/c-pending/am.yaml")
        );
        assert!(parse_lock("abc too few\n").is_err());
    }

    #[test]
    fn the_shipped_lock_parses() {
        let text = std::fs::read_to_string(crate::util::repo_root().join(LOCK)).unwrap();
        let pins = parse_lock(&text).unwrap();
        assert!(!pins.is_empty());
        assert!(pins.iter().all(|pin| pin.sha256.len() == 64));
    }
}
