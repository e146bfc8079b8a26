"""End to end on this machine, no cluster: the chart rendered by `helm template`, run by `podman kube play`.

What runs is the real image (`make image`, localhost/retriever:dev) under the chart's real Deployment:
its env, securityContext (UID 10001, read-only root filesystem, no capabilities), emptyDirs and memory
limit. Checked, in order, on one pod:
  1. /livez and /health answer (bounded wait), the process is `retriever serve` as PID 1 and UID 10001;
  2. POST /retrieve answers in Search-R1's shape, with and without scores, and finds labelled queries
     in the baked demo index (the model and index inside the image really work);
  3. the container's memory limit (podman's HostConfig and the cgroup the kernel enforces) equals the
     chart's `resources.limits.memory`;
  4. SIGTERM (`podman stop`, as the kubelet does after preStop) while large requests are in flight:
     every one of them completes with 200 and a full answer, and the server exits 0 within the grace period;
  5. `podman kube down` removes the pod, by name.

podman kube play differs from a kubelet in ways the test works around: it ignores readiness probes
and preStop hooks, and publishes a container port on the host only when `hostPort` is set (on 0.0.0.0
unless `hostIP` says otherwise), so the test sets hostPort to a free port with hostIP 127.0.0.1 and
queries 127.0.0.1 only.

Run with `make podman-e2e` (builds the image first; part of `make test`). It skips only when podman
itself cannot run containers here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import yaml
from chart_helpers import REPO, render, tool_path

from app.devtools.server import ServerNotReady, free_port, wait_http_ok

IMAGE = os.environ.get("RETRIEVER_E2E_IMAGE", "localhost/retriever:dev")
RELEASE = "retriever-e2e"  # contains the chart name, so every object is named "retriever-e2e"
# podman kube play names a Deployment's pods <name>-pod-<i> (podman 4.3; <name>-pod in later releases)
# and their containers <pod>-<container>.
POD_PREFIX = f"{RELEASE}-pod"
HEALTH_TIMEOUT_S = 300
IMAGE_BUILD_TIMEOUT_S = 3600

pytestmark = pytest.mark.timeout(IMAGE_BUILD_TIMEOUT_S + 900)


def _podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "docker" / "containers.conf"))
    return env


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=_podman_env(), cwd=REPO
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def quantity_bytes(q: str) -> int:
    """A Kubernetes memory quantity as bytes (the suffixes a chart would use)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q).strip())
    assert m, f"cannot read memory quantity {q!r}"
    scale = {
        None: 1,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
    }
    return int(float(m.group(1)) * scale[m.group(2)])


@pytest.fixture(scope="module")
def podman_ready() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed here (`make tools-podman` installs it)")
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-400:]}")


@pytest.fixture(scope="module")
def image(podman_ready: None) -> str:
    """The image under test; built with `make image` when it is not there yet (podman caches layers)."""
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        proc = subprocess.run(
            ["make", "image", f"IMAGE={IMAGE}"], cwd=REPO, capture_output=True, text=True, timeout=IMAGE_BUILD_TIMEOUT_S
        )
        assert proc.returncode == 0, f"make image failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return IMAGE


