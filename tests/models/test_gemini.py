"""GeminiTeacher with the real google-genai client against a local server speaking the REST API."""

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from data.traces import Trace, parse_tagged_text
from models.teachers import TeacherConfig, TeacherConfigError, TeacherUnavailable, make_teacher
from tests.fake_gemini import FakeGemini
from tests.teacher_inputs import GOOD, one_step_episode

KEY = "test-key-do-not-log-7f3a"


def _teacher(server, monkeypatch, **kw):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    kw = {"timeout_s": 10, "backoff_s": 0.05, "max_backoff_s": 0.2} | kw
    return make_teacher(TeacherConfig(kind="gemini", model="gemini-test", base_url=server.url, **kw))


def test_valid_answer_becomes_a_trace_and_images_arrive_intact(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeGemini([GOOD]) as server:
        rec = _teacher(server, monkeypatch).annotate_step(one_step_episode(), 0)
    assert rec.status == "ok" and rec.trace["logical_steps"] == ["Move to the block", "Grasp it", "Place it on the plate"]
    assert rec.usage == {"input_tokens": 300, "output_tokens": 90}
    req = server.requests[0]
    assert req["path"] == "/v1beta/models/gemini-test:generateContent"
    assert req["headers"]["x-goog-api-key"] == KEY
    sent = one_step_episode().images[0]
    assert [(m, b) for m, b in req["images"]] == [("image/jpeg", sent[0][2]), ("image/jpeg", sent[1][2])]
    assert "Instruction: put the red block on the blue plate" in req["texts"][-1] and "#4 <Task Planning>" in req["texts"][-1]
    assert KEY not in caplog.text


def test_malformed_answer_is_asked_again_then_recorded_as_failed(monkeypatch):
    with FakeGemini(["<Observation>: only this", GOOD]) as server:
        rec = _teacher(server, monkeypatch).annotate_step(one_step_episode(), 0)
    assert rec.status == "ok" and rec.attempts == 2
    with FakeGemini(default="I cannot help with that.") as server:
        rec = _teacher(server, monkeypatch, max_reasks=1).annotate_step(one_step_episode(), 0)
    assert rec.status == "failed" and rec.trace is None and len(server.requests) == 2
    assert "missing <Observation>" in rec.error and rec.raw_text == "I cannot help with that."


@pytest.mark.parametrize("failure", [429, 503, "timeout"])
def test_transient_failures_are_retried(monkeypatch, failure):
    with FakeGemini([failure, GOOD], stall_s=3) as server:
        teacher = _teacher(server, monkeypatch, timeout_s=1)
        rec = teacher.annotate_step(one_step_episode(), 0)
    assert rec.status == "ok" and rec.attempts == 1 and len(server.requests) == 2
    assert teacher.counts["requests"] == 2 and teacher.counts["rate_limited" if failure == 429 else "retried"] == 1


def test_the_servers_retry_delay_is_honoured(monkeypatch):
    with FakeGemini([{"status": 429, "retry_delay": "1.5s"}, GOOD]) as server:
        rec = _teacher(server, monkeypatch, backoff_s=0.01, max_backoff_s=2.0).annotate_step(one_step_episode(), 0)
    assert rec.status == "ok"
    assert server.requests[1]["t"] - server.requests[0]["t"] >= 1.5  # our own backoff would have waited ≤ 0.02 s
    # a wait longer than max_backoff_s (a daily quota) is not held in a thread: the run stops, to resume later
    with FakeGemini([{"status": 429, "retry_delay": "3600s"}]) as server, pytest.raises(TeacherUnavailable, match="wait 3600s"):
        _teacher(server, monkeypatch).annotate_step(one_step_episode(), 0)


def test_a_rejected_request_fails_that_step_only(monkeypatch):
    with FakeGemini([400, GOOD]) as server:
        teacher = _teacher(server, monkeypatch)
        rec = teacher.annotate_step(one_step_episode(), 0)
        assert rec.status == "failed" and "400 INVALID_ARGUMENT" in rec.error and len(server.requests) == 1
        assert teacher.annotate_step(one_step_episode(), 0).status == "ok"  # the next step goes on


def test_persistent_429_leaves_the_step_for_a_later_run(monkeypatch):
    with FakeGemini(default=429) as server, pytest.raises(TeacherUnavailable, match="after 3 attempts"):
        _teacher(server, monkeypatch, http_attempts=3).annotate_step(one_step_episode(), 0)
    assert len(server.requests) == 3


def test_structured_json_output(monkeypatch):
    answer = json.dumps(Trace.from_dict(parse_tagged_text(GOOD).to_dict()).to_dict())
    with FakeGemini(["{not json", answer]) as server:
        teacher = _teacher(server, monkeypatch, answer_format="json")
        rec = teacher.annotate_step(one_step_episode(), 0)
    assert rec.status == "ok" and rec.attempts == 2 and rec.prompt_version == "a1-json-v1"
    assert rec.trace == parse_tagged_text(GOOD).to_dict()
    generation = server.requests[0]["body"]["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    assert set(generation["responseSchema"]["properties"]) == {"observation", "situation_analysis", "spatial_reasoning",
                                                               "task_planning", "logical_steps", "sub_action"}
    assert "JSON object" in server.requests[0]["texts"][-1]


def test_rate_limit_is_respected_across_threads(monkeypatch):
    rpm = 240  # 4/s, with one second's worth at once after an idle spell
    with FakeGemini(default=GOOD, latency_s=0.05, requests_per_minute=rpm) as server:
        teacher = _teacher(server, monkeypatch, requests_per_minute=rpm)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: teacher.annotate_step(one_step_episode(), 0), range(16)))
    t = sorted(r["t"] for r in server.requests)
    assert len(t) == 16 and server.rejected["quota"] == 0  # never over the server's quota
    assert max(sum(1 for x in t if a <= x < a + 1.0) for a in t) <= 4 + 4  # burst + rate in any second
    assert t[-1] - t[0] >= (16 - 4) / 4 - 0.05  # and no faster than the rate overall


