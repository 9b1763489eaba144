//! The app of apps as Argo CD syncs it: the root Application of an environment, its child
//! Applications in sync-wave order, and within each Application the order of phases (PreSync
//! hooks, Sync, PostSync), waves and kinds in which objects are applied.

use std::path::Path;

use anyhow::{Context, bail};

use crate::objects::{Object, parse_yaml_stream};
use crate::render::render_source;

pub const ENVIRONMENTS: [&str; 2] = ["dev", "prod"];

/// One child Application, rendered.
#[derive(Debug)]
pub struct Application {
    pub name: String,
    pub wave: i64,
    pub source: String,
    pub namespace: String,
    pub objects: Vec<Object>,
}

/// Everything an environment syncs: the root's objects (the Applications themselves) and each
/// child Application with its rendered objects, in wave order.
#[derive(Debug)]
pub struct Environment {
    pub name: String,
    pub root_file: String,
    pub root_source: String,
    pub applications: Vec<Application>,
}

impl Environment {
    pub fn objects(&self) -> impl Iterator<Item = (&Application, &Object)> {
        self.applications
            .iter()
            .flat_map(|app| app.objects.iter().map(move |object| (app, object)))
    }
}

/// Renders `deploy/argocd/bootstrap/root-<env>.yaml` and every Application it leads to.
pub fn render_environment(root: &Path, kubectl: &Path, env: &str) -> anyhow::Result<Environment> {
    let root_file = format!("deploy/argocd/bootstrap/root-{env}.yaml");
    let text = std::fs::read_to_string(root.join(&root_file))
        .with_context(|| format!("reading {root_file}"))?;
    let roots = parse_yaml_stream(&text).with_context(|| root_file.clone())?;
    let [root_app] = roots.as_slice() else {
        bail!("{root_file}: expected exactly one Application");
    };
    let (root_source, root_recurse) = application_source(root_app)
        .with_context(|| format!("{root_file}: the root Application"))?;
    let root_name = root_app["metadata"]["name"].as_str().unwrap_or("root");
    let children = render_source(root, kubectl, root_name, &root_source, root_recurse)?;
    let mut applications = Vec::new();
    for object in children {
        if object.kind() != "Application" || object.group() != "argoproj.io" {
            continue;
        }
        let (source, recurse) =
            application_source(&object.value).with_context(|| object.described())?;
        let name = object.name().to_owned();
        let objects = render_source(root, kubectl, &name, &source, recurse)?;
        applications.push(Application {
            wave: sync_wave(&object),
            namespace: object.value["spec"]["destination"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
            name,
            source,
            objects,
        });
    }
    applications.sort_by(|a, b| (a.wave, &a.name).cmp(&(b.wave, &b.name)));
    Ok(Environment {
        name: env.to_owned(),
        root_file,
        root_source,
        applications,
    })
}

/// `spec.source.path` and `spec.source.directory.recurse` of an Application.
fn application_source(app: &serde_json::Value) -> anyhow::Result<(String, bool)> {
    let source = &app["spec"]["source"];
    let path = source["path"].as_str().context(
        "spec.source.path is missing (only single-source git Applications are modelled)",
    )?;
    Ok((
        path.trim_end_matches('/').to_owned(),
        source["directory"]["recurse"].as_bool().unwrap_or(false),
    ))
}

pub fn sync_wave(object: &Object) -> i64 {
    object
        .annotation("argocd.argoproj.io/sync-wave")
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    PreSync,
    Sync,
    PostSync,
    /// Only when a sync fails; never part of a successful sync.
    SyncFail,
    /// `argocd.argoproj.io/hook: Skip`: never applied.
    Skip,
}

/// The phase an object is applied in (the first, when a hook names several).
pub fn phase(object: &Object) -> (Phase, bool) {
    let Some(hooks) = object.annotation("argocd.argoproj.io/hook") else {
        return (Phase::Sync, false);
    };
    let phases = hooks.split(',').map(str::trim).filter_map(|h| match h {
        "PreSync" => Some(Phase::PreSync),
        "Sync" => Some(Phase::Sync),
        "PostSync" => Some(Phase::PostSync),
        "SyncFail" => Some(Phase::SyncFail),
        "Skip" => Some(Phase::Skip),
        _ => None,
    });
    (phases.min().unwrap_or(Phase::Sync), true)
}

/// Argo CD's (gitops-engine's) kind order within a wave; other kinds come after these.
const KIND_ORDER: [&str; 35] = [
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

/// The objects of one Application in the order a sync applies them: phase, wave, kind, name.
pub fn sync_order(objects: &[Object]) -> Vec<&Object> {
    let mut ordered: Vec<&Object> = objects.iter().collect();
    ordered.sort_by_key(|object| {
        let kind_rank = KIND_ORDER
            .iter()
            .position(|k| *k == object.kind())
            .unwrap_or(KIND_ORDER.len());
        (
            phase(object).0,
            sync_wave(object),
            kind_rank,
            object.kind().to_owned(),
            object.name().to_owned(),
        )
    });
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::test_object as object;

    #[test]
    fn presync_hooks_come_first_then_waves_then_kinds() {
        let objects = vec![
            object("kind: Deployment\nmetadata: {name: api}"),
            object("kind: ServiceAccount\nmetadata: {name: migrate}"),
            object(
                "kind: Job\nmetadata: {name: migrate, annotations: {argocd.argoproj.io/hook: PreSync, argocd.argoproj.io/sync-wave: \"-1\"}}",
            ),
            object(
                "kind: ConfigMap\nmetadata: {name: early, annotations: {argocd.argoproj.io/sync-wave: \"-5\"}}",
            ),
            object("kind: Service\nmetadata: {name: api}"),
        ];
        let order: Vec<String> = sync_order(&objects)
            .iter()
            .map(|o| format!("{}/{}", o.kind(), o.name()))
            .collect();
        assert_eq!(
            order,
            [
                "Job/migrate",
                "ConfigMap/early",
                "ServiceAccount/migrate",
                "Service/api",
                "Deployment/api"
            ]
        );
    }

    #[test]
    fn hook_lists_take_their_first_phase_and_skip_is_never_applied() {
        let hook = object(
            "kind: Job\nmetadata: {name: j, annotations: {argocd.argoproj.io/hook: 'PostSync, PreSync'}}",
        );
        assert_eq!(phase(&hook), (Phase::PreSync, true));
        let skipped =
            object("kind: Job\nmetadata: {name: j, annotations: {argocd.argoproj.io/hook: Skip}}");
        assert_eq!(phase(&skipped).0, Phase::Skip);
        assert_eq!(
            phase(&object("kind: Job\nmetadata: {name: j}")),
            (Phase::Sync, false)
        );
    }
}
