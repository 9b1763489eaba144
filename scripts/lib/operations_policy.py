"""Operations wiring that only holds when several objects agree (step `operations`).

Each check takes an ObjectSet and `where` and yields problems:

  certificates  every TLS Secret an ingress Gateway serves is issued by a cert-manager Certificate
                in the gateway's namespace, for every host the server names, by an issuer of the
                set; an HTTP-01 issuer needs port 80 to answer the challenge, which a Gateway's
                httpsRedirect on that host prevents
  probes        every Probe names a module the shipped blackbox exporter config defines, and a
                prober Service of the set (port included)
  recovery      a CloudNativePG recovery Cluster names an external cluster it recovers from, an
                existing ObjectStore, and archives its own WAL under another serverName
  logging       Fluent Bit's config is the ConfigMap its pods mount, and its es output goes to an
                Elasticsearch of the set over TLS it verifies with ECK's CA (mounted from the
                cluster's http-certs-public Secret), with credentials from Secret-sourced env vars
Pure functions over parsed objects: no I/O.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import yaml

from log_contract import flag
from manifest_refs import ObjectSet
from workload_policy import arg_value, mounted_file

Where = Callable[[dict], str]

INGRESS_NAMESPACE = "istio-system"  # README, Deploy prerequisites: the ingress gateway's namespace


def spec(obj: dict) -> dict:
    return obj.get("spec") or {}


def name(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def host_covered(host: str, dns_names: list[str]) -> bool:
    """A certificate name covers a host exactly or as a one-label wildcard (*.example.com)."""
    for pattern in dns_names:
        if pattern == host:
            return True
        if pattern.startswith("*.") and host.count(".") == pattern.count(".") and fnmatch.fnmatch(host, pattern):
            return True
    return False


# --- certificates


def issuer_of(objs: ObjectSet, certificate: dict) -> dict | None:
    ref = spec(certificate).get("issuerRef") or {}
    kind = ref.get("kind", "Issuer")
    if kind == "ClusterIssuer":
        return objs.find("ClusterIssuer", ref.get("name", ""))
    return objs.find(kind, ref.get("name", ""), objs.ns(certificate))


def http01_solvers(issuer: dict) -> list[dict]:
    return [s for s in (spec(issuer).get("acme") or {}).get("solvers") or [] if "http01" in s]


def check_certificates(objs: ObjectSet, where: Where) -> Iterable[str]:
    certificates = objs.of_kind("Certificate")
    for gateway in objs.of_kind("Gateway"):
        if not str(gateway.get("apiVersion", "")).startswith("networking.istio.io/"):
            continue
        servers = spec(gateway).get("servers") or []
        redirected = {h for s in servers if (s.get("tls") or {}).get("httpsRedirect") for h in s.get("hosts") or []}
        for server in servers:
            secret = (server.get("tls") or {}).get("credentialName")
            if not secret:
                continue
            issuing = [c for c in certificates
                       if spec(c).get("secretName") == secret and objs.ns(c) == INGRESS_NAMESPACE]
            if not issuing:
                yield (f"{where(gateway)}: server {(server.get('port') or {}).get('name')} serves Secret {secret}, which "
                       f"no cert-manager Certificate in {INGRESS_NAMESPACE} issues (a hand-made certificate expires "
                       "unnoticed)")
                continue
            certificate = issuing[0]
            dns_names = spec(certificate).get("dnsNames") or []
            for host in server.get("hosts") or []:
                host = host.split("/")[-1]
                if not host_covered(host, dns_names):
                    yield f"{where(certificate)}: dnsNames {dns_names} do not cover host {host} of {where(gateway)}"
            issuer = issuer_of(objs, certificate)
            if issuer is None:
                ref = spec(certificate).get("issuerRef") or {}
                yield f"{where(certificate)}: issuerRef {ref.get('kind', 'Issuer')}/{ref.get('name')} does not exist"
                continue
            if http01_solvers(issuer):
                for host in sorted(h.split("/")[-1] for h in redirected):
                    if host_covered(host, dns_names):
                        yield (f"{where(issuer)}: solves HTTP-01 for {host}, but {where(gateway)} redirects port 80 "
                               "to HTTPS (httpsRedirect): the ACME server's plain-HTTP challenge never reaches the "
                               "solver. Use DNS-01, or drop the redirect")


# --- synthetic probes


def blackbox_modules(objs: ObjectSet, prober_url: str) -> tuple[dict | None, str]:
    """The modules of the blackbox exporter behind `prober_url` (host:port), read from the
    ConfigMap its Deployment mounts at --config.file; (None, why) when that chain breaks."""
    host, _, port = prober_url.partition(":")
    parts = host.split(".")
    service = objs.find("Service", parts[0], parts[1] if len(parts) > 1 else None)
    if service is None:
        return None, f"prober {prober_url}: no Service {host} in the set"
    ports = {str(p.get("port")) for p in spec(service).get("ports") or []}
    if port and port not in ports:
        return None, f"prober {prober_url}: Service {name(service)} has no port {port} (it has {sorted(ports)})"
    selector = spec(service).get("selector") or {}
    for pod in objs.pod_templates():
        if pod.namespace != objs.ns(service) or any(pod.labels.get(k) != v for k, v in selector.items()):
            continue
        for container in pod.spec.get("containers") or []:
            path = arg_value(container, "--config.file")
            text = mounted_file(container, pod, objs, path) if path else None
            if text is not None:
                return (yaml.safe_load(text) or {}).get("modules") or {}, ""
        return None, f"prober {prober_url}: the pods of Service {name(service)} mount no --config.file from a ConfigMap"
    return None, f"prober {prober_url}: Service {name(service)} selects no pod of the set"


def check_probes(objs: ObjectSet, where: Where) -> Iterable[str]:
    for probe in objs.of_kind("Probe"):
        url = str((spec(probe).get("prober") or {}).get("url", ""))
        modules, why = blackbox_modules(objs, url)
        if modules is None:
            yield f"{where(probe)}: {why}"
            continue
        module = spec(probe).get("module")
        if module not in modules:
            yield f"{where(probe)}: module {module!r} is not in the blackbox exporter's config (it has {sorted(modules)})"


# --- point-in-time recovery

BARMAN_PLUGIN = "barman-cloud.cloudnative-pg.io"


def check_recovery(objs: ObjectSet, where: Where) -> Iterable[str]:
    """A CloudNativePG recovery Cluster reads an origin's archive and must not archive into it."""
    for cluster in objs.of_kind("Cluster"):
        recovery = ((spec(cluster).get("bootstrap") or {}).get("recovery")) or {}
        if not recovery:
            continue
        source = recovery.get("source")
        origin = next((c for c in spec(cluster).get("externalClusters") or [] if c.get("name") == source), None)
        if origin is None:
            yield f"{where(cluster)}: bootstrap.recovery.source {source!r} is not one of its externalClusters"
            continue
        params = (origin.get("plugin") or {}).get("parameters") or {}
        store = params.get("barmanObjectName")
        if (origin.get("plugin") or {}).get("name") == BARMAN_PLUGIN and store and \
                not objs.find("ObjectStore", store, objs.ns(cluster)):
            yield f"{where(cluster)}: external cluster {source} reads ObjectStore {store}, which does not exist"
        origin_server = params.get("serverName", source)
        for plugin in spec(cluster).get("plugins") or []:
            own = plugin.get("parameters") or {}
            if plugin.get("isWALArchiver") and own.get("barmanObjectName") == store and \
                    own.get("serverName", name(cluster)) == origin_server:
                yield (f"{where(cluster)}: archives its WAL as serverName {origin_server!r} into {store}, the archive it "
                       "recovers from: it would write over the origin's backups (give it a serverName of its own)")


