"""Stage 1, parse: RLDS TFRecords → `steps/<dataset>/<split>/part-<shard>.parquet`, one row per step.

One Parquet part per source shard, streamed episode by episode in row groups and renamed into place when
the shard is done. Each part records what produced it (the shard's content fingerprint, the settings that
change rows, the parsing code); a shard whose part matches is not read again, so a killed parse resumes at
the first unfinished shard, and changed data, settings or code re-parse only what they affect. The flow maps `parse_task` over groups of shards (`shard_groups`), so several workers
can share a dataset. Each parsed shard gets `_reports/<shard>.json` next to the parts (readers ignore `_`
folders): its broken episodes (skip mode keeps the rest of the shard) and how many had no instruction.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from data.io import ParquetPartWriter, fingerprint, part_metadata, read_json, write_json_atomic
from data.rlds import ParseReport, RldsError, episode_rows, iter_episodes, open_rlds
from data.schema import STEP_SCHEMA
from tasks.caching import code_hash, stage_cache_policy
from tasks.retry import transient_only
from tasks.tracking import Tracker

log = logging.getLogger("refinevla")


class ParseConfig(BaseModel):
    """How RLDS shards are read."""

    model_config = ConfigDict(extra="forbid")

    on_error: Literal["raise", "skip"] = Field("raise", description="Bad episode: stop with an error naming file and record, or record it in _reports/ and go on.")
    empty_instruction: Literal["keep", "skip", "error"] = Field("keep", description="Episodes recorded without language: keep them (instruction ''), leave them out, or stop.")
    shards_per_task: int = Field(8, ge=1, description="Shards per Prefect task; tasks run in parallel and can go to different workers.")
    max_shards: int | None = Field(None, ge=1, description="Read only the first N shards of each split (None: all).")
    row_group_size: int = Field(256, ge=16, le=65536, description="Rows (steps, with their images) per Parquet row group.")


def _split_shards(ds, split: str, cfg: ParseConfig) -> list[Path]:
    if split not in ds.splits:
        raise ValueError(f"{ds.path}: no split '{split}' (has {sorted(ds.splits)})")
    return ds.splits[split][: cfg.max_shards]


def shard_groups(dataset_dir: str | Path, split: str, cfg: ParseConfig) -> list[list[str]]:
    files = [str(f) for f in _split_shards(open_rlds(dataset_dir), split, cfg)]
    return [files[i : i + cfg.shards_per_task] for i in range(0, len(files), cfg.shards_per_task)]


def run_parse(dataset_dir: str | Path, split: str, out_dir: str | Path, cfg: ParseConfig = ParseConfig(),
              shards: list[str] | None = None, tracker: Tracker = Tracker(None)) -> dict:
    """Parse `shards` of a split (default: all, up to max_shards) into Parquet parts under out_dir/<dataset>/<split>."""
    ds = open_rlds(dataset_dir)
    files = [Path(s) for s in shards] if shards else _split_shards(ds, split, cfg)
    dest = Path(out_dir) / ds.name / split
    parsed = reused = episodes = steps = 0
    report = ParseReport()
    settings = json.dumps({"on_error": cfg.on_error, "empty_instruction": cfg.empty_instruction, "code": code_hash(__name__)})
    for shard in tqdm(files, desc=f"parse {ds.name}/{split}", unit="shard"):
        part = dest / f"part-{shard.name}.parquet"
        shard_report_path = dest / "_reports" / f"{shard.name}.json"
        if not shard.exists():  # no part: the shard is parsed when it comes back
            err = f"{shard}: shard listed in dataset_info.json is missing"
            if cfg.on_error == "raise":
                raise RldsError(err)
            report.broken.append({"file": str(shard), "record": -1, "error": err})
            continue
        produced_by = {"refinevla.source": fingerprint([shard]), "refinevla.settings": settings}
        if part.exists() and shard_report_path.exists() and part_metadata(part) == produced_by:
            ids = pq.read_table(part, columns=["episode_id"]).column("episode_id").to_pylist()
            episodes, steps, reused = episodes + len(set(ids)), steps + len(ids), reused + 1
            previous = read_json(shard_report_path)
            report.broken += previous["broken"]
            report.unlabelled += previous["unlabelled"]
            continue
        shard_report = ParseReport()
        with ParquetPartWriter(part, STEP_SCHEMA, cfg.row_group_size, produced_by) as writer:
            for ep in iter_episodes(ds, split, [shard], cfg.on_error, cfg.empty_instruction, shard_report):
                writer.write_rows(episode_rows(ds, split, ep))
                episodes += 1
            steps += writer.count
        write_json_atomic(shard_report_path, {"broken": shard_report.broken, "unlabelled": shard_report.unlabelled})
        report.broken += shard_report.broken
        report.unlabelled += shard_report.unlabelled
        parsed += 1
    summary = {"dataset": ds.name, "version": ds.version, "flavour": ds.flavour, "split": split, "steps_dir": str(Path(out_dir) / ds.name),
               "episodes": episodes, "steps": steps, "shards_parsed": parsed, "shards_reused": reused,
               "broken_episodes": len(report.broken), "unlabelled_episodes": report.unlabelled, "errors": report.broken}
    log.info("parsed %s/%s: %d episodes, %d steps (%d shards read, %d already done, %d broken episodes)",
             ds.name, split, episodes, steps, parsed, reused, len(report.broken))
    tracker.log_metrics({k: summary[k] for k in ("episodes", "steps", "shards_parsed", "shards_reused", "broken_episodes", "unlabelled_episodes")})
    return summary


def merge_summaries(parts: list[dict]) -> dict:
    """One summary per (dataset, split) from the summaries of its shard groups."""
    out = {k: parts[0][k] for k in ("dataset", "version", "flavour", "split", "steps_dir")}
    for k in ("episodes", "steps", "shards_parsed", "shards_reused", "broken_episodes", "unlabelled_episodes"):
        out[k] = sum(p[k] for p in parts)
    out["errors"] = [e for p in parts for e in p["errors"]]
    return out


@task(name="parse", retry_condition_fn=transient_only, retries=1, retry_delay_seconds=5, cache_policy=stage_cache_policy(__name__, "shards"), persist_result=True)
def parse_task(dataset_dir: str, split: str, shards: list[str], out_dir: str, cfg: ParseConfig) -> dict:
    """One group of shards; the flow logs the merged figures to MLflow."""
    return run_parse(dataset_dir, split, out_dir, cfg, shards)
