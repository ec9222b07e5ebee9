"""Build speed: `run_build` rows/s against a plain pyarrow write of the same table, in the same run.

    .venv/bin/python bench/build.py [--episodes 64]

The plain write is the floor of any builder: the finished reasoning table (read back from the build's
output) written with `pq.write_table` (zstd, the same row-group size). Goal: build ≥ 0.8× the plain write.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from fixtures import reasoning_dataset  # bench/fixtures.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=64)
    args = ap.parse_args()

    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from tasks.build import BuildConfig, run_build

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    steps, traces, _ = reasoning_dataset(tmp, args.episodes)
    cfg = BuildConfig()
    out = tmp / "out"
    summary = run_build(steps, traces, out, cfg)
    rows = summary["train_steps"] + summary["val_steps"]
    table = pads.dataset([str(f) for f in sorted(out.rglob("part-*.parquet"))]).to_table()
    times, plain = [], []
    for i in range(5):  # interleaved, best of 5 each: disk write-back makes single runs noisy
        t0 = time.perf_counter()
        summary = run_build(steps, traces, tmp / f"out{i}", cfg)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pq.write_table(table, tmp / f"plain{i}.parquet", compression="zstd", row_group_size=cfg.row_group_size)
        plain.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    again = run_build(steps, traces, out, cfg)
    resumed = time.perf_counter() - t0
    build_s, plain_s = min(times), min(plain)
    mb = sum(f.stat().st_size for f in out.rglob("part-*.parquet")) / 1e6
    print(f"{rows} rows, {mb:.1f} MB of Parquet, {summary['parts_built']} parts")
    print(f"build (join steps + traces, split, stats, card): {rows / build_s:8.0f} rows/s ({build_s:.2f} s, best of 5)")
    print(f"plain pq.write_table of the finished table:      {rows / plain_s:8.0f} rows/s ({plain_s:.2f} s, best of 5)")
    print(f"ratio build / plain write: {plain_s / build_s:.2f} (goal >= 0.8)")
    print(f"re-run with nothing changed: {resumed:.2f} s ({again['parts_reused']} parts reused)")
    shutil.rmtree(tmp, ignore_errors=True)  # noqa: keep the disk clean


if __name__ == "__main__":
    main()
