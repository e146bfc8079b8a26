"""Helpers for the Helm chart tests (fixtures are in conftest.py).

The chart is rendered with the real `helm template` into a list of objects (yaml.safe_load_all), and
tests assert on those objects, the way Apache Airflow's chart tests do. Tool paths come from the env
(HELM, KUBECTL, KUBE_VALIDATE, CHECKOV, as `make k8s-test` sets them) or default to the pinned copies
in .tools/ (`make tools-k8s`). A missing tool fails the run: these tests never skip for that.

Live-cluster tests (test_live_cluster.py) run only with `--cluster` or KUBECONFIG set.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "retriever"
CI_DIR = CHART / "ci"
CI_VALUES = sorted(CI_DIR.glob("*-values.yaml"))
RELEASE = "retriever"
NAMESPACE = "retriever"
FULLNAME = "retriever"  # the release name contains the chart name, so fullname == release name
GiB = 1024**3

_TOOL_DEFAULTS = {
    "HELM": ".tools/bin/helm",
    "KUBECTL": ".tools/bin/kubectl",
    "KUBE_VALIDATE": ".tools/venv/bin/kubernetes-validate",
    "CHECKOV": ".tools/venv/bin/checkov",
}


def tool_path(name: str) -> str:
    """Absolute path of a pinned tool (env override, else .tools/); fails the test when missing."""
    value = os.environ.get(name) or _TOOL_DEFAULTS[name]
    path = Path(value) if Path(value).is_absolute() else REPO / value
    if not path.exists():
        found = shutil.which(value) if "/" not in value else None
        if found:
            return found
        pytest.fail(f"{name} not found at {path}: run `make tools-k8s` first", pytrace=False)
    return str(path)


def ci_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


class RenderError(Exception):
    """`helm template` failed; the message is helm's stderr."""


@dataclass
class Rendered:
    """The objects one `helm template` produced."""

    docs: list[dict[str, Any]]
    text: str = field(repr=False, default="")

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def maybe(self, kind: str, name: str | None = None) -> dict[str, Any] | None:
        # Without a name: the server's object, never the optional encoder's (ask for that one by name).
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name or (name is None and not _is_encoder(d))]
        assert len(found) <= 1, f"more than one {kind} named {name}: {[d['metadata']['name'] for d in found]}"
        return found[0] if found else None

    def get(self, kind: str, name: str | None = None) -> dict[str, Any]:
        obj = self.maybe(kind, name)
        assert obj is not None, f"no {kind} {name or ''} in {[(d['kind'], d['metadata']['name']) for d in self.docs]}"
        return obj

    # Shortcuts for the objects every render has.
    @property
    def deployment(self) -> dict[str, Any]:
        """The index server's Deployment (not the optional encoder's)."""
        return self.get("Deployment")

    @property
    def encoder_deployment(self) -> dict[str, Any]:
        found = [d for d in self.all("Deployment") if _is_encoder(d)]
        assert len(found) == 1, f"expected one encoder Deployment, found {[d['metadata']['name'] for d in found]}"
        return found[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def server(self) -> dict[str, Any]:
        return container(self.pod_spec, "retriever")

    @property
    def test_pod(self) -> dict[str, Any]:
        pods = [p for p in self.all("Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
        assert len(pods) == 1, pods
        return pods[0]


def _is_encoder(obj: Mapping[str, Any]) -> bool:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "encoder"


def container(pod_spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    for c in list(pod_spec.get("containers", [])) + list(pod_spec.get("initContainers", [])):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name} in pod spec")


def env_of(c: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def volume(pod_spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    for v in pod_spec.get("volumes", []):
        if v["name"] == name:
            return v
    raise AssertionError(f"no volume {name} in {[v['name'] for v in pod_spec.get('volumes', [])]}")


def mount(c: Mapping[str, Any], name: str) -> dict[str, Any]:
    for m in c.get("volumeMounts", []):
        if m["name"] == name:
            return m
    raise AssertionError(f"no mount of {name} in {c['name']}")


def _set_args(set_values: Mapping[str, Any] | None) -> list[str]:
    """--set-string for strings (no type guessing), --set-json for everything else (null, numbers, maps)."""
    args: list[str] = []
    for key, value in (set_values or {}).items():
        if isinstance(value, str):
            args += ["--set-string", f"{key}={value}"]
        else:
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def helm(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool_path("HELM"), *args], capture_output=True, text=True, check=check, timeout=timeout, cwd=REPO
    )


@functools.cache
def _render_cached(
    chart: str, values: tuple[str, ...], set_args: tuple[str, ...], namespace: str, release: str
) -> tuple[int, str, str]:
    cmd = ["template", release, chart, "--namespace", namespace]
    for v in values:
        cmd += ["-f", v]
    proc = helm(*cmd, *set_args)
    return proc.returncode, proc.stdout, proc.stderr


def render(
    values: Iterable[Path | str] = (),
    set_values: Mapping[str, Any] | None = None,
    *,
    chart: Path = CHART,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
) -> Rendered:
    """`helm template` the chart; raises RenderError with helm's message when rendering fails."""
    rc, out, err = _render_cached(
        str(chart), tuple(str(v) for v in values), tuple(_set_args(set_values)), namespace, release
    )
    if rc != 0:
        raise RenderError(err.strip())
    docs = [d for d in yaml.safe_load_all(out) if d]
    return Rendered(docs=docs, text=out)


def render_error(values: Iterable[Path | str] = (), set_values: Mapping[str, Any] | None = None, **kwargs: Any) -> str:
    """Render expecting a failure; returns helm's error message."""
    with pytest.raises(RenderError) as excinfo:
        render(values, set_values, **kwargs)
    return str(excinfo.value)


def ci(name: str) -> Path:
    path = CI_DIR / f"{name}-values.yaml"
    assert path.exists(), path
    return path


def selector_labels(r: Rendered) -> dict[str, str]:
    return r.deployment["spec"]["selector"]["matchLabels"]


def pod_labels(r: Rendered) -> dict[str, str]:
    return r.deployment["spec"]["template"]["metadata"]["labels"]
