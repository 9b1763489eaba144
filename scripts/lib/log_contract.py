"""The logs pipeline's contract with the binaries' log lines (run by cargo xtask test-operations).

Fluent Bit and Elasticsearch do not run here, so the pipeline is read from the files that ship it
and applied to log lines captured from a real run of the binaries:

  - deploy/logging/fluent-bit/fluent-bit.yaml: the parser each `kubernetes` filter merges the log
    line with (format json, its time_key parsed with its time_format), then the `nest` and
    `modify` filters in order, then the `es` output's replace_dots and time_key;
  - deploy/logging/setup/index-template.json: the type of every mapped field. A value that does
    not fit its mapping makes Elasticsearch reject the whole record: the log line is lost;
  - deploy/logging/setup/kibana-saved-objects.ndjson: the data view (time field, formatted and
    labelled fields: the trace link) and the saved searches (columns, fields of the KQL query).

Checked: every JSON line parses, carries the parser's time key in its time format and yields a
record whose fields fit the mappings; every key a filter names exists in the lines it is meant
for (a renamed field in a binary fails here); the fields the filters produce (trace_id, span_id)
reach Elasticsearch from every binary; every field the data view and a saved search of a binary's
container name is in that binary's records. Filters or options this model does not know are an
error, never skipped. Pure functions, plus a CLI.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "deploy" / "logging" / "fluent-bit" / "fluent-bit.yaml"
TEMPLATE = ROOT / "deploy" / "logging" / "setup" / "index-template.json"
SAVED_OBJECTS = ROOT / "deploy" / "logging" / "setup" / "kibana-saved-objects.ndjson"
NAMESPACE = "meshgate"


class Unsupported(ValueError):
    """A pipeline element the model does not know: the contract cannot be judged."""


def tag_for(container: str, input_tag: str) -> str:
    """The tag tail gives a record: kube.* + the file path with '/' as '.' (in_tail)."""
    path = f"/var/log/containers/{container}-0_{NAMESPACE}_{container}-0123456789abcdef.log"
    return input_tag.replace("*", path.replace("/", ".").lstrip("."))


@dataclass
class Pipeline:
    parsers: dict[str, dict]
    inputs: list[dict]
    filters: list[dict]
    outputs: list[dict]

    @classmethod
    def load(cls, path: Path) -> Pipeline:
        doc = yaml.safe_load(path.read_text()) or {}
        pipeline = doc.get("pipeline") or {}
        return cls({p["name"]: p for p in doc.get("parsers") or []}, pipeline.get("inputs") or [],
                   pipeline.get("filters") or [], pipeline.get("outputs") or [])

    def input_for(self, container: str) -> dict:
        """The tail input whose path (and not exclude_path) takes this container's log file."""
        path = f"/var/log/containers/{container}-0_{NAMESPACE}_{container}-0123456789abcdef.log"
        for item in self.inputs:
            if item.get("name") != "tail":
                continue
            if fnmatch.fnmatch(path, item.get("path", "")) and not fnmatch.fnmatch(path, item.get("exclude_path", "")):
                return item
        raise Unsupported(f"no tail input reads {path}")

    def filters_for(self, tag: str) -> list[dict]:
        return [f for f in self.filters if fnmatch.fnmatchcase(tag, str(f.get("match", "")))]


def flag(value: object) -> bool:
    """A Fluent Bit boolean (`on`, which YAML 1.1 also reads as true)."""
    return value is True or str(value).lower() in ("on", "true", "yes")


def as_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


TIME_DIRECTIVES = {"%Y": r"\d{4}", "%m": r"\d{2}", "%d": r"\d{2}", "%H": r"\d{2}", "%M": r"\d{2}", "%S": r"\d{2}",
                   "%L": r"\d{1,9}", "%z": r"[+-]\d{4}"}


