"""Stage 2, annotate: a reasoning trace per step from a teacher, into `traces/<dataset>/<teacher>@<prompt>/`.

Episodes are annotated in parallel threads (a bounded number in flight, so memory does not grow with the
dataset); inside an episode, steps go in order and the episode's JSON list is saved atomically after every
step. A step with a record (ok or failed) for the same episode content is never asked again, so a killed
run resumes with only the in-flight steps to redo; records of data that has changed since are asked again.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from data.traces import TraceStore, episode_key, teacher_tag
from models.teachers import EpisodeContext, Teacher, TeacherConfig, make_teacher
from tasks.caching import stage_cache_policy
from tasks.retry import transient_only
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")


class AnnotateConfig(BaseModel):
    """Which teacher annotates, and how many episodes are in flight at once."""

    model_config = ConfigDict(extra="forbid")

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    max_workers: int = Field(4, ge=1, le=256, description="Episodes annotated in parallel (threads).")


def _episodes(steps_dir: Path, with_images: bool):
    cols = ["episode_id", "step_index", "instruction", "action"] + (["images"] if with_images else [])
    for part in sorted(steps_dir.rglob("part-*.parquet")):
        df = pq.read_table(part, columns=cols).to_pandas()
        for episode_id, g in df.sort_values(["episode_id", "step_index"]).groupby("episode_id", sort=False):
            if list(g["step_index"]) != list(range(len(g))):
                raise ValueError(f"{part}: episode {episode_id} has steps {list(g['step_index'])}, expected 0..{len(g) - 1}")
            images = [[(im["camera"], im["encoding"], im["data"]) for im in ims if not im["dummy"]] for ims in g["images"]] if with_images else None
            yield EpisodeContext(steps_dir.name, str(episode_id), list(g["instruction"]), np.stack(g["action"].to_numpy()), images)


def annotate_episode(teacher: Teacher, store: TraceStore, ep: EpisodeContext) -> Counter:
    records = store.load(ep.episode_id, ep.num_steps)
    key = episode_key(ep.instructions, ep.actions)
    counts = Counter()
    for t in range(ep.num_steps):
        if records[t] is not None and records[t].get("episode_key") == key:
            counts["reused"] += 1
            continue
        counts["stale"] += records[t] is not None
        rec = teacher.annotate_step(ep, t)
        rec.episode_key = key
        records[t] = rec.to_dict()
        store.save(ep.episode_id, records)
        counts["requested"] += 1
        counts[rec.status] += 1
    counts["failed_total"] = sum(1 for r in records if r and r["status"] == "failed")
    return counts


def run_annotate(steps_dir: str | Path, traces_root: str | Path, cfg: AnnotateConfig = AnnotateConfig(), tracker: Tracker = Tracker(None)) -> dict:
    """Annotate every step of one dataset (`steps_dir` = steps/<dataset>, all its splits)."""
    steps_dir = Path(steps_dir)
    if not any(steps_dir.rglob("part-*.parquet")):
        raise FileNotFoundError(f"{steps_dir}: no parsed steps (part-*.parquet); run the parse stage first")
    teacher = make_teacher(cfg.teacher)
    store = TraceStore(Path(traces_root) / steps_dir.name / teacher_tag(teacher.name, teacher.prompt_version))
    totals, episodes, steps = Counter(), 0, 0
    in_flight: deque = deque()
    with ThreadPoolExecutor(cfg.max_workers) as pool, tqdm(desc=f"annotate {steps_dir.name}", unit="episode") as bar:

        def collect() -> None:
            nonlocal episodes, steps, totals
            c = in_flight.popleft().result()
            totals += c
            episodes += 1
            steps += c["reused"] + c["requested"]
            bar.update()

        for ep in _episodes(steps_dir, teacher.needs_images):
            in_flight.append(pool.submit(annotate_episode, teacher, store, ep))
            if len(in_flight) >= 2 * cfg.max_workers:
                collect()
        while in_flight:
            collect()
    summary = {
        "dataset": steps_dir.name, "traces_dir": str(store.root), "teacher": teacher.name, "model": teacher.model,
        "prompt_version": teacher.prompt_version, "episodes": episodes, "steps": steps,
        "requested": totals["requested"], "reused": totals["reused"], "stale": totals["stale"], "failed": totals["failed_total"],
    }
    log.info("annotated %s with %s: %d steps asked, %d reused, %d failed", steps_dir.name, teacher.name, summary["requested"], summary["reused"], summary["failed"])
    tracker.log_metrics({k: summary[k] for k in ("episodes", "steps", "requested", "reused", "stale", "failed")})
    return summary


@task(name="annotate", retry_condition_fn=transient_only, retries=2, retry_delay_seconds=[10, 60], cache_policy=stage_cache_policy(__name__, "steps_dir"), persist_result=True)
def annotate_task(steps_dir: str, traces_root: str, cfg: AnnotateConfig, tracking: RunRef | None = None) -> dict:
    with stage_run(tracking, f"annotate {Path(steps_dir).name}", cfg) as tracker:
        return run_annotate(steps_dir, traces_root, cfg, tracker)
