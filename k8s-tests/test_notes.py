"""`helm install --dry-run=client` prints NOTES whose commands work: the port-forward names the real
Service and port, the curl command (run here by bash against a loopback stub) sends a valid Search-R1
request, and the token one-liner extracts a token with the real kubectl (offline, `label --local`)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, NAMESPACE, RELEASE, ci, helm, tool_path
from stub_server import GOOD, stub_server


def dry_run(*args: str) -> tuple[str, list[dict[str, Any]]]:
    """(NOTES text, rendered objects) of a client-side dry-run install."""
    proc = helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\nNOTES:\n" in out, out[-2000:]
    manifest, notes = out.split("\nNOTES:\n", 1)
    manifest = manifest.split("\nMANIFEST:\n", 1)[1]
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    return notes, docs


def curl_command(notes: str) -> str:
    match = re.search(r"^ *(curl .*?)(?:\n\n|\Z)", notes, re.S | re.M)
    assert match, notes
    return match.group(1).strip()


@pytest.mark.parametrize("values", [[], ["-f", str(ci("monitoring"))]], ids=["defaults", "monitoring"])
def test_notes_port_forward_matches_the_service(values: list[str]) -> None:
    notes, docs = dry_run(*values)
    [svc] = [d for d in docs if d["kind"] == "Service"]
    name, port = svc["metadata"]["name"], svc["spec"]["ports"][0]["port"]
    assert f"kubectl --namespace {NAMESPACE} port-forward svc/{name} 8000:{port}" in notes
    assert re.search(r"^ *kubectl --namespace \S+ port-forward svc/\S+ 8000:80$", notes, re.M)
    assert "curl -s -X POST http://127.0.0.1:8000/retrieve" in notes
    assert "WARNING" not in notes  # the synced alerts and dashboards are in the chart


def test_notes_curl_command_sends_a_search_r1_request() -> None:
    notes, _ = dry_run("--set-string", 'tests.query=Who\'s the "author" of Paradise Lost?')
    command = curl_command(notes)
    with stub_server(lambda body: (200, GOOD)) as stub:
        proc = subprocess.run(
            ["bash", "-c", command.replace("http://127.0.0.1:8000/retrieve", stub.url)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 0, proc.stderr
    headers, body = stub.requests[0]
    assert body == {"queries": ['Who\'s the "author" of Paradise Lost?'], "topk": 3, "return_scores": True}
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers


def test_notes_with_auth_send_the_token(tmp_path: Path) -> None:
    notes, docs = dry_run("-f", str(ci("auth")))
    command = curl_command(notes)
    with stub_server(lambda body: (200, GOOD)) as stub:
        proc = subprocess.run(
            ["bash", "-c", command.replace("http://127.0.0.1:8000/retrieve", stub.url)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "RETRIEVER_TOKEN": "ci-token-0123456789abcdef"},
        )
    assert proc.returncode == 0, proc.stderr
    assert stub.requests[0][0]["Authorization"] == "Bearer ci-token-0123456789abcdef"

    # The one-liner that reads a token from the Secret, with `kubectl get secret NAME` swapped for an
    # offline `kubectl label --local -f FILE` so the real jsonpath/base64/grep pipeline runs here.
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    _check_token_one_liner(notes, secret, tmp_path, "ci-token-0123456789abcdef")


def test_notes_token_one_liner_with_a_dotted_key(tmp_path: Path) -> None:
    notes, _ = dry_run("-f", str(ci("networkpolicy")))  # existingSecret retriever-tokens, key tokens.txt
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "retriever-tokens", "namespace": NAMESPACE},
        "data": {"tokens.txt": base64.b64encode(b"# ops\nfirst-token-xyz\nsecond\n").decode()},
    }
    _check_token_one_liner(notes, secret, tmp_path, "first-token-xyz")


def _check_token_one_liner(notes: str, secret: dict[str, Any], tmp_path: Path, expected: str) -> None:
    match = re.search(r"^ *export RETRIEVER_TOKEN=\$\((.*)\)$", notes, re.M)
    assert match, notes
    pipeline = match.group(1)
    get = f"kubectl --namespace {NAMESPACE} get secret {secret['metadata']['name']} "
    assert pipeline.startswith(get), pipeline
    secret_file = tmp_path / "secret.yaml"
    secret_file.write_text(yaml.safe_dump(secret))
    offline = f"{tool_path('KUBECTL')} label --local -f {secret_file} checked=yes " + pipeline[len(get) :]
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {offline}"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
