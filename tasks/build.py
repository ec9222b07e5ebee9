"""Stage 3, build: steps + traces → `reasoning/<dataset>/{train,val}/part-*.parquet`, stats.json, README.md.

Episodes are split into train/val deterministically (rank of a seeded hash of the episode id, at least one
val episode when there are two or more). Every step is kept, with `trace_status` ok / failed / missing /
stale (a trace asked about other data than these steps), so nothing is lost and training uses only ok. Action statistics (SpatialVLA's processor shape,
keyed by unnorm_key) are computed on the train split. Parts are written part by part (bounded memory)
and each file appears atomically.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from data.io import ParquetPartWriter, fingerprint, part_metadata, read_json, write_json_atomic, write_text_atomic
from data.schema import REASONING_SCHEMA, SCHEMA_VERSION, TRACE_COLUMNS, schema_table
from data.statistics import dataset_statistics, unnorm_key
from data.traces import TRACE_FIELDS, Trace, episode_key
from tasks.caching import code_hash, stage_cache_policy
from tasks.retry import transient_only
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")
SPLITS = ("train", "val")


class BuildConfig(BaseModel):
    """How the reasoning dataset is split and written."""

    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="Share of episodes held out for validation.")
    split_seed: int = Field(0, description="Seed of the episode → split assignment.")
    row_group_size: int = Field(256, ge=16, le=65536, description="Rows per Parquet row group.")
    workers: int = Field(4, ge=1, le=64, description="Parts built in parallel threads (each holds one steps part in memory; reads and writes overlap).")


def assign_splits(episode_ids: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    ranked = sorted(set(episode_ids), key=lambda e: hashlib.sha1(f"{seed}:{e}".encode()).hexdigest())
    n_val = round(val_fraction * len(ranked))
    if val_fraction > 0 and len(ranked) >= 2:
        n_val = max(n_val, 1)
    return {e: ("val" if i < n_val else "train") for i, e in enumerate(ranked)}


def _trace_columns(record: dict | None, key: str) -> dict:
    empty = {k: None for k in TRACE_FIELDS} | {"reasoning_text": None, "teacher": None, "teacher_model": None, "prompt_version": None,
                                               "trace_derived_from": None}
    if record is None:
        return empty | {"trace_status": "missing", "trace_error": "no annotation for this step"}
    base = empty | {"teacher": record["teacher"], "teacher_model": record["model"], "prompt_version": record["prompt_version"],
                    "trace_status": record["status"], "trace_error": record.get("error"), "trace_derived_from": record.get("derived_from")}
    if record.get("episode_key") != key:
        return base | {"trace_status": "stale", "trace_error": "the trace was asked about other data; annotate again"}
    if record["status"] != "ok":
        return base
    trace = Trace.from_dict(record["trace"])
    return base | trace.to_dict() | {"reasoning_text": trace.to_text()}


def _part_key(part: Path, episodes: list[str], traces_dir: Path, split_of: dict[str, str], cfg: BuildConfig) -> str:
    """What a reasoning part is made of: its steps part, its episodes' trace files, their splits, the
    settings and the code. A part whose key is unchanged is not written again."""
    h = hashlib.sha256(f"{fingerprint([part])}|{cfg.row_group_size}|{code_hash(__name__)}".encode())
    for e in episodes:
        trace = traces_dir / f"{e}.json"
        h.update(f"|{e}:{split_of[e]}:".encode())
        h.update(hashlib.sha1(trace.read_bytes()).digest() if trace.exists() else b"-")
    return h.hexdigest()[:20]


SUMMARY_COLUMNS = ["dataset", "dataset_version", "episode_id", "action", "state", "trace_status"]


def _build_part(part: Path, traces_dir: Path, split_of: dict[str, str], outputs: dict[str, Path], key: str, cfg: BuildConfig) -> dict:
    """Join one steps part with its traces; write one reasoning part per split (atomically, in row groups).
    The step columns stay Arrow (images are never turned into Python objects); only the small trace
    columns are built row by row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pq.read_table(part)
    if table.num_rows == 0:  # every episode of the shard was skipped at parse time
        return {}
    ids, steps = table.column("episode_id").to_pylist(), table.column("step_index").to_pylist()
    instructions = table.column("instruction").to_pylist()
    actions = np.stack(table.column("action").to_numpy(zero_copy_only=False))
    rows_of: dict[str, list[int]] = {}
    for i, e in enumerate(ids):
        rows_of.setdefault(e, []).append(i)
    trace_rows = [None] * len(ids)
    for e, idx in rows_of.items():
        idx = sorted(idx, key=lambda i: steps[i])
        path = traces_dir / f"{e}.json"
        records = read_json(path) if path.exists() else []
        ekey = episode_key([instructions[i] for i in idx], actions[idx])
        for i in idx:
            trace_rows[i] = _trace_columns(records[steps[i]] if steps[i] < len(records) else None, ekey)
    ukey = unnorm_key(table.column("dataset")[0].as_py(), table.column("dataset_version")[0].as_py())
    extra = pa.Table.from_pylist(trace_rows, schema=pa.schema(TRACE_COLUMNS))
    full = pa.Table.from_arrays([*table.columns, pa.array([ukey] * len(ids), pa.string()), *extra.columns], schema=REASONING_SCHEMA)
    split_col = pa.array([split_of[e] for e in ids])
    out = {}
    for split, dest in outputs.items():
        sub = full.filter(pc.equal(split_col, split))
        with ParquetPartWriter(dest, REASONING_SCHEMA, cfg.row_group_size, {"refinevla.input": key}) as writer:
            writer.write_table(sub)
        out[split] = sub.select(SUMMARY_COLUMNS)
    return out


