"""Stage 5, evaluate: offline metrics on the held-out episodes → `eval/<run>/`.

Teacher-forced on every val step (ground-truth reasoning and actions as context):
- action / reasoning token accuracy and NLL (the two halves of the training loss);
- the predicted action chunk (per slot: the best token of that slot's range) decoded and un-normalised,
  compared with the recorded actions: L1 per dimension in the dataset's units, gripper accuracy;
- `floor_l1_*`: the L1 of the recorded actions after a tokenise/de-tokenise round trip, the best any model
  can reach with this action grid.
Free generation (reason-then-act, greedy) on the first `generate_samples` val steps, recorded with its trace.
Writes metrics.json, results.md / results.csv (per dataset and overall), predictions.parquet, generations.jsonl.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from data.io import atomic_path, write_json_atomic, write_text_atomic
from tasks.caching import stage_cache_policy
from tasks.retry import transient_only
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")
DIMS = ("x", "y", "z", "roll", "pitch", "yaw")


class EvaluateConfig(BaseModel):
    """Offline evaluation on the val split."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(8, ge=1, description="Samples per forward pass.")
    max_samples: int | None = Field(None, ge=1, description="Evaluate at most this many val steps (None: all).")
    generate_samples: int = Field(2, ge=0, description="Val steps on which to run free reason-then-act generation.")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:n]'.")


