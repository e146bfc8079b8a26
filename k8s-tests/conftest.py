"""Fixtures for the Helm chart tests; the helpers they use are in chart_helpers.py.

Live-cluster tests (test_live_cluster.py) run only with `--cluster` or KUBECONFIG set.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chart_helpers import CHART, CI_VALUES, Rendered, ci_id, render


@pytest.fixture(params=CI_VALUES, ids=[ci_id(p) for p in CI_VALUES])
def ci_values(request: pytest.FixtureRequest) -> Path:
    """Each helm/retriever/ci/*-values.yaml in turn."""
    return request.param


@pytest.fixture
def ci_rendered(ci_values: Path) -> Rendered:
    return render([ci_values])


@pytest.fixture(scope="session")
def rendered_ci_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every ci values file rendered to <dir>/<name>.yaml (what kubernetes-validate and checkov read)."""
    out = tmp_path_factory.mktemp("rendered")
    for values in CI_VALUES:
        (out / f"{ci_id(values)}.yaml").write_text(render([values]).text)
    return out


@pytest.fixture
def chart_copy(tmp_path: Path) -> Iterator[Path]:
    """A scratch copy of the chart whose files/ a test may change."""
    dest = tmp_path / "retriever"
    shutil.copytree(CHART, dest)
    yield dest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        action="store_true",
        default=False,
        help="run the live-cluster tests against the current kube context (helm install --wait)",
    )
