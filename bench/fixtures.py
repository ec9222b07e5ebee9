"""Shared by the benches: a reasoning dataset of N Bridge episodes (sample → parse → annotate → build), and a
randomly initialised student of a named shape."""

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


# SpatialVLA's vocabulary: Gemma's 257,152 text ids (<image> among them) + 8,194 action tokens; tiny: a learned 1,024
VOCAB = {"4b": 257152 + 8194, "tiny": 1024 + 1 + 8194}


def student(shape: str, device: str):
    """A fresh SpatialVLA-shaped model ('tiny' or '4b'), built on `device` ('meta' to count without memory)."""
    import torch

    from models.spatialvla.configuration_spatialvla import spatialvla_config
    from models.spatialvla.modeling_spatialvla import SpatialVLAForConditionalGeneration

    config = spatialvla_config(shape, VOCAB[shape], VOCAB[shape] - 8195, VOCAB[shape] - 8194)
    with torch.device(device):
        return SpatialVLAForConditionalGeneration(config)
