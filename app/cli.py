"""`retriever` command line: serve, build, plan, verify, load, demo-corpus."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

from pydantic import ValidationError

from app import __version__
from app.errors import LoadError, RetrieverError
from app.settings import Settings
from app.spec import BuildOptions

T = TypeVar("T")


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "on", "yes"):
        return True
    if lowered in ("0", "false", "off", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off or true/false, got {value!r}")


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field (`--max-queue`, `--batching off`); unset flags leave env/defaults."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "") + f" [env RETRIEVER_{name.upper()}]"
        if field.annotation is bool or bool in get_args(field.annotation):
            parser.add_argument(flag, dest=name, type=_bool, nargs="?", const=True, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def _add_option_flags(parser: argparse.ArgumentParser, options: type[Any]) -> None:
    """One flag per dataclass field with `flag(...)` metadata (app.spec.flag): a field without a
    default is required; a bool is a switch (`--force`), or `--no-...` when it defaults to true."""
    hints = get_type_hints(options)
    for option in dataclasses.fields(options):
        if "help" not in option.metadata:
            continue
        name = option.metadata["flag"] or "--" + option.name.replace("_", "-")
        kind = next((arg for arg in get_args(hints[option.name]) if arg is not type(None)), hints[option.name])
        if kind is bool:
            negated = option.default is True
            flag = "--no-" + option.name.replace("_", "-") if negated else name
            action = "store_false" if negated else "store_true"
            parser.add_argument(flag, dest=option.name, action=action, help=option.metadata["help"])
            continue
        shown = name.lstrip("-").replace("-", "_").upper()
        required = option.default is dataclasses.MISSING
        default = None if required else option.default
        parser.add_argument(
            name,
            dest=option.name,
            type=kind,
            required=required,
            default=default,
            metavar=shown,
            help=option.metadata["help"],
        )


def _options_from(args: argparse.Namespace, options: type[T]) -> T:
    chosen = {option.name: getattr(args, option.name) for option in dataclasses.fields(options) if option.metadata}
    return options(**chosen)


def _settings_from(args: argparse.Namespace) -> Settings:
    """Flags override env: write them into the environment, which spawned workers inherit."""
    for name in Settings.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"RETRIEVER_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}" for err in exc.errors()
        )
        raise SystemExit(f"retriever: error: {problems}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    _preflight(settings)
    from app.server import serve

    return serve(settings)


def _preflight(settings: Settings) -> None:
    """Cheap checks before binding the port, so a wrong path fails fast with its name."""
    from app.guards import load_tokens
    from app.manifest import Manifest

    if settings.index_path is not None and not settings.index_path.is_file():
        raise _fail(f"{settings.index_path}: index file not found")
    if settings.corpus_path is not None and not settings.corpus_path.is_file():
        raise _fail(f"{settings.corpus_path}: corpus file not found")
    if settings.index_dir is not None and settings.index_path is None:
        Manifest.read(settings.index_dir).check_files(settings.index_dir, checksums=False)
    load_tokens(settings)


def _fail(message: str) -> Exception:
    return LoadError(message)


def cmd_build(args: argparse.Namespace) -> int:
    from app.builder import build

    manifest = build(_options_from(args, BuildOptions))
    skipped = manifest.source.get("skipped_count", 0)
    print(
        f"built {args.out}: {manifest.count} passages, {manifest.index_factory}, dim {manifest.dimension}"
        + (f", {skipped} malformed line(s) skipped" if skipped else "")
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from app.service import Status, load

    directory = Path(args.index_dir)
    settings = Settings(index_dir=directory, verify_checksums=True, data_dir=Path(args.data_dir))
    retriever = load(settings, Status())
    print(f"{directory}: ok ({retriever.index.count} vectors, checksums match, self-query answered)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from app.plan import plan

    report = plan(Path(args.index_dir), workers=args.workers, model_gib=args.model_gib, headroom_gib=args.headroom_gib)
    print(json.dumps(report, indent=2) if args.json else report["text"])
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from app.loadclient import main as load_main

    return load_main(args)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from app.encoder_onnx import export_checked
    from app.manifest import Manifest

    directory = Path(args.index_dir)
    manifest = Manifest.read(directory)
    model = args.model or manifest.model
    local = directory / model
    report = export_checked(str(local) if local.is_dir() else model, directory, manifest)
    print(
        f"exported {report['model']} to {report['path']} in {report['seconds']:.1f} s; checked against torch on "
        f"{report['queries']} queries: worst cosine {report['worst_cosine']:.6f}; "
        "serve with --encoder-runtime onnx (or openvino)"
    )
    return 0


def cmd_demo_corpus(args: argparse.Namespace) -> int:
    from app.demo import write_corpus

    count = write_corpus(Path(args.out), args.limit)
    print(f"wrote {count} passages to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retriever", description="Dense retrieval server (Search-R1 wire format).")
    parser.add_argument("--version", action="version", version=f"retriever {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve an index over HTTP (no arguments: the demo)")
    _add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    build = commands.add_parser("build", help="build an index directory from a passages .jsonl")
    _add_option_flags(build, BuildOptions)
    build.set_defaults(func=cmd_build)

    verify = commands.add_parser("verify", help="check an index directory: checksums, counts, a query")
    verify.add_argument("index_dir")
    verify.add_argument("--data-dir", default=".cache")
    verify.set_defaults(func=cmd_verify)

    plan = commands.add_parser("plan", help="memory a pod needs for an index directory, as Helm values")
    plan.add_argument("index_dir")
    plan.add_argument("--workers", type=int, default=1)
    plan.add_argument("--model-gib", type=float, default=None, help="model memory (default: from its files)")
    plan.add_argument("--headroom-gib", type=float, default=0.5, help="extra GiB on top (chart: memory.headroomGiB)")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=cmd_plan)

    load = commands.add_parser("load", help="load-test a running server and print throughput and latency")
    load.add_argument("--server", default="http://127.0.0.1:8000")
    load.add_argument("--requests", type=int, default=1000)
    load.add_argument("--concurrency", type=int, default=16)
    load.add_argument("--queries-per-request", type=int, default=1)
    load.add_argument("--topk", type=int, default=3)
    load.add_argument("--timeout", type=float, default=30.0)
    load.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    load.add_argument("--token", default=None, help="bearer token")
    load.add_argument("--json", default=None, help="also write the summary to this file")
    load.set_defaults(func=cmd_load)

    export = commands.add_parser(
        "export-onnx", help="export an index directory's model for --encoder-runtime onnx/openvino (checked)"
    )
    export.add_argument("index_dir")
    export.add_argument("--model", default=None, help="model directory (default: the manifest's)")
    export.set_defaults(func=cmd_export_onnx)

    demo = commands.add_parser("demo-corpus", help="write the demo corpus as Search-R1 jsonl")
    demo.add_argument("out")
    demo.add_argument("--limit", type=int, default=None)
    demo.set_defaults(func=cmd_demo_corpus)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RetrieverError as exc:  # a complete message for the user: no traceback
        print(f"retriever: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
