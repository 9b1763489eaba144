//! Our images, read from `deploy/images/<name>/Dockerfile`: the final stage's ENTRYPOINT, CMD,
//! USER, WORKDIR and ENV, and the workspace binary its builder stage compiles. A container
//! whose image is `<registry>/<anything>/<name>:<tag>` with such a Dockerfile is ours: the
//! contract and the rehearsal run the binary from this checkout in its place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub const IMAGES_DIR: &str = "deploy/images";

/// What the image would run, from its Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// `deploy/images/<name>/Dockerfile`.
    pub dockerfile: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// `cargo build -p <package> --bin <binary>` of the builder stage.
    pub package: String,
    pub binary: String,
}

impl ImageConfig {
    /// Where the image puts the binary (the ENTRYPOINT's program).
    pub fn binary_path_in_image(&self) -> &str {
        self.entrypoint.first().map(String::as_str).unwrap_or("")
    }
}

/// The image repository's last path component: `registry/x/user-service:1.0` → `user-service`.
pub fn image_short_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// Our image named by `image`, if there is a Dockerfile for it.
pub fn our_image(root: &Path, image: &str) -> anyhow::Result<Option<ImageConfig>> {
    let name = image_short_name(image);
    let dockerfile = format!("{IMAGES_DIR}/{name}/Dockerfile");
    let path = root.join(&dockerfile);
    if name.is_empty() || !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {dockerfile}"))?;
    parse_dockerfile(&dockerfile, &text).map(Some)
}

/// Parses the instructions the run depends on. Line continuations are joined; only the last
/// stage's runtime instructions count (as in the built image).
pub fn parse_dockerfile(name: &str, text: &str) -> anyhow::Result<ImageConfig> {
    let mut instructions: Vec<(String, String)> = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let full = std::mem::take(&mut pending);
        let (keyword, rest) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
    }
    let mut config = ImageConfig {
        dockerfile: name.to_owned(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        env: Vec::new(),
        user: None,
        workdir: None,
        package: String::new(),
        binary: String::new(),
    };
    let mut builds: Vec<(String, String)> = Vec::new();
    for (keyword, rest) in &instructions {
        match keyword.as_str() {
            // A new stage resets what the image inherits from the previous one.
            "FROM" => {
                config.entrypoint.clear();
                config.cmd.clear();
                config.env.clear();
                config.user = None;
                config.workdir = None;
            }
            "ENTRYPOINT" => {
                config.entrypoint = exec_form(rest);
                config.cmd.clear();
            }
            "CMD" => config.cmd = exec_form(rest),
            "USER" => config.user = Some(rest.clone()),
            "WORKDIR" => config.workdir = Some(rest.clone()),
            "ENV" => config.env.extend(env_pairs(rest)),
            "RUN" => builds.extend(cargo_builds(rest)),
            _ => {}
        }
    }
    let Some(program) = config.entrypoint.first() else {
        bail!("{name}: the final stage has no ENTRYPOINT");
    };
    let binary = Path::new(program)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((package, _)) = builds.iter().find(|(_, bin)| *bin == binary) else {
        bail!(
            "{name}: ENTRYPOINT {program} is not a binary the Dockerfile builds (`cargo build -p <package> --bin {binary}`)"
        );
    };
    config.package = package.clone();
    config.binary = binary;
    Ok(config)
}

/// `["a", "b"]` (exec form) or `a b` (shell form, run by `/bin/sh -c`).
fn exec_form(rest: &str) -> Vec<String> {
    if rest.starts_with('[')
        && let Ok(list) = serde_json::from_str::<Vec<String>>(rest)
    {
        return list;
    }
    vec!["/bin/sh".into(), "-c".into(), rest.to_owned()]
}

