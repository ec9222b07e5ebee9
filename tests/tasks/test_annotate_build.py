import json
from collections import Counter

import numpy as np
import pyarrow.dataset as pads
import pytest

from models.teachers.offline import OfflineTeacher
from tasks.annotate import AnnotateConfig, run_annotate
from tasks.build import BuildConfig, assign_splits, run_build


class CountingTeacher(OfflineTeacher):
    """The offline teacher, counting which steps it is asked about."""

    asked: Counter = Counter()

    def annotate_step(self, episode, step):
        CountingTeacher.asked[(episode.episode_id, step)] += 1
        return super().annotate_step(episode, step)


def _steps(workdir, dataset):
    return pads.dataset(str(workdir / "steps" / dataset)).to_table(columns=["episode_id", "step_index"]).to_pandas()


def test_annotate_asks_only_missing_steps(tmp_path, workdir, monkeypatch):
    monkeypatch.setattr("tasks.annotate.make_teacher", lambda cfg: CountingTeacher())
    CountingTeacher.asked.clear()
    steps_dir = workdir / "steps" / "bridge_dataset"
    first = run_annotate(steps_dir, tmp_path, AnnotateConfig(max_workers=3))
    n = len(_steps(workdir, "bridge_dataset"))
    assert first["requested"] == n == first["steps"] and max(CountingTeacher.asked.values()) == 1
    # a run killed mid-episode: the last two steps of one episode never made it to disk
    trace_file = sorted((tmp_path / "bridge_dataset" / "offline@offline-v1").glob("*.json"))[0]
    records = json.loads(trace_file.read_text())
    trace_file.write_text(json.dumps(records[:-2]))
    CountingTeacher.asked.clear()
    again = run_annotate(steps_dir, tmp_path, AnnotateConfig())
    assert again["requested"] == 2 and again["reused"] == n - 2
    assert sorted(s for _, s in CountingTeacher.asked) == [len(records) - 2, len(records) - 1]


def test_teachers_see_only_recorded_cameras(workdir):
    from tasks.annotate import _episodes

    ep = next(_episodes(workdir / "steps" / "bridge_dataset", with_images=True))
    assert [cam for cam, _, _ in ep.images[0]] == ["image_0", "image_1"]  # image_2/3 are all-zero placeholders


def test_build_keeps_every_step_splits_by_episode_and_writes_stats(workdir):
    out = workdir / "reasoning" / "bridge_dataset"
    train = pads.dataset(str(out / "train")).to_table().to_pandas()
    val = pads.dataset(str(out / "val")).to_table().to_pandas()
    steps = _steps(workdir, "bridge_dataset")
    assert len(train) + len(val) == len(steps)
    assert not set(train.episode_id) & set(val.episode_id)
    assert (train.trace_status == "ok").all() and train.reasoning_text.str.startswith("<Observation>:").all()
    assert set(train.unnorm_key) == {"bridge_orig/1.0.0"}
    stats = json.loads((out / "stats.json").read_text())["bridge_orig/1.0.0"]
    assert set(stats["action"]) == {"mean", "std", "max", "min", "q01", "q99", "mask"}
    assert stats["action"]["mask"] == [True] * 6 + [False] and stats["num_transitions"] == len(train)
    np.testing.assert_allclose(stats["action"]["mean"], np.stack(train.action).mean(0), rtol=1e-5, atol=1e-6)
    assert "| train |" in (out / "README.md").read_text()


def test_build_keeps_failed_and_missing_annotations(tmp_path, workdir):
    src = workdir / "traces" / "fractal20220817_data" / "offline@offline-v1"
    traces = tmp_path / "traces"
    traces.mkdir()
    files = sorted(src.glob("*.json"))
    records = json.loads(files[0].read_text())
    records[0] = {**records[0], "status": "failed", "trace": None, "error": "teacher said no"}
    (traces / files[0].name).write_text(json.dumps(records))
    for f in files[2:]:  # files[1] stays missing entirely
        (traces / f.name).write_text(f.read_text())
    summary = run_build(workdir / "steps" / "fractal20220817_data", traces, tmp_path / "out", BuildConfig(val_fraction=0.0))
    df = pads.dataset(str(tmp_path / "out" / "train")).to_table().to_pandas()
    assert summary["trace_failed"] == 1 and (df.trace_status == "failed").sum() == 1
    assert df.loc[df.trace_status == "failed", "trace_error"].item() == "teacher said no"
    missing = df[df.trace_status == "missing"]
    assert len(missing) == summary["trace_missing"] > 0 and missing.reasoning_text.isna().all()
    assert len(df) == len(_steps(workdir, "fractal20220817_data"))


