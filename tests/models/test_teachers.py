import numpy as np
import pyarrow.dataset as pads

from data.traces import Trace, parse_tagged_text
from models.teachers import EpisodeContext
from models.teachers.offline import OfflineTeacher, parse_instruction


def _episode(workdir, dataset="bridge_dataset"):
    df = pads.dataset(str(workdir / "steps" / dataset / "train")).to_table(columns=["episode_id", "step_index", "instruction", "action"]).to_pandas()
    ep = df[df.episode_id == df.episode_id.iloc[0]].sort_values("step_index")
    return EpisodeContext(dataset, ep.episode_id.iloc[0], list(ep.instruction), np.stack(ep.action.to_numpy()))


def test_offline_teacher_fills_every_part_for_every_step(workdir):
    teacher = OfflineTeacher()
    for dataset in ("bridge_dataset", "fractal20220817_data"):
        ep = _episode(workdir, dataset)
        for t in range(ep.num_steps):
            rec = teacher.annotate_step(ep, t)
            assert rec.status == "ok"
            trace = Trace.from_dict(rec.trace)  # validates all parts non-empty
            assert parse_tagged_text(rec.raw_text) == trace


def test_offline_teacher_follows_gripper_events_and_motion(workdir):
    ep = _episode(workdir)
    teacher = OfflineTeacher()
    g = ep.actions[:, 6]
    close = int(np.flatnonzero((g[:-1] > 0.5) & (g[1:] < 0.5))[0]) + 1
    assert "grasp phase" in teacher.trace(ep, close).situation_analysis
    assert teacher.trace(ep, close).sub_action.startswith("Close the gripper")
    assert "approach phase" in teacher.trace(ep, 0).situation_analysis
    t = int(np.argmax(np.abs(ep.actions[:close, 2])))  # the approach step that moves most vertically
    assert ("down" if ep.actions[t, 2] < 0 else "up") in teacher.trace(ep, t).sub_action
    assert "done phase" in teacher.trace(ep, ep.num_steps - 1).situation_analysis  # Bridge's all-zero last action


def test_instruction_parsing():
    assert parse_instruction("put the red block on the blue plate") == ("put", "red block", "blue plate")
    assert parse_instruction("Pick up the green cube.") == ("pick", "green cube", None)
    assert parse_instruction("move the sponge near the pink bowl") == ("near", "sponge", "pink bowl")
    assert parse_instruction("open the middle drawer") == ("open", "middle drawer", None)