def run_build(steps_dir: str | Path, traces_dir: str | Path, out_dir: str | Path, cfg: BuildConfig = BuildConfig(), tracker: Tracker = Tracker(None)) -> dict:
    """Build one dataset: `steps_dir` = steps/<dataset>, `traces_dir` = traces/<dataset>/<teacher>@<prompt>."""
    steps_dir, traces_dir, out_dir = Path(steps_dir), Path(traces_dir), Path(out_dir)
    parts = sorted(steps_dir.rglob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{steps_dir}: no parsed steps")
    episode_ids = []
    where: dict[str, str] = {}
    episodes_of: dict[Path, list[str]] = {}
    for p in parts:
        ids = set(pq.read_table(p, columns=["episode_id"]).column("episode_id").to_pylist())
        clash = ids & where.keys()
        if clash:
            e = sorted(clash)[0]
            raise ValueError(f"episode {e} appears in {where[e]} and in {p}: the source holds the same episode twice")
        where |= dict.fromkeys(ids, str(p))
        episodes_of[p] = sorted(ids)
        episode_ids += ids
    split_of = assign_splits(episode_ids, cfg.val_fraction, cfg.split_seed)

    status = Counter()
    train_actions, train_states, counts = [], [], {s: Counter() for s in SPLITS}
    written: dict[str, set] = {s: set() for s in SPLITS}
    reused = 0
    dataset = version = None

    def one_part(i: int, part: Path) -> tuple[str, dict, bool]:
        name = f"part-{i:05d}.parquet"
        key = _part_key(part, episodes_of[part], traces_dir, split_of, cfg)
        outputs = {split: out_dir / split / name for split in {split_of[e] for e in episodes_of[part]}}
        if all(f.exists() and part_metadata(f).get("refinevla.input") == key for f in outputs.values()):  # finished earlier
            return name, {split: pq.read_table(f, columns=SUMMARY_COLUMNS) for split, f in outputs.items()}, True
        return name, _build_part(part, traces_dir, split_of, outputs, key, cfg), False

    # Parts in parallel threads (Arrow reads, joins and writes release the GIL); results in part order.
    with ThreadPoolExecutor(cfg.workers) as pool:
        done = pool.map(lambda a: one_part(*a), enumerate(parts))
        for name, rows_by_split, was_reused in tqdm(done, total=len(parts), desc=f"build {steps_dir.name}", unit="part"):
            reused += was_reused
            for split, rows in rows_by_split.items():
                if rows.num_rows == 0:
                    continue
                dataset, version = rows.column("dataset")[0].as_py(), rows.column("dataset_version")[0].as_py()
                written[split].add(name)
                status.update(rows.column("trace_status").to_pylist())
                counts[split]["steps"] += rows.num_rows
                counts[split]["episodes"] += len(set(rows.column("episode_id").to_pylist()))
                if split == "train":
                    train_actions += list(rows.column("action").to_numpy(zero_copy_only=False))
                    train_states += list(rows.column("state").to_numpy(zero_copy_only=False))
    for split in SPLITS:  # parts of an earlier build (other split settings, more parts) must not linger
        for old in (out_dir / split).glob("part-*.parquet"):
            if old.name not in written[split]:
                old.unlink()
    if not train_actions:
        raise ValueError(f"{steps_dir}: no train episodes (val_fraction={cfg.val_fraction}, {len(split_of)} episodes)")

    key = unnorm_key(dataset, version)
    stats = {key: dataset_statistics(np.stack(train_actions), np.stack(train_states), counts["train"]["episodes"])}
    write_json_atomic(out_dir / "stats.json", stats)
    summary = {
        "dataset": dataset, "version": version, "unnorm_key": key, "out_dir": str(out_dir), "stats": str(out_dir / "stats.json"),
        "train_steps": counts["train"]["steps"], "val_steps": counts["val"]["steps"],
        "train_episodes": counts["train"]["episodes"], "val_episodes": counts["val"]["episodes"],
        "trace_ok": status["ok"], "trace_failed": status["failed"], "trace_missing": status["missing"], "trace_stale": status["stale"],
        "parts_built": len(parts) - reused, "parts_reused": reused,
    }
    write_text_atomic(out_dir / "README.md", dataset_card(summary, traces_dir))
    log.info("built %s: %d train / %d val steps; traces ok %d, failed %d, missing %d, stale %d", dataset, summary["train_steps"],
             summary["val_steps"], status["ok"], status["failed"], status["missing"], status["stale"])
    tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, int)})
    tracker.log_artifact(out_dir / "stats.json")
    tracker.log_artifact(out_dir / "README.md")
    return summary


