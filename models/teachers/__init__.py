"""Teachers that write reasoning traces: `offline` (the default, no network), `gemini`, and `local` (a VLM on disk)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.teachers.base import EpisodeContext, Teacher, TeacherConfigError, TeacherUnavailable
from models.teachers.prompt import AnswerFormat

__all__ = ["EpisodeContext", "Teacher", "TeacherConfig", "TeacherConfigError", "TeacherUnavailable", "make_teacher"]

API_KEY_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
# USD per 1M input / output tokens at standard (non-batch) prices, from Google's pricing pages (2026).
# Batch mode costs half. Override with price_input_per_m / price_output_per_m for other models or prices.
PRICES_PER_M = {
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-3-flash-preview": (0.50, 3.00),
}


class TeacherConfig(BaseModel):
    """Which teacher writes the traces, and how it is called. The API key is never a setting: it comes from
    $GEMINI_API_KEY / $GOOGLE_API_KEY or a Prefect Secret block, so it never reaches logs or MLflow."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["offline", "gemini", "local"] = Field(
        "offline", description="offline: rule-based, no network (demo default); gemini: google-genai; local: a VLM on disk via transformers."
    )
    model: str = Field(
        "gemini-3-flash-preview",
        description="Gemini model id. The paper's gemini-2.0-flash (and 2.5-flash since 2026-06) are shut down and answer 404.",
    )
    base_url: str | None = Field(None, description="API endpoint override (None: Google's; also $GOOGLE_GEMINI_BASE_URL).")
    api_version: str = Field("v1beta", description="Gemini API version path segment.")
    api_key_secret: str | None = Field(None, description="Name of a Prefect Secret block holding the API key (else the environment).")
    answer_format: AnswerFormat = Field("tagged", description="tagged: the paper's tagged text; json: structured output with a response schema.")
    temperature: float = Field(0.2, ge=0.0, le=2.0, description="Sampling temperature.")
    max_output_tokens: int = Field(4096, ge=64, le=65536, description="Answer length cap in tokens; thinking models spend part of it on thoughts.")
    thinking_budget: int | None = Field(None, ge=0, description="Thinking tokens allowed per answer (None: the model's default; 0 turns thinking off where the model allows).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout (seconds).")
    http_attempts: int = Field(6, ge=1, le=30, description="Attempts per request on 408/429/5xx/timeouts before the step is left for a later run.")
    backoff_s: float = Field(1.0, ge=0, description="First backoff delay (doubles per attempt, full jitter) when the server gives no retry delay.")
    max_backoff_s: float = Field(60.0, ge=0, description="Backoff cap (seconds).")
    max_reasks: int = Field(2, ge=0, le=10, description="Extra questions when an answer is malformed, before the step is recorded as failed.")
    requests_per_minute: float | None = Field(
        600, gt=0, description="Requests/min this worker sends (its threads share it); set to your quota. None: unlimited."
    )
    tokens_per_minute: float | None = Field(1_000_000, gt=0, description="Input tokens/min this worker sends (estimated, then corrected). None: unlimited.")
    prefect_rate_limit: str | None = Field(
        None, description="Name of a Prefect global concurrency limit with slot decay, taken per request, to share a quota across workers."
    )
    price_input_per_m: float | None = Field(None, ge=0, description="USD per 1M input tokens for the cost estimate (None: the table for known models).")
    price_output_per_m: float | None = Field(None, ge=0, description="USD per 1M output tokens for the cost estimate (None: the table).")
    local_path: str | None = Field(None, description="kind=local: directory of a transformers image-text-to-text model and its processor.")

    def prices(self) -> tuple[float, float] | None:
        """(input, output) USD per 1M tokens, or None when unknown."""
        known = PRICES_PER_M.get(self.model)
        price_in = self.price_input_per_m if self.price_input_per_m is not None else (known[0] if known else None)
        price_out = self.price_output_per_m if self.price_output_per_m is not None else (known[1] if known else None)
        return None if price_in is None or price_out is None else (price_in, price_out)


def api_key(cfg: TeacherConfig) -> str:
    if cfg.api_key_secret:
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(cfg.api_key_secret).get())
        except ValueError as e:
            raise TeacherConfigError(f"Prefect Secret block '{cfg.api_key_secret}' could not be loaded: {e}") from None
    key = next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
    if not key:
        raise TeacherConfigError(f"the Gemini teacher needs an API key in ${API_KEY_ENV[0]} (or ${API_KEY_ENV[1]}, or a Prefect Secret block)")
    return key


def make_teacher(cfg: TeacherConfig) -> Teacher:
    if cfg.kind == "offline":
        from models.teachers.offline import OfflineTeacher

        return OfflineTeacher()
    if cfg.kind == "local":
        from models.teachers.local import LocalVLMTeacher

        if not cfg.local_path:
            raise TeacherConfigError("the local teacher needs local_path: a directory with a transformers VLM and its processor")
        return LocalVLMTeacher(cfg.local_path, max_new_tokens=cfg.max_output_tokens, temperature=cfg.temperature, max_reasks=cfg.max_reasks)
    from models.teachers.gemini import GeminiTeacher
    from models.teachers.ratelimit import shared_limiter

    return GeminiTeacher(
        model=cfg.model,
        api_key=api_key(cfg),
        base_url=cfg.base_url,
        api_version=cfg.api_version,
        answer_format=cfg.answer_format,
        temperature=cfg.temperature,
        max_output_tokens=cfg.max_output_tokens,
        timeout_s=cfg.timeout_s,
        http_attempts=cfg.http_attempts,
        backoff_s=cfg.backoff_s,
        max_backoff_s=cfg.max_backoff_s,
        max_reasks=cfg.max_reasks,
        limiter=shared_limiter(f"{cfg.base_url}|{cfg.model}", cfg.requests_per_minute, cfg.tokens_per_minute, cfg.prefect_rate_limit),
        thinking_budget=cfg.thinking_budget,
    )
