"""Chart rules of the Search-R1 / wiki-18 path: the fetch initContainer, the model source, warm-up
before ready, the rollout strategy, the auth-token checksum, and the documented example values."""

from __future__ import annotations

import math
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from chart_helpers import CHART, container, env_of, helm, mount, render, render_error, tool_path, volume

from app.plan import GIB, PER_WORKER_OVERHEAD_GIB, _gib

EXAMPLE = CHART / "examples" / "search-r1-wiki18-values.yaml"
# Search-R1's e5_Flat.index: 21,015,324 x 768 float32 + FAISS's Flat header (37 bytes) and vector length (8).
WIKI18_INDEX_BYTES = 21_015_324 * 768 * 4 + 45
E5_BASE_WEIGHTS_BYTES = 438_000_000  # model.safetensors of intfloat/e5-base-v2

FETCH = {
    "index.source": "initContainer",
    "index.subDir": "wiki",
    "index.fetch.enabled": True,
    "index.fetch.indexUrls": ["http://files.example/part_aa", "http://files.example/part_ab"],
    "index.fetch.corpusUrl": "http://files.example/wiki-18.jsonl.gz",
    "index.fetch.modelUrl": "http://files.example/e5-base-v2.tar.gz",
}


def test_example_memory_is_the_charts_formula_for_wiki18() -> None:
    values = yaml.safe_load(EXAMPLE.read_text())
    # The inputs are Search-R1's sizes, computed the way `retriever plan` does.
    assert Decimal(str(values["index"]["sizeGiB"])) == _gib(WIKI18_INDEX_BYTES)
    assert Decimal(str(values["model"]["sizeGiB"])) == _gib(2 * E5_BASE_WEIGHTS_BYTES)
    assert values["memory"]["perWorkerOverheadGiB"] == PER_WORKER_OVERHEAD_GIB
    terms = (
        Decimal(str(values["index"]["sizeGiB"]))
        + Decimal(str(values["corpus"]["sizeGiB"]))
        + Decimal(str(values["model"]["sizeGiB"]))
        + values["server"]["workers"] * Decimal(str(values["memory"]["perWorkerOverheadGiB"]))
        + Decimal(str(values["memory"]["headroomGiB"]))
    )
    expected = f"{math.ceil(terms)}Gi"
    server = render([EXAMPLE]).server
    assert server["resources"]["requests"]["memory"] == server["resources"]["limits"]["memory"] == expected
    assert expected == "77Gi"  # what the example's comments and the README quote
    assert WIKI18_INDEX_BYTES / GIB > 60


def test_example_lints_and_validates() -> None:
    lint = helm("lint", "--strict", "--quiet", str(CHART), "-f", str(EXAMPLE))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = render([EXAMPLE])
    proc = subprocess.run(
        [tool_path("KUBE_VALIDATE"), "--strict", "-k", "1.33.0", "-"],
        input=rendered.text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and not ln.startswith("INFO ")]
    assert proc.returncode == 0 and not errors, "\n".join(errors)


def test_example_schedules_on_large_memory_nodes_and_fetches_to_local_disk() -> None:
    rendered = render([EXAMPLE])
    spec = rendered.pod_spec
    assert spec["nodeSelector"] == {"retriever.io/pool": "large-memory"}
    assert spec["tolerations"][0]["effect"] == "NoSchedule"
    assert volume(spec, "index")["hostPath"]["type"] == "DirectoryOrCreate"
    fetch = container(spec, "fetch-index")
    args = fetch["args"]
    assert args[:4] == ["fetch", "--no-progress", "--out", "/data/index/wiki-18"]
    urls = args[args.index("--index-url") + 1 : args.index("--corpus-url")]
    assert [u.rsplit("/", 1)[1] for u in urls] == ["part_aa", "part_ab"]
    assert args[args.index("--preset") + 1] == "search-r1-e5"
    assert args[args.index("--model") + 1] == "/models/e5-base-v2"
    server_env = env_of(rendered.server)
    assert server_env["RETRIEVER_INDEX_DIR"] == "/data/index/wiki-18"
    assert server_env["RETRIEVER_WARMUP"] == "true" and server_env["RETRIEVER_READY_BEFORE_WARMUP"] == "false"
    budget = rendered.server["startupProbe"]["periodSeconds"] * rendered.server["startupProbe"]["failureThreshold"]
    assert budget >= 3600 and rendered.deployment["spec"]["progressDeadlineSeconds"] > budget


