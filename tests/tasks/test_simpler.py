"""The SimplerEnv stage: the protocol as SimplerEnv's scripts define it, the episode loop and the adapter against
an environment that honours SimplerEnv's contract (observation layout, info keys, step limits, success read at
the last step), the results and tables, and the install check's failure paths. A real episode runs only where
`simpler_env` is importable (skipped otherwise, with the reason)."""

import json
import math
import sys
from dataclasses import asdict, replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from models.simpler_policy import ActionEnsembler, SimplerPolicy, euler_to_axangle
from tasks.simpler import (
    SimplerConfig,
    check_assets,
    check_install,
    main,
    run_episode,
    run_probe,
    run_simpler,
    shard_items,
    simpler_available,
    video_quota,
)
from tasks.simpler_report import table1, table2, task_results, wilson
from tasks.simpler_suites import config_from_dict, expand, required_assets, robot_quat, suite_configs

CAMERAS = {"widowx": ("3rd_view_camera", (480, 640)), "widowx_sink_camera_setup": ("3rd_view_camera", (480, 640)),
           "google_robot_static": ("overhead_camera", (512, 640))}


class ContractEnv:
    """What `build_maniskill2_env(...)` returns, as the evaluator uses it: rgbd observations with the policy camera
    (480x640 WidowX, 512x640 Google) and a 128x128 base camera, time-limit truncation at the config's
    max_episode_steps, `done` = success at that step, info keys success / is_src_obj_grasped /
    consecutive_grasp / episode_stats (episode-level ORs), subtasks with their own instructions."""

    def __init__(self, item, episode, succeed_at=None, lose_at=None, grasp_at=2, instructions=None):
        self.item, self.episode = item, episode
        self.max_episode_steps = item.max_episode_steps
        self.succeed_at, self.lose_at, self.grasp_at = succeed_at, lose_at, grasp_at
        self.instructions = instructions or ["put carrot on plate"]
        self.unwrapped = SimpleNamespace(robot_uid=item.robot)
        self.actions, self.advanced_at, self.closed = [], [], False

    def _obs(self):
        cam, (h, w) = CAMERAS[self.item.robot]
        return {"agent": {"qpos": np.zeros(8)}, "image": {cam: {"rgb": np.full((h, w, 3), 90 + self.t, np.uint8), "depth": np.zeros((h, w, 1), np.float32)},
                                                         "base_camera": {"rgb": np.zeros((128, 128, 3), np.uint8)}}}

    def reset(self, seed=None, options=None):
        assert set(options) == {"robot_init_options", "obj_init_options"}
        assert options["robot_init_options"]["init_xy"].shape == (2,) and options["robot_init_options"]["init_rot_quat"].shape == (4,)
        self.t, self.subtask, self.grasp_steps = 0, 0, 0
        self.stats = {"is_src_obj_grasped": False, "consecutive_grasp": False, "src_on_target": False}
        return self._obs(), {"scene_name": self.item.scene_name}

    def get_language_instruction(self):
        return self.instructions[self.subtask]

    def is_final_subtask(self):
        return self.subtask == len(self.instructions) - 1

    def advance_to_next_subtask(self):
        self.advanced_at.append(self.t)
        self.subtask += 1

    def step(self, action):
        assert action.shape == (7,) and np.all(np.isfinite(action))
        self.actions.append(action)
        self.t += 1
        grasped = self.grasp_at is not None and self.t >= self.grasp_at
        self.grasp_steps = self.grasp_steps + 1 if grasped else 0
        done = self.succeed_at is not None and self.t >= self.succeed_at and not (self.lose_at and self.t >= self.lose_at)
        self.stats = {"is_src_obj_grasped": self.stats["is_src_obj_grasped"] or grasped,
                      "consecutive_grasp": self.stats["consecutive_grasp"] or self.grasp_steps >= 5,
                      "src_on_target": self.stats["src_on_target"] or done}
        info = {"success": done, "is_src_obj_grasped": grasped, "consecutive_grasp": self.grasp_steps >= 5,
                "src_on_target": done, "episode_stats": dict(self.stats)}
        return self._obs(), 0.0, done, self.t >= self.max_episode_steps, info

    def close(self):
        self.closed = True


@pytest.mark.skipif(simpler_available(), reason="SimplerEnv is installed here")
def test_skipped_with_install_instructions(tmp_path, checkpoint):
    out = run_simpler(checkpoint, tmp_path, SimplerConfig())
    assert out["status"] == "skipped" and "git clone https://github.com/simpler-env/SimplerEnv" in out["reason"]


