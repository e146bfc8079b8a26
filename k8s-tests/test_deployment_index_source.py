"""templates/deployment.yaml: where the index comes from (baked demo, PVC, hostPath, initContainer)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from chart_helpers import ci, container, env_of, mount, render, render_error, volume


def test_index_source_none_serves_the_baked_demo() -> None:
    r = render()
    assert "index" not in [v["name"] for v in r.pod_spec["volumes"]]
    assert "RETRIEVER_INDEX_DIR" not in env_of(r.server)
    assert "initContainers" not in r.pod_spec


def test_index_source_pvc() -> None:
    r = render([ci("pvc")])
    assert volume(r.pod_spec, "index")["persistentVolumeClaim"] == {"claimName": "wiki18-e5-flat", "readOnly": True}
    m = mount(r.server, "index")
    assert m == {"name": "index", "mountPath": "/data/index", "readOnly": True, "subPath": "e5-flat"}
    assert env_of(r.server)["RETRIEVER_INDEX_DIR"] == "/data/index"


def test_index_source_host_path() -> None:
    r = render([ci("hostpath")])
    assert volume(r.pod_spec, "index")["hostPath"] == {"path": "/mnt/nvme/retriever/index", "type": "Directory"}
    assert mount(r.server, "index") == {"name": "index", "mountPath": "/data/index", "readOnly": True}
    assert r.pod_spec["nodeSelector"] == {"retriever.io/index": "wiki18-hnsw"}


def test_index_source_init_container() -> None:
    r = render([ci("initcontainer")])
    values = yaml.safe_load(ci("initcontainer").read_text())["index"]["initContainer"]
    assert volume(r.pod_spec, "index")["emptyDir"] == {"sizeLimit": "20Gi"}
    fetch = container(r.pod_spec, "fetch-index")
    assert fetch in r.pod_spec["initContainers"]
    assert fetch["image"] == "docker.io/amazon/aws-cli:2.17.0"
    assert fetch["command"] == values["command"] and fetch["args"] == values["args"]
    assert env_of(fetch)["AWS_REGION"] == "eu-west-1" and env_of(fetch)["INDEX_DIR"] == "/data/index"
    assert mount(fetch, "index") == {"name": "index", "mountPath": "/data/index"}  # writable for the fetcher
    assert mount(r.server, "index")["readOnly"] is True  # read-only for the server
    assert fetch["resources"]["limits"]["memory"] == "1Gi"


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        ({"index.source": "pvc"}, "index.pvc.claimName is empty"),
        ({"index.source": "hostPath"}, "index.hostPath.path is empty"),
        ({"index.source": "initContainer"}, "index.initContainer.image.repository or index.initContainer.command"),
    ],
)
def test_index_source_without_its_settings_fails(set_values: dict[str, Any], message: str) -> None:
    assert message in render_error(set_values=set_values)