def test_api_key_from_a_prefect_secret_block(monkeypatch, prefect_api):
    from prefect.blocks.system import Secret

    Secret(value=KEY).save("gemini-test-key", overwrite=True)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with FakeGemini([GOOD]) as server:
        teacher = make_teacher(TeacherConfig(kind="gemini", model="gemini-test", base_url=server.url, api_key_secret="gemini-test-key"))
        assert teacher.annotate_step(one_step_episode(), 0).status == "ok"
    assert server.requests[0]["headers"]["x-goog-api-key"] == KEY
    with pytest.raises(TeacherConfigError, match="no-such-block"):
        make_teacher(TeacherConfig(kind="gemini", api_key_secret="no-such-block"))


def test_unknown_model_says_to_change_the_setting(monkeypatch):
    with FakeGemini([404]) as server, pytest.raises(TeacherConfigError, match="annotate.teacher.model"):
        _teacher(server, monkeypatch).annotate_step(one_step_episode(), 0)
    assert len(server.requests) == 1  # a 404 is not retried


def test_missing_key_is_a_configuration_error(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(TeacherConfigError, match="GEMINI_API_KEY"):
        make_teacher(TeacherConfig(kind="gemini"))


def test_a_prefect_global_rate_limit_is_shared_across_workers(monkeypatch, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gemini-test-rpm", limit=2, slot_decay_per_second=2.0))
    with FakeGemini(default=GOOD) as server:
        teacher = _teacher(server, monkeypatch, prefect_rate_limit="gemini-test-rpm")
        for _ in range(4):
            assert teacher.annotate_step(one_step_episode(), 0).status == "ok"
        t = [r["t"] for r in server.requests]
        assert t[-1] - t[0] >= 0.5  # 4 requests at 2/s with 2 slots at once (unlimited: a few ms)
        with pytest.raises(TeacherConfigError, match="prefect gcl create no-such-limit"):
            _teacher(server, monkeypatch, prefect_rate_limit="no-such-limit").annotate_step(one_step_episode(), 0)