def test_suites_mirror_simpler_env_scripts():
    widowx = suite_configs("widowx")
    assert [(c.task, len(c.episodes), c.max_episode_steps) for c in widowx] == [
        ("widowx_spoon_on_towel", 24, 60), ("widowx_carrot_on_plate", 24, 60), ("widowx_stack_cube", 24, 60), ("widowx_put_eggplant_in_basket", 24, 120)]
    egg = widowx[3]
    assert (egg.robot, egg.scene_name, egg.rgb_overlay, egg.episodes[0].robot_xy) == ("widowx_sink_camera_setup", "bridge_table_1_v2", "real_inpainting/bridge_sink.png", (0.127, 0.06))
    assert [e.obj_episode_id for e in widowx[0].episodes] == list(range(24)) and (widowx[0].control_freq, widowx[0].sim_freq) == (5, 500)

    def episodes(suite, word):
        return sum(len(c.episodes) for c in suite_configs(suite) if word in c.task)

    # visual matching: 4 robot-colour URDFs; coke can 3 orientations x 25, move near 60, drawers 6 x 9 poses
    assert (episodes("google_vm", "coke"), episodes("google_vm", "move_near"), episodes("google_vm", "drawer")) == (300, 240, 216)
    # variant aggregation: coke can 9 variants, move near 8, drawers 7 variants x 9 robot positions
    assert (episodes("google_va", "coke"), episodes("google_va", "move_near"), episodes("google_va", "drawer")) == (675, 480, 378)
    coke = next(c for c in suite_configs("google_vm") if c.task == "google_vm_pick_coke_can_horizontal")
    assert coke.env_kwargs == (("lr_switch", True), ("urdf_version", "None")) and coke.max_episode_steps == 80
    assert coke.episodes[0].obj_xy == (-0.35, -0.02) and coke.episodes[1].obj_xy == pytest.approx((-0.35, 0.09))  # x outer, y inner
    drawer = next(c for c in suite_configs("google_vm") if c.task == "google_vm_open_drawer")
    assert drawer.env_name == "OpenTopDrawerCustomInScene-v0" and drawer.max_episode_steps == 113 and drawer.scene_name == "dummy_drawer"
    assert list(drawer.build_kwargs())[0] == "shader_dir" and drawer.build_kwargs()["station_name"] == "mk_station_recolor"
    assert [e.rgb_overlay for e in drawer.episodes][:2] == ["real_inpainting/open_drawer_a0.png", "real_inpainting/open_drawer_a1.png"]
    near = next(c for c in suite_configs("google_vm") if c.task == "google_vm_move_near")
    np.testing.assert_allclose(near.episodes[0].robot_quat, [np.sin(0.045), 0, 0, np.cos(0.045)], atol=1e-12)  # yaw -0.09 * (0,0,0,1)
    assert robot_quat(0.0) == (0.0, 0.0, 0.0, 1.0)
    every = expand("full")
    assert len({c.key for c in every}) == len(every) == 121
    assert "hab2_bench_assets/stages/bridge_table_1_v1.glb" in required_assets(every)
    smoke = expand("smoke", smoke_episodes=2)
    assert [len(c.episodes) for c in smoke] == [2, 2, 2, 2] and all(c.suite == "widowx" for c in smoke)
    with pytest.raises(ValueError, match="unknown SimplerEnv task"):
        expand("smoke", tasks=["google_vm_move_near"])
    with pytest.raises(ValueError, match="unknown SimplerEnv suite"):
        SimplerConfig(suites=["google"])
    assert all(config_from_dict(json.loads(json.dumps(asdict(c)))) == c for c in every)  # what an isolated child receives
    shards = [shard_items(every, i, 3) for i in range(3)]  # a work pool's workers share the items
    assert sorted(c.key for s in shards for c in s) == sorted(c.key for c in every) and {len(s) for s in shards} == {40, 41}