def _slot_grid(logits_rows, begin: int, ranges) -> np.ndarray:
    """(12, V) logits of the positions that predict the 12 action tokens → (4, 3) grid ids."""
    ids = [int(logits_rows[i, begin + lo : begin + hi].argmax()) + lo for i, (lo, hi) in enumerate(ranges * (len(logits_rows) // 3))]
    return np.array(ids).reshape(-1, 3)


def run_evaluate(checkpoint: str | Path, data_dirs: list[str | Path], out_dir: str | Path, cfg: EvaluateConfig = EvaluateConfig(),
                 tracker: Tracker = Tracker(None)) -> dict:
    import torch

    from data.training import StepSamples, split_dirs
    from models.objective import labelled_window, refinevla_loss
    from models.spatialvla.action_tokenizer import SpatialActionTokenizer
    from models.spatialvla.policy import load_checkpoint, predict
    from models.spatialvla.processing_spatialvla import TOKEN_ACTION

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    out_dir = Path(out_dir)
    model, proc = load_checkpoint(checkpoint, device)
    samples = StepSamples(split_dirs(data_dirs, "val"), proc.action_chunk_size, proc.training_sample)
    n = min(len(samples), cfg.max_samples or len(samples))
    ranges = SpatialActionTokenizer.slot_ranges()
    begin = proc.action_token_begin_idx
    acc = defaultdict(lambda: defaultdict(float))
    rows = []
    for start in range(0, n, cfg.batch_size):
        idx = list(range(start, min(start + cfg.batch_size, n)))
        batch = {k: v.to(device) for k, v in proc.collate([samples[i] for i in idx]).items()}
        k = labelled_window(batch["labels"])
        with torch.no_grad():
            logits = model(**proc.model_inputs(batch), logits_to_keep=k).logits
        L = batch["input_ids"].shape[1]
        for j, i in enumerate(idx):
            rec = samples.records[i]
            one = lambda t: t[j : j + 1]  # noqa: E731
            parts = refinevla_loss(logits[j : j + 1], one(batch["labels"]), one(batch["token_kinds"]), 1.0)
            action_pos = (batch["token_kinds"][j] == TOKEN_ACTION).nonzero()[:, 0][:-1]  # the 12 action tokens, not <eos>
            grid = _slot_grid(logits[j, action_pos - 1 - (L - k)].float().cpu(), begin, ranges)
            pred = proc.decode_actions(grid, rec["unnorm_key"])
            gt = rec["actions"]
            floor = proc.decode_actions(proc.action_grid_ids(gt, rec["unnorm_key"]), rec["unnorm_key"])
            a = acc[rec["unnorm_key"]]
            a["samples"] += 1
            for name, v in (("action", parts.action_correct), ("action_n", parts.action_count),
                            ("reasoning", parts.reasoning_correct), ("reasoning_n", parts.reasoning_count)):
                a[name] += v
            a["nll_action"] += parts.action.item() * parts.action_count
            a["nll_reasoning"] += parts.reasoning.item() * parts.reasoning_count
            for d, name in enumerate(DIMS):
                a[f"l1_{name}"] += float(np.abs(pred[:, d] - gt[:, d]).mean())
                a[f"floor_l1_{name}"] += float(np.abs(floor[:, d] - gt[:, d]).mean())
            a["gripper_acc"] += float(((pred[:, 6] > 0.5) == (gt[:, 6] > 0.5)).mean())
            rows.append({"dataset": rec["dataset"], "episode_id": rec["episode_id"], "step_index": rec["step_index"],
                         "unnorm_key": rec["unnorm_key"], "pred_actions": pred.tolist(), "gt_actions": gt.tolist(), "pred_grid": grid.tolist()})

    table = {key: _finish(a) for key, a in acc.items()}
    total = defaultdict(float)
    for a in acc.values():
        for name, v in a.items():
            total[name] += v
    table["all"] = _finish(total)

    out_dir.mkdir(parents=True, exist_ok=True)
    generations = []
    for i in range(min(cfg.generate_samples, n)):
        rec = samples.records[i]
        p = predict(model, proc, rec["image"], rec["instruction"], rec["unnorm_key"], reason=True)
        generations.append({"episode_id": rec["episode_id"], "step_index": rec["step_index"], "instruction": rec["instruction"],
                            "reasoning": p.reasoning, "actions": p.actions.tolist(), "gt_actions": rec["actions"].tolist()})
    write_text_atomic(out_dir / "generations.jsonl", "".join(json.dumps(g) + "\n" for g in generations))
    with atomic_path(out_dir / "predictions.parquet") as tmp:
        pd.DataFrame(rows).to_parquet(tmp)
    write_json_atomic(out_dir / "metrics.json", {"checkpoint": str(checkpoint), "samples": n, "per_dataset": table})
    frame = pd.DataFrame(table).T
    frame.index.name = "dataset"
    write_text_atomic(out_dir / "results.csv", frame.to_csv())
    write_text_atomic(out_dir / "results.md", results_markdown(table, checkpoint))
    for f in ("metrics.json", "results.md", "results.csv", "generations.jsonl"):
        tracker.log_artifact(out_dir / f)
    tracker.log_metrics({f"val_{k}": v for k, v in table["all"].items()})
    log.info("evaluated %s on %d val steps: action acc %.3f, reasoning acc %.3f", checkpoint, n, table["all"]["action_token_acc"], table["all"]["reasoning_token_acc"])
    return {"out_dir": str(out_dir), "results": str(out_dir / "results.md"), "samples": n, **{f"val_{k}": v for k, v in table["all"].items()}}


def _finish(a: dict) -> dict:
    s = max(a["samples"], 1)
    out = {
        "samples": int(a["samples"]),
        "action_token_acc": a["action"] / max(a["action_n"], 1),
        "reasoning_token_acc": a["reasoning"] / max(a["reasoning_n"], 1),
        "nll_action": a["nll_action"] / max(a["action_n"], 1),
        "nll_reasoning": a["nll_reasoning"] / max(a["reasoning_n"], 1),
        "gripper_acc": a["gripper_acc"] / s,
    }
    out |= {f"l1_{d}": a[f"l1_{d}"] / s for d in DIMS}
    out |= {f"floor_l1_{d}": a[f"floor_l1_{d}"] / s for d in DIMS}
    return out


def results_markdown(table: dict, checkpoint) -> str:
    head = "| dataset | val steps | action tok acc | reasoning tok acc | NLL action | NLL reasoning | L1 xyz | L1 rpy | gripper acc | grid floor L1 xyz |"
    lines = [f"# Offline evaluation of `{checkpoint}`", "", head, "|" + "---|" * 10]
    for key, m in table.items():
        xyz = np.mean([m[f"l1_{d}"] for d in DIMS[:3]])
        rpy = np.mean([m[f"l1_{d}"] for d in DIMS[3:]])
        floor = np.mean([m[f"floor_l1_{d}"] for d in DIMS[:3]])
        name = f"**{key}**" if key == "all" else key
        lines.append(f"| {name} | {m['samples']} | {m['action_token_acc']:.3f} | {m['reasoning_token_acc']:.3f} | {m['nll_action']:.3f} | "
                     f"{m['nll_reasoning']:.3f} | {xyz:.4f} | {rpy:.4f} | {m['gripper_acc']:.3f} | {floor:.4f} |")
    lines += ["", "Teacher-forced on held-out episodes; L1 in the dataset's action units (per step of the 4-step chunk).",
              "Grid floor: L1 of the recorded actions after a round trip through the action grid (the best reachable)."]
    return "\n".join(lines) + "\n"


@task(name="evaluate", retry_condition_fn=transient_only, retries=1, retry_delay_seconds=10, cache_policy=stage_cache_policy(__name__, "checkpoint", "data_dirs"), persist_result=True)
def evaluate_task(checkpoint: str, data_dirs: list[str], out_dir: str, cfg: EvaluateConfig, tracking: RunRef | None = None) -> dict:
    with stage_run(tracking, "evaluate", cfg) as tracker:
        return run_evaluate(checkpoint, data_dirs, out_dir, cfg, tracker)
