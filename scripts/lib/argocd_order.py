"""Argo CD's apply order, modelled (step `argocd-order`): what a pod uses must exist before it runs.

Argo CD syncs the child Applications of the app of apps in their sync waves (a wave starts once
every Application of the previous one is healthy; Applications of one wave sync in parallel).
Within one Application it runs the PreSync hooks, then the ordinary objects and Sync hooks, then
the PostSync hooks; within a phase, by sync wave (`argocd.argoproj.io/sync-wave`, which is also
a hook's weight), and within a wave it applies kinds in a fixed order (namespaces and network
policies first, workloads last). A hook that uses an object Argo CD creates later can never run:
its pods cannot be created (ServiceAccount, ConfigMap, Secret), or start restricted (an egress
NetworkPolicy without the one that allows its traffic), or are refused by their peers (an ingress
NetworkPolicy or AuthorizationPolicy that admits them comes later). Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from manifest_refs import ObjectSet, PodTemplate, label, selector_matches

HOOK = "argocd.argoproj.io/hook"
WAVE = "argocd.argoproj.io/sync-wave"
PHASES = {"PreSync": 0, "Sync": 1, "PostSync": 2}
PHASE_NAMES = {0: "PreSync", 1: "Sync", 2: "PostSync"}

# gitops-engine's kind order within one wave (the order Helm installs in).
KIND_ORDER = [
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy", "PodDisruptionBudget",
    "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job",
    "CronJob", "IngressClass", "Ingress", "APIService",
]


def annotations(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("annotations") or {}


def wave(obj: dict) -> int:
    return int(annotations(obj).get(WAVE, "0"))


def phase(obj: dict) -> int | None:
    """The phase an object is applied in; None for hooks that do not run on a sync (Skip, SyncFail...)."""
    hook = annotations(obj).get(HOOK)
    if hook is None:
        return PHASES["Sync"]
    phases = [PHASES[h.strip()] for h in hook.split(",") if h.strip() in PHASES]
    return min(phases) if phases else None


def kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


@dataclass(frozen=True)
class Step:
    """When Argo CD applies an object: its Application (and that one's wave), then the position inside."""

    app: str
    app_wave: int
    phase: int
    wave: int
    kind: int

    def describe(self) -> str:
        return f"{PHASE_NAMES[self.phase]} wave {self.wave} of Application {self.app} (app-of-apps wave {self.app_wave})"


def applied_before(dep: Step, user: Step) -> bool:
    """True when `dep` certainly exists once `user` is applied (and its pods are created)."""
    if dep.app != user.app:
        return dep.app_wave < user.app_wave
    if (dep.phase, dep.wave) != (user.phase, user.wave):
        return (dep.phase, dep.wave) < (user.phase, user.wave)
    return dep.kind <= user.kind


@dataclass
class Placed:
    obj: dict
    step: Step
    namespace: str


def place(apps: list[tuple[dict, list[dict]]], default_namespace: str = "meshgate") -> list[Placed]:
    placed = []
    for app, objects in apps:
        name = (app.get("metadata") or {}).get("name", "?")
        for obj in objects:
            ph = phase(obj)
            if ph is None:
                continue
            ns = (obj.get("metadata") or {}).get("namespace") or default_namespace
            placed.append(Placed(obj, Step(name, wave(app), ph, wave(obj), kind_rank(str(obj.get("kind")))), ns))
    return placed


def pod_dependencies(pod: PodTemplate) -> list[tuple[str, str]]:
    """(kind, name) of the namespaced objects a pod needs before it can be created."""
    spec = pod.spec
    deps: list[tuple[str, str]] = []
    if spec.get("serviceAccountName"):
        deps.append(("ServiceAccount", spec["serviceAccountName"]))
    for secret in spec.get("imagePullSecrets") or []:
        deps.append(("Secret", secret.get("name", "")))
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for source in c.get("envFrom") or []:
            if "configMapRef" in source and not source["configMapRef"].get("optional"):
                deps.append(("ConfigMap", source["configMapRef"]["name"]))
            if "secretRef" in source and not source["secretRef"].get("optional"):
                deps.append(("Secret", source["secretRef"]["name"]))
        for env in c.get("env") or []:
            ref = env.get("valueFrom") or {}
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if key in ref and not ref[key].get("optional"):
                    deps.append((kind, ref[key]["name"]))
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            deps.append(("ConfigMap", volume["configMap"]["name"]))
        if "secret" in volume:
            deps.append(("Secret", volume["secret"]["secretName"]))
        if "persistentVolumeClaim" in volume:
            deps.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                deps.append(("ConfigMap", source["configMap"]["name"]))
            if "secret" in source:
                deps.append(("Secret", source["secret"]["name"]))
    return deps


def restricts(policy: dict, direction: str) -> bool:
    spec = policy.get("spec") or {}
    types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
    return direction in types


def peer_matches(peer: dict, pod: PodTemplate, policy_ns: str, namespace_labels: dict[str, dict]) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], namespace_labels.get(pod.namespace, {
                "kubernetes.io/metadata.name": pod.namespace})):
            return False
    elif pod.namespace != policy_ns:
        return False
    return selector_matches(peer.get("podSelector") or {}, pod.labels)


