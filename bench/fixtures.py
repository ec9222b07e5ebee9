"""Shared by the data benches: a reasoning dataset of N Bridge episodes (sample → parse → annotate → build)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def reasoning_dataset(tmp: Path, episodes: int) -> tuple[Path, Path, Path]:
    """(steps dir, traces dir, reasoning dir) of a Bridge sample with `episodes` train episodes."""
    from data.sample import SampleConfig, write_sample_datasets
    from tasks.annotate import run_annotate
    from tasks.build import run_build
    from tasks.parse import run_parse

    (bridge,) = write_sample_datasets(tmp / "datasets", SampleConfig(bridge_train_episodes=episodes, bridge_val_episodes=2, fractal_episodes=0,
                                                                     num_shards=max(2, episodes // 16)))
    for split in ("train", "val"):
        run_parse(bridge, split, tmp / "steps")
    steps = tmp / "steps" / "bridge_dataset"
    traces = Path(run_annotate(steps, tmp / "traces")["traces_dir"])
    run_build(steps, traces, tmp / "reasoning" / "bridge_dataset")
    return steps, traces, tmp / "reasoning" / "bridge_dataset"
