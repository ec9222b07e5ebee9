"""Gemini as the teacher, through the `google-genai` SDK (../shared/notes/gemini-sdk.md).

Per step: every recorded camera view it is given (the annotate stage leaves out the all-zero placeholder
cameras that parsing marked) with its sniffed MIME type, then the paper's prompt with the instruction,
asking for the tagged text or for JSON with a response schema (`answer_format`). A malformed or
incomplete answer is asked again up to `max_reasks` times and then recorded as failed with the reason,
never stored as if valid.

Errors: 404 NOT_FOUND means the model id is unknown or shut down (gemini-2.0-flash, the paper's model,
is): a `TeacherConfigError` that says to change the setting; 401/403 and a rejected API key likewise. Any
other 400 concerns that step's request: the step is recorded as failed with the reason. 408/429/5xx,
timeouts and dropped connections are retried here rather than by the SDK, because the SDK ignores the
server's RetryInfo delay: every attempt goes through the shared `RateLimiter`, and waits the server's delay
or an exponential backoff with jitter. If they persist, or the server asks for a wait longer than
`max_backoff_s` (a daily quota), `TeacherUnavailable` reaches the caller (the Prefect task retries later;
finished steps are already on disk). Thinking tokens count as output tokens in the usage. The API key is passed in (from the environment
or a Prefect Secret block) and never logged.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time

from PIL import Image

from data.images import MIME
from data.traces import TraceFormatError, TraceRecord, parse_answer
from models.teachers.base import EpisodeContext, TeacherConfigError, TeacherUnavailable
from models.teachers.prompt import PROMPT_VERSIONS, AnswerFormat, TraceAnswer, render_prompt
from models.teachers.ratelimit import RateLimiter, backoff_delay, server_retry_delay

log = logging.getLogger("refinevla")
RETRYABLE_CODES = (408, 429, 500, 502, 503, 504)


class RequestRejected(Exception):
    """400 INVALID_ARGUMENT for one step's request (not a bad key): that step is recorded as failed."""


def image_tokens(data: bytes) -> int:
    """Gemini's input-token cost of one image: 258 up to 384 px per side, else 258 per 768×768 tile."""
    w, h = Image.open(io.BytesIO(data)).size
    return 258 if max(w, h) <= 384 else 258 * math.ceil(w / 768) * math.ceil(h / 768)


