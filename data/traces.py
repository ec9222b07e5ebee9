"""Reasoning traces: the paper's four-part schema, its tagged text format, and the per-episode store.

A trace has the four parts of the paper's prompt (Appendix A.1) plus the parts of the task plan:

    <Observation>: ...
    <Situation Analysis>: ...
    <Spatial Reasoning>: ...
    <Task Planning>: ...
    <logical_steps> <1> ... <2> ...
    <sub_action> ...

`Trace.to_text()` renders exactly this (it is the student's reasoning target) and `parse_tagged_text`
reads it back, tolerating the variations teachers produce ("#1 <Observation>:", markdown bold, numbered
lists without <n> markers). A missing or empty part is a `TraceFormatError`, never a silent blank.

Traces live in one JSON list per episode, indexed by step (as the paper stores them); entries for steps
not annotated yet are `null`. Each entry is a `TraceRecord` dict with a status, so failures are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from data.io import read_json, write_json_atomic

SECTIONS = ("observation", "situation_analysis", "spatial_reasoning", "task_planning")
SECTION_TAGS = {
    "observation": "Observation",
    "situation_analysis": "Situation Analysis",
    "spatial_reasoning": "Spatial Reasoning",
    "task_planning": "Task Planning",
}
TRACE_FIELDS = (*SECTIONS, "logical_steps", "sub_action")


class TraceFormatError(ValueError):
    """A teacher answer that does not contain a complete four-part trace."""


@dataclass
class Trace:
    observation: str
    situation_analysis: str
    spatial_reasoning: str
    task_planning: str
    logical_steps: list[str]
    sub_action: str

    def to_text(self) -> str:
        steps = " ".join(f"<{i}> {s}" for i, s in enumerate(self.logical_steps, 1))
        return (
            f"<Observation>: {self.observation}\n"
            f"<Situation Analysis>: {self.situation_analysis}\n"
            f"<Spatial Reasoning>: {self.spatial_reasoning}\n"
            f"<Task Planning>: {self.task_planning}\n"
            f"<logical_steps> {steps}\n"
            f"<sub_action> {self.sub_action}"
        )

    def to_dict(self) -> dict[str, Any]:  # by hand: dataclasses.asdict's deep copy dominated the build
        return {k: list(getattr(self, k)) if k == "logical_steps" else getattr(self, k) for k in TRACE_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        missing = [k for k in TRACE_FIELDS if k not in d]
        if missing:
            raise TraceFormatError(f"trace is missing fields {missing}")
        t = cls(**{k: d[k] for k in TRACE_FIELDS})
        t.validate()
        return t

    def validate(self) -> None:
        empty = [k for k in SECTIONS if not str(getattr(self, k)).strip()]
        if empty:
            raise TraceFormatError(f"empty section(s): {', '.join(SECTION_TAGS[k] for k in empty)}")
        if not self.logical_steps or not all(s.strip() for s in self.logical_steps):
            raise TraceFormatError("no <logical_steps> in <Task Planning>")
        if not self.sub_action.strip():
            raise TraceFormatError("empty <sub_action>")


# A heading: "<Observation>", "#1 <Observation>:", "**<Observation>**:" anywhere (the paper's answers put all
# sections on one line), or a bare "Observation:" / "**Observation**:" at the start of a line.
def _heading(tag: str) -> str:
    words = r"\s+".join(tag.split())
    tagged = rf"[ \t#*\d.]*\**<\s*{words}\s*>\**[ \t]*:?"
    bare = rf"(?:^|\n)[ \t#*\d.]*\**{words}\**[ \t]*:"
    return rf"(?:{tagged}|{bare})"


_SECTION_RE = {k: re.compile(_heading(t), re.IGNORECASE) for k, t in SECTION_TAGS.items()}
_STEPS_RE = re.compile(r"<\s*logical[_ ]steps\s*>", re.IGNORECASE)
_SUB_RE = re.compile(r"<\s*sub[_ ]action\s*>", re.IGNORECASE)
_CLOSING_RE = re.compile(r"</\s*[A-Za-z_ ]+\s*>")
_NUMBERED_RE = re.compile(r"<\s*(\d+)\s*>")


def parse_tagged_text(text: str) -> Trace:
    """Parse a teacher's tagged answer into a `Trace`, raising `TraceFormatError` with the reason."""
    if not text or not text.strip():
        raise TraceFormatError("empty answer")
    text = _CLOSING_RE.sub(" ", text.replace("\r\n", "\n"))
    starts = {}
    for key, rx in _SECTION_RE.items():
        m = rx.search(text)
        if m is None:
            raise TraceFormatError(f"missing <{SECTION_TAGS[key]}> section")
        starts[key] = (m.start(), m.end())
    order = sorted(starts, key=lambda k: starts[k][0])
    if order != list(SECTIONS):
        raise TraceFormatError(f"sections out of order: {order}")
    bodies = {}
    for i, key in enumerate(order):
        end = starts[order[i + 1]][0] if i + 1 < len(order) else len(text)
        bodies[key] = text[starts[key][1] : end].strip()

    planning = bodies["task_planning"]
    sub_match = _SUB_RE.search(planning)
    if sub_match is None:
        raise TraceFormatError("missing <sub_action> in <Task Planning>")
    sub_action = _clean(planning[sub_match.end() :])
    planning = planning[: sub_match.start()]
    steps_match = _STEPS_RE.search(planning)
    if steps_match is None:
        raise TraceFormatError("missing <logical_steps> in <Task Planning>")
    steps_text = planning[steps_match.end() :]
    summary = _clean(planning[: steps_match.start()]).rstrip(":").strip()
    steps = _split_steps(steps_text)
    trace = Trace(
        observation=_clean(bodies["observation"]),
        situation_analysis=_clean(bodies["situation_analysis"]),
        spatial_reasoning=_clean(bodies["spatial_reasoning"]),
        task_planning=summary or "; ".join(steps),
        logical_steps=steps,
        sub_action=sub_action,
    )
    trace.validate()
    return trace


