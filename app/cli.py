"""`retriever` command line: serve, build, import, fetch, plan, verify, load, demo-corpus.

Exit codes (the same for every command; EXIT_CODES below is what `--help` prints):
  0  ok
  1  `retriever load` finished but some requests failed
  2  usage or configuration: a bad flag, setting or environment value, conflicting options
  3  data or load failure: a file that is missing, unreadable or corrupt, an index or model that
     does not load, a build or verify that fails (a server whose startup fails exits 3 as well)
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
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

EXIT_OK, EXIT_REQUESTS_FAILED, EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = """exit codes:
  0    ok
  1    `retriever load` finished but some requests failed
  2    usage or configuration error (flags, settings, environment)
  3    data or load failure (missing/corrupt files, index or model that does not load, build or verify failed)
  130  interrupted"""


class UsageError(RetrieverError):
    """The command line or the settings are wrong (exit 2); nothing on disk was the problem."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows `(default: X)` for options that have a real default (not None, not a plain switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        switch = action.nargs == 0  # --force, --no-normalize: the flag's name says what it does
        if "%(default)" in text or default in (None, "", argparse.SUPPRESS) or switch or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _usage_errors() -> tuple[type[RetrieverError], ...]:
    """Configuration errors (bad auth settings included): exit 2. Every other RetrieverError is about
    data (a file, the index, the model, a build): exit 3."""
    from app.devices import DeviceError
    from app.guards import GuardError

    return (UsageError, GuardError, DeviceError)


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
        shown = "" if field.default is None else f"default: {field.default}; "
        help_text = (field.description or "") + f" [{shown}env RETRIEVER_{name.upper()}]"
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
        raise UsageError(problems) from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    _preflight(settings)
    from app.server import serve

    return serve(settings)


def _preflight(settings: Settings) -> None:
    """Cheap checks before binding the port, so a wrong path fails fast with its name."""
    from app.guards import load_tokens
    from app.manifest import Manifest

    if (settings.index_path is None) != (settings.corpus_path is None):
        raise UsageError("--index-path and --corpus-path go together (a bare FAISS index and its passages jsonl)")
    if settings.index_path is not None and not settings.index_path.is_file():
        raise _fail(f"{settings.index_path}: index file not found")
    if settings.corpus_path is not None and not settings.corpus_path.is_file():
        raise _fail(f"{settings.corpus_path}: corpus file not found")
    if settings.corpus_path is not None and settings.corpus_path.is_file():
        from app.store_rules import StoreSpaceError, choose_store

        try:  # a store that cannot fit fails here, before the port opens, not after minutes of work
            choose_store(settings.corpus_path, settings.data_dir, settings.cache_size_limit_bytes)
        except StoreSpaceError as exc:
            raise _fail(str(exc)) from None
    if settings.index_dir is not None and settings.index_path is None:
        Manifest.read(settings.index_dir).check_files(settings.index_dir, checksums=False)
    load_tokens(settings)
    from app.devices import DeviceError, choose_backend, cuda_probe_message

    choose_backend(settings.index_device, settings.index_backend)
    problem = cuda_probe_message(("--device", settings.device), ("--index-device", settings.index_device))
    if problem:
        raise DeviceError(problem)


def _fail(message: str) -> Exception:
    return LoadError(message)


