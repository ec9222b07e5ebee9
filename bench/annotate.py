"""Teacher annotation at a quota: throughput against the limit, lost steps, duplicates, calls per step.

    .venv/bin/python bench/annotate.py [--episodes 48] [--rpm 1200] [--latency 0.3] [--error-rate 0.05] [--workers 16]

Writes a Bridge sample of N train episodes, parses it, then annotates it with the real google-genai
client against a local server speaking the Gemini REST API (tests/fake_gemini.py) that enforces
`--rpm` (429 with a RetryInfo delay above it), answers after `--latency` seconds and refuses
`--error-rate` of requests with a random 429. The client's rate limiter is set to the same quota. Then,
for each mode (per_step, keyframe), it prints:
- achieved requests/s ÷ the limit, in steady state after the first second's burst (goal ≥ 0.95; the
  quota is the cap, so ≈ 1 is the best possible; 429s count, they used quota),
- steps without an ok trace at the end (goal 0),
- duplicate requests: the same step answered twice (goal 0),
- calls per step (answers the teacher was asked for ÷ steps annotated).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def answer(request) -> str:
    from data.traces import Trace

    instruction = request["texts"][-1].split("Instruction: ", 1)[1].split(" Now think", 1)[0]
    return Trace(f"A robot arm above a table; the task is '{instruction}'.", "The object is on the table.",
                 "The object is left of the target.", "Pick the object and place it.",
                 ["Move to the object", "Grasp it", "Place it"], "Move the arm left.").to_text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=48)
    ap.add_argument("--rpm", type=float, default=1200)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--error-rate", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args()

    import pyarrow.dataset as pads

    from data.io import read_json
    from data.sample import SampleConfig, write_sample_datasets
    from data.traces import TraceStore
    from models.teachers import TeacherConfig
    from tasks.annotate import AnnotateConfig, run_annotate
    from tasks.parse import run_parse
    from tests.fake_gemini import FakeGemini

    os.environ["GEMINI_API_KEY"] = "bench-key"
    tmp = Path(tempfile.mkdtemp(prefix="bench-annotate-"))
    (bridge,) = write_sample_datasets(tmp / "datasets", SampleConfig(bridge_train_episodes=args.episodes, bridge_val_episodes=1, fractal_episodes=0))
    run_parse(bridge, "train", tmp / "steps")
    steps_dir = tmp / "steps" / "bridge_dataset"
    n = pads.dataset(str(steps_dir)).count_rows()
    print(f"{args.episodes} episodes, {n} steps; quota {args.rpm:.0f} requests/min ({args.rpm / 60:.1f}/s), latency {args.latency}s, "
          f"{args.error_rate:.0%} random 429s, {args.workers} threads")
    print(f"{'mode':>9} | {'requests/s':>10} | {'÷ limit':>7} | {'ok steps':>8} | {'lost':>4} | {'dupl.':>5} | {'calls/step':>10} | "
          f"{'429 quota':>9} | {'429 random':>10} | {'time s':>6}")
    for mode in ("per_step", "keyframe"):
        with FakeGemini(default=answer, requests_per_minute=args.rpm, latency_s=args.latency, error_rate=args.error_rate) as server:
            teacher = TeacherConfig(kind="gemini", model="gemini-bench", base_url=server.url, requests_per_minute=args.rpm,
                                    backoff_s=0.2, max_backoff_s=2.0, timeout_s=30)
            t0 = time.perf_counter()
            s = run_annotate(steps_dir, tmp / f"traces-{mode}", AnnotateConfig(teacher=teacher, max_workers=args.workers, mode=mode))
            elapsed = time.perf_counter() - t0
            times = sorted(r["t"] for r in server.requests)
        # steady state: leave out the first second, when the limiter lets its one-second burst through
        steady = [t for t in times if t > times[0] + 1.0]
        rate = (len(steady) - 1) / (steady[-1] - steady[0])
        store = TraceStore(s["traces_dir"])
        records = [r for ep in store.episodes() for r in read_json(store.path(ep))]
        ok = sum(1 for r in records if r and r["status"] == "ok")
        print(f"{mode:>9} | {rate:10.2f} | {rate / (args.rpm / 60):7.3f} | {ok:8d} | {n - ok:4d} | {server.duplicates():5d} | "
              f"{s['calls_per_step']:10.3f} | {server.rejected['quota']:9d} | {server.rejected['random']:10d} | {elapsed:6.1f}")


if __name__ == "__main__":
    main()
