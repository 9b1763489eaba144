"""Alert routing as the Alertmanager runs it (step `alertmanager` of validate-manifests).

The Prometheus Operator turns an AlertmanagerConfig into part of the Alertmanager's own config:
receivers renamed `<namespace>/<name>/<receiver>`, the top route given a `namespace="<ns>"`
matcher and `continue: true` and put before the base config's routes, every inhibit rule given
the same namespace matcher on both sides, Secret references replaced by the Secrets' values.
`operator_config` does that conversion (for the fields meshgate uses; any other field is an
error, never silently dropped) on top of kube-prometheus-stack's base config (receiver "null"),
and the step then runs the real tools on the result:

  - `amtool check-config`;
  - `amtool config routes test --verify.receivers` for every alert the PrometheusRules define,
    with the labels the alert really carries: the `exp_labels` of its promtool tests (so an alert
    whose expression drops `namespace` is caught), expected receivers from the route tests file;
  - a real Alertmanager (Debian's prometheus-alertmanager, on a free loopback port, notifiers
    pointed at a closed local port) that gets the causes and symptoms of every inhibition case and
    the maintenance silence of the runbook, and must report exactly the expected alerts as
    inhibited or silenced.

The route tests file (a YAML document with `alertmanager_config:`) names, per alert, the
receivers (short names) it must reach; an alert without an entry fails the step.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

BASE_RECEIVER = "null"  # kube-prometheus-stack's default root receiver
CLOSED_URL = "http://127.0.0.1:9/"  # discard port: notifications in the inhibition test go nowhere


class Unsupported(ValueError):
    """A field of the AlertmanagerConfig this conversion does not know: fail, never drop it."""


def matcher_string(matcher: dict) -> str:
    """`name="value"` with the operator's match type (Go %q quoting: JSON's, for these strings)."""
    if "regex" in matcher and "matchType" not in matcher:
        raise Unsupported("matchers: use matchType, not the deprecated regex")
    return f"{matcher['name']}{matcher.get('matchType', '=')}{json.dumps(str(matcher.get('value', '')))}"


ROUTE_FIELDS = {"receiver", "matchers", "groupBy", "groupWait", "groupInterval", "repeatInterval", "continue", "routes",
                "muteTimeIntervals", "activeTimeIntervals"}
SNAKE = {"groupBy": "group_by", "groupWait": "group_wait", "groupInterval": "group_interval",
         "repeatInterval": "repeat_interval", "continue": "continue"}


def convert_route(route: dict, prefix: str) -> dict:
    unknown = set(route) - ROUTE_FIELDS
    if unknown:
        raise Unsupported(f"route fields {sorted(unknown)}")
    out: dict = {}
    if route.get("receiver"):
        out["receiver"] = prefix + route["receiver"]
    if route.get("matchers"):
        out["matchers"] = [matcher_string(m) for m in route["matchers"]]
    for key, snake in SNAKE.items():
        if key in route:
            out[snake] = route[key]
    for key, snake in (("muteTimeIntervals", "mute_time_intervals"), ("activeTimeIntervals", "active_time_intervals")):
        if route.get(key):
            out[snake] = [prefix + name for name in route[key]]
    if route.get("routes"):
        out["routes"] = [convert_route(child, prefix) for child in route["routes"]]
    return out


SecretValue = Callable[[str, str], str]  # (secret name, key) -> value

PAGERDUTY_FIELDS = {"routingKey": "routing_key", "serviceKey": "service_key", "url": "url", "client": "client",
                    "clientURL": "client_url", "description": "description", "severity": "severity", "class": "class",
                    "group": "group", "component": "component", "source": "source", "sendResolved": "send_resolved"}
OPSGENIE_FIELDS = {"apiKey": "api_key", "apiURL": "api_url", "message": "message", "description": "description",
                   "source": "source", "tags": "tags", "note": "note", "priority": "priority", "entity": "entity",
                   "actions": "actions", "updateAlerts": "update_alerts", "sendResolved": "send_resolved"}
SECRET_FIELDS = {"routingKey", "serviceKey", "apiKey"}


def convert_notifier(config: dict, fields: dict[str, str], secret: SecretValue, what: str) -> dict:
    out: dict = {}
    for key, value in config.items():
        if key in SECRET_FIELDS:
            out[fields[key]] = secret(value["name"], value["key"])
        elif key in fields:
            out[fields[key]] = value
        elif key == "details":
            out["details"] = {d["key"]: d["value"] for d in value}
        elif key == "responders" and what == "opsgenie":
            out["responders"] = [{k: v for k, v in r.items()} for r in value]
        else:
            raise Unsupported(f"{what} field {key}")
    return out


def convert_receiver(receiver: dict, prefix: str, secret: SecretValue) -> dict:
    out: dict = {"name": prefix + receiver["name"]}
    for key, value in receiver.items():
        if key == "name":
            continue
        if key == "pagerdutyConfigs":
            out["pagerduty_configs"] = [convert_notifier(c, PAGERDUTY_FIELDS, secret, "pagerduty") for c in value]
        elif key == "opsgenieConfigs":
            out["opsgenie_configs"] = [convert_notifier(c, OPSGENIE_FIELDS, secret, "opsgenie") for c in value]
        else:
            raise Unsupported(f"receiver type {key}")
    return out


def operator_config(amconfig: dict, secret: SecretValue) -> dict:
    """The Alertmanager config the operator generates from one AlertmanagerConfig."""
    meta, spec = amconfig.get("metadata") or {}, amconfig.get("spec") or {}
    namespace = meta.get("namespace", "default")
    prefix = f"{namespace}/{meta['name']}/"
    namespace_matcher = matcher_string({"name": "namespace", "matchType": "=", "value": namespace})
    top = convert_route(spec.get("route") or {}, prefix)
    top["matchers"] = [m for m in top.get("matchers", []) if not m.startswith("namespace")] + [namespace_matcher]
    top["continue"] = True
    inhibit_rules = []
    for rule in spec.get("inhibitRules") or []:
        inhibit_rules.append({
            "source_matchers": [matcher_string(m) for m in rule.get("sourceMatch") or []] + [namespace_matcher],
            "target_matchers": [matcher_string(m) for m in rule.get("targetMatch") or []] + [namespace_matcher],
            **({"equal": rule["equal"]} if rule.get("equal") else {}),
        })
    if spec.get("muteTimeIntervals"):
        raise Unsupported("muteTimeIntervals")
    return {
        "route": {"receiver": BASE_RECEIVER, "group_by": ["namespace"], "routes": [top]},
        "receivers": [{"name": BASE_RECEIVER}] + [convert_receiver(r, prefix, secret) for r in spec.get("receivers") or []],
        "inhibit_rules": inhibit_rules,
    }


def with_notifiers_closed(config: dict) -> dict:
    """The same config with every notifier URL pointing at a closed local port."""
    closed = json.loads(json.dumps(config))
    for receiver in closed["receivers"]:
        for notifier in receiver.get("pagerduty_configs") or []:
            notifier["url"] = CLOSED_URL
        for notifier in receiver.get("opsgenie_configs") or []:
            notifier["api_url"] = CLOSED_URL
    return closed


# --- the labels alerts really carry


def alert_label_sets(rule_tests: Iterable[Path]) -> dict[str, list[dict[str, str]]]:
    """alertname -> every distinct label set its promtool tests expect it to fire with."""
    out: dict[str, list[dict[str, str]]] = {}
    for path in rule_tests:
        with open(path, encoding="utf-8") as handle:
            doc = yaml.safe_load(handle) or {}
        for test in doc.get("tests") or []:
            for case in test.get("alert_rule_test") or []:
                name = case.get("alertname", "")
                for expected in case.get("exp_alerts") or []:
                    labels = {"alertname": name, **{k: str(v) for k, v in (expected.get("exp_labels") or {}).items()}}
                    if labels not in out.setdefault(name, []):
                        out[name].append(labels)
    return out


# --- tools


def run(cmd: list[str], timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def output(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + " " + proc.stderr).split())


@dataclass
class RouteTests:
    source: str
    receivers: dict[str, list[str]]  # alertname -> short receiver names
    inhibitions: list[dict]
    silences: list[dict]


def load_route_tests(path: Path, doc: dict, source: str) -> RouteTests:
    return RouteTests(source, {k: list(v) for k, v in (doc.get("routes") or {}).items()},
                      doc.get("inhibitions") or [], doc.get("silences") or [])


def check_routes(config_path: Path, prefix: str, tests: RouteTests, alerts: dict[str, str],
                 labels: dict[str, list[dict[str, str]]]) -> list[str]:
    """amtool's routing of every alert against the expected receivers."""
    problems = []
    for alert, source in sorted(alerts.items()):
        if alert not in tests.receivers:
            problems.append(f"{source}: alert {alert} has no route test in {tests.source} (routes: {alert}: [receivers])")
            continue
        label_sets = labels.get(alert)
        if not label_sets:
            problems.append(f"{source}: alert {alert}: no promtool test expects it to fire, so its labels are unknown")
            continue
        want = ",".join(prefix + r for r in tests.receivers[alert])
        for label_set in label_sets:
            args = [f"{k}={v}" for k, v in sorted(label_set.items())]
            proc = run(["amtool", "config", "routes", "test", f"--config.file={config_path}",
                        f"--verify.receivers={want}", *args])
            if proc.returncode != 0:
                problems.append(f"{tests.source}: alert {alert} {{{', '.join(args)}}} should reach {want}: "
                                f"{output(proc)}")
    for alert in sorted(set(tests.receivers) - set(alerts)):
        problems.append(f"{tests.source}: route test for {alert}, which no PrometheusRule defines")
    return problems


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        return json.load(response)