def test_episode_loop_results_and_tables(tmp_path, checkpoint):
    plans = [(1, None), (None, None), (1, 2)]  # succeeds; never; succeeds then drops the carrot
    envs = []

    def make(item, episode):
        envs.append(ContractEnv(item, episode, *plans[len(envs)]))
        return envs[-1]

    cfg = SimplerConfig(tasks=["widowx_carrot_on_plate"], smoke_episodes=3, videos_per_task=2, label="ours", max_steps=2)  # protocol: 60
    out = run_simpler(checkpoint, tmp_path, cfg, make_env=make)
    assert out["status"] == "done" and out["episodes"] == 3 and out["grasp"] == 1.0
    assert out["success"] == 1 / 3  # success is read at the last step: the third episode lost it
    assert [len(e.actions) for e in envs] == [2, 2, 2] and all(e.closed for e in envs)  # runs to truncation; new env per episode
    assert [e.episode.obj_episode_id for e in envs] == [0, 1, 2]
    a = envs[0].actions[0]
    assert a[6] in (-1.0, 1.0) and np.all(np.abs(a[3:6]) <= np.pi)  # WidowX absolute gripper, axis-angle rotation

    df = pd.read_parquet(tmp_path / "episodes.parquet")
    assert {"task", "variant", "episode_id", "instruction", "success", "grasped", "steps", "video", "trace_file"} <= set(df.columns)
    assert df["success"].tolist() == [True, False, False] and df["steps"].tolist() == [2, 2, 2] and df["variant"].tolist() == ["", "", ""]
    assert df["video"].notna().tolist() == [True, True, False]  # the first videos_per_task episodes
    from PIL import Image

    gif = Image.open(tmp_path / df["video"][0])
    assert gif.format == "GIF" and gif.n_frames == 3  # the first observation and one per step
    trace = [json.loads(line) for line in (tmp_path / df["trace_file"][0]).read_text().splitlines()]
    assert [t["step"] for t in trace] == list(range(2)) and len(trace[0]["action"]) == 7 and "reasoning" in trace[0]

    res = pd.read_csv(tmp_path / "results.csv")
    row = res.iloc[0]
    assert (row.task, row.episodes, row.successes) == ("widowx_carrot_on_plate", 3, 1)
    assert (row.success_ci_low, row.success_ci_high) == pytest.approx(wilson(1, 3))
    table = (tmp_path / "table.md").read_text()
    assert "| SpatialVLA (fine-tuning) | 20.8% | 16.7% |" in table and "| ours | n/a | n/a | 100.0% | 33.3% |" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tasks"]["widowx_carrot_on_plate"]["episodes"] == 3

    def broken(item, episode):
        raise AssertionError("a finished item is not run again")

    again = run_simpler(checkpoint, tmp_path, cfg, make_env=broken)  # resumes from items/*.parquet
    assert again["success"] == 1 / 3
    with pytest.raises(AssertionError, match="not run again"):  # another decoding mode never reuses those results
        run_simpler(checkpoint, tmp_path, cfg.model_copy(update={"reason": True}), make_env=broken)


def test_terminate_before_final_subtask_advances_it(checkpoint):
    from tasks.simpler import _model

    class Terminating(SimplerPolicy):  # the real adapter, asking to terminate at steps 2 and 4
        def step(self, image, instruction):
            self.n = getattr(self, "n", 0) + 1
            pred, action = super().step(image, instruction)
            return pred, {**action, "terminate_episode": np.array([1.0 if self.n in (2, 4) else 0.0])}

    item = next(c for c in suite_configs("google_vm") if c.task == "google_vm_move_near")
    env = ContractEnv(item, item.episodes[0], instructions=["open top drawer", "place apple into top drawer"])
    policy = Terminating(*_model(str(checkpoint)), "google_robot")
    record, frames, trace = run_episode(env, policy, item.episodes[0])
    assert env.advanced_at == [1]  # advanced before the env steps, as the evaluator does
    assert record["steps"] == 4 and record["terminated_by_policy"] and len(trace) == 4 and frames == []
    assert (record["instruction"], record["final_instruction"]) == ("open top drawer", "place apple into top drawer")
    assert all(a[6] in (-1.0, 0.0, 1.0) for a in env.actions)  # Google robot relative gripper


def test_rates_intervals_and_paper_tables():
    lo, hi = wilson(12, 24)
    assert (round(lo, 3), round(hi, 3)) == (0.314, 0.686) and wilson(0, 24)[0] == 0.0 and wilson(24, 24)[1] == 1.0
    assert all(math.isnan(v) for v in wilson(0, 0))
    rows = []  # two configs of one task: the task's rate is their mean
    for config, succ in (("a", [1, 1, 0, 0]), ("b", [1, 1, 1, 1])):
        rows += [{"suite": "google_vm", "task": "google_vm_move_near", "config": config, "success": bool(s), "grasped": False} for s in succ]
    for o, rate in (("horizontal", 1.0), ("vertical", 0.0), ("standing", 0.5)):
        rows += [{"suite": "google_vm", "task": f"google_vm_pick_coke_can_{o}", "config": o, "success": s < rate * 2, "grasped": False} for s in range(2)]
    for verb, succ in (("open", [1, 0]), ("close", [1, 1])):
        rows += [{"suite": "google_vm", "task": f"google_vm_{verb}_drawer", "config": verb, "success": bool(s), "grasped": False} for s in succ]
    res = task_results(pd.DataFrame(rows))
    assert res.set_index("task").loc["google_vm_move_near", "success_rate"] == 0.75
    t2 = table2(res, "ours").loc["ours"]
    assert t2["Visual Matching Pick Coke Can"] == 0.5 and t2["Visual Matching Open/Close Drawer"] == 0.75
    assert t2["Visual Matching Average"] == pytest.approx((0.5 + 0.75 + 0.75) / 3) and math.isnan(t2["Variant Aggregation Average"])
    assert table2(res, "ours").loc["HPT", "Variant Aggregation Move Near"] is None  # not reported in the paper
    t1 = table1(res, "ours")
    assert t1.loc["ReFineVLA (paper)", "Average"] == pytest.approx(0.477) and math.isnan(t1.loc["ours", "Average"])
    quota = video_quota(expand("full", suites=["google_vm"]), 2)
    assert sum(quota.values()) == 2 * 6  # two videos per task, from its first configs


