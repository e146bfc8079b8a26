"""helm lint --strict, rendering of every ci values file, the values schema and the values docs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, CI_VALUES, ci_id, helm, render, render_error

# The deployment scenarios the ci values must cover; deleting one of them must fail the suite.
REQUIRED_CI = {
    "defaults",
    "pvc",
    "hostpath",
    "initcontainer",
    "autoscaling-cpu",
    "autoscaling-pods",
    "monitoring",
    "auth",
    "networkpolicy",
    "gpu",
}


def test_ci_values_cover_every_scenario() -> None:
    assert {ci_id(p) for p in CI_VALUES} >= REQUIRED_CI


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["no-values", *[ci_id(p) for p in CI_VALUES]])
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    proc = helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_every_ci_values_file_renders(ci_values: Path) -> None:
    rendered = render([ci_values])
    kinds = {d["kind"] for d in rendered.docs}
    assert {"Deployment", "Service", "Pod"} <= kinds
    for doc in rendered.docs:
        assert doc["metadata"]["namespace"] == "retriever", doc["metadata"]  # never the default namespace
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "retriever"


# --- values.schema.json: typos and wrong types fail at install time -----------------------------------


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        ({"replicaCnt": 2}, "additional properties 'replicaCnt' not allowed"),
        ({"index.sizeGib": 3}, "additional properties 'sizeGib' not allowed"),
        ({"autoscaling.maxReplica": 3}, "additional properties 'maxReplica' not allowed"),
        ({"index.source": "s3"}, "index/source"),
        ({"index.sizeGiB": "big"}, "index/sizeGiB"),
        ({"server.workers": 0}, "server/workers"),
        ({"image.digest": "latest"}, "image/digest"),
        ({"metrics.serviceMonitor.interval": "30 seconds"}, "metrics/serviceMonitor/interval"),
    ],
)
def test_values_schema_rejects(set_values: dict[str, Any], message: str) -> None:
    err = render_error(set_values=set_values)
    assert "schema" in err and message in err, err


def _key_mismatches(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys of values.yaml without a schema entry and schema entries without a default, recursively
    through strict objects whose default is not empty (`affinity: {}` lists its allowed keys only)."""
    problems: list[str] = []
    props = schema.get("properties", {})
    for key in values.keys() - props.keys():
        problems.append(f"{prefix}{key}: in values.yaml, not in the schema")
    for key in props.keys() - values.keys() - {"global"}:
        problems.append(f"{prefix}{key}: in the schema, no default in values.yaml")
    for key in values.keys() & props.keys():
        value, sub = values[key], props[key]
        if isinstance(value, dict) and value and sub.get("additionalProperties") is False:
            problems += _key_mismatches(value, sub, f"{prefix}{key}.")
    return problems


def test_schema_and_values_describe_the_same_keys() -> None:
    """Every value has a schema entry and every schema entry a default in values.yaml."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert _key_mismatches(values, schema) == []


KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):")


def test_every_value_is_documented() -> None:
    """helm-docs style: each key has a `# --` comment, or sits under a documented parent object."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented: list[str] = []
    documented_parents: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while documented_parents and documented_parents[-1][0] >= indent:
            documented_parents.pop()
        j = i - 1
        comment: list[str] = []
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.insert(0, lines[j].strip())
            j -= 1
        has_doc = any(c.startswith("# --") for c in comment)
        parent_doc = any(doc for _, doc in documented_parents)
        is_object = line.rstrip().endswith(":")
        if not has_doc and not parent_doc and not is_object:
            undocumented.append(f"line {i + 1}: {line.strip()}")
        documented_parents.append((indent, has_doc))
    assert not undocumented, undocumented


def test_memory_formula_is_documented_in_values() -> None:
    text = (CHART / "values.yaml").read_text()
    flat = " ".join(line.strip("# ").strip() for line in text.splitlines())
    assert "ceil(index.sizeGiB + corpus.sizeGiB + model.sizeGiB" in flat
    assert "+ server.workers * memory.perWorkerOverheadGiB + memory.headroomGiB)" in flat
    assert "retriever plan" in flat


def test_packaged_chart_renders_like_the_source(tmp_path: Path) -> None:
    """`helm package` keeps what the templates read (files/) and drops what users don't need (ci/)."""
    proc = helm("package", str(CHART), "--destination", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    [tgz] = tmp_path.glob("retriever-*.tgz")
    listing = subprocess.run(["tar", "-tzf", str(tgz)], capture_output=True, text=True, check=True).stdout.split()
    assert "retriever/values.schema.json" in listing and "retriever/templates/NOTES.txt" in listing
    assert not [name for name in listing if name.startswith("retriever/ci/") or name.endswith(".gitkeep")]
    values = CHART / "ci" / "monitoring-values.yaml"
    assert render([values], chart=tgz).docs == render([values]).docs