def post_alerts(url: str, label_sets: list[dict[str, str]]) -> None:
    body = json.dumps([{"labels": labels, "annotations": {}} for labels in label_sets]).encode()
    request = urllib.request.Request(f"{url}/api/v2/alerts", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5):
        pass


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def suppressed_by(alerts: list[dict]) -> dict[str, str]:
    """alertname -> 'inhibited' / 'silenced' / 'active' as the Alertmanager's API reports it."""
    out = {}
    for alert in alerts:
        status = alert.get("status") or {}
        state = "inhibited" if status.get("inhibitedBy") else "silenced" if status.get("silencedBy") else "active"
        out[alert["labels"]["alertname"]] = state
    return out


def check_suppression(config: dict, tests: RouteTests, labels: dict[str, list[dict[str, str]]],
                      workdir: Path) -> list[str]:
    """Inhibition and silence cases against a real Alertmanager, one fresh instance per case."""
    problems = []
    cases = [("inhibition", case) for case in tests.inhibitions] + [("silence", case) for case in tests.silences]
    config_path = workdir / "alertmanager-closed.yml"
    config_path.write_text(yaml.safe_dump(with_notifiers_closed(config), sort_keys=False))
    for kind, case in cases:
        firing = ([case["cause"]] if kind == "inhibition" else []) + case.get("mutes", []) + case.get("keeps", [])
        missing = [a for a in firing if not labels.get(a)]
        if missing:
            problems.append(f"{tests.source}: {kind} '{case.get('name')}': no promtool test fires {missing}")
            continue
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        storage = tempfile.mkdtemp(dir=workdir)
        log = open(workdir / f"alertmanager-{port}.log", "w")
        server = subprocess.Popen(["prometheus-alertmanager", f"--config.file={config_path}",
                                   f"--storage.path={storage}", f"--web.listen-address=127.0.0.1:{port}",
                                   "--cluster.listen-address=", "--log.level=warn"], stdout=log, stderr=log)
        try:
            if not wait_for(lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200, 20):
                problems.append(f"{tests.source}: {kind} '{case.get('name')}': Alertmanager did not start: "
                                + (workdir / f"alertmanager-{port}.log").read_text()[-400:])
                continue
            if kind == "silence":
                proc = run(["amtool", "silence", "add", f"--alertmanager.url={url}", "--author=validate-manifests",
                            "--comment=maintenance (test)", "--duration=2h", *case["matchers"]])
                if proc.returncode != 0:
                    problems.append(f"{tests.source}: silence '{case.get('name')}': amtool silence add failed: "
                                    f"{output(proc)}")
                    continue
            post_alerts(url, [labels[a][0] for a in firing])
            want = {a: ("inhibited" if kind == "inhibition" else "silenced") for a in case.get("mutes", [])}
            want |= {a: "active" for a in case.get("keeps", [])}
            if kind == "inhibition":
                want[case["cause"]] = "active"
            seen: dict[str, str] = {}

            def settled() -> bool:
                seen.clear()
                seen.update(suppressed_by(api_alerts(url)))
                return all(seen.get(a) == state for a, state in want.items())
            # The inhibitor learns of the cause asynchronously: wait for the expected state.
            if not wait_for(settled, 10):
                wrong = {a: f"{seen.get(a, 'absent')} (expected {state})" for a, state in want.items()
                         if seen.get(a) != state}
                problems.append(f"{tests.source}: {kind} '{case.get('name')}': {wrong}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
    return problems


def placeholder_secret(name: str, key: str) -> str:
    return f"test-{name}-{key}"


def check_all(amconfig: dict, amconfig_source: str, tests: RouteTests, alerts: dict[str, str],
              rule_tests: list[Path], workdir: Path) -> tuple[list[str], str]:
    """Problems, and a one-line summary of what ran."""
    try:
        config = operator_config(amconfig, placeholder_secret)
    except (Unsupported, KeyError) as err:
        return [f"{amconfig_source}: cannot convert as the operator would: {err}"], ""
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run(["amtool", "check-config", str(config_path)])
    if proc.returncode != 0:
        return [f"{amconfig_source}: amtool check-config: {output(proc)}"], ""
    meta = amconfig.get("metadata") or {}
    prefix = f"{meta.get('namespace', 'default')}/{meta['name']}/"
    labels = alert_label_sets(rule_tests)
    problems = check_routes(config_path, prefix, tests, alerts, labels)
    problems += check_suppression(config, tests, labels, workdir)
    summary = (f"{len(alerts)} alert(s) routed as expected by amtool; {len(tests.inhibitions)} inhibition and "
               f"{len(tests.silences)} silence case(s) on a real Alertmanager")
    return problems, summary

