"""Admission on a search-bound index: a burst after a quiet phase is admitted when it can finish in time.

RL rollouts are quiet during generation, then hundreds of searches arrive at once. On an exact
(Flat) index one scan serves a whole batch, so a batch of 128 costs a small multiple of a batch of
1. Admission that learned a rate from the quiet phase's single-query batches would think 128
queries take 128 batch times and refuse most of the burst; costed by the batches it forms, the
burst is admitted and finishes well inside the bound. Real FAISS (a Flat index of ROWS x DIM
random vectors, in this process) and a negligible fake encoder, so the search is what costs.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from app.corpus import CorpusStore, CorpusWriter
from app.engine import Engine
from app.errors import Overloaded
from app.index import FaissIndex
from app.settings import Settings

ROWS = 200_000
DIM = 128
BURST = 128


class HashEncoder:
    name = "hash-encoder"
    dimension = DIM
    max_length = 64

    def encode(self, texts: list[str], helpers: Any = None) -> np.ndarray:
        vectors = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts])
        return np.ascontiguousarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dimension": DIM}


@pytest.fixture(scope="module")
def search_bound_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("search-bound")
    vectors = np.random.default_rng(0).standard_normal((ROWS, DIM), dtype=np.float32)
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    faiss.write_index(index, str(directory / "index.faiss"))
    writer = CorpusWriter(directory / "corpus")
    for row in range(ROWS):
        writer.add(b'{"id":"%d","contents":"r"}' % row)
    writer.close()
    return directory / "index.faiss", directory / "corpus"


def test_a_burst_after_a_quiet_phase_is_admitted_and_finishes_inside_the_bound(
    search_bound_parts: tuple[Path, Path],
) -> None:
    index_path, corpus_dir = search_bound_parts

    async def scenario() -> None:
        # Quiet phase: single queries one after another, to learn what a batch of one costs.
        probe = Engine.from_parts(HashEncoder(), FaissIndex(index_path), CorpusStore(corpus_dir), Settings())
        await probe.start()
        await probe.wait_ready()
        started = time.perf_counter()
        for i in range(10):
            await probe.search([f"quiet {i}"], 3)
        single_s = (time.perf_counter() - started) / 10
        await probe.stop()
        # A bound that a rate learned from single queries would break (BURST x single_s is over
        # it), but that one batch of the burst keeps to: about 13 single-batch times on a Flat scan.
        bound_s = 40 * single_s
        assert BURST * single_s > bound_s

        engine = Engine.from_parts(
            HashEncoder(), FaissIndex(index_path), CorpusStore(corpus_dir), Settings(max_queue_wait_s=bound_s)
        )
        await engine.start()
        await engine.wait_ready()
        for i in range(20):
            await engine.search([f"quiet {i}"], 3)

        async def one(i: int) -> float | str:
            sent = time.perf_counter()
            try:
                await engine.search([f"burst {i}"], 3)
            except Overloaded as exc:
                return exc.detail
            return time.perf_counter() - sent

        outcomes = await asyncio.gather(*(one(i) for i in range(BURST)))
        await engine.stop()
        refused = [o for o in outcomes if isinstance(o, str)]
        slowest = max(o for o in outcomes if isinstance(o, float))
        print(
            f"\nburst of {BURST} after a quiet phase: batch of 1 {single_s * 1000:.1f} ms, bound {bound_s:.2f} s, "
            f"{len(refused)} refused, slowest answer {slowest:.2f} s"
        )
        assert not refused, refused[:3]
        assert slowest < bound_s

    asyncio.run(scenario())
