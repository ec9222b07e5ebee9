"""Stage 5b, evaluate in SimplerEnv: the paper's Tables 1 and 2 → `eval/<run>/simpler/`.

The protocol is data (`tasks/simpler_suites.py`, mirroring SimplerEnv's scripts); each (task, config) item is a
Prefect task (`simpler_item_task`): retried on simulator crashes, cached on (checkpoint, item, settings, code),
mapped in parallel; it writes its episodes to `items/<checkpoint key>-<mode>/<key>.parquet` (+ videos, traces), so a killed run resumes
with the items it had not finished. A final step merges them into `episodes.parquet` and the tables
(`tasks/simpler_report.py`). The episode loop is SimplerEnv's evaluator's: a new env per episode, run until the
policy's terminate or time-limit truncation, a terminate before the final subtask advances the subtask, success
is `done` at the last step, grasp from `episode_stats`.

SimplerEnv is not on PyPI and needs a Vulkan renderer (README, section "SimplerEnv"); where it is not
importable the stage is skipped with install instructions. `python -m tasks.simpler check` checks an install.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from prefect import task, unmapped
from pydantic import BaseModel, ConfigDict, Field, field_validator

from data.io import atomic_path, fingerprint, write_json_atomic, write_text_atomic
from tasks.caching import stage_cache_policy
from tasks.retry import transient_only
from tasks.simpler_report import results_markdown, table1, table2, table_csv, table_markdown, task_results
from tasks.simpler_suites import SUITES, Episode, EvalConfig, expand, required_assets
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")
WIDOWX_TASKS = ["widowx_spoon_on_towel", "widowx_carrot_on_plate", "widowx_stack_cube", "widowx_put_eggplant_in_basket"]
ASSET_ENV = "MS2_REAL2SIM_ASSET_DIR"
INSTALL_STEPS = (
    "On a worker with a GPU (Vulkan) and Python 3.10/3.11: git clone https://github.com/simpler-env/SimplerEnv && cd SimplerEnv && git checkout "
    "4ab7178e83e84ee06894034ec6dbf9e7aad1e882 && git submodule update --init && pip install 'numpy<2' sapien==2.2.2 "
    "&& pip install -e ManiSkill2_real2sim -e . && export MS2_REAL2SIM_ASSET_DIR=$PWD/ManiSkill2_real2sim/data "
    "(README, section 'SimplerEnv'); then check it with: python -m tasks.simpler check"
)
INSTALL_HINT = "SimplerEnv is not installed, so the simulated evaluation was skipped. " + INSTALL_STEPS


class SimplerConfig(BaseModel):
    """SimplerEnv evaluation (the paper's Tables 1 and 2)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run it when SimplerEnv is importable (skipped with a message otherwise).")
    mode: Literal["smoke", "full"] = Field("smoke", description="smoke: the first `smoke_episodes` episodes of the 4 WidowX tasks; full: SimplerEnv's protocol for `suites` (paper preset).")
    suites: list[str] = Field(default_factory=lambda: list(SUITES), description="Full mode, any of widowx, google_vm, google_va: WidowX (Table 1), Google robot visual matching and variant aggregation (Table 2).")
    tasks: list[str] = Field(default_factory=list, description="Only these tasks (e.g. widowx_carrot_on_plate, google_vm_move_near); empty: all of the mode.")
    smoke_episodes: int = Field(3, ge=1, description="Episodes per WidowX task in smoke mode (the protocol: 24).")
    reason: bool = Field(False, description="Reason-then-act at every step (slow) instead of action-only decoding; traces are kept either way.")
    traces: bool = Field(True, description="Write a JSONL per episode: step, generated reasoning, the 7-D env action.")
    videos_per_task: int = Field(2, ge=0, description="Animated GIFs of the first N episodes of each task.")
    asset_dir: str | None = Field(None, description="ManiSkill2_real2sim's data/ directory; None: $MS2_REAL2SIM_ASSET_DIR.")
    isolate: bool = Field(False, description="Run each config in a child process, so a simulator segfault becomes a retried failure instead of killing the worker (reloads the checkpoint per config).")
    label: str | None = Field(None, description="Name of our row in the tables; None: 'ours (<checkpoint>)'.")
    max_steps: int | None = Field(None, ge=1, description="Quick checks only: cap every episode at this many steps (not the protocol; recorded in max_steps).")

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in SUITES]
        if unknown:
            raise ValueError(f"unknown SimplerEnv suite(s) {unknown}; known: {', '.join(SUITES)}")
        return v


