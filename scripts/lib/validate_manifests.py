"""Offline validation of meshgate's mesh/, deploy/ and .github/workflows (run via cargo xtask validate-manifests).

Every step is a function taking explicit inputs and returning a list of problems, so the same
function validates the repository and, in --self-test, must reject a seeded bad input from
deploy/tests/bad/<step>/. Steps:

  yamllint        every YAML file
  yaml-kinds      every YAML document is a Kubernetes object, a kustomization input or a promtool test
  kustomize       `kubectl kustomize` of every kustomization (components are rendered via overlays)
  core-schema     core Kubernetes kinds against kubernetes-validate's strict schemas
  crd-schema      every CRD kind against strict JSON schemas generated now from upstream CRD YAML
  promtool-rules  `promtool check rules` on every PrometheusRule's groups
  promtool-tests  `promtool test rules`, and every alert must have a test
  alertmanager    the AlertmanagerConfig as the operator generates it: amtool check-config, amtool
                  route tests of every alert, inhibition and silence cases on a real Alertmanager
                  (scripts/lib/alert_routing.py)
  promql-queries  dashboard and AnalysisTemplate queries parsed by promtool
  metrics-contract every app metric a query uses is listed in deploy/observability/METRICS.md
  hadolint        every Dockerfile under deploy/images
  image-policy    final stage: minimal base, non-root user, OCI labels
  workflows       .github/workflows against the GitHub workflow schema (check-jsonschema)
  trivy           `trivy config` on rendered overlays and Dockerfiles, allow-list deploy/policy/trivyignore.yaml
  mesh-invariants STRICT mTLS, deny-by-default authorization, SPIFFE principals on every allow rule,
                  a RequestAuthentication (issuer + keys) wherever a policy reads the JWT, and every
                  user.UserService method path a policy lists also listed for user.v2.UserService
                  when v2 serves that method (proto/user/v2/user.proto)
  references      per environment (the Argo CD app of apps): Rollout -> VirtualService routes,
                  DestinationRule subsets, AnalysisTemplates; HPA targets; selectors -> pods;
                  Service/ServiceMonitor ports; ConfigMaps, Secrets, ServiceAccounts, principals;
                  collector pipelines; Applications vs. AppProject; sync-wave order
  argocd-order    Argo CD's apply order (scripts/lib/argocd_order.py)
  workload-policy probes, drain, sidecars, budgets, canaries... (scripts/lib/workload_policy.py)
  operations      certificates, probe modules, log shipping, recovery clusters
                  (scripts/lib/operations_policy.py)
  nats-config     every nats-server's mounted config through the real `nats-server -t`, with the pod's
                  environment; JetStream on a persistent volume, routes = the StatefulSet's pods
                  (scripts/lib/nats_config.py)
  supply-chain    what the workflows build, pin, scan and sign (scripts/lib/supply_chain.py)
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import jsonschema
import yaml

import alert_routing
import argocd_order
import manifest_refs
import nats_config
import operations_policy
import supply_chain
import workload_policy

try:
    _SafeLoader = yaml.CSafeLoader  # libyaml: the CRD bundle is 6 MB
except AttributeError:  # pragma: no cover
    _SafeLoader = yaml.SafeLoader


class YamlLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """The safe loader, reading two YAML 1.1 types as the plain strings Kubernetes (YAML 1.2) sees.

    `value`: PyYAML resolves the bare scalar `=` to it and its safe loader has no constructor, so
    upstream CRDs whose enums list `=` (AlertmanagerConfig's matchType), and kustomize's output of
    an AlertmanagerConfig, could not be read at all. `timestamp`: kustomize writes
    `2026-01-01 00:00:00+00` unquoted (a string in YAML 1.2; a CNPG recovery target), which
    PyYAML would turn into a datetime.
    """


for _tag in ("tag:yaml.org,2002:value", "tag:yaml.org,2002:timestamp"):
    YamlLoader.add_constructor(_tag, lambda loader, node: loader.construct_scalar(node))

ROOT = Path(__file__).resolve().parents[2]
BAD_DIR = ROOT / "deploy" / "tests" / "bad"
KUBERNETES_VERSION = os.environ.get("MESHGATE_KUBERNETES_VERSION", "1.33.0")
TRIVY_IGNORE = ROOT / "deploy" / "policy" / "trivyignore.yaml"
YAMLLINT_CONFIG = ROOT / "deploy" / "yamllint.yaml"
HADOLINT_CONFIG = ROOT / "deploy" / "images" / "hadolint.yaml"
METRICS_CONTRACT = ROOT / "deploy" / "observability" / "METRICS.md"

# YAML files that configure the validators themselves (checked by the tools that read them).
TOOL_CONFIGS = {"deploy/yamllint.yaml", "deploy/images/hadolint.yaml", "deploy/policy/trivyignore.yaml"}

# API groups served by CRDs: objects in these groups need the CRD schemas.
CRD_GROUPS = {
    "networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io",
    "argoproj.io", "monitoring.coreos.com", "postgresql.cnpg.io", "gateway.networking.k8s.io",
    "opentelemetry.io", "barmancloud.cnpg.io", "cert-manager.io", "elasticsearch.k8s.elastic.co",
    "kibana.k8s.elastic.co",
}
# CRD groups an older CRD folder may lack (cargo xtask fetch-crds fetches them, pinned in crds.lock):
# their objects are reported as not schema-checked instead of failing.
OPTIONAL_CRD_GROUPS = {"barmancloud.cnpg.io": "cloudnative-pg/plugin-barman-cloud"}
# Kinds whose CRD lives in the pending folder (pending_folder), which an older checkout may lack.
OPTIONAL_CRD_KINDS = {("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig")}


class Skipped(Exception):
    """A step that cannot run here; the message says why."""


@dataclass
class Obj:
    source: str  # file path or "render:<dir>"
    doc: dict

    @property
    def group_version(self) -> str:
        return str(self.doc.get("apiVersion", ""))

    @property
    def group(self) -> str:
        gv = self.group_version
        return gv.split("/")[0] if "/" in gv else ""

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        meta = self.doc.get("metadata") or {}
        return str(meta.get("name") or meta.get("generateName") or "?")

    def where(self) -> str:
        return f"{self.source}: {self.kind}/{self.name}"


@dataclass
class Inputs:
    yaml_files: list[Path] = field(default_factory=list)
    kustomize_dirs: list[Path] = field(default_factory=list)
    objects: list[Obj] = field(default_factory=list)  # standalone files + rendered overlays
    rule_tests: list[Path] = field(default_factory=list)
    route_tests: list[Path] = field(default_factory=list)  # Alertmanager routing tests (alert_routing)
    dashboards: list[Path] = field(default_factory=list)
    dockerfiles: list[Path] = field(default_factory=list)
    workflows: list[Path] = field(default_factory=list)
    rendered: dict[str, str] = field(default_factory=dict)  # kustomize dir -> rendered YAML
    resource_files: set[Path] = field(default_factory=set)  # files some kustomization renders
    unclassified: list[str] = field(default_factory=list)  # YAML documents no validator covers


def rel(path: Path | str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run(cmd: list[str], cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def tool_output(proc: subprocess.CompletedProcess) -> list[str]:
    text = (proc.stdout + "\n" + proc.stderr).strip()
    return [line for line in text.splitlines() if line.strip()]


def load_docs(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as handle:
        return [d for d in yaml.load_all(handle, Loader=YamlLoader) if d is not None]


# --------------------------------------------------------------------------------------------
# Collection


KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def kustomization_refs(kdir: Path, kust: dict) -> set[Path]:
    """Files a kustomization consumes as patches or generator inputs: not standalone objects."""
    refs: set[Path] = set()
    for patch in kust.get("patches") or []:
        if isinstance(patch, dict) and patch.get("path"):
            refs.add((kdir / patch["path"]).resolve())
    for key in ("patchesStrategicMerge",):
        for item in kust.get(key) or []:
            if isinstance(item, str) and "\n" not in item:
                refs.add((kdir / item).resolve())
    for patch in kust.get("patchesJson6902") or []:
        if patch.get("path"):
            refs.add((kdir / patch["path"]).resolve())
    for gen_key in ("configMapGenerator", "secretGenerator"):
        for gen in kust.get(gen_key) or []:
            for entry in gen.get("files") or []:
                refs.add((kdir / entry.split("=", 1)[-1]).resolve())
            for entry in gen.get("envs") or []:
                refs.add((kdir / entry).resolve())
    for item in kust.get("replacements") or []:
        if isinstance(item, dict) and item.get("path"):
            refs.add((kdir / item["path"]).resolve())
    return refs


def collect(roots: list[Path], exclude: list[Path]) -> tuple[Inputs, list[str]]:
    """Walk the roots; return the inputs and problems found while reading them."""
    inputs = Inputs()
    problems: list[str] = []

    def excluded(path: Path) -> bool:
        return any(path == ex or ex in path.parents for ex in exclude)

    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root.resolve())
        elif root.is_dir():
            files.extend(p.resolve() for p in sorted(root.rglob("*")) if p.is_file())
    files = [f for f in files if not excluded(f)]

    consumed: set[Path] = set()
    for path in files:
        if path.name in KUSTOMIZATION_NAMES:
            try:
                kust = load_docs(path)[0]
            except (yaml.YAMLError, IndexError) as err:
                problems.append(f"{rel(path)}: cannot parse: {err}")
                continue
            consumed |= kustomization_refs(path.parent, kust)
            for entry in kust.get("resources") or []:
                target = (path.parent / entry).resolve()
                if target.is_file():
                    inputs.resource_files.add(target)
            if kust.get("kind") != "Component":
                inputs.kustomize_dirs.append(path.parent)

    for path in files:
        name = path.name
        if name.endswith((".yaml", ".yml")):
            inputs.yaml_files.append(path)
            if ".github" in path.parts and "workflows" in path.parts:
                inputs.workflows.append(path)
                continue
            if name in KUSTOMIZATION_NAMES or path in consumed:
                continue
            try:
                docs = load_docs(path)
            except yaml.YAMLError as err:
                problems.append(f"{rel(path)}: cannot parse: {err}")
                continue
            for index, doc in enumerate(docs):
                if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                    inputs.objects.append(Obj(rel(path), doc))
                elif isinstance(doc, dict) and "rule_files" in doc and "tests" in doc:
                    inputs.rule_tests.append(path)
                elif isinstance(doc, dict) and "alertmanager_config" in doc and "routes" in doc:
                    inputs.route_tests.append(path)
                elif rel(path) not in TOOL_CONFIGS:
                    inputs.unclassified.append(f"{rel(path)}: document {index + 1} is neither a Kubernetes object "
                                               "(apiVersion + kind), a kustomization input, a promtool test nor an "
                                               "Alertmanager route test")
        elif name.endswith(".json") and "dashboards" in path.parts:
            inputs.dashboards.append(path)
        elif name == "Dockerfile" or name.endswith(".Dockerfile"):
            inputs.dockerfiles.append(path)
    inputs.rule_tests = sorted(set(inputs.rule_tests))
    return inputs, problems


# --------------------------------------------------------------------------------------------
# Steps


def step_yaml_kinds(inputs: Inputs) -> list[str]:
    """Every YAML document is something a validator checks: nothing passes by being unrecognised."""
    return inputs.unclassified


def step_yamllint(inputs: Inputs) -> list[str]:
    if not inputs.yaml_files:
        return []
    proc = run(["yamllint", "--strict", "-f", "parsable", "-c", str(YAMLLINT_CONFIG),
                *map(str, inputs.yaml_files)])
    return [] if proc.returncode == 0 else [rel_line(l) for l in tool_output(proc)]


def rel_line(line: str) -> str:
    return line.replace(str(ROOT) + "/", "")


def render_one(kdir: Path) -> tuple[Path, subprocess.CompletedProcess]:
    return kdir, run(["kubectl", "kustomize", str(kdir)])


def step_kustomize(inputs: Inputs) -> list[str]:
    problems: list[str] = []
    with futures.ThreadPoolExecutor(max_workers=4) as pool:
        for kdir, proc in pool.map(render_one, inputs.kustomize_dirs):
            if proc.returncode != 0:
                problems.append(f"{rel(kdir)}: kustomize failed: " + " ".join(tool_output(proc))[:800])
                continue
            source = f"render:{rel(kdir)}"
            inputs.rendered[rel(kdir)] = proc.stdout
            for doc in yaml.load_all(proc.stdout, Loader=YamlLoader):
                if isinstance(doc, dict):
                    inputs.objects.append(Obj(source, doc))
    return problems


# --- core kinds


@functools.cache
def core_schema_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator | None:
    from kubernetes_validate import utils as kv
    from referencing import Registry, Resource

    version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(KUBERNETES_VERSION)][-1]
    schema_dir = f"v{version}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        return None
    definitions = core_definitions(schema_dir, version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def core_definitions(schema_dir: str, version: str) -> Any:
    from kubernetes_validate import utils as kv
    return kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)


def error_lines(obj: Obj, validator: jsonschema.protocols.Validator) -> list[str]:
    lines = []
    for err in sorted(validator.iter_errors(obj.doc), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path) or "(root)"
        message = err.message if len(err.message) < 300 else err.message[:300] + "…"
        lines.append(f"{obj.where()}: {path}: {message}")
    return lines


def step_core_schema(inputs: Inputs) -> list[str]:
    problems: list[str] = []
    checked = 0
    for obj in inputs.objects:
        if obj.group in CRD_GROUPS:
            continue
        validator = core_schema_validator(obj.kind, obj.group_version)
        if validator is None:
            problems.append(f"{obj.where()}: no schema for {obj.group_version} {obj.kind} in Kubernetes "
                            f"{KUBERNETES_VERSION} nor among the CRD groups")
            continue
        checked += 1
        problems.extend(error_lines(obj, validator))
    print(f"   {checked} core objects against Kubernetes {KUBERNETES_VERSION} (strict)")
    return problems


# --- CRD kinds

OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
}

SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")


def strict_schema(schema: dict, embedded_resource: bool = False) -> dict:
    """OpenAPI v3 (structural CRD schema) -> JSON Schema draft 4 that rejects unknown fields.

    The API server prunes fields a structural schema does not declare; rejecting them here is the
    offline equivalent, except where the CRD says x-kubernetes-preserve-unknown-fields.
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "example", "nullable"):
            continue
        if key == "properties":
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not") and isinstance(value, dict):
            out[key] = strict_schema(value)
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = strict_schema(value)
        elif key in SUBSCHEMA_LISTS:
            out[key] = [strict_schema(sub) for sub in value]
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", []).append({"type": ["integer", "string"]})
    embedded = embedded_resource or schema.get("x-kubernetes-embedded-resource", False)
    if embedded:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = OBJECT_META
    if (out.get("type") == "object" and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@dataclass
class CrdIndex:
    folder: Path
    validators: dict[tuple[str, str], Callable[[], jsonschema.protocols.Validator]]
    files: int


def pending_folder(folder: Path) -> Path:
    """Where the CRDs a plain safe loader refuses live: `<crds>-pending` beside the CRD folder
    (../shared/crds-pending; cargo xtask fetch-crds lays them out the same way)."""
    return folder.with_name(folder.name + "-pending")


def load_crd_index(folder: Path, pending: Path | None = None) -> CrdIndex:
    if not folder.is_dir():
        raise Skipped(f"CRD folder {folder} does not exist, so CRD kinds were NOT schema-checked "
                      f"(pass --crds-dir or set MESHGATE_CRDS_DIR to a folder of upstream CRD YAML)")
    pending = pending_folder(folder) if pending is None else pending
    raw: dict[tuple[str, str], dict] = {}
    files = sorted(p for root in (folder, pending) if root.is_dir()
                   for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))
    for path in files:
        for doc in load_docs(path):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec.get("versions", []):
                if not version.get("served", True):
                    continue
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                if schema:
                    raw[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    if not raw:
        raise Skipped(f"no CustomResourceDefinition found under {folder}: CRD kinds were NOT schema-checked")

    def compile_one(schema: dict) -> jsonschema.protocols.Validator:
        strict = strict_schema(schema)
        # The API server itself owns apiVersion, kind and metadata (some CRDs, Istio's, omit them).
        props = strict.setdefault("properties", {})
        props["apiVersion"] = {"type": "string"}
        props["kind"] = {"type": "string"}
        props["metadata"] = {**OBJECT_META, "required": ["name"]}
        strict["required"] = sorted(set(strict.get("required", [])) | {"apiVersion", "kind", "metadata"})
        return jsonschema.Draft4Validator(strict)

    validators = {key: functools.lru_cache(maxsize=1)(functools.partial(compile_one, schema))
                  for key, schema in raw.items()}
    return CrdIndex(folder, validators, len(files))


def step_crd_schema(inputs: Inputs, crds: CrdIndex | Skipped) -> list[str]:
    if isinstance(crds, Skipped):
        raise crds
    problems: list[str] = []
    checked = 0
    unchecked: set[str] = set()
    for obj in inputs.objects:
        if obj.group not in CRD_GROUPS:
            continue
        factory = crds.validators.get((obj.group_version, obj.kind))
        if factory is None and (obj.group_version, obj.kind) in OPTIONAL_CRD_KINDS:
            unchecked.add(f"{obj.group_version} {obj.kind}")
            continue
        if factory is None and obj.group in OPTIONAL_CRD_GROUPS and \
                not any(gv.startswith(obj.group + "/") for gv, _ in crds.validators):
            unchecked.add(f"{obj.group_version} {obj.kind}")
            continue
        if factory is None:
            problems.append(f"{obj.where()}: {obj.group_version} {obj.kind} is served by none of the CRDs "
                            f"in {crds.folder}")
            continue
        checked += 1
        problems.extend(error_lines(obj, factory()))
    print(f"   {checked} custom resources against {len(crds.validators)} CRD versions from {crds.folder}"
          f"{' and ' + str(pending_folder(crds.folder)) if pending_folder(crds.folder).is_dir() else ''}"
          " (unknown fields rejected; CEL x-kubernetes-validations are not evaluated)")
    for kind in sorted(unchecked):
        print(f"   note: {kind} NOT schema-checked: its CRD is not in {crds.folder} nor {pending_folder(crds.folder)} "
              "(cargo xtask fetch-crds DIR fetches every pinned CRD)")
    return problems


# --- Prometheus


def prometheus_rule_objects(inputs: Inputs) -> list[Obj]:
    """PrometheusRules from their own files (rendered copies are the same objects)."""
    return [o for o in inputs.objects
            if o.kind == "PrometheusRule" and o.group == "monitoring.coreos.com" and not o.source.startswith("render:")]


def analysis_template_objects(inputs: Inputs) -> list[Obj]:
    return [o for o in inputs.objects
            if o.kind in ("AnalysisTemplate", "ClusterAnalysisTemplate") and not o.source.startswith("render:")]


def analysis_records(obj: Obj) -> list[tuple[str, str]]:
    """(record name, PromQL) per Prometheus metric of an AnalysisTemplate: analysis:<template>:<metric>
    ('-' as '_'), each {{args.NAME}} replaced by NAME, so promtool tests can feed and check it."""
    records = []
    for metric in (obj.doc.get("spec") or {}).get("metrics") or []:
        query = ((metric.get("provider") or {}).get("prometheus") or {}).get("query")
        if query:
            name = f"analysis:{obj.name}:{metric.get('name')}".replace("-", "_")
            records.append((name, ARGO_ARG_NAMES.sub(lambda m: m.group(1), query)))
    return records


def extracted_rule_files(inputs: Inputs, workdir: Path) -> dict[str, list[Path]]:
    """Write each PrometheusRule's spec as a plain Prometheus rule file, and each AnalysisTemplate's
    queries as recording rules (analysis_records); key: the object's source file."""
    out: dict[str, list[Path]] = {}
    for index, obj in enumerate(prometheus_rule_objects(inputs)):
        target = workdir / f"{index:02d}-{obj.name}.rules.yaml"
        target.write_text(yaml.safe_dump(obj.doc.get("spec") or {}, sort_keys=False))
        out.setdefault(str((ROOT / obj.source).resolve()), []).append(target)
    for index, obj in enumerate(analysis_template_objects(inputs)):
        records = analysis_records(obj)
        if not records:
            continue
        target = workdir / f"analysis-{index:02d}-{obj.name}.rules.yaml"
        group = {"name": f"analysis-{obj.name}", "rules": [{"record": r, "expr": e} for r, e in records]}
        target.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
        out.setdefault(str((ROOT / obj.source).resolve()), []).append(target)
    return out


def step_promtool_rules(inputs: Inputs, workdir: Path) -> list[str]:
    files = [p for paths in extracted_rule_files(inputs, workdir).values() for p in paths]
    if not files:
        return []
    proc = run(["promtool", "check", "rules", *map(str, files)])
    if proc.returncode == 0:
        print(f"   {len(files)} rule file(s) (PrometheusRules, AnalysisTemplate queries) parsed by promtool")
        return []
    sources = {str(p): src for src, paths in extracted_rule_files(inputs, workdir).items() for p in paths}
    lines = []
    for line in tool_output(proc):
        for tmp_path, source in sources.items():
            line = line.replace(tmp_path, rel(source) + " (spec)")
        lines.append(line)
    return [l for l in lines if not l.startswith("Checking ") and l.strip() != "FAILED:"] or lines


def alert_names(inputs: Inputs) -> dict[str, str]:
    names = {}
    for obj in prometheus_rule_objects(inputs):
        for group in (obj.doc.get("spec") or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                if "alert" in rule:
                    names[rule["alert"]] = obj.source
    return names


def step_promtool_tests(inputs: Inputs, workdir: Path) -> list[str]:
    extracted = extracted_rule_files(inputs, workdir)
    problems: list[str] = []
    tested: set[str] = set()
    tested_exprs: list[str] = []
    runs: list[tuple[Path, Path]] = []
    for index, test_file in enumerate(inputs.rule_tests):
        doc = load_docs(test_file)[0]
        rule_files = []
        for entry in doc.get("rule_files") or []:
            target = str((test_file.parent / entry).resolve())
            if target in extracted:
                rule_files.extend(str(p) for p in extracted[target])
            else:
                rule_files.append(target)
        doc["rule_files"] = rule_files
        for test in doc.get("tests") or []:
            for case in test.get("alert_rule_test") or []:
                tested.add(case.get("alertname", ""))
            for case in test.get("promql_expr_test") or []:
                tested_exprs.append(str(case.get("expr", "")))
        copy_path = workdir / f"test-{index:02d}-{test_file.name}"
        copy_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        runs.append((test_file, copy_path))
    # One promtool per test file, two at a time (the SLO tests replay hours of samples).
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda r: (r[0], run(["promtool", "test", "rules", str(r[1])], cwd=r[0].parent)), runs))
    for test_file, proc in outcomes:
        if proc.returncode != 0:
            problems.append(f"{rel(test_file)}: promtool test rules failed:")
            problems.extend("  " + line for line in tool_output(proc))
    for alert, source in sorted(alert_names(inputs).items()):
        if alert not in tested:
            problems.append(f"{source}: alert {alert} has no promtool unit test (alert_rule_test)")
    for obj in analysis_template_objects(inputs):
        for record, _ in analysis_records(obj):
            if not any(re.search(rf"\b{re.escape(record)}\b", expr) for expr in tested_exprs):
                problems.append(f"{obj.where()}: query {record} has no promtool unit test (promql_expr_test)")
    if not problems:
        print(f"   {len(inputs.rule_tests)} test file(s), {len(tested)} alert(s) covered")
    return problems


