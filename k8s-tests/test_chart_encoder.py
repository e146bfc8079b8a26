"""The optional encoder service (values `encoder.*`): an embedding server Deployment + Service that
the index pods call (`RETRIEVER_ENCODER_URL`), rendered with the real `helm template`."""

from __future__ import annotations

from typing import Any

import pytest
from chart_helpers import FULLNAME, Rendered, ci, container, env_of, render, render_error

ENCODER = f"{FULLNAME}-encoder"


@pytest.fixture(scope="module")
def with_encoder() -> Rendered:
    return render([ci("encoder")])


def encoder_container(r: Rendered) -> dict[str, Any]:
    return container(r.encoder_deployment["spec"]["template"]["spec"], "encoder")


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_no_encoder_objects_or_env_by_default() -> None:
    r = render()
    assert [d["metadata"]["name"] for d in r.docs if "encoder" in d["metadata"]["name"]] == []
    assert not [name for name in env_of(r.server) if name.startswith("RETRIEVER_ENCODER_")]


def test_index_pods_call_the_encoder_service_by_its_name_and_port(with_encoder: Rendered) -> None:
    service = with_encoder.get("Service", ENCODER)
    env = env_of(with_encoder.server)
    port = service["spec"]["ports"][0]["port"]
    assert env["RETRIEVER_ENCODER_URL"] == f"http://{ENCODER}:{port}"
    assert env["RETRIEVER_ENCODER_API"] == "openai"
    assert env["RETRIEVER_ENCODER_SAME_MODEL"] == "false"
    # The encoder listens where its Service sends traffic.
    ports = encoder_container(with_encoder)["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert [p["containerPort"] for p in ports if p["name"] == "http"] == [port]


def test_encoder_and_server_select_only_their_own_pods(with_encoder: Rendered) -> None:
    encoder_pods = with_encoder.encoder_deployment["spec"]["template"]["metadata"]["labels"]
    server_pods = with_encoder.deployment["spec"]["template"]["metadata"]["labels"]
    encoder_service = with_encoder.get("Service", ENCODER)["spec"]["selector"]
    assert matches(encoder_service, encoder_pods) and not matches(encoder_service, server_pods)
    for kind in ("Service", "PodDisruptionBudget", "Deployment"):
        obj = with_encoder.get(kind, FULLNAME)
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert matches(selector, server_pods) and not matches(selector, encoder_pods), kind


def test_encoder_image_and_args_are_configurable() -> None:
    args = ["--model-id", "/models/e5", "--port", "8080"]
    r = render(
        [ci("encoder")],
        {"encoder.image.repository": "ghcr.io/huggingface/text-embeddings-inference", "encoder.image.tag": "cpu-1.8",
         "encoder.args": args, "encoder.port": 8080, "encoder.api": "tei"},
    )  # fmt: skip
    c = encoder_container(r)
    assert c["image"] == "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8"
    assert c["args"] == args
    assert env_of(r.server)["RETRIEVER_ENCODER_URL"] == f"http://{ENCODER}:8080"
    assert env_of(r.server)["RETRIEVER_ENCODER_API"] == "tei"


def test_default_encoder_is_infinity_serving_the_demo_model() -> None:
    c = encoder_container(render([], {"encoder.enabled": True}))
    assert c["image"].startswith("michaelf34/infinity:")
    assert (
        c["args"][0] == "v2" and "--url-prefix" in c["args"] and c["args"][c["args"].index("--url-prefix") + 1] == "/v1"
    )
    assert c["args"][c["args"].index("--served-model-name") + 1] == "all-MiniLM-L6-v2"  # the demo manifest's model


def test_index_pod_liveness_never_depends_on_the_encoder(with_encoder: Rendered) -> None:
    server = with_encoder.server
    assert server["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = env_of(server)
    # Readiness fails only after a sustained outage, longer than the readiness probe's own window.
    readiness = server["readinessProbe"]
    window = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert float(env["RETRIEVER_ENCODER_UNHEALTHY_AFTER_S"]) > window
    # An index pod that starts before its encoder waits as long as its startup probe allows (no crash loop).
    startup = server["startupProbe"]
    assert int(env["RETRIEVER_ENCODER_STARTUP_TIMEOUT_S"]) == startup["periodSeconds"] * startup["failureThreshold"]


def test_encoder_rollout_keeps_an_encoder_serving(with_encoder: Rendered) -> None:
    strategy = with_encoder.encoder_deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0 and strategy["maxSurge"] >= 1
    c = encoder_container(with_encoder)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}


def test_encoder_runs_locked_down_with_writable_cache(with_encoder: Rendered) -> None:
    spec = with_encoder.encoder_deployment["spec"]["template"]["spec"]
    c = encoder_container(with_encoder)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert env_of(c)["HF_HOME"].startswith("/cache")
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/cache", "/tmp"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1  # GPU values pass through
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_external_encoder_url_needs_no_encoder_deployment() -> None:
    r = render([], {"encoder.url": "http://tei.embeddings.svc:8080", "encoder.sameModel": True})
    assert len(r.all("Deployment")) == 1
    assert env_of(r.server)["RETRIEVER_ENCODER_URL"] == "http://tei.embeddings.svc:8080"
    assert env_of(r.server)["RETRIEVER_ENCODER_SAME_MODEL"] == "true"


def test_network_policy_admits_only_index_pods_to_the_encoder(with_encoder: Rendered) -> None:
    policy = with_encoder.get("NetworkPolicy", ENCODER)
    encoder_pods = with_encoder.encoder_deployment["spec"]["template"]["metadata"]["labels"]
    server_pods = with_encoder.deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["spec"]["podSelector"]["matchLabels"], encoder_pods)
    (rule,) = policy["spec"]["ingress"]
    assert [matches(peer["podSelector"]["matchLabels"], server_pods) for peer in rule["from"]] == [True]
    # The index pods' restricted egress lets them reach the encoder.
    egress = with_encoder.get("NetworkPolicy", FULLNAME)["spec"]["egress"]
    to_encoder = [
        r for r in egress if any(matches(p["podSelector"]["matchLabels"], encoder_pods) for p in r.get("to", []))
    ]
    assert to_encoder and to_encoder[0]["ports"][0]["port"] == 7997


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"encoder.enabled": True, "encoder.url": "http://x:1"}, "set one of them"),
        ({"server.settings": {"ENCODER_URL": "http://x:1"}}, "server.settings.ENCODER_URL is managed by the chart"),
        ({"encoder.url": "http://x:1", "encoder.unhealthyAfterSeconds": 5000}, "shorter than the startup probe budget"),
        ({"encoder.api": "grpc"}, "/encoder/api"),
        ({"encoder.url": "encoder:7997"}, "/encoder/url"),
        ({"encoder.replicas": 2}, "replicas"),
    ],
    ids=["enabled-and-url", "server-settings", "unhealthy-after-startup-budget", "api", "url-scheme", "unknown-key"],
)
def test_bad_encoder_values_are_refused(values: dict[str, Any], message: str) -> None:
    assert message in render_error([], values)
