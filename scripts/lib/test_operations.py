"""Unit tests of the operations rules and the AlertmanagerConfig conversion."""

from __future__ import annotations

import pytest

import alert_routing as ar
import operations_policy as ops


def test_wildcard_certificates_cover_one_label_only():
    assert ops.host_covered("meshgate.example.com", ["*.example.com"])
    assert not ops.host_covered("a.meshgate.example.com", ["*.example.com"])
    assert not ops.host_covered("example.com", ["*.example.com"])
    assert ops.host_covered("example.com", ["example.com"])


AMCONFIG = {
    "metadata": {"name": "routing", "namespace": "meshgate"},
    "spec": {
        "route": {"receiver": "tickets", "groupBy": ["alertname"], "routes": [
            {"matchers": [{"name": "severity", "matchType": "=", "value": "page"}], "receiver": "pager"}]},
        "receivers": [
            {"name": "pager", "pagerdutyConfigs": [{"routingKey": {"name": "pd", "key": "k"}, "sendResolved": True}]},
            {"name": "tickets", "opsgenieConfigs": [{"apiKey": {"name": "og", "key": "k"},
                                                     "responders": [{"type": "team", "name": "x"}]}]},
        ],
        "inhibitRules": [{"sourceMatch": [{"name": "alertname", "matchType": "=", "value": "Cause"}],
                          "targetMatch": [{"name": "alertname", "matchType": "=~", "value": "Symptom.*"}]}],
    },
}


def test_operator_conversion_namespaces_receivers_routes_and_inhibitions():
    config = ar.operator_config(AMCONFIG, lambda name, key: f"{name}/{key}")
    top = config["route"]["routes"][0]
    assert config["route"]["receiver"] == "null"
    assert top["receiver"] == "meshgate/routing/tickets"
    assert top["matchers"] == ['namespace="meshgate"'] and top["continue"] is True
    assert top["routes"][0] == {"receiver": "meshgate/routing/pager", "matchers": ['severity="page"']}
    assert config["receivers"][1]["pagerduty_configs"] == [{"routing_key": "pd/k", "send_resolved": True}]
    assert config["inhibit_rules"][0]["target_matchers"] == ['alertname=~"Symptom.*"', 'namespace="meshgate"']


def test_unknown_fields_are_refused_not_dropped():
    bad = {**AMCONFIG, "spec": {**AMCONFIG["spec"], "receivers": [{"name": "x", "slackConfigs": [{}]}]}}
    with pytest.raises(ar.Unsupported):
        ar.operator_config(bad, lambda name, key: "")


def test_notifiers_point_nowhere_in_the_suppression_test():
    config = ar.with_notifiers_closed(ar.operator_config(AMCONFIG, lambda name, key: "v"))
    assert config["receivers"][1]["pagerduty_configs"][0]["url"] == ar.CLOSED_URL
    assert config["receivers"][2]["opsgenie_configs"][0]["api_url"] == ar.CLOSED_URL
