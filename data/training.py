"""Training samples from the reasoning Parquet dataset: one sample per step, with its action chunk.

The dataset yields raw samples (primary-camera image bytes, instruction, the step's reasoning text, the
(chunk, 7) actions from this step on with the last one repeated past the end, the unnorm key); a
`transform` (the student's processor, from `models/`) turns them into tensors. The needed columns are
loaded into memory: this is for the small held-out splits that evaluation and attention maps index into;
training streams instead (data/loader.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch

from data.actions import action_chunks

COLUMNS = ["dataset", "episode_id", "step_index", "instruction", "images", "action", "unnorm_key", "reasoning_text", "trace_status"]


def primary_camera(images: list[dict]) -> dict:
    """The primary camera's image struct: `image_0` (bridge) / `image` (fractal), i.e. the first recorded
    camera by name."""
    recorded = [im for im in images if not im["dummy"]] or images
    return min(recorded, key=lambda im: im["camera"])


def primary_image(images: list[dict]) -> bytes:
    return primary_camera(images)["data"]


def split_dirs(data_dirs: list[str | Path], split: str) -> list[Path]:
    """`<dataset>/<split>` of each reasoning dataset that has rows in that split (a dataset of one episode has
    no val split); an error when none has."""
    found = [Path(d) / split for d in data_dirs if any((Path(d) / split).glob("part-*.parquet"))]
    if not found:
        raise FileNotFoundError(f"no '{split}' split in {[str(d) for d in data_dirs]}; build them with val_fraction > 0")
    return found


def read_reasoning_table(dirs: list[str | Path], columns: list[str] = COLUMNS, filter=None):
    dirs = [Path(d) for d in dirs]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise FileNotFoundError(f"reasoning data not found: {missing}")
    files = [str(f) for d in dirs for f in sorted(d.glob("part-*.parquet"))]
    if not files:
        raise ValueError(f"no part-*.parquet files in {[str(d) for d in dirs]}")
    table = pads.dataset(files, format="parquet").to_table(columns=columns, filter=filter)
    if table.num_rows == 0:
        raise ValueError(f"no rows in {[str(d) for d in dirs]}")
    return table


class StepSamples(torch.utils.data.Dataset):
    def __init__(self, dirs: list[str | Path], chunk: int, transform: Callable[..., dict] | None = None, use_reasoning: bool = True,
                 episodes: list[str] | None = None):
        import pyarrow.compute as pc

        df = read_reasoning_table(dirs, filter=None if episodes is None else pc.field("episode_id").isin(episodes)).to_pandas()
        df = df.sort_values(["dataset", "episode_id", "step_index"], kind="stable").reset_index(drop=True)
        chunks = np.empty((len(df), chunk, 7), np.float32)
        for _, idx in df.groupby(["dataset", "episode_id"], sort=False).indices.items():
            chunks[idx] = action_chunks(np.stack(df["action"].iloc[idx].to_numpy()), chunk)
        primary = [primary_camera(images) for images in df["images"]]
        self.records = [
            {
                "image": primary[i]["data"],
                "camera": primary[i]["camera"],
                "instruction": row.instruction,
                "actions": chunks[i],
                "unnorm_key": row.unnorm_key,
                "reasoning": row.reasoning_text if use_reasoning and row.trace_status == "ok" else None,
                "episode_id": row.episode_id,
                "step_index": int(row.step_index),
                "dataset": row.dataset,
            }
            for i, row in enumerate(df.itertuples(index=False))
        ]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        if self.transform is None:
            return r
        return self.transform(r["image"], r["instruction"], r["actions"], r["unnorm_key"], r["reasoning"])
