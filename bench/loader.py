"""Training-loader throughput: samples/s of the streaming loader with 0, 1 and 2 worker processes.

    .venv/bin/python bench/loader.py [--episodes 128] [--batch 32]

Builds a reasoning dataset of N Bridge sample episodes, a tiny student's processor (its tokenizer and
action grid), then times full epochs of `ReasoningStream` through a torch DataLoader: read Parquet, build
action chunks, shuffle, decode + resize the primary camera to 224 px, (augment,) tokenize and collate.
Goal: ≥ 200 samples/s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from fixtures import reasoning_dataset  # bench/fixtures.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import torch

    from data.io import read_json
    from data.loader import ReasoningStream
    from tasks.finetune import FinetuneConfig, _build_or_load

    torch.set_num_threads(1)
    _, _, reasoning = reasoning_dataset(Path(tempfile.mkdtemp(prefix="bench-loader-")), args.episodes)
    train = [reasoning / "train"]
    _, processor = _build_or_load(FinetuneConfig(), train, read_json(reasoning / "stats.json"))
    print(f"{os.cpu_count()} cores; batch {args.batch}; one full epoch per row (worker start-up included)")
    print(f"{'workers':>7} | {'augment':>7} | {'samples':>7} | {'samples/s':>9} | {'per extra worker':>16}")
    base = {}
    for workers, augment in ((0, False), (1, False), (2, False), (0, True), (2, True)):
        stream = ReasoningStream(train, processor.training_sample, seed=0, epoch=0, augment=augment, batch_size=args.batch,
                                 num_workers=workers, image_size=processor.image_size)
        loader = torch.utils.data.DataLoader(stream, batch_size=args.batch, num_workers=workers, collate_fn=processor.collate)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["input_ids"])
        rate = n / (time.perf_counter() - t0)
        extra = f"{(rate - base[augment]) / workers:+16.1f}" if workers else ""
        base.setdefault(augment, rate)
        print(f"{workers:7d} | {str(augment):>7} | {n:7d} | {rate:9.1f} | {extra:>16}")


if __name__ == "__main__":
    main()
