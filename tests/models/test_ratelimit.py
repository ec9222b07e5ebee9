"""The client-side rate limiter and retry delays (models/teachers/ratelimit.py)."""

import threading
import time

from models.teachers.ratelimit import RateLimiter, backoff_delay, server_retry_delay


def _starts(limiter, n, threads=4, tokens=0):
    times, lock = [], threading.Lock()

    def work():
        for _ in range(n // threads):
            limiter.acquire(tokens)
            with lock:
                times.append(time.monotonic())

    ts = [threading.Thread(target=work) for _ in range(threads)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return sorted(times)


def test_requests_per_minute_spread_evenly_after_a_one_second_burst():
    t = _starts(RateLimiter(requests_per_minute=1200), 40)  # 20/s: 20 at once, then one per 50 ms
    assert 0.9 <= t[-1] - t[0] <= 1.3
    gaps = [b - a for a, b in zip(t[20:], t[21:])]
    assert min(gaps) > 0.03


def test_tokens_per_minute_limit_and_settling_with_real_usage():
    limiter = RateLimiter(tokens_per_minute=6000, burst_s=0.1)  # 100 tokens/s
    t = _starts(limiter, 4, threads=1, tokens=50)  # 200 tokens: ≈ 1.5 s after the burst
    assert t[-1] - t[0] >= 1.4
    limiter.settle(estimated=50, actual=150)  # the last call really used 100 more tokens: the next waits ≈ 1 s more
    t0 = time.monotonic()
    limiter.acquire(1)
    assert time.monotonic() - t0 >= 1.4


def test_server_retry_delay_and_backoff():
    details = {"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}}
    assert server_retry_delay(details) == 7.0 and server_retry_delay({"error": {"code": 429}}) is None
    assert backoff_delay(3, 1.0, 60.0, server_delay=7.0) == 7.0
    delays = [backoff_delay(4, 1.0, 5.0) for _ in range(200)]
    assert 0 <= min(delays) and max(delays) <= 5.0 and len(set(delays)) > 100  # jittered, capped
