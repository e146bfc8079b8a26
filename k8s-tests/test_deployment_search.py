"""templates/deployment.yaml: search.* (the knobs of an approximate index and its live recall guard)."""

from __future__ import annotations

import pytest
from chart_helpers import env_of, render, render_error

from app.settings import Settings


def test_by_default_the_index_keeps_its_stored_knobs_and_the_guard_samples_one_percent() -> None:
    env = env_of(render().server)
    assert "RETRIEVER_NPROBE" not in env and "RETRIEVER_EF_SEARCH" not in env
    assert "RETRIEVER_RECALL_REFERENCE" not in env
    assert (env["RETRIEVER_RECALL_SAMPLE_FRACTION"], env["RETRIEVER_RECALL_FLOOR"]) == ("0.01", "0.9")


def test_search_values_become_the_settings_the_server_reads() -> None:
    r = render(
        set_values={
            "search.nprobe": 32,
            "search.efSearch": 128,
            "search.recallGuard.sampleFraction": 0.05,
            "search.recallGuard.reference": "/data/flat/index.faiss",
            "search.recallGuard.floor": 0.97,
        }
    )
    env = {k: v for k, v in env_of(r.server).items() if k.startswith("RETRIEVER_")}
    assert env["RETRIEVER_NPROBE"] == "32" and env["RETRIEVER_EF_SEARCH"] == "128"
    settings = Settings.model_validate(
        {k.removeprefix("RETRIEVER_").lower(): env[k] for k in ("RETRIEVER_NPROBE", "RETRIEVER_EF_SEARCH",
         "RETRIEVER_RECALL_SAMPLE_FRACTION", "RETRIEVER_RECALL_REFERENCE", "RETRIEVER_RECALL_FLOOR")}
    )  # fmt: skip
    assert (settings.nprobe, settings.ef_search) == (32, 128)
    assert settings.recall_sample_fraction == 0.05 and settings.recall_floor == 0.97
    assert str(settings.recall_reference) == "/data/flat/index.faiss"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("search.nprobe", 0, "minimum"),
        ("search.recallGuard.sampleFraction", 1.5, "maximum"),
        ("search.recallGuard.reference", "relative/index.faiss", "pattern"),
    ],
)
def test_out_of_range_search_values_are_refused_by_the_schema(key: str, value: object, message: str) -> None:
    err = render_error(set_values={key: value})
    assert "values don't meet the specifications of the schema" in err and message in err


def test_the_knobs_cannot_be_set_twice_through_server_settings() -> None:
    err = render_error(set_values={"server.settings.NPROBE": "8"})
    assert "server.settings.NPROBE is managed by the chart" in err and "search.*" in err
