"""Cross-object references of one deployable set of manifests (step `references`).

Schemas check each object alone; this checks that the objects of one environment point at each
other correctly: a Rollout's VirtualService routes, DestinationRule subsets and AnalysisTemplates,
an autoscaler's target, the pods behind every selector, the Service ports a ServiceMonitor or
VirtualService names, the ConfigMaps, Secrets and ServiceAccounts a pod uses, the identities an
AuthorizationPolicy allows. Pure functions over parsed objects: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable

# Objects an operator creates from another object, so they never appear in the manifests.
# CloudNativePG: per Cluster <c>, Services <c>-rw/-ro/-r, Secret <c>-app, ServiceAccount <c>.
# ECK: per Elasticsearch <e>, Secrets <e>-es-http-certs-public (ca.crt) and <e>-es-elastic-user;
# per Kibana <k>, Secret <k>-kb-http-certs-public.
ECK_SECRET_SUFFIXES = {"Elasticsearch": ("-es-http-certs-public", "-es-elastic-user"), "Kibana": ("-kb-http-certs-public",)}
CNPG_SERVICE_SUFFIXES = ("-rw", "-ro", "-r")
CNPG_POSTGRES_PORT = 5432


@dataclass
class PodTemplate:
    owner: str  # Kind/name
    namespace: str
    labels: dict[str, str]
    spec: dict[str, Any]
    ports: dict[str, int] = field(default_factory=dict)  # container port name -> number


@dataclass
class ObjectSet:
    """One environment's objects (or one self-test folder), indexed for lookups."""

    name: str
    objects: list[dict]
    default_namespace: str = "meshgate"
    # The Argo CD Applications that deploy these objects, each with its own (empty: one folder).
    apps: list[tuple[dict, list[dict]]] = field(default_factory=list)

    def ns(self, obj: dict) -> str:
        return (obj.get("metadata") or {}).get("namespace") or self.default_namespace

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        for obj in self.objects:
            meta = obj.get("metadata") or {}
            if obj.get("kind") == kind and meta.get("name") == name and \
                    (namespace is None or self.ns(obj) == namespace):
                return obj
        return None

    def of_kind(self, *kinds: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") in kinds]

    def injected_namespaces(self) -> set[str]:
        return {n["metadata"]["name"] for n in self.of_kind("Namespace")
                if ((n.get("metadata") or {}).get("labels") or {}).get("istio-injection") == "enabled"}

    def pod_templates(self) -> list[PodTemplate]:
        templates = self._pod_templates()
        # Istio's sidecar injector labels every pod it injects.
        for pod in templates:
            if pod.namespace in self.injected_namespaces():
                pod.labels = {**pod.labels, "security.istio.io/tlsMode": "istio"}
        return templates

    def _pod_templates(self) -> list[PodTemplate]:
        templates = []
        for obj in self.objects:
            kind, meta, spec = obj.get("kind"), obj.get("metadata") or {}, obj.get("spec") or {}
            owner = f"{kind}/{meta.get('name')}"
            template = None
            if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
                template = spec.get("template")
            elif kind == "Rollout":
                template = spec.get("template")
                ref = spec.get("workloadRef")
                if template is None and ref:
                    target = self.find(ref.get("kind", ""), ref.get("name", ""), self.ns(obj))
                    template = ((target or {}).get("spec") or {}).get("template")
            elif kind == "OpenTelemetryCollector":
                # The operator's pods: labelled with the component and <namespace>.<name>.
                templates.append(PodTemplate(owner, self.ns(obj), {
                    "app.kubernetes.io/component": "opentelemetry-collector",
                    "app.kubernetes.io/instance": f"{self.ns(obj)}.{meta.get('name')}",
                    "app.kubernetes.io/managed-by": "opentelemetry-operator"}, {}, {}))
                continue
            elif kind == "Cluster" and str(obj.get("apiVersion", "")).startswith("postgresql.cnpg.io/"):
                templates.append(PodTemplate(owner, self.ns(obj), {"cnpg.io/cluster": meta.get("name", "")},
                                             {"serviceAccountName": meta.get("name")},
                                             {"postgresql": CNPG_POSTGRES_PORT, "metrics": 9187}))
                continue
            if not template:
                continue
            pod_spec = template.get("spec") or {}
            ports = {p["name"]: p["containerPort"] for c in pod_spec.get("containers") or []
                     for p in c.get("ports") or [] if p.get("name")}
            templates.append(PodTemplate(owner, self.ns(obj), (template.get("metadata") or {}).get("labels") or {},
                                         pod_spec, ports))
        return templates


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels + matchExpressions); None matches all."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def label(obj: dict) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def service_hosts(objs: ObjectSet) -> dict[str, dict[str, int]]:
    """FQDN -> {port name: port} for Services, plus the Services CloudNativePG creates."""
    hosts: dict[str, dict[str, int]] = {}
    for svc in objs.of_kind("Service"):
        name, ns = svc["metadata"]["name"], objs.ns(svc)
        ports = {p.get("name", str(p["port"])): p["port"] for p in (svc.get("spec") or {}).get("ports") or []}
        hosts[f"{name}.{ns}.svc.cluster.local"] = ports
    for cluster in objs.of_kind("Cluster"):
        name, ns = cluster["metadata"]["name"], objs.ns(cluster)
        for suffix in CNPG_SERVICE_SUFFIXES:
            hosts[f"{name}{suffix}.{ns}.svc.cluster.local"] = {"postgres": CNPG_POSTGRES_PORT}
    return hosts


