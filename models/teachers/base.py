"""The teacher interface: one step of one episode in, one `TraceRecord` out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from data.traces import TraceRecord


@dataclass
class EpisodeContext:
    """What a teacher may know about an episode. Images are per step: [(camera, encoding, bytes), ...]."""

    dataset: str
    episode_id: str
    instructions: list[str]
    actions: np.ndarray  # (T, 7) in the project convention (data/actions.py)
    images: list[list[tuple[str, str, bytes]]] | None = None  # None when the teacher does not need them

    @property
    def num_steps(self) -> int:
        return len(self.actions)


class Teacher(Protocol):
    name: str  # folder-safe teacher name: "offline", or the model id
    model: str
    prompt_version: str
    needs_images: bool

    def annotate_step(self, episode: EpisodeContext, step: int) -> TraceRecord:
        """Return an ok record with a valid trace, or a failed record that says why; raise only for
        configuration errors or transient faults that the caller should retry."""
        ...


class TeacherConfigError(RuntimeError):
    """The teacher cannot work as configured (unknown model, missing key): retrying will not help."""


class TeacherUnavailable(RuntimeError):
    """The teacher's service kept failing with retryable errors (429, 5xx, timeouts): try again later."""
