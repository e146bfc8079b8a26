"""Device names (cpu, cuda, cuda:N): checked once, at start, with a message saying what is missing.

Light on purpose: the CLI's preflight imports it in the supervisor, which must not import torch or
FAISS (workers are forked from a fork server; see app/server.py). torch is imported only when a CUDA
device is asked for, and the preflight asks in a child process so CUDA is never initialised here.
"""

from __future__ import annotations

import os
import subprocess
import sys

from app.errors import RetrieverError


class DeviceError(RetrieverError):
    """A device that does not exist here (CUDA asked for on a machine without it); says so plainly."""


def cuda_device_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def resolve_device(name: str, setting: str = "--device") -> str:
    """'cpu', 'cuda' or 'cuda:N' as a canonical device string; a device that does not exist here is a
    DeviceError naming the setting, at once (not a CUDA error deep inside the first request)."""
    check_device_name(name, setting)
    text = name.strip().lower()
    if text == "cpu":
        return "cpu"
    if text.startswith("cuda"):
        import torch

        ordinal = int(text[5:]) if ":" in text else 0
        if torch.version.cuda is None:
            raise DeviceError(
                f"{setting} {name}: this torch ({torch.__version__}) is a CPU-only build, CUDA is not available; "
                "use the CUDA image (docker build --build-arg TORCH_VARIANT=cuda) or pass cpu"
            )
        count = cuda_device_count()
        if count == 0:
            raise DeviceError(f"{setting} {name}: no CUDA device is visible here (torch.cuda.device_count() is 0)")
        if ordinal >= count:
            raise DeviceError(f"{setting} {name}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
        return f"cuda:{ordinal}"
    raise AssertionError(text)  # check_device_name let it through


def check_device_name(name: str, setting: str) -> None:
    """The spelling alone (no torch import): cpu, cuda or cuda:N."""
    text = name.strip().lower()
    if text not in ("cpu", "cuda") and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise DeviceError(f"{setting} {name!r}: expected cpu, cuda or cuda:N")


def cuda_probe_message(*names: tuple[str, str]) -> str | None:
    """For the CLI's preflight: why CUDA devices named in settings cannot be used, checked in a child
    process so that this one (which forks the workers) never initialises CUDA. None when all is well."""
    for setting, value in names:
        check_device_name(value, setting)
    wanted = [(setting, value) for setting, value in names if value.strip().lower().startswith("cuda")]
    if not wanted:
        return None
    script = (
        "import sys\nfrom app.devices import DeviceError, resolve_device\n"
        "try:\n" + "".join(f"    resolve_device({v!r}, {s!r})\n" for s, v in wanted) + "except DeviceError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    env = dict(os.environ, PYTORCH_NVML_BASED_CUDA_CHECK="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    if done.returncode == 0:
        return None
    return done.stdout.strip() or f"cannot check the CUDA device: {done.stderr.strip()[-300:]}"


def choose_backend(index_device: str, index_backend: str = "auto") -> str:
    """faiss or torch: auto means FAISS on the CPU and torch on a GPU (FAISS GPU is not used at all)."""
    on_cpu = index_device.strip().lower() == "cpu"
    if index_backend == "auto":
        return "faiss" if on_cpu else "torch"
    if index_backend == "faiss" and not on_cpu:
        raise DeviceError(f"--index-backend faiss runs on the cpu only (got --index-device {index_device})")
    return index_backend
