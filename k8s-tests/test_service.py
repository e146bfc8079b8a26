"""templates/service.yaml: port 80 to the named http port."""

from __future__ import annotations

from chart_helpers import FULLNAME, Rendered, selector_labels


def test_service(ci_rendered: Rendered) -> None:
    svc = ci_rendered.get("Service")
    assert svc["metadata"]["name"] == FULLNAME
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == selector_labels(ci_rendered)
    assert any(p["name"] == "http" and p["containerPort"] == 8000 for p in ci_rendered.server["ports"])