fn env_pairs(rest: &str) -> Vec<(String, String)> {
    if !rest.contains('=') {
        return match rest.split_once(char::is_whitespace) {
            Some((k, v)) => vec![(k.to_owned(), v.trim().to_owned())],
            None => Vec::new(),
        };
    }
    rest.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// Every `(package, binary)` a `cargo build ... -p P --bin B` in a RUN builds.
fn cargo_builds(run: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for command in run.split("&&") {
        let words: Vec<&str> = command.split_whitespace().collect();
        let Some(at) = words.windows(2).position(|w| w == ["cargo", "build"]) else {
            continue;
        };
        let args = &words[at + 2..];
        let value_of = |flags: &[&str]| -> Vec<String> {
            args.windows(2)
                .filter(|w| flags.contains(&w[0]))
                .map(|w| w[1].to_owned())
                .collect()
        };
        let packages = value_of(&["-p", "--package"]);
        for binary in value_of(&["--bin"]) {
            let package = packages.first().cloned().unwrap_or_else(|| binary.clone());
            found.push((package, binary));
        }
    }
    found
}

/// How the binaries are built (both in the debug profile, into the target dir).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `cargo build -p <package> --bin <binary>` for each image.
    Packages,
    /// `cargo test --workspace --no-run`: the same artifacts `cargo test --workspace` makes (a
    /// no-op right after it, where `Packages`' different feature set would rebuild much).
    LikeWorkspaceTests,
}

/// Builds the binaries of `images` and returns where they are.
pub fn build_binaries(
    root: &Path,
    images: &[ImageConfig],
    build: Build,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut wanted: BTreeMap<&str, &str> = BTreeMap::new();
    for image in images {
        wanted.insert(&image.binary, &image.package);
    }
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut command = crate::process::cargo(root);
    match build {
        Build::Packages => {
            command.args(["build", "--quiet", "--locked"]);
            for (binary, package) in &wanted {
                command.args(["-p", package, "--bin", binary]);
            }
        }
        Build::LikeWorkspaceTests => {
            command.args(["test", "--workspace", "--no-run", "--quiet", "--locked"]);
        }
    }
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!(
            "cargo build of {:?} failed",
            wanted.keys().collect::<Vec<_>>()
        );
    }
    let target = crate::process::target_dir(root);
    Ok(wanted
        .keys()
        .map(|binary| ((*binary).to_owned(), target.join("debug").join(binary)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str = r#"
FROM rust AS builder
ENTRYPOINT ["/wrong"]
RUN --mount=type=cache,target=/x \
    cargo build --release --locked -p user-service --bin user-service \
 && install -D target/release/user-service /out/user-service
FROM distroless
ENV A=1 B="two"
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/user-service"]
"#;

    #[test]
    fn final_stage_entrypoint_and_built_binary() {
        let config = parse_dockerfile("Dockerfile", DOCKERFILE).unwrap();
        assert_eq!(config.entrypoint, ["/usr/local/bin/user-service"]);
        assert_eq!(
            (config.package.as_str(), config.binary.as_str()),
            ("user-service", "user-service")
        );
        assert_eq!(config.user.as_deref(), Some("65532:65532"));
        assert_eq!(
            config.env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "two".to_owned())
            ]
        );
    }

    #[test]
    fn an_entrypoint_the_dockerfile_does_not_build_is_refused() {
        let text = DOCKERFILE.replace("/usr/local/bin/user-service", "/usr/local/bin/other");
        let error = parse_dockerfile("deploy/images/x/Dockerfile", &text).unwrap_err();
        assert!(
            error.to_string().contains("deploy/images/x/Dockerfile"),
            "{error}"
        );
    }

    #[test]
    fn short_names_drop_registry_tag_and_digest() {
        assert_eq!(
            image_short_name("registry.example.com/meshgate/edge-gateway:0.1.0"),
            "edge-gateway"
        );
        assert_eq!(image_short_name("localhost:5000/a/b@sha256:00"), "b");
        assert_eq!(image_short_name("valkey"), "valkey");
    }
}
