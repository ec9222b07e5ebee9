"""Stage 2, annotate: a reasoning trace per step from a teacher, into `traces/<dataset>/<teacher>@<prompt>/`.

Which steps are asked (`plan`):
- `per_step` (the paper): every step.
- `keyframe`: the first step, every gripper open/close event, and at most every `keyframe_every` steps;
  every other step gets the latest keyframe's trace with its own `sub_action` derived from the recorded
  motion (`derived_from` names the keyframe), so every step still has a full trace.
A step whose stored record answers the same data (episode key), teacher model and prompt version is never
asked again; with `retry_failed` (the re-annotation flow) failed records are asked again too.

Two ways to ask:
- synchronous: steps in parallel threads (a bounded number queued, so memory does not grow with the
  dataset); the episode's JSON list is saved atomically after every answer, so a killed run resumes with
  only the in-flight steps to redo. The teacher's rate limiter is shared by all threads.
- `batch` (Gemini Batch API, half price, results within hours; `tasks/annotate_batch.py`).

Usage (answers, HTTP requests, tokens, an estimated cost) is summed per run and logged to MLflow.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from data.traces import TraceRecord, TraceStore, episode_key, teacher_tag
from models.teachers import EpisodeContext, Teacher, TeacherConfig, make_teacher
from models.teachers.offline import sub_action_from_motion
from tasks.caching import stage_cache_policy
from tasks.retry import transient_only
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")


class AnnotateConfig(BaseModel):
    """Which teacher annotates which steps, and how many requests are in flight at once."""

    model_config = ConfigDict(extra="forbid")

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    max_workers: int = Field(4, ge=1, le=256, description="Threads asking the teacher: steps (of any episodes) in flight at once.")
    mode: Literal["per_step", "keyframe"] = Field(
        "per_step", description="per_step: ask the teacher about every step (the paper); keyframe: only at keyframes, derive the rest."
    )
    keyframe_every: int = Field(10, ge=1, description="keyframe mode: at most this many steps between teacher calls.")
    retry_failed: bool = Field(False, description="Ask again steps whose stored answer failed (the re-annotation flow sets it).")
    batch: bool = Field(False, description="Gemini only: use the Batch API (half price, results within hours); resumes pending jobs.")
    batch_max_mb: float = Field(15.0, gt=0, le=19.0, description="Batch mode: request bytes per batch job (inline limit is 20 MB).")
    batch_poll_s: float = Field(60.0, gt=0, description="Batch mode: seconds between polls of a pending job.")


def keyframe_steps(actions: np.ndarray, every: int) -> list[int]:
    """The first step, the steps where the gripper command flips, and enough steps between to keep gaps ≤ `every`."""
    grip = np.asarray(actions)[:, 6] > 0.5
    events = {0} | {t for t in range(1, len(grip)) if grip[t] != grip[t - 1]}
    out, last = [], None
    for t in range(len(grip)):
        if t in events or t - last >= every:
            out.append(t)
            last = t
    return out


def _episodes(steps_dir: Path, with_images: bool):
    cols = ["episode_id", "step_index", "instruction", "action"] + (["images"] if with_images else [])
    for part in sorted(steps_dir.rglob("part-*.parquet")):
        df = pq.read_table(part, columns=cols).to_pandas()
        for episode_id, g in df.sort_values(["episode_id", "step_index"]).groupby("episode_id", sort=False):
            if list(g["step_index"]) != list(range(len(g))):
                raise ValueError(f"{part}: episode {episode_id} has steps {list(g['step_index'])}, expected 0..{len(g) - 1}")
            images = [[(im["camera"], im["encoding"], im["data"]) for im in ims if not im["dummy"]] for ims in g["images"]] if with_images else None
            yield EpisodeContext(steps_dir.name, str(episode_id), list(g["instruction"]), np.stack(g["action"].to_numpy()), images)


class EpisodePlan:
    """What to do with one episode's stored records: which steps to ask, which to derive."""

    def __init__(self, ep: EpisodeContext, records: list[dict | None], teacher: Teacher, cfg: AnnotateConfig):
        self.ep, self.records, self.key = ep, records, episode_key(ep.instructions, ep.actions)
        self.keyframes = keyframe_steps(ep.actions, cfg.keyframe_every) if cfg.mode == "keyframe" else list(range(ep.num_steps))
        self.counts = Counter()
        self.lock = threading.Lock()  # answers of one episode arrive from several threads

        def current(r: dict | None) -> bool:  # answers this data, from this teacher and prompt
            return r is not None and r.get("episode_key") == self.key and r["model"] == teacher.model and r["prompt_version"] == teacher.prompt_version

        def keep(r: dict | None) -> bool:  # a real answer to keep; failed ones are asked again on request or until out of attempts
            again = r is not None and r["status"] == "failed" and (cfg.retry_failed or r.get("attempts", 0) <= cfg.teacher.max_reasks)
            return current(r) and r.get("derived_from") is None and not again

        self.ask = [t for t in self.keyframes if not keep(records[t])]
        self.counts["stale"] = sum(r is not None and not current(r) for r in records)
        self.counts["reused"] = sum(keep(r) for r in records)
        self.keep = keep

    def set(self, step: int, rec: TraceRecord) -> None:
        rec.episode_key = self.key
        self.records[step] = rec.to_dict()
        self.counts["requested"] += 1
        self.counts["answers"] += rec.attempts
        self.counts["input_tokens"] += rec.usage.get("input_tokens", 0)
        self.counts["output_tokens"] += rec.usage.get("output_tokens", 0)

    def derive(self) -> bool:
        """Fill the steps between keyframes from the latest keyframe's record; True if a record changed."""
        keyframes, latest, changed = set(self.keyframes), 0, False
        for t in range(self.ep.num_steps):
            if t in keyframes:
                latest = t
                continue
            if self.keep(self.records[t]) or self.records[latest] is None:
                continue
            new = derived_record(self.records[latest], latest, self.ep, t) | {"episode_key": self.key}
            old = self.records[t] or {}
            if {k: v for k, v in old.items() if k != "created_at"} != {k: v for k, v in new.items() if k != "created_at"}:
                self.records[t], changed = new, True
                self.counts["derived"] += 1
            else:
                self.counts["reused"] += 1
        return changed

    def summary(self) -> Counter:
        self.counts["failed_total"] = sum(1 for r in self.records if r and r["status"] == "failed")
        self.counts["unannotated"] = sum(r is None for r in self.records)
        return self.counts


