"""Gemini as the teacher, through the `google-genai` SDK (../shared/notes/gemini-sdk.md).

Per step: every recorded camera view it is given (the annotate stage leaves out the all-zero placeholder
cameras that parsing marked) with its sniffed MIME type, then the paper's prompt with the instruction. The answer is parsed by `data.traces`; a malformed
or incomplete answer is asked again up to `max_reasks` times and then recorded as failed with the
reason, never stored as if valid.

Errors: 404 NOT_FOUND means the model id is unknown or shut down (gemini-2.0-flash, the paper's model,
is): a `TeacherConfigError` that says to change the setting. 400/401/403 likewise. 429 and 5xx are
retried by the SDK with exponential backoff (`http_attempts`); if they persist the exception reaches the
caller (the Prefect task retries, and finished steps are already on disk). The API key is read from the
environment only and never logged.
"""

from __future__ import annotations

import logging
import os

from data.images import MIME
from data.traces import TraceFormatError, TraceRecord, parse_tagged_text
from models.teachers.base import EpisodeContext, TeacherConfigError
from models.teachers.prompt import PROMPT_VERSION, render_prompt

log = logging.getLogger("refinevla")
API_KEY_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


def api_key_from_env() -> str | None:
    return next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)


class GeminiTeacher:
    needs_images = True
    prompt_version = PROMPT_VERSION

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_version: str = "v1beta",
        temperature: float = 0.2,
        max_output_tokens: int = 1024,
        timeout_s: float = 60.0,
        http_attempts: int = 5,
        max_reasks: int = 2,
    ):
        from google import genai
        from google.genai import types

        key = api_key_from_env()
        if not key:
            raise TeacherConfigError(f"the Gemini teacher needs an API key in ${API_KEY_ENV[0]} (or ${API_KEY_ENV[1]})")
        self.model = model
        self.name = model.replace("/", "_")
        self.max_reasks = max_reasks
        self._types = types
        # Keep the client referenced for the teacher's lifetime: Client.__del__ closes its transport.
        self._client = genai.Client(
            api_key=key,
            http_options=types.HttpOptions(
                base_url=base_url,
                api_version=api_version,
                timeout=int(timeout_s * 1000),
                retry_options=types.HttpRetryOptions(
                    attempts=http_attempts, initial_delay=1.0, max_delay=30.0, http_status_codes=[408, 429, 500, 502, 503, 504]
                ),
            ),
        )
        self._config = types.GenerateContentConfig(temperature=temperature, max_output_tokens=max_output_tokens)

    def contents(self, episode: EpisodeContext, step: int) -> list:
        if episode.images is None:
            raise ValueError("the Gemini teacher needs the step images")
        parts = [
            self._types.Part.from_bytes(data=data, mime_type=MIME[enc])
            for _, enc, data in episode.images[step]
            if enc in MIME
        ]
        return [*parts, render_prompt(episode.instructions[step])]

    def annotate_step(self, episode: EpisodeContext, step: int) -> TraceRecord:
        from google.genai import errors

        contents = self.contents(episode, step)
        usage = {"input_tokens": 0, "output_tokens": 0}
        reason, text = "", ""
        for attempt in range(1, self.max_reasks + 2):
            try:
                r = self._client.models.generate_content(model=self.model, contents=contents, config=self._config)
            except errors.ClientError as e:
                if e.code == 404:
                    raise TeacherConfigError(
                        f"Gemini model '{self.model}' was not found (404 NOT_FOUND): it is unknown or shut down. "
                        "Set the teacher's model setting (annotate.teacher.model) to a current model id."
                    ) from e
                if e.code in (400, 401, 403):
                    raise TeacherConfigError(f"Gemini rejected the request ({e.code} {e.status}): {e.message}") from e
                raise  # 429 after the SDK's own retries: let the task retry later
            meta = r.usage_metadata
            if meta is not None:
                usage["input_tokens"] += meta.prompt_token_count or 0
                usage["output_tokens"] += meta.candidates_token_count or 0
            text = r.text or ""
            try:
                trace = parse_tagged_text(text)
            except TraceFormatError as e:
                finish = r.candidates[0].finish_reason if r.candidates else None
                reason = f"{e} (finish_reason={getattr(finish, 'name', finish)})"
                log.warning("%s step %d: malformed answer (attempt %d): %s", episode.episode_id, step, attempt, reason)
                continue
            return TraceRecord(step=step, status="ok", teacher=self.name, model=self.model, prompt_version=self.prompt_version,
                               trace=trace.to_dict(), raw_text=text, attempts=attempt, usage=usage)
        return TraceRecord(step=step, status="failed", teacher=self.name, model=self.model, prompt_version=self.prompt_version,
                           raw_text=text, error=f"no valid trace after {self.max_reasks + 1} answers: {reason}",
                           attempts=self.max_reasks + 1, usage=usage)
