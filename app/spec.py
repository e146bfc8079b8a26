"""Which encoder and which index to open: resolved once, from the settings and the index's manifest.

An index directory records how its passages were embedded (`manifest.json`); the query side must
match. For each recorded option a setting that is given wins, else the manifest's value, else the
default (`RECORDED`). Everything downstream (`app.service.open_encoder` / `open_index`, /info)
reads the resolved `EncoderSpec` and `IndexSpec`, never the settings and the manifest again.

`BuildOptions` is what `retriever build` does; its flags are generated from the fields, as
`retriever serve`'s are from `Settings`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.settings import Settings

if TYPE_CHECKING:  # kept light: the CLI imports this module before any command runs
    from app.encoder import EncoderConfig
    from app.manifest import Manifest

# Encoder options the manifest records (same name in Settings and Manifest), with the default used
# when neither gives one (a bare --index-path index has no manifest).
RECORDED: dict[str, Any] = {"model": None, "query_prefix": "", "normalize": True, "max_length": None}


@dataclass(frozen=True)
class EncoderSpec:
    model: str | None  # None: the bundled demo model
    query_prefix: str
    normalize: bool
    max_length: int | None  # None: the model's own
    device: str
    batch_size: int  # texts per forward pass
    threads: int  # torch threads (0: leave torch's default)
    allow_download: bool
    runtime: str = "torch"  # torch, or onnx / openvino over the export in `export_dir`
    export_dir: Path | None = None  # the index directory holding `encoder-onnx/`
    dtype: str = "float32"  # weights dtype (--encoder-dtype; float16 on a GPU by default)

    def config(self) -> EncoderConfig:
        """The sentence-transformers backend's configuration (resolves the bundled model's path)."""
        from app.encoder import EncoderConfig, resolve_model

        return EncoderConfig(
            model=resolve_model(self.model),
            prefix=self.query_prefix,
            normalize=self.normalize,
            max_length=self.max_length,
            device=self.device,
            batch_size=self.batch_size,
            allow_download=self.allow_download,
            dtype=self.dtype,
        )


@dataclass(frozen=True)
class IndexSpec:
    path: Path
    mmap: bool
    threads: int  # FAISS (OpenMP) threads (0: leave the default)
    nprobe: int | None
    ef_search: int | None
    backend: str = "faiss"  # faiss | torch (--index-backend, auto: torch on a GPU)
    device: str = "cpu"  # --index-device
    dtype: str | None = None  # torch storage dtype (None: the device's default)


def recorded(settings: Settings, manifest: Manifest | None, name: str) -> Any:
    """A recorded option: the setting when given (an empty model name counts as not given), else
    the manifest's, else the default."""
    given = getattr(settings, name)
    if given is not None and not (name == "model" and given == ""):
        return given
    return getattr(manifest, name) if manifest is not None else RECORDED[name]


def resolve_encoder(settings: Settings, manifest: Manifest | None) -> EncoderSpec:
    chosen = {name: recorded(settings, manifest, name) for name in RECORDED}
    return EncoderSpec(
        **chosen,
        device=settings.device,
        batch_size=settings.max_batch_size,
        threads=settings.threads,
        allow_download=settings.allow_download,
        runtime=settings.encoder_runtime,
        export_dir=settings.index_dir,
        dtype=settings.encoder_dtype
        if settings.encoder_dtype != "auto"
        else ("float32" if settings.device.strip().lower() == "cpu" else "float16"),
    )


def resolve_index(settings: Settings, path: Path) -> IndexSpec:
    from app.devices import choose_backend

    return IndexSpec(
        path,
        settings.mmap,
        settings.threads,
        settings.nprobe,
        settings.ef_search,
        backend=choose_backend(settings.index_device, settings.index_backend),
        device=settings.index_device,
        dtype=None if settings.index_dtype == "auto" else settings.index_dtype,
    )


def flag(help: str, name: str | None = None) -> dict[str, str | None]:
    """Field metadata that makes a BuildOptions field a `retriever build` flag (`--field-name`, or
    `name`); a bool that defaults to true becomes `--no-field-name`."""
    return {"help": help, "flag": name}


@dataclass
class BuildOptions:
    """What `retriever build` does; every field with `flag(...)` metadata is one of its flags."""

    corpus: Path = field(metadata=flag("passages jsonl: {'id':..., 'contents': '\"Title\"\\nText'}"))
    out: Path = field(metadata=flag("index directory to create"))
    model: str | None = field(
        default=None, metadata=flag("sentence-transformers path or name (default: bundled MiniLM)")
    )
    index_factory: str = field(
        default="Flat", metadata=flag("FAISS factory string: Flat, HNSW32, IVF4096,Flat, ...", "--index-type")
    )
    passage_prefix: str = field(default="", metadata=flag("e.g. 'passage: ' for e5"))
    query_prefix: str = field(default="", metadata=flag("recorded for serve, e.g. 'query: ' for e5"))
    normalize: bool = field(default=True, metadata=flag("keep raw embeddings (default: L2-normalised)"))
    max_length: int | None = field(default=None, metadata=flag("tokens per passage"))
    device: str = field(default="cpu", metadata=flag("torch device: cpu, cuda, cuda:1"))
    chunk_size: int = field(default=1024, metadata=flag("passages encoded per step"))
    train_size: int = field(default=100_000, metadata=flag("training sample for IVF/PQ indexes"))
    skip_invalid: bool = field(default=False, metadata=flag("skip malformed lines (reported) instead of failing"))
    force: bool = field(default=False, metadata=flag("replace an existing output directory"))
    progress: bool = field(default=True, metadata=flag("no progress bar"))
    allow_download: bool = field(default=False, metadata=flag("let the model loader reach a hub"))
    export_onnx: bool = field(
        default=False, metadata=flag("also export the model for --encoder-runtime onnx / openvino (checked)")
    )
    on_progress: Callable[[float], None] | None = None  # fraction of the corpus read, for /health

    def encoder_config(self) -> EncoderConfig:
        """The passage side of the encoder (the query side is resolved at serve time: app.spec)."""
        from app.encoder import EncoderConfig, resolve_model

        return EncoderConfig(
            model=resolve_model(self.model),
            prefix=self.passage_prefix,
            normalize=self.normalize,
            max_length=self.max_length,
            device=self.device,
            allow_download=self.allow_download,
        )
