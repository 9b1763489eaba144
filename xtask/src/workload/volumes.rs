//! The files a container's mounts show: ConfigMap, Secret and projected volumes (every key or
//! `items`), emptyDirs.

use super::*;

pub(super) fn container_mounts(
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
pub(super) fn volume_content(
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

pub(super) fn describe_data_object(object: &DataObject) -> String {
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
pub(super) fn project_files(
    object: &DataObject,
    items: &Value,
    mode: u32,
) -> anyhow::Result<Vec<VolumeFile>> {
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
