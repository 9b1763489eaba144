//! What the kubelet would run for each container of a pod template: the command line (image
//! ENTRYPOINT/CMD and the container's `command`/`args`, `$(VAR)` expanded), the environment
//! (`env`, `envFrom`, ConfigMap/Secret/field references), the mounted files (ConfigMap, Secret
//! and projected volumes, emptyDirs), the probes and the security context. Pure: the objects
//! come from a [`Store`]; nothing here touches the host.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use serde_json::Value;

use crate::images::ImageConfig;
use crate::objects::{Object, ObjectId, Origin};

/// Docker's default PATH, which distroless and most images set.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

mod env;
mod probes;
mod security;
mod store;
#[cfg(test)]
mod tests;
mod volumes;

use env::container_env;
pub use env::{expand, secret_env_values};
use probes::{parse_hook, parse_probe};
use security::security_plan;
pub use store::{DataObject, Store};
use volumes::container_mounts;

/// The pod a container runs in (for `fieldRef`s, `/etc/hosts` and messages).
#[derive(Debug, Clone)]
pub struct PodContext {
    pub name: String,
    pub namespace: String,
    pub ip: String,
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A pod template and the workload object that carries it.
#[derive(Debug, Clone)]
pub struct PodTemplate<'a> {
    pub workload: &'a Object,
    pub template: &'a Value,
}

impl PodTemplate<'_> {
    pub fn spec(&self) -> &Value {
        &self.template["spec"]
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        crate::objects::string_map(&self.template["metadata"]["labels"])
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        crate::objects::string_map(&self.template["metadata"]["annotations"])
    }

    pub fn service_account(&self) -> &str {
        self.spec()["serviceAccountName"]
            .as_str()
            .or_else(|| self.spec()["serviceAccount"].as_str())
            .unwrap_or("default")
    }

    /// `(container, is_init)` for every init container, then every container.
    pub fn containers(&self) -> Vec<(&Value, bool)> {
        let spec = self.spec();
        let init = spec["initContainers"].as_array().into_iter().flatten();
        let main = spec["containers"].as_array().into_iter().flatten();
        init.map(|c| (c, true))
            .chain(main.map(|c| (c, false)))
            .collect()
    }
}

/// The pod template of a workload kind that makes pods, or `None` (a Rollout with
/// `workloadRef` takes the referenced Deployment's, which is rehearsed as that Deployment).
pub fn pod_template(object: &Object) -> Option<PodTemplate<'_>> {
    let template = match (object.group(), object.kind()) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("argoproj.io", "Rollout") => &object.value["spec"]["template"],
        ("batch", "CronJob") => &object.value["spec"]["jobTemplate"]["spec"]["template"],
        ("", "Pod") => &object.value,
        _ => return None,
    };
    template.is_object().then_some(PodTemplate {
        workload: object,
        template,
    })
}

