"""templates/deployment.yaml: probes and their startup budget; graceful stop (preStop, grace period)."""

from __future__ import annotations

import pytest
from chart_helpers import Rendered, env_of, render, render_error


def test_probes(ci_rendered: Rendered) -> None:
    server = ci_rendered.server
    assert server["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    startup, ready, live = server["startupProbe"], server["readinessProbe"], server["livenessProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert ready["httpGet"] == {"path": "/health", "port": "http"}
    # Liveness must not depend on the index, or slow loads become restart loops.
    assert live["httpGet"] == {"path": "/livez", "port": "http"}


def test_default_startup_budget_covers_30_minutes() -> None:
    startup = render().server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60


def test_startup_budget_comes_from_values() -> None:
    r = render(
        set_values={
            "probes.startup.periodSeconds": 20,
            "probes.startup.failureThreshold": 270,
            "progressDeadlineSeconds": 6000,
        }
    )
    startup = r.server["startupProbe"]
    assert (startup["periodSeconds"], startup["failureThreshold"]) == (20, 270)
    # 90 minutes of loading need a longer progress deadline than the default 40 minutes.
    err = render_error(set_values={"probes.startup.periodSeconds": 20, "probes.startup.failureThreshold": 270})
    assert "startup probe budget" in err and "5400" in err


# --- graceful stop ------------------------------------------------------------------------------------


def test_graceful_stop(ci_rendered: Rendered) -> None:
    spec, server = ci_rendered.pod_spec, ci_rendered.server
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep_s = int(command[1])
    graceful_s = int(env_of(server)["RETRIEVER_GRACEFUL_TIMEOUT_S"])
    assert sleep_s > 0 and graceful_s > 0
    assert spec["terminationGracePeriodSeconds"] > sleep_s + graceful_s


def test_graceful_values_reach_the_pod() -> None:
    r = render(
        set_values={
            "lifecycle.preStopSleepSeconds": 15,
            "server.gracefulTimeoutSeconds": 120,
            "terminationGracePeriodSeconds": 140,
        }
    )
    assert r.server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "15"]
    assert env_of(r.server)["RETRIEVER_GRACEFUL_TIMEOUT_S"] == "120"
    assert r.pod_spec["terminationGracePeriodSeconds"] == 140


@pytest.mark.parametrize("grace", [40, 25])
def test_grace_period_too_short_fails(grace: int) -> None:
    err = render_error(set_values={"terminationGracePeriodSeconds": grace})
    assert (
        f"terminationGracePeriodSeconds ({grace}) must be greater than lifecycle.preStopSleepSeconds (10) "
        "+ server.gracefulTimeoutSeconds (30) = 40"
    ) in err


def test_grace_period_just_enough_renders() -> None:
    assert render(set_values={"terminationGracePeriodSeconds": 41}).pod_spec["terminationGracePeriodSeconds"] == 41
