"""SimplerEnv's evaluation protocol as data: the task suites of the paper's Tables 1 and 2.

Every number here mirrors SimplerEnv's own scripts (simpler-env/SimplerEnv @ 4ab7178e, `scripts/*.sh`, which
call `simpler_env/main_inference.py` → `maniskill2_evaluator`), cited per suite below; facts and numbers only,
no code of theirs. One `EvalConfig` is one environment build (what one script invocation evaluates); its
`episodes` are the resets that invocation runs, in the evaluator's order (robot x, robot y, robot rotation,
then object x, object y or episode id). Aggregation (`tasks/simpler.py`, as SimplerEnv's
`tools/calc_metrics_evaluation_videos.py`): success per config, then the mean over the configs of a task
(visual matching: over the 4 robot-colour URDFs; variant aggregation: over the variants).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

WIDOWX_CONTROL = "arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos"
GOOGLE_CONTROL = "arm_pd_ee_delta_pose_align_interpolate_by_planner_gripper_pd_joint_target_delta_pos_interpolate_by_planner"
# Google robot visual matching repeats every configuration for these robot-colour URDFs (the scripts pass the
# string "None" for the default one, and so do we).
URDF_VERSIONS = ("None", "recolor_tabletop_visual_matching_1", "recolor_tabletop_visual_matching_2", "recolor_cabinet_visual_matching_1")
COKE_CAN_ORIENTATIONS = {"horizontal": "lr_switch", "vertical": "laid_vertically", "standing": "upright"}
DRAWERS = ("top", "middle", "bottom")
SUITES = ("widowx", "google_vm", "google_va")


@dataclass(frozen=True)
class Episode:
    """One reset: robot base pose and the object placement (an `episode_id` or an (x, y) position)."""

    robot_xy: tuple[float, float]
    robot_quat: tuple[float, float, float, float]  # wxyz, as sapien.Pose.q
    obj_episode_id: int | None = None
    obj_xy: tuple[float, float] | None = None
    rgb_overlay: str | None = None  # overrides EvalConfig.rgb_overlay (drawer poses each have their own image)
    pose_name: str = ""

    def reset_options(self) -> dict:
        obj = {"episode_id": self.obj_episode_id} if self.obj_episode_id is not None else {"init_xy": np.array(self.obj_xy)}
        return {"robot_init_options": {"init_xy": np.array(self.robot_xy), "init_rot_quat": np.array(self.robot_quat)},
                "obj_init_options": obj}


@dataclass(frozen=True)
class EvalConfig:
    """One environment build of SimplerEnv's protocol and the episodes it runs."""

    suite: str  # widowx | google_vm | google_va
    task: str  # the row/column of the paper's table this counts towards, unique across suites
    variant: str  # "" when none; otherwise which URDF / background / lighting / ... this config is
    robot: str  # SimplerEnv robot name (widowx, widowx_sink_camera_setup, google_robot_static)
    env_name: str  # ManiSkill2_real2sim gym id
    scene_name: str
    control_freq: int
    sim_freq: int
    max_episode_steps: int
    episodes: tuple[Episode, ...]
    rgb_overlay: str | None = None  # relative to MS2_REAL2SIM_ASSET_DIR; None: no greenscreen (variant aggregation)
    ray_tracing: bool = False  # the evaluator's --enable-raytracing: shader_dir="rt" first in the build kwargs
    env_kwargs: tuple[tuple[str, object], ...] = ()  # --additional-env-build-kwargs, in the scripts' order
    script: str = ""  # the SimplerEnv script this mirrors
    stage_files: tuple[str, ...] = field(default=())  # stage meshes the scene loads (relative to the asset dir; none for dummy_*)

    @property
    def robot_kind(self) -> str:
        return "google_robot" if self.robot.startswith("google_robot") else "widowx"

    @property
    def control_mode(self) -> str:
        return GOOGLE_CONTROL if self.robot_kind == "google_robot" else WIDOWX_CONTROL

    def build_kwargs(self) -> dict:
        """The extra gym.make kwargs in the evaluator's order (ray tracing's shader_dir first)."""
        extra = {"shader_dir": "rt"} if self.ray_tracing else {}
        extra.update(dict(self.env_kwargs))
        return extra

    @property
    def key(self) -> str:
        """A stable, file-name-safe id of this config (task, variant and a hash of every setting)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        name = f"{self.task}__{self.variant}" if self.variant else self.task
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
        return f"{safe}__{hashlib.sha256(blob).hexdigest()[:10]}"


def config_from_dict(d: dict) -> EvalConfig:
    """Inverse of dataclasses.asdict(config) (after a JSON round trip: lists back to tuples)."""
    eps = tuple(Episode(robot_xy=tuple(e["robot_xy"]), robot_quat=tuple(e["robot_quat"]), obj_episode_id=e["obj_episode_id"],
                        obj_xy=tuple(e["obj_xy"]) if e["obj_xy"] is not None else None, rgb_overlay=e["rgb_overlay"],
                        pose_name=e["pose_name"]) for e in d["episodes"])
    return EvalConfig(**{**d, "episodes": eps, "env_kwargs": tuple(tuple(kv) for kv in d["env_kwargs"]),
                         "stage_files": tuple(d["stage_files"])})


def _quat_mul(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return (w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2)


def robot_quat(yaw: float) -> tuple[float, float, float, float]:
    """The scripts' `--robot-init-rot-quat-center 0 0 0 1 --robot-init-rot-rpy-range 0 0 1 0 0 1 yaw yaw 1`:
    Pose(q=euler2quat(0, 0, yaw)) * Pose(q=(0, 0, 0, 1)), in sapien's wxyz."""
    q = _quat_mul((math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)), (0.0, 0.0, 0.0, 1.0))
    return tuple(round(v, 12) + 0.0 for v in q)