def derived_record(source: dict, source_step: int, ep: EpisodeContext, step: int) -> dict:
    """A step between keyframes: the keyframe's trace with this step's own motion as the sub-action."""
    rec = TraceRecord(step=step, status=source["status"], teacher=source["teacher"], model=source["model"],
                      prompt_version=source["prompt_version"], attempts=0, derived_from=source_step)
    if source["status"] == "ok":
        rec.trace = source["trace"] | {"sub_action": sub_action_from_motion(ep, step)}
    else:
        rec.error = f"keyframe step {source_step} failed: {source.get('error')}"
    return rec.to_dict()


def run_annotate(steps_dir: str | Path, traces_root: str | Path, cfg: AnnotateConfig = AnnotateConfig(), tracker: Tracker = Tracker(None)) -> dict:
    """Annotate every step of one dataset (`steps_dir` = steps/<dataset>, all its splits)."""
    steps_dir = Path(steps_dir)
    if not any(steps_dir.rglob("part-*.parquet")):
        raise FileNotFoundError(f"{steps_dir}: no parsed steps (part-*.parquet); run the parse stage first")
    if cfg.batch and cfg.teacher.kind != "gemini":
        raise ValueError("annotate.batch needs the Gemini teacher (annotate.teacher.kind=gemini)")
    teacher = make_teacher(cfg.teacher)
    store = TraceStore(Path(traces_root) / steps_dir.name / teacher_tag(teacher.name, teacher.prompt_version))
    if cfg.batch:
        from tasks.annotate_batch import annotate_batch

        totals, n_episodes = annotate_batch(teacher, store, lambda images=True: _episodes(steps_dir, images and teacher.needs_images), cfg)
    else:
        totals, n_episodes = _annotate_threads(teacher, store, _episodes(steps_dir, teacher.needs_images), cfg, steps_dir.name)
    summary = usage_summary(totals, n_episodes, teacher, cfg) | {"dataset": steps_dir.name, "traces_dir": str(store.root)}
    log.info("annotated %s with %s (%s): %d steps asked, %d derived, %d reused, %d failed, %d unannotated; %.2f calls/step, est. $%.4f",
             steps_dir.name, teacher.name, cfg.mode, summary["requested"], summary["derived"], summary["reused"], summary["failed"],
             summary["unannotated"], summary["calls_per_step"], summary["cost_usd"] or 0.0)
    tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return summary


