"""The SimplerEnv stage: skipped with instructions when absent; its loop checked against an environment
that honours SimplerEnv's contract (observation layout, info keys, step limit, success read at the end)."""

import numpy as np
import pytest

from models.simpler_policy import ActionEnsembler, SimplerPolicy, euler_to_axangle
from tasks.simpler import SimplerConfig, run_simpler, simpler_available


class ContractEnv:
    """Like `simpler_env.make("widowx_carrot_on_plate")`: 480x640 3rd-view images, 60 steps, success at the end."""

    max_episode_steps = 6

    def __init__(self, succeed_at: int | None, lose_at: int | None = None):
        self.succeed_at, self.lose_at, self.actions = succeed_at, lose_at, []
        self.unwrapped = type("U", (), {"robot_uid": "widowx"})()

    def _obs(self):
        return {"image": {"3rd_view_camera": {"rgb": np.full((480, 640, 3), 90, np.uint8)}, "base_camera": {"rgb": np.zeros((128, 128, 3), np.uint8)}}}

    def reset(self, options=None):
        self.t, self.episode_id = 0, options["obj_init_options"]["episode_id"]
        return self._obs(), {}

    def get_language_instruction(self):
        return "put carrot on plate"

    def is_final_subtask(self):
        return True

    def step(self, action):
        assert action.shape == (7,)
        self.actions.append(action)
        self.t += 1
        done = self.succeed_at is not None and self.t >= self.succeed_at and not (self.lose_at and self.t >= self.lose_at)
        info = {"success": done, "is_src_obj_grasped": self.t >= 2, "episode_stats": {"is_src_obj_grasped": True}}
        return self._obs(), 0.0, done, self.t >= self.max_episode_steps, info

    def close(self):
        pass


@pytest.mark.skipif(simpler_available(), reason="SimplerEnv is installed here")
def test_skipped_with_install_instructions(tmp_path, checkpoint):
    out = run_simpler(checkpoint, tmp_path, SimplerConfig())
    assert out["status"] == "skipped" and "git clone https://github.com/simpler-env/SimplerEnv" in out["reason"]


def test_episode_loop_follows_the_protocol(tmp_path, checkpoint):
    envs = []

    plans = [(3, None), (None, None), (2, 4)]  # succeeds; never; succeeds then drops the carrot

    def make(name):
        envs.append(ContractEnv(*plans[len(envs)]))
        return envs[-1]

    out = run_simpler(checkpoint, tmp_path, SimplerConfig(tasks=["widowx_carrot_on_plate"], episodes_per_task=3), make_env=make)
    assert out["status"] == "done" and out["grasp"] == 1.0
    assert out["success"] == 1 / 3  # success is read at the last step: the third episode lost it
    assert [len(e.actions) for e in envs] == [6, 6, 6]  # runs to truncation, success does not stop it
    a = envs[0].actions[0]
    assert a[6] in (-1.0, 1.0) and np.all(np.abs(a[3:6]) <= np.pi)  # WidowX absolute gripper, axis-angle rotation
    assert (tmp_path / "episodes.parquet").exists() and (tmp_path / "results.csv").exists()


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
