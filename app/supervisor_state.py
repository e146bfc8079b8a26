"""What the supervisor tells the workers' /metrics: restart counts, in a file in the metrics directory.

The supervisor must create no Prometheus values (a livemin gauge made in its process would hold
`retriever_ready` at 0 for ever), so it writes plain JSON and whichever worker renders /metrics
reads it. Kept apart from `app.metrics` so that the supervisor never imports that module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE_FILE = "supervisor.json"
# Set in the workers' environment: where POST /admin/reload sends SIGHUP so that every worker reloads.
SUPERVISOR_PID_ENV = "RETRIEVER_SUPERVISOR_PID"
RESTART_REASONS = ("exited", "hung", "recycled")


def write_restart_counts(directory: str, counts: dict[str, int]) -> None:
    """Atomically, so a worker never reads half a file."""
    staging = Path(directory, f".{STATE_FILE}.tmp")
    staging.write_text(json.dumps(counts))
    os.replace(staging, Path(directory, STATE_FILE))


def read_restart_counts(directory: str | None) -> dict[str, int]:
    if not directory:
        return {}
    try:
        return json.loads(Path(directory, STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
