"""The packaged chart (`make package-chart`) is the chart: one version everywhere, the same objects
as the chart directory, and the documented image override lands in every pod."""

from __future__ import annotations

import ast
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, NAMESPACE, RELEASE, helm, tool_path

OVERRIDE = ["--set", "image.repository=registry.example.com/ml/retriever"]


def app_version() -> str:
    tree = ast.parse((CHART.parents[1] / "app" / "__init__.py").read_text())
    [value] = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__version__"]
    ]
    return value


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    env = os.environ | {"HELM": tool_path("HELM")}
    made = subprocess.run(
        ["make", "--no-print-directory", "-s", "package-chart", f"DIST={dist}", f"HELM={tool_path('HELM')}"],
        cwd=CHART.parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return dist / f"retriever-{app_version()}.tgz"


def dry_run(chart: Path, *args: str) -> tuple[str, str]:
    """(manifest, NOTES) of a client-side dry-run install."""
    proc = helm("install", RELEASE, str(chart), "--dry-run=client", "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    manifest, notes = proc.stdout.split("\nNOTES:\n", 1)
    return manifest.split("\nMANIFEST:\n", 1)[1], notes


def pods(manifest: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    specs = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    return specs + [d["spec"] for d in docs if d["kind"] == "Pod"]


def test_one_version_for_package_chart_and_image() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = app_version()
    assert chart["version"] == chart["appVersion"] == version
    images = yaml.safe_load(chart["annotations"]["artifacthub.io/images"])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert images == [{"name": "retriever", "image": f"{values['image']['repository']}:{version}"}]


def test_chart_metadata_for_artifact_hub() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["maintainers"] and all(m["name"] for m in chart["maintainers"])
    assert chart["home"].startswith("https://") and chart["icon"].startswith("https://")
    assert chart["sources"] and all(s.startswith("https://") for s in chart["sources"])
    changes = yaml.safe_load(chart["annotations"]["artifacthub.io/changes"])
    kinds = {"added", "changed", "deprecated", "removed", "fixed", "security"}  # Artifact Hub's
    assert changes and {c["kind"] for c in changes} <= kinds
    icon = chart["icon"].rsplit("/main/", 1)[1]
    assert (CHART.parents[1] / icon).is_file(), f"Chart.yaml icon names {icon}, which is not in the repository"


def test_archive_holds_the_chart_without_test_only_files(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for needed in ("Chart.yaml", "values.yaml", "values.schema.json", "README.md", "templates/NOTES.txt"):
        assert f"retriever/{needed}" in names
    assert any(n.startswith("retriever/templates/tests/") for n in names)
    assert any(n.startswith("retriever/files/dashboards/") and n.endswith(".json") for n in names)
    assert not any(n.startswith("retriever/ci/") for n in names), "ci/ values are for the chart tests only"


def test_archive_renders_what_the_chart_directory_renders(archive: Path) -> None:
    # Every chart test runs against the directory; identical objects make them hold for the archive.
    from_archive, notes = dry_run(archive, *OVERRIDE)
    from_directory, _ = dry_run(CHART, *OVERRIDE)
    assert from_archive == from_directory
    images = {c["image"] for spec in pods(from_archive) for c in spec.get("containers", [])}
    assert images == {f"registry.example.com/ml/retriever:{app_version()}"}
    assert f"Image: registry.example.com/ml/retriever:{app_version()}" in notes


def test_archive_with_the_override_passes_kubernetes_validate(archive: Path) -> None:
    manifest, _ = dry_run(archive, *OVERRIDE)
    proc = subprocess.run(
        [tool_path("KUBE_VALIDATE"), "--strict", "-k", "1.33.0", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_image_is_where_the_readme_pushes_it() -> None:
    readme = (CHART.parents[1] / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    repository = values["image"]["repository"]
    assert f"{repository}:{app_version()}" in readme.replace("$VERSION", app_version())
    notes = dry_run(CHART)[1]
    assert f"Image: {repository}:{app_version()}" in notes
    assert "--set image.repository=REGISTRY/retriever" in notes