def test_install_check_reports_a_segfault_and_missing_files(tmp_path, monkeypatch):
    msg = run_probe("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "creating a SimplerEnv environment")
    assert "segmentation fault" in msg and "Vulkan" in msg
    msg = run_probe("import simpler_env_missing_here", "importing simpler_env")
    assert "cannot import SimplerEnv" in msg and "git clone" in msg
    assert run_probe("print('ok')", "nothing") is None
    from tasks.retry import PERMANENT
    from tasks.simpler import SimulatorCrash, run_child

    with pytest.raises(SimulatorCrash, match="crashed with signal 11") as crash:  # an isolated config's child dies: retried
        run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], "SimplerEnv config x")
    assert not isinstance(crash.value, PERMANENT)

    configs = expand("smoke")
    monkeypatch.delenv("MS2_REAL2SIM_ASSET_DIR", raising=False)
    assert "MS2_REAL2SIM_ASSET_DIR is not set" in check_assets(None, configs)[0]
    assert "does not exist" in check_assets(tmp_path / "nowhere", configs)[0]
    for f in required_assets(configs):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"x")
    assert check_assets(tmp_path, configs) == []
    (tmp_path / "hab2_bench_assets/stages/bridge_table_1_v2.glb").unlink()  # e.g. a copy without its large blobs
    problems = check_assets(tmp_path, configs)
    assert len(problems) == 1 and "hab2_bench_assets/stages/bridge_table_1_v2.glb" in problems[0] and "bridge_table_1_v1" not in problems[0]
    if not simpler_available():
        assert "cannot import SimplerEnv" in check_install(tmp_path, configs)[0]
        assert main(["check", "--asset-dir", str(tmp_path), "--mode", "smoke"]) == 1


@pytest.mark.skipif(not simpler_available(), reason="simpler_env is not installed (README, section 'SimplerEnv')")
def test_one_real_episode(tmp_path, checkpoint):
    """Integration: one short real WidowX episode through SimplerEnv's env builder (GPU worker with SimplerEnv)."""
    problems = check_install(None, expand("smoke", tasks=["widowx_carrot_on_plate"]), probe_env=False)
    if problems:
        pytest.skip("SimplerEnv cannot run here: " + "; ".join(problems))
    from tasks.simpler import ItemOptions, run_item

    item = expand("smoke", smoke_episodes=1, tasks=["widowx_carrot_on_plate"])[0]
    out = run_item(checkpoint, replace(item, max_episode_steps=5), tmp_path, ItemOptions(videos=1))
    df = pd.read_parquet(next((tmp_path / "items").rglob("*.parquet")))
    assert out["episodes"] == 1 and df["steps"][0] == 5 and df["instruction"][0] == "put carrot on plate"


def test_adapter_conventions():
    np.testing.assert_allclose(euler_to_axangle(0.3, 0, 0), [0.3, 0, 0], atol=1e-9)
    np.testing.assert_allclose(euler_to_axangle(0, 0, -0.2), [0, 0, -0.2], atol=1e-9)
    from scipy.spatial.transform import Rotation

    for rpy in ([0.2, 0.1, 0.3], [-0.5, 0.4, -1.2], [0.01, -0.02, 0.03]):
        np.testing.assert_allclose(euler_to_axangle(*rpy), Rotation.from_euler("xyz", rpy).as_rotvec(), atol=1e-9)
    ens = ActionEnsembler(horizon=4, temp=-0.8)
    ens(np.zeros((4, 7)))
    second = ens(np.ones((4, 7)))
    assert 0.5 < second[0] < 1  # newer prediction weighs more


def test_google_robot_sticky_gripper():
    proc = type("P", (), {"action_chunk_size": 4})()
    policy = SimplerPolicy(model=None, processor=proc, robot="google_robot", sticky_repeat=3)
    seq = [policy._gripper(g) for g in (1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)]
    assert seq == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, -1.0]  # close (+1) repeated 3 steps, then open (-1)
