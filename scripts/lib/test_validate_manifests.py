"""Unit tests for the pure parts of the manifest validator (run by `validate-manifests --self-test`)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import manifest_refs as refs
import validate_manifests as vm


# --- CRD schema -> strict JSON schema


def validator(schema: dict) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(vm.strict_schema(schema))


def test_unknown_fields_are_rejected_at_every_depth():
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}}}}}
    v = validator(schema)
    assert v.is_valid({"spec": {"a": "x"}})
    assert not v.is_valid({"spec": {"a": "x", "b": 1}})
    assert not v.is_valid({"status": {}})


def test_preserve_unknown_fields_stays_open():
    schema = {"type": "object", "properties": {"config": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    assert validator(schema).is_valid({"config": {"anything": {"goes": 1}}})


def test_object_without_properties_is_closed_unless_preserved():
    # The API server prunes every field of such an object: offline, we reject them.
    assert not validator({"type": "object"}).is_valid({"x": 1})
    assert validator({"type": "object", "additionalProperties": {"type": "string"}}).is_valid({"x": "1"})


def test_int_or_string_accepts_both_and_nothing_else():
    v = validator({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]})
    assert v.is_valid(8080) and v.is_valid("http")
    assert not v.is_valid([1])


def test_nullable_allows_null_even_with_enum():
    v = validator({"type": "string", "enum": ["A", "B"], "nullable": True})
    assert v.is_valid(None) and v.is_valid("A")
    assert not v.is_valid("C")


def test_embedded_resource_gets_object_meta():
    schema = {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {"spec": {"type": "object"}}}
    v = validator(schema)
    assert v.is_valid({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {}})
    assert not v.is_valid({"metadata": {"name": "p", "labelz": {}}})


def test_crd_index_reads_served_versions_and_requires_metadata(tmp_path: Path):
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "names": {"kind": "Widget"}, "versions": [
            {"name": "v1", "served": True, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}},
            {"name": "v0", "served": False, "schema": {"openAPIV3Schema": {"type": "object"}}},
        ]},
    }
    (tmp_path / "widget.yaml").write_text(json.dumps(crd))
    index = vm.load_crd_index(tmp_path)
    assert set(index.validators) == {("example.com/v1", "Widget")}
    v = index.validators[("example.com/v1", "Widget")]()
    good = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}}
    assert v.is_valid(good)
    assert not v.is_valid({**good, "metadata": {}})
    assert not v.is_valid({**good, "spec": {"size": "big"}})


def test_pending_crds_with_a_bare_equals_enum_are_read(tmp_path: Path):
    # Upstream AlertmanagerConfig lists the bare scalar `=`, which PyYAML's safe loader refuses.
    crds, pending = tmp_path / "crds", tmp_path / "crds-pending"
    crds.mkdir()
    pending.mkdir()
    (pending / "matchers.yaml").write_text("""\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: routes.example.com}
spec:
  group: example.com
  names: {kind: Route}
  versions:
    - name: v1alpha1
      served: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                matchType:
                  type: string
                  enum:
                    - '!='
                    - =
