"""Rules a deployable set of manifests must hold on a real cluster (step `workload-policy`).

Each check takes an ObjectSet and `where` (names an object with its source file) and yields
problems. What the rules encode, and why:

  probes          liveness never on a dependency-bound health check (readiness, gRPC service ""
                  or an application service, the edge's /readyz or /healthz): a database failover
                  must not restart every pod; no TCP-only probes (a listening socket is not a
                  working server)
  drain           terminationGracePeriodSeconds >= preStop sleep + the binary's own drain
                  (user-service SHUTDOWN_GRACE_SECS [+ DRAIN_DELAY_MS]; edge-gateway
                  server.grace_period_seconds + graceful_shutdown_timeout_seconds
                  [+ gateway.shutdown.drain_delay_ms] of its mounted config) + DRAIN_MARGIN_SECONDS
  native-sidecar  pods in an Istio-injected namespace run istio-proxy as a native sidecar: a
                  Job's classic sidecar never exits, and a classic sidecar stops with the app
                  instead of after its drain
  secret-argv     no Secret-sourced environment variable expanded into command/args (every
                  process on the node can read a command line)
  db-budget       PostgreSQL max_connections holds every client's pool at its maximum scale
  wasm            WasmPlugins match the inbound application port only; the pods they select may
                  reach a registry when their egress is restricted; a rate limit keyed on the peer
                  principal alone is one global bucket when a single principal may call
  canary          a header route needs canary pods first; analysis queries always return a sample
                  and the conditions leave it inconclusive
  monitors        Prometheus Operator objects carry the selector label of the Prometheus
  prune           namespaces and databases are never pruned nor deleted with their Application
  backups         CloudNativePG backups through the barman-cloud plugin, not the in-tree store
  pins            production Applications track a release tag or commit, never a branch
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import yaml

from manifest_refs import ObjectSet, PodTemplate, label, selector_matches

Where = Callable[[dict], str]

DRAIN_MARGIN_SECONDS = 5
DEFAULT_GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds
# Names of health checks that follow dependencies (the database, the upstreams).
DEPENDENCY_BOUND_HTTP_PATHS = {"/readyz", "/healthz"}
NATIVE_SIDECAR = "sidecar.istio.io/nativeSidecar"
PROMETHEUS_SELECTOR = {"release": "prometheus"}  # README, Deploy prerequisites (kube-prometheus-stack)
MONITOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule", "Probe", "AlertmanagerConfig")
ENVIRONMENT_LABEL = "meshgate.io/environment"
PINNED_REVISION = re.compile(r"^(deploy-)?v\d+\.\d+\.\d+$|^[0-9a-f]{40}$")
BARMAN_PLUGIN = "barman-cloud.cloudnative-pg.io"
# PostgreSQL defaults, and what CloudNativePG itself keeps open per instance (instance manager,
# metrics exporter, replication checks) beyond superuser_reserved_connections.
PG_DEFAULT_MAX_CONNECTIONS = 100
PG_DEFAULT_SUPERUSER_RESERVED = 3
CNPG_OWN_CONNECTIONS = 10
# A canary runs both versions at full size at its last weight step: pods of a canary Rollout x2.
CANARY_FACTOR = 2
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Rollout")


def containers(pod: PodTemplate) -> list[dict]:
    return pod.spec.get("containers") or []


def image_name(container: dict) -> str:
    """Repository basename of a container image: registry.example.com/meshgate/edge-gateway:1 -> edge-gateway."""
    ref = str(container.get("image", "")).split("@")[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":")[0]


def container_env(container: dict, pod: PodTemplate, objs: ObjectSet) -> dict[str, str]:
    """Plain environment values (ConfigMap-sourced included); Secret-sourced ones as '<secret>'."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            cm = objs.find("ConfigMap", source["configMapRef"]["name"], pod.namespace)
            env.update({k: str(v) for k, v in ((cm or {}).get("data") or {}).items()})
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        ref = item.get("valueFrom") or {}
        if "configMapKeyRef" in ref:
            cm = objs.find("ConfigMap", ref["configMapKeyRef"]["name"], pod.namespace)
            value = ((cm or {}).get("data") or {}).get(ref["configMapKeyRef"]["key"])
            if value is not None:
                env[item["name"]] = str(value)
        if "secretKeyRef" in ref:
            env[item["name"]] = "<secret>"
    return env