def step_alertmanager(inputs: Inputs, workdir: Path) -> list[str]:
    configs = [o for o in inputs.objects if o.kind == "AlertmanagerConfig" and not o.source.startswith("render:")]
    if not configs and not inputs.route_tests:
        return []
    for tool in ("amtool", "prometheus-alertmanager"):
        if shutil.which(tool) is None:
            return [f"{tool} not found: install Debian's prometheus-alertmanager (cargo xtask validate-manifests does as root)"]
    problems: list[str] = []
    summaries = []
    tested = set()
    for path in inputs.route_tests:
        doc = load_docs(path)[0]
        target = str((path.parent / doc["alertmanager_config"]).resolve())
        amconfig = next((o for o in configs if str((ROOT / o.source).resolve()) == target), None)
        if amconfig is None:
            problems.append(f"{rel(path)}: alertmanager_config {doc['alertmanager_config']} holds no AlertmanagerConfig")
            continue
        tested.add(id(amconfig))
        sub = workdir / f"routes-{len(summaries)}"
        sub.mkdir()
        found, summary = alert_routing.check_all(amconfig.doc, amconfig.where(),
                                                 alert_routing.load_route_tests(path, doc, rel(path)),
                                                 alert_names(inputs), inputs.rule_tests, sub)
        problems += found
        summaries.append(summary)
    for obj in configs:
        if id(obj) not in tested:
            problems.append(f"{obj.where()}: no route tests (a YAML file with alertmanager_config: naming it)")
    if not problems:
        for summary in summaries:
            print(f"   {summary}")
    return problems


