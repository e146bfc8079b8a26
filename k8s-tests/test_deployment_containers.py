"""templates/deployment.yaml: the server container's env and the images."""

from __future__ import annotations

from chart_helpers import ci, env_of, render, render_error


def test_extra_env_and_server_settings() -> None:
    env = env_of(render([ci("pvc")]).server)
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["RETRIEVER_MAX_QUEUE"] == "8192"
    assert env["RETRIEVER_OVERLOAD_STATUS"] == "503"
    assert env["RETRIEVER_HOST"] == "0.0.0.0" and env["RETRIEVER_PORT"] == "8000"


def test_server_settings_cannot_override_chart_managed_env() -> None:
    assert "server.settings.port is managed by the chart" in render_error(set_values={"server.settings.port": 9000})


# --- images -------------------------------------------------------------------------------------------


def test_images() -> None:
    assert render().server["image"] == "localhost:5000/retriever:0.1.0"
    assert render([ci("auth")]).server["image"] == "localhost/retriever:dev"
    digest = "sha256:" + "ab" * 32
    assert render(set_values={"image.digest": digest}).server["image"] == f"localhost:5000/retriever@{digest}"
    r = render([ci("auth")])
    assert r.test_pod["spec"]["containers"][0]["image"] == r.server["image"]
