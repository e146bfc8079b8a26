"""templates/servicemonitor.yaml (and the other optional monitoring objects being off by default)."""

from __future__ import annotations

from chart_helpers import ci, render


def test_monitoring_objects_are_optional() -> None:
    r = render()
    assert r.maybe("ServiceMonitor") is None
    assert r.maybe("PrometheusRule") is None
    assert r.all("ConfigMap") == []


def test_service_monitor() -> None:
    r = render([ci("monitoring")])
    sm = r.get("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # additionalLabels
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]
    svc = r.get("Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [svc["metadata"]["namespace"]]}
    assert "http" in {p["name"] for p in svc["spec"]["ports"]}