GRAFANA_INTERVALS = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}")
GRAFANA_VARS = re.compile(r"\$\{[^}]+\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]+\]\]")
ARGO_ARGS = re.compile(r"\{\{\s*args\.[^}]+\}\}")
ARGO_ARG_NAMES = re.compile(r"\{\{\s*args\.([^}\s]+)\s*\}\}")


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(where, PromQL) for every Prometheus target in a Grafana dashboard, with variables filled in."""
    dashboard = json.loads(path.read_text())
    queries: list[tuple[str, str]] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels") or [])
            for target in panel.get("targets") or []:
                if "expr" in target:
                    where = f"panel {panel.get('id')} '{panel.get('title', '')}' ref {target.get('refId')}"
                    queries.append((where, target["expr"]))

    walk(dashboard.get("panels") or [])
    for var in (dashboard.get("templating") or {}).get("list") or []:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and isinstance(query, str):
            match = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query, re.S)
            queries.append((f"variable {var.get('name')}", match.group(1) if match else query))
    return [(where, fill_grafana_vars(expr)) for where, expr in queries]


def fill_grafana_vars(expr: str) -> str:
    expr = GRAFANA_INTERVALS.sub("5m", expr)
    return GRAFANA_VARS.sub("grafana_var", expr)


def analysis_queries(inputs: Inputs) -> list[tuple[str, str]]:
    queries = []
    for obj in inputs.objects:
        if obj.kind not in ("AnalysisTemplate", "ClusterAnalysisTemplate") or obj.source.startswith("render:"):
            continue
        for metric in (obj.doc.get("spec") or {}).get("metrics") or []:
            query = ((metric.get("provider") or {}).get("prometheus") or {}).get("query")
            if query:
                queries.append((f"{obj.where()} metric {metric.get('name')}", ARGO_ARGS.sub("argo_arg", query)))
    return queries


def all_queries(inputs: Inputs) -> list[tuple[str, str]]:
    queries: list[tuple[str, str]] = []
    for path in inputs.dashboards:
        try:
            queries.extend((f"{rel(path)}: {where}", expr) for where, expr in dashboard_queries(path))
        except json.JSONDecodeError as err:
            queries.append((f"{rel(path)}: invalid JSON: {err}", "invalid_json{"))
    return queries + analysis_queries(inputs)


def step_promql_queries(inputs: Inputs, workdir: Path) -> list[str]:
    queries = all_queries(inputs)
    if not queries:
        return []
    problems = []
    # One rule file per query: promtool then names the failing query unambiguously.
    files = []
    for index, (where, expr) in enumerate(queries):
        path = workdir / f"query-{index:03d}.rules.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "query:check", "expr": expr}]}]}))
        files.append((where, path))
    proc = run(["promtool", "check", "rules", *(str(p) for _, p in files)])
    if proc.returncode == 0:
        print(f"   {len(queries)} dashboard/analysis queries parsed by promtool")
        return []
    # promtool names the temporary file of each failing query: map it back to the panel/metric.
    for where, path in files:
        for line in tool_output(proc):
            if line.startswith(f"{path}:"):
                detail = line.split("could not parse expression:", 1)[-1].strip()
                problems.append(f"{where}: PromQL does not parse: {detail}")
    return problems or tool_output(proc)


APP_METRIC_PREFIXES = ("grpc_server_", "user_cache_", "user_outbox_", "user_worker_", "db_pool_", "db_query_",
                       "gateway_", "meshgate_", "jetstream_", "gnatsd_")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def contract_metrics() -> set[str]:
    text = METRICS_CONTRACT.read_text() if METRICS_CONTRACT.exists() else ""
    return set(re.findall(r"^\|\s*`([a-z_:][a-z0-9_:]*)`", text, re.M))


def step_metrics_contract(inputs: Inputs, contract: set[str] | None = None) -> list[str]:
    contract = contract_metrics() if contract is None else contract
    if not contract:
        return [f"{rel(METRICS_CONTRACT)}: no metric table found (rows like | `metric_name` | ...)"]
    exprs = list(all_queries(inputs))
    for obj in prometheus_rule_objects(inputs):
        for group in (obj.doc.get("spec") or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                exprs.append((f"{obj.source}: rule {rule.get('alert') or rule.get('record')}", str(rule.get("expr", ""))))
    problems = []
    for where, expr in exprs:
        for name in sorted(set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", expr))):
            if not name.startswith(APP_METRIC_PREFIXES):
                continue
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s) and name[: -len(s)] in contract), name)
            if base not in contract:
                problems.append(f"{where}: metric {name} is not in {rel(METRICS_CONTRACT)}")
    return problems


# --- images


def step_hadolint(inputs: Inputs) -> list[str]:
    if not inputs.dockerfiles:
        return ["no Dockerfile found under deploy/images"]
    proc = run(["hadolint", "--no-color", "--config", str(HADOLINT_CONFIG), *map(str, inputs.dockerfiles)])
    if proc.returncode == 0:
        print(f"   {len(inputs.dockerfiles)} Dockerfile(s)")
        return []
    return [rel_line(l) for l in tool_output(proc)]


MINIMAL_BASES = re.compile(r"^(gcr\.io/distroless/|cgr\.dev/chainguard/|scratch$)")


def final_stage(dockerfile: Path) -> tuple[str, list[str]]:
    """(FROM image, instructions) of the last stage, line continuations joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    image, stage = "", []
    args: dict[str, str] = {}
    for line in lines:
        word = line.split()[0].upper()
        if word == "ARG" and not image:
            name, _, default = line.split(None, 1)[1].partition("=")
            args[name] = default.strip('"')
        if word == "FROM":
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            image = re.sub(r"\$\{?([A-Za-z_]+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            stage = []
        stage.append(line)
    return image, stage


def step_image_policy(inputs: Inputs) -> list[str]:
    problems = []
    for path in inputs.dockerfiles:
        image, stage = final_stage(path)
        where = rel(path)
        if not MINIMAL_BASES.match(image):
            problems.append(f"{where}: final stage FROM {image!r}: use distroless, Chainguard or scratch (no shell)")
        if "debug" in image:
            problems.append(f"{where}: final stage FROM {image!r}: debug images ship a shell")
        if image != "scratch":
            users = [l.split(None, 1)[1] for l in stage if l.upper().startswith("USER ")]
            if not users or users[-1].split(":")[0] in ("0", "root"):
                problems.append(f"{where}: final stage must end with a non-root USER (e.g. 65532:65532)")
        labels = " ".join(l for l in stage if l.upper().startswith("LABEL "))
        for label in ("org.opencontainers.image.source", "org.opencontainers.image.revision",
                      "org.opencontainers.image.version", "org.opencontainers.image.licenses"):
            if label not in labels:
                problems.append(f"{where}: final stage lacks OCI label {label}")
        if any(l.upper().startswith(("RUN ", "SHELL ")) for l in stage[1:]):
            problems.append(f"{where}: RUN/SHELL in the final stage needs a shell the image must not have")
    return problems


# --- workflows


def step_workflows(inputs: Inputs) -> list[str]:
    if not inputs.workflows:
        return ["no workflow found under .github/workflows"]
    proc = run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, inputs.workflows)])
    if proc.returncode == 0:
        print(f"   {len(inputs.workflows)} workflow(s) against the vendored GitHub workflow schema")
        return []
    return [rel_line(l) for l in tool_output(proc)]


