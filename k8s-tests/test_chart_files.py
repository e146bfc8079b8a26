"""The chart's dashboards and alert rules are copies of the repo's dashboards/ (one source of truth):
`make chart-sync` makes them, these tests fail when they drift."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from chart_helpers import CHART, REPO

PAIRS = [
    (REPO / "dashboards", CHART / "files" / "dashboards", "*.json"),
    (REPO / "dashboards" / "alerts", CHART / "files" / "alerts", "*.yaml"),
]


def _files(directory: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob(pattern)) if p.is_file()}


@pytest.mark.parametrize(("source", "copy", "pattern"), PAIRS, ids=["dashboards", "alerts"])
def test_chart_copies_match_the_repo_byte_for_byte(source: Path, copy: Path, pattern: str) -> None:
    want, have = _files(source, pattern), _files(copy, pattern)
    hint = "run `make chart-sync`"
    where = f"{copy.relative_to(REPO)} vs {source.relative_to(REPO)}"
    assert sorted(have) == sorted(want), f"{where}: different files; {hint}"
    changed = [name for name in want if want[name] != have[name]]
    assert not changed, f"{where}: {changed} differ; {hint}"


def test_chart_sync_target(tmp_path: Path) -> None:
    """`make chart-sync` copies new files, updates changed ones and removes stale ones."""
    work = tmp_path / "repo"
    (work / "mk").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", work / "Makefile")
    shutil.copy(REPO / "mk" / "k8s.mk", work / "mk" / "k8s.mk")
    (work / "dashboards" / "alerts" / "tests").mkdir(parents=True)
    (work / "dashboards" / "a.json").write_bytes(b'{"uid": "a"}\n')
    (work / "dashboards" / "b.json").write_bytes(b'{"uid": "b", "title": "\xc3\xa9"}')
    (work / "dashboards" / "generate.py").write_text("print('not a dashboard')\n")
    (work / "dashboards" / "alerts" / "rules.yaml").write_text("groups: []\n")
    (work / "dashboards" / "alerts" / "tests" / "rules.test.yaml").write_text("tests: []\n")
    files = work / "helm" / "retriever" / "files"
    (files / "dashboards").mkdir(parents=True)
    (files / "alerts").mkdir(parents=True)
    (files / "dashboards" / "a.json").write_bytes(b"old")
    (files / "dashboards" / "stale.json").write_bytes(b"{}")
    (files / "dashboards" / ".gitkeep").write_bytes(b"")

    proc = subprocess.run(["make", "-s", "chart-sync"], cwd=work, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _files(files / "dashboards", "*") == {
        ".gitkeep": b"",
        "a.json": b'{"uid": "a"}\n',
        "b.json": b'{"uid": "b", "title": "\xc3\xa9"}',
    }
    assert sorted(p.name for p in (files / "alerts").iterdir()) == ["rules.yaml"]