def dataset_card(s: dict, traces_dir: Path) -> str:
    return f"""# {s['dataset']} {s['version']} with reasoning traces

Built by refinevla: every step of the source RLDS dataset, with a four-part reasoning trace
(`observation`, `situation_analysis`, `spatial_reasoning`, `task_planning`, `logical_steps`, `sub_action`)
from the teacher in `{traces_dir.name}` (teacher@prompt-version).

| split | episodes | steps |
|---|---|---|
| train | {s['train_episodes']} | {s['train_steps']} |
| val | {s['val_episodes']} | {s['val_steps']} |

Trace status: ok {s['trace_ok']}, failed {s['trace_failed']}, missing {s['trace_missing']}, stale {s['trace_stale']}
(rows are kept either way; filter on `trace_status`).

- Files: `train/part-*.parquet`, `val/part-*.parquet` (schema: `data/schema.py` REASONING_SCHEMA), `stats.json`
  (action/proprio statistics of the train split under the key `{s['unnorm_key']}`, SpatialVLA's processor shape).
- Actions: `action` is [dx, dy, dz, droll, dpitch, dyaw, gripper] with an absolute gripper (1 = open); `action_raw`
  is what the dataset recorded.
- Licence: that of the source dataset (the bundled sample is synthetic, generated by refinevla); the traces are
  derived data, subject to the teacher's terms of use.
- Reading: `pandas.read_parquet("train")`, `pyarrow.dataset.dataset("train")`, DuckDB
  `SELECT * FROM read_parquet('train/*.parquet')`, or `datasets.load_dataset("parquet", data_files={{"train": "train/*.parquet"}})`.

## Columns (also in each file's Arrow field metadata, schema version {SCHEMA_VERSION})

{schema_table(REASONING_SCHEMA)}
"""


@task(name="build", retry_condition_fn=transient_only, retries=1, retry_delay_seconds=5, cache_policy=stage_cache_policy(__name__, "steps_dir", "traces_dir"), persist_result=True)
def build_task(steps_dir: str, traces_dir: str, out_dir: str, cfg: BuildConfig, tracking: RunRef | None = None) -> dict:
    with stage_run(tracking, f"build {Path(steps_dir).name}", cfg) as tracker:
        return run_build(steps_dir, traces_dir, out_dir, cfg, tracker)