# --- policy


def step_trivy(inputs: Inputs, workdir: Path) -> list[str]:
    # The scan tree mirrors repository paths, so findings (and allow-list `paths`) name real files.
    scan = workdir / "trivy"
    scan.mkdir()
    count = 0
    for kdir, text in inputs.rendered.items():
        target = scan / "rendered" / (kdir + ".yaml")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        count += 1
    # Files no kustomization renders too: applied by hand (Argo CD bootstrap, Secret templates)
    # or by other tools; files a kustomization renders are scanned in their rendered form.
    standalone = {o.source for o in inputs.objects
                  if not o.source.startswith("render:") and (ROOT / o.source).resolve() not in inputs.resource_files}
    for source in sorted(standalone) + [rel(p) for p in inputs.dockerfiles]:
        target = scan / source
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, target)
        count += 1
    if count == 0:
        return []
    cmd = ["trivy", "config", "--skip-check-update", "--quiet", "--exit-code", "1",
           "--severity", "LOW,MEDIUM,HIGH,CRITICAL", "--format", "json", "--output", str(workdir / "trivy.json")]
    if TRIVY_IGNORE.exists():
        cmd += ["--ignorefile", str(TRIVY_IGNORE)]
    proc = run([*cmd, str(scan)], timeout=600)
    report_path = workdir / "trivy.json"
    if not report_path.exists():
        return ["trivy did not run: " + " ".join(tool_output(proc))[:800]]
    report = json.loads(report_path.read_text())
    problems = []
    for result in report.get("Results") or []:
        for finding in result.get("Misconfigurations") or []:
            if finding.get("Status") != "FAIL":
                continue
            target = result.get("Target", "")
            problems.append(f"{target}: {finding.get('ID')} ({finding.get('Severity')}) {finding.get('Title')}: "
                            f"{finding.get('Message')}")
    if proc.returncode != 0 and not problems:
        problems.append("trivy failed: " + " ".join(tool_output(proc))[:800])
    if not problems:
        print(f"   {count} targets scanned; accepted findings are justified in {rel(TRIVY_IGNORE)}")
    return problems


