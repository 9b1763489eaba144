//! A container's environment and `$(VAR)` expansion: the image's ENV, `envFrom`, `env` with
//! ConfigMap, Secret and field references.

use super::*;

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

/// The environment in the kubelet's order: the image's ENV, `envFrom` sources, then `env`
/// entries (each may use `$(VAR)` of those before it); later definitions win.
pub(super) fn container_env(
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

pub(super) fn value_from(
    store: &Store,
    pod: &PodContext,
    source: &Value,
) -> anyhow::Result<Option<String>> {
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

pub(super) fn field_ref(pod: &PodContext, path: &str) -> anyhow::Result<String> {
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