def check_rollouts(objs: ObjectSet) -> Iterable[str]:
    for ro in objs.of_kind("Rollout"):
        where, ns, spec = label(ro), objs.ns(ro), ro.get("spec") or {}
        ref = spec.get("workloadRef")
        if ref and not objs.find(ref.get("kind", ""), ref.get("name", ""), ns):
            yield f"{where}: workloadRef {ref.get('kind')}/{ref.get('name')} does not exist"
        canary = (spec.get("strategy") or {}).get("canary") or {}
        routing = canary.get("trafficRouting") or {}
        istio = routing.get("istio") or {}
        vs_ref = istio.get("virtualService") or {}
        if vs_ref:
            vs = objs.find("VirtualService", vs_ref.get("name", ""), ns)
            if vs is None:
                yield f"{where}: VirtualService {vs_ref.get('name')} does not exist"
            else:
                route_names = {r.get("name") for r in (vs.get("spec") or {}).get("http") or []}
                for route in vs_ref.get("routes") or []:
                    if route not in route_names:
                        yield f"{where}: VirtualService {vs_ref['name']} has no http route named {route}"
                managed = {m.get("name") for m in routing.get("managedRoutes") or []}
                for clash in managed & route_names:
                    yield f"{where}: managed route {clash} must not be declared in the VirtualService"
        dr_ref = istio.get("destinationRule") or {}
        if dr_ref:
            dr = objs.find("DestinationRule", dr_ref.get("name", ""), ns)
            if dr is None:
                yield f"{where}: DestinationRule {dr_ref.get('name')} does not exist"
            else:
                subsets = {s.get("name") for s in (dr.get("spec") or {}).get("subsets") or []}
                for key in ("canarySubsetName", "stableSubsetName"):
                    if dr_ref.get(key) not in subsets:
                        yield f"{where}: DestinationRule {dr_ref['name']} has no subset {dr_ref.get(key)}"
        managed = {m.get("name") for m in routing.get("managedRoutes") or []}
        analyses = [canary.get("analysis") or {}] + [s.get("analysis") or {} for s in canary.get("steps") or []]
        for step in canary.get("steps") or []:
            header = step.get("setHeaderRoute")
            if header and header.get("name") not in managed:
                yield f"{where}: setHeaderRoute {header.get('name')} is not in trafficRouting.managedRoutes"
        for analysis in analyses:
            passed = {a.get("name") for a in analysis.get("args") or []}
            for tref in analysis.get("templates") or []:
                kind = "ClusterAnalysisTemplate" if tref.get("clusterScope") else "AnalysisTemplate"
                template = objs.find(kind, tref.get("templateName", ""))
                if template is None:
                    yield f"{where}: {kind} {tref.get('templateName')} does not exist"
                    continue
                for arg in (template.get("spec") or {}).get("args") or []:
                    if "value" not in arg and "valueFrom" not in arg and arg.get("name") not in passed:
                        yield f"{where}: AnalysisTemplate {tref['templateName']} needs arg {arg.get('name')}"


def check_scale_targets(objs: ObjectSet) -> Iterable[str]:
    for hpa in objs.of_kind("HorizontalPodAutoscaler"):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if not objs.find(ref.get("kind", ""), ref.get("name", ""), objs.ns(hpa)):
            yield f"{label(hpa)}: scaleTargetRef {ref.get('kind')}/{ref.get('name')} does not exist"


