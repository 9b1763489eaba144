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

/// A ConfigMap or Secret as the API server would hold it.
#[derive(Debug, Clone)]
pub struct DataObject {
    pub id: ObjectId,
    pub origin: Option<Origin>,
    pub data: BTreeMap<String, Vec<u8>>,
}

/// The objects that exist (so far): what pods may reference.
#[derive(Debug, Default, Clone)]
pub struct Store {
    pub config_maps: BTreeMap<(String, String), DataObject>,
    pub secrets: BTreeMap<(String, String), DataObject>,
    pub service_accounts: BTreeSet<(String, String)>,
}

impl Store {
    /// Records an applied object (ConfigMaps, Secrets, ServiceAccounts; other kinds are kept
    /// elsewhere).
    pub fn apply(&mut self, object: &Object, namespace: &str) -> anyhow::Result<()> {
        let key = (namespace.to_owned(), object.name().to_owned());
        let id = ObjectId {
            namespace: Some(namespace.to_owned()),
            ..object.id()
        };
        match (object.group(), object.kind()) {
            ("", "ConfigMap") => {
                let mut data: BTreeMap<String, Vec<u8>> = object.value["data"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().unwrap_or_default().as_bytes().to_vec(),
                        )
                    })
                    .collect();
                for (k, v) in object.value["binaryData"].as_object().into_iter().flatten() {
                    data.insert(
                        k.clone(),
                        decode_base64(v).with_context(|| object.described())?,
                    );
                }
                self.config_maps.insert(
                    key,
                    DataObject {
                        id: id.clone(),
                        origin: Some(object.origin.clone()),
                        data,
                    },
                );
            }
            ("", "Secret") => {
                let mut data = BTreeMap::new();
                for (k, v) in object.value["data"].as_object().into_iter().flatten() {
                    data.insert(
                        k.clone(),
                        decode_base64(v).with_context(|| object.described())?,
                    );
                }
                for (k, v) in object.value["stringData"].as_object().into_iter().flatten() {
                    data.insert(
                        k.clone(),
                        v.as_str().unwrap_or_default().as_bytes().to_vec(),
                    );
                }
                self.secrets.insert(
                    key,
                    DataObject {
                        id: id.clone(),
                        origin: Some(object.origin.clone()),
                        data,
                    },
                );
            }
            ("", "ServiceAccount") => {
                self.service_accounts.insert(key);
            }
            _ => {}
        }
        Ok(())
    }

    pub fn add_secret(&mut self, namespace: &str, name: &str, data: BTreeMap<String, Vec<u8>>) {
        self.secrets.insert(
            (namespace.to_owned(), name.to_owned()),
            DataObject {
                id: ObjectId {
                    kind: "Secret".into(),
                    namespace: Some(namespace.to_owned()),
                    name: name.to_owned(),
                },
                origin: None,
                data,
            },
        );
    }

    fn lookup<'a>(
        map: &'a BTreeMap<(String, String), DataObject>,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<&'a DataObject, String> {
        map.get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| format!("{kind} {namespace}/{name} does not exist"))
    }
}

