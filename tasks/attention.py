"""Stage 6, explain: attention maps of the action tokens over the image → `attention/<run>/*.png`.

For each chosen val step: the teacher-forced sequence (image, instruction, reasoning, actions), the
attention of the queries that produce the 12 action tokens over the 256 image patches for every layer
and head, fused with the top-k strategy (models/attention.py), drawn over the model's 224 px input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from data.io import atomic_path
from tasks.caching import stage_cache_policy
from tasks.retry import transient_only
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")


class AttentionConfig(BaseModel):
    """Attention-map extraction."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(8, ge=1, description="(layer, head) maps averaged in the top-k fusion.")
    num_samples: int = Field(1, ge=1, description="Val steps to draw (the first N).")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Heatmap opacity over the image.")


def run_attention(checkpoint: str | Path, data_dirs: list[str | Path], out_dir: str | Path, cfg: AttentionConfig = AttentionConfig(),
                  tracker: Tracker = Tracker(None)) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data.training import StepSamples, split_dirs
    from models.attention import action_image_attention, fuse_topk, overlay
    from models.spatialvla.policy import load_checkpoint
    from models.spatialvla.processing_spatialvla import TOKEN_ACTION

    model, proc = load_checkpoint(checkpoint)
    samples = StepSamples(split_dirs(data_dirs, "val"), proc.action_chunk_size, proc.training_sample)
    out_dir = Path(out_dir)
    pngs = []
    for i in range(min(cfg.num_samples, len(samples))):
        rec, sample = samples.records[i], samples[i]
        batch = proc.collate([sample])
        ids = batch["input_ids"][0]
        image_pos = (ids == proc.image_token_index).nonzero()[:, 0].tolist()
        queries = ((batch["token_kinds"][0] == TOKEN_ACTION).nonzero()[:, 0][:-1] - 1).tolist()  # positions that emit the action tokens
        att = action_image_attention(model, batch, queries, image_pos)
        fused, chosen = fuse_topk(att, cfg.top_k)
        g = int(round(len(image_pos) ** 0.5))
        image = (sample["pixel_values"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
        axes[0].imshow(image)
        axes[0].set_title("input (224 px)")
        axes[1].imshow(fused.reshape(g, g), cmap="jet")
        axes[1].set_title(f"fused attention, top-{cfg.top_k} of {att.shape[0]}x{att.shape[1]} heads")
        axes[2].imshow(overlay(image, fused.reshape(g, g), cfg.alpha))
        axes[2].set_title("action tokens → image")
        for a in axes:
            a.axis("off")
        fig.suptitle(f"{rec['instruction']}  ({rec['episode_id']} step {rec['step_index']})", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{rec['dataset']}_{rec['episode_id']}_step{rec['step_index']:03d}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        with atomic_path(path.with_suffix(".npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, fused.reshape(g, g))
        tracker.log_artifact(path)
        pngs.append(str(path))
        log.info("attention map %s (heads %s)", path, chosen[:4])
    return {"out_dir": str(out_dir), "pngs": pngs}


@task(name="attention", retry_condition_fn=transient_only, retries=1, retry_delay_seconds=10, cache_policy=stage_cache_policy(__name__, "checkpoint", "data_dirs"), persist_result=True)
def attention_task(checkpoint: str, data_dirs: list[str], out_dir: str, cfg: AttentionConfig, tracking: RunRef | None = None) -> dict:
    with stage_run(tracking, "attention", cfg) as tracker:
        return run_attention(checkpoint, data_dirs, out_dir, cfg, tracker)
