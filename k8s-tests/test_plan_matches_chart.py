"""`retriever plan` prints Helm values; the chart must turn them into the memory plan computed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chart_helpers import REPO, render

from app.corpus import CorpusWriter
from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest, record_files


def fake_index_dir(root: Path, index_mib: int, corpus_mib: int) -> Path:
    """An index directory of chosen file sizes (plan only reads sizes and the manifest)."""
    root.mkdir()
    with open(root / INDEX_FILE, "wb") as handle:
        handle.truncate(index_mib * 2**20)
    writer = CorpusWriter(root / CORPUS_DIR)
    writer.add(b'{"id":"0","contents":"x"}')
    writer.close()
    with open(root / CORPUS_DIR / "corpus.bin", "ab") as handle:
        handle.truncate(corpus_mib * 2**20)
    offsets = np.array([0, corpus_mib * 2**20], dtype="<u8")
    offsets.tofile(root / CORPUS_DIR / "offsets.u64")
    names = [INDEX_FILE, f"{CORPUS_DIR}/corpus.bin", f"{CORPUS_DIR}/offsets.u64"]
    Manifest(
        model="bundled:all-MiniLM-L6-v2", dimension=384, metric="ip", normalize=True, query_prefix="",
        passage_prefix="", max_length=256, index_factory="Flat", count=1, files=record_files(root, names),
    ).write(root)  # fmt: skip
    return root


@pytest.mark.parametrize(("index_mib", "corpus_mib", "workers"), [(300, 40, 1), (2900, 700, 4), (1, 1, 2)])
def test_plan_values_render_to_the_planned_memory(
    tmp_path: Path, index_mib: int, corpus_mib: int, workers: int
) -> None:
    index_dir = fake_index_dir(tmp_path / "idx", index_mib, corpus_mib)
    proc = subprocess.run(
        [sys.executable, "-m", "app", "plan", str(index_dir), "--workers", str(workers), "--json"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    planned = json.loads(proc.stdout)
    values = tmp_path / "plan-values.yaml"
    values.write_text(planned["helm_values"])
    container = render([values]).server
    memory = f"{planned['memory_gib']}Gi"
    assert container["resources"]["requests"]["memory"] == memory
    assert container["resources"]["limits"]["memory"] == memory
