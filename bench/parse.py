"""Parse speed against TensorFlow's raw loop, and peak memory at 1x and 10x the data.

    .venv/bin/python bench/parse.py [--episodes 16] [--shards 4]

Writes Bridge sample datasets of N and 10N episodes (same episodes per shard), then on the 1x shards:
- raw: `tf.data.TFRecordDataset` + `parse_single_example` + decoding every image, in the graph with
  parallel calls (the practical limit of reading these files with TensorFlow);
- raw without image decoding (what reading alone costs);
- ours: `run_parse` (framing + CRC checks, C++ parsing, dummy-camera and image checks, rows, Parquet).
Peak RSS of `run_parse` is measured in a fresh process for 1x and 10x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def raw_loop(ds, split: str, decode: bool) -> tuple[int, float]:
    import tensorflow as tf

    from data.rlds import _tf_dtype

    spec = {k: tf.io.VarLenFeature(_tf_dtype(tf, f)) for k, f in ds.features.items()}
    image_keys = [k for k, f in ds.features.items() if f.kind == "image"]

    def parse(record):
        ex = {k: v.values for k, v in tf.io.parse_single_example(record, spec).items()}
        if decode:
            for k in image_keys:
                ex[k] = tf.map_fn(lambda b: tf.io.decode_image(b, channels=3, expand_animations=False), ex[k], fn_output_signature=tf.uint8)
        return ex

    files = [str(f) for f in ds.splits[split]]
    data = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    t0, steps = time.perf_counter(), 0
    for ex in data.prefetch(tf.data.AUTOTUNE):
        steps += int(ex["steps/is_first"].shape[0])
    return steps, time.perf_counter() - t0


def peak_rss_of_parse(dataset_dir: Path, out: Path) -> tuple[float, int]:
    code = (
        "import resource, sys, json; sys.path.insert(0, %r)\n"
        "from tasks.parse import run_parse\n"
        "s = run_parse(%r, 'train', %r)\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, s['steps']]))\n"
    ) % (str(ROOT), str(dataset_dir), str(out))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return tuple(json.loads(res.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=16, help="episodes at 1x (10x writes ten times as many)")
    ap.add_argument("--shards", type=int, default=4, help="shards at 1x (10x keeps the episodes per shard)")
    args = ap.parse_args()

    from data.rlds import open_rlds
    from data.sample import SampleConfig, write_sample_datasets
    from tasks.parse import run_parse

    tmp = Path(tempfile.mkdtemp(prefix="refinevla-bench-parse-"))
    dirs = {}
    for scale in (1, 10):
        t0 = time.perf_counter()
        cfg = SampleConfig(seed=scale, bridge_train_episodes=args.episodes * scale, bridge_val_episodes=args.shards * scale, fractal_episodes=0, num_shards=args.shards * scale)
        write_sample_datasets(tmp / f"x{scale}", cfg)
        dirs[scale] = tmp / f"x{scale}" / "bridge_dataset" / "1.0.0"
        print(f"wrote {scale}x: {args.episodes * scale} episodes in {args.shards * scale} shards ({time.perf_counter() - t0:.0f} s)", flush=True)

    ds = open_rlds(dirs[1])
    import tensorflow  # noqa: F401  (import cost is not part of any figure)

    raw_steps, raw_s = raw_loop(ds, "train", decode=True)
    bare_steps, bare_s = raw_loop(ds, "train", decode=False)
    t0 = time.perf_counter()
    ours = run_parse(dirs[1], "train", tmp / "steps")
    ours_s = time.perf_counter() - t0
    assert ours["steps"] == raw_steps == bare_steps, (ours["steps"], raw_steps)
    rss1, steps1 = peak_rss_of_parse(dirs[1], tmp / "rss1")
    rss10, steps10 = peak_rss_of_parse(dirs[10], tmp / "rss10")

    print(f"\nmachine: {os.cpu_count()} cores; {raw_steps} steps x {len(ds.cameras)} cameras (256x256 JPEG) at 1x")
    print(f"{'reader':<58}{'steps/s':>10}{'vs raw':>9}")
    print(f"{'raw tf.data: parse + decode every image':<58}{raw_steps / raw_s:>10.0f}{1.0:>9.2f}")
    print(f"{'raw tf.data: parse only (no image decode)':<58}{bare_steps / bare_s:>10.0f}{(bare_steps / bare_s) / (raw_steps / raw_s):>9.2f}")
    print(f"{'refinevla run_parse (checks, rows, Parquet written)':<58}{ours['steps'] / ours_s:>10.0f}{(ours['steps'] / ours_s) / (raw_steps / raw_s):>9.2f}")
    print(f"\n{'peak RSS of run_parse in a fresh process':<58}{'MiB':>10}{'steps':>9}")
    print(f"{'1x':<58}{rss1:>10.0f}{steps1:>9}")
    print(f"{'10x':<58}{rss10:>10.0f}{steps10:>9}")


if __name__ == "__main__":
    main()