class SimplerInstallError(RuntimeError):
    """SimplerEnv is present but cannot run (renderer, assets); never retried."""


class SimulatorCrash(RuntimeError):
    """The child process running a config died (e.g. a SAPIEN segfault); retried."""


@dataclass(frozen=True)
class ItemOptions:
    """What an item needs besides its config; part of its cache key."""

    reason: bool = False
    traces: bool = True
    videos: int = 0
    asset_dir: str | None = None
    isolate: bool = False


def simpler_available() -> bool:
    return importlib.util.find_spec("simpler_env") is not None


def asset_dir(cfg_dir: str | None = None) -> Path | None:
    d = cfg_dir or os.environ.get(ASSET_ENV)
    return Path(d) if d else None


# --------------------------------------------------------------------------------------------- install check
RENDERER_PROBE = "import sapien.core as s; s.SapienRenderer(offscreen_only=True); print('renderer ok')"
ENV_PROBE = ("import simpler_env; env = simpler_env.make('widowx_carrot_on_plate'); env.reset(); "
             "env.step(env.action_space.sample() * 0); print('env ok')")


def run_probe(code: str, what: str, python: str = sys.executable, timeout: float = 600) -> str | None:
    """Run `code` in a fresh interpreter (a missing Vulkan device segfaults it); None when it worked, else why not."""
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{what}: no answer within {timeout:.0f} s"
    if p.returncode == 0:
        return None
    err = (p.stderr or "").strip()
    tail = "\n    ".join(err.splitlines()[-6:])
    if p.returncode in (-11, 139):
        return (f"{what}: the interpreter crashed with a segmentation fault: no usable Vulkan device. SAPIEN 2.2.2 renders only "
                f"through Vulkan: on a GPU worker install the NVIDIA driver's Vulkan ICD, libvulkan1 and libegl1 "
                f"(check with `vulkaninfo --summary`). Last output:\n    {tail}")
    if "ModuleNotFoundError" in err or "ImportError" in err:
        return f"{what}: cannot import SimplerEnv ({err.splitlines()[-1]}). {INSTALL_STEPS}"
    if "Cannot find a suitable rendering device" in err or "ErrorExtensionNotPresent" in err or "Vulkan" in err:
        return (f"{what}: the Vulkan renderer is not usable ({err.splitlines()[-1]}); SAPIEN 2.2.2 needs a Vulkan device with "
                f"the features svulkan2 asks for (NVIDIA driver's ICD; see README 'SimplerEnv').")
    return f"{what} failed (exit code {p.returncode}):\n    {tail}"


def check_assets(directory: str | Path | None, configs: list[EvalConfig]) -> list[str]:
    """Problems with the asset directory: unset, absent, or lacking files the configs open (stages, overlays).
    A missing stage only logs an error in SimplerEnv and makes every episode fail silently, hence this check."""
    if directory is None:
        return [f"${ASSET_ENV} is not set: point it at ManiSkill2_real2sim/data of a full git checkout"]
    d = Path(directory)
    if not d.is_dir():
        return [f"asset directory {d} does not exist (${ASSET_ENV})"]
    missing = [f for f in required_assets(configs) if not (d / f).is_file()]
    if missing:
        return [f"asset directory {d} lacks {len(missing)} file(s) the evaluation opens (a copy without its large blobs? "
                f"clone the repository with git):\n    " + "\n    ".join(missing)]
    return []


def check_install(directory: str | Path | None = None, configs: list[EvalConfig] | None = None, python: str = sys.executable,
                  probe_env: bool = True) -> list[str]:
    """Everything that keeps SimplerEnv from producing real results; [] when it can run. Each probe runs in a
    subprocess: (1) import, (2) the renderer, (3) one env built, reset and stepped; then (4) the asset files."""
    configs = expand("full") if configs is None else configs
    problems = []
    bad = run_probe("import simpler_env, mani_skill2_real2sim, sapien", "importing simpler_env", python, timeout=300)
    if bad:
        problems.append(bad)
    elif bad := run_probe(RENDERER_PROBE, "creating the SAPIEN renderer", python, timeout=300):
        problems.append(bad)
    elif probe_env:
        bad = run_probe(ENV_PROBE, "creating a SimplerEnv environment", python)
        if bad:
            problems.append(bad)
    problems += check_assets(directory if directory is not None else asset_dir(), configs)
    return problems


