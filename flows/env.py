"""Process-wide defaults for running flows on a laptop or a worker, set before Prefect is imported."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry calls (no network)
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # the 20 s default times out on a busy 2-core box
    "PREFECT_LOGGING_EXTRA_LOGGERS": "refinevla",  # stage logs show in the Prefect UI
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # plain functions log locally outside flows
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "HF_HUB_OFFLINE": "1",  # nothing is downloaded from a hub at run time
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3 reports usage unless told not to
    "DO_NOT_TRACK": "true",
}


def configure(project_root: str | Path | None = None) -> None:
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    # Prefect's database and settings live in the project, so `prefect server start` run from the same
    # folder shows the runs made by `refinevla run` (ephemeral mode).
    os.environ.setdefault("PREFECT_HOME", str(Path(project_root or Path.cwd()) / ".prefect"))
