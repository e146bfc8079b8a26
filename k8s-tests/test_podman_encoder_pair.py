"""End to end, no cluster: the chart with `encoder.enabled`, run by `podman kube play` as a pair: the
index-only image (no torch) and infinity serving the bundled MiniLM, each in its own container.

podman kube play has no Services and no cluster DNS, and this machine's tests keep traffic on
loopback, so the test puts the rendered encoder container into the index pod (its own container,
its own image, args, env and securityContext, as the chart renders them) and maps the encoder
Service's name to 127.0.0.1 with `hostAliases`: the index container calls the URL the chart gave
it (`http://<release>-encoder:7997`) unchanged. Checked:
  1. the pair becomes ready; /retrieve finds a labelled query's article through the encoder;
  2. the index container has no torch (the index-only image) and RETRIEVER_ENCODER_URL is the chart's;
  3. the encoder container stopped: /retrieve answers 503 saying the encoder service is unavailable,
     /livez stays 200 (liveness never depends on the encoder); started again: /retrieve recovers;
  4. `podman kube down` removes the pod.

Run with `make podman-e2e-encoder` (builds both images first; part of `make test`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from chart_helpers import env_of, render, tool_path
from test_podman_e2e import _logs, _stopped, free_port, podman

from app.devtools.server import ServerNotReady, wait_http_ok

INDEX_IMAGE = os.environ.get("RETRIEVER_E2E_INDEX_ONLY_IMAGE", "localhost/retriever:dev-indexonly")
ENCODER_IMAGE = os.environ.get("RETRIEVER_E2E_ENCODER_IMAGE", "localhost/retriever-infinity:dev")
RELEASE = "retriever-pair"
ENCODER_SERVICE = f"{RELEASE}-encoder"
HEALTH_TIMEOUT_S = 300
# A labelled demo query (Wikidata short description) and the article it names, in the baked demo index.
QUERY, TITLE = "Spiritual leader of Tibet since 1940", "14th Dalai Lama"

pytestmark = pytest.mark.timeout(HEALTH_TIMEOUT_S + 600)


@pytest.fixture(scope="module")
def images() -> None:
    for image, target in ((INDEX_IMAGE, "image-index-only"), (ENCODER_IMAGE, "image-infinity")):
        if podman("image", "exists", image, check=False).returncode != 0:
            pytest.fail(f"{image} is missing: `make {target}` builds it (make podman-e2e-encoder does)")


@pytest.fixture(scope="module")
def manifest(images: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tool_path("HELM")
    index_repo, _, index_tag = INDEX_IMAGE.rpartition(":")
    encoder_repo, _, encoder_tag = ENCODER_IMAGE.rpartition(":")
    rendered = render(
        set_values={
            "image.repository": index_repo, "image.tag": index_tag, "image.pullPolicy": "Never",
            "encoder.enabled": True,
            "encoder.image.repository": encoder_repo, "encoder.image.tag": encoder_tag,
            "encoder.image.pullPolicy": "Never",
            "encoder.args": [
                "v2", "--model-id", "/models/all-MiniLM-L6-v2", "--served-model-name", "all-MiniLM-L6-v2",
                "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", "7997",
                "--url-prefix", "/v1",
            ],
            "encoder.unhealthyAfterSeconds": 5,
        },
        release=RELEASE,
        namespace="default",
    )  # fmt: skip
    server_env = env_of(rendered.server)
    assert server_env["RETRIEVER_ENCODER_URL"] == f"http://{ENCODER_SERVICE}:7997"
    deployment = copy.deepcopy(rendered.deployment)
    pod_spec = deployment["spec"]["template"]["spec"]
    encoder_spec = rendered.encoder_deployment["spec"]["template"]["spec"]
    (encoder,) = copy.deepcopy(encoder_spec["containers"])
    # Its own volumes, renamed so they do not clash with the index container's tmp/cache.
    renamed = {v["name"]: f"encoder-{v['name']}" for v in encoder_spec["volumes"]}
    for mount in encoder["volumeMounts"]:
        mount["name"] = renamed[mount["name"]]
    pod_spec["volumes"] += [{**v, "name": renamed[v["name"]]} for v in encoder_spec["volumes"]]
    encoder.pop("ports", None)  # nothing outside the pod calls it
    pod_spec["containers"].append(encoder)
    pod_spec["hostAliases"] = [{"ip": "127.0.0.1", "hostnames": [ENCODER_SERVICE]}]
    port = free_port()
    for p in pod_spec["containers"][0]["ports"]:
        if p["name"] == "http":
            p["hostPort"], p["hostIP"] = port, "127.0.0.1"
    path = tmp_path_factory.mktemp("kube") / "retriever-pair.yaml"
    path.write_text(yaml.safe_dump(deployment, sort_keys=False))
    return {"path": path, "base": f"http://127.0.0.1:{port}"}


def _container(pod: str, suffix: str) -> str:
    names = podman("ps", "-a", "--filter", f"pod={pod}", "--format", "{{.Names}}").stdout.split()
    found = [n for n in names if n.endswith(suffix)]
    assert len(found) == 1, (pod, names)
    return found[0]


@pytest.fixture(scope="module")
def pair(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    path = str(manifest["path"])
    podman("kube", "down", path, check=False)
    podman("kube", "play", "--replace", path, timeout=300)
    try:
        pods = [n for n in podman("pod", "ps", "--format", "{{.Name}}").stdout.split() if n.startswith(RELEASE)]
        assert len(pods) == 1, pods
        server, encoder = _container(pods[0], "-retriever"), _container(pods[0], "-encoder")

        try:
            wait_http_ok(
                f"{manifest['base']}/health",
                timeout=HEALTH_TIMEOUT_S,
                what="the server and encoder pair",
                gone=_stopped(server, encoder),
                log=lambda: f"{_logs(server)}\n{_logs(encoder)}",
                interval=1.0,
            )
        except ServerNotReady as exc:
            pytest.fail(str(exc))
        yield {**manifest, "server": server, "encoder": encoder}
    finally:
        podman("kube", "down", path, check=False, timeout=120)
    assert not [n for n in podman("pod", "ps", "--format", "{{.Name}}").stdout.split() if n.startswith(RELEASE)]


def _retrieve(base: str) -> httpx.Response:
    return httpx.post(f"{base}/retrieve", json={"queries": [QUERY], "topk": 3, "return_scores": True}, timeout=30)


def test_pair_answers_through_the_encoder_service(pair: dict[str, Any]) -> None:
    response = _retrieve(pair["base"])
    assert response.status_code == 200, response.text
    titles = [item["document"]["contents"].split("\n", 1)[0].strip('"') for item in response.json()["result"][0]]
    assert TITLE in titles, titles
    info = httpx.get(f"{pair['base']}/info", timeout=10).json()
    assert info["model"]["service"] == f"http://{ENCODER_SERVICE}:7997"


def test_index_container_has_no_torch(pair: dict[str, Any]) -> None:
    probe = podman("exec", pair["server"], "python3", "-c", "import torch", check=False)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr


def test_encoder_restart_fails_only_searches_and_recovers(pair: dict[str, Any]) -> None:
    base = pair["base"]
    podman("stop", "-t", "5", pair["encoder"], timeout=60)
    try:
        refused = _retrieve(base)
        assert refused.status_code == 503, refused.text
        assert "encoder service unavailable" in refused.json()["detail"]
        assert refused.headers.get("Retry-After")
        assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
    finally:
        podman("start", pair["encoder"], timeout=60)
    deadline = time.monotonic() + 180
    while (status := _retrieve(base).status_code) != 200:
        assert time.monotonic() < deadline, f"/retrieve still {status} 180 s after the encoder restarted"
        time.sleep(1)
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200
