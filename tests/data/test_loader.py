"""The streaming training loader (data/loader.py)."""

import random
from collections import Counter

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from PIL import Image

from data.actions import action_chunks
from data.loader import ReasoningStream, augment, worker_skips


def _probe(image, instruction, actions, unnorm_key, reasoning):
    return {"pixels": int(np.asarray(image, np.int64).sum()), "actions": actions, "has_reasoning": reasoning is not None}


def _train(reasoning_dirs):
    return [d / "train" for d in reasoning_dirs]


def _all_steps(dirs):
    t = pads.dataset([str(f) for d in dirs for f in sorted(d.glob("part-*.parquet"))]).to_table(
        columns=["episode_id", "step_index", "action"]).to_pandas()
    return t


def _key(s):
    return (s["episode_id"], s["step_index"])


def test_every_sample_has_its_episodes_action_chunk(reasoning_dirs):
    dirs = _train(reasoning_dirs)
    table = _all_steps(dirs)
    chunks = {}
    for ep, g in table.sort_values("step_index").groupby("episode_id"):
        for t, c in zip(g.step_index, action_chunks(np.stack(g.action.to_numpy()), 4)):
            chunks[(ep, t)] = c
    samples = list(ReasoningStream(dirs, _probe, shuffle_buffer=16))
    assert len(samples) == len(table) == len({_key(s) for s in samples})
    for s in samples:
        np.testing.assert_array_equal(s["actions"], chunks[_key(s)])


def test_ddp_ranks_and_workers_cover_each_sample_exactly_once_per_epoch(reasoning_dirs):
    dirs = _train(reasoning_dirs)
    n = len(_all_steps(dirs))
    for epoch in (0, 1):
        seen = Counter()
        for rank in range(2):
            stream = ReasoningStream(dirs, _probe, epoch=epoch, rank=rank, world_size=2, num_workers=2, batch_size=4)
            loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, collate_fn=list)
            seen.update(_key(s) for batch in loader for s in batch)
        assert len(seen) == n and set(seen.values()) == {1}


def test_order_is_shuffled_per_epoch_and_reproducible(reasoning_dirs):
    dirs = _train(reasoning_dirs)
    order = [[_key(s) for s in ReasoningStream(dirs, _probe, epoch=e, shuffle_buffer=32)] for e in (0, 0, 1)]
    assert order[0] == order[1] and order[0] != order[2] and sorted(order[0]) == sorted(order[2])


def test_resume_continues_exactly_where_the_run_stopped(reasoning_dirs):
    dirs = _train(reasoning_dirs)

    def run(skip_batches):
        stream = ReasoningStream(dirs, _probe, seed=3, epoch=1, augment=True, num_workers=2, batch_size=4, skip_batches=skip_batches)
        return [(_key(s), s["pixels"]) for batch in torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, collate_fn=list) for s in batch]

    full = run(0)
    assert run(3) == full[12:] and run(6) == full[24:]
    with pytest.raises(ValueError, match="cannot skip"):
        worker_skips([10, 10], 4, 7)
    assert worker_skips([10, 3], 4, 3) == ([8, 3], 1)  # worker 1 ran out after one short batch (its turn yields nothing)
    assert worker_skips([10, 10], 4, 3) == ([8, 4], 1)


def test_augmentation_keeps_the_size_and_is_seeded():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    a, b = augment(image, random.Random(1)), augment(image, random.Random(1))
    assert a.size == image.size and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(image))
    assert not np.array_equal(np.asarray(a), np.asarray(augment(image, random.Random(2))))