def _linspace(lo: float, hi: float, n: int) -> list[float]:
    return [float(v) for v in np.linspace(lo, hi, n)]


STAGES = "hab2_bench_assets/stages"


# --- WidowX (Bridge), visual matching: scripts/octo_bridge.sh (also rt1x_bridge.sh) ---------------------------
def _widowx() -> list[EvalConfig]:
    out = []
    tasks = [  # (task, env, scene, robot, overlay, robot x, y, max steps)
        ("widowx_spoon_on_towel", "PutSpoonOnTableClothInScene-v0", "bridge_table_1_v1", "widowx", "bridge_real_eval_1.png", 0.147, 0.028, 60),
        ("widowx_carrot_on_plate", "PutCarrotOnPlateInScene-v0", "bridge_table_1_v1", "widowx", "bridge_real_eval_1.png", 0.147, 0.028, 60),
        ("widowx_stack_cube", "StackGreenCubeOnYellowCubeBakedTexInScene-v0", "bridge_table_1_v1", "widowx", "bridge_real_eval_1.png", 0.147, 0.028, 60),
        ("widowx_put_eggplant_in_basket", "PutEggplantInBasketScene-v0", "bridge_table_1_v2", "widowx_sink_camera_setup", "bridge_sink.png", 0.127, 0.06, 120),
    ]
    for task, env, scene, robot, overlay, x, y, steps in tasks:
        eps = tuple(Episode((x, y), robot_quat(0.0), obj_episode_id=i) for i in range(24))  # --obj-episode-range 0 24
        out.append(EvalConfig("widowx", task, "", robot, env, scene, 5, 500, steps, eps, f"real_inpainting/{overlay}",
                              script="scripts/octo_bridge.sh", stage_files=(f"{STAGES}/{scene}.glb",)))
    return out


def _coke_can_episodes() -> tuple[Episode, ...]:
    # --robot-init-x 0.35 0.35 1 --robot-init-y 0.20 0.20 1 --obj-init-x -0.35 -0.12 5 --obj-init-y -0.02 0.42 5
    return tuple(Episode((0.35, 0.20), robot_quat(0.0), obj_xy=(ox, oy))
                 for ox in _linspace(-0.35, -0.12, 5) for oy in _linspace(-0.02, 0.42, 5))


def _move_near_episodes() -> tuple[Episode, ...]:
    # --robot-init-x 0.35 0.35 1 --robot-init-y 0.21 0.21 1 --obj-episode-range 0 60, yaw -0.09
    return tuple(Episode((0.35, 0.21), robot_quat(-0.09), obj_episode_id=i) for i in range(60))


# drawer visual matching poses (scripts/rt1_drawer_visual_matching.sh): name → (x, y, yaw); overlay open_drawer_<name>.png
DRAWER_POSES = {
    "a0": (0.644, -0.179, -0.03), "a1": (0.765, -0.182, -0.02), "a2": (0.889, -0.203, -0.06),
    "b0": (0.652, 0.009, 0.0), "b1": (0.752, 0.009, 0.0), "b2": (0.851, 0.035, 0.0),
    "c0": (0.665, 0.224, 0.0), "c1": (0.765, 0.222, -0.025), "c2": (0.865, 0.222, -0.025),
}


