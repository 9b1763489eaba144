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
