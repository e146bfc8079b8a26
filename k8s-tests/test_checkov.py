"""checkov over the chart: its kubernetes checks on the objects rendered from every ci values file
(`helm template --namespace retriever`, so the scan sees what an install creates, every optional
object included; checkov's own helm runner would render the defaults only, in namespace "default").

Every accepted failure is listed with its reason in k8s-tests/checkov-skips.yaml: global skips are
passed as --skip-check, per-resource ones are `checkov.io/skipN` annotations in the templates.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, REPO, tool_path

SKIPS_FILE = REPO / "k8s-tests" / "checkov-skips.yaml"


def skips() -> dict[str, list[dict[str, str]]]:
    return yaml.safe_load(SKIPS_FILE.read_text())


def checkov(directory: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run checkov (kubernetes framework, offline); returns (exit code, JSON reports, stderr)."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE"}
    proc = subprocess.run(
        [tool_path("CHECKOV"), "--framework", "kubernetes", "--skip-download", "--compact", "-o", "json",
         "-d", str(directory), *args],
        capture_output=True, text=True, env=env, timeout=300, cwd=directory,
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    return proc.returncode, report if isinstance(report, list) else [report], proc.stderr


def results(reports: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [r for report in reports for r in report.get("results", {}).get(key, [])]


@pytest.fixture(scope="module")
def with_skips(rendered_ci_dir: Path) -> tuple[int, list[dict[str, Any]], str]:
    ids = ",".join(s["id"] for s in skips()["skip"])
    return checkov(rendered_ci_dir, "--skip-check", ids)


def test_skip_list_gives_a_reason_for_every_skip() -> None:
    data = skips()
    assert set(data) == {"skip", "resourceSkips"}
    for entry in data["skip"] + data["resourceSkips"]:
        assert re.fullmatch(r"CKV2?_K8S_\d+", entry["id"]), entry
        assert len(entry["reason"].split()) >= 8, f"{entry['id']}: say why it is accepted"
    for entry in data["resourceSkips"]:
        template = CHART / entry["template"]
        assert re.search(rf"checkov\.io/skip\d+: {entry['id']}=\S", template.read_text()), (
            f"{entry['id']} is listed as annotated in {entry['template']} but the annotation is missing"
        )


def test_checkov_passes_with_the_listed_skips(with_skips: tuple[int, list[dict[str, Any]], str]) -> None:
    rc, reports, stderr = with_skips
    failed = [(r["check_id"], r["resource"], r["file_path"]) for r in results(reports, "failed_checks")]
    assert failed == [] and rc == 0, (failed, stderr[-2000:])
    assert all(report["summary"]["parsing_errors"] == 0 for report in reports)
    assert sum(report["summary"]["passed"] for report in reports) > 1000  # it really checked the objects
    resources = {r["resource"].split(".")[0] for r in results(reports, "passed_checks")}
    # checkov has checks for these kinds (none for PDB, HPA or NetworkPolicy objects themselves).
    assert {"Deployment", "Pod", "Service", "ServiceAccount", "Secret"} <= resources, resources


def test_annotation_skips_are_exactly_the_listed_ones(with_skips: tuple[int, list[dict[str, Any]], str]) -> None:
    _, reports, _ = with_skips
    seen = {
        (r["check_id"], r["resource"].split(".")[0], r["resource"].split(".")[-1])
        for r in results(reports, "skipped_checks")
    }
    listed = skips()["resourceSkips"]
    for check_id, kind, name in seen:
        assert any(s["id"] == check_id and s["kind"] == kind and name.endswith(s["nameSuffix"]) for s in listed), (
            f"{check_id} is skipped for {kind} {name} by an annotation not listed in {SKIPS_FILE.name}"
        )
    for s in listed:
        assert any(c == s["id"] and k == s["kind"] and n.endswith(s["nameSuffix"]) for c, k, n in seen), (
            f"{s['id']} is listed for {s['kind']} *{s['nameSuffix']} but checkov skipped no such resource"
        )


def test_every_global_skip_is_still_needed(rendered_ci_dir: Path) -> None:
    """Run only the globally skipped checks, unskipped: each must still fail somewhere (else drop it)."""
    ids = [s["id"] for s in skips()["skip"]]
    rc, reports, _ = checkov(rendered_ci_dir, "--check", ",".join(ids))
    failing = {r["check_id"] for r in results(reports, "failed_checks")}
    stale = sorted(set(ids) - failing)
    assert not stale, f"these skips in {SKIPS_FILE.name} no longer fail; remove them: {stale}"
    assert rc != 0