def _drawer_envs():
    for verb in ("open", "close"):
        for d in DRAWERS:
            yield f"{{suite}}_{verb}_drawer", d, f"{verb.title()}{d.title()}DrawerCustomInScene-v0"


def _google(suite: str) -> list[EvalConfig]:
    vm = suite == "google_vm"
    g = dict(robot="google_robot_static", control_freq=3, sim_freq=513)
    out = []
    coke_stage = (f"{STAGES}/google_pick_coke_can_1_v4.glb",)
    # Pick coke can: scripts/rt1_pick_coke_can_visual_matching.sh / rt1_pick_coke_can_variant_agg.sh
    for orient, flag in COKE_CAN_ORIENTATIONS.items():
        task = f"{suite}_pick_coke_can_{orient}"
        base = dict(suite=suite, task=task, env_name="GraspSingleOpenedCokeCanInScene-v0", scene_name="google_pick_coke_can_1_v4",
                    max_episode_steps=80, episodes=_coke_can_episodes(), stage_files=coke_stage, **g)
        if vm:
            script = "scripts/rt1_pick_coke_can_visual_matching.sh"
            for urdf in URDF_VERSIONS:
                out.append(EvalConfig(variant=f"urdf={urdf}", rgb_overlay="real_inpainting/google_coke_can_real_eval_1.png",
                                      env_kwargs=((flag, True), ("urdf_version", urdf)), script=script, **base))
            continue
        script = "scripts/rt1_pick_coke_can_variant_agg.sh"  # camera-pose variants are not counted (SimplerEnv's metrics)
        variants = [
            ("base", {}, ()),
            ("table=cabinet1", {"scene_name": "Baked_sc1_staging_objaverse_cabinet1_h870"}, ()),
            ("table=cabinet2", {"scene_name": "Baked_sc1_staging_objaverse_cabinet2_h870"}, ()),
            ("distractors", {"env_name": "GraspSingleOpenedCokeCanDistractorInScene-v0"}, ()),
            ("distractors=more", {"env_name": "GraspSingleOpenedCokeCanDistractorInScene-v0"}, (("distractor_config", "more"),)),
            ("background=alt", {"scene_name": "google_pick_coke_can_1_v4_alt_background"}, ()),
            ("background=alt2", {"scene_name": "google_pick_coke_can_1_v4_alt_background_2"}, ()),
            ("lighting=darker", {}, (("slightly_darker_lighting", True),)),
            ("lighting=brighter", {}, (("slightly_brighter_lighting", True),)),
        ]
        for name, over, extra in variants:
            cfg = {**base, **over}
            stages = (f"{STAGES}/{cfg['scene_name']}.glb",)
            out.append(EvalConfig(variant=name, env_kwargs=((flag, True),) + extra, script=script, **{**cfg, "stage_files": stages}))
    # Move near: scripts/rt1_move_near_visual_matching.sh / rt1_move_near_variant_agg.sh
    task = f"{suite}_move_near"
    if vm:
        for urdf in URDF_VERSIONS:
            out.append(EvalConfig(suite=suite, task=task, variant=f"urdf={urdf}", env_name="MoveNearGoogleBakedTexInScene-v0",
                                  scene_name="google_pick_coke_can_1_v4", max_episode_steps=80, episodes=_move_near_episodes(),
                                  rgb_overlay="real_inpainting/google_move_near_real_eval_1.png", env_kwargs=(("urdf_version", urdf),),
                                  script="scripts/rt1_move_near_visual_matching.sh", stage_files=coke_stage, **g))
    else:
        variants = [
            ("base", "google_pick_coke_can_1_v4", ()),
            ("distractors=none", "google_pick_coke_can_1_v4", (("no_distractor", True),)),
            ("background=alt", "google_pick_coke_can_1_v4_alt_background", ()),
            ("background=alt2", "google_pick_coke_can_1_v4_alt_background_2", ()),
            ("lighting=darker", "google_pick_coke_can_1_v4", (("slightly_darker_lighting", True),)),
            ("lighting=brighter", "google_pick_coke_can_1_v4", (("slightly_brighter_lighting", True),)),
            ("table=cabinet1", "Baked_sc1_staging_objaverse_cabinet1_h870", ()),
            ("table=cabinet2", "Baked_sc1_staging_objaverse_cabinet2_h870", ()),
        ]
        for name, scene, extra in variants:
            out.append(EvalConfig(suite=suite, task=task, variant=name, env_name="MoveNearGoogleInScene-v0", scene_name=scene,
                                  max_episode_steps=80, episodes=_move_near_episodes(), env_kwargs=extra,
                                  script="scripts/rt1_move_near_variant_agg.sh", stage_files=(f"{STAGES}/{scene}.glb",), **g))
    # Open / close drawer: scripts/rt1_drawer_visual_matching.sh / rt1_drawer_variant_agg.sh (ray-traced)
    for task_tpl, drawer, env in _drawer_envs():
        task = task_tpl.format(suite=suite)
        if vm:
            eps = tuple(Episode((x, y), robot_quat(yaw), obj_xy=(0.0, 0.0), rgb_overlay=f"real_inpainting/open_drawer_{p}.png", pose_name=p)
                        for p, (x, y, yaw) in DRAWER_POSES.items())
            for urdf in URDF_VERSIONS:
                out.append(EvalConfig(suite=suite, task=task, variant=f"drawer={drawer},urdf={urdf}", env_name=env, scene_name="dummy_drawer",
                                      max_episode_steps=113, episodes=eps, ray_tracing=True,
                                      env_kwargs=(("station_name", "mk_station_recolor"), ("light_mode", "simple"),
                                                  ("disable_bad_material", True), ("urdf_version", urdf)),
                                      script="scripts/rt1_drawer_visual_matching.sh", **g))
            continue
        # --robot-init-x 0.65 0.85 3 --robot-init-y -0.2 0.2 3, yaw 0, --obj-init-x-range 0 0 1 --obj-init-y-range 0 0 1
        eps = tuple(Episode((x, y), robot_quat(0.0), obj_xy=(0.0, 0.0)) for x in _linspace(0.65, 0.85, 3) for y in _linspace(-0.2, 0.2, 3))
        variants = [
            ("base", "frl_apartment_stage_simple", True, ()),
            ("background=bedroom", "modern_bedroom_no_roof", False, (("shader_dir", "rt"),)),
            ("background=office", "modern_office_no_roof", False, (("shader_dir", "rt"),)),
            ("lighting=brighter", "frl_apartment_stage_simple", False, (("shader_dir", "rt"), ("light_mode", "brighter"))),
            ("lighting=darker", "frl_apartment_stage_simple", False, (("shader_dir", "rt"), ("light_mode", "darker"))),
            ("cabinet=mk_station2", "frl_apartment_stage_simple", False, (("shader_dir", "rt"), ("station_name", "mk_station2"))),
            ("cabinet=mk_station3", "frl_apartment_stage_simple", False, (("shader_dir", "rt"), ("station_name", "mk_station3"))),
        ]
        for name, scene, rt, extra in variants:
            out.append(EvalConfig(suite=suite, task=task, variant=f"drawer={drawer},{name}", env_name=env, scene_name=scene,
                                  max_episode_steps=113, episodes=eps, ray_tracing=rt, env_kwargs=extra,
                                  script="scripts/rt1_drawer_variant_agg.sh", stage_files=(f"{STAGES}/{scene}.glb",), **g))
    return out