# --------------------------------------------------------------------------------------------- the episode loop
def camera_image(env, obs) -> np.ndarray:
    """The policy camera, as SimplerEnv's get_image_from_maniskill2_obs_dict picks it."""
    robot = env.unwrapped.robot_uid
    cam = "overhead_camera" if "google_robot" in robot else "3rd_view_camera"
    return obs["image"][cam]["rgb"]


def run_episode(env, policy, episode: Episode, keep_frames: bool = False) -> tuple[dict, list[np.ndarray], list[dict]]:
    """One episode as SimplerEnv's evaluator runs it → (record, frames, per-step trace records)."""
    obs, _ = env.reset(options=episode.reset_options())
    final = env.is_final_subtask()
    instruction = first = env.get_language_instruction()
    policy.reset(instruction)
    image = camera_image(env, obs)
    frames = [image] if keep_frames else []
    steps_log: list[dict] = []
    terminated = truncated = done = stopped = False
    info: dict = {}
    while not (terminated or truncated):
        pred, action = policy.step(image, instruction)
        terminated = bool(action["terminate_episode"][0] > 0)
        if terminated and not final:  # a terminate before the final subtask moves on to the next one
            terminated = False
            env.advance_to_next_subtask()
        a = np.concatenate([action["world_vector"], action["rot_axangle"], action["gripper"]]).astype(np.float64)
        obs, _, done, truncated, info = env.step(a)
        steps_log.append({"step": len(steps_log), "reasoning": getattr(pred, "reasoning", ""), "action": [float(v) for v in a]})
        instruction = env.get_language_instruction()
        final = env.is_final_subtask()
        image = camera_image(env, obs)
        if keep_frames:
            frames.append(image)
        stopped = terminated
    stats = info.get("episode_stats", {}) or {}
    grasped = stats.get("is_src_obj_grasped", stats.get("grasped", info.get("is_src_obj_grasped", info.get("is_grasped", False))))
    consec = stats.get("consecutive_grasp", stats.get("consec_grasp", info.get("consecutive_grasp", False)))
    record = {"instruction": first, "final_instruction": instruction, "success": bool(done), "grasped": bool(grasped),
              "consecutive_grasp": bool(consec), "steps": len(steps_log), "terminated_by_policy": bool(stopped),
              "episode_stats": json.dumps({k: _plain(v) for k, v in stats.items()}, sort_keys=True)}
    return record, frames, steps_log


def _plain(v):
    return v.item() if isinstance(v, np.generic) else (v.tolist() if isinstance(v, np.ndarray) else v)


def write_gif(path: Path, frames: list[np.ndarray], width: int = 320, fps: int = 5) -> None:
    """An animated GIF (Pillow; Chromium and the MLflow UI show it), frames scaled to `width`."""
    from PIL import Image

    imgs = []
    for f in frames:
        im = Image.fromarray(np.asarray(f, dtype=np.uint8))
        imgs.append(im.resize((width, max(1, round(im.height * width / im.width))), Image.BILINEAR))
    with atomic_path(path) as tmp:
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)


def make_simpler_env(cfg: EvalConfig, episode: Episode, assets: str | Path | None = None):
    """The env SimplerEnv's evaluator builds for this config (gym.make through its env builder, same kwargs)."""
    from simpler_env.utils.env.env_builder import build_maniskill2_env

    root = asset_dir(str(assets) if assets else None)
    overlay = episode.rgb_overlay or cfg.rgb_overlay
    if overlay and root is None:
        raise SimplerInstallError(f"${ASSET_ENV} is not set; the visual-matching overlay {overlay} lives there")
    kwargs = dict(obs_mode="rgbd", robot=cfg.robot, sim_freq=cfg.sim_freq, control_mode=cfg.control_mode, control_freq=cfg.control_freq,
                  max_episode_steps=cfg.max_episode_steps, scene_name=cfg.scene_name, camera_cfgs={"add_segmentation": True},
                  rgb_overlay_path=str(root / overlay) if overlay else None)
    return build_maniskill2_env(cfg.env_name, **cfg.build_kwargs(), **kwargs)


_MODELS: dict[str, tuple] = {}
_MODELS_LOCK = threading.Lock()


def _model(checkpoint: str):
    """One loaded checkpoint per process, shared by the item tasks running in its threads."""
    from models.spatialvla.policy import load_checkpoint

    with _MODELS_LOCK:
        if checkpoint not in _MODELS:
            import torch

            _MODELS[checkpoint] = load_checkpoint(checkpoint, "cuda" if torch.cuda.is_available() else "cpu")
        return _MODELS[checkpoint]