def check_selectors(objs: ObjectSet, pods: list[PodTemplate]) -> Iterable[str]:
    """Every selector that picks pods must pick at least one pod template of the set."""
    for obj in objs.objects:
        kind, spec = obj.get("kind"), obj.get("spec") or {}
        ns = objs.ns(obj)
        if kind == "Service":
            selector = spec.get("selector")
            if selector is None:
                continue
            selector = {"matchLabels": selector}
        elif kind in ("PodDisruptionBudget", "Deployment", "Rollout"):
            selector = spec.get("selector")
        elif kind in ("NetworkPolicy",):
            selector = spec.get("podSelector")
            if not selector:
                continue  # {} selects the whole namespace
        elif kind in ("AuthorizationPolicy", "PeerAuthentication", "Telemetry", "WasmPlugin"):
            selector = spec.get("selector")
            if selector is None:
                continue  # namespace-wide
        elif kind == "PodMonitor":
            selector = spec.get("selector")
            namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [ns]
            if not any(selector_matches(selector, p.labels) for p in pods if p.namespace in namespaces):
                yield f"{label(obj)}: selector matches no pod in {namespaces}"
            continue
        else:
            continue
        if not any(p.namespace == ns for p in pods):
            continue  # a namespace whose pods live elsewhere (e.g. istio-system's ingress gateway)
        if not any(p.namespace == ns and selector_matches(selector, p.labels) for p in pods):
            yield f"{label(obj)}: selector {selector} matches no pod template in namespace {ns}"


def check_service_ports(objs: ObjectSet, pods: list[PodTemplate]) -> Iterable[str]:
    for svc in objs.of_kind("Service"):
        spec, ns = svc.get("spec") or {}, objs.ns(svc)
        selected = [p for p in pods if p.namespace == ns and spec.get("selector")
                    and selector_matches({"matchLabels": spec["selector"]}, p.labels)]
        for port in spec.get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and selected and not any(target in p.ports for p in selected):
                yield f"{label(svc)}: targetPort {target} is not a named container port of the selected pods"
    for sm in objs.of_kind("ServiceMonitor"):
        spec = sm.get("spec") or {}
        namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [objs.ns(sm)]
        services = [s for s in objs.of_kind("Service") if objs.ns(s) in namespaces
                    and selector_matches(spec.get("selector"), (s.get("metadata") or {}).get("labels") or {})]
        if not services:
            yield f"{label(sm)}: selector matches no Service in {namespaces}"
            continue
        names = {p.get("name") for s in services for p in (s.get("spec") or {}).get("ports") or []}
        for endpoint in spec.get("endpoints") or []:
            if endpoint.get("port") and endpoint["port"] not in names:
                yield f"{label(sm)}: no selected Service has a port named {endpoint['port']}"


def check_mesh_routing(objs: ObjectSet) -> Iterable[str]:
    hosts = service_hosts(objs)
    rules = {(dr.get("spec") or {}).get("host"): dr for dr in objs.of_kind("DestinationRule")}
    for dr in objs.of_kind("DestinationRule"):
        host = (dr.get("spec") or {}).get("host")
        if host not in hosts:
            yield f"{label(dr)}: host {host} is no Service of the set"
    for vs in objs.of_kind("VirtualService"):
        gateways = (vs.get("spec") or {}).get("gateways") or []
        for gw in gateways:
            if gw != "mesh" and not objs.find("Gateway", gw.split("/")[-1]):
                yield f"{label(vs)}: Gateway {gw} does not exist"
        for route in (vs.get("spec") or {}).get("http") or []:
            for dest in route.get("route") or []:
                d = dest.get("destination") or {}
                host, subset = d.get("host"), d.get("subset")
                if host not in hosts:
                    yield f"{label(vs)}: destination host {host} is no Service of the set"
                    continue
                port = (d.get("port") or {}).get("number")
                if port and port not in hosts[host].values():
                    yield f"{label(vs)}: Service {host} has no port {port}"
                if subset:
                    subsets = {s.get("name") for s in ((rules.get(host) or {}).get("spec") or {}).get("subsets") or []}
                    if subset not in subsets:
                        yield f"{label(vs)}: no DestinationRule subset {subset} for {host}"