def suite_configs(suite: str) -> list[EvalConfig]:
    if suite == "widowx":
        return _widowx()
    if suite in ("google_vm", "google_va"):
        return _google(suite)
    raise ValueError(f"unknown SimplerEnv suite '{suite}' (one of {', '.join(SUITES)})")


def expand(mode: str = "smoke", suites: tuple[str, ...] | list[str] = SUITES, smoke_episodes: int = 3,
           tasks: tuple[str, ...] | list[str] = ()) -> list[EvalConfig]:
    """The (task, config) items to run. `full`: every suite in `suites` as SimplerEnv's scripts define it.
    `smoke`: the first `smoke_episodes` episodes of each WidowX task (quick checks). `tasks` keeps only those."""
    if mode not in ("smoke", "full"):
        raise ValueError(f"SimplerEnv mode must be 'smoke' or 'full', not '{mode}'")
    if mode == "smoke":
        items = [replace(c, episodes=c.episodes[:smoke_episodes]) for c in _widowx()]
    else:
        items = [c for s in suites for c in suite_configs(s)]
    if tasks:
        unknown = set(tasks) - {c.task for c in items}
        if unknown:
            raise ValueError(f"unknown SimplerEnv task(s) {sorted(unknown)} in mode '{mode}'")
        items = [c for c in items if c.task in tasks]
    return items


def required_assets(configs: list[EvalConfig]) -> list[str]:
    """Files the configs open that a broken install lacks (stage meshes, greenscreen overlays), sorted."""
    need = set()
    for c in configs:
        need.update(c.stage_files)
        if c.rgb_overlay:
            need.add(c.rgb_overlay)
        need.update(e.rgb_overlay for e in c.episodes if e.rgb_overlay)
    return sorted(need)