def item_part(out_dir: str | Path, item: EvalConfig, checkpoint: str | Path, reason: bool) -> Path:
    """Where one config's episodes go: per checkpoint and decoding mode, so evaluating another checkpoint (or
    reason-then-act after action-only) into the same folder never reuses these results."""
    key = fingerprint([checkpoint], portable=True)  # content, not path: the same on every worker's mirror
    return Path(out_dir) / "items" / f"{key}-{'reason' if reason else 'act'}" / f"{item.key}.parquet"


def run_item(checkpoint: str | Path, item: EvalConfig, out_dir: str | Path, opts: ItemOptions = ItemOptions(), make_env=None) -> dict:
    """Run one (task, config): every episode, into `item_part(...)` (+ videos, traces). A finished item is
    read back, not re-run. `make_env(item, episode)` defaults to SimplerEnv's env builder."""
    from models.simpler_policy import SimplerPolicy

    out = Path(out_dir)
    part = item_part(out, item, checkpoint, opts.reason)
    if part.exists():
        return _item_summary(item, pd.read_parquet(part))
    if make_env is None:
        def make_env(c, e):
            return make_simpler_env(c, e, opts.asset_dir)
    model, proc = _model(str(checkpoint))
    policy = SimplerPolicy(model, proc, item.robot_kind, reason=opts.reason)
    rows = []
    for i, ep in enumerate(item.episodes):
        env = make_env(item, ep)
        try:
            record, frames, trace = run_episode(env, policy, ep, keep_frames=i < opts.videos)
        finally:
            if hasattr(env, "close"):
                env.close()
        stem = f"{part.parent.name}/{item.key}/episode_{i:03d}"
        video = trace_file = None
        if i < opts.videos and frames:
            video = f"videos/{stem}.gif"
            write_gif(out / video, frames)
        if opts.traces:
            trace_file = f"traces/{stem}.jsonl"
            write_text_atomic(out / trace_file, "".join(json.dumps(r) + "\n" for r in trace))
        rows.append({"suite": item.suite, "task": item.task, "variant": item.variant, "config": item.key, "episode_id": i,
                     **record, "video": video, "trace_file": trace_file, "max_steps": item.max_episode_steps,
                     "robot": item.robot, "env_name": item.env_name, "scene_name": item.scene_name,
                     "robot_x": ep.robot_xy[0], "robot_y": ep.robot_xy[1], "pose": ep.pose_name,
                     "obj_episode_id": ep.obj_episode_id, "obj_x": ep.obj_xy[0] if ep.obj_xy else None,
                     "obj_y": ep.obj_xy[1] if ep.obj_xy else None, "reason": opts.reason, "script": item.script})
    df = pd.DataFrame(rows)
    for col in ("video", "trace_file"):
        df[col] = df[col].astype("string")
    with atomic_path(part) as tmp:
        df.to_parquet(tmp)
    return _item_summary(item, df)


def _item_summary(item: EvalConfig, df: pd.DataFrame) -> dict:
    return {"key": item.key, "task": item.task, "variant": item.variant, "episodes": len(df),
            "success": float(df["success"].mean()), "grasp": float(df["grasped"].mean())}


def video_quota(items: list[EvalConfig], per_task: int) -> dict[str, int]:
    """How many episodes of each item to film: the first `per_task` episodes of each task, in protocol order."""
    left: dict[str, int] = {}
    quota = {}
    for it in items:
        n = left.setdefault(it.task, per_task)
        quota[it.key] = min(n, len(it.episodes))
        left[it.task] = n - quota[it.key]
    return quota