def check_pod_references(objs: ObjectSet, pods: list[PodTemplate], external_secrets: set[str]) -> Iterable[str]:
    generated_secrets = {f"{c['metadata']['name']}-app" for c in objs.of_kind("Cluster")}
    generated_secrets |= {o["metadata"]["name"] + suffix for kind, suffixes in ECK_SECRET_SUFFIXES.items()
                          for o in objs.of_kind(kind) for suffix in suffixes}
    for pod in pods:
        spec = pod.spec
        if pod.owner.startswith("Cluster/"):
            continue
        configmaps, secrets = set(), set()
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            for source in c.get("envFrom") or []:
                if "configMapRef" in source:
                    configmaps.add(source["configMapRef"]["name"])
                if "secretRef" in source:
                    secrets.add(source["secretRef"]["name"])
            for env in c.get("env") or []:
                ref = env.get("valueFrom") or {}
                if "configMapKeyRef" in ref:
                    configmaps.add(ref["configMapKeyRef"]["name"])
                if "secretKeyRef" in ref:
                    secrets.add(ref["secretKeyRef"]["name"])
        for volume in spec.get("volumes") or []:
            if "configMap" in volume:
                configmaps.add(volume["configMap"]["name"])
            if "secret" in volume:
                secrets.add(volume["secret"]["secretName"])
        for name in sorted(configmaps):
            if not objs.find("ConfigMap", name, pod.namespace):
                yield f"{pod.owner}: ConfigMap {name} does not exist"
        for name in sorted(secrets):
            if not objs.find("Secret", name, pod.namespace) and name not in generated_secrets | external_secrets:
                yield f"{pod.owner}: Secret {name} is neither in the set, generated by an operator, nor templated"
        sa = spec.get("serviceAccountName")
        if sa and not objs.find("ServiceAccount", sa, pod.namespace):
            yield f"{pod.owner}: ServiceAccount {sa} does not exist"


def check_principals(objs: ObjectSet, trust_domain: str = "cluster.local") -> Iterable[str]:
    accounts = {(objs.ns(sa), sa["metadata"]["name"]) for sa in objs.of_kind("ServiceAccount")}
    accounts |= {(objs.ns(c), c["metadata"]["name"]) for c in objs.of_kind("Cluster")}
    namespaces = {ns for ns, _ in accounts}
    for policy in objs.of_kind("AuthorizationPolicy"):
        for rule in (policy.get("spec") or {}).get("rules") or []:
            for source in rule.get("from") or []:
                for principal in (source.get("source") or {}).get("principals") or []:
                    parts = principal.split("/")
                    if len(parts) != 5 or parts[0] != trust_domain or parts[1] != "ns" or parts[3] != "sa":
                        yield f"{label(policy)}: principal {principal} is not {trust_domain}/ns/<ns>/sa/<account>"
                    elif parts[2] in namespaces and (parts[2], parts[4]) not in accounts:
                        yield f"{label(policy)}: principal {principal}: no ServiceAccount {parts[4]} in {parts[2]}"


def check_otel_pipelines(objs: ObjectSet) -> Iterable[str]:
    """Every component a collector pipeline names is configured, and every configured one is used."""
    for collector in objs.of_kind("OpenTelemetryCollector"):
        config = (collector.get("spec") or {}).get("config") or {}
        pipelines = (config.get("service") or {}).get("pipelines") or {}
        connectors = set(config.get("connectors") or {})
        for name in sorted(connectors):
            ends = [{n for p in pipelines.values() for n in (p or {}).get(s) or []} for s in ("exporters", "receivers")]
            if name not in ends[0] or name not in ends[1]:
                yield (f"{label(collector)}: connector {name} must be a pipeline's exporter and another's receiver "
                       "(it joins two pipelines)")
        for section in ("receivers", "processors", "exporters"):
            defined = set(config.get(section) or {}) | (connectors if section != "processors" else set())
            used = {name for p in pipelines.values() for name in (p or {}).get(section) or []}
            for name in sorted(used - defined):
                yield f"{label(collector)}: pipeline uses {section[:-1]} {name}, which is not configured"
            for name in sorted(defined - used):
                yield f"{label(collector)}: {section[:-1]} {name} is configured but in no pipeline"
        for name in (config.get("service") or {}).get("extensions") or []:
            if name not in (config.get("extensions") or {}):
                yield f"{label(collector)}: service uses extension {name}, which is not configured"


def check_argocd_applications(apps: list[dict], projects: list[dict]) -> Iterable[str]:
    """Each Application's project exists and permits its repository and destination namespace."""
    by_name = {p["metadata"]["name"]: p.get("spec") or {} for p in projects}
    for app in apps:
        spec = app.get("spec") or {}
        project = spec.get("project", "default")
        if project == "default":
            continue
        if project not in by_name:
            yield f"{label(app)}: AppProject {project} does not exist"
            continue
        allowed = by_name[project]
        repo = (spec.get("source") or {}).get("repoURL")
        if repo not in (allowed.get("sourceRepos") or []) and "*" not in (allowed.get("sourceRepos") or []):
            yield f"{label(app)}: repository {repo} is not in AppProject {project}'s sourceRepos"
        dest = spec.get("destination") or {}
        if not any(d.get("namespace") in (dest.get("namespace"), "*") and d.get("server") in (dest.get("server"), "*")
                   for d in allowed.get("destinations") or []):
            yield f"{label(app)}: destination {dest.get('namespace')} is not allowed by AppProject {project}"


