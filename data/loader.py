"""The training stream: the reasoning Parquet dataset → model samples, without holding the dataset in memory.

Units of work are the Parquet part files (each holds whole episodes, in step order). Every epoch the units
are shuffled (seeded by `seed` and the epoch) and dealt round-robin to (DDP rank, loader worker) pairs,
so each sample is read by exactly one worker of one rank per epoch. A worker reads its units row group by
row group, completes each episode's 4-step action chunks (the last action repeated past the end), and
passes the rows through a shuffle buffer; only rows that leave the buffer are decoded, augmented (when
asked: SpatialVLA's random-resized crop at scale 0.9 and colour jitter) and tokenized by `transform`
(the student processor's `training_sample`).

Resuming at a given sample: the first `skip_batches` batches of the epoch (what this rank already
consumed) are passed over without decoding: the order is a pure function of (seed, epoch, rank, worker), and the DataLoader
takes batches from its workers in turn, so how many batches each worker had delivered can be computed from
the units' row counts (`worker_skips`).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageEnhance

from data.actions import action_chunks
from data.training import primary_image

COLUMNS = ["dataset", "episode_id", "step_index", "instruction", "images", "action", "unnorm_key", "reasoning_text", "trace_status"]


def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """SpatialVLA / OpenVLA training augmentation: a random square crop of 90% of the area, then brightness
    (±0.2), contrast and saturation (0.8–1.2) and hue (±0.05) in random order."""
    w, h = image.size
    side = np.sqrt(0.9)
    cw, ch = int(round(w * side)), int(round(h * side))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.resize((w, h), Image.BILINEAR, box=(x, y, x + cw, y + ch))
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(1 + rng.uniform(-0.2, 0.2)),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2)),
        lambda im: ImageEnhance.Color(im).enhance(rng.uniform(0.8, 1.2)),
        lambda im: _shift_hue(im, rng.uniform(-0.05, 0.05)),
    ]
    rng.shuffle(ops)
    for op in ops:
        image = op(image)
    return image


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _shift_hue(image: Image.Image, delta: float) -> Image.Image:
    """Rotate hue by `delta` of the colour circle: a rotation of the chroma plane in YIQ space (a 3×3 matrix
    per pixel, 10× faster than a round trip through HSV, and within a few levels of it at these angles)."""
    c, s = np.cos(2 * np.pi * delta), np.sin(2 * np.pi * delta)
    m = _YIQ_TO_RGB @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32) @ _RGB_TO_YIQ
    src = np.asarray(image, np.float32)
    out = np.empty_like(src)
    for i in range(3):  # by hand: a BLAS matmul with a 3×3 operand costs more in thread start-up than it computes
        out[..., i] = src[..., 0] * m[i, 0] + src[..., 1] * m[i, 1] + src[..., 2] * m[i, 2] + 0.5
    return Image.fromarray(np.clip(out, 0, 255, out=out).astype(np.uint8))


def worker_skips(lengths: list[int], batch_size: int, skip_batches: int) -> tuple[list[int], int]:
    """Where each worker stood when a DataLoader (it takes one batch from each worker in turn, leaving out
    exhausted ones) had delivered `skip_batches` batches: samples delivered per worker, and the worker whose
    batch came next."""
    batches = [-(-n // batch_size) for n in lengths]
    if skip_batches > sum(batches):
        raise ValueError(f"cannot skip {skip_batches} batches: the epoch has {sum(batches)}")
    done, taken, last = [0] * len(lengths), 0, -1
    while taken < skip_batches:
        for w in range(len(lengths)):
            if done[w] < batches[w] and taken < skip_batches:
                done[w], taken, last = done[w] + 1, taken + 1, w
    return [min(d * batch_size, n) for d, n in zip(done, lengths)], (last + 1) % len(lengths)


class ReasoningStream(torch.utils.data.IterableDataset):
    def __init__(self, dirs: list[str | Path], transform: Callable[..., dict], chunk: int = 4, seed: int = 0, epoch: int = 0,
                 shuffle_buffer: int = 256, augment: bool = False, rank: int = 0, world_size: int = 1, skip_batches: int = 0,
                 batch_size: int = 1, num_workers: int = 0, use_reasoning: bool = True, image_size: int = 224):
        self.files = [(str(f), pq.ParquetFile(f).metadata.num_rows) for d in dirs for f in sorted(Path(d).glob("part-*.parquet"))]
        if not self.files:
            raise FileNotFoundError(f"no part-*.parquet files in {[str(d) for d in dirs]}")
        if world_size > len(self.files):  # parts are the unit of sharding: a rank without one would train on nothing
            raise ValueError(f"{len(self.files)} Parquet parts cannot feed {world_size} ranks; rebuild with more parts or use fewer ranks")
        self.transform, self.chunk, self.seed, self.epoch = transform, chunk, seed, epoch
        self.shuffle_buffer, self.augment, self.use_reasoning, self.image_size = shuffle_buffer, augment, use_reasoning, image_size
        self.rank, self.world_size, self.skip_batches, self.batch_size, self.num_workers = rank, world_size, skip_batches, batch_size, num_workers

    def units(self, worker: int) -> list[int]:
        """Indices of the files (rank, worker) reads this epoch."""
        order = list(range(len(self.files)))
        random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        slots = self.world_size * max(1, self.num_workers)
        return order[self.rank * max(1, self.num_workers) + worker :: slots]

    def lengths(self) -> list[int]:
        """Samples per worker of this rank this epoch."""
        return [sum(self.files[i][1] for i in self.units(w)) for w in range(max(1, self.num_workers))]

    def __len__(self) -> int:
        return sum(self.lengths())

    def num_batches(self) -> int:
        """Batches this rank's DataLoader delivers this epoch (each worker ends with its own short batch)."""
        return sum(-(-n // self.batch_size) for n in self.lengths())

    def rows(self, file: str) -> Iterator[dict]:
        """Rows of one part with their action chunk, episode by episode (episodes may span row groups)."""
        f = pq.ParquetFile(file)
        pending: list[dict] = []
        for g in range(f.num_row_groups):
            for row in f.read_row_group(g, columns=COLUMNS).to_pylist():
                if pending and row["episode_id"] != pending[-1]["episode_id"]:
                    yield from self._finish(pending, file)
                    pending = []
                pending.append(row)
        if pending:
            yield from self._finish(pending, file)

    def _finish(self, episode: list[dict], file: str) -> Iterator[dict]:
        if [r["step_index"] for r in episode] != list(range(len(episode))):
            raise ValueError(f"{file}: episode {episode[0]['episode_id']} is not stored whole and in step order")
        chunks = action_chunks(np.asarray([r["action"] for r in episode], np.float32), self.chunk)
        for r, c in zip(episode, chunks):
            yield r | {"actions": c}

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        workers = max(1, self.num_workers)
        if (info.num_workers if info else 1) != workers:
            raise ValueError(f"ReasoningStream(num_workers={self.num_workers}) is read by {info.num_workers if info else 0} DataLoader workers")
        # A resumed DataLoader starts again at its worker 0: the roles rotate so that its first batch comes
        # from the role whose batch was next when the run stopped.
        done, first = worker_skips(self.lengths(), self.batch_size, self.skip_batches) if self.skip_batches else ([0] * workers, 0)
        role = ((info.id if info else 0) + first) % workers
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{role}")
        buffer: list[dict] = []
        for emitted, row in enumerate(self._shuffled(rng, buffer, role)):
            if emitted < done[role]:  # consumed before the resume: not decoded
                continue
            yield self._sample(row)

    def _shuffled(self, rng: random.Random, buffer: list[dict], role: int) -> Iterator[dict]:
        for i in self.units(role):
            for row in self.rows(self.files[i][0]):
                buffer.append(row)
                if len(buffer) >= self.shuffle_buffer:
                    j = rng.randrange(len(buffer))
                    buffer[j], buffer[-1] = buffer[-1], buffer[j]
                    yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _sample(self, row: dict) -> dict:
        image = Image.open(io.BytesIO(primary_image(row["images"]))).convert("RGB")
        if self.augment:  # on the model-sized image, as SpatialVLA does; seeded by the sample, so a resumed run sees the same crops
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
            image = augment(image, random.Random(f"{self.seed}/{self.epoch}/{row['episode_id']}/{row['step_index']}"))
        reasoning = row["reasoning_text"] if self.use_reasoning and row["trace_status"] == "ok" else None
        sample = self.transform(np.asarray(image), row["instruction"], row["actions"], row["unnorm_key"], reasoning)
        return sample | {"episode_id": row["episode_id"], "step_index": row["step_index"], "dataset": row["dataset"]}