def test_fetch_container_runs_retriever_fetch_into_the_index_volume() -> None:
    rendered = render(set_values={**FETCH, "index.fetch.indexSha256": ["a" * 64, "b" * 64]})
    spec = rendered.pod_spec
    [init] = spec["initContainers"]
    assert init["name"] == "fetch-index" and init["command"] == ["retriever"]
    assert init["image"] == rendered.server["image"], "the fetcher is the server image (it runs `retriever import`)"
    args = init["args"]
    assert args[args.index("--index-sha256") + 1 : args.index("--index-sha256") + 3] == ["a" * 64, "b" * 64]
    assert args[args.index("--model-url") + 1] == FETCH["index.fetch.modelUrl"]
    assert "--model" not in args
    assert mount(init, "index").get("readOnly") is not True
    assert mount(rendered.server, "index")["readOnly"] is True
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert env_of(rendered.server)["RETRIEVER_INDEX_DIR"] == "/data/index/wiki"
    assert "emptyDir" in volume(spec, "index")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"index.subDir": ""}, "index.fetch.enabled needs index.subDir"),
        ({"index.source": "pvc", "index.pvc.claimName": "c"}, 'needs index.source "initContainer"'),
        ({"index.fetch.corpusUrl": ""}, "needs index.fetch.indexUrls"),
        ({"index.fetch.indexSha256": ["a" * 64]}, "1 checksum(s) for 2 URL(s)"),
        ({"index.fetch.modelUrl": ""}, "needs index.fetch.modelUrl"),
    ],
)
def test_fetch_misconfigurations_fail_the_render(change: dict, message: str) -> None:
    assert message in render_error(set_values={**FETCH, **change})


def test_model_sources() -> None:
    default = render()
    assert "RETRIEVER_MODEL" not in env_of(default.server), "index: the manifest's copy inside the index"
    image = render(set_values={"model.source": "image", "model.path": "/models/e5-base-v2"})
    assert env_of(image.server)["RETRIEVER_MODEL"] == "/models/e5-base-v2"
    pvc = render(set_values={"model.source": "pvc", "model.pvc.claimName": "models", "model.path": "e5-base-v2"})
    assert env_of(pvc.server)["RETRIEVER_MODEL"] == "/models/e5-base-v2"
    assert volume(pvc.pod_spec, "model")["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert mount(pvc.server, "model") == {"name": "model", "mountPath": "/models", "readOnly": True}
    host = render(set_values={"model.source": "hostPath", "model.hostPath.path": "/mnt/models/e5"})
    assert volume(host.pod_spec, "model")["hostPath"]["path"] == "/mnt/models/e5"
    assert env_of(host.server)["RETRIEVER_MODEL"] == "/models"
    assert 'model.source is "image" but model.path is empty' in render_error(set_values={"model.source": "image"})
    assert "model.pvc.claimName is empty" in render_error(set_values={"model.source": "pvc"})
    assert "managed by the chart" in render_error(
        set_values={"model.source": "image", "model.path": "/m", "server.settings": {"MODEL": "x"}}
    )


def test_warm_up_and_cache_limit_reach_the_server() -> None:
    env = env_of(render().server)
    assert env["RETRIEVER_WARMUP"] == "true" and env["RETRIEVER_READY_BEFORE_WARMUP"] == "false"
    assert env["RETRIEVER_CACHE_SIZE_LIMIT_BYTES"] == str(2 * GIB)  # cacheSizeLimit: 2Gi
    env = env_of(render(set_values={"server.readyBeforeWarmup": True, "cacheSizeLimit": "512Mi"}).server)
    assert env["RETRIEVER_READY_BEFORE_WARMUP"] == "true" and env["RETRIEVER_CACHE_SIZE_LIMIT_BYTES"] == str(2**29)
    assert "managed by the chart" in render_error(set_values={"server.settings": {"WARMUP": "false"}})


def test_strategy_is_configurable_and_defaults_to_no_surge() -> None:
    assert render().deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    surge = render(set_values={"strategy.rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    assert surge.deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    recreate = render(set_values={"strategy.type": "Recreate"})
    assert recreate.deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_token_change_changes_the_pod_annotation() -> None:
    def annotation(tokens: list[str]) -> str:
        meta = render(set_values={"auth.enabled": True, "auth.tokens": tokens}).deployment["spec"]["template"]
        return meta["metadata"]["annotations"]["checksum/auth-secret"]

    first, same, changed = annotation(["token-aaaaaaaa"]), annotation(["token-aaaaaaaa"]), annotation(["token-bbbb1"])
    assert first == same != changed and len(first) == 64
    off = render().deployment["spec"]["template"]["metadata"]
    assert "checksum/auth-secret" not in off.get("annotations", {})
    kept = render(
        set_values={"podAnnotations": {"team": "rl"}, "auth.enabled": True, "auth.tokens": ["token-aaaaaaaa"]}
    )
    assert kept.deployment["spec"]["template"]["metadata"]["annotations"]["team"] == "rl"


def test_example_file_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "## Serving Search-R1's wiki-18" in readme
    assert "helm/retriever/examples/search-r1-wiki18-values.yaml" in readme
