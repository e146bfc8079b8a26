"""templates/deployment.yaml: one pod per node, rollout without surge, node placement, progress deadline."""

from __future__ import annotations

import yaml
from chart_helpers import Rendered, ci, pod_labels, render, render_error, selector_labels


def test_required_pod_anti_affinity_on_hostname(ci_rendered: Rendered) -> None:
    anti = ci_rendered.pod_spec["affinity"]["podAntiAffinity"]
    ours = [
        t
        for t in anti["requiredDuringSchedulingIgnoredDuringExecution"]
        if t["topologyKey"] == "kubernetes.io/hostname"
    ]
    assert len(ours) == 1
    # It must select the pods of this very Deployment (and only by its immutable selector labels).
    assert ours[0]["labelSelector"]["matchLabels"] == selector_labels(ci_rendered)
    assert selector_labels(ci_rendered).items() <= pod_labels(ci_rendered).items()


def test_user_affinity_is_merged_not_replaced() -> None:
    r = render([ci("pvc")])
    affinity = r.pod_spec["affinity"]
    values = yaml.safe_load(ci("pvc").read_text())
    assert affinity["nodeAffinity"] == values["affinity"]["nodeAffinity"]
    anti = affinity["podAntiAffinity"]
    assert (
        anti["preferredDuringSchedulingIgnoredDuringExecution"]
        == values["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    )
    assert [t["topologyKey"] for t in anti["requiredDuringSchedulingIgnoredDuringExecution"]] == [
        "kubernetes.io/hostname"
    ]


def test_user_required_anti_affinity_terms_are_kept() -> None:
    extra = {
        "topologyKey": "topology.kubernetes.io/zone",
        "labelSelector": {"matchLabels": {"app": "other-heavy-thing"}},
    }
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [extra]}}
    r = render(set_values={"affinity": anti})
    terms = r.pod_spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert extra in terms
    assert any(t["topologyKey"] == "kubernetes.io/hostname" for t in terms)


def test_rollout_never_surges(ci_rendered: Rendered) -> None:
    strategy = ci_rendered.deployment["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_node_placement_passthrough() -> None:
    r = render([ci("pvc")])
    values = yaml.safe_load(ci("pvc").read_text())
    spec = r.pod_spec
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert spec["topologySpreadConstraints"] == values["topologySpreadConstraints"]
    assert spec["priorityClassName"] == values["priorityClassName"]
    default = render().pod_spec
    assert "nodeSelector" not in default and "tolerations" not in default


def test_progress_deadline_covers_slow_loads(ci_rendered: Rendered) -> None:
    spec = ci_rendered.deployment["spec"]
    startup = ci_rendered.server["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert spec["progressDeadlineSeconds"] > budget >= 1800


def test_progress_deadline_below_startup_budget_fails() -> None:
    err = render_error(set_values={"progressDeadlineSeconds": 1800})
    assert "progressDeadlineSeconds (1800) must be greater than the startup probe budget" in err
    assert "1800 s" in err
