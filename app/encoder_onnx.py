"""ONNX Runtime encoder: the same embeddings as sentence-transformers at a fraction of torch's CPU cost.

The model is exported once, at build/import time (`retriever export-onnx INDEX_DIR`, or
`--encoder-runtime onnx` on `build` / `import`), into `INDEX_DIR/encoder-onnx/`: the transformer as
`model.onnx`, the fast tokenizer's `tokenizer.json`, and `encoder.json` with pooling, max length,
normalisation and the embedding dimension. Serving then needs neither torch nor transformers: only
`onnxruntime` and `tokenizers`. Nothing is exported at serve time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.encoder import CHARS_PER_TOKEN, encode_split
from app.errors import RetrieverError

if TYPE_CHECKING:
    from app.lanes import Helpers

log = logging.getLogger(__name__)

ONNX_DIR = "encoder-onnx"
ONNX_MODEL = "model.onnx"
ONNX_CONFIG = "encoder.json"
TOKENIZER_FILE = "tokenizer.json"
# Graph inputs of BERT-like encoders; models without token types get only the first two.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class OnnxEncoderError(RetrieverError):
    """The ONNX export is missing, unreadable or cannot run; the message names the path."""


@dataclass
class OnnxEncoderConfig:
    """What `encoder.json` holds: everything the runtime needs besides the graph and the tokenizer."""

    model: str
    dimension: int
    pooling: str  # mean | cls | max
    max_length: int
    normalize: bool
    inputs: list[str]
    exported_with: dict[str, str]


def export_onnx(model: str, out_dir: Path, normalize: bool, max_length: int | None = None) -> Path:
    """Export a local sentence-transformers model directory to `out_dir/encoder-onnx/` (atomically)."""
    import torch
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    st = SentenceTransformer(model, device="cpu")
    if max_length:
        st.max_seq_length = max_length
    transformer = st[0]
    auto_model = transformer.auto_model.eval()
    pooling = _pooling_mode(st)
    tokenizer = st.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise OnnxEncoderError(f"{model}: the ONNX runtime needs a fast tokenizer (tokenizer.json)")
    sample = tokenizer(["a short query", "a somewhat longer query for the export"], padding=True, return_tensors="pt")
    inputs = [name for name in INPUT_NAMES if name in sample]

    class LastHiddenState(torch.nn.Module):
        def __init__(self, wrapped: torch.nn.Module) -> None:
            super().__init__()
            self.wrapped = wrapped

        def forward(self, *tensors: Any) -> Any:
            return self.wrapped(**dict(zip(inputs, tensors, strict=True))).last_hidden_state

    target = out_dir / ONNX_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".encoder-onnx-", dir=out_dir))
    try:
        # The tracer warns about shape checks it freezes; they hold for any batch and length here
        # (the tests compare the export with torch on queries of many lengths).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState(auto_model),
                tuple(sample[name] for name in inputs),
                str(staging / ONNX_MODEL),
                dynamo=False,  # the TorchScript exporter needs no onnxscript and handles dynamic axes well
                input_names=inputs,
                output_names=["last_hidden_state"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*inputs, "last_hidden_state")},
                opset_version=17,
            )
        tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
        config = OnnxEncoderConfig(
            model=model,
            dimension=int(st.get_embedding_dimension() or 0),
            pooling=pooling,
            max_length=int(st.max_seq_length),
            normalize=normalize,
            inputs=inputs,
            exported_with={"torch": torch.__version__},
        )
        (staging / ONNX_CONFIG).write_text(json.dumps(asdict(config), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _pooling_mode(st: Any) -> str:
    """The pooling of the model's Pooling module (sentence-transformers 6 names it `pooling_mode`)."""
    for module in st:
        mode = getattr(module, "pooling_mode", None)
        if isinstance(mode, str):
            if mode in ("mean", "cls", "max"):
                return mode
            raise OnnxEncoderError(f"pooling {mode!r} is not reproduced by the ONNX runtime (mean, cls or max)")
    raise OnnxEncoderError("the model has no pooling module the ONNX runtime can reproduce")


