"""GeminiTeacher with the real google-genai client against a local server speaking the REST API."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from data.traces import Trace
from models.teachers import EpisodeContext, TeacherConfig, TeacherConfigError, make_teacher
from tests.fake_gemini import FakeGemini

KEY = "test-key-do-not-log-7f3a"
GOOD = Trace("a robot arm, a red block and a blue plate", "the block must go on the plate", "the block is left of the plate",
             "pick the block and place it", ["Move to the block", "Grasp it", "Place it on the plate"], "Move the arm left.").to_text()


def _jpeg(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _episode():
    images = [[("image_0", "jpeg", _jpeg(120)), ("image_1", "jpeg", _jpeg(200))]]
    return EpisodeContext("bridge_dataset", "ep0", ["put the red block on the blue plate"], np.zeros((1, 7)), images)


def _teacher(server, monkeypatch, **kw):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    return make_teacher(TeacherConfig(kind="gemini", model="gemini-test", base_url=server.url, timeout_s=10, **kw))


def test_valid_answer_becomes_a_trace_and_images_arrive_intact(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeGemini([GOOD]) as server:
        rec = _teacher(server, monkeypatch).annotate_step(_episode(), 0)
    assert rec.status == "ok" and rec.trace["logical_steps"] == ["Move to the block", "Grasp it", "Place it on the plate"]
    assert rec.usage == {"input_tokens": 300, "output_tokens": 90}
    req = server.requests[0]
    assert req["path"] == "/v1beta/models/gemini-test:generateContent"
    assert req["headers"]["x-goog-api-key"] == KEY
    sent = _episode().images[0]
    assert [(m, b) for m, b in req["images"]] == [("image/jpeg", sent[0][2]), ("image/jpeg", sent[1][2])]
    assert "Instruction: put the red block on the blue plate" in req["texts"][-1] and "#4 <Task Planning>" in req["texts"][-1]
    assert KEY not in caplog.text


def test_malformed_answer_is_asked_again_then_recorded_as_failed(monkeypatch):
    with FakeGemini(["<Observation>: only this", GOOD]) as server:
        rec = _teacher(server, monkeypatch).annotate_step(_episode(), 0)
    assert rec.status == "ok" and rec.attempts == 2
    with FakeGemini(default="I cannot help with that.") as server:
        rec = _teacher(server, monkeypatch, max_reasks=1).annotate_step(_episode(), 0)
    assert rec.status == "failed" and rec.trace is None and len(server.requests) == 2
    assert "missing <Observation>" in rec.error and rec.raw_text == "I cannot help with that."


def test_429_is_retried_by_the_client(monkeypatch):
    with FakeGemini([429, GOOD]) as server:
        rec = _teacher(server, monkeypatch).annotate_step(_episode(), 0)
    assert rec.status == "ok" and len(server.requests) == 2


def test_unknown_model_says_to_change_the_setting(monkeypatch):
    with FakeGemini([404]) as server, pytest.raises(TeacherConfigError, match="annotate.teacher.model"):
        _teacher(server, monkeypatch).annotate_step(_episode(), 0)
    assert len(server.requests) == 1  # a 404 is not retried


def test_missing_key_is_a_configuration_error(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(TeacherConfigError, match="GEMINI_API_KEY"):
        make_teacher(TeacherConfig(kind="gemini"))
