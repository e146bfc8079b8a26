"""Every object rendered from every ci values file passes `kubernetes-validate --strict` (unknown fields
are errors) against the API schemas of Kubernetes 1.29 through 1.37.

kubernetes-validate ships the schemas of the built-in kinds only. ServiceMonitor and PrometheusRule are
prometheus-operator CRDs (monitoring.coreos.com/v1): for them it can only WARN "Couldn't find schema".
Those two warnings, and no other, are accepted here; the CRD objects' fields are asserted field by
field in test_servicemonitor.py and test_prometheusrule.py instead.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from chart_helpers import CI_VALUES, ci_id, render, tool_path

VERSIONS = [f"1.{minor}" for minor in range(29, 38)]
CRD_KINDS = {("ServiceMonitor", "monitoring.coreos.com/v1"), ("PrometheusRule", "monitoring.coreos.com/v1")}
CRD_WARNING = re.compile(
    r"^WARN (?P<file>\S+) Couldn't find schema for kind (?P<kind>\w+) with api version (?P<api>\S+) "
    r"for kubernetes version (?P<version>[\d.]+)$"
)
PASSED = re.compile(r"^INFO (?P<file>\S+) passed for resource (?P<resource>\S+) against version (?P<version>[\d.]+)$")


def kubernetes_validate(version: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool_path("KUBE_VALIDATE"), "--strict", "-k", f"{version}.0", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_kubernetes_validate_knows_every_version() -> None:
    """The pinned kubernetes-validate carries strict schemas for 1.29..1.37 (it has 1.25..1.37)."""
    python = Path(tool_path("KUBE_VALIDATE")).with_name("python")
    proc = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.resources as r; "
            "print(' '.join(p.name for p in (r.files('kubernetes_validate') / 'kubernetes-json-schema').iterdir()))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    have = set(proc.stdout.split())
    missing = [v for v in VERSIONS if f"v{v}.0-local-strict" not in have]
    assert not missing, f"kubernetes-validate lacks strict schemas for {missing}; it has {sorted(have)}"


@pytest.mark.parametrize("version", VERSIONS)
def test_rendered_objects_validate_strictly(version: str, rendered_ci_dir: Path) -> None:
    files = sorted(rendered_ci_dir.glob("*.yaml"))
    assert len(files) == len(CI_VALUES)
    proc = kubernetes_validate(version, files)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith(("INFO ", "WARN "))]
    assert proc.returncode == 0 and not errors, "\n".join(lines)

    # Only the two CRDs may warn, and each CRD object in the renders must be accounted for.
    warned: list[tuple[str, str, str]] = []
    for line in lines:
        if line.startswith("WARN "):
            match = CRD_WARNING.match(line)
            assert match and (match["kind"], match["api"]) in CRD_KINDS, f"unexplained warning: {line}"
            warned.append((Path(match["file"]).stem, match["kind"], match["api"]))

    expected_warned: list[tuple[str, str, str]] = []
    expected_passed: list[tuple[str, str]] = []
    for values in CI_VALUES:
        for doc in render([values]).docs:
            if (doc["kind"], doc["apiVersion"]) in CRD_KINDS:
                expected_warned.append((ci_id(values), doc["kind"], doc["apiVersion"]))
            else:
                expected_passed.append((ci_id(values), f"{doc['kind'].lower()}/{doc['metadata']['name']}"))
    assert sorted(warned) == sorted(expected_warned)

    passed = [(Path(m["file"]).stem, m["resource"]) for m in map(PASSED.match, lines) if m]
    assert all(m["version"] == version for m in map(PASSED.match, lines) if m)
    assert sorted(passed) == sorted(expected_passed), "every built-in object must be validated, and pass"


def test_kubernetes_validate_is_strict(tmp_path: Path) -> None:
    """The gate can fail: a misspelt field in the rendered Deployment is rejected."""
    text = render().text.replace("maxUnavailable: 1\n", "maxUnavailabel: 1\n")
    assert "maxUnavailabel" in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text)
    proc = kubernetes_validate(VERSIONS[0], [broken])
    assert proc.returncode != 0
    assert "'maxUnavailabel' was unexpected" in proc.stdout + proc.stderr