class GeminiTeacher:
    needs_images = True

    def __init__(
        self,
        model: str,
        api_key: str,
        base_url: str | None = None,
        api_version: str = "v1beta",
        answer_format: AnswerFormat = "tagged",
        temperature: float = 0.2,
        max_output_tokens: int = 1024,
        timeout_s: float = 60.0,
        http_attempts: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        max_reasks: int = 2,
        limiter: RateLimiter | None = None,
        thinking_budget: int | None = None,
    ):
        from google import genai
        from google.genai import types

        self.model = model
        self.name = model.replace("/", "_")
        self.prompt_version = PROMPT_VERSIONS[answer_format]
        self.answer_format = answer_format
        self.http_attempts, self.backoff_s, self.max_backoff_s = http_attempts, backoff_s, max_backoff_s
        self.max_reasks = max_reasks
        self.limiter = limiter or RateLimiter()
        self._types = types
        self._counts_lock = threading.Lock()
        self.counts = {"requests": 0, "retried": 0, "rate_limited": 0}
        # Keep the client referenced for the teacher's lifetime: Client.__del__ closes its transport.
        # No SDK retry options: the SDK then makes one attempt, and our retries pass the rate limiter.
        self._client = genai.Client(
            api_key=api_key, http_options=types.HttpOptions(base_url=base_url, api_version=api_version, timeout=int(timeout_s * 1000))
        )
        extra = {"response_mime_type": "application/json", "response_schema": TraceAnswer} if answer_format == "json" else {}
        if thinking_budget is not None:
            extra["thinking_config"] = types.ThinkingConfig(thinking_budget=thinking_budget)
        self._config = types.GenerateContentConfig(temperature=temperature, max_output_tokens=max_output_tokens, **extra)

    def contents(self, episode: EpisodeContext, step: int) -> tuple[list, int]:
        """The request's parts (images, then the prompt) and its estimated input tokens."""
        if episode.images is None:
            raise ValueError("the Gemini teacher needs the step images")
        images = [(enc, data) for _, enc, data in episode.images[step] if enc in MIME]
        prompt = render_prompt(episode.instructions[step], self.answer_format)
        parts = [self._types.Part.from_bytes(data=data, mime_type=MIME[enc]) for enc, data in images]
        return [*parts, prompt], sum(image_tokens(d) for _, d in images) + len(prompt) // 4

    def generate(self, contents: list, estimated_tokens: int):
        """One answer, through the rate limiter, retrying transient failures."""
        import httpx
        import httpx2
        from google.genai import errors

        for attempt in range(1, self.http_attempts + 1):
            self.limiter.acquire(estimated_tokens)
            self._count("requests")
            try:
                r = self._client.models.generate_content(model=self.model, contents=contents, config=self._config)
            except errors.APIError as e:
                if e.code == 404:
                    raise TeacherConfigError(
                        f"Gemini model '{self.model}' was not found (404 NOT_FOUND): it is unknown or shut down. "
                        "Set the teacher's model setting (annotate.teacher.model) to a current model id."
                    ) from None
                if e.code == 400 and "api key" not in str(e.message).lower():
                    raise RequestRejected(f"400 {e.status}: {e.message}") from None  # this step's request; the others may be fine
                if e.code not in RETRYABLE_CODES:
                    raise TeacherConfigError(f"Gemini rejected the request ({e.code} {e.status}): {e.message}") from None
                error, server_delay = f"{e.code} {e.status}", server_retry_delay(e.details)
                if server_delay is not None and server_delay > self.max_backoff_s:  # e.g. a daily quota: not worth holding threads
                    raise TeacherUnavailable(f"Gemini asks to wait {server_delay:.0f}s ({error}); run again later to resume") from None
                self._count("rate_limited" if e.code == 429 else "retried")
            except (httpx2.TransportError, httpx.TransportError) as e:  # timeouts and dropped connections
                error, server_delay = type(e).__name__, None
                self._count("retried")
            else:
                meta = r.usage_metadata
                self.limiter.settle(estimated_tokens, (meta.prompt_token_count or estimated_tokens) if meta else estimated_tokens)
                return r
            if attempt < self.http_attempts:
                delay = backoff_delay(attempt, self.backoff_s, self.max_backoff_s, server_delay)
                log.info("Gemini %s (attempt %d/%d); retrying in %.1fs", error, attempt, self.http_attempts, delay)
                time.sleep(delay)
        raise TeacherUnavailable(f"Gemini still failing after {self.http_attempts} attempts (last: {error}); run again later to resume")

    def annotate_step(self, episode: EpisodeContext, step: int) -> TraceRecord:
        contents, estimated = self.contents(episode, step)
        rec = None
        for _ in range(self.max_reasks + 1):
            try:
                response = self.generate(contents, estimated)
            except RequestRejected as e:  # recorded as failed with the reason, never retried blindly
                return self.record(step, None, rec, error=str(e))
            rec = self.record(step, response, rec)
            if rec.status == "ok":
                break
            log.warning("%s step %d: malformed answer (attempt %d): %s", episode.episode_id, step, rec.attempts, rec.error)
        return rec

    def record(self, step: int, response, previous: TraceRecord | None = None, error: str | None = None) -> TraceRecord:
        """The record of one more answer (or per-request `error`) for `step`; attempts and usage add up over
        the previous record's. A malformed answer is a failed record that says why."""
        usage = dict(previous.usage) if previous else {"input_tokens": 0, "output_tokens": 0}
        meta = getattr(response, "usage_metadata", None)
        if meta is not None:  # thinking tokens are billed as output
            usage["input_tokens"] += meta.prompt_token_count or 0
            usage["output_tokens"] += (meta.candidates_token_count or 0) + (getattr(meta, "thoughts_token_count", None) or 0)
        rec = TraceRecord(step=step, status="failed", teacher=self.name, model=self.model, prompt_version=self.prompt_version,
                          attempts=(previous.attempts if previous else 0) + 1, usage=usage)
        if response is None:
            rec.error = error or "no answer"
            return rec
        rec.raw_text = response.text or ""
        try:
            rec.trace = parse_answer(rec.raw_text, self.answer_format).to_dict()
            rec.status = "ok"
        except TraceFormatError as e:
            finish = response.candidates[0].finish_reason if response.candidates else None
            rec.error = f"{e} (finish_reason={getattr(finish, 'name', finish)})"
        return rec

    # -- Batch API (half price, results within hours): the annotate stage drives these (tasks/annotate_batch.py)

    def batch_request(self, episode: EpisodeContext, step: int, key: str):
        """(InlinedRequest, approximate JSON size in bytes) for one step, tagged with `key`."""
        contents, _ = self.contents(episode, step)
        size = sum(len(p.inline_data.data) * 4 // 3 for p in contents[:-1]) + len(contents[-1]) + 512
        return self._types.InlinedRequest(contents=contents, config=self._config, metadata={"key": key}), size

    def submit_batch(self, requests: list, display_name: str) -> str:
        """Create a batch job; returns its name ("batches/…"). One attempt only: a retried create could
        start the same job twice (and bill it twice)."""
        from google.genai import errors

        self.limiter.acquire()
        self._count("requests")
        try:
            job = self._client.batches.create(model=self.model, src=requests, config={"display_name": display_name})
        except errors.APIError as e:
            if e.code == 404:
                raise TeacherConfigError(f"Gemini model '{self.model}' was not found (404 NOT_FOUND) for the Batch API; "
                                         "set annotate.teacher.model to a current model id") from None
            if e.code in RETRYABLE_CODES:
                raise TeacherUnavailable(f"creating a batch job failed ({e.code} {e.status}); run again later") from None
            raise TeacherConfigError(f"Gemini rejected the batch ({e.code} {e.status}): {e.message}") from None
        return job.name

    def batch_results(self, name: str) -> tuple[str, list[tuple[str, object, str | None]] | None]:
        """A job's state ("pending", "succeeded", "failed", ...) and, once it has ended, (key, response, error)
        per request."""
        job = self._with_retries(lambda: self._client.batches.get(name=name), f"polling {name}")
        state = str(getattr(job.state, "value", job.state) or "JOB_STATE_UNSPECIFIED").removeprefix("JOB_STATE_").lower()
        if state in ("pending", "running", "queued", "unspecified"):
            return "pending", None
        out = []
        for r in (job.dest.inlined_responses or []) if job.dest else []:
            err = f"batch request error {r.error.code}: {r.error.message}" if r.error else None
            out.append(((r.metadata or {}).get("key", ""), r.response, err))
        if job.dest and job.dest.file_name:  # large jobs answer in a JSONL file: {"key", "response"} or {"key", "error"} per line
            data = self._with_retries(lambda: self._client.files.download(file=job.dest.file_name), f"downloading {job.dest.file_name}")
            for line in data.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key = item.get("key") or (item.get("metadata") or {}).get("key", "")
                response = self._types.GenerateContentResponse.model_validate(item["response"]) if item.get("response") else None
                err = item.get("error")
                out.append((key, response, f"batch request error {err.get('code')}: {err.get('message')}" if err else None))
        return state, out

    def _with_retries(self, call, what: str):
        """A control-plane call (no quota cost) with retries on transient failures."""
        import httpx
        import httpx2
        from google.genai import errors

        for attempt in range(1, self.http_attempts + 1):
            try:
                return call()
            except errors.APIError as e:
                if e.code not in RETRYABLE_CODES or attempt == self.http_attempts:
                    raise TeacherUnavailable(f"{what} failed ({e.code} {e.status}); run again later to resume") from None
            except (httpx2.TransportError, httpx.TransportError) as e:
                if attempt == self.http_attempts:
                    raise TeacherUnavailable(f"{what} failed ({type(e).__name__}); run again later to resume") from None
            time.sleep(backoff_delay(attempt, self.backoff_s, self.max_backoff_s))

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self.counts[key] += 1
