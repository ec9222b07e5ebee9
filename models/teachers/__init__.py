"""Teachers that write reasoning traces: `offline` (the default, no network) and `gemini`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.teachers.base import EpisodeContext, Teacher, TeacherConfigError

__all__ = ["EpisodeContext", "Teacher", "TeacherConfig", "TeacherConfigError", "make_teacher"]


class TeacherConfig(BaseModel):
    """Which teacher writes the traces, and how it is called."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["offline", "gemini"] = Field("offline", description="offline: rule-based, no network (demo default); gemini: google-genai.")
    model: str = Field(
        "gemini-3-flash-preview",
        description="Gemini model id. The paper's gemini-2.0-flash (and 2.5-flash since 2026-06) are shut down and answer 404.",
    )
    base_url: str | None = Field(None, description="API endpoint override (None: Google's; also $GOOGLE_GEMINI_BASE_URL).")
    api_version: str = Field("v1beta", description="Gemini API version path segment.")
    temperature: float = Field(0.2, ge=0.0, le=2.0, description="Sampling temperature.")
    max_output_tokens: int = Field(1024, ge=64, le=65536, description="Answer length cap (tokens).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout (seconds).")
    http_attempts: int = Field(5, ge=1, le=20, description="Attempts per request on 408/429/5xx, with exponential backoff.")
    max_reasks: int = Field(2, ge=0, le=10, description="Extra questions when an answer is malformed, before the step is recorded as failed.")


def make_teacher(cfg: TeacherConfig) -> Teacher:
    if cfg.kind == "offline":
        from models.teachers.offline import OfflineTeacher

        return OfflineTeacher()
    from models.teachers.gemini import GeminiTeacher

    return GeminiTeacher(
        model=cfg.model,
        base_url=cfg.base_url,
        api_version=cfg.api_version,
        temperature=cfg.temperature,
        max_output_tokens=cfg.max_output_tokens,
        timeout_s=cfg.timeout_s,
        http_attempts=cfg.http_attempts,
        max_reasks=cfg.max_reasks,
    )
