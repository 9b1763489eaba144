"""The NATS servers the manifests run, checked with the real nats-server (step nats-config).

For every container that runs `nats-server`, in every environment: its config file is read from
the ConfigMap mounted where `--config` points, the environment variables it references are set
as the kubelet would (`fieldRef: metadata.name` is the first pod's name, `<workload>-0`), and
`nats-server -c <file> -t` must accept it (unknown fields, bad values and undefined variables are
errors there). Then what the pod needs from it (pure, unit-tested):

  - the JetStream `store_dir` lies on a volume of the pod's volumeClaimTemplates (persistent),
  - a `cluster` block routes to exactly the StatefulSet's pods through its `serviceName`
    (`<name>-<i>.<serviceName>...`, i < replicas), and a single replica has no cluster block
    (a lone server of a JetStream cluster never elects a meta leader),
  - the `pid_file` the preStop hook signals is on a mounted volume,
  - every client's `NATS_STREAM_REPLICAS` (the copies of stream USERS it creates) fits the
    servers the environment runs (JetStream refuses more copies than servers, and a single
    server any more than one).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from manifest_refs import ObjectSet, PodTemplate
from workload_policy import arg_value, container_env, mounted_file

Where = Callable[[dict], str]

PROGRAM = "nats-server"


@dataclass
class NatsServer:
    """One nats-server container of a workload, with what a config test needs."""

    where: str
    workload: dict
    container: dict
    config_path: str
    config: str | None
    env: dict[str, str] = field(default_factory=dict)


def runs_nats(container: dict) -> bool:
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    return bool(argv) and os.path.basename(argv[0]) == PROGRAM


def pod_env(container: dict, pod: PodTemplate, objs: ObjectSet, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet sets it for pod `pod_name` (Secrets as '<secret>')."""
    env = container_env(container, pod, objs)
    for item in container.get("env") or []:
        path = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if path == "metadata.name":
            env[item["name"]] = pod_name
        elif path == "metadata.namespace":
            env[item["name"]] = pod.namespace
    return env


def servers(objs: ObjectSet, where: Where) -> list[NatsServer]:
    found = []
    for pod in objs.pod_templates():
        kind, _, name = pod.owner.partition("/")
        workload = objs.find(kind, name, pod.namespace)
        if workload is None:
            continue
        for container in pod.spec.get("containers") or []:
            if not runs_nats(container):
                continue
            path = arg_value(container, "--config") or arg_value(container, "-c") or ""
            found.append(NatsServer(
                where=f"{where(workload)}: container {container.get('name')}",
                workload=workload,
                container=container,
                config_path=path,
                config=mounted_file(container, pod, objs, path) if path else None,
                env=pod_env(container, pod, objs, f"{name}-0"),
            ))
    return found


def setting(config: str, key: str) -> str | None:
    """A top-level or block-level `key: value` (or `key = value`, `key value`) of a NATS config."""
    match = re.search(rf"^\s*{re.escape(key)}\s*[:=]?\s*\"?([^\s\"#]+)\"?", config, re.M)
    return match.group(1) if match else None


def block(config: str, name: str) -> str | None:
    """The text of a top-level `name { ... }` block (balanced braces), or None."""
    match = re.search(rf"^\s*{re.escape(name)}\s*[:=]?\s*\{{", config, re.M)
    if not match:
        return None
    depth, start = 0, match.end() - 1
    for index in range(start, len(config)):
        depth += {"{": 1, "}": -1}.get(config[index], 0)
        if depth == 0:
            return config[start + 1:index]
    return config[start + 1:]


def on_volume(path: str, container: dict, volumes: set[str]) -> bool:
    """`path` is inside a mount of one of `volumes`."""
    for mount in container.get("volumeMounts") or []:
        base = str(mount.get("mountPath", "")).rstrip("/")
        if mount.get("name") in volumes and (path == base or path.startswith(base + "/")):
            return True
    return False


