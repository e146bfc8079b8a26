"""The chart's GPU pod (gpu.*): the GPU limit, runtime class, tolerations and node selector, the env that
puts each stage on the GPU, and host/GPU memory from the same formula as `retriever plan --gpu`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from chart_helpers import REPO, ci, env_of, render, render_error
from test_plan_matches_chart import fake_index_dir

GPU = {"gpu.enabled": True}


def test_cpu_pods_carry_nothing_of_the_gpu() -> None:
    r = render()
    assert "runtimeClassName" not in r.pod_spec
    assert "nvidia.com/gpu" not in r.server["resources"]["limits"]
    assert "retriever.io/gpu-memory-gib" not in (r.deployment["spec"]["template"]["metadata"].get("annotations") or {})
    assert not {"RETRIEVER_INDEX_DEVICE", "RETRIEVER_DEVICE"} & env_of(r.server).keys()
    assert r.server["image"].endswith(":0.1.0")


def test_gpu_pod_asks_for_the_gpu_and_lands_on_gpu_nodes() -> None:
    r = render([ci("gpu")], {"tolerations": [{"key": "big-memory", "operator": "Exists"}], "gpu.count": 2})
    spec, server = r.pod_spec, r.server
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert spec["runtimeClassName"] == "nvidia"
    # The user's placement stays; the GPU's is added.
    assert spec["nodeSelector"] == {"retriever.io/index": "wiki18-flat", "nvidia.com/gpu.product": "NVIDIA-H200"}
    assert {"key": "big-memory", "operator": "Exists"} in spec["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    env = env_of(server)
    assert (env["RETRIEVER_INDEX_DEVICE"], env["RETRIEVER_DEVICE"]) == ("cuda", "cuda")
    assert (env["RETRIEVER_INDEX_DTYPE"], env["RETRIEVER_PIPELINE"]) == ("float16", "false")
    assert server["image"] == "localhost/retriever:dev-cuda"


def test_gpu_values_choose_dtype_encoder_runtime_and_resource_name() -> None:
    r = render(
        set_values=GPU
        | {
            "gpu.indexDtype": "bfloat16",
            "gpu.encoder": False,
            "gpu.pipeline": True,
            "gpu.runtimeClassName": "",
            "gpu.resourceName": "amd.com/gpu",
            "gpu.imageTagSuffix": "-rocm",
        }
    )
    env = env_of(r.server)
    assert (env["RETRIEVER_INDEX_DTYPE"], env["RETRIEVER_DEVICE"], env["RETRIEVER_PIPELINE"]) == (
        "bfloat16",
        "cpu",
        "true",
    )
    assert "runtimeClassName" not in r.pod_spec
    assert r.server["resources"]["limits"]["amd.com/gpu"] == 1
    assert r.server["image"].endswith("-rocm")


def test_index_moves_from_host_memory_to_gpu_memory() -> None:
    """wiki-18 on an H200: host = ceil(corpus 13 + model 0.5 + 1 x 0.75 + headroom 2) = 17 GiB (no index);
    GPU = ceil(60.1 x 2/4 + 0.5 / 2 + 3) = 34 GiB."""
    r = render([ci("gpu")])
    assert r.server["resources"]["requests"]["memory"] == "17Gi" == r.server["resources"]["limits"]["memory"]
    annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["retriever.io/gpu-memory-gib"] == str(math.ceil(60.1 * 2 / 4 + 0.5 / 2 + 3)) == "34"
    cpu = render([ci("gpu")], {"gpu.enabled": False})
    assert cpu.server["resources"]["requests"]["memory"] == f"{math.ceil(60.1 + 13 + 0.5 + 0.75 + 2)}Gi"
    assert render([ci("gpu")], {"gpu.indexDtype": "float32"}).deployment["spec"]["template"]["metadata"]["annotations"][
        "retriever.io/gpu-memory-gib"
    ] == str(math.ceil(60.1 + 0.25 + 3))


@pytest.mark.parametrize(("index_mib", "dtype"), [(300, "float16"), (700, "bfloat16"), (900, "float32")])
def test_plan_gpu_values_render_to_the_planned_host_and_gpu_memory(tmp_path: Path, index_mib: int, dtype: str) -> None:
    index_dir = fake_index_dir(tmp_path / "idx", index_mib, 500)
    proc = subprocess.run(
        [sys.executable, "-m", "app", "plan", str(index_dir), "--gpu", "--index-dtype", dtype, "--json"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    planned = json.loads(proc.stdout)
    values = tmp_path / "plan-values.yaml"
    values.write_text(planned["helm_values"])
    r = render([values])
    assert r.server["resources"]["requests"]["memory"] == f"{planned['memory_gib']}Gi"
    annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["retriever.io/gpu-memory-gib"] == str(planned["gpu_memory_gib"])
    assert planned["gpu_memory_gib"] >= math.ceil(
        index_mib / 1024 * {"float32": 1, "bfloat16": 0.5, "float16": 0.5}[dtype]
    )


def test_plan_refuses_several_workers_on_a_gpu(tmp_path: Path) -> None:
    index_dir = fake_index_dir(tmp_path / "idx", 10, 1)
    proc = subprocess.run(
        [sys.executable, "-m", "app", "plan", str(index_dir), "--gpu", "--workers", "2"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode != 0 and "one worker" in proc.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"server.workers": 2}, "gpu.enabled needs server.workers = 1 (got 2)"),
        ({"index.sizeGiB": 60.1, "gpu.memoryGiB": 24}, "the GPU memory need is 34 GiB"),
        (
            {"resources": {"requests": {"memory": "20Gi"}, "limits": {"memory": "20Gi"}}},
            "explicit resources have no limits.nvidia.com/gpu",
        ),
        ({"server.settings": {"INDEX_DEVICE": "cpu"}}, "server.settings.INDEX_DEVICE is managed by the chart"),
    ],
)
def test_gpu_misconfigurations_fail_the_render_with_the_fix(values: dict, message: str) -> None:
    assert message in render_error(set_values=GPU | values)


def test_explicit_resources_with_the_gpu_limit_are_used_verbatim() -> None:
    resources = {"requests": {"memory": "20Gi"}, "limits": {"memory": "20Gi", "nvidia.com/gpu": 1}}
    assert render(set_values=GPU | {"resources": resources}).server["resources"] == resources


@pytest.mark.parametrize(("values", "field"), [({"gpu.indexDtype": "int8"}, "indexDtype"), ({"gpu.cards": 1}, "cards")])
def test_schema_rejects_unknown_gpu_values(values: dict, field: str) -> None:
    assert field in render_error(set_values=values)
