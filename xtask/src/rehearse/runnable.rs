//! What the rehearsal runs of a workload's pod template when not all of it can run here, and the
//! names a StatefulSet's pods get (pure: the objects in, values out).
//!
//! - A container whose image is neither ours nor stood in by a host program (an exporter
//!   sidecar such as NATS's `prometheus-nats-exporter`) is left out when another container of
//!   the pod runs; the pod is rehearsed without it and the omission reported. A pod with nothing
//!   runnable is not rehearsed at all, as before.
//! - The volumes of a StatefulSet's `volumeClaimTemplates` become emptyDirs of the pod (the
//!   claim's PersistentVolume, which lives as long as the rehearsal).
//! - Each StatefulSet pod is named `<statefulset>-<ordinal>` and, with a `serviceName`, resolves
//!   as `<pod>.<serviceName>.<namespace>.svc.cluster.local` (the kubelet sets the hostname, the
//!   governing headless Service's DNS the record), which is how clustered servers find peers.

use serde_json::{Value, json};

use crate::objects::Object;

/// The pod template to rehearse and the containers left out of it (name, image).
pub struct Runnable {
    pub template: Value,
    pub left_out: Vec<(String, String)>,
}

/// The object's pod template with only the containers `runs(image)` allows, and its claim
/// templates as emptyDirs; `None` when no main container can run.
pub fn runnable_template(object: &Object, runs: impl Fn(&str) -> bool) -> Option<Runnable> {
    let mut template = object.value["spec"]["template"].clone();
    let mut left_out = Vec::new();
    let containers = template["spec"]["containers"].as_array_mut()?;
    containers.retain(|container| {
        let image = container["image"].as_str().unwrap_or("");
        let keep = runs(image);
        if !keep {
            left_out.push((
                container["name"].as_str().unwrap_or("").to_owned(),
                image.to_owned(),
            ));
        }
        keep
    });
    if containers.is_empty() {
        return None;
    }
    if object.kind() == "StatefulSet" {
        let claims: Vec<Value> = object.value["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|claim| claim["metadata"]["name"].as_str())
            .map(|name| json!({"name": name, "emptyDir": {}}))
            .collect();
        if !claims.is_empty() {
            let volumes = &mut template["spec"]["volumes"];
            if !volumes.is_array() {
                *volumes = json!([]);
            }
            if let Some(list) = volumes.as_array_mut() {
                list.extend(claims);
            }
        }
    }
    Some(Runnable { template, left_out })
}

/// A StatefulSet pod's name under its governing Service, when it has one.
pub fn stable_dns_name(object: &Object, pod_name: &str, namespace: &str) -> Option<String> {
    if object.kind() != "StatefulSet" {
        return None;
    }
    let service = object.value["spec"]["serviceName"].as_str()?;
    Some(format!(
        "{pod_name}.{}",
        super::dns::service_fqdn(service, namespace)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(yaml: &str) -> Object {
        Object {
            value: serde_norway::from_str(yaml).unwrap(),
            origin: crate::objects::Origin {
                application: "test".into(),
                source: "test".into(),
                file: None,
                generated_by: None,
            },
        }
    }

    const NATS: &str = "
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: nats}
spec:
  serviceName: nats-headless
  template:
    spec:
      containers:
        - {name: nats, image: docker.io/library/nats:2.10}
        - {name: metrics, image: docker.io/natsio/prometheus-nats-exporter:0.16.0}
      volumes:
        - {name: config, configMap: {name: nats-config}}
  volumeClaimTemplates:
    - metadata: {name: data}
";

    #[test]
    fn sidecars_without_a_stand_in_are_left_out_and_claims_become_volumes() {
        let sts = object(NATS);
        let runnable = runnable_template(&sts, |image| image.contains("/library/nats")).unwrap();
        assert_eq!(
            runnable.left_out,
            [(
                "metrics".to_owned(),
                "docker.io/natsio/prometheus-nats-exporter:0.16.0".to_owned()
            )]
        );
        let containers = runnable.template["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(
            runnable.template["spec"]["volumes"],
            json!([{"name": "config", "configMap": {"name": "nats-config"}}, {"name": "data", "emptyDir": {}}])
        );
        assert!(runnable_template(&sts, |_| false).is_none());
    }

    #[test]
    fn statefulset_pods_resolve_under_their_governing_service() {
        let sts = object(NATS);
        assert_eq!(
            stable_dns_name(&sts, "nats-2", "meshgate").as_deref(),
            Some("nats-2.nats-headless.meshgate.svc.cluster.local")
        );
        let deployment =
            object("{apiVersion: apps/v1, kind: Deployment, metadata: {name: a}, spec: {}}");
        assert_eq!(stable_dns_name(&deployment, "a-0", "meshgate"), None);
    }
}