@pytest.fixture(scope="module")
def manifest(image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The chart rendered for the local image, its server port published on 127.0.0.1 only."""
    tool_path("HELM")  # fails clearly when helm is missing
    repo, _, tag = image.rpartition(":")
    rendered = render(
        set_values={"image.repository": repo, "image.tag": tag, "image.pullPolicy": "Never"},
        release=RELEASE,
        namespace="default",
    )
    deployment = rendered.deployment
    assert deployment["metadata"]["name"] == RELEASE
    server = rendered.server
    port = free_port()
    for p in server["ports"]:
        if p["name"] == "http":
            p["hostPort"] = port
            p["hostIP"] = "127.0.0.1"
    # podman kube play runs Pods and Deployments (plus ConfigMaps, Secrets, PVCs); the other kinds the
    # chart renders (Service, ServiceAccount, PodDisruptionBudget, ...) mean nothing without a cluster.
    docs = [d for d in rendered.docs if d["kind"] in ("Deployment", "ConfigMap", "Secret")]
    path = tmp_path_factory.mktemp("kube") / "retriever-e2e.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return {
        "path": path,
        "port": port,
        "memory_limit": quantity_bytes(server["resources"]["limits"]["memory"]),
        "grace_s": int(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]),
    }


def _logs(container: str) -> str:
    proc = podman("logs", "--tail", "60", container, check=False)
    return (proc.stdout + proc.stderr)[-6000:]


def _state(container: str) -> dict[str, Any]:
    proc = podman("inspect", "--type", "container", container, check=False)
    if proc.returncode != 0:
        return {}
    return json.loads(proc.stdout)[0]


def _stopped(*containers: str) -> Callable[[], str | None]:
    """For wait_http_ok's `gone`: why waiting is pointless (a container no longer up), or None."""

    def first_stopped() -> str | None:
        for container in containers:
            state = _state(container).get("State", {})
            if state.get("Status") not in ("running", "created", "configured", "initialized"):
                return f"{container} is {state.get('Status')} (exit {state.get('ExitCode')})"
        return None

    return first_stopped


def _our_pods() -> list[str]:
    proc = podman("pod", "ps", "--filter", f"name=^{POD_PREFIX}", "--format", "{{.Name}}", check=False)
    return [name for name in proc.stdout.split() if name.startswith(POD_PREFIX)]


def _server_container(pod_name: str) -> str:
    info = json.loads(podman("pod", "inspect", pod_name).stdout)
    info = info[0] if isinstance(info, list) else info
    names = [c["Name"] for c in info["Containers"] if c["Name"].endswith("-retriever")]
    assert len(names) == 1, f"pod {pod_name} holds {[c['Name'] for c in info['Containers']]}"
    return names[0]


@pytest.fixture(scope="module")
def pod(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The Deployment running under podman; torn down by name whatever happens."""
    path = str(manifest["path"])
    podman("kube", "down", path, check=False)  # a leftover of an interrupted run (same names)
    played = podman("kube", "play", "--replace", path, timeout=300)
    try:
        pods = _our_pods()
        assert len(pods) == 1, f"expected one pod {POD_PREFIX}*, found {pods}: {played.stdout}{played.stderr}"
        container = _server_container(pods[0])
        base = f"http://127.0.0.1:{manifest['port']}"

        try:
            wait_http_ok(
                f"{base}/health",
                timeout=HEALTH_TIMEOUT_S,
                what=f"container {container}",
                gone=_stopped(container),
                log=lambda: _logs(container),
                interval=1.0,
            )
        except ServerNotReady as exc:
            pytest.fail(str(exc))
        yield {**manifest, "base": base, "container": container}
    finally:
        podman("kube", "down", path, check=False, timeout=180)
        for name in _our_pods():  # by name, should kube down have left any
            podman("pod", "rm", "--force", "--ignore", name, check=False, timeout=180)
        assert not _our_pods(), "podman kube down left the pod behind"


def test_pod_serves_as_the_chart_says(pod: dict[str, Any]) -> None:
    with httpx.Client(base_url=pod["base"], timeout=30) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ready", health.text
        assert client.get("/livez").status_code == 200
    # Exec-form entrypoint: the server is PID 1 (it receives SIGTERM itself), as the numeric UID.
    cmdline = podman("exec", pod["container"], "cat", "/proc/1/cmdline").stdout.split("\0")
    assert any(part.endswith("retriever") for part in cmdline[:2]) and "serve" in cmdline, cmdline
    assert podman("exec", pod["container"], "id", "-u").stdout.strip() == "10001"
    state = _state(pod["container"])
    assert state["HostConfig"]["ReadonlyRootfs"] is True, "the chart asks for a read-only root filesystem"


def _check_search_r1_shape(body: dict[str, Any], queries: int, topk: int, scores: bool) -> None:
    assert set(body) == {"result"}, body.keys()
    assert len(body["result"]) == queries
    for hits in body["result"]:
        assert len(hits) == topk
        previous = float("inf")
        for hit in hits:
            doc = hit["document"] if scores else hit
            # Search-R1 reads document.contents and splits the quoted title line from the text.
            assert isinstance(doc["id"], str) and isinstance(doc["contents"], str)
            title, _, text = doc["contents"].partition("\n")
            assert title.startswith('"') and title.endswith('"') and text, doc["contents"][:120]
            if scores:
                assert set(hit) == {"document", "score"}
                assert isinstance(hit["score"], float) and hit["score"] <= previous + 1e-6
                previous = hit["score"]


def test_retrieve_search_r1_shape_and_quality(pod: dict[str, Any], image: str) -> None:
    from app.demo import articles, labelled_queries  # the corpus the image baked, read on the host

    limit = int(json.loads(podman("image", "inspect", image).stdout)[0]["Labels"]["io.retriever.demo-articles"])
    labelled = labelled_queries(limit)[:20]
    assert len(labelled) >= 10, "the demo corpus should hold labelled queries"
    titles = [a.title for a in articles(limit)]
    queries = [q for q, _ in labelled]
    with httpx.Client(base_url=pod["base"], timeout=60) as client:
        r = client.post("/retrieve", json={"queries": queries, "topk": 3, "return_scores": True})
        assert r.status_code == 200, r.text[:500]
        body = r.json()
        _check_search_r1_shape(body, len(queries), 3, scores=True)
        found = sum(
            any(hit["document"]["contents"].startswith(f'"{titles[row]}"') for hit in hits)
            for (_, row), hits in zip(labelled, body["result"], strict=True)
        )
        assert found >= 0.6 * len(labelled), f"only {found}/{len(labelled)} labelled queries found in the top 3"

        # return_scores false: rows only (Search-R1's own server answers 500 here; ours must not).
        r = client.post("/retrieve", json={"queries": queries[:2], "topk": None, "return_scores": False})
        assert r.status_code == 200, r.text[:500]
        _check_search_r1_shape(r.json(), 2, 3, scores=False)


def test_memory_limit_is_the_charts(pod: dict[str, Any]) -> None:
    expected = pod["memory_limit"]
    assert _state(pod["container"])["HostConfig"]["Memory"] == expected
    # What the kernel enforces: the container's own memory cgroup (v2 memory.max, v1 limit_in_bytes).
    read = podman(
        "exec", pod["container"], "sh", "-c",
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )  # fmt: skip
    assert int(read.stdout.strip()) == expected, f"cgroup limit {read.stdout.strip()} != chart's {expected}"


def test_sigterm_drains_in_flight_requests(pod: dict[str, Any]) -> None:
    """The last test: it stops the server. Large requests are in flight when SIGTERM arrives."""
    from app.demo import articles

    # Size the requests to these CPUs: each should take about 1.5 s, so that all four are still in flight
    # when SIGTERM arrives and together they fit well inside the server's graceful timeout.
    texts = [f"{a.title}: {a.extract[:60]}" for a in articles(512)]
    with httpx.Client(base_url=pod["base"], timeout=120) as client:
        started = time.monotonic()
        r = client.post("/retrieve", json={"queries": texts[:64], "topk": 5, "return_scores": True})
        assert r.status_code == 200, r.text[:300]
        per_query = (time.monotonic() - started) / 64
    size = max(16, min(512, int(1.5 / per_query)))
    payload = {"queries": texts[:size], "topk": 5, "return_scores": True}

    def call() -> tuple[int, dict[str, Any] | str, float]:
        with httpx.Client(base_url=pod["base"], timeout=120) as client:
            r = client.post("/retrieve", json=payload)
            return r.status_code, (r.json() if r.status_code == 200 else r.text), time.monotonic()

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures: list[Future[tuple[int, dict[str, Any] | str, float]]] = [pool.submit(call) for _ in range(4)]
        time.sleep(0.3)  # the requests reach the server and wait for the encoder
        pending = [f for f in futures if not f.done()]
        assert pending, "every request finished before SIGTERM: nothing was in flight (make them larger)"
        sent = time.monotonic()
        stopper = threading.Thread(
            target=podman,
            args=("stop", "--time", str(pod["grace_s"]), pod["container"]),
            kwargs={"timeout": pod["grace_s"] + 60},
        )
        stopper.start()
        results = [f.result(timeout=pod["grace_s"] + 30) for f in futures]
        stopper.join(timeout=pod["grace_s"] + 60)
    stopped_after = time.monotonic() - sent
    print(
        f"{len(pending)}/4 requests of {size} queries in flight at SIGTERM; the last answered "
        f"{max(done for _, _, done in results) - sent:.1f}s after it, the server exited after {stopped_after:.1f}s"
    )

    for status, body, _done_at in results:
        assert status == 200, f"a request in flight at SIGTERM failed: {status} {str(body)[:300]}"
        assert isinstance(body, dict)
        _check_search_r1_shape(body, size, 5, scores=True)
    assert any(done_at > sent for _, _, done_at in results), "no request completed after SIGTERM was sent"
    state = _state(pod["container"])["State"]
    assert state["Status"] == "exited", state
    assert state["ExitCode"] == 0, (
        f"exit {state['ExitCode']} (137: killed after the grace period):\n{_logs(pod['container'])}"
    )
    assert stopped_after < pod["grace_s"], f"stop took {stopped_after:.1f}s, grace period {pod['grace_s']}s"


def test_image_carries_the_oci_labels(image: str) -> None:
    """source, created, url, documentation, version (the one in app/__init__.py) and the license."""
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout)
    prefix = "org.opencontainers.image."
    for key in ("source", "url", "documentation"):
        assert labels[prefix + key].startswith("https://"), (key, labels)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels[prefix + "created"]), labels
    init = (REPO / "app" / "__init__.py").read_text()
    assert f'__version__ = "{labels[prefix + "version"]}"' in init
    assert labels[prefix + "licenses"] == "Apache-2.0" and (REPO / "LICENSE").is_file()