def cmd_mcp(args: argparse.Namespace) -> int:
    """MCP over stdio for a local agent: an index loaded here, or `--server` forwarded to."""
    import asyncio

    from app.mcp_server import serve_stdio

    settings = _settings_from(args)
    if args.server is None:
        _preflight(settings)
    asyncio.run(serve_stdio(settings, args.server, args.token or os.environ.get("RETRIEVER_MCP_TOKEN")))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from app.builder import build

    manifest = build(_options_from(args, BuildOptions))
    skipped = manifest.source.get("skipped_count", 0)
    print(
        f"built {args.out}: {manifest.count} passages, {manifest.index_factory}, dim {manifest.dimension}"
        + (f", {skipped} malformed line(s) skipped" if skipped else "")
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from app.convert import cmd_convert as run_convert

    return run_convert(args)


def cmd_import(args: argparse.Namespace) -> int:
    from app.importer import ImportOptions, import_index

    report = import_index(
        ImportOptions(
            index_parts=[Path(p) for p in args.index],
            corpus=Path(args.corpus),
            model=args.model,
            out=Path(args.out),
            copy_model=not args.model_reference,
            force=args.force,
            **_import_settings(args),
            progress=not args.no_progress,
        )
    )
    print(report.summary(Path(args.out)))
    return 0


def _import_settings(args: argparse.Namespace) -> dict:
    return {
        "query_prefix": args.query_prefix,
        "passage_prefix": args.passage_prefix,
        "pooling": args.pooling,
        "normalize": args.normalize,
        "max_length": args.max_length,
        "preset": args.preset,
    }


def cmd_fetch(args: argparse.Namespace) -> int:
    from app.fetch import Download, FetchError, FetchOptions, fetch

    def paired(urls: list[str], sums: list[str] | None, flag: str) -> list[Download]:
        sums = sums or []
        if sums and len(sums) != len(urls):
            raise FetchError(f"{flag}: {len(sums)} checksum(s) for {len(urls)} URL(s); give one per URL, in order")
        return [Download(url, sums[i] if sums else None) for i, url in enumerate(urls)]

    report = fetch(
        FetchOptions(
            index=paired(args.index_url, args.index_sha256, "--index-sha256"),
            corpus=paired([args.corpus_url], [args.corpus_sha256] if args.corpus_sha256 else None, "")[0],
            out=Path(args.out),
            work_dir=Path(args.work_dir) if args.work_dir else None,
            model=args.model,
            model_archive=Download(args.model_url, args.model_sha256) if args.model_url else None,
            import_options=_import_settings(args),
            retries=args.retries,
            keep_downloads=args.keep_downloads,
            progress=not args.no_progress,
        )
    )
    print(
        f"{args.out}: valid index directory present, nothing fetched"
        if report is None
        else report.summary(Path(args.out))
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

    try:
        report = plan(
            Path(args.index_dir),
            workers=args.workers,
            model_gib=args.model_gib,
            headroom_gib=args.headroom_gib,
            gpu=args.gpu,
            index_dtype=args.index_dtype,
        )
    except ValueError as exc:
        raise SystemExit(f"retriever plan: error: {exc}") from None
    print(json.dumps(report, indent=2) if args.json else report["text"])
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from app.loadclient import main as load_main

    # The token comes from the environment unless given: a flag is visible to everyone in `ps`.
    args.token = args.token or os.environ.get("RETRIEVER_TOKEN") or None
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


def _add_import_parser(commands: argparse._SubParsersAction) -> None:
    imp = commands.add_parser(
        "import",
        help="an index directory from an existing FAISS index + passages jsonl + model (no re-encoding)",
        description="Make an index directory from existing artifacts, e.g. Search-R1's wiki-18: "
        "retriever import --index part_aa part_ab --corpus wiki-18.jsonl.gz --model e5-base-v2/ "
        "--preset search-r1-e5 --out /data/wiki-18",
    )
    imp.add_argument("--index", nargs="+", required=True, metavar="PART", help="index file, or its parts in order")
    imp.add_argument("--corpus", required=True, help="passages .jsonl or .jsonl.gz, one row per vector, in order")
    imp.add_argument("--model", required=True, help="model directory (copied into the index) or name/path")
    imp.add_argument("--out", required=True, help="index directory to create")
    imp.add_argument(
        "--model-reference",
        action="store_true",
        help="record the model's path or name instead of copying it into the index directory",
    )
    _add_encoder_settings(imp)
    imp.add_argument("--force", action="store_true", help="replace an existing output directory")
    imp.set_defaults(func=cmd_import)

    fetch = commands.add_parser(
        "fetch",
        help="download an index's parts, corpus (and model archive) over HTTP(S), then import them",
        description="Resumable, checksummed downloads, then `retriever import` into --out; does nothing when "
        "--out is already a valid index directory (the chart's fetch initContainer runs this).",
    )
    fetch.add_argument("--index-url", nargs="+", required=True, metavar="URL", help="index file or parts, in order")
    fetch.add_argument("--index-sha256", nargs="+", default=None, metavar="HEX", help="one per --index-url")
    fetch.add_argument("--corpus-url", required=True, help="passages .jsonl(.gz)")
    fetch.add_argument("--corpus-sha256", default=None)
    source = fetch.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", default=None, help="model directory (e.g. baked into the image) or name")
    source.add_argument("--model-url", default=None, help="a .tar(.gz) of a model directory")
    fetch.add_argument("--model-sha256", default=None)
    fetch.add_argument("--out", required=True, help="index directory to create (skipped when valid)")
    fetch.add_argument("--work-dir", default=None, help="downloads go here (default: beside --out, hidden)")
    fetch.add_argument("--retries", type=int, default=5, help="per download, each resuming where it stopped")
    fetch.add_argument("--keep-downloads", action="store_true", help="keep the downloaded files after the import")
    _add_encoder_settings(fetch)
    fetch.set_defaults(func=cmd_fetch)


def _add_encoder_settings(parser: argparse.ArgumentParser) -> None:
    from app.importer import POOLING_MODES, PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="search-r1-e5: Search-R1's e5 settings")
    parser.add_argument("--query-prefix", default=None, help="prepended to queries (search-r1-e5: 'query: ')")
    parser.add_argument("--passage-prefix", default=None, help="recorded: what the passages were encoded with")
    parser.add_argument("--pooling", choices=POOLING_MODES, default=None, help="set in the copied model")
    parser.add_argument("--normalize", type=_bool, default=None, help="L2-normalise queries (default on)")
    parser.add_argument("--max-length", type=int, default=None, help="query tokens (search-r1-e5: 256)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retriever",
        description="Dense retrieval server (Search-R1 wire format).",
        epilog=EXIT_CODES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"retriever {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, epilog: str = "") -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=(epilog + "\n\n" if epilog else "") + EXIT_CODES,
            formatter_class=HelpFormatter,
        )

    serve = command(
        "serve",
        "serve an index over HTTP (no arguments: the demo)",
        "Every flag is also an environment variable (shown in brackets); a flag wins over the environment.",
    )
    _add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    mcp = command("mcp", "MCP server on stdin/stdout (tools: search, get_document) for a local agent")
    _add_settings_flags(mcp)
    mcp.add_argument("--server", default=None, help="forward to this running retriever instead of loading an index")
    mcp.add_argument("--token", default=None, help="bearer token for --server [env RETRIEVER_MCP_TOKEN]")
    mcp.set_defaults(func=cmd_mcp)

    build = command("build", "build an index directory from a passages .jsonl")
    _add_option_flags(build, BuildOptions)
    build.set_defaults(func=cmd_build)

    convert = command(
        "convert", "make a compressed / ANN index from a Flat index directory (no re-encoding), with its recall"
    )
    convert.add_argument("source", metavar="SRC_DIR", help="index directory holding a Flat index")
    convert.add_argument("--index-type", required=True, help="FAISS factory string; 'IVF' without n: recommended nlist")
    convert.add_argument("--out", required=True, help="index directory to create")
    convert.add_argument("--train-size", type=int, default=100_000, help="training sample (random source vectors)")
    convert.add_argument("--chunk-size", type=int, default=65_536, help="vectors read and added per step")
    convert.add_argument(
        "--queries", default=None, help="recall queries: text (one per line), jsonl with 'query', or .npy vectors"
    )
    convert.add_argument("--recall-queries", type=int, default=500, help="size of the recall query sample")
    convert.add_argument("--target-recall", type=float, default=0.95, help="recall@10 the stored default must reach")
    convert.add_argument("--no-recall", action="store_true", help="skip measuring recall")
    convert.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all cores)")
    convert.add_argument("--force", action="store_true", help="replace an existing output directory")
    convert.add_argument("--no-progress", action="store_true", help="no progress bars")
    convert.set_defaults(func=cmd_convert)
    _add_import_parser(commands)

    verify = command("verify", "check an index directory: checksums, counts, a query")
    verify.add_argument("index_dir", help="index directory made by `retriever build`")
    verify.add_argument("--data-dir", default=".cache", help="cache directory for converted corpora")
    verify.set_defaults(func=cmd_verify)

    plan = command("plan", "memory a pod needs for an index directory, as Helm values")
    plan.add_argument("index_dir", help="index directory made by `retriever build`")
    plan.add_argument("--workers", type=int, default=1, help="server worker processes per pod")
    plan.add_argument("--model-gib", type=float, default=None, help="model memory (default: from its files)")
    plan.add_argument("--headroom-gib", type=float, default=0.5, help="extra GiB on top (chart: memory.headroomGiB)")
    plan.add_argument("--gpu", action="store_true", help="the index on a GPU (chart: gpu.enabled): GPU memory too")
    plan.add_argument(
        "--index-dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="its dtype on the GPU"
    )
    plan.add_argument("--json", action="store_true", help="print the whole report as JSON")
    plan.set_defaults(func=cmd_plan)

    load = command(
        "load",
        "load-test a running server and print throughput and latency",
        "environment:\n  RETRIEVER_TOKEN  bearer token for a server with auth on (used when --token is not given)",
    )
    load.add_argument("--server", default="http://127.0.0.1:8000", help="base URL of the server")
    load.add_argument("--requests", type=int, default=1000, help="requests to send")
    load.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    load.add_argument("--queries-per-request", type=int, default=1, help="queries in each request")
    load.add_argument("--topk", type=int, default=3, help="topk of each request")
    load.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    load.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    load.add_argument(
        "--token", default=None, help="bearer token; prefer env RETRIEVER_TOKEN (a flag is visible in `ps`)"
    )
    load.add_argument("--json", default=None, help="also write the summary to this file")
    load.set_defaults(func=cmd_load)

    export = command("export-onnx", "export an index directory's model for --encoder-runtime onnx/openvino (checked)")
    export.add_argument("index_dir", help="index directory made by `retriever build`")
    export.add_argument("--model", default=None, help="model directory (default: the manifest's)")
    export.set_defaults(func=cmd_export_onnx)

    demo = command("demo-corpus", "write the demo corpus as Search-R1 jsonl")
    demo.add_argument("out", help="jsonl file to write")
    demo.add_argument("--limit", type=int, default=None, help="only the first N articles")
    demo.set_defaults(func=cmd_demo_corpus)
    return parser


