"""The annotate stage with the real google-genai client against a local Gemini-speaking server:
kill-and-resume, the Batch API, and the API key kept out of logs and MLflow."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from data.traces import Trace
from models.teachers import TeacherConfig
from tasks.annotate import AnnotateConfig, run_annotate
from tests.fake_gemini import FakeGemini

KEY = "sk-never-log-me-91c4"
ROOT = Path(__file__).resolve().parents[2]


def _answer(request) -> str:
    instruction = request["texts"][-1].split("Instruction: ", 1)[1].split(" Now think", 1)[0]
    return Trace(f"the scene for '{instruction}'", "the task is clear", "the object is left of the target", "do it",
                 ["Move to the object", "Grasp it"], "Move the arm left.").to_text()


def _cfg(server, **kw) -> AnnotateConfig:
    teacher = TeacherConfig(kind="gemini", model="gemini-test", base_url=server.url, timeout_s=10, backoff_s=0.05, max_backoff_s=0.2,
                            requests_per_minute=None)
    return AnnotateConfig(teacher=teacher, **kw)


def _records(traces: Path) -> list[dict]:
    return [r for f in sorted(traces.rglob("*.json")) if "_batches" not in f.parts for r in json.loads(f.read_text()) if r]


def _num_steps(workdir, dataset="bridge_dataset") -> int:
    return pads.dataset(str(workdir / "steps" / dataset)).count_rows()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)


def test_sigkilled_run_resumes_asking_only_what_was_in_flight(tmp_path, workdir, key):
    steps, n = workdir / "steps" / "bridge_dataset", _num_steps(workdir)
    with FakeGemini(default=_answer, latency_s=0.15) as server:
        cfg = _cfg(server, max_workers=3)
        script = f"from tasks.annotate import run_annotate, AnnotateConfig\nrun_annotate({str(steps)!r}, {str(tmp_path)!r}, AnnotateConfig.model_validate_json({cfg.model_dump_json()!r}))"
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(server.requests) < n // 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.3)  # let the server finish the requests it was answering
        first = len(server.requests)
        on_disk = len(_records(tmp_path))
        assert 0 < on_disk < n and first - on_disk <= 3  # at most max_workers answers were in flight
        summary = run_annotate(steps, tmp_path, cfg)
    assert summary["requested"] == n - on_disk == len(server.requests) - first  # only what was not on disk
    assert summary["reused"] == on_disk and summary["failed"] == 0
    records = _records(tmp_path)
    assert len(records) == n and all(r["status"] == "ok" for r in records)
    assert server.duplicates() <= 3


@pytest.mark.parametrize("output", ["inline", "file"])
def test_batch_api_submits_polls_collects_and_reasks_malformed(tmp_path, workdir, key, output):
    steps, n = workdir / "steps" / "bridge_dataset", _num_steps(workdir)
    with FakeGemini(script=["not a trace"], default=_answer, batch_pending_polls=2, batch_output=output) as server:
        summary = run_annotate(steps, tmp_path, _cfg(server, batch=True, batch_poll_s=0.05, batch_max_mb=0.5))
    records = _records(tmp_path)
    assert len(records) == n and all(r["status"] == "ok" for r in records)
    assert summary["requested"] == n and summary["answers"] == n + 1  # one malformed answer, asked again
    assert [r["attempts"] for r in records].count(2) == 1
    assert len(server.jobs) >= 3  # several jobs under the size cap, plus the re-ask round
    assert not (tmp_path / "bridge_dataset" / "gemini-test@a1-v1" / "_batches").exists() or not any(
        (tmp_path / "bridge_dataset" / "gemini-test@a1-v1" / "_batches").iterdir())
    assert summary["cost_usd"] is None  # an unknown model has no price (set price_*_per_m)


def test_batch_jobs_pending_at_a_kill_are_collected_not_resubmitted(tmp_path, workdir, key, monkeypatch):
    from models.teachers.gemini import GeminiTeacher

    steps, n = workdir / "steps" / "bridge_dataset", _num_steps(workdir)
    with FakeGemini(default=_answer, batch_pending_polls=1) as server:
        cfg = _cfg(server, batch=True, batch_poll_s=0.05)

        def killed(self, name):
            raise KeyboardInterrupt("killed while polling")

        with monkeypatch.context() as m:
            m.setattr(GeminiTeacher, "batch_results", killed)
            with pytest.raises(KeyboardInterrupt):
                run_annotate(steps, tmp_path, cfg)
        assert len(server.jobs) == 1 and _records(tmp_path) == []
        summary = run_annotate(steps, tmp_path, cfg)
    assert len(server.jobs) == 1  # the pending job was collected, nothing submitted twice
    assert summary["requested"] == n and server.duplicates() == 0
    assert all(r["status"] == "ok" for r in _records(tmp_path))


def test_the_api_key_never_reaches_logs_traces_or_mlflow(tmp_path, workdir, key, caplog):
    from tasks.tracking import TrackingConfig, stage_run, start_run

    caplog.set_level("DEBUG")
    run = start_run(TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db"), tmp_path, "key-check")
    with FakeGemini(script=[429, "garbage"], default=_answer) as server:
        cfg = _cfg(server, max_workers=2)
        with stage_run(run.ref, "annotate", cfg) as tracker:
            run_annotate(workdir / "steps" / "bridge_dataset", tmp_path / "traces", cfg, tracker)
    assert server.requests[0]["headers"]["x-goog-api-key"] == KEY  # it was used
    assert KEY not in caplog.text
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
