"""Optional probe (not part of `make bench`): the bundled encoder on ONNX Runtime vs torch, one thread each.

sentence-transformers' own ONNX backend needs `optimum-onnx`, which pins transformers < 5 while
sentence-transformers 6 needs transformers >= 5: the two cannot be installed together here. This
probe measures what a direct ONNX Runtime path would give, without touching the project's venv:

    .venv/bin/pip install --no-deps --target /tmp/ort onnxruntime onnx protobuf ml_dtypes flatbuffers
    PYTHONPATH=/tmp/ort .venv/bin/python -m bench.onnx_probe

It exports the local model's transformer offline (torch.onnx, TorchScript exporter) to .cache/bench/,
then compares embeddings (mean pooling + L2 norm, as the model's sentence-transformers config does)
and queries/s for single queries and batches of 64, both on one thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DATA_DIR, bench_queries

ONNX_PATH = DATA_DIR / "bench" / "minilm.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export(encoder: Any, path: Path) -> None:
    import torch

    class Transformer(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    features = encoder.model.tokenizer(["a short query", "a somewhat longer query"], padding=True, return_tensors="pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Transformer(encoder.model[0].auto_model.eval()),
        tuple(features[name] for name in INPUTS),
        str(path),
        dynamo=False,
        input_names=list(INPUTS),
        output_names=["last_hidden_state"],
        dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")},
        opset_version=17,
    )


def ort_encoder(encoder: Any, path: Path, sub_batch: int = 32) -> Callable[[list[str]], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokenizer = encoder.model.tokenizer

    def encode(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), encoder.dimension), dtype=np.float32)
        for start in range(0, len(texts), sub_batch):
            rows = order[start : start + sub_batch]
            features = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=encoder.max_length,
                return_tensors="np",
            )
            hidden = session.run(None, {name: features[name] for name in INPUTS})[0]
            mask = features["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    return encode


def rate(encode: Callable[[list[str]], Any], queries: list[str], batch: int, seconds: float = 3.0) -> float:
    done, position, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode(queries[position : position + batch])
        done += batch
        position = (position + batch) % (len(queries) - batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    import torch

    from app.encoder import BUNDLED_MODEL, EncoderConfig, SentenceTransformerEncoder, resolve_model

    torch.set_num_threads(1)
    encoder = SentenceTransformerEncoder(EncoderConfig(model=resolve_model(BUNDLED_MODEL)))
    if not ONNX_PATH.is_file():
        export(encoder, ONNX_PATH)
    onnx_encode = ort_encoder(encoder, ONNX_PATH)
    queries = bench_queries()
    difference = float(np.abs(encoder.encode(queries[:256]) - onnx_encode(queries[:256])).max())
    print(f"max |torch - onnxruntime| over 256 queries: {difference:.2e}")
    for batch in (1, 64):
        torch_qps, ort_qps = rate(encoder.encode, queries, batch), rate(onnx_encode, queries, batch)
        print(
            f"batch {batch:3d}: torch {torch_qps:7.1f} q/s, onnxruntime {ort_qps:7.1f} q/s ({ort_qps / torch_qps:.2f}x)"
        )


if __name__ == "__main__":
    main()