# --- log shipping


def secret_mounted_at(pod, container: dict, path: str) -> str | None:
    """The Secret whose volume a container mounts at the folder of `path`."""
    directory = path.rpartition("/")[0]
    for mount in container.get("volumeMounts") or []:
        if mount.get("mountPath", "").rstrip("/") == directory:
            volume = next((v for v in pod.spec.get("volumes") or [] if v.get("name") == mount.get("name")), {})
            return (volume.get("secret") or {}).get("secretName")
    return None


def check_log_shipping(objs: ObjectSet, where: Where) -> Iterable[str]:
    clusters = {f"{name(e)}-es-http.{objs.ns(e)}.svc": e for e in objs.of_kind("Elasticsearch")}
    for pod in objs.pod_templates():
        owner = objs.find(*pod.owner.split("/", 1), pod.namespace)
        for container in pod.spec.get("containers") or []:
            if "fluent-bit" not in str(container.get("image", "")):
                continue
            path = arg_value(container, "--config") or arg_value(container, "-c")
            label = f"{where(owner or {})}: container {container.get('name')}"
            text = mounted_file(container, pod, objs, path) if path else None
            if text is None:
                yield f"{label}: its --config {path!r} is not a key of a mounted ConfigMap"
                continue
            config = yaml.safe_load(text) or {}
            env = {e["name"]: e.get("valueFrom") or {} for e in container.get("env") or []}
            for output in ((config.get("pipeline") or {}).get("outputs") or []):
                if output.get("name") != "es":
                    continue
                host = str(output.get("host", ""))
                target = host.removesuffix(".cluster.local")
                cluster = clusters.get(target)
                if cluster is None:
                    yield f"{label}: es output host {host} is no Elasticsearch of the set ({sorted(clusters) or 'none'})"
                    continue
                if not flag(output.get("tls")) or not flag(output.get("tls.verify")):
                    yield (f"{label}: es output to {host} without verified TLS (tls and tls.verify on): ECK serves "
                           "HTTPS only, and the credentials would go to whoever answers")
                ca = str(output.get("tls.ca_file", ""))
                expected = f"{name(cluster)}-es-http-certs-public"
                if secret_mounted_at(pod, container, ca) != expected:
                    yield f"{label}: tls.ca_file {ca!r} is not mounted from Secret {expected} (ECK's CA)"
                for key in ("http_user", "http_passwd"):
                    value = str(output.get(key, ""))
                    variable = value[2:-1] if value.startswith("${") and value.endswith("}") else None
                    if variable is None or "secretKeyRef" not in env.get(variable, {}):
                        yield f"{label}: es output {key} is not ${{VAR}} of an env var from a Secret"


CHECKS = (check_certificates, check_probes, check_log_shipping, check_recovery)


def check_all(objs: ObjectSet, where: Where) -> list[str]:
    return [problem for check in CHECKS for problem in check(objs, where)]