SECRET_TEMPLATES = ROOT / "deploy" / "kustomize" / "secrets"
# Argo CD source paths delivered by another component's branch; absent here, checked once merged.
PATHS_OWNED_ELSEWHERE = {"mesh/wasm-plugins": "istio-filters"}


def environment_sets(inputs: Inputs) -> tuple[list[manifest_refs.ObjectSet], list[str]]:
    """One object set per Argo CD app-of-apps overlay: the union of what its Applications deploy."""
    problems: list[str] = []
    notes: set[str] = set()
    sets = []
    by_source: dict[str, list[dict]] = {}
    for obj in inputs.objects:
        by_source.setdefault(obj.source, []).append(obj.doc)
    for source, docs in sorted(by_source.items()):
        apps = [d for d in docs if d.get("kind") == "Application" and source.startswith("render:")]
        if not apps:
            continue
        objects: list[dict] = []
        per_app: list[tuple[dict, list[dict]]] = []
        problems.extend(f"[{source.removeprefix('render:')}] {p}" for p in manifest_refs.check_argocd_applications(
            apps, [d for d in docs if d.get("kind") == "AppProject"]))
        for app in apps:
            path = ((app.get("spec") or {}).get("source") or {}).get("path", "")
            where = f"{source}: Application/{app['metadata']['name']}"
            if f"render:{path}" in by_source:
                per_app.append((app, by_source[f"render:{path}"]))
            elif (ROOT / path).is_dir():
                # Argo CD reads a plain directory without its subdirectories unless told to recurse.
                recurse = (((app.get("spec") or {}).get("source") or {}).get("directory") or {}).get("recurse")

                def in_app(src: str) -> bool:
                    inside = src.removeprefix(path + "/")
                    return src.startswith(path + "/") and (recurse is True or "/" not in inside)
                per_app.append((app, [d for src, ds in by_source.items() if in_app(src) for d in ds]))
            elif path in PATHS_OWNED_ELSEWHERE:
                notes.add(f"   note: {path} (Application/{app['metadata']['name']}) is delivered by "
                          f"{PATHS_OWNED_ELSEWHERE[path]}, not in this checkout")
            else:
                problems.append(f"{where}: source path {path!r} does not exist")
        for _, app_objects in per_app:
            objects.extend(app_objects)
        problems.extend(f"[{source.removeprefix('render:')}] {p}" for p in manifest_refs.check_sync_waves(per_app))
        sets.append(manifest_refs.ObjectSet(source.removeprefix("render:"), objects, apps=per_app))
    for note in sorted(notes):
        print(note)
    # Overlays are the environments; their bases are covered through them.
    if any("/overlays/" in s.name for s in sets):
        bases = {s.name for s in sets if "/overlays/" not in s.name}
        sets = [s for s in sets if "/overlays/" in s.name]
        problems = [p for p in problems if not any(p.startswith(f"[{b}]") or p.startswith(f"render:{b}:") for b in bases)]
    if not sets:  # no app of apps (self-test folders): the folder is one set
        rendered = [o.doc for o in inputs.objects if o.source.startswith("render:")]
        objects = rendered or [o.doc for o in inputs.objects]
        # One folder is one Application, synced as a whole.
        sets.append(manifest_refs.ObjectSet("all", objects, apps=[({"metadata": {"name": "(folder)"}}, objects)]))
    return sets, problems


def step_references(inputs: Inputs) -> list[str]:
    external = {o.name for o in inputs.objects if o.kind == "Secret" and (ROOT / o.source).parent == SECRET_TEMPLATES}
    sets, problems = environment_sets(inputs)
    for objs in sets:
        problems.extend(manifest_refs.check_set(objs, external))
    if not problems:
        print(f"   {len(sets)} set(s): " + ", ".join(f"{s.name} ({len(s.objects)} objects)" for s in sets))
    return problems


