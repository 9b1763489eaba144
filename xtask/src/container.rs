//! Running a planned container the way a container runtime would, with Linux namespaces
//! instead of an image:
//!
//! - a private mount namespace whose root is an overlay of the host's `/` (copy-on-write, on a
//!   tmpfs that disappears with the namespace), so nothing a container creates or mounts is
//!   seen outside it;
//! - the binary bind-mounted at the image's ENTRYPOINT path, the volumes (materialised on the
//!   host in the Kubernetes atomic-writer layout) bind-mounted at their `mountPath`s,
//!   `/etc/resolv.conf` and `/etc/hosts` as the pod has them;
//! - `readOnlyRootFilesystem`, the uid/gid/groups and `allowPrivilegeEscalation: false`
//!   applied; then `exec`.
//!
//! So the binary sees exactly the paths the manifests give it (no path rewriting). The host
//! side ([`prepare`]) writes the files; `cargo xtask container SPEC` ([`exec`]) is the process
//! that enters the namespaces and becomes the container (started with `ip netns exec` for the
//! pod's network namespace).

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid, chdir, chroot, setgid, setgroups, setuid};
use serde::{Deserialize, Serialize};

use crate::workload::{ContainerPlan, MountPlan, VolumeContent};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub no_new_privileges: bool,
    pub hostname: Option<String>,
    /// A fresh network namespace with nothing but a down loopback: proves a validate-only run
    /// connects nowhere.
    pub isolate_network: bool,
    pub root: RootSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootSpec {
    /// An empty host directory the launcher mounts its tmpfs (overlay upper layer) on.
    pub scratch: PathBuf,
    pub read_only: bool,
    pub binds: Vec<BindSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindSpec {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// A binary that stands in for what an image would run at `target`.
#[derive(Debug, Clone)]
pub struct Program {
    pub host_path: PathBuf,
    pub target: String,
}

/// What a container gets besides its plan: the programs in place of its image, extra files
/// (`/etc/hosts`...), its hostname, and whether it has any network.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub programs: Vec<Program>,
    pub binds: Vec<BindSpec>,
    pub hostname: String,
    pub isolate_network: bool,
}

/// Writes the container's volumes under `pod_dir` (shared by the pod's containers, as the
/// kubelet's are) and returns the launch spec running `argv`.
pub fn prepare(
    pod_dir: &Path,
    container_dir: &Path,
    plan: &ContainerPlan,
    argv: Vec<String>,
    sandbox: Sandbox,
) -> anyhow::Result<LaunchSpec> {
    let scratch = container_dir.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let mut binds = sandbox.binds;
    for program in &sandbox.programs {
        binds.push(BindSpec {
            source: program.host_path.clone(),
            target: program.target.clone(),
            read_only: true,
        });
    }
    for mount in &plan.mounts {
        let volume_dir = materialize_volume(pod_dir, mount, &plan.security.supplementary_groups)?;
        let source = match &mount.sub_path {
            // The kubelet binds the resolved path: a subPath file does not follow later updates.
            Some(sub) => std::fs::canonicalize(volume_dir.join(sub)).with_context(|| {
                format!("volume {}: subPath {sub} does not exist", mount.volume)
            })?,
            None => volume_dir,
        };
        binds.push(BindSpec {
            source,
            target: mount.mount_path.clone(),
            read_only: mount.read_only,
        });
    }
    Ok(LaunchSpec {
        argv,
        env: plan.env.clone(),
        working_dir: plan.working_dir.clone(),
        uid: plan.security.uid,
        gid: plan.security.gid,
        groups: plan.security.supplementary_groups.clone(),
        no_new_privileges: plan.security.no_new_privileges,
        hostname: Some(sandbox.hostname),
        isolate_network: sandbox.isolate_network,
        root: RootSpec {
            scratch,
            read_only: plan.security.read_only_root,
            binds,
        },
    })
}

/// Materialises a volume once per pod: ConfigMap/Secret files in the atomic-writer layout
/// (`..<version>/file`, `..data -> ..<version>`, `file -> ..data/file`), emptyDirs as
/// world-writable directories.
fn materialize_volume(
    pod_dir: &Path,
    mount: &MountPlan,
    groups: &[u32],
) -> anyhow::Result<PathBuf> {
    let dir = pod_dir.join("volumes").join(&mount.volume);
    if dir.exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    match &mount.content {
        VolumeContent::EmptyDir { .. } => {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
        }
        VolumeContent::Files(files) => {
            let version = "..rehearsal_1";
            let fs_group = groups.last().copied();
            let mut top_level = std::collections::BTreeSet::new();
            for file in files {
                let path = dir.join(version).join(&file.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, &file.content)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))?;
                if let Some(group) = fs_group {
                    nix::unistd::chown(&path, None, Some(Gid::from_raw(group)))?;
                }
                if let Some(first) = Path::new(&file.path).components().next() {
                    top_level.insert(first.as_os_str().to_owned());
                }
            }
            std::fs::create_dir_all(dir.join(version))?;
            std::os::unix::fs::symlink(version, dir.join("..data"))?;
            for entry in top_level {
                std::os::unix::fs::symlink(Path::new("..data").join(&entry), dir.join(&entry))?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(dir)
}

/// Enters fresh mount/UTS(/network) namespaces, builds the container's root and execs the
/// program. Only returns on failure.
pub fn exec(spec: &LaunchSpec) -> anyhow::Result<Infallible> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if spec.isolate_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).context("unshare (mount, UTS, IPC namespaces)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private")?;
    if let Some(hostname) = &spec.hostname {
        nix::unistd::sethostname(hostname).context("sethostname")?;
    }
    let new_root = build_root(&spec.root)?;
    chdir(&new_root)?;
    chroot(".").context("chroot")?;
    chdir(Path::new(&spec.working_dir))
        .with_context(|| format!("workingDir {}", spec.working_dir))?;
    if spec.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().context("PR_SET_NO_NEW_PRIVS")?;
    }
    let groups: Vec<Gid> = std::iter::once(spec.gid)
        .chain(spec.groups.iter().copied())
        .map(Gid::from_raw)
        .collect();
    setgroups(&groups).context("setgroups")?;
    setgid(Gid::from_raw(spec.gid)).context("setgid")?;
    setuid(Uid::from_raw(spec.uid)).context("setuid")?;
    // Set after the credential change (which clears it): if the rehearsal dies, even by
    // SIGKILL, its containers die with it.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("PR_SET_PDEATHSIG")?;
    let program = resolve_program(&spec.argv[0], &spec.env)?;
    let error = std::process::Command::new(&program)
        .arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .exec();
    Err(anyhow!("exec {}: {error}", program.display()))
}