def check_sync_order(apps: list[tuple[dict, list[dict]]], where, default_namespace: str = "meshgate") -> Iterable[str]:
    """Every object a pod template uses, and every policy that lets its traffic through, is applied
    before the pod's owner. `where(obj)` names an object with its source file."""
    placed = place(apps, default_namespace)
    everything = ObjectSet("order", [p.obj for p in placed], default_namespace)
    by_key: dict[tuple[str, str, str], Placed] = {}
    for p in placed:
        by_key.setdefault((str(p.obj.get("kind")), p.namespace, (p.obj.get("metadata") or {}).get("name", "")), p)
    namespace_labels = {(n.get("metadata") or {}).get("name"): {**((n.get("metadata") or {}).get("labels") or {}),
                                                               "kubernetes.io/metadata.name": (n.get("metadata") or {}).get("name")}
                        for n in everything.of_kind("Namespace")}
    pods = everything.pod_templates()
    policies = [p for p in placed if p.obj.get("kind") == "NetworkPolicy"]
    authz = [p for p in placed if p.obj.get("kind") == "AuthorizationPolicy"]
    for pod in pods:
        owner = next((p for p in placed if label(p.obj) == pod.owner and p.namespace == pod.namespace), None)
        if owner is None or pod.owner.startswith("Cluster/"):
            continue
        user = owner.step
        who = where(owner.obj)
        hook = annotations(owner.obj).get(HOOK)
        role = f"{hook} hook" if hook else "object"
        for kind, name in pod_dependencies(pod):
            dep = by_key.get((kind, pod.namespace, name))
            if dep is None or applied_before(dep.step, user):
                continue
            yield (f"{who} ({role}, {user.describe()}) uses {kind}/{name} ({where(dep.obj)}), which Argo CD "
                   f"applies later, in {dep.step.describe()}: its pods cannot be created")
        # Egress: once any policy restricts the pod's egress, the ones that allow more must be there too.
        egress = [p for p in policies if restricts(p.obj, "Egress") and p.namespace == pod.namespace
                  and selector_matches((p.obj.get("spec") or {}).get("podSelector") or {}, pod.labels)]
        early = [p for p in egress if applied_before(p.step, user)]
        late = [p for p in egress if not applied_before(p.step, user)]
        if early and late:
            for p in late:
                yield (f"{who} ({role}, {user.describe()}) runs with its egress restricted by "
                       f"{', '.join(label(e.obj) for e in early)}, but {label(p.obj)} ({where(p.obj)}), which allows "
                       f"its egress, comes later, in {p.step.describe()}")
        # Peers: a policy admitting this pod that comes later, while the peer is already restricted.
        for p in policies:
            if applied_before(p.step, user) or not restricts(p.obj, "Ingress"):
                continue
            spec = p.obj.get("spec") or {}
            admitted = any(peer_matches(peer, pod, p.namespace, namespace_labels)
                           for rule in spec.get("ingress") or [] for peer in rule.get("from") or [])
            if not admitted:
                continue
            targets = [t for t in pods if t.namespace == p.namespace
                       and selector_matches(spec.get("podSelector") or {}, t.labels)]
            blocked_by = [q for q in policies if q is not p and applied_before(q.step, user) and q.namespace == p.namespace
                          and restricts(q.obj, "Ingress")
                          and any(selector_matches((q.obj.get("spec") or {}).get("podSelector") or {}, t.labels) for t in targets)]
            if blocked_by:
                yield (f"{who} ({role}, {user.describe()}) is admitted by {label(p.obj)} ({where(p.obj)}) only from "
                       f"{p.step.describe()}, but {label(blocked_by[0].obj)} already denies it")
        principal = f"cluster.local/ns/{pod.namespace}/sa/{pod.spec.get('serviceAccountName') or 'default'}"
        for p in authz:
            if applied_before(p.step, user):
                continue
            rules = (p.obj.get("spec") or {}).get("rules") or []
            if not any(principal in ((src.get("source") or {}).get("principals") or [])
                       for rule in rules for src in rule.get("from") or []):
                continue
            deny_all = [q for q in authz if q is not p and q.namespace == p.namespace and (q.obj.get("spec") or {}) == {}
                        and applied_before(q.step, user)]
            if deny_all:
                yield (f"{who} ({role}, {user.describe()}) calls as {principal}, allowed by {label(p.obj)} "
                       f"({where(p.obj)}) only from {p.step.describe()}, while {label(deny_all[0].obj)} already denies "
                       "everything else")
