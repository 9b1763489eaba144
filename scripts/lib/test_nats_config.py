"""Unit tests of nats_config's pure checks (the nats-server run itself is the self-test's)."""

from manifest_refs import ObjectSet
from nats_config import block, check_server, check_stream_replicas, servers, setting

CLUSTER = """
server_name: $POD_NAME
pid_file: /run/nats/nats.pid
jetstream {
  store_dir: /data/jetstream
}
cluster {
  name: c
  routes: [
    nats://nats-0.nats-headless.m.svc.cluster.local:6222
    nats://nats-1.nats-headless.m.svc.cluster.local:6222
  ]
}
"""


def statefulset(config: str, replicas: int) -> ObjectSet:
    cm = {"kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "m"}, "data": {"nats.conf": config}}
    sts = {"kind": "StatefulSet", "metadata": {"name": "nats", "namespace": "m"},
           "spec": {"replicas": replicas, "serviceName": "nats-headless",
                    "selector": {"matchLabels": {"app": "nats"}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"}}],
                    "template": {"metadata": {"labels": {"app": "nats"}}, "spec": {
                        "containers": [{"name": "nats", "command": ["nats-server"], "args": ["-c", "/etc/nats/nats.conf"],
                                        "env": [{"name": "POD_NAME",
                                                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/nats"},
                                                         {"name": "data", "mountPath": "/data"},
                                                         {"name": "run", "mountPath": "/run/nats"}]}],
                        "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "run", "emptyDir": {}}]}}}}
    return ObjectSet("t", [cm, sts], "m")


def named(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def test_blocks_and_settings_are_read_from_the_config():
    assert setting(block(CLUSTER, "jetstream") or "", "store_dir") == "/data/jetstream"
    assert "routes" in (block(CLUSTER, "cluster") or "")
    assert block(CLUSTER, "gateway") is None


def test_the_pod_environment_names_the_first_pod():
    [server] = servers(statefulset(CLUSTER, 2), named)
    assert server.env == {"POD_NAME": "nats-0"}
    assert server.config == CLUSTER


def test_routes_must_be_the_statefulset_pods():
    [two] = servers(statefulset(CLUSTER, 2), named)
    assert list(check_server(two)) == []
    [three] = servers(statefulset(CLUSTER, 3), named)
    assert list(check_server(three)) == ["StatefulSet/nats: container nats: the cluster routes miss nats-2 (3 replicas)"]
    [one] = servers(statefulset(CLUSTER, 1), named)
    assert "never elects a meta leader" in "\n".join(check_server(one))
    [other] = servers(statefulset(CLUSTER.replace("nats-headless", "elsewhere"), 2), named)
    assert "not a pod name under the StatefulSet's serviceName" in "\n".join(check_server(other))


def test_the_store_must_be_on_a_volume_claim_and_the_pid_file_on_a_volume():
    [server] = servers(statefulset(CLUSTER.replace("/data/jetstream", "/tmp/js")
                                   .replace("/run/nats/", "/run/x/"), 2), named)
    problems = "\n".join(check_server(server))
    assert "store_dir /tmp/js is on no volume of the StatefulSet's volumeClaimTemplates (data)" in problems
    assert "pid_file /run/x/nats.pid is on no mounted volume" in problems


def test_stream_replicas_fit_the_servers():
    objs = statefulset(CLUSTER, 2)
    client = {"kind": "Deployment", "metadata": {"name": "svc", "namespace": "m"},
              "spec": {"selector": {"matchLabels": {"app": "svc"}}, "template": {
                  "metadata": {"labels": {"app": "svc"}},
                  "spec": {"containers": [{"name": "c", "env": [{"name": "NATS_STREAM_REPLICAS", "value": "3"}]}]}}}}
    objs.objects.append(client)
    assert list(check_stream_replicas(objs, named)) == [
        "Deployment/svc: container c: NATS_STREAM_REPLICAS 3 but 2 NATS server(s) run here: JetStream refuses to "
        "create the stream"]
    client["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "2"
    assert list(check_stream_replicas(objs, named)) == []
