"""templates/pdb.yaml: a PodDisruptionBudget that never blocks a node drain."""

from __future__ import annotations

from chart_helpers import Rendered, selector_labels


def test_pdb(ci_rendered: Rendered) -> None:
    pdb = ci_rendered.get("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"] == selector_labels(ci_rendered)