def time_regex(time_format: str) -> re.Pattern[str]:
    """Fluent Bit's strptime format (with %L: fractional seconds) as a regex, for the subset used."""
    out, i = "", 0
    while i < len(time_format):
        if time_format[i] == "%":
            directive = time_format[i:i + 2]
            if directive not in TIME_DIRECTIVES:
                raise Unsupported(f"time_format directive {directive}")
            out += TIME_DIRECTIVES[directive]
            i += 2
        else:
            out += re.escape(time_format[i])
            i += 1
    return re.compile(out + r"\Z")


@dataclass
class Processed:
    container: str
    line: str
    raw: dict | None  # the parsed JSON line, before the filters
    record: dict  # what reaches Elasticsearch
    problems: list[str] = field(default_factory=list)


def kubernetes_metadata(container: str) -> dict:
    return {"namespace_name": NAMESPACE, "pod_name": f"{container}-0", "container_name": container,
            "host": "node-0", "labels": {"app.kubernetes.io/name": container}}


def replace_dots(value: object) -> object:
    if isinstance(value, dict):
        return {k.replace(".", "_"): replace_dots(v) for k, v in value.items()}
    return value


def process(pipeline: Pipeline, container: str, line: str) -> Processed:
    """One log line through the pipeline, as Fluent Bit would ship it for this container."""
    tag = tag_for(container, str(pipeline.input_for(container).get("tag", "")))
    problems: list[str] = []
    record: dict = {"log": line}
    raw = None
    for item in pipeline.filters_for(tag):
        kind = item.get("name")
        if kind == "kubernetes":
            parser_name = item.get("merge_parser")
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict) and flag(item.get("merge_log")):
                raw = parsed
                record = dict(parsed)
                if parser_name:
                    parser = pipeline.parsers.get(parser_name)
                    if parser is None:
                        raise Unsupported(f"merge_parser {parser_name} is not a parser of the pipeline")
                    if parser.get("format") != "json":
                        raise Unsupported(f"parser {parser_name} format {parser.get('format')}")
                    key = parser.get("time_key")
                    if key:
                        value = parsed.get(key)
                        if not isinstance(value, str) or not time_regex(str(parser.get("time_format", ""))).match(value):
                            problems.append(f"parser {parser_name}: time_key {key!r} is {value!r}, not in time_format "
                                            f"{parser.get('time_format')!r} (Fluent Bit would stamp the read time)")
                        if not flag(parser.get("time_keep")):
                            record.pop(key, None)
            record["kubernetes"] = kubernetes_metadata(container)
        elif kind == "nest":
            if item.get("operation") != "lift":
                raise Unsupported(f"nest operation {item.get('operation')}")
            nested = record.pop(str(item.get("nested_under")), None)
            if isinstance(nested, dict):
                prefix = str(item.get("add_prefix", ""))
                record.update({prefix + k: v for k, v in nested.items()})
            elif nested is not None:
                record[str(item.get("nested_under"))] = nested
        elif kind == "modify":
            for option, values in item.items():
                if option in ("name", "match"):
                    continue
                for value in as_list(values):
                    if option in ("rename", "hard_rename"):
                        source, target = value.split()
                        if source in record and (option == "hard_rename" or target not in record):
                            record[target] = record.pop(source)
                    elif option == "remove":
                        record.pop(value, None)
                    else:
                        raise Unsupported(f"modify option {option}")
        else:
            raise Unsupported(f"filter {kind}")
    outputs = [o for o in pipeline.outputs if fnmatch.fnmatchcase(tag, str(o.get("match", "")))]
    if len(outputs) != 1 or outputs[0].get("name") != "es":
        raise Unsupported(f"outputs for {tag}: {[o.get('name') for o in outputs]} (expected one es output)")
    output = outputs[0]
    if flag(output.get("replace_dots")):
        record = replace_dots(record)  # type: ignore[assignment]
    record[str(output.get("time_key", "@timestamp"))] = "1970-01-01T00:00:00.000000000Z"
    return Processed(container, line, raw, record, problems)