""")
    index = vm.load_crd_index(crds)
    v = index.validators[("example.com/v1alpha1", "Route")]()
    obj = {"apiVersion": "example.com/v1alpha1", "kind": "Route", "metadata": {"name": "r"}}
    assert v.is_valid({**obj, "spec": {"matchType": "="}})
    assert not v.is_valid({**obj, "spec": {"matchType": "=="}})


def test_missing_crd_folder_is_a_skip_with_the_reason(tmp_path: Path):
    with pytest.raises(vm.Skipped, match="does not exist"):
        vm.load_crd_index(tmp_path / "nope")


# --- queries


def test_grafana_variables_are_filled_so_promtool_can_parse():
    expr = 'sum by (route) (rate(gateway_requests_total{route=~"$route", x="${pod}"}[$__rate_interval]))'
    assert vm.fill_grafana_vars(expr) == \
        'sum by (route) (rate(gateway_requests_total{route=~"grafana_var", x="grafana_var"}[5m]))'


def test_dashboard_queries_walk_rows_and_label_values(tmp_path: Path):
    dashboard = {
        "panels": [{"id": 1, "type": "row", "panels": [{"id": 2, "title": "t", "targets": [{"refId": "A", "expr": "up"}]}]}],
        "templating": {"list": [{"name": "route", "type": "query",
                                 "query": {"query": 'label_values(gateway_requests_total{namespace="m"}, route)'}}]},
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dashboard))
    assert [q for _, q in vm.dashboard_queries(path)] == ["up", 'gateway_requests_total{namespace="m"}']


def test_metrics_contract_accepts_histogram_series_of_listed_metrics():
    inputs = vm.Inputs()
    contract = {"gateway_request_duration_seconds", "gateway_requests_total"}
    assert vm.step_metrics_contract(inputs, contract) == []
    inputs.objects.append(vm.Obj("x.yaml", {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
                                           "metadata": {"name": "a"}, "spec": {"metrics": [{"name": "m", "provider": {
                                               "prometheus": {"query": "rate(gateway_request_duration_seconds_bucket[1m])"
                                                              " / rate(gateway_request_total[1m])"}}}]}}))
    problems = vm.step_metrics_contract(inputs, contract)
    assert len(problems) == 1 and "gateway_request_total" in problems[0]


# --- Dockerfiles


def test_final_stage_resolves_build_args(tmp_path: Path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE=gcr.io/distroless/cc-debian12:nonroot\nFROM rust AS b\nRUN x\n"
                          "FROM ${BASE}\nUSER 65532:65532\n")
    image, stage = vm.final_stage(dockerfile)
    assert image == "gcr.io/distroless/cc-debian12:nonroot"
    assert stage[-1] == "USER 65532:65532"


# --- kustomization bookkeeping


def test_patches_and_generator_inputs_are_not_standalone_objects(tmp_path: Path):
    kust = {"patches": [{"path": "p.yaml"}, {"patch": "inline"}], "patchesStrategicMerge": ["s.yaml"],
            "configMapGenerator": [{"name": "c", "files": ["key=conf.yaml", "plain.yaml"]}]}
    assert vm.kustomization_refs(tmp_path, kust) == {(tmp_path / n).resolve() for n in ("p.yaml", "s.yaml", "conf.yaml", "plain.yaml")}


# --- references


def test_selector_semantics():
    labels = {"app": "a", "tier": "api"}
    assert refs.selector_matches(None, labels)
    assert refs.selector_matches({"matchLabels": {"app": "a"}}, labels)
    assert not refs.selector_matches({"matchLabels": {"app": "b"}}, labels)
    assert refs.selector_matches({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["api"]}]}, labels)
    assert not refs.selector_matches({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["api"]}]}, labels)
    assert refs.selector_matches({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, labels)
    assert not refs.selector_matches({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, labels)


def deployment(name: str, labels: dict, **pod_spec) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": name, "ports": [{"name": "grpc", "containerPort": 50051}]}],
                                           **pod_spec}}}}


def test_rollout_with_workload_ref_inherits_the_deployment_pods():
    objs = refs.ObjectSet("t", [
        deployment("api", {"app": "api"}),
        {"kind": "Rollout", "metadata": {"name": "api"},
         "spec": {"selector": {"matchLabels": {"app": "api"}}, "workloadRef": {"kind": "Deployment", "name": "api"}}},
    ])
    owners = [p.owner for p in objs.pod_templates() if p.labels == {"app": "api"}]
    assert owners == ["Deployment/api", "Rollout/api"]


def test_cnpg_cluster_provides_services_secret_and_identity():
    objs = refs.ObjectSet("t", [
        {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": "db"}, "spec": {}},
        {"kind": "ServiceAccount", "metadata": {"name": "app"}},
        deployment("app", {"app": "app"}, serviceAccountName="app",
                   volumes=[{"name": "s", "secret": {"secretName": "db-app"}}]),
        {"kind": "DestinationRule", "metadata": {"name": "db"}, "spec": {"host": "db-rw.meshgate.svc.cluster.local"}},
        {"kind": "AuthorizationPolicy", "metadata": {"name": "db"},
         "spec": {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/meshgate/sa/app",
                                                                 "cluster.local/ns/meshgate/sa/db"]}}]}]}},
    ])
    assert refs.check_set(objs, external_secrets=set(), require_namespaces=False) == []


def test_missing_references_are_reported():
    objs = refs.ObjectSet("t", [
        deployment("app", {"app": "app"}, serviceAccountName="ghost",
                   volumes=[{"name": "c", "configMap": {"name": "nope"}}]),
        {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "app"},
         "spec": {"scaleTargetRef": {"kind": "Rollout", "name": "app"}}},
        {"kind": "Service", "metadata": {"name": "app"},
         "spec": {"selector": {"app": "app"}, "ports": [{"name": "grpc", "port": 50051, "targetPort": "http"}]}},
        {"kind": "VirtualService", "metadata": {"name": "app"},
         "spec": {"http": [{"route": [{"destination": {"host": "app.meshgate.svc.cluster.local", "subset": "canary",
                                                        "port": {"number": 8080}}}]}]}},
    ])
    problems = "\n".join(refs.check_set(objs, external_secrets=set(), require_namespaces=False))
    for expected in ("ServiceAccount ghost does not exist", "ConfigMap nope does not exist",
                     "scaleTargetRef Rollout/app does not exist", "targetPort http is not a named container port",
                     "has no port 8080", "no DestinationRule subset canary"):
        assert expected in problems


def test_rendered_objects_must_name_their_namespace():
    objs = refs.ObjectSet("t", [
        {"kind": "Namespace", "metadata": {"name": "meshgate"}},
        {"kind": "ConfigMap", "metadata": {"name": "placed", "namespace": "meshgate"}},
        {"kind": "AnalysisTemplate", "metadata": {"name": "floating"}},
    ])
    assert list(refs.check_namespaces(objs)) == ["AnalysisTemplate/floating: no metadata.namespace"]


def test_collector_pipelines_match_the_configured_components():
    collector = {"kind": "OpenTelemetryCollector", "metadata": {"name": "c"}, "spec": {"config": {
        "receivers": {"otlp": {}}, "exporters": {"otlp/tempo": {}, "debug": {}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["otlp/tempo"]}}}}}}
    assert list(refs.check_otel_pipelines(refs.ObjectSet("t", [collector]))) == [
        "OpenTelemetryCollector/c: pipeline uses processor batch, which is not configured",
        "OpenTelemetryCollector/c: exporter debug is configured but in no pipeline",
    ]


def test_applications_must_fit_their_project():
    project = {"kind": "AppProject", "metadata": {"name": "p"},
               "spec": {"sourceRepos": ["https://git/r.git"], "destinations": [{"server": "s", "namespace": "a"}]}}
    ok = {"kind": "Application", "metadata": {"name": "ok"},
          "spec": {"project": "p", "source": {"repoURL": "https://git/r.git"}, "destination": {"server": "s", "namespace": "a"}}}
    stray = {"kind": "Application", "metadata": {"name": "stray"},
             "spec": {"project": "p", "source": {"repoURL": "https://git/other.git"}, "destination": {"server": "s", "namespace": "b"}}}
    assert list(refs.check_argocd_applications([ok, stray], [project])) == [
        "Application/stray: repository https://git/other.git is not in AppProject p's sourceRepos",
        "Application/stray: destination b is not allowed by AppProject p",
    ]


def app(name: str, wave: int) -> dict:
    return {"kind": "Application", "metadata": {"name": name, "annotations": {"argocd.argoproj.io/sync-wave": str(wave)}}}


def test_sync_waves_order_namespace_database_and_migrations():
    namespace = {"kind": "Namespace", "metadata": {"name": "m"}}
    cluster = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": "db", "namespace": "m"}}
    uses_db = {"valueFrom": {"secretKeyRef": {"name": "db-app", "key": "uri"}}, "name": "DATABASE_URL"}
    server = deployment("api", {"app": "api"})
    server["metadata"]["namespace"] = "m"
    server["spec"]["template"]["spec"]["containers"][0]["env"] = [uses_db]
    migrate = {"kind": "Job", "metadata": {"name": "migrate", "namespace": "m"},
               "spec": {"template": {"metadata": {"labels": {}}, "spec": {"containers": [{"name": "m", "env": [uses_db]}]}}}}
    good = [(app("ns", -1), [namespace]), (app("data", 1), [cluster]), (app("apps", 2), [server, migrate])]
    problems = list(refs.check_sync_waves(good))
    assert problems == ["Application/apps: Job/migrate migrates the database but is not an Argo CD PreSync hook"]
    migrate["metadata"]["annotations"] = {"argocd.argoproj.io/hook": "PreSync"}
    assert list(refs.check_sync_waves(good)) == []
    wrong = [(app("ns", 1), [namespace]), (app("data", 1), [cluster]), (app("apps", 1), [server, migrate])]
    problems = "\n".join(refs.check_sync_waves(wrong))
    assert "Application/data (wave 1) puts objects into namespace m" in problems
    assert "Deployment/api reads db-app from Application/data, which syncs in wave 1, not before wave 1" in problems


# --- Argo CD order (argocd_order)

import argocd_order as order  # noqa: E402
import supply_chain as chain  # noqa: E402
import workload_policy as policy  # noqa: E402


def named(obj: dict) -> str:
    return refs.label(obj)


def hooked(obj: dict, hook: str | None = None, wave: int | None = None) -> dict:
    notes = obj.setdefault("metadata", {}).setdefault("annotations", {})
    if hook:
        notes["argocd.argoproj.io/hook"] = hook
    if wave is not None:
        notes["argocd.argoproj.io/sync-wave"] = str(wave)
    return obj


def job(name: str, **pod_spec) -> dict:
    return {"kind": "Job", "metadata": {"name": name, "namespace": "m"},
            "spec": {"template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": name}], **pod_spec}}}}


def test_applied_before_follows_app_waves_phases_hook_waves_and_kinds():
    step = order.Step
    assert order.applied_before(step("a", 1, 1, 0, 9), step("b", 2, 0, 0, 0))  # earlier Application wave
    assert not order.applied_before(step("a", 2, 0, 0, 0), step("b", 2, 1, 0, 9))  # same wave: parallel
    assert order.applied_before(step("a", 2, 0, -2, 6), step("a", 2, 0, -1, 30))  # earlier hook wave
    assert not order.applied_before(step("a", 2, 1, -5, 6), step("a", 2, 0, 0, 30))  # Sync after PreSync
    assert order.applied_before(step("a", 2, 1, 0, 6), step("a", 2, 1, 0, 30))  # same wave: kind order


def test_a_presync_job_needs_its_service_account_from_an_earlier_hook_wave():
    account = {"kind": "ServiceAccount", "metadata": {"name": "migrate", "namespace": "m"}}
    migrate = hooked(job("migrate", serviceAccountName="migrate"), "PreSync", -1)
    problems = list(order.check_sync_order([({"metadata": {"name": "apps"}}, [account, migrate])], named, "m"))
    assert len(problems) == 1 and "uses ServiceAccount/migrate" in problems[0] and "Sync wave 0" in problems[0]
    hooked(account, "PreSync", -2)
    assert list(order.check_sync_order([({"metadata": {"name": "apps"}}, [account, migrate])], named, "m")) == []


def test_a_secret_from_a_parallel_application_is_not_there_in_time():
    secret = {"kind": "Secret", "metadata": {"name": "creds", "namespace": "m"}}
    uses = job("worker", volumes=[{"name": "s", "secret": {"secretName": "creds"}}])
    apps = [({"metadata": {"name": "data", "annotations": {"argocd.argoproj.io/sync-wave": "1"}}}, [secret]),
            ({"metadata": {"name": "apps", "annotations": {"argocd.argoproj.io/sync-wave": "1"}}}, [uses])]
    assert "uses Secret/creds" in "\n".join(order.check_sync_order(apps, named, "m"))
    apps[1][0]["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] = "2"
    assert list(order.check_sync_order(apps, named, "m")) == []


def netpol(name: str, selector: dict, types: list[str], **spec) -> dict:
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "m"},
            "spec": {"podSelector": selector, "policyTypes": types, **spec}}


def test_egress_restricted_early_but_allowed_late_is_reported():
    deny = hooked(netpol("deny-egress", {}, ["Egress"]), "PreSync", -5)
    allow = netpol("migrate-egress", {"matchLabels": {"app": "migrate"}}, ["Egress"], egress=[{}])
    migrate = hooked(job("migrate"), "PreSync")
    problems = "\n".join(order.check_sync_order([({"metadata": {"name": "apps"}}, [deny, allow, migrate])], named, "m"))
    assert "restricted by NetworkPolicy/deny-egress" in problems and "NetworkPolicy/migrate-egress" in problems
    hooked(allow, "PreSync", -2)
    assert list(order.check_sync_order([({"metadata": {"name": "apps"}}, [deny, allow, migrate])], named, "m")) == []


def test_a_peer_admitting_the_hook_later_than_a_default_deny_is_reported():
    deny = netpol("default-deny", {}, ["Ingress"])
    db = {"kind": "StatefulSet", "metadata": {"name": "db", "namespace": "m"},
          "spec": {"template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db"}]}}}}
    admit = netpol("db", {"matchLabels": {"app": "db"}}, ["Ingress"],
                   ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "migrate"}}}]}])
    migrate = hooked(job("migrate"), "PreSync")
    namespace_app = ({"metadata": {"name": "namespace", "annotations": {"argocd.argoproj.io/sync-wave": "-1"}}}, [deny, db])
    problems = "\n".join(order.check_sync_order([namespace_app, ({"metadata": {"name": "apps"}}, [admit, migrate])],
                                                named, "m"))
    assert "is admitted by NetworkPolicy/db" in problems
    hooked(admit, "PreSync", -1)
    assert list(order.check_sync_order([namespace_app, ({"metadata": {"name": "apps"}}, [admit, migrate])], named, "m")) == []


# --- workload policies


def pod_of(kind: str, name: str, containers: list[dict], labels: dict | None = None, **spec) -> dict:
    labels = labels or {"app": name}
    return {"kind": kind, "metadata": {"name": name, "namespace": "m"},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": containers, **spec}}}}


def test_liveness_must_not_probe_what_readiness_probes():
    def container(liveness: dict, readiness: dict) -> dict:
        return {"name": "c", "livenessProbe": liveness, "readinessProbe": readiness}
    ok = pod_of("Deployment", "a", [container({"grpc": {"port": 1, "service": "liveness"}},
                                              {"grpc": {"port": 1, "service": "user.UserService"}})])
    assert list(policy.check_probes(refs.ObjectSet("t", [ok], "m"), named)) == []
    for liveness in ({"grpc": {"port": 1}}, {"grpc": {"port": 1, "service": "user.UserService"}},
                     {"grpc": {"port": 1, "service": "ready"}}):
        bad = pod_of("Deployment", "a", [container(liveness, {"grpc": {"port": 1, "service": "ready"}})])
        assert "follows the service's dependencies" in "\n".join(policy.check_probes(refs.ObjectSet("t", [bad], "m"), named))
    http = pod_of("Deployment", "e", [container({"httpGet": {"path": "/livez"}}, {"httpGet": {"path": "/livez"}})])
    assert "follows the upstreams" in "\n".join(policy.check_probes(refs.ObjectSet("t", [http], "m"), named))


def test_edge_drain_is_read_from_its_mounted_config():
    config = {"kind": "ConfigMap", "metadata": {"name": "gw", "namespace": "m"}, "data": {"gateway.yaml": (
        "server:\n  grace_period_seconds: 5\n  graceful_shutdown_timeout_seconds: 20\n")}}
    edge = {"name": "edge", "image": "r.example/meshgate/edge-gateway:1", "args": ["--config", "/etc/gw/gateway.yaml"],
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/gw"}],
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}, "readinessProbe": {"httpGet": {"path": "/readyz"}}}
    deploy = pod_of("Deployment", "edge", [edge], terminationGracePeriodSeconds=34,
                    volumes=[{"name": "cfg", "configMap": {"name": "gw"}}])
    problems = list(policy.check_drain(refs.ObjectSet("t", [config, deploy], "m"), named))
    assert problems == ["Deployment/edge: container edge: terminationGracePeriodSeconds 34 < preStop 5 + drain 25 "
                        "(server.grace_period_seconds 5 + graceful_shutdown_timeout_seconds 20) + margin 5 = 35: "
                        "the kubelet kills in-flight requests"]
    deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 35
    assert list(policy.check_drain(refs.ObjectSet("t", [config, deploy], "m"), named)) == []


def test_the_event_worker_has_nothing_to_drain_but_serve_does():
    def service(args: list[str]) -> dict:
        return {"name": "svc", "image": "r.example/meshgate/user-service:1", "args": args,
                "readinessProbe": {"httpGet": {"path": "/metrics"}}}
    worker = pod_of("Deployment", "worker", [service(["worker"])], terminationGracePeriodSeconds=15)
    assert list(policy.check_drain(refs.ObjectSet("t", [worker], "m"), named)) == []
    serve = pod_of("Deployment", "svc", [service([])], terminationGracePeriodSeconds=15)
    assert "SHUTDOWN_GRACE_SECS is not set" in "\n".join(policy.check_drain(refs.ObjectSet("t", [serve], "m"), named))


def test_connection_budget_counts_canary_rollouts_twice_and_the_migration_job():
    def client(pool: str) -> dict:
        return {"name": "c", "env": [{"name": "DB_MAX_CONNECTIONS", "value": pool},
                                     {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db-app", "key": "uri"}}}]}
    cluster = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": "db", "namespace": "m"},
               "spec": {"postgresql": {"parameters": {"max_connections": "100"}}}}
    deploy = pod_of("Deployment", "api", [client("4")])
    rollout = {"kind": "Rollout", "metadata": {"name": "api", "namespace": "m"},
               "spec": {"workloadRef": {"kind": "Deployment", "name": "api"}, "strategy": {"canary": {}}}}
    hpa = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "api", "namespace": "m"},
           "spec": {"scaleTargetRef": {"kind": "Rollout", "name": "api"}, "maxReplicas": 10}}
    migrate = {"kind": "Job", "metadata": {"name": "migrate", "namespace": "m"},
               "spec": {"template": {"metadata": {"labels": {}}, "spec": {"containers": [client("8")]}}}}
    objs = refs.ObjectSet("t", [cluster, deploy, rollout, hpa, migrate], "m")
    # 100 - 3 reserved - 10 CloudNativePG = 87 < 10 pods x 2 (canary) x 4 + 1 x 8 = 88
    problems = list(policy.check_db_budget(objs, named))
    assert len(problems) == 1 and "leaves 87, but the clients may open 88" in problems[0]
    migrate["spec"]["template"]["spec"]["containers"] = [client("7")]
    assert list(policy.check_db_budget(objs, named)) == []
    del deploy["spec"]["template"]["spec"]["containers"][0]["env"][0]
    assert "without DB_MAX_CONNECTIONS" in "\n".join(policy.check_db_budget(objs, named))


def test_canary_scale_follows_set_canary_scale_and_match_traffic_weight():
    def rollout(steps: list[dict]) -> refs.ObjectSet:
        return refs.ObjectSet("t", [{"kind": "Rollout", "metadata": {"name": "r"},
                                     "spec": {"strategy": {"canary": {"trafficRouting": {"istio": {}}, "steps": steps}}}}])
    header = {"setHeaderRoute": {"name": "h", "match": [{"headerName": "x"}]}}
    assert list(policy.check_canary_steps(rollout([header]), named))
    assert list(policy.check_canary_steps(rollout([{"setCanaryScale": {"replicas": 1}}, header]), named)) == []
    assert list(policy.check_canary_steps(rollout([{"setWeight": 5}, header]), named)) == []
    back_to_weight = [{"setCanaryScale": {"replicas": 1}}, {"setCanaryScale": {"matchTrafficWeight": True}}, header]
    assert list(policy.check_canary_steps(rollout(back_to_weight), named))


def test_analysis_conditions_must_leave_the_no_traffic_sentinel_inconclusive():
    assert policy.evaluate_condition("result[0] >= 0 && result[0] < 0.995", 0.5)
    assert not policy.evaluate_condition("result[0] >= 0 && result[0] < 0.995", -1)
    assert policy.evaluate_condition("!(result[0] > 1) || len(result) == 0", 0.5)
    with pytest.raises(ValueError):
        policy.evaluate_condition("result[0] > __import__('os')", 1)

    def template(success: str, failure: str) -> refs.ObjectSet:
        return refs.ObjectSet("t", [{"kind": "AnalysisTemplate", "metadata": {"name": "a"}, "spec": {"metrics": [{
            "name": "m", "successCondition": success, "failureCondition": failure,
            "provider": {"prometheus": {"query": "(sum(rate(x[2m]))) or on() vector(-1)"}}}]}}])
    assert list(policy.check_analysis_templates(template("result[0] >= 0.99", "result[0] >= 0 && result[0] < 0.99"), named)) == []
    assert "decides" in "\n".join(policy.check_analysis_templates(template("result[0] >= 0.99", "result[0] < 0.99"), named))


def test_wasm_plugins_need_a_registry_route_when_egress_is_restricted():
    plugin = {"kind": "WasmPlugin", "metadata": {"name": "w", "namespace": "m"},
              "spec": {"selector": {"matchLabels": {"app": "api"}}, "url": "oci://r.example/f:m-v1.0.0",
                       "match": [{"mode": "SERVER", "ports": [{"number": 50051}]}]}}
    api = pod_of("Deployment", "api", [{"name": "c", "ports": [{"name": "grpc", "containerPort": 50051},
                                                                {"name": "http-metrics", "containerPort": 9090}]}])
    dns_only = netpol("egress", {"matchLabels": {"app": "api"}}, ["Egress"], egress=[{"ports": [{"port": 53}]}])
    registry = netpol("registry", {"matchLabels": {"app": "api"}}, ["Egress"],
                      egress=[{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 443}]}])
    assert list(policy.check_wasm_plugins(refs.ObjectSet("t", [plugin, api], "m"), named)) == []
    assert "cannot pull" in "\n".join(policy.check_wasm_plugins(refs.ObjectSet("t", [plugin, api, dns_only], "m"), named))
    assert list(policy.check_wasm_plugins(refs.ObjectSet("t", [plugin, api, dns_only, registry], "m"), named)) == []
    plugin["spec"]["match"][0]["ports"] = [{"number": 9090}]
    assert "no application port" in "\n".join(policy.check_wasm_plugins(refs.ObjectSet("t", [plugin, api], "m"), named))


def test_prod_pins_accept_release_tags_and_commits_only():
    assert policy.PINNED_REVISION.match("deploy-v1.2.3") and policy.PINNED_REVISION.match("v0.1.0")
    assert policy.PINNED_REVISION.match("0123456789abcdef0123456789abcdef01234567")
    for moving in ("main", "HEAD", "release/1.2", "deploy-v1.2", "v1"):
        assert not policy.PINNED_REVISION.match(moving)


# --- supply chain


def test_built_images_expand_registry_and_matrix_from_the_push_tags():
    workflow = {"env": {"REGISTRY": "r.example/m"}, "jobs": {
        "images": {"strategy": {"matrix": {"image": ["api", "edge"]}}, "steps": [
            {"uses": "docker/build-push-action@" + "a" * 40,
             "with": {"push": True, "tags": "${{ env.REGISTRY }}/${{ matrix.image }}:${{ steps.t.outputs.tag }}"}}]},
        "wasm": {"strategy": {"matrix": {"module": ["rate-limit"]}}, "steps": [
            {"uses": "docker/build-push-action@" + "a" * 40,
             "with": {"push": "true", "tags": "${{ env.REGISTRY }}/filters:${{ steps.t.outputs.tag }}"}}]}}}
    built = chain.built_images([("w.yml", workflow)])
    assert built.repositories == {"r.example/m/api", "r.example/m/edge", "r.example/m/filters"}
    assert built.modules == {"r.example/m/filters": {"rate-limit"}}

    def plugin(url: str) -> dict:
        return {"kind": "WasmPlugin", "metadata": {"name": "p"}, "spec": {"url": url}}
    for good in ("oci://r.example/m/filters:rate-limit-v1.2.3", "oci://r.example/m/filters:rate-limit-sha-0123456789ab",
                 "oci://r.example/m/filters@sha256:" + "0" * 64):
        assert list(chain.check_images_built([plugin(good)], built, named)) == []
    assert list(chain.check_images_built([plugin("oci://r.example/m/filters:cache-v1.0.0")], built, named))
    assert list(chain.check_images_built([plugin("oci://r.example/m/other:rate-limit-v1.0.0")], built, named))
    pod = pod_of("Deployment", "x", [{"name": "c", "image": "r.example/m/unknown:1"}, {"name": "v", "image": "valkey:8"}])
    assert list(chain.check_images_built([pod], built, named)) == ["Deployment/x: container c runs r.example/m/unknown:1, "
                                                                   "which no workflow builds"]


def test_repository_of_keeps_registry_ports():
    assert chain.repository_of("localhost:5000/m/api:1.0") == "localhost:5000/m/api"
    assert chain.repository_of("r.example/m/api") == "r.example/m/api"


def test_policies_name_a_method_in_both_api_versions_unless_annotated():
    def policy(paths: list[str], annotations: dict | None = None) -> vm.Obj:
        metadata = {"name": "p", **({"annotations": annotations} if annotations else {})}
        return vm.Obj("p.yaml", {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                                 "metadata": metadata,
                                 "spec": {"rules": [{"to": [{"operation": {"paths": paths}}]}]}})
    served = vm.served_methods(vm.ROOT / "proto" / "user" / "v2" / "user.proto")
    assert {"CreateUser", "UpdateUser", "DeleteUser", "GetUser"} <= served
    both = ["/user.UserService/CreateUser", "/user.v2.UserService/CreateUser", "/user.UserService/*",
            "/user.v2.UserService/*", "/grpc.health.v1.Health/*", "/user.UserService/TestError"]
    assert vm.api_version_problems([policy(both)], served) == []
    problems = vm.api_version_problems([policy(["/user.UserService/DeleteUser", "/user.v2.UserService/*"])], served)
    assert len(problems) == 2, problems
    assert "rule 0 lists /user.UserService/DeleteUser but not /user.v2.UserService/DeleteUser" in problems[0]
    assert "rule 0 lists /user.v2.UserService/* but not /user.UserService/*" in problems[1]
    one = policy(["/user.UserService/*"], {vm.ONE_VERSION_ANNOTATION: "user.UserService"})
    assert vm.api_version_problems([one], served) == []