def _describe_os_error(exc: OSError) -> str:
    """An OS refusal as one line naming the path, with the usual fix for the two common ones."""
    where = f"{exc.filename}: " if exc.filename else ""
    text = f"{where}{exc.strerror or exc}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        text += (
            f" (this process runs as uid {os.getuid()}: make the directory writable by it; in Kubernetes the "
            "pod's securityContext.fsGroup does that for emptyDir and most PVCs, not for hostPath)"
        )
    elif exc.errno == errno.ENOSPC:
        text += " (the volume is full: give it more space, or point --work-dir / the output at a larger one)"
    return text


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # FAISS logs every SIMD variant it could not import at INFO ("ModuleNotFoundError ..."): noise
    # that reads like a failure in a pod's log. Its dispatching build needs none of them.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    try:
        return int(args.func(args) or EXIT_OK)
    except _usage_errors() as exc:
        print(f"retriever: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RetrieverError as exc:  # a complete message for the user: no traceback
        print(f"retriever: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except OSError as exc:  # the environment refused: an unwritable volume, a full disk
        print(f"retriever: error: {_describe_os_error(exc)}", file=sys.stderr)
        return EXIT_DATA
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a command's own usage message (`retriever load`)
            print(exc.code, file=sys.stderr)
            return EXIT_USAGE
        raise
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