# --- order, policies and supply chain


def object_namer(inputs: Inputs) -> Callable[[dict], str]:
    """Names an object as `file: Kind/name`, the file being where it is written (rendered objects
    are traced back to the source file of the same kind and name)."""
    origins: dict[tuple[str, str], str] = {}
    for obj in inputs.objects:
        if not obj.source.startswith("render:"):
            origins.setdefault((obj.kind, obj.name), obj.source)

    def where(doc: dict) -> str:
        kind, name = str(doc.get("kind")), str((doc.get("metadata") or {}).get("name"))
        source = origins.get((kind, name))
        return f"{source}: {kind}/{name}" if source else f"{kind}/{name}"
    return where


def step_argocd_order(inputs: Inputs) -> list[str]:
    sets, _ = environment_sets(inputs)
    where = object_namer(inputs)
    problems = [f"[{objs.name}] {p}" for objs in sets for p in argocd_order.check_sync_order(objs.apps, where)]
    if not problems:
        print(f"   {sum(len(objs.apps) for objs in sets)} Application(s) in {len(sets)} set(s): every pod's "
              "ServiceAccount, ConfigMaps, Secrets and network/authorization policies come first")
    return problems


def app_of_apps_objects(inputs: Inputs) -> list[dict]:
    """The Applications of every rendered app of apps (their own pins live there)."""
    return [o.doc for o in inputs.objects if o.kind == "Application" and o.source.startswith("render:")]


def step_workload_policy(inputs: Inputs) -> list[str]:
    sets, _ = environment_sets(inputs)
    where = object_namer(inputs)
    problems = [f"[{objs.name}] {p}" for objs in sets for p in workload_policy.check_all(objs, where)]
    apps = manifest_refs.ObjectSet("applications", app_of_apps_objects(inputs))
    problems += list(dict.fromkeys(workload_policy.check_pinned_revisions(apps, where)))
    if not problems:
        print(f"   {len(sets)} set(s): probes, drain, native sidecars, secrets, connection budget, WasmPlugins, "
              "canaries, monitors, prune protection, backups, release pins")
    return problems


def step_operations(inputs: Inputs) -> list[str]:
    sets, _ = environment_sets(inputs)
    where = object_namer(inputs)
    problems = [f"[{objs.name}] {p}" for objs in sets for p in operations_policy.check_all(objs, where)]
    # Kustomizations no Application syncs (applied by hand: the users-db restore) hold recovery
    # Clusters too; they read the ObjectStores the environments deploy.
    deployed = {id(doc) for objs in sets for doc in objs.objects}
    manual = [o.doc for o in inputs.objects if o.source.startswith("render:") and id(o.doc) not in deployed
              and o.kind in ("Cluster", "ObjectStore")]
    if manual:
        stores = [o.doc for o in inputs.objects if o.kind == "ObjectStore"]
        extra = manifest_refs.ObjectSet("by hand", manual + stores)
        problems += list(dict.fromkeys(f"[by hand] {p}" for p in operations_policy.check_recovery(extra, where)))
    if not problems:
        print(f"   {len(sets)} set(s): ingress certificates and issuers, probe modules and probers, log shipping")
    return problems


def step_nats_config(inputs: Inputs, workdir: Path) -> list[str]:
    sets, _ = environment_sets(inputs)
    where = object_namer(inputs)
    found = [(objs, server) for objs in sets for server in nats_config.servers(objs, where)]
    if not found:
        return []
    program = shutil.which(nats_config.PROGRAM)
    if program is None:
        return ["nats-server not found: install Debian's nats-server (scripts/validate-manifests does as root)"]
    problems: list[str] = []
    tested: set[tuple[str, str]] = set()
    for objs in sets:
        problems += [f"[{objs.name}] {p}" for p in nats_config.check_stream_replicas(objs, where)]
    for objs, server in found:
        problems += [f"[{objs.name}] {p}" for p in nats_config.check_server(server)]
        key = (server.config or "", repr(sorted(server.env.items())))
        if key not in tested:  # the same file in two environments is run once
            tested.add(key)
            problems += [f"[{objs.name}] {p}" for p in nats_config.test_config(server, program, workdir)]
    if not problems:
        version = run([program, "--version"]).stdout.strip()
        print(f"   {len(found)} nats-server container(s) in {len(sets)} set(s), {len(tested)} distinct config(s) "
              f"accepted by {version}; JetStream on persistent volumes, routes = the StatefulSet's pods")
    return problems


def workflow_documents(inputs: Inputs) -> list[tuple[str, dict]]:
    """The workflows given, or the repository's when the inputs have none (a self-test folder is
    judged against what this repository builds)."""
    paths = inputs.workflows or sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
    return [(rel(p), load_docs(p)[0]) for p in paths]


def step_supply_chain(inputs: Inputs) -> list[str]:
    workflows = workflow_documents(inputs)
    built = supply_chain.built_images(workflows)
    problems = list(supply_chain.check_workflow_policy([w for w in workflows if inputs.workflows]))
    where = object_namer(inputs)
    seen: set[str] = set()
    for obj in inputs.objects:
        for problem in supply_chain.check_images_built([obj.doc], built, where):
            if problem not in seen:
                seen.add(problem)
                problems.append(problem)
    if not problems:
        print(f"   {len(workflows)} workflow(s): actions pinned by commit, pushed images scanned and signed; "
              f"every image and WasmPlugin url built ({', '.join(sorted(built.repositories))})")
    return problems


METRICS_PORTS = {"9090", "9091", "9187", "8000", "15090", "15020", "7777"}  # scraped/probed by non-mesh callers


def step_mesh_invariants(inputs: Inputs) -> list[str]:
    """The security invariants of mesh/: checked on the objects, not only on their schema."""
    objs = [o for o in inputs.objects if not o.source.startswith("render:")]
    problems = []
    peer = [o for o in objs if o.kind == "PeerAuthentication"]
    authz = [o for o in objs if o.kind == "AuthorizationPolicy"]
    if peer and not any(not (o.doc.get("spec") or {}).get("selector")
                        and ((o.doc.get("spec") or {}).get("mtls") or {}).get("mode") == "STRICT" for o in peer):
        problems.append("no namespace-wide PeerAuthentication with mtls.mode STRICT")
    for o in peer:
        spec = o.doc.get("spec") or {}
        mode = (spec.get("mtls") or {}).get("mode")
        if mode in ("PERMISSIVE", "DISABLE"):
            problems.append(f"{o.where()}: mtls.mode {mode}: only STRICT (or UNSET, inheriting STRICT) is allowed")
        for port, setting in (spec.get("portLevelMtls") or {}).items():
            if setting.get("mode") != "STRICT" and str(port) not in METRICS_PORTS:
                problems.append(f"{o.where()}: port {port} is not STRICT and is not a metrics/health port")
    if authz and not any((o.doc.get("spec") or {}) == {} for o in authz):
        problems.append("no allow-nothing AuthorizationPolicy (spec: {}): authorization is not deny-by-default")
    for o in authz:
        spec = o.doc.get("spec") or {}
        if spec == {} or spec.get("action", "ALLOW") != "ALLOW":
            continue
        if not spec.get("selector"):
            problems.append(f"{o.where()}: an ALLOW policy must select its workload")
        for index, rule in enumerate(spec.get("rules") or []):
            ports = {str(p) for to in rule.get("to") or [] for p in (to.get("operation") or {}).get("ports") or []}
            principals = [p for src in rule.get("from") or [] for p in (src.get("source") or {}).get("principals") or []]
            if ports and ports <= METRICS_PORTS:
                continue
            if not principals:
                problems.append(f"{o.where()}: rule {index} allows {sorted(ports) or 'every port'} without "
                                "from.source.principals (SPIFFE identities)")
            elif any(p == "*" or "*" in p.split("/sa/")[-1] for p in principals):
                problems.append(f"{o.where()}: rule {index} uses a wildcard principal")
    problems += jwt_policy_problems(objs)
    problems += api_version_problems(objs, served_methods(ROOT / "proto" / "user" / "v2" / "user.proto"))
    return problems