def _annotate_threads(teacher: Teacher, store: TraceStore, episodes, cfg: AnnotateConfig, name: str) -> tuple[Counter, int]:
    """Ask steps in parallel threads, at most `2 * max_workers` queued or in flight (memory stays bounded),
    steps of one episode too, so the last episodes of a run do not trickle at one step at a time. Each
    answer is saved into its episode's file at once; when an episode has no step left, its keyframe-mode
    steps are derived and its counts added."""
    totals, n = Counter(), 0
    lock = threading.Lock()
    open_steps: dict[int, int] = {}  # id(plan) → steps not answered yet

    def finish(plan: EpisodePlan) -> None:
        nonlocal totals, n
        if plan.derive():
            store.save(plan.ep.episode_id, plan.records)
        with lock:
            totals += plan.summary()
            n += 1
            bar.update()
            bar.set_postfix(asked=totals["requested"], failed=totals["failed_total"])

    def ask(plan: EpisodePlan, step: int) -> None:
        rec = teacher.annotate_step(plan.ep, step)
        with plan.lock:
            plan.set(step, rec)
            store.save(plan.ep.episode_id, plan.records)
            open_steps[id(plan)] -= 1
            done = open_steps[id(plan)] == 0
        if done:
            finish(plan)

    with ThreadPoolExecutor(cfg.max_workers) as pool, tqdm(desc=f"annotate {name}", unit="episode") as bar:
        pending: set = set()
        try:
            for ep in episodes:
                plan = EpisodePlan(ep, store.load(ep.episode_id, ep.num_steps), teacher, cfg)
                if not plan.ask:
                    finish(plan)
                    continue
                open_steps[id(plan)] = len(plan.ask)
                for t in plan.ask:
                    if len(pending) >= 2 * cfg.max_workers:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            f.result()
                    pending.add(pool.submit(ask, plan, t))
            for f in as_completed(pending):
                f.result()
        except BaseException:
            for f in pending:  # drop queued steps; the running ones finish and save
                f.cancel()
            raise
    return totals, n


def usage_summary(totals: Counter, episodes: int, teacher: Teacher, cfg: AnnotateConfig) -> dict:
    """Counts, tokens and the estimated cost of one annotate run."""
    steps = totals["reused"] + totals["requested"] + totals["derived"] + totals["unannotated"]
    done_now = totals["requested"] + totals["derived"]
    prices = cfg.teacher.prices() if cfg.teacher.kind == "gemini" else None
    cost = None
    if prices is not None:
        cost = (totals["input_tokens"] * prices[0] + totals["output_tokens"] * prices[1]) / 1e6 * (0.5 if cfg.batch else 1.0)
    http = getattr(teacher, "counts", {})
    return {
        "teacher": teacher.name, "model": teacher.model, "prompt_version": teacher.prompt_version, "mode": cfg.mode,
        "episodes": episodes, "steps": steps, "requested": totals["requested"], "derived": totals["derived"],
        "reused": totals["reused"], "stale": totals["stale"], "failed": totals["failed_total"], "unannotated": totals["unannotated"],
        "answers": totals["answers"], "calls_per_step": totals["answers"] / done_now if done_now else 0.0,
        "http_requests": http.get("requests", totals["answers"]), "rate_limited": http.get("rate_limited", 0),
        "input_tokens": totals["input_tokens"], "output_tokens": totals["output_tokens"], "cost_usd": cost,
    }


@task(name="annotate", retry_condition_fn=transient_only, retries=2, retry_delay_seconds=[10, 60], cache_policy=stage_cache_policy(__name__, "steps_dir"), persist_result=True)
def annotate_task(steps_dir: str, traces_root: str, cfg: AnnotateConfig, tracking: RunRef | None = None) -> dict:
    with stage_run(tracking, f"annotate {Path(steps_dir).name}", cfg) as tracker:
        return run_annotate(steps_dir, traces_root, cfg, tracker)


@task(name="reannotate", retry_condition_fn=transient_only, retries=2, retry_delay_seconds=[60, 600], cache_policy=NO_CACHE)
def reannotate_task(steps_dir: str, traces_root: str, cfg: AnnotateConfig, tracking: RunRef | None = None) -> dict:
    """Never cached: the point is to look again at what is missing, failed or stale in the store."""
    with stage_run(tracking, f"re-annotate {Path(steps_dir).name}", cfg) as tracker:
        return run_annotate(steps_dir, traces_root, cfg.model_copy(update={"retry_failed": True}), tracker)
