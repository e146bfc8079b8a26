"""Object assertions: one test (or a few) per rule the chart must keep (issue 5)."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    CHART,
    FULLNAME,
    Rendered,
    ci,
    container,
    env_of,
    mount,
    render,
    render_error,
    volume,
)

GiB = 1024**3


def selector_labels(r: Rendered) -> dict[str, str]:
    return r.deployment["spec"]["selector"]["matchLabels"]


def pod_labels(r: Rendered) -> dict[str, str]:
    return r.deployment["spec"]["template"]["metadata"]["labels"]


# --- one pod per node ---------------------------------------------------------------------------------


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


# --- memory: requests = limits, from index.sizeGiB ----------------------------------------------------


def formula_gib(index: float, corpus: float, model: float, workers: int, per_worker: float, headroom: float) -> int:
    """The documented formula (values.yaml), in decimal arithmetic like Helm's addf/mulf: 0.1 + 0.2 is 0.3,
    so a sum that is a whole number in decimal is not rounded up by a binary float error."""
    d = [Decimal(str(x)) for x in (index, corpus, model, per_worker, headroom)]
    return math.ceil(d[0] + d[1] + d[2] + workers * d[3] + d[4])


@pytest.mark.parametrize(
    ("index", "corpus", "model", "workers", "per_worker", "headroom"),
    [
        (0.1, 0.1, 0.1, 1, 0.75, 0.5),  # chart defaults: the demo -> 2Gi
        (60.1, 13, 0.5, 1, 1, 2),  # Search-R1 e5 Flat -> 77Gi
        (60.1, 13, 0.5, 4, 1.5, 2),  # more workers add only their overhead (the index is shared)
        (8, 2, 0, 1, 1, 1),  # exact integer: no rounding up
        (300, 40, 1.25, 2, 2, 8),  # a huge index
        (0.1, 0.2, 13.3, 1, 1.1, 0.3),  # 15 in decimal (binary floats would give 15.000000000000002 -> 16)
    ],
)
def test_memory_request_equals_limit_from_formula(
    index: float, corpus: float, model: float, workers: int, per_worker: float, headroom: float
) -> None:
    r = render(
        set_values={
            "index.sizeGiB": index,
            "corpus.sizeGiB": corpus,
            "model.sizeGiB": model,
            "server.workers": workers,
            "memory.perWorkerOverheadGiB": per_worker,
            "memory.headroomGiB": headroom,
        }
    )
    resources = r.server["resources"]
    expected = f"{formula_gib(index, corpus, model, workers, per_worker, headroom)}Gi"
    assert resources["requests"]["memory"] == expected
    assert resources["limits"]["memory"] == expected
    assert env_of(r.server)["RETRIEVER_WORKERS"] == str(workers)


def test_sizes_from_set_strings() -> None:
    """`helm install --set index.sizeGiB=60.1` passes a string (Helm's --set parses no floats)."""
    r = render(set_values={"index.sizeGiB": "60.1", "corpus.sizeGiB": "13", "memory.headroomGiB": "2"})
    assert r.server["resources"]["requests"]["memory"] == f"{formula_gib(60.1, 13, 0.1, 1, 0.75, 2)}Gi" == "76Gi"


def test_default_memory_and_cpu() -> None:
    resources = render().server["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    with_limit = render(set_values={"cpu.limit": "4"}).server["resources"]
    assert with_limit["limits"] == {"cpu": "4", "memory": "2Gi"}


def test_explicit_resources_are_used_verbatim() -> None:
    r = render([ci("autoscaling-pods")])
    values = yaml.safe_load(ci("autoscaling-pods").read_text())
    assert r.server["resources"] == values["resources"]


def test_explicit_resources_need_a_memory_request() -> None:
    err = render_error(set_values={"resources": {"limits": {"memory": "8Gi"}}})
    assert "resources is set but has no requests.memory" in err


# --- probes -------------------------------------------------------------------------------------------


def test_probes(ci_rendered: Rendered) -> None:
    server = ci_rendered.server
    assert server["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    startup, ready, live = server["startupProbe"], server["readinessProbe"], server["livenessProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert ready["httpGet"] == {"path": "/health", "port": "http"}
    # Liveness must not depend on the index, or slow loads become restart loops.
    assert live["httpGet"] == {"path": "/livez", "port": "http"}


def test_default_startup_budget_covers_30_minutes() -> None:
    startup = render().server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60


def test_startup_budget_comes_from_values() -> None:
    r = render(
        set_values={
            "probes.startup.periodSeconds": 20,
            "probes.startup.failureThreshold": 270,
            "progressDeadlineSeconds": 6000,
        }
    )
    startup = r.server["startupProbe"]
    assert (startup["periodSeconds"], startup["failureThreshold"]) == (20, 270)
    # 90 minutes of loading need a longer progress deadline than the default 40 minutes.
    err = render_error(set_values={"probes.startup.periodSeconds": 20, "probes.startup.failureThreshold": 270})
    assert "startup probe budget" in err and "5400" in err


# --- graceful stop ------------------------------------------------------------------------------------


def test_graceful_stop(ci_rendered: Rendered) -> None:
    spec, server = ci_rendered.pod_spec, ci_rendered.server
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep_s = int(command[1])
    graceful_s = int(env_of(server)["RETRIEVER_GRACEFUL_TIMEOUT_S"])
    assert sleep_s > 0 and graceful_s > 0
    assert spec["terminationGracePeriodSeconds"] > sleep_s + graceful_s


def test_graceful_values_reach_the_pod() -> None:
    r = render(
        set_values={
            "lifecycle.preStopSleepSeconds": 15,
            "server.gracefulTimeoutSeconds": 120,
            "terminationGracePeriodSeconds": 140,
        }
    )
    assert r.server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "15"]
    assert env_of(r.server)["RETRIEVER_GRACEFUL_TIMEOUT_S"] == "120"
    assert r.pod_spec["terminationGracePeriodSeconds"] == 140


@pytest.mark.parametrize("grace", [40, 25])
def test_grace_period_too_short_fails(grace: int) -> None:
    err = render_error(set_values={"terminationGracePeriodSeconds": grace})
    assert (
        f"terminationGracePeriodSeconds ({grace}) must be greater than lifecycle.preStopSleepSeconds (10) "
        "+ server.gracefulTimeoutSeconds (30) = 40"
    ) in err


def test_grace_period_just_enough_renders() -> None:
    assert render(set_values={"terminationGracePeriodSeconds": 41}).pod_spec["terminationGracePeriodSeconds"] == 41


# --- HPA: CPU or a per-pod metric, never memory; bounded by the memory budget and the nodes ----------


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


# --- PodDisruptionBudget ------------------------------------------------------------------------------


def test_pdb(ci_rendered: Rendered) -> None:
    pdb = ci_rendered.get("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"] == selector_labels(ci_rendered)


# --- Service ------------------------------------------------------------------------------------------


def test_service(ci_rendered: Rendered) -> None:
    svc = ci_rendered.get("Service")
    assert svc["metadata"]["name"] == FULLNAME
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == selector_labels(ci_rendered)
    assert any(p["name"] == "http" and p["containerPort"] == 8000 for p in ci_rendered.server["ports"])


# --- ServiceMonitor, PrometheusRule, dashboards -------------------------------------------------------


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


def _alert_groups(chart: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted((chart / "files" / "alerts").glob("*.yaml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def test_prometheus_rule_holds_the_chart_alert_files() -> None:
    r = render([ci("monitoring")])
    groups = _alert_groups(CHART)
    rule = r.maybe("PrometheusRule")
    if not groups:
        assert rule is None  # nothing synced yet: no empty PrometheusRule
        return
    assert rule is not None
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == groups
    for group in rule["spec"]["groups"]:
        for rule_ in group["rules"]:
            assert "alert" in rule_ or "record" in rule_


def test_prometheus_rule_concatenates_every_alert_file(chart_copy: Path) -> None:
    alerts = chart_copy / "files" / "alerts"
    for f in alerts.glob("*.yaml"):
        f.unlink()
    a = {
        "groups": [
            {
                "name": "a",
                "rules": [
                    {"alert": "A", "expr": "up == 0", "for": "5m", "annotations": {"summary": "{{ $labels.pod }} down"}}
                ],
            }
        ]
    }
    b = {
        "groups": [
            {"name": "b", "rules": [{"record": "x:y", "expr": "sum(up)"}]},
            {"name": "c", "rules": [{"alert": "C", "expr": "vector(1) > 0"}]},
        ]
    }
    (alerts / "10-a.yaml").write_text(yaml.safe_dump(a))
    (alerts / "20-b.yaml").write_text(yaml.safe_dump(b))
    (alerts / "notes.txt").write_text("not a rule file")
    rule = render([ci("monitoring")], chart=chart_copy).get("PrometheusRule")
    assert rule["spec"]["groups"] == a["groups"] + b["groups"]  # templates in annotations pass through untouched


def test_prometheus_rule_rejects_a_file_without_groups(chart_copy: Path) -> None:
    (chart_copy / "files" / "alerts" / "bad.yaml").write_text("rules: []\n")
    assert "bad.yaml has no `groups:` list" in render_error([ci("monitoring")], chart=chart_copy)


def test_one_dashboard_configmap_per_chart_dashboard() -> None:
    r = render([ci("monitoring")])
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    cms = r.all("ConfigMap")
    assert len(cms) == len(files)
    by_key = {next(iter(cm["data"])): cm for cm in cms}
    for f in files:
        cm = by_key[f.name]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Retrieval"}
        assert cm["data"][f.name] == f.read_text()  # byte for byte


def test_dashboard_configmaps_from_files(chart_copy: Path) -> None:
    dash = chart_copy / "files" / "dashboards"
    for f in dash.glob("*.json"):
        f.unlink()
    (dash / "Retriever_Overview.json").write_text('{"uid": "a", "title": "A <&> é"}\n')
    (dash / "capacity.json").write_text('{"uid": "b", "title": "B"}')
    cms = render([ci("monitoring")], chart=chart_copy).all("ConfigMap")
    names = sorted(cm["metadata"]["name"] for cm in cms)
    assert names == [f"{FULLNAME}-dashboard-capacity", f"{FULLNAME}-dashboard-retriever-overview"]
    data = {k: v for cm in cms for k, v in cm["data"].items()}
    assert data == {
        "Retriever_Overview.json": '{"uid": "a", "title": "A <&> é"}\n',
        "capacity.json": '{"uid": "b", "title": "B"}',
    }
    assert all(cm["metadata"]["labels"]["grafana_dashboard"] == "1" for cm in cms)


# --- NetworkPolicy ------------------------------------------------------------------------------------


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


# --- security context ---------------------------------------------------------------------------------


def _all_pod_specs(r: Rendered) -> list[dict[str, Any]]:
    return [r.pod_spec, r.test_pod["spec"]]


def test_security_context(ci_rendered: Rendered) -> None:
    for spec in _all_pod_specs(ci_rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
            assert mount(c, "tmp")["mountPath"] == "/tmp"
    # Writable emptyDirs where the server writes: /tmp and its cache dir.
    spec, server = ci_rendered.pod_spec, ci_rendered.server
    assert "emptyDir" in volume(spec, "tmp") and "emptyDir" in volume(spec, "cache")
    assert mount(server, "cache")["mountPath"] == "/var/cache/retriever"
    assert env_of(server)["RETRIEVER_DATA_DIR"] == "/var/cache/retriever"
    sa = ci_rendered.get("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == sa["metadata"]["name"]


# --- index sources ------------------------------------------------------------------------------------


def test_index_source_none_serves_the_baked_demo() -> None:
    r = render()
    assert "index" not in [v["name"] for v in r.pod_spec["volumes"]]
    assert "RETRIEVER_INDEX_DIR" not in env_of(r.server)
    assert "initContainers" not in r.pod_spec


def test_index_source_pvc() -> None:
    r = render([ci("pvc")])
    assert volume(r.pod_spec, "index")["persistentVolumeClaim"] == {"claimName": "wiki18-e5-flat", "readOnly": True}
    m = mount(r.server, "index")
    assert m == {"name": "index", "mountPath": "/data/index", "readOnly": True, "subPath": "e5-flat"}
    assert env_of(r.server)["RETRIEVER_INDEX_DIR"] == "/data/index"


def test_index_source_host_path() -> None:
    r = render([ci("hostpath")])
    assert volume(r.pod_spec, "index")["hostPath"] == {"path": "/mnt/nvme/retriever/index", "type": "Directory"}
    assert mount(r.server, "index") == {"name": "index", "mountPath": "/data/index", "readOnly": True}
    assert r.pod_spec["nodeSelector"] == {"retriever.io/index": "wiki18-hnsw"}


def test_index_source_init_container() -> None:
    r = render([ci("initcontainer")])
    values = yaml.safe_load(ci("initcontainer").read_text())["index"]["initContainer"]
    assert volume(r.pod_spec, "index")["emptyDir"] == {"sizeLimit": "20Gi"}
    fetch = container(r.pod_spec, "fetch-index")
    assert fetch in r.pod_spec["initContainers"]
    assert fetch["image"] == "docker.io/amazon/aws-cli:2.17.0"
    assert fetch["command"] == values["command"] and fetch["args"] == values["args"]
    assert env_of(fetch)["AWS_REGION"] == "eu-west-1" and env_of(fetch)["INDEX_DIR"] == "/data/index"
    assert mount(fetch, "index") == {"name": "index", "mountPath": "/data/index"}  # writable for the fetcher
    assert mount(r.server, "index")["readOnly"] is True  # read-only for the server
    assert fetch["resources"]["limits"]["memory"] == "1Gi"


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        ({"index.source": "pvc"}, "index.pvc.claimName is empty"),
        ({"index.source": "hostPath"}, "index.hostPath.path is empty"),
        ({"index.source": "initContainer"}, "index.initContainer.image.repository or index.initContainer.command"),
    ],
)
def test_index_source_without_its_settings_fails(set_values: dict[str, Any], message: str) -> None:
    assert message in render_error(set_values=set_values)


# --- auth ---------------------------------------------------------------------------------------------


def test_auth_secret_created_from_values() -> None:
    import base64

    r = render([ci("auth")])
    secret = r.get("Secret")
    assert secret["metadata"]["name"] == f"{FULLNAME}-auth"
    assert base64.b64decode(secret["data"]["tokens"]).decode() == "ci-token-0123456789abcdef\nci-token-second\n"
    vol = volume(r.pod_spec, "auth")["secret"]
    assert vol["secretName"] == secret["metadata"]["name"]
    assert vol["items"] == [{"key": "tokens", "path": "tokens"}]
    m = mount(r.server, "auth")
    assert m["readOnly"] is True
    assert env_of(r.server)["RETRIEVER_AUTH_TOKENS_FILE"] == f"{m['mountPath']}/tokens"
    # Tokens are a file, never env values.
    assert "ci-token" not in str(r.server["env"])
    # The helm test pod authenticates with the same file.
    test = r.test_pod["spec"]
    assert volume(test, "auth")["secret"]["secretName"] == secret["metadata"]["name"]
    assert env_of(test["containers"][0])["TOKENS_FILE"] == f"{mount(test['containers'][0], 'auth')['mountPath']}/tokens"


def test_auth_existing_secret() -> None:
    r = render([ci("networkpolicy")])
    assert r.maybe("Secret") is None
    vol = volume(r.pod_spec, "auth")["secret"]
    assert vol["secretName"] == "retriever-tokens"
    assert vol["items"] == [{"key": "tokens.txt", "path": "tokens.txt"}]
    assert env_of(r.server)["RETRIEVER_AUTH_TOKENS_FILE"].endswith("/tokens.txt")


def test_auth_off_by_default() -> None:
    r = render()
    assert r.maybe("Secret") is None
    assert "RETRIEVER_AUTH_TOKENS_FILE" not in env_of(r.server)


def test_auth_without_tokens_fails() -> None:
    assert "neither auth.existingSecret nor auth.tokens" in render_error(set_values={"auth.enabled": True})


# --- env ----------------------------------------------------------------------------------------------


def test_extra_env_and_server_settings() -> None:
    env = env_of(render([ci("pvc")]).server)
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["RETRIEVER_MAX_QUEUE"] == "8192"
    assert env["RETRIEVER_OVERLOAD_STATUS"] == "503"
    assert env["RETRIEVER_HOST"] == "0.0.0.0" and env["RETRIEVER_PORT"] == "8000"


def test_server_settings_cannot_override_chart_managed_env() -> None:
    assert "server.settings.port is managed by the chart" in render_error(set_values={"server.settings.port": 9000})


# --- images -------------------------------------------------------------------------------------------


def test_images() -> None:
    assert render().server["image"] == "ghcr.io/retriever/retriever:0.1.0"
    assert render([ci("auth")]).server["image"] == "localhost/retriever:dev"
    digest = "sha256:" + "ab" * 32
    assert render(set_values={"image.digest": digest}).server["image"] == f"ghcr.io/retriever/retriever@{digest}"
    r = render([ci("auth")])
    assert r.test_pod["spec"]["containers"][0]["image"] == r.server["image"]
