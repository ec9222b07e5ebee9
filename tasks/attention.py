"""Stage 6, explain: attention maps of the action (or reasoning) tokens over the image → `attention/<run>/`.

For each chosen val step: the teacher-forced sequence (image, instruction, reasoning, actions), the
attention of the queries that produce the chosen tokens over the 256 image patches for every layer and
head, fused with the top-k strategy (models/attention.py), drawn over the model's 224 px input. With
`compare_checkpoint` the same steps go through a second checkpoint (e.g. the base model before
ReFineVLA) and a side-by-side grid shows both. Where the task objects' regions are known (the sample
data records its object boxes), each map gets an object-mass score: the share of attention on them.

Outputs: one PNG (+ the raw 16×16 map as .npy) per step and checkpoint, `comparison.png`,
`scores.json` / `scores.md`; all logged to MLflow.
"""

from __future__ import annotations

import gc
import io
import logging
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from data.io import atomic_path, write_json_atomic, write_text_atomic
from tasks.caching import stage_cache_policy
from tasks.retry import transient_only
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")


class AttentionConfig(BaseModel):
    """Attention-map extraction."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(8, ge=1, description="(layer, head) maps averaged in the top-k fusion (the paper's k; its value was lost).")
    num_samples: int = Field(4, ge=1, description="Val steps to draw, spread evenly over the val split.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Heatmap opacity over the image.")
    tokens: Literal["action", "reasoning"] = Field("action", description="Whose attention: the action tokens or the reasoning tokens.")
    compare_checkpoint: str | None = Field(None, description="A second checkpoint (e.g. the base model) drawn beside the first on the same steps.")
    label: str = Field("fine-tuned", description="Name of the checkpoint in figures and scores.")
    compare_label: str = Field("base", description="Name of compare_checkpoint in figures and scores.")
    object_boxes_from: list[str] = Field(
        default_factory=list, description="RLDS folders written by `refinevla sample` (with sample_scenes.json) that know the task objects' "
        "boxes, for the object-mass score; the pipeline passes its input datasets.")


def _samples(data_dirs, proc, n: int, box_sources: list[str], reasoning: bool = False):
    """Evenly spread val steps, with their model inputs and, where known, task-object boxes."""
    from data.sample import sample_object_boxes
    from data.training import StepSamples, read_reasoning_table, split_dirs

    dirs = split_dirs(data_dirs, "val")
    # Choose from the light columns, then load only the chosen episodes (a real val split is far too big to load).
    light = read_reasoning_table(dirs, ["dataset", "episode_id", "step_index", "trace_status"]).to_pandas()
    light = light.sort_values(["dataset", "episode_id", "step_index"], kind="stable").reset_index(drop=True)
    if reasoning:  # only steps with a trace have reasoning tokens to explain
        light = light[light.trace_status == "ok"].reset_index(drop=True)
        if light.empty:
            raise ValueError(f"no val step of {[str(d) for d in dirs]} has an ok trace: nothing to explain with tokens=reasoning")
    chosen = light.iloc[sorted({int(i) for i in np.linspace(0, len(light) - 1, min(n, len(light)))})]
    samples = StepSamples(dirs, proc.action_chunk_size, proc.training_sample, episodes=sorted(set(chosen.episode_id)))
    index = {(r["dataset"], r["episode_id"], r["step_index"]): i for i, r in enumerate(samples.records)}
    picks = [index[(r.dataset, r.episode_id, r.step_index)] for r in chosen.itertuples()]
    out = []
    for i in picks:  # the chosen episodes are loaded whole: step 0 (the sample scenes' key) is among the records
        rec = samples.records[i]
        first = samples.records[index.get((rec["dataset"], rec["episode_id"], 0), i)]
        boxes = sample_object_boxes(box_sources, first["image"], rec["camera"], rec["step_index"]) if first["step_index"] == 0 else None
        height, width = Image.open(io.BytesIO(rec["image"])).size[::-1]
        out.append({"record": rec, "sample": samples[i], "boxes": boxes, "hw": (height, width)})
    return out


def checkpoint_maps(checkpoint: str | Path, picks: list[dict], cfg: AttentionConfig) -> list[dict]:
    """Fused (g, g) map, chosen heads and object-mass score per step, for one checkpoint (then freed)."""
    import torch

    from models.attention import attention_rows, box_coverage, fuse_topk, object_mass
    from models.spatialvla.policy import load_checkpoint
    from models.spatialvla.processing_spatialvla import TOKEN_ACTION, TOKEN_REASONING

    model, proc = load_checkpoint(checkpoint)
    kind = TOKEN_ACTION if cfg.tokens == "action" else TOKEN_REASONING
    out = []
    for p in picks:
        batch = proc.collate([p["sample"]])
        ids, kinds = batch["input_ids"][0], batch["token_kinds"][0]
        image_pos = (ids == proc.image_token_index).nonzero()[:, 0].tolist()
        positions = (kinds == kind) & (ids != proc.tokenizer.eos_token_id)  # the closing <eos> is not an action
        queries = (positions.nonzero()[:, 0] - 1).tolist()  # the positions whose outputs are these tokens
        if not queries:
            raise ValueError(f"{p['record']['episode_id']} step {p['record']['step_index']}: no {cfg.tokens} tokens to explain")
        fused, chosen = fuse_topk(attention_rows(model, batch, queries, image_pos), cfg.top_k)
        g = int(round(len(image_pos) ** 0.5))
        fused = fused.reshape(g, g)
        coverage = box_coverage(p["boxes"], *p["hw"], g) if p["boxes"] else None
        out.append({"fused": fused, "heads": chosen, "object_mass": None if coverage is None else object_mass(fused, coverage),
                    "chance": None if coverage is None else float(coverage.mean())})  # what uniform attention would score
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def run_attention(checkpoint: str | Path, data_dirs: list[str | Path], out_dir: str | Path, cfg: AttentionConfig = AttentionConfig(),
                  tracker: Tracker = Tracker(None)) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.attention import overlay
    from models.spatialvla.processing_spatialvla import SpatialVLAProcessor

    out_dir = Path(out_dir)
    picks = _samples(data_dirs, SpatialVLAProcessor.from_pretrained(checkpoint), cfg.num_samples, cfg.object_boxes_from, cfg.tokens == "reasoning")
    runs = {cfg.label: checkpoint_maps(checkpoint, picks, cfg)}
    if cfg.compare_checkpoint:
        runs[cfg.compare_label] = checkpoint_maps(cfg.compare_checkpoint, picks, cfg)

    def draw_boxes(ax, p):
        size = p["sample"]["pixel_values"].shape[-1]
        for x0, y0, x1, y1 in p["boxes"] or []:
            sx, sy = size / p["hw"][1], size / p["hw"][0]
            ax.add_patch(plt.Rectangle((x0 * sx, y0 * sy), (x1 - x0) * sx, (y1 - y0) * sy, fill=False, edgecolor="white", linewidth=1.5))

    def save(fig, path: Path) -> str:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        tracker.log_artifact(path)
        return str(path)

    pngs = []
    for label, maps in runs.items():
        for p, m in zip(picks, maps):
            rec, image = p["record"], (p["sample"]["pixel_values"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
            axes[0].imshow(image)
            draw_boxes(axes[0], p)
            axes[0].set_title("input (224 px)" + (", task objects boxed" if p["boxes"] else ""))
            axes[1].imshow(m["fused"], cmap="jet")
            axes[1].set_title(f"fused attention, top-{cfg.top_k} heads")
            axes[2].imshow(overlay(image, m["fused"], cfg.alpha))
            axes[2].set_title(f"{cfg.tokens} tokens → image" + (f", object mass {m['object_mass']:.2f}" if m["object_mass"] is not None else ""))
            for a in axes:
                a.axis("off")
            fig.suptitle(f"{label}: {rec['instruction']}  ({rec['episode_id']} step {rec['step_index']})", fontsize=10)
            fig.tight_layout()
            stem = f"{label}_{rec['dataset']}_{rec['episode_id']}_step{rec['step_index']:03d}"
            pngs.append(save(fig, out_dir / f"{stem}.png"))
            with atomic_path(out_dir / f"{stem}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, m["fused"])
            log.info("attention map %s (heads %s)", pngs[-1], m["heads"][:4])

    comparison = None
    if len(runs) > 1:
        fig, axes = plt.subplots(len(picks), 1 + len(runs), figsize=(4 * (1 + len(runs)), 4 * len(picks)), squeeze=False)
        for row, p in enumerate(picks):
            image = (p["sample"]["pixel_values"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            axes[row, 0].imshow(image)
            draw_boxes(axes[row, 0], p)
            axes[row, 0].set_title(p["record"]["instruction"][:48], fontsize=9)
            for col, (label, maps) in enumerate(runs.items(), 1):
                axes[row, col].imshow(overlay(image, maps[row]["fused"], cfg.alpha))
                score = maps[row]["object_mass"]
                axes[row, col].set_title(label + (f" (object mass {score:.2f})" if score is not None else ""), fontsize=9)
        for a in axes.flat:
            a.axis("off")
        fig.tight_layout()
        comparison = save(fig, out_dir / "comparison.png")

    scores = {label: _score_summary(maps) for label, maps in runs.items()}
    write_json_atomic(out_dir / "scores.json", {"tokens": cfg.tokens, "top_k": cfg.top_k, "checkpoints": {
        cfg.label: str(checkpoint), **({cfg.compare_label: cfg.compare_checkpoint} if cfg.compare_checkpoint else {})}, "scores": scores})
    lines = ["| checkpoint | steps with known objects | object mass (mean) | uniform attention would give |", "|---|---|---|---|"]
    for label, s in scores.items():
        mean = "n/a" if s["object_mass_mean"] is None else f"{s['object_mass_mean']:.3f}"
        base = "n/a" if s["uniform_mean"] is None else f"{s['uniform_mean']:.3f}"
        lines.append(f"| {label} | {s['scored']} of {len(picks)} | {mean} | {base} |")
    write_text_atomic(out_dir / "scores.md", "\n".join(lines) + "\n")
    for name in ("scores.json", "scores.md"):
        tracker.log_artifact(out_dir / name)
    tracker.log_metrics({f"object_mass_{label}": s["object_mass_mean"] for label, s in scores.items() if s["object_mass_mean"] is not None})
    return {"out_dir": str(out_dir), "pngs": pngs, "comparison": comparison, "scores": scores}


def _score_summary(maps: list[dict]) -> dict:
    scored = [m["object_mass"] for m in maps if m["object_mass"] is not None]
    chance = [m["chance"] for m in maps if m["chance"] is not None]
    return {"scored": len(scored), "object_mass_mean": float(np.mean(scored)) if scored else None,
            "per_step": [m["object_mass"] for m in maps], "uniform_mean": float(np.mean(chance)) if chance else None}


@task(name="attention", retry_condition_fn=transient_only, retries=1, retry_delay_seconds=10, cache_policy=stage_cache_policy(__name__, "checkpoint", "data_dirs"), persist_result=True)
def attention_task(checkpoint: str, data_dirs: list[str], out_dir: str, cfg: AttentionConfig, tracking: RunRef | None = None) -> dict:
    with stage_run(tracking, "attention", cfg) as tracker:
        return run_attention(checkpoint, data_dirs, out_dir, cfg, tracker)