# --------------------------------------------------------------------------------------------- merge and report
def merge_results(out_dir: str | Path, items: list[EvalConfig], cfg: SimplerConfig, checkpoint: str, tracker: Tracker = Tracker(None)) -> dict:
    out = Path(out_dir)
    parts = [item_part(out, it, checkpoint, cfg.reason) for it in items]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} SimplerEnv item(s) have no results: {missing[:5]}")
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    with atomic_path(out / "episodes.parquet") as tmp:
        df.to_parquet(tmp)
    res = task_results(df)
    label = cfg.label or f"ours ({Path(checkpoint).parent.name}/{Path(checkpoint).name})"
    partial = cfg.mode == "smoke" or cfg.max_steps or cfg.tasks
    if partial and not cfg.label:
        label += f", {cfg.mode}" + (f", ≤{cfg.max_steps} steps" if cfg.max_steps else "")
    t1, t2 = table1(res, label), table2(res, label)
    write_text_atomic(out / "results.csv", res.to_csv(index=False))
    write_text_atomic(out / "results.md", f"# SimplerEnv results ({cfg.mode} mode, checkpoint `{checkpoint}`)\n\n"
                      "Rates: mean over the task's configs; 95 % Wilson score intervals on the pooled episodes.\n\n" + results_markdown(res))
    scope = (f"\nOur row: {cfg.mode} mode, {len(df)} episodes in {len(items)} configs"
             + (f", episodes capped at {cfg.max_steps} steps" if cfg.max_steps else "")
             + (" (not the full protocol: compare with the paper's rows only in full mode)" if partial else " (SimplerEnv's full protocol)") + ".\n")
    write_text_atomic(out / "table.md", table_markdown(t1, t2) + scope)
    write_text_atomic(out / "table.csv", table_csv(t1, t2))
    summary = {"mode": cfg.mode, "checkpoint": str(checkpoint), "label": label, "episodes": len(df), "items": len(items),
               "tasks": {r["task"]: r for r in res.to_dict("records")}}
    write_json_atomic(out / "summary.json", summary)
    metrics = {}
    for r in res.itertuples():
        metrics[f"simpler.{r.task}.success"] = r.success_rate
        metrics[f"simpler.{r.task}.grasp"] = r.grasp_rate
        metrics[f"simpler.{r.task}.episodes"] = r.episodes
    tracker.log_metrics(metrics)
    for name in ("episodes.parquet", "results.csv", "results.md", "table.md", "table.csv", "summary.json"):
        tracker.log_artifact(out / name, "simpler")
    for v in df["video"].dropna():
        tracker.log_artifact(out / v, str(Path("simpler") / Path(v).parent))
    return {"status": "done", "mode": cfg.mode, "out_dir": str(out), "episodes": len(df), "table": str(out / "table.md"),
            "success": float(df["success"].mean()), "grasp": float(df["grasped"].mean())}


def shard_items(items: list[EvalConfig], shard: int, num_shards: int) -> list[EvalConfig]:
    """Shard `shard` of `num_shards`: every num_shards-th item, so each shard gets a mix of tasks."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), not {shard}")
    return items[shard::num_shards]


def plan(cfg: SimplerConfig) -> list[EvalConfig]:
    items = expand(cfg.mode, cfg.suites, cfg.smoke_episodes, cfg.tasks)
    if cfg.max_steps:
        items = [replace(it, max_episode_steps=min(cfg.max_steps, it.max_episode_steps)) for it in items]
    return items


def item_options(cfg: SimplerConfig, items: list[EvalConfig]) -> list[ItemOptions]:
    quota = video_quota(items, cfg.videos_per_task)
    return [ItemOptions(cfg.reason, cfg.traces, quota[it.key], cfg.asset_dir, cfg.isolate) for it in items]


def run_simpler(checkpoint: str | Path, out_dir: str | Path, cfg: SimplerConfig = SimplerConfig(), tracker: Tracker = Tracker(None),
                make_env=None, run_items=None) -> dict:
    """The stage. `make_env(item, episode)` defaults to SimplerEnv (tests pass an env honouring its contract);
    `run_items(items, options)` defaults to running them here one after another (the Prefect task maps them)."""
    if not cfg.enabled:
        return {"status": "disabled"}
    items = plan(cfg)
    if make_env is None:
        if not simpler_available():
            log.warning(INSTALL_HINT)
            tracker.set_tags({"simpler_env": "skipped: not installed"})
            return {"status": "skipped", "reason": INSTALL_HINT}
        problems = check_install(cfg.asset_dir, items, probe_env=False)
        if problems:
            raise SimplerInstallError("SimplerEnv cannot run here:\n  - " + "\n  - ".join(problems))
    opts = item_options(cfg, items)
    if run_items is None:
        for it, o in zip(items, opts):
            run_item(checkpoint, it, out_dir, o, make_env)
    else:
        run_items(items, opts)
    return merge_results(out_dir, items, cfg, str(checkpoint), tracker)


def _retry_crashes(task, task_run, state) -> bool:
    """Retry simulator crashes (SAPIEN / PhysX runtime errors, lost workers), never install problems or bad input."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(exc, SimplerInstallError) and transient_only(task, task_run, state)