def sync_wave(obj: dict) -> int:
    return int(((obj.get("metadata") or {}).get("annotations") or {}).get("argocd.argoproj.io/sync-wave", "0"))


def secret_refs(pod: PodTemplate) -> set[str]:
    names = set()
    for c in (pod.spec.get("containers") or []) + (pod.spec.get("initContainers") or []):
        names |= {s["secretRef"]["name"] for s in c.get("envFrom") or [] if "secretRef" in s}
        names |= {(e.get("valueFrom") or {})["secretKeyRef"]["name"] for e in c.get("env") or []
                  if "secretKeyRef" in (e.get("valueFrom") or {})}
    return names


def check_sync_waves(apps: list[tuple[dict, list[dict]]]) -> Iterable[str]:
    """Child Applications sync in an order that works: the namespace before anything in it, a
    database before the workloads that read its credentials, and those workloads' schema
    migration as a PreSync hook (before any new pod of the same Application starts)."""
    creators: dict[str, dict] = {}
    for app, objects in apps:
        for obj in objects:
            if obj.get("kind") == "Namespace":
                creators[obj["metadata"]["name"]] = app
    databases = {f"{o['metadata']['name']}-app": app for app, objects in apps for o in objects
                 if o.get("kind") == "Cluster" and str(o.get("apiVersion", "")).startswith("postgresql.cnpg.io/")}
    reported: set[tuple[str, str]] = set()
    for app, objects in apps:
        name = app["metadata"]["name"]
        for obj in objects:
            ns = (obj.get("metadata") or {}).get("namespace")
            creator = creators.get(ns or "")
            if creator is not None and creator is not app and sync_wave(creator) >= sync_wave(app) \
                    and (creator["metadata"]["name"], name) not in reported:
                reported.add((creator["metadata"]["name"], name))
                yield (f"{label(app)} (wave {sync_wave(app)}) puts objects into namespace {ns}, which "
                       f"{label(creator)} creates in wave {sync_wave(creator)}: it must sync later")
        for pod in ObjectSet(name, objects).pod_templates():
            for secret in sorted(secret_refs(pod)):
                db_app = databases.get(secret)
                if db_app is None or db_app is app:
                    continue
                if sync_wave(db_app) >= sync_wave(app):
                    yield (f"{label(app)}: {pod.owner} reads {secret} from {label(db_app)}, which syncs in wave "
                           f"{sync_wave(db_app)}, not before wave {sync_wave(app)}")
                if pod.owner.startswith("Job/"):
                    job = next(o for o in objects if label(o) == pod.owner)
                    hook = ((job.get("metadata") or {}).get("annotations") or {}).get("argocd.argoproj.io/hook")
                    if hook != "PreSync":
                        yield f"{label(app)}: {pod.owner} migrates the database but is not an Argo CD PreSync hook"


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
                  "StorageClass", "ClusterAnalysisTemplate", "MutatingWebhookConfiguration",
                  "ValidatingWebhookConfiguration", "PersistentVolume", "GatewayClass", "ClusterIssuer"}


def check_namespaces(objs: ObjectSet) -> Iterable[str]:
    """Rendered objects name their namespace: none may depend on the Argo CD destination default."""
    for obj in objs.objects:
        if obj.get("kind") not in CLUSTER_SCOPED and not (obj.get("metadata") or {}).get("namespace"):
            yield f"{label(obj)}: no metadata.namespace"


def check_set(objs: ObjectSet, external_secrets: set[str], require_namespaces: bool = True) -> list[str]:
    pods = objs.pod_templates()
    problems: list[str] = []
    if require_namespaces:
        problems.extend(f"[{objs.name}] {p}" for p in check_namespaces(objs))
    for check in (check_otel_pipelines(objs), check_rollouts(objs), check_scale_targets(objs), check_selectors(objs, pods),
                  check_service_ports(objs, pods), check_mesh_routing(objs),
                  check_pod_references(objs, pods, external_secrets), check_principals(objs)):
        problems.extend(f"[{objs.name}] {p}" for p in check)
    return problems
