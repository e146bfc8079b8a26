"""The GPU tier's settings, end to end on a machine without a GPU: the torch backend serves the same
answers as FAISS, /info and /metrics say where each stage runs, and CUDA asked for where none exists
fails at once with a message saying so."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from app.demo import labelled_queries
from tests.helpers import DEMO_LIMIT, RunningServer, run_cli, run_server

QUERIES = [query for query, _ in labelled_queries(DEMO_LIMIT)[:12]]


def _retrieve(server: RunningServer) -> list[list[dict]]:
    response = httpx.post(
        f"{server.url}/retrieve", json={"queries": QUERIES, "topk": 3, "return_scores": True}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()["result"]


@pytest.mark.parametrize("extra", [["--index-dtype", "bfloat16"], ["--index-dtype", "float32", "--pipeline"]])
def test_torch_backend_serves_what_faiss_serves_and_says_where_it_runs(
    server: RunningServer, demo_index: Path, tmp_path: Path, extra: list[str]
) -> None:
    args = ["--index-dir", str(demo_index), "--index-device", "cpu", "--index-backend", "torch", *extra]
    with run_server(args, tmp_path) as torch_server:
        got, want = _retrieve(torch_server), _retrieve(server)
        for got_items, want_items in zip(got, want, strict=True):
            # The best passage is the same, and every score within bf16's bound for unit vectors (2^-8).
            assert got_items[0]["document"]["id"] == want_items[0]["document"]["id"]
            for got_item, want_item in zip(got_items, want_items, strict=True):
                assert abs(got_item["score"] - want_item["score"]) <= 2**-8 + 1e-5
        info = httpx.get(f"{torch_server.url}/info", timeout=10).json()
        dtype = extra[1]
        assert info["index"]["backend"] == "torch" and info["index"]["device"] == "cpu"
        assert info["index"]["dtype"] == dtype
        assert info["batching"]["pipeline"] is ("--pipeline" in extra)
        assert info["stages"] == {
            "encode": {"device": "cpu", "dtype": "float32"},
            "search": {"backend": "torch", "device": "cpu", "dtype": dtype},
        }
        metrics = httpx.get(f"{torch_server.url}/metrics", timeout=10).text
        held = re.search(r'^retriever_index_device_bytes\{device="cpu"\} (\S+)$', metrics, re.M)
        assert held and float(held.group(1)) == info["index"]["device_bytes"] > 0
        assert 'retriever_stage_device_info{device="cpu",dtype="float32",stage="encode"} 1' in metrics
        assert f'retriever_stage_device_info{{device="cpu",dtype="{dtype}",stage="search"}} 1' in metrics


def test_faiss_default_reports_the_cpu_and_no_device_memory(server: RunningServer) -> None:
    info = httpx.get(f"{server.url}/info", timeout=10).json()
    assert info["stages"]["search"] == {"backend": "faiss", "device": "cpu", "dtype": "float32"}
    assert info["index"]["device_bytes"] == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--index-device", "cuda"], r"--index-device cuda: .*(CPU-only build|no CUDA device)"),
        (["--device", "cuda:0"], r"--device cuda:0: .*(CPU-only build|no CUDA device)"),
        (["--index-device", "gpu0"], r"--index-device 'gpu0': expected cpu, cuda or cuda:N"),
        (["--index-device", "cuda", "--index-backend", "faiss"], r"--index-backend faiss runs on the cpu only"),
    ],
)
def test_cuda_where_none_exists_fails_at_once_naming_the_setting(
    demo_index: Path, flags: list[str], message: str
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    started = time.monotonic()
    done = run_cli("serve", "--index-dir", str(demo_index), "--port", "0", *flags, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.search(r"retriever: error: " + message, done.stderr), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60  # before any model or index is read


def _dockerfile_torch_step(variant: str) -> str:
    """The Dockerfile's torch RUN step as a shell script, ARGs filled in, `pip` a no-op (the torch
    already installed here is what the check then looks at)."""
    text = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    step = re.search(r"^RUN (case \"\$\{TORCH_VARIANT\}\".*?)\n(?!\s)", text, re.S | re.M)
    assert step, 'the Dockerfile\'s torch step (RUN case "${TORCH_VARIANT}" ...) is missing'
    script = step.group(1)
    for name, value in {"TORCH_VARIANT": variant, "TORCH_VERSION": "2.13.0", "TORCH_INDEX_URL": "cpu-index"}.items():
        script = script.replace("${" + name + "}", value)
    return script.replace("${PIP_INDEX_URL}", "pypi")


@pytest.mark.parametrize(("variant", "accepted"), [("cpu", True), ("cuda", False), ("rocm", False)])
def test_image_torch_variant_is_checked_against_the_torch_installed(variant: str, accepted: bool) -> None:
    """The image build fails unless the torch it got is the variant asked for (here torch is the CPU build)."""
    import subprocess
    import sys

    import torch

    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build")
    script = "pip() { :; }\npython3() { " + sys.executable + ' "$@"; }\n' + _dockerfile_torch_step(variant)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode == 0) is accepted, done.stderr
    if variant == "cuda":
        assert "not the cuda build of 2.13.0" in done.stderr
    if variant == "rocm":
        assert done.returncode == 2 and "TORCH_VARIANT must be cpu or cuda" in done.stderr