def mounted_file(container: dict, pod: PodTemplate, objs: ObjectSet, path: str) -> str | None:
    """The content of a file a container sees at `path`, when a ConfigMap volume provides it."""
    for mount in container.get("volumeMounts") or []:
        base = mount.get("mountPath", "").rstrip("/")
        if not path.startswith(base + "/"):
            continue
        key = mount.get("subPath") or path[len(base) + 1:]
        volume = next((v for v in pod.spec.get("volumes") or [] if v.get("name") == mount.get("name")), {})
        if "configMap" in volume:
            cm = objs.find("ConfigMap", volume["configMap"]["name"], pod.namespace)
            return ((cm or {}).get("data") or {}).get(key)
    return None


def arg_value(container: dict, flag: str) -> str | None:
    args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def owner_obj(objs: ObjectSet, pod: PodTemplate) -> dict | None:
    kind, _, name = pod.owner.partition("/")
    return objs.find(kind, name, pod.namespace)


def own_pods(objs: ObjectSet) -> Iterable[tuple[PodTemplate, dict]]:
    """Pod templates with their owner, once each: a Rollout with a workloadRef runs the pods of the
    Deployment it names, which is where they are checked."""
    for pod in objs.pod_templates():
        obj = owner_obj(objs, pod)
        if obj is None or (obj.get("kind") == "Rollout" and (obj.get("spec") or {}).get("workloadRef")):
            continue
        yield pod, obj


# --- probes


def check_probes(objs: ObjectSet, where: Where) -> Iterable[str]:
    for pod, obj in own_pods(objs):
        kind = pod.owner.split("/")[0]
        if kind == "Cluster":
            continue
        for c in containers(pod) + [i for i in pod.spec.get("initContainers") or [] if i.get("restartPolicy") == "Always"]:
            name = f"{where(obj)}: container {c.get('name')}"
            liveness, readiness = c.get("livenessProbe") or {}, c.get("readinessProbe") or {}
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                if "tcpSocket" in (c.get(probe_name) or {}):
                    yield (f"{name}: {probe_name} is a TCP connect, which a hung server still accepts: "
                           "use grpc, httpGet or an exec check of the protocol (e.g. PING)")
            if kind in WORKLOADS and not readiness:
                yield f"{name}: no readinessProbe"
            if "grpc" in liveness:
                service = liveness["grpc"].get("service") or ""
                ready = (readiness.get("grpc") or {}).get("service", None) if "grpc" in readiness else None
                if service == "" or "." in service or service == ready:
                    yield (f"{name}: livenessProbe asks gRPC health service {service!r}, which follows the "
                           "service's dependencies (the whole server \"\", an application service, or the readiness "
                           "check): a database outage would restart every pod. Probe the process-only service "
                           "(e.g. 'liveness')")
            if "httpGet" in liveness:
                path = liveness["httpGet"].get("path", "/")
                ready_path = (readiness.get("httpGet") or {}).get("path")
                if path in DEPENDENCY_BOUND_HTTP_PATHS or path == ready_path:
                    yield (f"{name}: livenessProbe GET {path} follows the upstreams (readiness): an upstream "
                           "outage would restart every pod. Probe the process-only endpoint (e.g. /livez)")


# --- drain


def pre_stop_seconds(container: dict) -> int:
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    return int((pre_stop.get("sleep") or {}).get("seconds", 0))


