"""templates/deployment.yaml: memory requests = limits from the index size formula, or `resources` verbatim."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
import yaml
from chart_helpers import ci, env_of, render, render_error


def formula_gib(index: float, corpus: float, model: float, workers: int, per_worker: float, headroom: float) -> int:
    """The documented formula (values.yaml), in decimal arithmetic like Helm's addf/mulf: 0.1 + 0.2 is 0.3,
    so a sum that is a whole number in decimal is not rounded up by a binary float error."""
    d = [Decimal(str(x)) for x in (index, corpus, model, per_worker, headroom)]
    return math.ceil(d[0] + d[1] + d[2] + workers * d[3] + d[4])


@pytest.mark.parametrize(
    ("index", "corpus", "model", "workers", "per_worker", "headroom"),
    [
        (0.1, 0.1, 0.1, 1, 0.75, 0.5),  # chart defaults: the demo -> 2Gi
        (60.1, 13, 0.5, 1, 1, 2),  # Search-R1 e5 Flat -> 77Gi
        (60.1, 13, 0.5, 4, 1.5, 2),  # more workers add only their overhead (the index is shared)
        (8, 2, 0, 1, 1, 1),  # exact integer: no rounding up
        (300, 40, 1.25, 2, 2, 8),  # a huge index
        (0.1, 0.2, 13.3, 1, 1.1, 0.3),  # 15 in decimal (binary floats would give 15.000000000000002 -> 16)
    ],
)
def test_memory_request_equals_limit_from_formula(
    index: float, corpus: float, model: float, workers: int, per_worker: float, headroom: float
) -> None:
    r = render(
        set_values={
            "index.sizeGiB": index,
            "corpus.sizeGiB": corpus,
            "model.sizeGiB": model,
            "server.workers": workers,
            "memory.perWorkerOverheadGiB": per_worker,
            "memory.headroomGiB": headroom,
        }
    )
    resources = r.server["resources"]
    expected = f"{formula_gib(index, corpus, model, workers, per_worker, headroom)}Gi"
    assert resources["requests"]["memory"] == expected
    assert resources["limits"]["memory"] == expected
    assert env_of(r.server)["RETRIEVER_WORKERS"] == str(workers)


def test_sizes_from_set_strings() -> None:
    """`helm install --set index.sizeGiB=60.1` passes a string (Helm's --set parses no floats)."""
    r = render(set_values={"index.sizeGiB": "60.1", "corpus.sizeGiB": "13", "memory.headroomGiB": "2"})
    assert r.server["resources"]["requests"]["memory"] == f"{formula_gib(60.1, 13, 0.1, 1, 0.75, 2)}Gi" == "76Gi"


def test_default_memory_and_cpu() -> None:
    resources = render().server["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    with_limit = render(set_values={"cpu.limit": "4"}).server["resources"]
    assert with_limit["limits"] == {"cpu": "4", "memory": "2Gi"}


def test_explicit_resources_are_used_verbatim() -> None:
    r = render([ci("autoscaling-pods")])
    values = yaml.safe_load(ci("autoscaling-pods").read_text())
    assert r.server["resources"] == values["resources"]


def test_explicit_resources_need_a_memory_request() -> None:
    err = render_error(set_values={"resources": {"limits": {"memory": "8Gi"}}})
    assert "resources is set but has no requests.memory" in err
