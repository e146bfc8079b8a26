"""templates/hpa.yaml: CPU or a per-pod metric, never memory; bounded by the memory budget and the nodes."""

from __future__ import annotations

from typing import Any

import pytest
from chart_helpers import Rendered, ci, render, render_error


def test_no_hpa_by_default() -> None:
    r = render()
    assert r.maybe("HorizontalPodAutoscaler") is None
    assert r.deployment["spec"]["replicas"] == 1


def test_hpa_on_cpu() -> None:
    r = render([ci("autoscaling-cpu")])
    hpa = r.get("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": r.deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}
    ]
    # The HPA owns the replica count.
    assert "replicas" not in r.deployment["spec"]


def test_hpa_on_pods_metric() -> None:
    hpa = render([ci("autoscaling-pods")]).get("HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "retriever_inflight_requests"},
                "target": {"type": "AverageValue", "averageValue": "16"},
            },
        }
    ]


def test_hpa_never_scales_on_memory(ci_rendered: Rendered) -> None:
    for hpa in ci_rendered.all("HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] in {"Resource", "Pods"}
            if metric["type"] == "Resource":
                assert metric["resource"]["name"] == "cpu"
            assert "memory" not in str(metric).lower()


def test_hpa_long_scale_down_stabilisation() -> None:
    behavior = render([ci("autoscaling-cpu")]).get("HorizontalPodAutoscaler")["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 1800
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 600}]
    assert behavior["scaleUp"]["policies"][0]["value"] == 1


def test_hpa_over_memory_budget_fails() -> None:
    # autoscaling-cpu: 12 GiB per pod (ceil(8 + 2 + 0.1 + 0.75 + 0.5)); 4 x 12 = 48 > 40.
    err = render_error([ci("autoscaling-cpu")], {"autoscaling.memoryBudgetGiB": 40})
    assert (
        "autoscaling.maxReplicas (4) x memory request (12 GiB) = 48 GiB exceeds autoscaling.memoryBudgetGiB (40 GiB)"
    ) in err
    assert "at most 3" in err


def test_hpa_budget_exactly_met_renders() -> None:
    hpa = render([ci("autoscaling-cpu")], {"autoscaling.memoryBudgetGiB": 48}).get("HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] == 4


def test_hpa_budget_uses_explicit_memory_request() -> None:
    # autoscaling-pods: explicit 40Gi request; 3 x 40 = 120 fits the 120 GiB budget, 4 x 40 does not.
    render([ci("autoscaling-pods")])
    err = render_error([ci("autoscaling-pods")], {"autoscaling.maxReplicas": 4})
    assert "autoscaling.maxReplicas (4) x memory request (40 GiB) = 160 GiB exceeds" in err
    err = render_error([ci("autoscaling-pods")], {"resources": {"requests": {"memory": "131072Mi"}}})
    assert "x memory request (128 GiB) = 384 GiB exceeds" in err


def test_hpa_more_replicas_than_eligible_nodes_fails() -> None:
    err = render_error([ci("autoscaling-cpu")], {"autoscaling.eligibleNodes": 3, "autoscaling.memoryBudgetGiB": 1000})
    assert "autoscaling.maxReplicas (4) exceeds autoscaling.eligibleNodes (3)" in err
    assert "one pod per node" in err


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        ({"autoscaling.memoryBudgetGiB": 0}, "autoscaling.memoryBudgetGiB is not set"),
        ({"autoscaling.eligibleNodes": 0}, "autoscaling.eligibleNodes is not set"),
        ({"autoscaling.minReplicas": 5}, "autoscaling.minReplicas (5) is greater than autoscaling.maxReplicas (4)"),
        ({"autoscaling.targetCPUUtilizationPercentage": None}, "has no metric"),
    ],
)
def test_hpa_misconfiguration_fails(set_values: dict[str, Any], message: str) -> None:
    assert message in render_error([ci("autoscaling-cpu")], set_values)
