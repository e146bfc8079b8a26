"""Live cluster: install the chart for real, query it through a port-forward, `helm test`, uninstall.

Runs only with `--cluster` or KUBECONFIG set, against the current kube context (see k8s-tests/README.md
for kind). The image must be pullable by the nodes (for kind: `kind load docker-image`).
Env: RETRIEVER_LIVE_IMAGE (default localhost/retriever:dev), RETRIEVER_LIVE_NAMESPACE (default a fresh
retriever-test-XXXXXX namespace, deleted afterwards), RETRIEVER_LIVE_VALUES (an extra values file).
"""

from __future__ import annotations

import http.client
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from chart_helpers import CHART, helm

PORT = 8000


@dataclass
class Release:
    name: str
    namespace: str
    created_namespace: bool
    core: Any  # kubernetes.client.CoreV1Api
    apps: Any  # kubernetes.client.AppsV1Api


def _live_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("--cluster") or os.environ.get("KUBECONFIG"))


@pytest.fixture(scope="module")
def release(request: pytest.FixtureRequest) -> Iterator[Release]:
    if not _live_requested(request.config):
        pytest.skip(
            "no Kubernetes cluster here: the live tests run only with KUBECONFIG set or `pytest --cluster` "
            "(k8s-tests/README.md shows how to run them against kind)"
        )
    try:
        from kubernetes import client, config
    except ImportError:
        pytest.fail("a live run needs the kubernetes Python client (`make install` puts it in .venv)", pytrace=False)
    config.load_kube_config()
    core, apps = client.CoreV1Api(), client.AppsV1Api()

    namespace = os.environ.get("RETRIEVER_LIVE_NAMESPACE") or f"retriever-test-{uuid.uuid4().hex[:6]}"
    created = not any(ns.metadata.name == namespace for ns in core.list_namespace().items)
    image = os.environ.get("RETRIEVER_LIVE_IMAGE", "localhost/retriever:dev")
    repository, _, tag = image.rpartition(":")
    args = [
        "install", "retriever", str(CHART), "--namespace", namespace, "--create-namespace",
        "--wait", "--timeout", "30m",
        "--set-string", f"image.repository={repository}", "--set-string", f"image.tag={tag}",
    ]  # fmt: skip
    if os.environ.get("RETRIEVER_LIVE_VALUES"):
        args += ["-f", os.environ["RETRIEVER_LIVE_VALUES"]]
    rel = Release("retriever", namespace, created, core, apps)
    try:
        proc = helm(*args, timeout=35 * 60)
        assert proc.returncode == 0, f"helm install failed:\n{proc.stdout}\n{proc.stderr}"
        yield rel
    finally:
        helm("uninstall", rel.name, "--namespace", namespace, "--wait", "--ignore-not-found", timeout=600)
        if created:
            core.delete_namespace(namespace)


def test_live_deployment_is_ready(release: Release) -> None:
    dep = release.apps.read_namespaced_deployment(release.name, release.namespace)
    assert dep.status.ready_replicas == dep.spec.replicas >= 1
    assert dep.spec.strategy.rolling_update.max_surge == 0


def _ready_pod(release: Release) -> str:
    selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=server"
    for pod in release.core.list_namespaced_pod(release.namespace, label_selector=selector).items:
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            return pod.metadata.name
    raise AssertionError(f"no ready server pod matching {selector}")


def _post_through_port_forward(release: Release, pod: str, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    from kubernetes.stream import portforward

    forward = portforward(release.core.connect_get_namespaced_pod_portforward, pod, release.namespace, ports=str(PORT))
    sock = forward.socket(PORT)
    sock.setblocking(True)
    sock.settimeout(120)
    try:
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
        response.begin()
        data = response.read()
    finally:
        sock.close()
    error = forward.error(PORT)
    assert error is None, f"port-forward error: {error}"
    return response.status, json.loads(data)


def test_live_retrieve_through_port_forward(release: Release) -> None:
    pod = _ready_pod(release)
    query = {"queries": ["Who wrote Paradise Lost?", "capital of France"], "topk": 3, "return_scores": True}
    status, answer = _post_through_port_forward(release, pod, "/retrieve", query)
    assert status == 200, answer
    result = answer["result"]
    assert len(result) == 2
    for hits in result:
        assert 1 <= len(hits) <= 3
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        for hit in hits:
            assert isinstance(hit["document"]["contents"], str) and "id" in hit["document"]


def test_live_helm_test(release: Release) -> None:
    proc = helm("test", release.name, "--namespace", release.namespace, "--logs", "--timeout", "10m", timeout=700)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok:" in proc.stdout


def test_live_uninstall(release: Release) -> None:
    proc = helm("uninstall", release.name, "--namespace", release.namespace, "--wait", "--timeout", "10m", timeout=700)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = release.apps.list_namespaced_deployment(
        release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}"
    ).items
    assert left == []
