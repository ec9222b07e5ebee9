"""Time the demo pipeline on this machine: per stage (from the MLflow child runs) and in all, cold and cached.

    .venv/bin/python bench/pipeline.py [--workdir DIR]

Prints a table; numbers go to the README's performance section with the machine they came from.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows import env  # noqa: E402

env.configure(Path(__file__).resolve().parent.parent)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None, help="working directory (default: a fresh temporary one)")
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="refinevla-bench-")

    from mlflow import MlflowClient

    from flows.config import PRESETS
    from flows.pipeline import refinevla_pipeline

    cfg = PRESETS["demo"].model_copy(update={"workdir": workdir})
    t0 = time.perf_counter()
    s = refinevla_pipeline(cfg)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    refinevla_pipeline(cfg)
    cached = time.perf_counter() - t0

    client = MlflowClient(s["mlflow_uri"])
    children = client.search_runs([s["mlflow_experiment_id"]], f"tags.mlflow.parentRunId = '{s['mlflow_run_id']}'")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'stage':<40}{'seconds':>10}")
    for c in sorted(children, key=lambda c: c.info.start_time):
        print(f"{c.info.run_name:<40}{(c.info.end_time - c.info.start_time) / 1000:>10.1f}")
    ft = next(c for c in children if c.info.run_name == "finetune")
    hist = client.get_metric_history(ft.info.run_id, "samples_per_s")
    print(f"{'fine-tune samples/s (median)':<40}{sorted(m.value for m in hist)[len(hist) // 2]:>10.1f}")
    print(f"{'pipeline, cold (incl. Prefect start)':<40}{cold:>10.1f}")
    print(f"{'pipeline, all stages cached':<40}{cached:>10.1f}")


if __name__ == "__main__":
    main()