API_VERSIONS = ("user.UserService", "user.v2.UserService")
# A policy that, by design, speaks for one API version only (the cut-over's legacy callers know v1).
ONE_VERSION_ANNOTATION = "meshgate.io/api-versions"


def served_methods(proto: Path) -> set[str]:
    """The rpc names of a service's .proto."""
    return set(re.findall(r"^\s*rpc\s+(\w+)\s*\(", proto.read_text(), re.MULTILINE))


def api_version_problems(objs: list[Obj], v2_methods: set[str]) -> list[str]:
    """A method path (or `/<service>/*`) in an AuthorizationPolicy's operation `paths` must name
    both versions when v2 serves the method: a write DENY or a caller's ALLOW that lists only
    `/user.UserService/CreateUser` leaves `/user.v2.UserService/CreateUser` open (or closed)."""
    problems = []
    v1, v2 = API_VERSIONS
    for o in objs:
        if o.kind != "AuthorizationPolicy":
            continue
        if ((o.doc.get("metadata") or {}).get("annotations") or {}).get(ONE_VERSION_ANNOTATION):
            continue
        for index, rule in enumerate((o.doc.get("spec") or {}).get("rules") or []):
            for to in rule.get("to") or []:
                paths = set((to.get("operation") or {}).get("paths") or [])
                for path in sorted(paths):
                    for have, want in ((v1, v2), (v2, v1)):
                        method = path.removeprefix(f"/{have}/")
                        if method == path or (method != "*" and method not in v2_methods):
                            continue
                        if f"/{want}/{method}" not in paths:
                            problems.append(f"{o.where()}: rule {index} lists {path} but not /{want}/{method} "
                                            f"(both API versions serve it; annotate {ONE_VERSION_ANNOTATION} "
                                            "if the policy is for one version by design)")
    return problems


def uses_request_auth(rule: dict) -> bool:
    """A rule that reads the end user's token: request principals or request.auth.* conditions."""
    sources = [src.get("source") or {} for src in rule.get("from") or []]
    return any(s.get("requestPrincipals") or s.get("notRequestPrincipals") for s in sources) or \
        any(str(w.get("key", "")).startswith("request.auth.") for w in rule.get("when") or [])