@task(name="simpler-item", retry_condition_fn=_retry_crashes, retries=2, retry_delay_seconds=10,
      cache_policy=stage_cache_policy(__name__, "checkpoint"), persist_result=True)
def simpler_item_task(checkpoint: str, out_dir: str, item: EvalConfig, opts: ItemOptions) -> dict:
    return run_item_isolated(checkpoint, item, out_dir, opts) if opts.isolate else run_item(checkpoint, item, out_dir, opts)


def run_child(cmd: list[str], what: str) -> None:
    """Run a child process; a crash or failure becomes SimulatorCrash (retried) with its last output."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = "\n    ".join((p.stderr or "").strip().splitlines()[-8:])
        how = f"crashed with signal {-p.returncode}" if p.returncode < 0 else f"failed (exit code {p.returncode})"
        raise SimulatorCrash(f"{what} {how}:\n    {tail}")


def run_item_isolated(checkpoint: str | Path, item: EvalConfig, out_dir: str | Path, opts: ItemOptions) -> dict:
    """`run_item` in a fresh interpreter (`python -m tasks.simpler run-item`); its result file is read back."""
    from dataclasses import asdict

    out = Path(out_dir)
    part = item_part(out, item, checkpoint, opts.reason)
    if not part.exists():
        spec = part.parent / f".{item.key}.json"
        write_json_atomic(spec, {"checkpoint": str(checkpoint), "item": asdict(item), "opts": asdict(opts)})
        run_child([sys.executable, "-m", "tasks.simpler", "run-item", str(spec), str(out)], f"SimplerEnv config {item.key}")
    return _item_summary(item, pd.read_parquet(part))


@task(name="simpler-eval", retry_condition_fn=_retry_crashes, retries=1, retry_delay_seconds=30,
      cache_policy=stage_cache_policy(__name__, "checkpoint"), persist_result=True)
def simpler_task(checkpoint: str, out_dir: str, cfg: SimplerConfig, available: bool, tracking: RunRef | None = None) -> dict:
    """`available` (simpler_available()) is part of the cache key: installing SimplerEnv re-runs the stage.
    Items are mapped over the flow's task runner; each is cached and resumable on its own."""

    from prefect.context import TaskRunContext

    me = TaskRunContext.get().task  # this task with the flow's options (result storage, refresh_cache)

    def mapped(items, opts):
        item_task = simpler_item_task.with_options(result_storage=me.result_storage, refresh_cache=me.refresh_cache)
        futures = item_task.map(unmapped(checkpoint), unmapped(out_dir), items, opts)
        return [f.result() for f in futures]

    with stage_run(tracking, "simpler-eval", cfg) as tracker:
        return run_simpler(checkpoint, out_dir, cfg, tracker, run_items=mapped)


# --------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tasks.simpler", description="SimplerEnv install check and protocol listing.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="Check that SimplerEnv, its renderer and the assets the suites need are usable (exit 1 if not).")
    c.add_argument("--asset-dir", default=None, help=f"default: ${ASSET_ENV}")
    c.add_argument("--mode", choices=["smoke", "full"], default="full")
    c.add_argument("--no-env", action="store_true", help="skip building one environment (the slowest probe)")
    ls = sub.add_parser("list", help="Print the (task, config) items of a mode with their episode counts.")
    ls.add_argument("--mode", choices=["smoke", "full"], default="full")
    ri = sub.add_parser("run-item", help="(internal) run one config described by a JSON file; used by `isolate`.")
    ri.add_argument("spec")
    ri.add_argument("out_dir")
    args = p.parse_args(argv)
    if args.cmd == "run-item":
        from tasks.simpler_suites import config_from_dict

        spec = json.loads(Path(args.spec).read_text())
        run_item(spec["checkpoint"], config_from_dict(spec["item"]), args.out_dir, ItemOptions(**{**spec["opts"], "isolate": False}))
        return 0
    items = expand(args.mode)
    if args.cmd == "list":
        for it in items:
            print(f"{it.suite:10s} {it.task:40s} {it.variant or '-':45s} {len(it.episodes):3d} episodes  {it.env_name}  ({it.script})")
        print(f"{len(items)} items, {sum(len(it.episodes) for it in items)} episodes")
        return 0
    problems = check_install(args.asset_dir, items, probe_env=not args.no_env)
    if problems:
        print("SimplerEnv check FAILED:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 1
    print(f"SimplerEnv check passed: import, renderer{'' if args.no_env else ', one environment'} and the {len(required_assets(items))} asset files of {args.mode} mode.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