def test_split_assignment_is_deterministic_and_never_empty():
    ids = [f"ep{i}" for i in range(10)]
    a = assign_splits(ids, 0.2, 0)
    assert a == assign_splits(list(reversed(ids)), 0.2, 0)
    assert Counter(a.values()) == {"train": 8, "val": 2}
    assert Counter(assign_splits(ids[:2], 0.1, 0).values()) == {"train": 1, "val": 1}
    assert set(assign_splits(ids, 0.0, 0).values()) == {"train"}


def test_build_refuses_without_parsed_steps(tmp_path):
    with pytest.raises(FileNotFoundError, match="no parsed steps"):
        run_build(tmp_path, tmp_path, tmp_path / "out")


def test_keyframe_mode_asks_at_keyframes_and_gives_every_step_a_trace(tmp_path, workdir, monkeypatch):
    from tasks.annotate import keyframe_steps

    monkeypatch.setattr("tasks.annotate.make_teacher", lambda cfg: CountingTeacher())
    CountingTeacher.asked.clear()
    steps_dir = workdir / "steps" / "bridge_dataset"
    summary = run_annotate(steps_dir, tmp_path, AnnotateConfig(mode="keyframe", keyframe_every=4))
    n = len(_steps(workdir, "bridge_dataset"))
    assert summary["requested"] + summary["derived"] == n == summary["steps"] and 0 < summary["calls_per_step"] < 0.6
    for f in (tmp_path / "bridge_dataset" / "offline@offline-v1").glob("*.json"):
        records = json.loads(f.read_text())
        asked = sorted(s for (ep, s) in CountingTeacher.asked if ep == f.stem)
        assert all(r["status"] == "ok" and r["trace"]["sub_action"] for r in records)
        assert asked == [r["step"] for r in records if r["derived_from"] is None]
        gaps = np.diff(asked + [len(records)])
        assert asked[0] == 0 and gaps.max() <= 4
        for r in records:
            if r["derived_from"] is not None:
                source = records[r["derived_from"]]
                assert r["derived_from"] == max(s for s in asked if s < r["step"])
                assert {k: v for k, v in r["trace"].items() if k != "sub_action"} == {k: v for k, v in source["trace"].items() if k != "sub_action"}
    built = run_build(steps_dir, summary["traces_dir"], tmp_path / "built", BuildConfig(val_fraction=0.0))
    rows = pads.dataset(str(tmp_path / "built" / "train")).to_table(columns=["trace_status", "trace_derived_from"]).to_pandas()
    assert built["trace_ok"] == n and rows.trace_derived_from.notna().sum() == summary["derived"]
    # the gripper events of a real episode are keyframes
    grip = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1], float)
    assert keyframe_steps(np.c_[np.zeros((12, 6)), grip], every=5) == [0, 3, 8, 10]
    # switching to per_step asks exactly the derived steps
    CountingTeacher.asked.clear()
    again = run_annotate(steps_dir, tmp_path, AnnotateConfig())
    assert again["requested"] == summary["derived"] and again["reused"] == summary["requested"]


def test_reannotation_asks_only_missing_failed_and_stale_steps(tmp_path, workdir, monkeypatch):
    monkeypatch.setattr("tasks.annotate.make_teacher", lambda cfg: CountingTeacher())
    steps_dir = workdir / "steps" / "bridge_dataset"
    run_annotate(steps_dir, tmp_path, AnnotateConfig())
    files = sorted((tmp_path / "bridge_dataset" / "offline@offline-v1").glob("*.json"))
    records = json.loads(files[0].read_text())
    records[1] = {**records[1], "status": "failed", "trace": None, "error": "malformed", "attempts": 3}
    records[2] = {**records[2], "episode_key": "other-data"}
    records[3] = {**records[3], "prompt_version": "older-prompt"}
    records[4] = None
    files[0].write_text(json.dumps(records))
    CountingTeacher.asked.clear()
    plain = run_annotate(steps_dir, tmp_path, AnnotateConfig())  # an ordinary run leaves spent failures alone
    assert sorted(CountingTeacher.asked) == [(files[0].stem, s) for s in (2, 3, 4)] and plain["failed"] == 1
    CountingTeacher.asked.clear()
    again = run_annotate(steps_dir, tmp_path, AnnotateConfig(retry_failed=True))
    assert sorted(CountingTeacher.asked) == [(files[0].stem, 1)] and again["failed"] == 0