def parse_json_answer(text: str) -> Trace:
    """Parse a structured (JSON) answer into a `Trace`; a code fence around the object is tolerated."""
    body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text or "")
    if not body.strip():
        raise TraceFormatError("empty answer")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise TraceFormatError(f"answer is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(data, dict):
        raise TraceFormatError(f"answer is a JSON {type(data).__name__}, not an object")
    if not isinstance(data.get("logical_steps", []), list):
        raise TraceFormatError("logical_steps is not a list")
    data = {k: ([_clean(str(s)) for s in v] if k == "logical_steps" else _clean(str(v))) for k, v in data.items() if k in TRACE_FIELDS}
    return Trace.from_dict(data)


def parse_answer(text: str, answer_format: str = "tagged") -> Trace:
    """A teacher's answer in the given format (`tagged` or `json`) as a validated `Trace`."""
    return parse_json_answer(text) if answer_format == "json" else parse_tagged_text(text)


def _split_steps(text: str) -> list[str]:
    if _NUMBERED_RE.search(text):
        parts = _NUMBERED_RE.split(text)[2::2]  # [before, n1, s1, n2, s2, ...]
    else:  # "1. foo\n2. bar" or one step per line
        parts = re.split(r"\n\s*(?:\d+[.)]|[-*•])\s*", "\n" + text)
    return [s for s in (_clean(p) for p in parts) if s]


def _clean(s: str) -> str:
    return re.sub(r"\s+", " ", s.replace("**", "")).strip(" \n:-")


# --------------------------------------------------------------------------------------------------
# Per-episode store

Status = Literal["ok", "failed"]


@dataclass
class TraceRecord:
    """One step's annotation outcome. `trace` is set when status is "ok"; `error` says why otherwise."""

    step: int
    status: Status
    teacher: str
    model: str
    prompt_version: str
    trace: dict[str, Any] | None = None
    raw_text: str = ""
    error: str | None = None
    attempts: int = 1
    usage: dict[str, int] = field(default_factory=dict)
    episode_key: str = ""  # `episode_key()` of the data the trace was asked for; a mismatch makes it stale
    derived_from: int | None = None  # keyframe mode: the step whose answer this trace was derived from
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def episode_key(instructions: list[str], actions) -> str:
    """Identifies what a trace was asked about: the episode's instructions and actions. If the data under
    an episode id changes (a regenerated or corrected dataset), its stored traces no longer match."""
    import numpy as np

    h = hashlib.sha1("\x1f".join(instructions).encode())
    h.update(np.ascontiguousarray(actions, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def teacher_tag(teacher: str, prompt_version: str) -> str:
    """Folder name for one teacher and prompt version, e.g. `offline@offline-v1`."""
    return f"{teacher}@{prompt_version}".replace("/", "_")


class TraceStore:
    """Trace files of one dataset and one teacher@prompt-version: `<root>/<episode_id>.json`.

    Saves rewrite the whole (small) episode file atomically, so a kill at any moment leaves either the
    old or the new list on disk and at most the in-flight steps are asked again.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path(self, episode_id: str) -> Path:
        return self.root / f"{episode_id}.json"

    def load(self, episode_id: str, num_steps: int) -> list[dict[str, Any] | None]:
        p = self.path(episode_id)
        records: list[dict[str, Any] | None] = read_json(p) if p.exists() else []
        if len(records) > num_steps:  # the episode changed (fewer steps): its records' episode key no longer matches
            return records[:num_steps]
        return records + [None] * (num_steps - len(records))

    def save(self, episode_id: str, records: list[dict[str, Any] | None]) -> None:
        with self.lock(episode_id):
            write_json_atomic(self.path(episode_id), records)

    def lock(self, episode_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(episode_id, threading.Lock())

    def episodes(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.exists() else []