def user_service_drain(container: dict, pod: PodTemplate, objs: ObjectSet) -> tuple[int | None, str]:
    env = container_env(container, pod, objs)
    if "SHUTDOWN_GRACE_SECS" not in env:
        return None, "SHUTDOWN_GRACE_SECS is not set (the binary's default is invisible to this check)"
    seconds, how = int(env["SHUTDOWN_GRACE_SECS"]), f"SHUTDOWN_GRACE_SECS {env['SHUTDOWN_GRACE_SECS']}"
    if "DRAIN_DELAY_MS" in env:  # serving on after SIGTERM, before the listener closes
        seconds += math.ceil(int(env["DRAIN_DELAY_MS"]) / 1000)
        how += f" + DRAIN_DELAY_MS {env['DRAIN_DELAY_MS']}"
    return seconds, how


def edge_gateway_drain(container: dict, pod: PodTemplate, objs: ObjectSet) -> tuple[int | None, str]:
    path = arg_value(container, "--config") or arg_value(container, "-c")
    text = mounted_file(container, pod, objs, path) if path else None
    if text is None:
        return None, f"its --config file {path!r} is not a mounted ConfigMap key"
    server = (yaml.safe_load(text) or {}).get("server") or {}
    grace, timeout = server.get("grace_period_seconds"), server.get("graceful_shutdown_timeout_seconds")
    if grace is None or timeout is None:
        return None, "server.grace_period_seconds / graceful_shutdown_timeout_seconds are not set in its config"
    seconds = int(grace) + int(timeout)
    how = f"server.grace_period_seconds {grace} + graceful_shutdown_timeout_seconds {timeout}"
    delay = (((yaml.safe_load(text) or {}).get("gateway") or {}).get("shutdown") or {}).get("drain_delay_ms")
    if delay is not None:  # /readyz answers 503 while it keeps serving, before pingora's shutdown
        seconds += math.ceil(int(delay) / 1000)
        how += f" + gateway.shutdown.drain_delay_ms {delay}"
    return seconds, how


# Subcommands of our binaries that serve no traffic, so have nothing to drain: the event worker
# stops pulling at SIGTERM (an unacknowledged event is redelivered), the migrations are a Job.
NOT_SERVING: dict[str, set[str]] = {"user-service": {"worker", "migrate"}}

# How long each of our binaries drains after SIGTERM, from its own settings (by image name).
DRAIN_SETTINGS: dict[str, Callable[[dict, PodTemplate, ObjectSet], tuple[int | None, str]]] = {
    "user-service": user_service_drain,
    "edge-gateway": edge_gateway_drain,
}


