"""Schema-driven fuzzing: schemathesis generates requests from the server's own /openapi.json.

The schemathesis CLI runs its coverage phase (boundary values, missing body, wrong types,
undeclared methods) and its fuzzing phase (Hypothesis-generated valid *and* invalid bodies)
against the real server on loopback, with every built-in check: no 5xx, status codes,
content types, headers and bodies as the schema documents them, invalid data refused,
valid data accepted, 405s listing the allowed methods. Then this test re-reads every
recorded response and checks what the project's bad-input rule adds: no stack trace in any body, and every
error is JSON `{"detail": ...}` naming the problem.

Bounded and deterministic: a fixed seed, a fixed number of examples, no example database
and no shrinking. `FUZZ_SEED` / `FUZZ_EXAMPLES` change them for a deeper local run.
(schemathesis's pytest plugin needs a pytest private attribute that pytest 9 removed, hence the CLI.)
"""

from __future__ import annotations

import base64
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import RunningServer

SEED = int(os.environ.get("FUZZ_SEED", "20261130"))
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))  # per operation, fuzzing phase
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def run_schemathesis(server: RunningServer, events: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{server.url}/openapi.json",
        "--checks=all",
        "--mode=all",  # valid and invalid data
        "--phases=examples,coverage,fuzzing",
        f"--max-examples={MAX_EXAMPLES}",
        f"--seed={SEED}",
        "--generation-database=none",
        "--no-shrink",
        "--suppress-health-check=all",  # "too slow" on a busy 2-core machine is not an API failure
        "--workers=1",
        "--request-timeout=60",
        "--report=ndjson",
        f"--report-ndjson-path={events}",
        "--no-color",
    ]
    env = os.environ | {"NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"}
    # A fresh working directory: no crash cache (.schemathesis/) replayed from an earlier run.
    return subprocess.run(command, capture_output=True, text=True, cwd=events.parent, env=env, timeout=900, check=False)


def recorded_interactions(events: Path) -> list[dict[str, Any]]:
    """Every request schemathesis sent and the response it got, from its NDJSON event log."""
    found: list[dict[str, Any]] = []
    for line in events.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished["recorder"]
        for case_id, interaction in recorder.get("interactions", {}).items():
            case = recorder["cases"][case_id]["value"]
            found.append(
                {
                    "phase": finished["phase"],
                    "label": f"{case['method']} {case['path']}",
                    "mode": case.get("meta", {}).get("generation", {}).get("mode"),
                    "response": interaction.get("response"),
                }
            )
    return found


def response_text(response: dict[str, Any]) -> str:
    content = response.get("content") or {}
    if "$base64" in content:
        return base64.b64decode(content["$base64"]).decode("utf-8", "replace")
    return str(content.get("string", ""))


def error_body_problem(status: int, text: str) -> str | None:
    """None when the body is acceptable; else what is wrong with it."""
    if "Traceback" in text or 'File "/' in text:
        return "stack trace in the body"
    if status < 400:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return "error body is not JSON"
    detail = body.get("detail") if isinstance(body, dict) else None
    if not detail or not isinstance(detail, (str, list)):
        return 'error body has no "detail" naming the problem'
    return None


def test_schemathesis_finds_no_failure(server: RunningServer, tmp_path: Path) -> None:
    events = tmp_path / "schemathesis.ndjson"
    result = run_schemathesis(server, events)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]

    interactions = recorded_interactions(events)
    statuses = collections.Counter(f"{i['label']} -> {i['response']['status_code']}" for i in interactions)
    modes = collections.Counter(i["mode"] for i in interactions)
    print(f"\nschemathesis (seed {SEED}): {len(interactions)} cases, {dict(modes)}")
    print(json.dumps(dict(sorted(statuses.items())), indent=1))

    # Bounded, and big enough to mean something.
    assert 150 <= len(interactions) <= 30 * MAX_EXAMPLES, len(interactions)
    assert modes["positive"] >= 50 and modes["negative"] >= 50, modes
    assert statuses["POST /retrieve -> 200"] >= 50, statuses
    assert any(key.startswith("POST /retrieve -> 4") for key in statuses), statuses
    assert {i["phase"] for i in interactions} >= {"coverage", "fuzzing"}

    problems = []
    for interaction in interactions:
        response = interaction["response"]
        if response is None:
            problems.append(f"{interaction['label']}: no response (connection error or timeout)")
            continue
        status = response["status_code"]
        if status >= 500:
            problems.append(f"{interaction['label']}: {status}")
        problem = error_body_problem(status, response_text(response))
        if problem:
            problems.append(f"{interaction['label']} -> {status}: {problem}: {response_text(response)[:200]}")
    assert not problems, problems[:20]

    # And nothing is stuck afterwards: a normal query is answered at once.
    started = time.monotonic()
    after = httpx.post(f"{server.url}/retrieve", json={"queries": ["Paradise Lost"], "topk": 3}, timeout=10)
    assert after.status_code == 200 and len(after.json()["result"][0]) == 3
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("status", "text", "wrong"),
    [
        (500, '{"detail": "x"}', False),  # the 5xx itself is counted separately
        (422, '{"detail": [{"loc": ["body"], "msg": "m", "type": "t"}]}', False),
        (404, "Not Found", True),
        (422, '{"detail": ""}', True),
        (400, '{"error": "bad"}', True),
        (200, 'Traceback (most recent call last):\n  File "/app/x.py"', True),
    ],
)
def test_error_body_rule_can_fail(status: int, text: str, wrong: bool) -> None:
    """The rule applied to every fuzzed response does reject what it should."""
    assert (error_body_problem(status, text) is not None) is wrong
