"""Stage 4, fine-tune: ReFineVLA on the reasoning dataset → `checkpoints/<run>/step-<n>/`.

The loop, in one screen:

    for step in 1..total:
        batch  = the next batch of the training stream (data/loader.py: Parquet parts shuffled per epoch,
                 a shuffle buffer, optional augmentation, DataLoader worker processes)
        loss   = L_action + λ · L_reasoning            (models/objective.refinevla_loss)
        backward, clip, AdamW, warmup-then-linear LR
        log losses / accuracies / LR / throughput to MLflow
        every save_steps and at the end: checkpoint (weights, processor, optimizer, scheduler, RNG, history)

Frozen: ZoeDepth always; vision tower + Ego3D MLP, input embeddings and the first N Gemma2 layers (path filters, logged). A run
directory holds one configuration; re-running resumes from its latest checkpoint (weights, optimizer,
scheduler and data position: the stream skips what earlier steps consumed without decoding it), and a
finished run is not trained again.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
from prefect import task
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from data.io import atomic_path, fingerprint, read_json, write_json_atomic
from models.lora import DEFAULT_TARGETS
from tasks.caching import stage_cache_policy
from tasks.retry import transient_only
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")


class FinetuneConfig(BaseModel):
    """ReFineVLA fine-tuning. Defaults are the embedded demo (a fresh tiny model on the sample data);
    the `paper` preset (flows/config.py) holds the paper's Table 7 values, quoted in each description."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field("tiny", description="'tiny' or '4b' (fresh weights of that shape, tokenizer trained on the data), or a checkpoint directory.")
    reasoning_weight: float = Field(0.5, ge=0.0, le=100.0, description="λ in L = L_action + λ·L_reasoning (paper value lost in extraction; its ablation peaks mid-range).")
    freeze_vision: bool = Field(True, description="Freeze the SigLIP vision tower (paper: yes).")
    freeze_embeddings: bool = Field(False, description="Freeze the language model's input embeddings (SpatialVLA and paper preset: yes; a fresh model must learn them).")
    freeze_first_n_layers: int = Field(1, ge=0, description="Freeze the first N Gemma2 layers (paper value lost; paper preset: 12 of Gemma2-2B's 26).")
    learning_rate: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (paper: 2e-5).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear warm-up, then linear decay to 0 (SpatialVLA: 0.005).")
    batch_size: int = Field(8, ge=1, description="Samples per optimizer step (paper: 32 per device).")
    epochs: float = Field(1.0, gt=0, description="Passes over the train split when max_steps is not set (paper: 1).")
    max_steps: int | None = Field(80, ge=1, description="Total optimizer steps (None: from epochs).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    save_steps: int = Field(40, ge=1, description="Checkpoint every N steps and at the end (paper: 500).")
    action_first: bool = Field(False, description="Target order: action tokens, then reasoning, then <eos> (inference may stop after the actions); default: reasoning first (the paper).")
    max_reasoning_tokens: int = Field(244, ge=0, description="Reasoning tokens kept per sample (paper: 244).")
    action_chunk_size: int = Field(4, ge=1, description="Future actions per sample (SpatialVLA: 4, i.e. 12 action tokens).")
    tokenizer_vocab_size: int = Field(1024, ge=300, description="BPE vocabulary learned for a fresh model (ignored for checkpoints).")
    min_sigma: float = Field(0.0, ge=0, description="Lower bound of the per-axis sigma when fitting action bins for a fresh model.")
    seed: int = Field(0, description="Seed of initialisation, data order and augmentation.")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes decoding samples (0: in the training process).")
    shuffle_buffer: int = Field(1000, ge=1, description="Samples in the loader's shuffle buffer (SpatialVLA: 100k-sample buffer).")
    augment: bool = Field(False, description="SpatialVLA's image augmentation: random-resized crop (scale 0.9) and colour jitter (SpatialVLA fine-tuning: on).")
    lora: bool = Field(False, description="Train LoRA adapters instead of the weights (one-GPU budgets); frozen parts get no adapters.")
    lora_rank: int = Field(32, ge=1, description="LoRA rank (SpatialVLA's LoRA recipe: 32).")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha/rank (SpatialVLA: 32).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: str = Field(DEFAULT_TARGETS, description="Regex over module paths of the linear layers that get adapters (default: attention, MLP and projector).")
    gradient_checkpointing: bool = Field(False, description="Recompute the language model's activations in the backward pass (less memory, ~30% slower).")
    optimizer: Literal["adamw", "adamw8bit"] = Field("adamw", description="adamw8bit: 8-bit optimizer states (needs bitsandbytes and a GPU).")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu' or 'cuda[:n]'.")
    precision: Literal["auto", "fp32", "bf16-mixed"] = Field("auto", description="'auto': bf16-mixed on CUDA, fp32 on CPU.")
    nproc_per_node: int = Field(1, ge=1, description="Data-parallel processes: >1 launches `torchrun --standalone` (DDP; NCCL on GPUs, gloo on CPU); batch_size is per process (paper: 32 per device).")


def _distributed() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _device_and_precision(cfg: FinetuneConfig) -> tuple[str, str]:
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and _distributed():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    precision = ("bf16-mixed" if device.startswith("cuda") else "fp32") if cfg.precision == "auto" else cfg.precision
    return device, precision


def merged_statistics(data_dirs: list[Path]) -> dict:
    stats = {}
    for d in data_dirs:
        if not (d / "stats.json").exists():
            raise FileNotFoundError(f"{d}: stats.json missing; run the build stage first")
        stats.update(read_json(d / "stats.json"))
    return stats


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in run_dir.glob("step-*") if (p / "trainer_state.pt").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def _check_run_dir(run_dir: Path, settings: dict) -> None:
    path = run_dir / "training_config.json"
    if path.exists() and read_json(path) != settings:
        raise ValueError(
            f"{run_dir} holds a run with other settings or data (see {path}); "
            "choose another run name, or delete that directory to start over"
        )
    write_json_atomic(path, settings)


def save_checkpoint(run_dir: Path, step: int, model, processor, opt, sched, history: list[dict], lora: bool = False) -> Path:
    """step-N/: a full checkpoint (with LoRA: the adapters merged in, same layout) + trainer state; with LoRA
    also step-N/adapter/ (the adapters alone, for sharing and for resuming)."""
    import torch

    from models.lora import save_adapter, save_merged

    final = run_dir / f"step-{step}"
    tmp = run_dir / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if lora:
        save_merged(model, tmp)
        save_adapter(model, tmp / "adapter")
    else:
        model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history, "rng": _rng_state()},
               tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def _rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states: dropout or sampling after a resume continue the same
    streams (the data order and augmentation are already a function of the step)."""
    import random

    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plot_curves(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "L = L_action + λ·L_reasoning"), ("loss_action", "L_action"), ("loss_reasoning", "L_reasoning")):
        a.plot(steps, [h[key] for h in history], label=label)
    a.set(xlabel="step", ylabel="token NLL", title="losses", yscale="log")
    a.legend()
    for key, label in (("action_token_acc", "action tokens"), ("reasoning_token_acc", "reasoning tokens")):
        b.plot(steps, [h[key] for h in history], label=label)
    b.set(xlabel="step", ylabel="accuracy", title="next-token accuracy (train batch)", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _build_or_load(cfg: FinetuneConfig, train_dirs: list[Path], statistics: dict):
    from data.training import read_reasoning_table
    from models.spatialvla.policy import build_student, load_checkpoint

    if cfg.base_model in ("tiny", "4b"):  # text and actions only: the tokenizer's corpus and the action grid's fit
        rows = read_reasoning_table(train_dirs, ["instruction", "reasoning_text", "trace_status", "unnorm_key", "action"]).to_pylist()
        texts = [r["instruction"].lower() for r in rows] + [r["reasoning_text"] for r in rows if r["trace_status"] == "ok" and r["reasoning_text"]]
        by_key: dict[str, list] = {}
        for r in rows:
            by_key.setdefault(r["unnorm_key"], []).append(r["action"])
        return build_student(cfg.base_model, texts, statistics, {k: np.stack(v) for k, v in by_key.items()}, cfg.tokenizer_vocab_size,
                             cfg.min_sigma, cfg.max_reasoning_tokens, cfg.action_chunk_size, cfg.seed, cfg.action_first)
    model, processor = load_checkpoint(cfg.base_model)
    processor.statistics.update(statistics)  # new datasets' statistics join the checkpoint's
    processor.max_reasoning_tokens = cfg.max_reasoning_tokens
    processor.action_first = cfg.action_first
    return model, processor


PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12, "4090": 165e12}


def _peak_flops(device: str, precision: str) -> float | None:
    """Dense bf16 peak of the GPU by name (None on CPU or an unknown GPU: no MFU is logged)."""
    import torch

    if not device.startswith("cuda") or precision != "bf16-mixed":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _param_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable, "params_frozen": total - trainable}


def _optimizer(cfg: FinetuneConfig, params: list):
    import torch

    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("finetune.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _stream(cfg: FinetuneConfig, train_dirs: list[Path], processor, epoch: int, skip_batches: int = 0):
    import torch

    from data.loader import ReasoningStream

    distributed = _distributed()
    return ReasoningStream(train_dirs, processor.training_sample, cfg.action_chunk_size, cfg.seed, epoch, cfg.shuffle_buffer, cfg.augment,
                           torch.distributed.get_rank() if distributed else 0, torch.distributed.get_world_size() if distributed else 1,
                           skip_batches, cfg.batch_size, cfg.num_workers, image_size=processor.image_size)


def _batches(cfg: FinetuneConfig, train_dirs: list[Path], processor, done_steps: int):
    """Collated batches from optimizer step `done_steps + 1` on, epoch after epoch: the data position is a
    pure function of the step, so resuming needs no loader state."""
    import torch

    epoch, skip = 0, done_steps
    while skip >= (n := _stream(cfg, train_dirs, processor, epoch).num_batches()):
        if n == 0:
            raise ValueError(f"no training batches in {[str(d) for d in train_dirs]}")
        epoch, skip = epoch + 1, skip - n
    while True:
        stream = _stream(cfg, train_dirs, processor, epoch, skip)
        yield from torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=processor.collate)
        epoch, skip = epoch + 1, 0


def _launch_torchrun(data_dirs: list[Path], run_dir: Path, cfg: FinetuneConfig, tracker: Tracker) -> dict:
    """Run this stage as `torchrun --standalone --nproc_per_node N -m tasks.finetune --launch FILE`; rank 0 logs,
    saves and writes the summary, which is returned here."""
    import subprocess
    import sys

    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"data_dirs": [str(d) for d in data_dirs], "out_dir": str(run_dir), "cfg": cfg.model_dump(mode="json"),
            "tracking": vars(tracker.ref) if tracker.ref is not None else None}
    write_json_atomic(run_dir / "launch.json", spec)
    (run_dir / "summary.json").unlink(missing_ok=True)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc_per_node}", "-m", "tasks.finetune",
           "--launch", str(run_dir / "launch.json")]
    log.info("launching %s", " ".join(cmd))
    done = subprocess.run(cmd, cwd=root, env=env)
    if done.returncode != 0 or not (run_dir / "summary.json").exists():
        raise RuntimeError(f"torchrun fine-tuning failed (exit {done.returncode}); see the log above; command: {' '.join(cmd)}")
    return read_json(run_dir / "summary.json")


def run_finetune(data_dirs: list[str | Path], out_dir: str | Path, cfg: FinetuneConfig = FinetuneConfig(), tracker: Tracker = Tracker(None)) -> dict:
    import torch

    if cfg.nproc_per_node > 1 and not _distributed():
        if cfg.lora:
            raise ValueError("finetune.lora with nproc_per_node > 1 is not supported yet; use one process per run for LoRA")
        return _launch_torchrun([Path(d) for d in data_dirs], Path(out_dir), cfg, tracker)
    rank = torch.distributed.get_rank() if _distributed() else 0
    main = rank == 0

    from models.objective import action_l1, apply_freezing, freeze_filters, labelled_window, refinevla_loss
    from models.spatialvla.policy import load_checkpoint

    data_dirs, run_dir = [Path(d) for d in data_dirs], Path(out_dir)
    train_dirs = [d / "train" for d in data_dirs]
    if main:
        # names and content, not paths: a run resumed on another worker's mirror of shared storage is the same run
        _check_run_dir(run_dir, {"config": cfg.model_dump(mode="json"), "data": [Path(d).name for d in data_dirs],
                                 "data_fingerprint": fingerprint(train_dirs, portable=True)})
    if _distributed():
        torch.distributed.barrier()
    device, precision = _device_and_precision(cfg)
    statistics = merged_statistics(data_dirs)
    resume_from = latest_checkpoint(run_dir)
    filters = freeze_filters(cfg.freeze_vision, cfg.freeze_embeddings, cfg.freeze_first_n_layers)
    if cfg.lora:  # adapters on a fixed base: the base is kept once per run (fresh shapes) or referenced (a checkpoint dir)
        base_dir = Path(cfg.base_model) if Path(cfg.base_model).is_dir() else run_dir / "base"
        if not (base_dir / "config.json").exists():
            model, processor = _build_or_load(cfg, train_dirs, statistics)
            model.save_pretrained(base_dir)
            processor.save_pretrained(base_dir)
        model, processor = load_checkpoint(base_dir)
        if resume_from:
            from models.lora import load_adapter

            model = load_adapter(model, resume_from / "adapter", trainable=True)
    else:
        model, processor = load_checkpoint(resume_from) if resume_from else _build_or_load(cfg, train_dirs, statistics)
    n_layers = model.config.text_config.num_hidden_layers
    if cfg.freeze_first_n_layers > n_layers:
        raise ValueError(f"freeze_first_n_layers={cfg.freeze_first_n_layers} but the model has {n_layers} language layers")
    if cfg.lora:
        from models.lora import apply_lora

        if not resume_from:
            model = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, filters)[0]
        counts = _param_counts(model) | {"lora_modules": sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))}
    else:
        counts = apply_freezing(model, filters)
    if cfg.gradient_checkpointing:
        (model.get_base_model() if cfg.lora else model).language_model.gradient_checkpointing_enable()
    model.to(device).train()
    core = model  # what is saved (DDP wraps it for the forward/backward)
    if _distributed():
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    log.info("trainable %d / %d parameters (%s)", counts["params_trainable"], counts["params_total"], "LoRA" if cfg.lora else f"frozen by {filters}")
    first_epoch = _stream(cfg, train_dirs, processor, epoch=0)
    tracker.log_params({**counts, "freeze_filters": ";".join(filters), "train_samples": len(first_epoch), "resolved_device": device, "resolved_precision": precision})

    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * first_epoch.num_batches()))
    if _distributed():  # ranks hold different parts: agree on the shortest
        t = torch.tensor(total, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        total = int(t)
    warmup = int(cfg.warmup_ratio * total)
    opt = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    start, history = 0, []
    if resume_from:
        state = torch.load(resume_from / "trainer_state.pt", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["step"], state["history"]
        if "rng" in state:
            _set_rng_state(state["rng"])
        log.info("resuming %s at step %d of %d", run_dir, start, total)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    peak = _peak_flops(device, precision)
    n_total, n_train = counts["params_total"], counts["params_trainable"]
    bar = tqdm(range(start + 1, total + 1), desc="finetune", unit="step", initial=start, total=total, disable=not main)
    batches = _batches(cfg, train_dirs, processor, start)
    with tracker.system_metrics():
        for step in bar:
            t0 = time.perf_counter()
            batch = {k: v.to(device) for k, v in next(batches).items()}
            with autocast:
                out = model(**processor.model_inputs(batch), logits_to_keep=labelled_window(batch["labels"]))
            parts = refinevla_loss(out.logits, batch["labels"], batch["token_kinds"], cfg.reasoning_weight)
            parts.total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            metrics = {
                "loss": parts.total.item(), "loss_action": parts.action.item(), "loss_reasoning": parts.reasoning.item(),
                "action_token_acc": parts.action_accuracy, "reasoning_token_acc": parts.reasoning_accuracy,
                "grad_norm": float(grad_norm), "lr": sched.get_last_lr()[0],
                "samples_per_s": len(batch["input_ids"]) / dt, "tokens_per_s": int(batch["attention_mask"].sum()) / dt,
                "action_l1": action_l1(out.logits.detach(), batch["labels"], batch["token_kinds"], processor.action_token_begin_idx,
                                       processor.action_tokenizer),
            }
            if peak:  # forward over all weights, backward through all activations and into the trainable weights
                metrics["mfu"] = (4 * n_total + 2 * n_train) * metrics["tokens_per_s"] / peak
            if device.startswith("cuda"):
                metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
            history.append({"step": step, **metrics})
            tracker.log_metrics(metrics, step)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", act=f"{metrics['action_token_acc']:.2f}")
            if step % cfg.save_steps == 0 or step == total:
                if main:
                    save_checkpoint(run_dir, step, core, processor, opt, sched, history, cfg.lora)
                if _distributed():
                    torch.distributed.barrier()

    checkpoint = latest_checkpoint(run_dir)
    if not main:
        return {"checkpoint": str(checkpoint), "rank": rank}
    curves = plot_curves(history, run_dir / "training_curves.png")
    tracker.log_artifact(curves)
    if checkpoint is not None and start < total:  # the final checkpoint, with the data and settings that made it (once)
        import json

        tracker.register_model(f"refinevla-{run_dir.name}", checkpoint, {
            "datasets": ",".join(str(d) for d in data_dirs), "data_fingerprint": fingerprint(train_dirs, portable=True), "step": str(total),
            "config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True)})
    last = history[-1] if history else {}
    summary = {"checkpoint": str(checkpoint), "run_dir": str(run_dir), "steps": total, "resumed_from": start, "train_samples": len(first_epoch),
               **counts, "curves": str(curves), **{f"final_{k}": v for k, v in last.items() if k != "step"}}
    if _distributed():
        summary["world_size"] = torch.distributed.get_world_size()
        write_json_atomic(run_dir / "summary.json", summary)
    log.info("fine-tuned %d steps → %s (loss %.3f)", total, checkpoint, last.get("loss", float("nan")))
    return summary


@task(name="finetune", retry_condition_fn=transient_only, retries=1, retry_delay_seconds=30, cache_policy=stage_cache_policy(__name__, "data_dirs"), persist_result=True)
def finetune_task(data_dirs: list[str], out_dir: str, cfg: FinetuneConfig, tracking: RunRef | None = None) -> dict:
    with stage_run(tracking, "finetune", cfg) as tracker:
        return run_finetune(data_dirs, out_dir, cfg, tracker)


def _worker(launch: str) -> None:
    """One torchrun process: join the group, run the stage, leave."""
    import torch

    spec = read_json(launch)
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        ref = spec["tracking"]
        tracker = Tracker(RunRef(**ref) if ref and torch.distributed.get_rank() == 0 else None)
        run_finetune(spec["data_dirs"], spec["out_dir"], FinetuneConfig(**spec["cfg"]), tracker)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="torchrun entry point of the fine-tune stage (launched by run_finetune)")
    ap.add_argument("--launch", required=True, help="launch.json written by run_finetune")
    _worker(ap.parse_args().launch)
