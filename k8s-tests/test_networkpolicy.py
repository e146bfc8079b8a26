"""templates/networkpolicy.yaml: the optional NetworkPolicy."""

from __future__ import annotations

import yaml
from chart_helpers import ci, render, selector_labels


def test_network_policy() -> None:
    assert render().maybe("NetworkPolicy") is None
    r = render([ci("networkpolicy")])
    values = yaml.safe_load(ci("networkpolicy").read_text())["networkPolicy"]
    np = r.get("NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == selector_labels(r)
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = np["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"][:-1] == values["ingressFrom"]
    # The helm test pod must still reach the server.
    test_labels = r.test_pod["metadata"]["labels"]
    assert ingress["from"][-1]["podSelector"]["matchLabels"].items() <= test_labels.items()
    egress = np["spec"]["egress"]
    assert {"port": 53, "protocol": "UDP"} in egress[0]["ports"]
    assert egress[1:] == values["egress"]


def test_network_policy_with_open_egress_and_ingress() -> None:
    np = render(set_values={"networkPolicy.enabled": True}).get("NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