/// One file a volume shows, relative to its mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeContent {
    /// ConfigMap, Secret or projected volume: files written once, shown read-only.
    Files(Vec<VolumeFile>),
    /// An empty writable directory for the pod's lifetime (`medium: Memory` → tmpfs).
    EmptyDir { memory: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub volume: String,
    pub mount_path: String,
    pub sub_path: Option<String>,
    pub read_only: bool,
    pub content: VolumeContent,
    /// Where the content comes from, for messages (`ConfigMap meshgate/x (file …)`).
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    Http {
        path: String,
        port: u16,
        scheme: String,
        headers: Vec<(String, String)>,
    },
    Grpc {
        port: u16,
        service: Option<String>,
    },
    Tcp {
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
}

/// A probe with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay_seconds: u64,
    pub period_seconds: u64,
    pub timeout_seconds: u64,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A lifecycle hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Action(ProbeAction),
    Sleep { seconds: u64 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probes {
    pub startup: Option<Probe>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityPlan {
    pub uid: u32,
    pub gid: u32,
    pub supplementary_groups: Vec<u32>,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
}

/// Everything needed to run one container.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub name: String,
    pub init: bool,
    pub image: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub mounts: Vec<MountPlan>,
    pub ports: Vec<(Option<String>, u16)>,
    pub probes: Probes,
    pub pre_stop: Option<Hook>,
    pub security: SecurityPlan,
}

impl ContainerPlan {
    /// The command line on one line, with the values of Secret-backed variables masked.
    pub fn shown_argv(&self, secret_values: &[String]) -> String {
        let mut shown = self.argv.join(" ").trim_end().replace('\n', "\\n");
        for value in secret_values.iter().filter(|v| v.len() >= 4) {
            shown = shown.replace(value.as_str(), "<secret>");
        }
        shown
    }
}

/// What must exist before a pod of `template` can be created and its containers started:
/// its ServiceAccount and every ConfigMap/Secret it names without `optional: true`.
pub fn references(template: &PodTemplate<'_>) -> Vec<ObjectId> {
    let namespace = template.workload.namespace_or("default").to_owned();
    let id = |kind: &str, name: &str| ObjectId {
        kind: kind.to_owned(),
        namespace: Some(namespace.clone()),
        name: name.to_owned(),
    };
    let mut refs = BTreeSet::new();
    let account = template.service_account();
    if account != "default" {
        refs.insert(id("ServiceAccount", account));
    }
    let mut add = |kind: &str, reference: &Value, name_field: &str| {
        if reference["optional"].as_bool() != Some(true)
            && let Some(name) = reference[name_field].as_str()
        {
            refs.insert(id(kind, name));
        }
    };
    for volume in template.spec()["volumes"].as_array().into_iter().flatten() {
        add("ConfigMap", &volume["configMap"], "name");
        add("Secret", &volume["secret"], "secretName");
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            add("ConfigMap", &source["configMap"], "name");
            add("Secret", &source["secret"], "name");
        }
    }
    for (container, _) in template.containers() {
        for source in container["envFrom"].as_array().into_iter().flatten() {
            add("ConfigMap", &source["configMapRef"], "name");
            add("Secret", &source["secretRef"], "name");
        }
        for entry in container["env"].as_array().into_iter().flatten() {
            add("ConfigMap", &entry["valueFrom"]["configMapKeyRef"], "name");
            add("Secret", &entry["valueFrom"]["secretKeyRef"], "name");
        }
    }
    refs.into_iter().collect()
}

/// Plans one container of a pod. `image` is our image's config (ENTRYPOINT etc.), `None` for
/// images we only know by their manifest (the container must then set `command`).
pub fn plan_container(
    store: &Store,
    pod: &PodContext,
    template: &PodTemplate<'_>,
    container: &Value,
    init: bool,
    image: Option<&ImageConfig>,
) -> anyhow::Result<ContainerPlan> {
    let name = container["name"].as_str().unwrap_or("").to_owned();
    let namespace = pod.namespace.as_str();
    let env = container_env(store, pod, container, image)?;
    let lookup = |var: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
    };
    let strings = |value: &Value| -> Option<Vec<String>> {
        value.as_array().map(|items| {
            items
                .iter()
                .map(|i| expand(i.as_str().unwrap_or_default(), &lookup))
                .collect()
        })
    };
    let command = strings(&container["command"]);
    let args = strings(&container["args"]);
    // The kubelet's rule: `command` replaces ENTRYPOINT (and drops CMD); `args` replaces CMD.
    let argv: Vec<String> = match (command, args) {
        (Some(command), Some(args)) => command.into_iter().chain(args).collect(),
        (Some(command), None) => command,
        (None, args) => {
            let Some(image) = image else {
                bail!(
                    "container {name}: no `command`, and the image's ENTRYPOINT is unknown (not one of deploy/images/)"
                );
            };
            let args = args.unwrap_or_else(|| image.cmd.clone());
            image.entrypoint.iter().cloned().chain(args).collect()
        }
    };
    if argv.is_empty() {
        bail!("container {name}: nothing to run");
    }
    let ports: Vec<(Option<String>, u16)> = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let number = u16::try_from(p["containerPort"].as_u64()?).ok()?;
            Some((p["name"].as_str().map(str::to_owned), number))
        })
        .collect();
    let probe = |field: &str| -> anyhow::Result<Option<Probe>> {
        container
            .get(field)
            .filter(|v| v.is_object())
            .map(|v| parse_probe(v, &ports).with_context(|| format!("container {name}: {field}")))
            .transpose()
    };
    let probes = Probes {
        startup: probe("startupProbe")?,
        liveness: probe("livenessProbe")?,
        readiness: probe("readinessProbe")?,
    };
    let pre_stop = container["lifecycle"]
        .get("preStop")
        .filter(|v| v.is_object())
        .map(|v| {
            parse_hook(v, &ports).with_context(|| format!("container {name}: lifecycle.preStop"))
        })
        .transpose()?;
    let mounts = container_mounts(store, namespace, template, container)
        .with_context(|| format!("container {name}"))?;
    let security = security_plan(template.spec(), container, image);
    let working_dir = container["workingDir"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| image.and_then(|i| i.workdir.clone()))
        .unwrap_or_else(|| "/".to_owned());
    Ok(ContainerPlan {
        name,
        init,
        image: container["image"].as_str().unwrap_or_default().to_owned(),
        argv,
        env,
        working_dir,
        mounts,
        ports,
        probes,
        pre_stop,
        security,
    })
}
