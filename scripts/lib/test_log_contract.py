"""Unit tests of the logs contract model (scripts/lib/log_contract.py) on the shipped pipeline.
The real binaries' lines are checked by cargo xtask test-operations; these pin the model itself."""

from __future__ import annotations

import json

import pytest

import log_contract as lc

EDGE = ('{"timestamp":"2026-11-30T13:30:11.794398Z","level":"INFO","fields":{"message":"request",'
        '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"0dd1b1097786efc9","method":"GET","path":"/v1/users",'
        '"route":"GET /v1/users","grpc_method":"/user.UserService/ListUsers","protocol":"rest","http_version":"http/1.1",'
        '"status":500,"grpc_status":13,"upstream":"127.0.0.1:1","latency_ms":4.1},"target":"access"}')
USER = ('{"timestamp":"2026-11-30T13:30:11.825586Z","level":"WARN","fields":{"message":"TestError failed",'
        '"grpc.code":"INTERNAL"},"target":"user_service::grpc","span":{"rpc.method":"TestError",'
        '"rpc.service":"user.UserService","span_id":"6a08f795c0f8c0aa","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",'
        '"name":"rpc"}}')


def run(edge: str = EDGE, user: str = USER) -> list[str]:
    problems, _ = lc.check(lc.Pipeline.load(lc.PIPELINE), json.loads(lc.TEMPLATE.read_text()),
                           lc.kibana_fields(lc.SAVED_OBJECTS.read_text()), {"edge-gateway": [edge], "user-service": [user]})
    return problems


def test_the_shipped_pipeline_accepts_both_formats():
    assert run() == []


def test_trace_context_is_top_level_for_both_services():
    pipeline = lc.Pipeline.load(lc.PIPELINE)
    for container, line in (("edge-gateway", EDGE), ("user-service", USER)):
        record = lc.process(pipeline, container, line).record
        assert record["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert "span" not in record and "fields" not in record


def test_a_renamed_field_fails():
    problems = run(edge=EDGE.replace('"route"', '"route_template"'))
    assert any("field 'route' is in no record of edge-gateway" in p for p in problems)
    problems = run(user=USER.replace('"trace_id"', '"traceId"'))
    assert any("'span_trace_id'" in p for p in problems)


def test_a_value_of_the_wrong_type_fails():
    problems = run(edge=EDGE.replace('"status":500', '"status":"500"'))
    assert any("field status = '500' does not fit its mapping short" in p for p in problems)


def test_a_timestamp_the_parser_cannot_read_fails():
    problems = run(user=USER.replace("2026-11-30T13:30:11.825586Z", "2026-11-30 13:30:11"))
    assert any("not in time_format" in p for p in problems)


def test_an_unknown_filter_is_an_error_not_a_pass():
    pipeline = lc.Pipeline.load(lc.PIPELINE)
    pipeline.filters.append({"name": "lua", "match": "kube.*"})
    with pytest.raises(lc.Unsupported):
        lc.process(pipeline, "edge-gateway", EDGE)