class _ExportedEncoder:
    """Tokenise with `tokenizers`, run the exported graph, pool and normalise in numpy.

    Each call of the graph is single-threaded, like every thread of a compute lane: a large batch
    is dealt out to the lane's helper threads (both runtimes release the GIL while they run)."""

    runtime = ""

    def __init__(self, directory: Path, prefix: str = "", batch_size: int = 32) -> None:
        from tokenizers import Tokenizer

        config_path = directory / ONNX_CONFIG
        if not config_path.is_file():
            raise OnnxEncoderError(
                f"{directory}: no exported encoder here (run `retriever export-onnx INDEX_DIR` once, "
                "or serve with --encoder-runtime torch)"
            )
        try:
            self.config = OnnxEncoderConfig(**json.loads(config_path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise OnnxEncoderError(f"{config_path}: unreadable ({exc})") from None
        self.name = self.config.model
        self.dimension = self.config.dimension
        self.prefix, self.batch_size = prefix, batch_size
        self.tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        self.tokenizer.enable_truncation(self.config.max_length)
        self.tokenizer.enable_padding()
        self.graph_path = directory / ONNX_MODEL

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimension": self.dimension,
            "query_prefix": self.prefix,
            "normalize": self.config.normalize,
            "max_length": self.max_length,
            "device": "cpu",
            "runtime": self.runtime,
            "pooling": self.config.pooling,
        }

    def encode(self, texts: list[str], helpers: Helpers | None = None) -> np.ndarray:
        """Embeddings of `texts`, in order. With `helpers`, a large batch is split between threads."""
        limit = self.max_length * CHARS_PER_TOKEN
        inputs = [self.prefix + text[:limit] for text in texts]
        return encode_split(inputs, self._encode_sorted, helpers)

    def _encode_sorted(self, inputs: list[str]) -> np.ndarray:
        # Like sentence-transformers: sort by length so each sub-batch pads to a like length.
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        out = np.empty((len(inputs), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._encode_padded([inputs[i] for i in rows])
        return out

    def _encode_padded(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64), "attention_mask": mask}
        if "token_type_ids" in self.config.inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        hidden = self._run(feed)
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.config.pooling == "max":
            pooled = np.where(mask[..., None] > 0, hidden, -np.inf).max(axis=1)
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.config.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(pooled, dtype=np.float32)

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntimeEncoder(_ExportedEncoder):
    runtime = "onnx"

    def __init__(self, directory: Path, prefix: str = "", batch_size: int = 32) -> None:
        super().__init__(directory, prefix, batch_size)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.graph_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise OnnxEncoderError(f"{self.graph_path}: cannot load ({exc})") from None

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]


class OpenVinoEncoder(_ExportedEncoder):
    runtime = "openvino"

    def __init__(self, directory: Path, prefix: str = "", batch_size: int = 32) -> None:
        super().__init__(directory, prefix, batch_size)
        import openvino as ov

        try:
            # f32: OpenVINO would pick bf16 on CPUs that have it, which changes the embeddings.
            self.compiled = ov.Core().compile_model(
                str(self.graph_path),
                "CPU",
                {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
            )
        except Exception as exc:  # openvino raises RuntimeError subclasses for unreadable graphs
            raise OnnxEncoderError(f"{self.graph_path}: cannot load ({exc})") from None
        self._requests = threading.local()

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        # An infer request is not thread-safe: one per lane thread.
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        return request.infer(feed)[0]


# The check an export must pass before it is kept: torch's embeddings, to this cosine, on these queries.
CHECK_COSINE = 0.9999
CHECK_QUERIES = (
    "who wrote paradise lost",
    "1968 science fiction film directed by stanley kubrick",
    "capital of australia",
    "a",
    "how does photosynthesis work in the leaves of plants during the day and what do they need",
    "Zürich Hauptbahnhof Öffnungszeiten",
    "Q: 42?",
)


def export_checked(model: str, index_dir: Path, manifest: Any) -> dict[str, Any]:
    """Export `model` into `index_dir` and keep it only if it reproduces torch's query embeddings."""
    import time

    from app.encoder import EncoderConfig, SentenceTransformerEncoder, resolve_model

    started = time.perf_counter()
    resolved = resolve_model(model)
    target = export_onnx(resolved, index_dir, normalize=manifest.normalize, max_length=manifest.max_length)
    reference = SentenceTransformerEncoder(
        EncoderConfig(
            resolved, prefix=manifest.query_prefix, normalize=manifest.normalize, max_length=manifest.max_length
        )
    )
    exported = OnnxRuntimeEncoder(target, prefix=manifest.query_prefix)
    queries = list(CHECK_QUERIES)
    expected, got = reference.encode(queries), exported.encode(queries)
    cosine = (expected * got).sum(axis=1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
    if float(cosine.min()) < CHECK_COSINE:
        shutil.rmtree(target, ignore_errors=True)
        raise OnnxEncoderError(
            f"{model}: the ONNX export does not reproduce torch's embeddings (worst cosine {cosine.min():.6f} < "
            f"{CHECK_COSINE}); removed, serve with --encoder-runtime torch"
        )
    return {
        "model": model,
        "path": str(target),
        "seconds": time.perf_counter() - started,
        "queries": len(queries),
        "worst_cosine": float(cosine.min()),
    }


def open_exported_encoder(runtime: str, index_dir: Path | None, prefix: str, normalize: bool) -> _ExportedEncoder:
    """The `--encoder-runtime onnx|openvino` encoder over the export in `index_dir`."""
    if index_dir is None:
        raise OnnxEncoderError(
            "--encoder-runtime onnx/openvino needs --index-dir (the export lives in the index directory)"
        )
    encoder_class = {"onnx": OnnxRuntimeEncoder, "openvino": OpenVinoEncoder}[runtime]
    try:
        encoder = encoder_class(index_dir / ONNX_DIR, prefix=prefix)
    except ImportError as exc:
        raise OnnxEncoderError(f"--encoder-runtime {runtime}: {exc.name} is not installed") from None
    if encoder.config.normalize != normalize:
        raise OnnxEncoderError(
            f"{index_dir / ONNX_DIR}: exported with normalize={encoder.config.normalize} but the index wants "
            f"normalize={normalize}; export again (retriever export-onnx {index_dir})"
        )
    return encoder
