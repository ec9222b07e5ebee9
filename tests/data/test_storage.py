"""Shared storage: a worker's local mirror of a storage URI (file:// here; s3/gs work the same through fsspec)."""

import os

import pytest

from data.storage import MANIFEST, Workspace


@pytest.fixture
def two_workers(tmp_path, monkeypatch):
    """Two workers with their own local mirrors of one shared folder."""
    uri = (tmp_path / "bucket").as_uri()

    def worker(name):
        monkeypatch.setenv("REFINEVLA_CACHE_DIR", str(tmp_path / name))
        return Workspace(uri)

    return worker("a"), worker("b"), tmp_path / "bucket"


def test_outputs_reach_another_worker_only_through_storage(two_workers):
    a, b, bucket = two_workers
    assert a.root != b.root
    (a.root / "reasoning/bridge/train").mkdir(parents=True)
    (a.root / "reasoning/bridge/train/part-0.parquet").write_bytes(b"x" * 100)
    (a.root / "reasoning/bridge/stats.json").write_text("{}")
    assert a.push(a.root / "reasoning/bridge") == 2
    assert (bucket / "reasoning/bridge/train/part-0.parquet").read_bytes() == b"x" * 100
    assert not (bucket / MANIFEST).exists()

    assert b.pull("reasoning/bridge") == 2
    assert (b.root / "reasoning/bridge/train/part-0.parquet").read_bytes() == b"x" * 100
    assert b.pull("reasoning/bridge") == 0, "unchanged files are not fetched again"
    assert a.push("reasoning/bridge") == 0, "unchanged files are not sent again"


def test_changes_travel_incrementally(two_workers):
    a, b, _ = two_workers
    (a.root / "traces").mkdir()
    for i in range(3):
        (a.root / f"traces/{i}.json").write_text(f"[{i}]")
    a.push("traces")
    b.pull("traces")
    (a.root / "traces/1.json").write_text("[7]")  # same size, new content
    os.utime(a.root / "traces/1.json", ns=(1, 1))  # a different mtime is what marks it changed
    assert a.push("traces") == 1
    assert b.pull("traces") == 1
    assert (b.root / "traces/1.json").read_text() == "[7]"


def test_paths_are_portable_between_workers(two_workers):
    a, b, _ = two_workers
    summary = {"checkpoint": str(a.root / "checkpoints/run/step-4"), "steps": 4, "curves": [str(a.root / "c.png"), "/elsewhere/x"]}
    portable = a.portable(summary)
    assert portable == {"checkpoint": "checkpoints/run/step-4", "steps": 4, "curves": ["c.png", "/elsewhere/x"]}
    assert b.localize(portable, ("checkpoint",))["checkpoint"] == str(b.root / "checkpoints/run/step-4")


def test_a_local_workdir_is_used_in_place(tmp_path):
    ws = Workspace(tmp_path / "work")
    assert ws.root == (tmp_path / "work").resolve() and not ws.remote
    assert ws.local("relative/path").as_posix() == "relative/path", "local paths keep their meaning (cwd-relative)"
    assert ws.pull("anything") == 0 and ws.push(ws.root) == 0


def test_missing_remote_paths_pull_nothing_and_outside_paths_are_not_shared(two_workers, tmp_path):
    a, _, _ = two_workers
    assert a.pull("checkpoints/never-trained") == 0
    outside = tmp_path / "user-data"
    outside.mkdir()
    (outside / "f").write_text("x")
    assert a.push(outside) == 0


def test_long_stages_share_their_outputs_while_running_and_never_half_written_files(two_workers):
    import time

    a, b, bucket = two_workers
    out = a.root / "checkpoints/run"
    with a.pushing(out, every_s=0.05):
        (out / "step-2").mkdir(parents=True)
        (out / "step-2/model.safetensors").write_bytes(b"w" * 10)
        (out / ".step-4.tmp").mkdir()
        (out / ".step-4.tmp/model.safetensors").write_bytes(b"half")
        time.sleep(0.5)
        assert (bucket / "checkpoints/run/step-2/model.safetensors").exists(), "pushed before the stage ended"
    assert not (bucket / "checkpoints/run/.step-4.tmp").exists()
    assert b.pull("checkpoints/run") == 1


def test_a_failed_stage_still_shares_what_it_finished_and_pulls_can_leave_out_optimizer_state(two_workers):
    a, b, bucket = two_workers
    step = a.root / "checkpoints/run/step-2"
    with pytest.raises(RuntimeError, match="OOM"), a.pushing(step.parent, every_s=3600):
        step.mkdir(parents=True)
        (step / "model.safetensors").write_bytes(b"w")
        (step / "trainer_state.pt").write_bytes(b"o" * 100)
        raise RuntimeError("CUDA OOM at step 3")
    assert (bucket / "checkpoints/run/step-2/model.safetensors").exists(), "step 2 survives the failure of step 3"
    assert b.pull("checkpoints/run", skip=("trainer_state.pt",)) == 1
    assert not (b.root / "checkpoints/run/step-2/trainer_state.pt").exists()
