"""Client-side rate limiting and backoff for teacher APIs.

`RateLimiter` keeps a worker under a requests/min and a tokens/min budget, shared by all its threads, and
optionally takes a slot of a Prefect global concurrency limit (`prefect gcl create NAME --limit N
--slot-decay-per-second R`) so that several workers share one quota.
Each call reserves its slot on two schedules (GCRA, "virtual scheduling"): a request may start when both
its request slot and its token slot are due, with a burst of `burst_s` seconds of budget allowed. Calls
are spread evenly instead of firing a minute's quota at once and then stalling, which is what keeps a
quota-limited API at its limit without 429s. Token costs are estimated before the call and corrected
with the real usage after it (`settle`), so long answers slow later calls down.

The SDK does not honour the server's RetryInfo delay; `backoff_delay` does (and otherwise uses
exponential backoff with full jitter).
"""

from __future__ import annotations

import random
import re
import threading
import time


class _Schedule:
    """GCRA for one resource: `rate` units per second; after an idle spell, `burst_s` seconds' worth at once."""

    def __init__(self, per_minute: float | None, burst_s: float):
        self.rate = per_minute / 60.0 if per_minute else None
        self.burst_s = burst_s
        self.tat = 0.0  # theoretical arrival time of the next unit

    def earliest(self, now: float, cost: float) -> float:
        """When `cost` units may go out."""
        if self.rate is None:
            return now
        return max(now, self.tat - max(self.burst_s - cost / self.rate, 0.0))

    def book(self, start: float, cost: float) -> None:
        if self.rate is not None:
            self.tat = max(self.tat, start) + cost / self.rate

    def adjust(self, cost: float) -> None:
        if self.rate is not None:
            self.tat += cost / self.rate


class RateLimiter:
    """Requests/min and tokens/min for every thread of one process. `None` means unlimited."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None, burst_s: float = 1.0,
                 global_limit: str | None = None):
        self.global_limit = global_limit  # a Prefect global concurrency limit with slot decay, shared by all workers
        self.requests = _Schedule(requests_per_minute, burst_s)
        self.tokens = _Schedule(tokens_per_minute, burst_s)
        self._lock = threading.Lock()

    def acquire(self, tokens: int = 0) -> None:
        """Block until a request with about `tokens` tokens may go out."""
        with self._lock:  # both schedules are booked at the same start, the later of the two
            now = time.monotonic()
            start = max(self.requests.earliest(now, 1), self.tokens.earliest(now, tokens))
            self.requests.book(start, 1)
            self.tokens.book(start, tokens)
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if self.global_limit:
            from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
            from prefect.concurrency.sync import rate_limit

            from models.teachers.base import TeacherConfigError

            try:
                rate_limit(self.global_limit, strict=True)
            except ConcurrencySlotAcquisitionError as e:
                if "must be created" not in str(e):
                    raise  # the API is unreachable or failing: transient, the task retries
                raise TeacherConfigError(
                    f"Prefect global concurrency limit '{self.global_limit}' does not exist; create it with "
                    f"`prefect gcl create {self.global_limit} --limit N --slot-decay-per-second R`"
                ) from None

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token schedule once the real usage of a call is known."""
        with self._lock:
            self.tokens.adjust(actual - estimated)


_DURATION = re.compile(r"^\s*([0-9.]+)s\s*$")


def server_retry_delay(details) -> float | None:
    """The delay a Gemini error asks for: `google.rpc.RetryInfo.retryDelay` ("7s") in the error details."""
    if isinstance(details, dict):
        details = details.get("error", {}).get("details", details.get("details"))
    for d in details or []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            m = _DURATION.match(str(d.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


def backoff_delay(attempt: int, initial_s: float, max_s: float, server_delay: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1-based): the server's delay when it gave one,
    else exponential backoff with full jitter (spreads the retries of many threads)."""
    if server_delay is not None:
        return server_delay
    return random.uniform(0, min(max_s, initial_s * 2 ** (attempt - 1)))


_SHARED: dict[tuple, RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(key: str, requests_per_minute: float | None, tokens_per_minute: float | None, global_limit: str | None) -> RateLimiter:
    """One limiter per quota (API key's model and settings) per process: datasets annotated side by side in
    one worker share it, as they share the quota."""
    k = (key, requests_per_minute, tokens_per_minute, global_limit)
    with _SHARED_LOCK:
        if k not in _SHARED:
            _SHARED[k] = RateLimiter(requests_per_minute, tokens_per_minute, global_limit=global_limit)
        return _SHARED[k]
