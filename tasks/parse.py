"""Stage 1, parse: RLDS TFRecords → `steps/<dataset>/<split>/part-<shard>.parquet`, one row per step.

One Parquet part per source shard, written atomically; a shard whose part exists is not read again, so
a killed parse resumes at the first unfinished shard.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, Field
from tqdm import tqdm

from data.io import write_parquet_atomic
from data.rlds import episode_rows, iter_episodes, open_rlds
from data.schema import STEP_SCHEMA
from tasks.caching import stage_cache_policy
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")


class ParseConfig(BaseModel):
    """How RLDS shards are read."""

    max_shards: int | None = Field(None, ge=1, description="Read only the first N shards of the split (None: all).")
    row_group_size: int = Field(256, ge=16, le=65536, description="Rows per Parquet row group (steps carry images).")


def run_parse(dataset_dir: str | Path, split: str, out_dir: str | Path, cfg: ParseConfig = ParseConfig(), tracker: Tracker = Tracker(None)) -> dict:
    ds = open_rlds(dataset_dir)
    dest = Path(out_dir) / ds.name / split
    if split not in ds.splits:
        raise ValueError(f"{ds.path}: no split '{split}' (has {sorted(ds.splits)})")
    shards = ds.splits[split][: cfg.max_shards]
    parsed = reused = episodes = steps = 0
    for shard in tqdm(shards, desc=f"parse {ds.name}/{split}", unit="shard"):
        part = dest / f"part-{shard.name}.parquet"
        if part.exists():
            t = pq.read_table(part, columns=["episode_id"])
            reused += 1
        else:
            rows = [row for ep in iter_episodes(ds, split, [shard]) for row in episode_rows(ds, split, ep)]
            t = pa.Table.from_pylist(rows, schema=STEP_SCHEMA)
            write_parquet_atomic(part, t, cfg.row_group_size)
            parsed += 1
        episodes += len(set(t.column("episode_id").to_pylist()))
        steps += t.num_rows
    summary = {"dataset": ds.name, "version": ds.version, "flavour": ds.flavour, "split": split, "steps_dir": str(Path(out_dir) / ds.name),
               "episodes": episodes, "steps": steps, "shards_parsed": parsed, "shards_reused": reused}
    log.info("parsed %s/%s: %d episodes, %d steps (%d shards read, %d already done)", ds.name, split, episodes, steps, parsed, reused)
    tracker.log_metrics({"episodes": episodes, "steps": steps, "shards_parsed": parsed, "shards_reused": reused})
    return summary


@task(name="parse", retries=1, retry_delay_seconds=5, cache_policy=stage_cache_policy(__name__, "dataset_dir"), persist_result=True)
def parse_task(dataset_dir: str, split: str, out_dir: str, cfg: ParseConfig, tracking: RunRef | None = None) -> dict:
    with stage_run(tracking, f"parse {Path(dataset_dir).parent.name}/{split}", cfg) as tracker:
        return run_parse(dataset_dir, split, out_dir, cfg, tracker)