def check_drain(objs: ObjectSet, where: Where) -> Iterable[str]:
    for pod, obj in own_pods(objs):
        if pod.owner.split("/")[0] not in WORKLOADS:
            continue
        grace = int(pod.spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        for c in containers(pod):
            drain = DRAIN_SETTINGS.get(image_name(c))
            if drain is None or (c.get("args") or [None])[0] in NOT_SERVING.get(image_name(c), ()):
                continue
            name = f"{where(obj)}: container {c.get('name')}"
            seconds, how = drain(c, pod, objs)
            if seconds is None:
                yield f"{name}: cannot tell how long it drains: {how}"
                continue
            sleep = pre_stop_seconds(c)
            if sleep == 0:
                yield (f"{name}: no preStop sleep: SIGTERM arrives while the load balancers still send to the "
                       "pod (lifecycle.preStop.sleep.seconds)")
            need = sleep + seconds + DRAIN_MARGIN_SECONDS
            if grace < need:
                yield (f"{name}: terminationGracePeriodSeconds {grace} < preStop {sleep} + drain {seconds} ({how}) "
                       f"+ margin {DRAIN_MARGIN_SECONDS} = {need}: the kubelet kills in-flight requests")


# --- native sidecars


def check_native_sidecars(objs: ObjectSet, where: Where) -> Iterable[str]:
    injected = objs.injected_namespaces()
    for pod, obj in own_pods(objs):
        if pod.namespace not in injected:
            continue
        if pod.owner.startswith("Cluster/"):
            meta = ((obj.get("spec") or {}).get("inheritedMetadata") or {}).get("annotations") or {}
            if meta.get(NATIVE_SIDECAR) != "true":
                yield (f"{where(obj)}: the instance pods' istio-proxy is not a native sidecar "
                       f"(spec.inheritedMetadata.annotations {NATIVE_SIDECAR}: \"true\")")
            continue
        template = (obj.get("spec") or {}).get("template") or {}
        notes = (template.get("metadata") or {}).get("annotations") or {}
        if notes.get("sidecar.istio.io/inject") == "false" or notes.get(NATIVE_SIDECAR) == "true":
            continue
        why = ("a classic istio-proxy never exits, so the Job never completes" if obj.get("kind") in ("Job", "CronJob")
               else "a classic istio-proxy stops with the app, cutting the connections its drain still needs")
        yield f"{where(obj)}: pods in Istio-injected namespace {pod.namespace} need {NATIVE_SIDECAR}: \"true\": {why}"


# --- secrets on command lines


def check_secret_argv(objs: ObjectSet, where: Where) -> Iterable[str]:
    for pod, obj in own_pods(objs):
        for c in containers(pod) + (pod.spec.get("initContainers") or []):
            secret_vars = {e["name"] for e in c.get("env") or [] if "secretKeyRef" in (e.get("valueFrom") or {})}
            argv = " ".join(str(a) for a in (c.get("command") or []) + (c.get("args") or []))
            for var in sorted(secret_vars):
                if f"$({var})" in argv:
                    yield (f"{where(obj)}: container {c.get('name')} puts Secret-sourced ${var} on its command line, "
                           "readable by every process on the node: pass it as a file or an environment variable")


# --- PostgreSQL connection budget


def pg_int(params: dict, key: str, default: int) -> int:
    value = params.get(key)
    return int(value) if value is not None else default


def hpa_max(objs: ObjectSet, kind: str, name: str, namespace: str) -> int | None:
    for hpa in objs.of_kind("HorizontalPodAutoscaler"):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") == kind and ref.get("name") == name and objs.ns(hpa) == namespace:
            return int((hpa.get("spec") or {}).get("maxReplicas", 1))
    return None


def surge(strategy: dict, replicas: int) -> int:
    value = ((strategy or {}).get("rollingUpdate") or {}).get("maxSurge", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(replicas * int(value[:-1]) / 100)
    return int(value)


def check_db_budget(objs: ObjectSet, where: Where) -> Iterable[str]:
    rollouts = {((ro.get("spec") or {}).get("workloadRef") or {}).get("name"): ro for ro in objs.of_kind("Rollout")
                if ((ro.get("spec") or {}).get("workloadRef") or {}).get("kind") == "Deployment"}
    for cluster in objs.of_kind("Cluster"):
        name, ns = cluster["metadata"]["name"], objs.ns(cluster)
        params = (((cluster.get("spec") or {}).get("postgresql") or {}).get("parameters")) or {}
        max_connections = pg_int(params, "max_connections", PG_DEFAULT_MAX_CONNECTIONS)
        reserved = pg_int(params, "superuser_reserved_connections", PG_DEFAULT_SUPERUSER_RESERVED)
        reserved += pg_int(params, "reserved_connections", 0)
        available = max_connections - reserved - CNPG_OWN_CONNECTIONS
        uses, problems = [], []
        for pod, obj in own_pods(objs):
            kind = pod.owner.split("/")[0]
            if pod.namespace != ns or kind == "Cluster":
                continue
            for c in containers(pod):
                refs = {(e.get("valueFrom") or {}).get("secretKeyRef", {}).get("name") for e in c.get("env") or []}
                refs |= {s["secretRef"]["name"] for s in c.get("envFrom") or [] if "secretRef" in s}
                if f"{name}-app" not in refs:
                    continue
                env = container_env(c, pod, objs)
                if "DB_MAX_CONNECTIONS" not in env:
                    problems.append(f"{where(obj)}: container {c.get('name')} connects to {name} without "
                                    "DB_MAX_CONNECTIONS: its pool size is invisible to the connection budget")
                    continue
                pool = int(env["DB_MAX_CONNECTIONS"])
                spec = obj.get("spec") or {}
                if kind == "Job":
                    pods, how = int(spec.get("parallelism", 1)), "parallelism"
                elif kind == "Deployment" and name_of(obj) in rollouts:
                    rollout = rollouts[name_of(obj)]
                    most = hpa_max(objs, "Rollout", name_of(rollout), ns) or int((rollout.get("spec") or {}).get("replicas", 1))
                    pods, how = most * CANARY_FACTOR, f"Rollout {name_of(rollout)} max {most} x{CANARY_FACTOR} during a canary"
                else:
                    most = hpa_max(objs, kind, name_of(obj), ns) or int(spec.get("replicas", 1))
                    extra = surge(spec.get("strategy") or {}, most) if kind == "Deployment" else 0
                    pods, how = most + extra, f"max {most} + surge {extra}"
                uses.append((f"{label(obj)} {pods} pods ({how}) x {pool}", pods * pool))
        yield from problems
        total = sum(n for _, n in uses)
        if uses and total > available:
            detail = "; ".join(text for text, _ in uses)
            yield (f"{where(cluster)}: max_connections {max_connections} - reserved {reserved} - CloudNativePG's own "
                   f"{CNPG_OWN_CONNECTIONS} leaves {available}, but the clients may open {total} ({detail})")


def name_of(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


# --- WasmPlugins


def selected_pods(objs: ObjectSet, plugin: dict) -> list[PodTemplate]:
    selector = ((plugin.get("spec") or {}).get("selector") or {})
    return [p for p in objs.pod_templates() if p.namespace == objs.ns(plugin)
            and not p.owner.startswith("Cluster/") and selector_matches(selector, p.labels)]


def metrics_port(name: str) -> bool:
    return "metrics" in name


def allows_registry(policy: dict) -> bool:
    """An egress rule a registry pull can use: to an address range (or anywhere) on 443 or any port."""
    for rule in (policy.get("spec") or {}).get("egress") or []:
        peers = rule.get("to") or []
        ports = rule.get("ports") or []
        if (not peers or any("ipBlock" in p for p in peers)) and (not ports or any(str(p.get("port")) == "443" for p in ports)):
            return True
    return False


def rate_limit_rules(config: dict) -> list[dict]:
    return config.get("rules") or ((config.get("rateLimit") or {}).get("rules")) or []


def check_wasm_plugins(objs: ObjectSet, where: Where) -> Iterable[str]:
    policies = objs.of_kind("NetworkPolicy")
    for plugin in objs.of_kind("WasmPlugin"):
        spec = plugin.get("spec") or {}
        pods = selected_pods(objs, plugin)
        app_ports = {port for p in pods for name, port in p.ports.items() if not metrics_port(name)}
        matches = spec.get("match") or []
        server_ports = {int(port.get("number")) for m in matches if m.get("mode") == "SERVER"
                        for port in m.get("ports") or []}
        if not server_ports:
            yield (f"{where(plugin)}: no match on mode SERVER and the application port(s) {sorted(app_ports)}: the "
                   "filter also runs on the sidecar's outbound calls (OTLP, database) and the metrics port")
        elif app_ports and not server_ports <= app_ports:
            yield f"{where(plugin)}: match ports {sorted(server_ports - app_ports)} are no application port of the selected pods"
        url = str(spec.get("url", ""))
        if url.startswith("oci://"):
            for pod in pods:
                egress = [n for n in policies if objs.ns(n) == pod.namespace and "Egress" in ((n.get("spec") or {}).get("policyTypes") or [])
                          and selector_matches((n.get("spec") or {}).get("podSelector") or {}, pod.labels)]
                if egress and not any(allows_registry(n) for n in egress):
                    yield (f"{where(plugin)}: the istio-agent of {pod.owner} cannot pull {url}: its egress is limited by "
                           f"{', '.join(label(n) for n in egress)} and none allows a registry (ipBlock, port 443)")
        callers = allowed_principals(objs, pods)
        for rule in rate_limit_rules(spec.get("pluginConfig") or {}):
            types = {k.get("type") for k in rule.get("key") or []}
            if "principal" in types and not types - {"principal", "grpcMethod", "field"} and len(callers) == 1:
                yield (f"{where(plugin)}: rate-limit rule {rule.get('name')!r} keys on the peer principal, but only "
                       f"{next(iter(callers))} may call: one bucket for every end client. Key on what the caller "
                       "forwards per end client (a header)")


def allowed_principals(objs: ObjectSet, pods: list[PodTemplate]) -> set[str]:
    principals: set[str] = set()
    for policy in objs.of_kind("AuthorizationPolicy"):
        spec = policy.get("spec") or {}
        if spec.get("action", "ALLOW") != "ALLOW" or not spec.get("selector"):
            continue
        if not any(selector_matches(spec["selector"], p.labels) for p in pods):
            continue
        for rule in spec.get("rules") or []:
            for src in rule.get("from") or []:
                principals |= set((src.get("source") or {}).get("principals") or [])
    return principals


# --- canaries


def check_canary_steps(objs: ObjectSet, where: Where) -> Iterable[str]:
    for ro in objs.of_kind("Rollout"):
        canary = (((ro.get("spec") or {}).get("strategy") or {}).get("canary")) or {}
        if not canary.get("trafficRouting"):
            continue
        weight, scaled, match_weight = 0, False, True
        steps = canary.get("steps") or []
        for index, step in enumerate(steps):
            if "setWeight" in step:
                weight = int(step["setWeight"])
            if "setCanaryScale" in step:
                scale = step["setCanaryScale"] or {}
                match_weight = bool(scale.get("matchTrafficWeight"))
                scaled = int(scale.get("replicas", 0) or 0) > 0 or int(scale.get("weight", 0) or 0) > 0
            has_pods = (weight > 0) if match_weight else scaled
            for key in ("setHeaderRoute", "setMirrorRoute"):
                route = step.get(key)
                if route and route.get("match") and not has_pods:
                    yield (f"{where(ro)}: step {index} {key} {route.get('name')!r} sends requests to the canary "
                           "subset, which has no pods yet (weight 0): put a setCanaryScale (replicas or weight) before it")
        start = (canary.get("analysis") or {}).get("startingStep")
        if start is not None and not 0 <= int(start) < len(steps):
            yield f"{where(ro)}: analysis.startingStep {start} is not a step index (0..{len(steps) - 1})"


FALLBACK = re.compile(r"\bor\s+on\s*\(\s*\)\s*vector\(\s*(-?[0-9.]+)\s*\)\s*$")
SAFE_CONDITION = re.compile(r"^[\w\s\[\]().<>=!&|+\-*/]+$")


def evaluate_condition(condition: str, value: float) -> bool:
    """Argo Rollouts' condition language for the simple forms we use (comparisons of result[0])."""
    if not SAFE_CONDITION.match(condition):
        raise ValueError(f"condition {condition!r} is not in the understood subset")
    expr = condition.replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    return bool(eval(expr, {"__builtins__": {}}, {"result": [value], "len": len, "isNaN": math.isnan}))  # noqa: S307


def check_analysis_templates(objs: ObjectSet, where: Where) -> Iterable[str]:
    for template in objs.of_kind("AnalysisTemplate", "ClusterAnalysisTemplate"):
        for metric in (template.get("spec") or {}).get("metrics") or []:
            query = (((metric.get("provider") or {}).get("prometheus")) or {}).get("query")
            if not query:
                continue
            name = f"{where(template)} metric {metric.get('name')}"
            fallback = FALLBACK.search(query.strip())
            if not fallback:
                yield (f"{name}: the query can return an empty vector (before the first request), so result[0] "
                       "errors and the analysis aborts: end it with `or on() vector(<sentinel>)`")
                continue
            sentinel = float(fallback.group(1))
            try:
                verdicts = [evaluate_condition(metric[k], sentinel) for k in ("successCondition", "failureCondition") if k in metric]
            except ValueError as err:
                yield f"{name}: {err}"
                continue
            if any(verdicts):
                yield (f"{name}: with no traffic the query answers {sentinel:g}, which the success/failure condition "
                       "decides: it must stay inconclusive")


# --- monitors, pruning, backups, pins


def check_monitor_labels(objs: ObjectSet, where: Where) -> Iterable[str]:
    for obj in objs.of_kind(*MONITOR_KINDS):
        if not str(obj.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
            continue
        labels = (obj.get("metadata") or {}).get("labels") or {}
        missing = {k: v for k, v in PROMETHEUS_SELECTOR.items() if labels.get(k) != v}
        if missing:
            yield (f"{where(obj)}: lacks the label(s) {missing} the Prometheus Operator selects by: "
                   "Prometheus never loads it")


def sync_options(obj: dict) -> set[str]:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get("argocd.argoproj.io/sync-options", "")
    return {o.strip() for o in value.split(",") if o.strip()}


def check_prune_protection(objs: ObjectSet, where: Where) -> Iterable[str]:
    for obj in objs.of_kind("Namespace", "Cluster"):
        if obj.get("kind") == "Cluster" and not str(obj.get("apiVersion", "")).startswith("postgresql.cnpg.io/"):
            continue
        missing = {"Prune=false", "Delete=false"} - sync_options(obj)
        if missing:
            what = "everything in it, others' included" if obj.get("kind") == "Namespace" else "the data"
            yield (f"{where(obj)}: argocd.argoproj.io/sync-options lacks {', '.join(sorted(missing))}: pruning it or "
                   f"deleting its Application would destroy {what}")


def check_backups(objs: ObjectSet, where: Where) -> Iterable[str]:
    for cluster in objs.of_kind("Cluster"):
        spec = cluster.get("spec") or {}
        if (spec.get("backup") or {}).get("barmanObjectStore"):
            yield (f"{where(cluster)}: spec.backup.barmanObjectStore is deprecated since CloudNativePG 1.26: use the "
                   f"barman-cloud plugin (spec.plugins {BARMAN_PLUGIN} and an ObjectStore)")
        for plugin in spec.get("plugins") or []:
            store = (plugin.get("parameters") or {}).get("barmanObjectName")
            if plugin.get("name") == BARMAN_PLUGIN and store and not objs.find("ObjectStore", store, objs.ns(cluster)):
                yield f"{where(cluster)}: plugin {BARMAN_PLUGIN} names ObjectStore {store}, which does not exist"
    for backup in objs.of_kind("ScheduledBackup", "Backup"):
        if (backup.get("spec") or {}).get("method") == "barmanObjectStore":
            yield (f"{where(backup)}: method barmanObjectStore is the deprecated in-tree backup: method plugin with "
                   f"pluginConfiguration.name {BARMAN_PLUGIN}")


def check_pinned_revisions(objs: ObjectSet, where: Where) -> Iterable[str]:
    for app in objs.of_kind("Application"):
        if ((app.get("metadata") or {}).get("labels") or {}).get(ENVIRONMENT_LABEL) != "prod":
            continue
        revision = str(((app.get("spec") or {}).get("source") or {}).get("targetRevision", "HEAD"))
        if not PINNED_REVISION.match(revision):
            yield (f"{where(app)}: a prod Application tracks {revision!r}, which moves with every push: pin a release "
                   "tag (deploy-vX.Y.Z, set by the release workflow) or a commit")


CHECKS = (check_probes, check_drain, check_native_sidecars, check_secret_argv, check_db_budget, check_wasm_plugins,
          check_canary_steps, check_analysis_templates, check_monitor_labels, check_prune_protection, check_backups,
          check_pinned_revisions)


def check_all(objs: ObjectSet, where: Where) -> list[str]:
    return [problem for check in CHECKS for problem in check(objs, where)]