def check_server(server: NatsServer) -> Iterable[str]:
    """What the pod needs from its config (the syntax is nats-server's to judge)."""
    if server.config is None:
        yield (f"{server.where}: its --config {server.config_path or '(none)'} is not a key of a mounted ConfigMap: "
               "nats-server would start on defaults (no JetStream)")
        return
    spec = server.workload.get("spec") or {}
    claims = {str((t.get("metadata") or {}).get("name")) for t in spec.get("volumeClaimTemplates") or []}
    template = (spec.get("template") or {}).get("spec") or {}
    volumes = {str(v.get("name")) for v in template.get("volumes") or []} | claims
    jetstream = block(server.config, "jetstream")
    if jetstream is None:
        yield f"{server.where}: {server.config_path} enables no JetStream (no jetstream block)"
    else:
        store = setting(jetstream, "store_dir")
        if store is None:
            yield f"{server.where}: {server.config_path}: jetstream.store_dir is not set (a temporary directory)"
        elif not on_volume(store, server.container, claims):
            yield (f"{server.where}: {server.config_path}: jetstream.store_dir {store} is on no volume of the "
                   f"StatefulSet's volumeClaimTemplates ({', '.join(sorted(claims)) or 'none'}): the stream is lost "
                   "with the pod")
    pid_file = setting(server.config, "pid_file")
    if pid_file is not None and not on_volume(os.path.dirname(pid_file), server.container, volumes):
        yield (f"{server.where}: {server.config_path}: pid_file {pid_file} is on no mounted volume "
               "(read-only root: the server cannot write it, the preStop hook cannot signal it)")
    yield from check_routes(server, spec)


def check_routes(server: NatsServer, spec: dict) -> Iterable[str]:
    replicas = int(spec.get("replicas", 1))
    cluster = block(server.config or "", "cluster")
    name = str((server.workload.get("metadata") or {}).get("name"))
    if cluster is None:
        if replicas > 1 and server.workload.get("kind") == "StatefulSet":
            yield (f"{server.where}: {replicas} replicas but {server.config_path} has no cluster block: "
                   f"{replicas} separate servers, each with its own JetStream")
        return
    if replicas == 1:
        yield (f"{server.where}: 1 replica with a cluster block in {server.config_path}: a lone JetStream cluster "
               "member never elects a meta leader (drop the cluster block)")
        return
    routes = re.findall(r"nats(?:-route)?://([^\s,:\]]+)", cluster)
    service = str(spec.get("serviceName", ""))
    wanted = {f"{name}-{index}" for index in range(replicas)}
    seen = set()
    for host in routes:
        pod, _, rest = host.partition(".")
        if not rest.startswith(service + ".") and rest != service:
            yield (f"{server.where}: route {host} is not a pod name under the StatefulSet's serviceName "
                   f"{service!r}")
        elif pod not in wanted:
            yield f"{server.where}: route {host} names no pod of the {replicas} replicas"
        seen.add(pod)
    missing = sorted(wanted - seen)
    if missing:
        yield f"{server.where}: the cluster routes miss {', '.join(missing)} ({replicas} replicas)"


def check_stream_replicas(objs: ObjectSet, where: Where) -> Iterable[str]:
    """Each container setting NATS_STREAM_REPLICAS asks for no more copies than NATS servers run."""
    found = servers(objs, where)
    if not found:
        return
    most = max(int((s.workload.get("spec") or {}).get("replicas", 1)) for s in found)
    for pod in objs.pod_templates():
        kind, _, name = pod.owner.partition("/")
        workload = objs.find(kind, name, pod.namespace)
        for container in pod.spec.get("containers") or []:
            value = container_env(container, pod, objs).get("NATS_STREAM_REPLICAS")
            if value is not None and value.isdigit() and int(value) > most and workload is not None:
                yield (f"{where(workload)}: container {container.get('name')}: NATS_STREAM_REPLICAS {value} but "
                       f"{most} NATS server(s) run here: JetStream refuses to create the stream")


def test_config(server: NatsServer, program: str, workdir: Path) -> list[str]:
    """`nats-server -c <config> -t` with the pod's environment; its complaint, if any."""
    if server.config is None:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".conf", dir=workdir, delete=False) as handle:
        handle.write(server.config)
    env = {"PATH": os.environ.get("PATH", ""), **server.env}
    proc = subprocess.run([program, "-c", handle.name, "-t"], capture_output=True, text=True, timeout=60, env=env)
    if proc.returncode == 0:
        return []
    text = (proc.stdout + proc.stderr).replace(handle.name, server.config_path).strip()
    return [f"{server.where}: nats-server -t rejects {server.config_path}: {text}"]