/// The API server's decoding: line breaks inside the value are ignored (folded YAML).
fn decode_base64(value: &Value) -> anyhow::Result<Vec<u8>> {
    let text: String = value
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| !matches!(c, '\n' | '\r'))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| anyhow!("invalid base64 in data: {e}"))
}

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

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`,
/// anything else (undefined names, unclosed references) is left as written.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(')
            && let Some(close) = tail.find(')')
        {
            let name = &tail[..close];
            match vars(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The values of the variables that come from Secrets (to mask them in output).
pub fn secret_env_values(container: &Value, store: &Store, namespace: &str) -> Vec<String> {
    let mut values = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let reference = &entry["valueFrom"]["secretKeyRef"];
        if let (Some(name), Some(key)) = (reference["name"].as_str(), reference["key"].as_str())
            && let Ok(secret) = Store::lookup(&store.secrets, "Secret", namespace, name)
            && let Some(value) = secret.data.get(key)
        {
            values.push(String::from_utf8_lossy(value).into_owned());
        }
    }
    for source in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = source["secretRef"]["name"].as_str()
            && let Ok(secret) = Store::lookup(&store.secrets, "Secret", namespace, name)
        {
            values.extend(
                secret
                    .data
                    .values()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            );
        }
    }
    values
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

/// The environment in the kubelet's order: the image's ENV, `envFrom` sources, then `env`
/// entries (each may use `$(VAR)` of those before it); later definitions win.
fn container_env(
    store: &Store,
    pod: &PodContext,
    container: &Value,
    image: Option<&ImageConfig>,
) -> anyhow::Result<Vec<(String, String)>> {
    let namespace = pod.namespace.as_str();
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into())];
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    };
    if let Some(image) = image {
        for (k, v) in &image.env {
            set(&mut env, k.clone(), v.clone());
        }
    }
    // The kubelet sets HOSTNAME to the pod name.
    set(&mut env, "HOSTNAME".into(), pod.name.clone());
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or("");
        let (map, kind, reference) = if source["configMapRef"].is_object() {
            (&store.config_maps, "ConfigMap", &source["configMapRef"])
        } else {
            (&store.secrets, "Secret", &source["secretRef"])
        };
        let name = reference["name"].as_str().unwrap_or("");
        match Store::lookup(map, kind, namespace, name) {
            Ok(object) => {
                for (k, v) in &object.data {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(v).into_owned(),
                    );
                }
            }
            Err(_) if reference["optional"].as_bool() == Some(true) => {}
            Err(missing) => bail!("envFrom: {missing}"),
        }
    }
    for entry in container["env"].as_array().into_iter().flatten() {
        let key = entry["name"].as_str().unwrap_or("").to_owned();
        let value = if let Some(literal) = entry.get("value") {
            let current = env.clone();
            let lookup = |var: &str| {
                current
                    .iter()
                    .rev()
                    .find(|(k, _)| k == var)
                    .map(|(_, v)| v.clone())
            };
            expand(literal.as_str().unwrap_or_default(), &lookup)
        } else if let Some(source) = entry.get("valueFrom") {
            match value_from(store, pod, source).with_context(|| format!("env {key}"))? {
                Some(value) => value,
                None => continue,
            }
        } else {
            String::new()
        };
        set(&mut env, key, value);
    }
    Ok(env)
}

fn value_from(store: &Store, pod: &PodContext, source: &Value) -> anyhow::Result<Option<String>> {
    let namespace = pod.namespace.as_str();
    let key_ref = |map, kind: &str, reference: &Value| -> anyhow::Result<Option<String>> {
        let optional = reference["optional"].as_bool() == Some(true);
        let name = reference["name"].as_str().unwrap_or("");
        let key = reference["key"].as_str().unwrap_or("");
        match Store::lookup(map, kind, namespace, name) {
            Ok(object) => match object.data.get(key) {
                Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
                None if optional => Ok(None),
                None => bail!("{kind} {namespace}/{name} has no key {key:?}"),
            },
            Err(_) if optional => Ok(None),
            Err(missing) => bail!("{missing}"),
        }
    };
    if source["configMapKeyRef"].is_object() {
        return key_ref(&store.config_maps, "ConfigMap", &source["configMapKeyRef"]);
    }
    if source["secretKeyRef"].is_object() {
        return key_ref(&store.secrets, "Secret", &source["secretKeyRef"]);
    }
    if let Some(path) = source["fieldRef"]["fieldPath"].as_str() {
        return field_ref(pod, path).map(Some);
    }
    bail!("unsupported valueFrom {source}")
}

fn field_ref(pod: &PodContext, path: &str) -> anyhow::Result<String> {
    let indexed = |prefix: &str, map: &BTreeMap<String, String>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    Ok(match path {
        "metadata.name" => pod.name.clone(),
        "metadata.namespace" => pod.namespace.clone(),
        "spec.nodeName" => pod.node_name.clone(),
        "status.podIP" | "status.podIPs" => pod.ip.clone(),
        "status.hostIP" | "status.hostIPs" => pod.ip.clone(),
        _ => indexed("metadata.labels['", &pod.labels)
            .or_else(|| indexed("metadata.annotations['", &pod.annotations))
            .ok_or_else(|| anyhow!("unsupported fieldRef {path}"))?,
    })
}

fn container_mounts(
    store: &Store,
    namespace: &str,
    template: &PodTemplate<'_>,
    container: &Value,
) -> anyhow::Result<Vec<MountPlan>> {
    let volumes: BTreeMap<&str, &Value> = template.spec()["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume_name = mount["name"].as_str().unwrap_or("");
        let volume = volumes
            .get(volume_name)
            .ok_or_else(|| anyhow!("volumeMount {volume_name:?}: the pod has no such volume"))?;
        let (content, from, read_only_volume) = volume_content(store, namespace, volume)
            .with_context(|| format!("volume {volume_name}"))?;
        mounts.push(MountPlan {
            volume: volume_name.to_owned(),
            mount_path: mount["mountPath"].as_str().unwrap_or("").to_owned(),
            sub_path: mount["subPath"].as_str().map(str::to_owned),
            read_only: mount["readOnly"].as_bool().unwrap_or(false) || read_only_volume,
            content,
            from,
        });
    }
    // Parents before children, as the kubelet mounts them.
    mounts.sort_by_key(|m| m.mount_path.matches('/').count());
    Ok(mounts)
}

/// A volume's content, a description for messages, and whether it is read-only by nature.
fn volume_content(
    store: &Store,
    namespace: &str,
    volume: &Value,
) -> anyhow::Result<(VolumeContent, String, bool)> {
    if let Some(empty) = volume.get("emptyDir") {
        return Ok((
            VolumeContent::EmptyDir {
                memory: empty["medium"].as_str() == Some("Memory"),
            },
            "emptyDir".into(),
            false,
        ));
    }
    let mut files = Vec::new();
    let mut from = Vec::new();
    let mut project = |map, kind: &str, reference: &Value, name_field: &str, default_mode: u32| {
        let name = reference[name_field].as_str().unwrap_or("");
        let mode = reference["defaultMode"]
            .as_u64()
            .map_or(default_mode, |m| m as u32);
        match Store::lookup(map, kind, namespace, name) {
            Ok(object) => {
                from.push(describe_data_object(object));
                files.extend(project_files(object, &reference["items"], mode)?);
                Ok(())
            }
            Err(_) if reference["optional"].as_bool() == Some(true) => Ok(()),
            Err(missing) => Err(anyhow!("{missing}")),
        }
    };
    if volume["configMap"].is_object() {
        project(
            &store.config_maps,
            "ConfigMap",
            &volume["configMap"],
            "name",
            0o644,
        )?;
    } else if volume["secret"].is_object() {
        project(
            &store.secrets,
            "Secret",
            &volume["secret"],
            "secretName",
            0o644,
        )?;
    } else if volume["projected"].is_object() {
        let mode = volume["projected"]["defaultMode"]
            .as_u64()
            .map_or(0o644, |m| m as u32);
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if source["configMap"].is_object() {
                project(
                    &store.config_maps,
                    "ConfigMap",
                    &source["configMap"],
                    "name",
                    mode,
                )?;
            } else if source["secret"].is_object() {
                project(&store.secrets, "Secret", &source["secret"], "name", mode)?;
            } else {
                bail!("projected source {source} is not modelled (only configMap and secret)");
            }
        }
    } else {
        bail!("volume type not modelled (emptyDir, configMap, secret and projected are): {volume}");
    }
    Ok((VolumeContent::Files(files), from.join(" + "), true))
}

fn describe_data_object(object: &DataObject) -> String {
    let mut text = object.id.to_string();
    if let Some(origin) = &object.origin {
        if let Some(generated) = &origin.generated_by {
            let files: Vec<String> = generated
                .files
                .iter()
                .map(|(key, file)| format!("{key} from {file}"))
                .collect();
            text.push_str(&format!(
                " (generated in {}: {})",
                generated.kustomization,
                files.join(", ")
            ));
        } else {
            text.push_str(&format!(" ({})", origin.file_or_source()));
        }
    } else {
        text.push_str(" (test values)");
    }
    text
}

/// The files a ConfigMap/Secret volume shows: every key, or only `items` (key → path, mode).
fn project_files(object: &DataObject, items: &Value, mode: u32) -> anyhow::Result<Vec<VolumeFile>> {
    let Some(items) = items.as_array() else {
        return Ok(object
            .data
            .iter()
            .map(|(key, content)| VolumeFile {
                path: key.clone(),
                content: content.clone(),
                mode,
            })
            .collect());
    };
    items
        .iter()
        .map(|item| {
            let key = item["key"].as_str().unwrap_or("");
            let content = object
                .data
                .get(key)
                .ok_or_else(|| anyhow!("{} has no key {key:?}", object.id))?;
            Ok(VolumeFile {
                path: item["path"].as_str().unwrap_or(key).to_owned(),
                content: content.clone(),
                mode: item["mode"].as_u64().map_or(mode, |m| m as u32),
            })
        })
        .collect()
}

fn numeric_user(user: &str) -> (Option<u32>, Option<u32>) {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    (u.parse().ok(), g.parse().ok())
}

/// Container securityContext over the pod's, over the image's USER (root when unset).
fn security_plan(pod_spec: &Value, container: &Value, image: Option<&ImageConfig>) -> SecurityPlan {
    let pod = &pod_spec["securityContext"];
    let own = &container["securityContext"];
    let (image_uid, image_gid) = image
        .and_then(|i| i.user.as_deref())
        .map(numeric_user)
        .unwrap_or((None, None));
    let field = |name: &str| own[name].as_u64().or_else(|| pod[name].as_u64());
    let uid = field("runAsUser")
        .map(|v| v as u32)
        .or(image_uid)
        .unwrap_or(0);
    let gid = field("runAsGroup")
        .map(|v| v as u32)
        .or(image_gid)
        .unwrap_or(0);
    let mut supplementary_groups: Vec<u32> = pod["supplementalGroups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_u64().map(|g| g as u32))
        .collect();
    if let Some(fs_group) = pod["fsGroup"].as_u64() {
        supplementary_groups.push(fs_group as u32);
    }
    SecurityPlan {
        uid,
        gid,
        supplementary_groups,
        read_only_root: own["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        no_new_privileges: own["allowPrivilegeEscalation"].as_bool() == Some(false),
    }
}

fn parse_probe(probe: &Value, ports: &[(Option<String>, u16)]) -> anyhow::Result<Probe> {
    let action = parse_action(probe, ports)?;
    let number = |name: &str, default: u64| probe[name].as_u64().unwrap_or(default);
    Ok(Probe {
        action,
        initial_delay_seconds: number("initialDelaySeconds", 0),
        period_seconds: number("periodSeconds", 10),
        timeout_seconds: number("timeoutSeconds", 1),
        success_threshold: number("successThreshold", 1) as u32,
        failure_threshold: number("failureThreshold", 3) as u32,
    })
}

/// A `lifecycle.preStop`/`postStart` handler: a probe-like action or the kubelet's own sleep.
fn parse_hook(hook: &Value, ports: &[(Option<String>, u16)]) -> anyhow::Result<Hook> {
    if let Some(seconds) = hook["sleep"]["seconds"].as_u64() {
        return Ok(Hook::Sleep { seconds });
    }
    parse_action(hook, ports).map(Hook::Action)
}

/// The handler of a probe or hook (httpGet, grpc, tcpSocket, exec), ports resolved.
fn parse_action(probe: &Value, ports: &[(Option<String>, u16)]) -> anyhow::Result<ProbeAction> {
    let port = |value: &Value| -> anyhow::Result<u16> {
        if let Some(number) = value.as_u64() {
            return u16::try_from(number).map_err(|_| anyhow!("port {number} out of range"));
        }
        let name = value.as_str().unwrap_or("");
        if let Ok(number) = name.parse() {
            return Ok(number);
        }
        ports
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name))
            .map(|(_, number)| *number)
            .ok_or_else(|| anyhow!("port {name:?} is not a named port of the container"))
    };
    let action = if let Some(http) = probe.get("httpGet") {
        ProbeAction::Http {
            path: http["path"].as_str().unwrap_or("/").to_owned(),
            port: port(&http["port"])?,
            scheme: http["scheme"].as_str().unwrap_or("HTTP").to_owned(),
            headers: http["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| {
                    (
                        h["name"].as_str().unwrap_or("").to_owned(),
                        h["value"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect(),
        }
    } else if let Some(grpc) = probe.get("grpc") {
        // The API server accepts only a number here.
        let number = grpc["port"]
            .as_u64()
            .ok_or_else(|| anyhow!("grpc.port must be a number (named ports are not allowed)"))?;
        ProbeAction::Grpc {
            port: u16::try_from(number).map_err(|_| anyhow!("grpc.port out of range"))?,
            service: grpc["service"].as_str().map(str::to_owned),
        }
    } else if let Some(tcp) = probe.get("tcpSocket") {
        ProbeAction::Tcp {
            port: port(&tcp["port"])?,
        }
    } else if let Some(exec) = probe.get("exec") {
        ProbeAction::Exec {
            command: exec["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect(),
        }
    } else {
        bail!("no handler (httpGet, grpc, tcpSocket or exec)");
    };
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::test_object as object;

    fn pod() -> PodContext {
        PodContext {
            name: "api-1".into(),
            namespace: "ns".into(),
            ip: "10.0.0.5".into(),
            node_name: "node".into(),
            labels: [("app".to_owned(), "api".to_owned())].into(),
            annotations: BTreeMap::new(),
        }
    }

    fn store() -> Store {
        let mut store = Store::default();
        store
            .apply(
                &object("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {A: one, B: two, conf.yaml: 'x: 1'}"),
                "ns",
            )
            .unwrap();
        store.add_secret(
            "ns",
            "creds",
            [("password".to_owned(), b"s3cret".to_vec())].into(),
        );
        store
    }

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: ns}
spec:
  template:
    metadata: {labels: {app: api}}
    spec:
      serviceAccountName: api
      securityContext: {runAsUser: 65532, runAsGroup: 65532, fsGroup: 2000}
      containers:
        - name: api
          image: registry/x/api:1
          args: [--config, /etc/api/conf.yaml, --password=$(PASSWORD), $$(PASSWORD), $(UNSET)]
          envFrom: [{configMapRef: {name: cfg}, prefix: CFG_}]
          env:
            - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
            - {name: URL, value: "redis://:$(PASSWORD)@cache:6379"}
            - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
          ports: [{name: grpc, containerPort: 50051}, {name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 5}
          livenessProbe: {grpc: {port: 50051, service: liveness}}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
          lifecycle: {preStop: {sleep: {seconds: 5}}}
          volumeMounts:
            - {name: config, mountPath: /etc/api, readOnly: true}
            - {name: tmp, mountPath: /tmp}
      volumes:
        - {name: config, configMap: {name: cfg, items: [{key: conf.yaml, path: conf.yaml}]}}
        - {name: tmp, emptyDir: {medium: Memory}}
"#;

    fn image() -> ImageConfig {
        ImageConfig {
            dockerfile: "deploy/images/api/Dockerfile".into(),
            entrypoint: vec!["/usr/local/bin/api".into()],
            cmd: vec!["ignored".into()],
            env: vec![],
            user: Some("1:1".into()),
            workdir: None,
            package: "api".into(),
            binary: "api".into(),
        }
    }

    /// The plan of the first container of a Deployment given as YAML.
    fn plan_of(yaml: &str) -> anyhow::Result<ContainerPlan> {
        let deployment = object(yaml);
        let template = pod_template(&deployment).unwrap();
        let (container, init) = template.containers()[0];
        plan_container(&store(), &pod(), &template, container, init, Some(&image()))
    }

    #[test]
    fn a_container_runs_as_the_kubelet_would_start_it() {
        let deployment = object(DEPLOYMENT);
        let template = pod_template(&deployment).unwrap();
        let (container, init) = template.containers()[0];
        let plan =
            plan_container(&store(), &pod(), &template, container, init, Some(&image())).unwrap();
        assert_eq!(
            plan.argv,
            [
                "/usr/local/bin/api",
                "--config",
                "/etc/api/conf.yaml",
                "--password=s3cret",
                "$(PASSWORD)",
                "$(UNSET)"
            ]
        );
        let env: BTreeMap<_, _> = plan.env.iter().cloned().collect();
        assert_eq!(env["CFG_A"], "one");
        assert_eq!(env["URL"], "redis://:s3cret@cache:6379");
        assert_eq!(env["POD"], "api-1");
        assert_eq!(env["APP"], "api");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        // Shallower mount points first, as the kubelet mounts them.
        let paths: Vec<&str> = plan.mounts.iter().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(paths, ["/tmp", "/etc/api"]);
        assert_eq!(
            plan.mounts[1].content,
            VolumeContent::Files(vec![VolumeFile {
                path: "conf.yaml".into(),
                content: b"x: 1".to_vec(),
                mode: 0o644
            }])
        );
        assert!(plan.mounts[1].read_only && plan.mounts[1].from.contains("ConfigMap ns/cfg"));
        assert_eq!(
            plan.mounts[0].content,
            VolumeContent::EmptyDir { memory: true }
        );
        assert_eq!(
            plan.security,
            SecurityPlan {
                uid: 65532,
                gid: 65532,
                supplementary_groups: vec![2000],
                read_only_root: true,
                no_new_privileges: true
            }
        );
        let readiness = plan.probes.readiness.clone().unwrap();
        assert_eq!(
            readiness.action,
            ProbeAction::Http {
                path: "/readyz".into(),
                port: 8080,
                scheme: "HTTP".into(),
                headers: vec![]
            }
        );
        assert_eq!(
            (readiness.period_seconds, readiness.failure_threshold),
            (5, 3)
        );
        assert_eq!(plan.pre_stop, Some(Hook::Sleep { seconds: 5 }));
        assert_eq!(
            plan.probes.liveness.as_ref().unwrap().action,
            ProbeAction::Grpc {
                port: 50051,
                service: Some("liveness".into())
            }
        );
        assert_eq!(
            plan.shown_argv(&secret_env_values(container, &store(), "ns")),
            "/usr/local/bin/api --config /etc/api/conf.yaml --password=<secret> $(PASSWORD) $(UNSET)"
        );
    }

    #[test]
    fn command_replaces_the_entrypoint_and_drops_cmd() {
        let deployment =
            object(&DEPLOYMENT.replace("args:", "command: [/bin/other]\n          args:"));
        let template = pod_template(&deployment).unwrap();
        let (container, init) = template.containers()[0];
        let plan =
            plan_container(&store(), &pod(), &template, container, init, Some(&image())).unwrap();
        assert_eq!(plan.argv[0], "/bin/other");
        assert_eq!(plan.argv[1], "--config");
    }

    #[test]
    fn missing_references_are_errors_naming_them_unless_optional() {
        let deployment = object(&DEPLOYMENT.replace("key: password", "key: nope"));
        let template = pod_template(&deployment).unwrap();
        let (container, init) = template.containers()[0];
        let error = plan_container(&store(), &pod(), &template, container, init, Some(&image()))
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("Secret ns/creds has no key \"nope\""),
            "{error:#}"
        );
        let refs: Vec<String> = references(&template)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            refs,
            [
                "ConfigMap ns/cfg",
                "Secret ns/creds",
                "ServiceAccount ns/api"
            ]
        );
        let plan =
            plan_of(&DEPLOYMENT.replace("key: password}", "key: nope, optional: true}")).unwrap();
        assert!(!plan.env.iter().any(|(k, _)| k == "PASSWORD"));
    }

    #[test]
    fn secret_data_folded_over_lines_decodes_like_the_api_server() {
        let mut store = Store::default();
        store
            .apply(
                &object("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  k: |\n    aGVs\n    bG8=\n"),
                "ns",
            )
            .unwrap();
        assert_eq!(
            store.secrets[&("ns".to_owned(), "s".to_owned())].data["k"],
            b"hello"
        );
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = |name: &str| (name == "A").then(|| "1".to_owned());
        assert_eq!(expand("$(A)-$$(A)-$(B)-$-$(A", &vars), "1-$(A)-$(B)-$-$(A");
        assert_eq!(expand("$$$(A)", &vars), "$1");
    }

    #[test]
    fn named_grpc_probe_ports_are_refused_like_the_api_server_does() {
        let error =
            plan_of(&DEPLOYMENT.replace("grpc: {port: 50051", "grpc: {port: grpc")).unwrap_err();
        assert!(format!("{error:#}").contains("livenessProbe"), "{error:#}");
    }
}
