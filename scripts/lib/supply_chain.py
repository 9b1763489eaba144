"""What the workflows build, and that the manifests run nothing else (step `supply-chain`).

  - every `uses:` of a workflow names its action by full commit SHA (a tag can be moved);
  - every job that pushes an image scans it (trivy) and signs it (`cosign sign`);
  - every image under a workflow's REGISTRY that a pod runs, and every WasmPlugin `oci://` url,
    is an image some workflow builds: the repository from the build-push step's `tags`
    (`${{ env.REGISTRY }}` and `${{ matrix.X }}` expanded over the job's matrix), and for Wasm
    modules (jobs with `matrix.module`) a tag `<module>-v<semver>` or `<module>-sha-<hex>`.
Pure functions over parsed workflow documents and objects: no I/O.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

PINNED_USES = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
MODULE_TAG = r"(v\d+\.\d+\.\d+|sha-[0-9a-f]{7,40})"
EXPRESSION = re.compile(r"\$\{\{\s*([\w.-]+)\s*\}\}")


@dataclass
class Built:
    """Image repositories the workflows push; for Wasm module repositories, the module names."""

    repositories: set[str] = field(default_factory=set)
    modules: dict[str, set[str]] = field(default_factory=dict)  # repository -> module names
    registries: set[str] = field(default_factory=set)


def steps(job: dict) -> list[dict]:
    return job.get("steps") or []


def expand(text: str, env: dict[str, str], matrix: dict[str, object]) -> str | None:
    """`${{ env.X }}` and `${{ matrix.X }}` filled in; None when another expression remains."""
    def sub(match: re.Match) -> str:
        scope, _, key = match.group(1).partition(".")
        if scope == "env" and key in env:
            return env[key]
        if scope == "matrix" and key in matrix:
            return str(matrix[key])
        return "\0"
    out = EXPRESSION.sub(sub, text)
    return None if "\0" in out else out


def matrix_combinations(job: dict) -> list[dict[str, object]]:
    matrix = ((job.get("strategy") or {}).get("matrix")) or {}
    axes = {k: v for k, v in matrix.items() if isinstance(v, list) and k not in ("include", "exclude")}
    if not axes:
        return [{}]
    keys = sorted(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def repository_of(reference: str) -> str:
    """registry/path/name of `registry/path/name:tag` (a registry port is before the last '/')."""
    slash = reference.rfind("/")
    colon = reference.find(":", slash + 1)
    return reference if colon < 0 else reference[:colon]


def is_push(step: dict) -> bool:
    uses = str(step.get("uses", ""))
    return uses.startswith("docker/build-push-action@") and str((step.get("with") or {}).get("push", "")).lower() == "true"


def built_images(workflows: list[tuple[str, dict]]) -> Built:
    built = Built()
    for _, doc in workflows:
        env = {k: str(v) for k, v in (doc.get("env") or {}).items()}
        if "REGISTRY" in env:
            built.registries.add(env["REGISTRY"])
        for job in (doc.get("jobs") or {}).values():
            job_env = {**env, **{k: str(v) for k, v in (job.get("env") or {}).items()}}
            combos = matrix_combinations(job)
            for step in steps(job):
                if not is_push(step):
                    continue
                for combo in combos:
                    for tag in filter(None, (t.strip() for t in re.split(r"[,\n]", str((step.get("with") or {}).get("tags", ""))))):
                        ref = expand(repository_of(tag), job_env, combo)
                        if ref is None:
                            continue
                        built.repositories.add(ref)
                        if "module" in combo:
                            built.modules.setdefault(ref, set()).add(str(combo["module"]))
    return built


def check_workflow_policy(workflows: list[tuple[str, dict]]) -> Iterable[str]:
    for path, doc in workflows:
        for job_name, job in (doc.get("jobs") or {}).items():
            for index, step in enumerate(steps(job)):
                uses = step.get("uses")
                if uses and not str(uses).startswith(("./", "docker://")) and not PINNED_USES.match(str(uses)):
                    yield (f"{path}: job {job_name} step {index} uses {uses}: pin the action by its full commit SHA "
                           "(a tag can be moved to other code)")
            if any(is_push(s) for s in steps(job)):
                runs = " ".join(str(s.get("run", "")) for s in steps(job))
                if "cosign sign" not in runs:
                    yield f"{path}: job {job_name} pushes images without signing them (cosign sign)"
                if not any(str(s.get("uses", "")).startswith("aquasecurity/trivy-action@") for s in steps(job)) \
                        and "trivy image" not in runs:
                    yield f"{path}: job {job_name} pushes images without scanning them (trivy)"


def check_images_built(objects: list[dict], built: Built, where: Callable[[dict], str]) -> Iterable[str]:
    for obj in objects:
        if obj.get("kind") == "WasmPlugin":
            url = str((obj.get("spec") or {}).get("url", ""))
            if not url.startswith("oci://"):
                continue
            ref = url.removeprefix("oci://")
            repo = repository_of(ref.split("@")[0])
            tag = ref[len(repo) + 1:] if ref.startswith(repo + ":") else "latest"
            if repo not in built.repositories:
                yield (f"{where(obj)}: url {url}: no workflow builds {repo} (built: "
                       f"{', '.join(sorted(built.repositories)) or 'nothing'})")
                continue
            modules = built.modules.get(repo)
            if modules and "@" not in ref and not any(re.fullmatch(f"{re.escape(m)}-{MODULE_TAG}", tag) for m in modules):
                yield (f"{where(obj)}: url {url}: the workflow tags {repo} as <module>-v<semver> or <module>-sha-<hex> "
                       f"for the modules {', '.join(sorted(modules))}; {tag!r} is none of them")
            continue
        template = pod_template(obj)
        if template is None:
            continue
        spec = template.get("spec") or {}
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            image = str(c.get("image", ""))
            repo = repository_of(image.split("@")[0])
            if any(repo.startswith(r + "/") for r in built.registries) and repo not in built.repositories:
                yield f"{where(obj)}: container {c.get('name')} runs {image}, which no workflow builds"


def pod_template(obj: dict) -> dict | None:
    spec = obj.get("spec") or {}
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "Rollout"):
        return spec.get("template")
    if obj.get("kind") == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
    return None