fn build_root(root: &RootSpec) -> anyhow::Result<PathBuf> {
    let scratch = &root.scratch;
    mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("tmpfs for the container root")?;
    let (upper, work, merged) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("root"),
    );
    for dir in [&upper, &work, &merged] {
        std::fs::create_dir(dir)?;
    }
    let options = format!(
        "lowerdir=/,upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .context("overlay of / as the container root")?;
    for system in ["proc", "sys", "dev"] {
        mount(
            Some(Path::new("/").join(system).as_path()),
            &merged.join(system),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("binding /{system}"))?;
    }
    // All binds first (mount points may nest), then the read-only remounts.
    for bind in &root.binds {
        let target = merged.join(bind.target.trim_start_matches('/'));
        let is_dir = bind.source.is_dir();
        if is_dir {
            std::fs::create_dir_all(&target)
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if target.exists() {
                Ok(())
            } else {
                std::fs::write(&target, b"")
            }
        }
        .with_context(|| format!("mount point {}", bind.target))?;
        mount(
            Some(bind.source.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("binding {} at {}", bind.source.display(), bind.target))?;
    }
    let read_only = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for bind in root.binds.iter().filter(|b| b.read_only) {
        let target = merged.join(bind.target.trim_start_matches('/'));
        mount(None::<&str>, &target, None::<&str>, read_only, None::<&str>)
            .with_context(|| format!("read-only {}", bind.target))?;
    }
    if root.read_only {
        mount(None::<&str>, &merged, None::<&str>, read_only, None::<&str>)
            .context("readOnlyRootFilesystem")?;
    }
    Ok(merged)
}

/// `execvp` semantics against the container's own PATH.
fn resolve_program(name: &str, env: &[(String, String)]) -> anyhow::Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(crate::workload::DEFAULT_PATH);
    for dir in path.split(':') {
        let candidate = Path::new(dir).join(name);
        if crate::util::is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    bail!("{name}: not found on the container's PATH ({path})")
}

/// `cargo xtask container SPEC`: read the spec, become the container.
pub fn main(spec_path: &Path) -> std::process::ExitCode {
    let result = std::fs::read(spec_path)
        .context("reading the launch spec")
        .and_then(|bytes| serde_json::from_slice::<LaunchSpec>(&bytes).context("launch spec"))
        .and_then(|spec| exec(&spec));
    let Err(error) = result;
    eprintln!("container launcher: {error:#}");
    // Docker's code for "the runtime could not start the container".
    std::process::ExitCode::from(125)
}