def jwt_policy_problems(objs: list[Obj]) -> list[str]:
    """An AuthorizationPolicy on token claims needs a RequestAuthentication for the same workloads
    (without one no request has a principal: a DENY would refuse every call, an ALLOW none), and a
    RequestAuthentication needs an issuer with its keys."""
    problems = []
    authn = [o for o in objs if o.kind == "RequestAuthentication"]
    selectors = [((o.doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {} for o in authn]
    for o in authn:
        for index, rule in enumerate((o.doc.get("spec") or {}).get("jwtRules") or []):
            if not rule.get("issuer") or not (rule.get("jwksUri") or rule.get("jwks")):
                problems.append(f"{o.where()}: jwtRules[{index}] needs an issuer and its keys (jwksUri or jwks)")
    for o in objs:
        if o.kind != "AuthorizationPolicy":
            continue
        spec = o.doc.get("spec") or {}
        if not any(uses_request_auth(rule) for rule in spec.get("rules") or []):
            continue
        wanted = (spec.get("selector") or {}).get("matchLabels") or {}
        if not any(all(wanted.get(k) == v for k, v in sel.items()) for sel in selectors):
            problems.append(f"{o.where()}: its rules read the request's JWT (requestPrincipals / request.auth), "
                            f"but no RequestAuthentication selects {wanted or 'the namespace'}: no request would "
                            "carry a principal")
    return problems


# --------------------------------------------------------------------------------------------
# Driver


@dataclass
class StepResult:
    name: str
    status: str  # ok | FAILED | skipped
    problems: list[str]
    seconds: float


def run_step(name: str, fn: Callable[[], list[str]]) -> StepResult:
    print(f"-- {name}", flush=True)
    start = time.monotonic()
    try:
        problems = fn()
        status = "FAILED" if problems else "ok"
    except Skipped as why:
        problems, status = [str(why)], "skipped"
    except Exception as err:  # a crashed validator is a failure, never a pass
        problems, status = [f"validator crashed: {type(err).__name__}: {err}"], "FAILED"
    elapsed = time.monotonic() - start
    for line in problems[:60]:
        print(f"   {'SKIPPED: ' if status == 'skipped' else ''}{line}")
    if len(problems) > 60:
        print(f"   … and {len(problems) - 60} more")
    return StepResult(name, status, problems, elapsed)


def validate(inputs: Inputs, crds: CrdIndex | Skipped, only: set[str] | None = None) -> list[StepResult]:
    results = []
    with tempfile.TemporaryDirectory(prefix="meshgate-validate-") as tmp:
        work = Path(tmp)

        def sub(name: str) -> Path:
            path = work / name
            path.mkdir()
            return path

        steps: list[tuple[str, Callable[[], list[str]]]] = [
            ("yamllint", lambda: step_yamllint(inputs)),
            ("yaml-kinds", lambda: step_yaml_kinds(inputs)),
            ("kustomize", lambda: step_kustomize(inputs)),
            ("core-schema", lambda: step_core_schema(inputs)),
            ("crd-schema", lambda: step_crd_schema(inputs, crds)),
            ("promtool-rules", lambda: step_promtool_rules(inputs, sub("rules"))),
            ("promtool-tests", lambda: step_promtool_tests(inputs, sub("tests"))),
            ("alertmanager", lambda: step_alertmanager(inputs, sub("alertmanager"))),
            ("promql-queries", lambda: step_promql_queries(inputs, sub("queries"))),
            ("metrics-contract", lambda: step_metrics_contract(inputs)),
            ("hadolint", lambda: step_hadolint(inputs)),
            ("image-policy", lambda: step_image_policy(inputs)),
            ("workflows", lambda: step_workflows(inputs)),
            ("trivy", lambda: step_trivy(inputs, sub("policy"))),
            ("mesh-invariants", lambda: step_mesh_invariants(inputs)),
            ("references", lambda: step_references(inputs)),
            ("argocd-order", lambda: step_argocd_order(inputs)),
            ("workload-policy", lambda: step_workload_policy(inputs)),
            ("operations", lambda: step_operations(inputs)),
            ("nats-config", lambda: step_nats_config(inputs, sub("nats"))),
            ("supply-chain", lambda: step_supply_chain(inputs)),
        ]
        for name, fn in steps:
            if only is None or name in only or name == "kustomize":
                results.append(run_step(name, fn))
    return results


def main_validate(crds: CrdIndex | Skipped) -> int:
    roots = [ROOT / "mesh", ROOT / "deploy", ROOT / ".github" / "workflows"]
    inputs, problems = collect(roots, exclude=[BAD_DIR])
    print(f"== validating {len(inputs.yaml_files)} YAML files, {len(inputs.kustomize_dirs)} kustomizations, "
          f"{len(inputs.dashboards)} dashboards, {len(inputs.dockerfiles)} Dockerfiles, "
          f"{len(inputs.workflows)} workflows")
    results = []
    if problems:
        results.append(StepResult("collect", "FAILED", problems, 0))
        for line in problems:
            print(f"   {line}")
    results += validate(inputs, crds)
    print("\n== summary")
    for r in results:
        print(f"   {r.status:7} {r.name:17} {r.seconds:5.1f}s  {len(r.problems) if r.status == 'FAILED' else ''}")
    failed = [r for r in results if r.status == "FAILED"]
    skipped = [r for r in results if r.status == "skipped"]
    print(f"manifests: {len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed"
          + (f", {len(skipped)} skipped" if skipped else ""))
    return 1 if failed else 0


# Each self-test: (step, bad input folder, expected substring in the problems). The folder must be
# rejected by that step: proof that the validator can fail, and fails for the seeded reason.
SELF_TESTS = [
    ("yamllint", "yamllint", "duplication of key"),
    ("yaml-kinds", "yaml-kinds", "is neither a Kubernetes object"),
    ("kustomize", "kustomize", "kustomize failed"),
    ("core-schema", "core-schema", "replica"),
    ("crd-schema", "crd-schema", "retryPolicy"),
    ("crd-schema", "crd-schema-type", "is not of type"),
    ("promtool-rules", "promtool-rules", "unclosed left parenthesis"),
    ("promtool-tests", "promtool-tests", "promtool test rules failed"),
    ("promtool-tests", "promtool-untested-alert", "has no promtool unit test"),
    ("alertmanager", "alert-routing", "QueueBacklog {alertname=QueueBacklog, severity=page, team=platform} should reach"),
    ("alertmanager", "alert-routing", "alert QueueStalled has no route test"),
    ("promql-queries", "promql-queries", "does not parse"),
    ("metrics-contract", "metrics-contract", "grpc_server_requests_totl"),
    ("hadolint", "hadolint", "DL3007"),
    ("image-policy", "image-policy", "non-root USER"),
    ("workflows", "workflows", "'runs-on' is a required property"),
    ("trivy", "trivy", "KSV-0017"),
    ("mesh-invariants", "mesh-invariants", "PERMISSIVE"),
    ("mesh-invariants", "mesh-authz", "without from.source.principals"),
    ("mesh-invariants", "mesh-jwt", "but no RequestAuthentication selects"),
    ("mesh-invariants", "mesh-jwt", "needs an issuer and its keys"),
    ("mesh-invariants", "mesh-jwt", "lists /user.UserService/CreateUser but not /user.v2.UserService/CreateUser"),
    ("references", "references", "has no http route named primary"),
    ("references", "references-selector", "matches no pod template"),
    ("argocd-order", "argocd-order", "uses ServiceAccount/user-service-migrate"),
    ("workload-policy", "probes", "livenessProbe asks gRPC health service ''"),
    ("workload-policy", "probes", "livenessProbe GET /readyz"),
    ("workload-policy", "drain", "terminationGracePeriodSeconds 30 < preStop 5 + drain 25"),
    ("workload-policy", "native-sidecar", "the Job never completes"),
    ("workload-policy", "secret-argv", "on its command line"),
    ("workload-policy", "secret-argv", "is a TCP connect"),
    ("workload-policy", "db-budget", "but the clients may open 200"),
    ("workload-policy", "wasm-match", "no match on mode SERVER"),
    ("workload-policy", "wasm-registry-egress", "cannot pull oci://"),
    ("workload-policy", "rate-limit-principal", "keys on the peer principal"),
    ("workload-policy", "canary-steps", "has no pods yet"),
    ("workload-policy", "analysis-empty", "can return an empty vector"),
    ("workload-policy", "monitor-label", "lacks the label"),
    ("workload-policy", "prune", "lacks Delete=false, Prune=false"),
    ("workload-policy", "barman-in-tree", "deprecated since CloudNativePG 1.26"),
    ("workload-policy", "prod-pin", "a prod Application tracks 'main'"),
    ("operations", "probe-module", "module 'http_2xx' is not in the blackbox exporter's config"),
    ("operations", "recovery-archive", "the archive it recovers from"),
    ("operations", "log-shipping", "without verified TLS"),
    ("operations", "log-shipping", "http_passwd is not ${VAR} of an env var from a Secret"),
    ("operations", "certificate-hand-made", "which no cert-manager Certificate in istio-system issues"),
    ("operations", "certificate-http01-redirect", "redirects port 80 to HTTPS"),
    ("operations", "certificate-http01-redirect", "do not cover host api.example.org"),
    ("nats-config", "nats-config", 'unknown field "max_payloads"'),
    ("nats-config", "nats-config", "is on no volume of the StatefulSet's volumeClaimTemplates"),
    ("nats-config", "nats-config", "the cluster routes miss nats-2"),
    ("nats-config", "nats-config", "NATS_STREAM_REPLICAS 5 but 3 NATS server(s) run here"),
    ("supply-chain", "wasm-image", "no workflow builds registry.example.com/meshgate/geo-block"),
    ("supply-chain", "wasm-image", "'ratelimit-latest' is none of them"),
    ("supply-chain", "workflow-pins", "pin the action by its full commit SHA"),
    ("supply-chain", "workflow-pins", "without signing them"),
]


def main_self_test(crds: CrdIndex | Skipped) -> int:
    print("== self-test: unit tests of the validator's own logic (scripts/lib/test_*.py)")
    unit = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "scripts" / "lib")], cwd=ROOT)
    print("\n".join("   " + l for l in tool_output(unit)[-15:]))
    print("== self-test: each validator must reject its seeded bad input (deploy/tests/bad/)")
    passed = failed = skipped = 0
    if unit.returncode != 0:
        failed += 1
    for step, folder, expected in SELF_TESTS:
        path = BAD_DIR / folder
        if not path.is_dir():
            print(f"FAIL {step}: fixture folder {rel(path)} is missing")
            failed += 1
            continue
        inputs, _ = collect([path], exclude=[])
        quiet = open(os.devnull, "w")
        saved, sys.stdout = sys.stdout, quiet
        try:
            results = validate(inputs, crds, only={step})
        finally:
            sys.stdout = saved
            quiet.close()
        result = next(r for r in results if r.name == step)
        text = "\n".join(result.problems)
        if result.status == "skipped":
            print(f"SKIP {step} ({rel(path)}): {result.problems[0]}")
            skipped += 1
        elif result.status == "FAILED" and expected.lower() in text.lower() and "validator crashed" not in text:
            reason = next(p for p in result.problems if expected.lower() in p.lower()) if expected else result.problems[0]
            print(f"ok   {step} rejects {rel(path)}: {reason.strip()[:150]}")
            passed += 1
        else:
            print(f"FAIL {step} did not reject {rel(path)} as expected ({expected!r}); got {result.status}: {text[:400]}")
            failed += 1
    print(f"self-test: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-test", action="store_true", help="only prove each validator rejects a bad input")
    parser.add_argument("--no-self-test", action="store_true", help="validate only")
    parser.add_argument("--crds-dir", default=os.environ.get("MESHGATE_CRDS_DIR", str(ROOT.parent / "shared" / "crds")),
                        help="folder of upstream CRD YAML (default: ../shared/crds from the repo root)")
    args = parser.parse_args()
    start = time.monotonic()
    try:
        crds: CrdIndex | Skipped = load_crd_index(Path(args.crds_dir).resolve())
    except Skipped as why:
        crds = why
        print(f"NOTE: {why}")
    status = 0
    if not args.self_test:
        status |= main_validate(crds)
    if not args.no_self_test:
        print()
        status |= main_self_test(crds)
    print(f"\nvalidate-manifests: {'OK' if status == 0 else 'FAILED'} in {time.monotonic() - start:.0f}s")
    return status


if __name__ == "__main__":
    sys.exit(main())
