"""Stage 5b, evaluate in SimplerEnv (WidowX visual matching, at skeleton depth) → `eval/<run>/simpler/`.

SimplerEnv is not on PyPI and needs a Vulkan renderer (see the README, section "SimplerEnv"); where it is
not importable the stage is skipped with a message that says how to install it. The episode loop
follows SimplerEnv's evaluator: a new episode per `episode_id`, run until time-limit truncation or the
policy's terminate signal, success read at the last step, grasp from `episode_stats`.
"""

from __future__ import annotations

import importlib.util
import logging
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
WIDOWX_TASKS = ["widowx_spoon_on_towel", "widowx_carrot_on_plate", "widowx_stack_cube", "widowx_put_eggplant_in_basket"]
INSTALL_HINT = (
    "SimplerEnv is not installed, so the simulated evaluation was skipped. On a worker with a GPU (Vulkan) and "
    "Python 3.10/3.11: git clone https://github.com/simpler-env/SimplerEnv && cd SimplerEnv && git checkout "
    "4ab7178e83e84ee06894034ec6dbf9e7aad1e882 && git submodule update --init && pip install 'numpy<2' sapien==2.2.2 "
    "&& pip install -e ManiSkill2_real2sim -e . && export MS2_REAL2SIM_ASSET_DIR=$PWD/ManiSkill2_real2sim/data "
    "(README, section 'SimplerEnv')."
)


class SimplerConfig(BaseModel):
    """SimplerEnv evaluation."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run it when SimplerEnv is importable (skipped with a message otherwise).")
    tasks: list[str] = Field(default_factory=lambda: list(WIDOWX_TASKS), description="simpler_env task names.")
    episodes_per_task: int = Field(3, ge=1, description="Episodes per task (smoke default; SimplerEnv's protocol and the paper preset: 24).")
    reason: bool = Field(False, description="Reason-then-act at every step (slow) instead of action-only decoding.")


def simpler_available() -> bool:
    return importlib.util.find_spec("simpler_env") is not None


def camera_image(env, obs) -> np.ndarray:
    """The policy camera, as SimplerEnv's get_image_from_maniskill2_obs_dict picks it."""
    robot = env.unwrapped.robot_uid
    cam = "overhead_camera" if "google_robot" in robot else "3rd_view_camera"
    return obs["image"][cam]["rgb"]


def run_episode(env, policy, episode_id: int) -> dict:
    obs, _ = env.reset(options={"obj_init_options": {"episode_id": episode_id}})
    instruction = env.get_language_instruction()
    policy.reset(instruction)
    success, truncated, steps, info = False, False, 0, {}
    while not truncated:
        _, action = policy.step(camera_image(env, obs), instruction)
        obs, _, done, truncated, info = env.step(np.concatenate([action["world_vector"], action["rot_axangle"], action["gripper"]]))
        success, steps = bool(done), steps + 1  # success is whatever holds at the last step
        if action["terminate_episode"][0] > 0:
            if env.is_final_subtask():
                break
            env.advance_to_next_subtask()
        instruction = env.get_language_instruction()
    stats = info.get("episode_stats", {})
    return {"episode_id": episode_id, "instruction": instruction, "success": success, "steps": steps,
            "grasped": bool(stats.get("is_src_obj_grasped", info.get("is_src_obj_grasped", False)))}


def run_simpler(checkpoint: str | Path, out_dir: str | Path, cfg: SimplerConfig = SimplerConfig(), tracker: Tracker = Tracker(None), make_env=None) -> dict:
    """`make_env(task_name)` defaults to `simpler_env.make`; tests pass an environment honouring its contract."""
    if not cfg.enabled:
        return {"status": "disabled"}
    if make_env is None:
        if not simpler_available():
            log.warning(INSTALL_HINT)
            tracker.set_tags({"simpler_env": "skipped: not installed"})
            return {"status": "skipped", "reason": INSTALL_HINT}
        import simpler_env

        make_env = simpler_env.make
    from models.simpler_policy import SimplerPolicy
    from models.spatialvla.policy import load_checkpoint

    model, proc = load_checkpoint(checkpoint)
    records = []
    for name in cfg.tasks:
        policy = SimplerPolicy(model, proc, "google_robot" if name.startswith("google_robot") else "widowx", reason=cfg.reason)
        for i in range(cfg.episodes_per_task):
            env = make_env(name)
            records.append({"task": name, **run_episode(env, policy, i)})
            env.close()
    df = pd.DataFrame(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "episodes.parquet") as tmp:
        df.to_parquet(tmp)
    table = df.groupby("task").agg(episodes=("success", "size"), grasp=("grasped", "mean"), success=("success", "mean"))
    write_text_atomic(out_dir / "results.csv", table.to_csv())
    write_json_atomic(out_dir / "summary.json", table.reset_index().to_dict("records"))
    tracker.log_metrics({f"simpler_{t}_success": float(r.success) for t, r in table.iterrows()})
    tracker.log_artifact(out_dir / "results.csv")
    return {"status": "done", "out_dir": str(out_dir), "success": float(df["success"].mean()), "grasp": float(df["grasped"].mean())}


@task(name="simpler-eval", retry_condition_fn=transient_only, retries=2, retry_delay_seconds=30, cache_policy=stage_cache_policy(__name__, "checkpoint"), persist_result=True)
def simpler_task(checkpoint: str, out_dir: str, cfg: SimplerConfig, available: bool, tracking: RunRef | None = None) -> dict:
    """`available` (simpler_available()) is part of the cache key: installing SimplerEnv re-runs the stage."""
    with stage_run(tracking, "simpler-eval", cfg) as tracker:
        return run_simpler(checkpoint, out_dir, cfg, tracker)
