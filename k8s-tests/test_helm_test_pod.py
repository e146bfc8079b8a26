"""The `helm test` pod (templates/tests/): its shape, and its script run for real against a local stub
of the service, so a broken check or a check that cannot fail is caught here rather than in a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import Rendered, ci, env_of, render
from stub_server import GOOD, stub_server


def test_test_pod_is_a_helm_test_hook(ci_rendered: Rendered) -> None:
    pod = ci_rendered.test_pod
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    c = pod["spec"]["containers"][0]
    assert c["command"][:2] == ["python3", "-c"]
    svc = ci_rendered.get("Service")
    port = svc["spec"]["ports"][0]["port"]
    url = f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{port}/retrieve"
    assert env_of(c)["RETRIEVE_URL"] == url


def run_test_pod(r: Rendered, url: str, tokens_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the test pod's container command locally with its env, pointed at `url`."""
    c = r.test_pod["spec"]["containers"][0]
    env = {**os.environ, **env_of(c), "RETRIEVE_URL": url}
    if tokens_file is not None:
        env["TOKENS_FILE"] = str(tokens_file)
    # Keep the retry loop but not its 3 s sleeps.
    script = "import time\ntime.sleep = lambda s: None\n" + c["command"][2]
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_test_pod_passes_on_a_search_r1_answer() -> None:
    r = render()
    with stub_server(lambda body: (200, GOOD)) as stub:
        proc = run_test_pod(r, stub.url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: 2 hits" in proc.stdout
    headers, body = stub.requests[0]
    assert body == {"queries": ["Who wrote Paradise Lost?"], "topk": 3, "return_scores": True}
    assert "Authorization" not in headers


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"result": []}, "one entry per query"),
        ({"result": [[]]}, "expected 1..3 hits"),
        ({"result": [[GOOD["result"][0][0]] * 4]}, "expected 1..3 hits"),
        ({"result": [[{"document": {"id": "1", "contents": "x"}}]]}, "without a numeric score"),
        ({"result": [[{"document": {"contents": "x"}, "score": 1.0}]]}, "without document.id"),
        ({"result": [[{"id": "1", "contents": "x"}]]}, "without a numeric score"),  # rows without scores
        ([1, 2], "one entry per query"),
    ],
)
def test_test_pod_fails_on_a_wrong_answer(answer: Any, message: str) -> None:
    with stub_server(lambda body: (200, answer)) as stub:
        proc = run_test_pod(render(), stub.url)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_test_pod_fails_when_the_server_errors() -> None:
    with stub_server(lambda body: (503, {"detail": "loading"})) as stub:
        proc = run_test_pod(render(), stub.url)
    assert proc.returncode != 0
    assert "FAIL: POST" in proc.stderr and "503" in proc.stderr
    assert len(stub.requests) == 10  # it retried before giving up


def test_test_pod_sends_the_bearer_token(tmp_path: Path) -> None:
    r = render([ci("auth")])
    tokens = tmp_path / "tokens"
    tokens.write_text("# rotated 2025-01\nci-token-0123456789abcdef\nci-token-second\n")
    with stub_server(lambda body: (200, GOOD)) as stub:
        proc = run_test_pod(r, stub.url, tokens_file=tokens)
    assert proc.returncode == 0, proc.stderr
    headers, _ = stub.requests[0]
    assert headers["Authorization"] == "Bearer ci-token-0123456789abcdef"
