from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DEMO_LIMIT, ROOT, RunningServer, run_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_index() -> Path:
    """The small demo index (first DEMO_LIMIT articles), built once and cached in .cache/."""
    from app.demo import ensure_demo_index

    return ensure_demo_index(ROOT / ".cache", DEMO_LIMIT, progress=False)


@pytest.fixture(scope="session")
def encoder():
    """The same model the demo index was built with, loaded in the test process."""
    from app.encoder import BUNDLED_MODEL, EncoderConfig, SentenceTransformerEncoder, resolve_model

    return SentenceTransformerEncoder(EncoderConfig(model=resolve_model(BUNDLED_MODEL)))


@pytest.fixture(scope="session")
def server(demo_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server on loopback for the read-only API tests."""
    with run_server(["--index-dir", str(demo_index)], tmp_path_factory.mktemp("server")) as running:
        yield running
