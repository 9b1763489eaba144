//! The security context a container runs with: its own over the pod's, over the image's USER.

use super::*;

pub(super) fn numeric_user(user: &str) -> (Option<u32>, Option<u32>) {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    (u.parse().ok(), g.parse().ok())
}

/// Container securityContext over the pod's, over the image's USER (root when unset).
pub(super) fn security_plan(
    pod_spec: &Value,
    container: &Value,
    image: Option<&ImageConfig>,
) -> SecurityPlan {
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