# --- the index template


def mappings(template: dict) -> dict[str, str]:
    """Dotted field path -> mapped type."""
    out: dict[str, str] = {}

    def walk(properties: dict, prefix: str) -> None:
        for key, spec in properties.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{key}.")
            else:
                out[prefix + key] = spec.get("type", "object")
    walk(((template.get("template") or {}).get("mappings") or {}).get("properties") or {}, "")
    return out


DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$")
INT_RANGES = {"byte": 2**7, "short": 2**15, "integer": 2**31, "long": 2**63}


def fits(value: object, mapped: str) -> bool:
    if mapped in ("keyword", "text", "wildcard"):
        return isinstance(value, str)
    if mapped in INT_RANGES:
        return isinstance(value, int) and not isinstance(value, bool) and -INT_RANGES[mapped] <= value < INT_RANGES[mapped]
    if mapped in ("double", "float", "half_float", "scaled_float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if mapped in ("date", "date_nanos"):
        return isinstance(value, str) and bool(DATE.match(value))
    if mapped == "boolean":
        return isinstance(value, bool)
    raise Unsupported(f"mapping type {mapped}")


def flatten(record: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


# --- Kibana


KQL_FIELD = re.compile(r"([A-Za-z_@][\w.@]*)\s*(?::|>=|<=|>|<)")
CONTAINER_QUERY = re.compile(r'kubernetes\.container_name\s*:\s*"([^"]+)"')


@dataclass
class KibanaFields:
    time_field: str
    data_view: set[str]  # formatted or labelled fields
    searches: list[tuple[str, str | None, set[str]]]  # (title, container or None, fields)


def kibana_fields(ndjson: str) -> KibanaFields:
    objects = [json.loads(line) for line in ndjson.splitlines() if line.strip()]
    views = [o for o in objects if o.get("type") == "index-pattern"]
    if len(views) != 1:
        raise Unsupported(f"{len(views)} data views (expected one)")
    attributes = views[0]["attributes"]
    data_view = set(json.loads(attributes.get("fieldFormatMap") or "{}")) | set(json.loads(attributes.get("fieldAttrs") or "{}"))
    searches = []
    for obj in objects:
        if obj.get("type") != "search":
            continue
        attributes = obj["attributes"]
        source = json.loads(attributes["kibanaSavedObjectMeta"]["searchSourceJSON"])
        query = (source.get("query") or {}).get("query", "")
        container = CONTAINER_QUERY.search(query)
        fields = set(attributes.get("columns") or []) | set(KQL_FIELD.findall(query))
        fields |= {s[0] for s in attributes.get("sort") or []}
        searches.append((attributes.get("title", obj.get("id")), container.group(1) if container else None, fields))
    return KibanaFields(attributes_time(views[0]), data_view, searches)


def attributes_time(view: dict) -> str:
    return str(view["attributes"].get("timeFieldName", ""))


# --- the contract


def filter_named_keys(pipeline: Pipeline, tag: str) -> list[tuple[str, str]]:
    """(filter description, key it reads) for the filters of a tag."""
    keys = []
    for item in pipeline.filters_for(tag):
        if item.get("name") == "nest":
            keys.append((f"nest lift {item.get('nested_under')}", str(item.get("nested_under"))))
        if item.get("name") == "modify":
            for option in ("rename", "hard_rename"):
                for value in as_list(item.get(option) or []):
                    keys.append((f"modify {option} {value}", value.split()[0]))
    return keys


def lifted_view(pipeline: Pipeline, p: Processed) -> set[str]:
    """Every key a filter of the pipeline could see for this line: the line's own keys and those
    of its nested maps, with each nest filter's prefix (what `modify` sees after a lift)."""
    keys = set(p.raw or {})
    for item in pipeline.filters:
        if item.get("name") == "nest":
            nested = (p.raw or {}).get(str(item.get("nested_under")))
            if isinstance(nested, dict):
                keys |= {str(item.get("add_prefix", "")) + k for k in nested}
    return keys


def produced_keys(pipeline: Pipeline, tag: str) -> set[str]:
    """Keys the filters of a tag write (rename targets): every binary must end up with them."""
    out = set()
    for item in pipeline.filters_for(tag):
        if item.get("name") == "modify":
            for option in ("rename", "hard_rename"):
                out |= {value.split()[1] for value in as_list(item.get(option) or [])}
    return out


def check(pipeline: Pipeline, template: dict, kibana: KibanaFields, lines: dict[str, list[str]]) -> tuple[list[str], str]:
    """Problems, and a summary. `lines`: container name -> its captured stdout lines."""
    problems: list[str] = []
    types = mappings(template)
    processed: dict[str, list[Processed]] = {}
    for container, container_lines in lines.items():
        records = [process(pipeline, container, line) for line in container_lines if line.strip()]
        processed[container] = records
        json_records = [p for p in records if p.raw is not None]
        if not json_records:
            problems.append(f"{container}: none of its {len(records)} log lines is JSON")
        for p in records:
            problems.extend(f"{container}: {problem}: {p.line[:200]}" for problem in p.problems)
            for path, value in flatten(p.record).items():
                if path in types and not fits(value, types[path]):
                    problems.append(f"{container}: field {path} = {value!r} does not fit its mapping {types[path]} "
                                    f"(Elasticsearch rejects the record): {p.line[:200]}")
        tag = tag_for(container, str(pipeline.input_for(container).get("tag", "")))
        for key in sorted(produced_keys(pipeline, tag)):
            if not any(key in p.record for p in json_records):
                problems.append(f"{container}: no record reaches Elasticsearch with {key!r}, which the pipeline "
                                "produces for every service (trace correlation)")
    all_records = [p for records in processed.values() for p in records if p.raw is not None]
    # A filter's key may belong to one service only (the user-service's `span`), so it must be in
    # some service's lines, before the filters that rename or lift it.
    tags = {tag_for(c, str(pipeline.input_for(c).get("tag", ""))) for c in lines}
    for what, key in sorted({k for tag in tags for k in filter_named_keys(pipeline, tag)}):
        if not any(key in lifted_view(pipeline, p) for p in all_records):
            problems.append(f"no log line of {sorted(lines)} has the key {key!r} that `{what}` reads")
    for name in sorted(kibana.data_view | {kibana.time_field}):
        if not any(name in flatten(p.record) for p in all_records):
            problems.append(f"data view field {name!r} is in no record of {sorted(lines)}")
        elif name in types:
            pass
        else:
            problems.append(f"data view field {name!r} has no mapping in the index template")
    unchecked = []
    for title, container, fields in kibana.searches:
        if container is None or container not in processed:
            unchecked.append(title)
            continue
        records = [flatten(p.record) for p in processed[container] if p.raw is not None]
        for name in sorted(fields):
            if not any(name in r for r in records):
                problems.append(f"saved search {title!r}: field {name!r} is in no record of {container}")
            elif name not in types:
                problems.append(f"saved search {title!r}: field {name!r} has no mapping in the index template")
    counts = ", ".join(f"{c}: {sum(p.raw is not None for p in r)} JSON line(s)" for c, r in processed.items())
    summary = f"log contract: {counts}; saved searches not checked (no such container here): {unchecked or 'none'}"
    return problems, summary


def read_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", help="CONTAINER=FILE: captured stdout of a binary")
    args = parser.parse_args(list(argv) if argv is not None else None)
    lines = {}
    for item in args.logs:
        container, _, path = item.partition("=")
        lines[container] = read_lines(Path(path))
    problems, summary = check(Pipeline.load(PIPELINE), json.loads(TEMPLATE.read_text()),
                              kibana_fields(SAVED_OBJECTS.read_text()), lines)
    for problem in problems:
        print(f"FAIL {problem}")
    print(summary)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
