"""Annotation through the Gemini Batch API: half the price, results within hours, resumable.

Rounds: plan every episode as the synchronous mode does (`EpisodePlan`), submit the steps to ask as
batch jobs of at most `batch_max_mb`, poll, write the answers into the episode files; answers that
failed (malformed, or a per-request error) are asked again in the next round until the teacher's
`max_reasks` is spent. Each submitted job is recorded in `<traces>/_batches/<job>.json` (its name and
request keys) right after it is created; a restarted run polls those jobs first and never submits a key
that a pending job already holds, so a kill loses no paid work and duplicates none. (A kill in the
instant between the job's creation and that write would orphan the job; its answers are then asked again.)
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from data.io import read_json, write_json_atomic
from data.traces import TraceRecord, TraceStore
from models.teachers.base import TeacherUnavailable
from tasks.annotate import EpisodePlan  # tasks.annotate imports this module only inside run_annotate: no cycle

log = logging.getLogger("refinevla")


def _pending(jobs_dir: Path) -> dict[str, dict]:
    return {p.stem: read_json(p) for p in sorted(jobs_dir.glob("*.json"))} if jobs_dir.exists() else {}


def annotate_batch(teacher, store: TraceStore, episodes_fn, cfg) -> tuple[Counter, int]:
    """Annotate through batch jobs; `episodes_fn(with_images=True)` yields the dataset's `EpisodeContext`s afresh."""
    jobs_dir = store.root / "_batches"
    totals, asked = Counter(), set()
    for round_ in range(cfg.teacher.max_reasks + 2):
        held = {k for job in _pending(jobs_dir).values() for k in job["keys"]}
        submitted = _submit_round(teacher, store, episodes_fn(), cfg, jobs_dir, held, round_)
        if not submitted and not held:
            break
        totals += _collect(teacher, store, jobs_dir, cfg, episodes_fn, asked)
    # Final pass: derive keyframe-mode steps and count what the store now holds.
    final, n = Counter(), 0
    for ep in episodes_fn(False):
        plan = EpisodePlan(ep, store.load(ep.episode_id, ep.num_steps), teacher, cfg)
        if plan.derive():
            store.save(ep.episode_id, plan.records)
        final += plan.summary()
        n += 1
    for k in ("answers", "input_tokens", "output_tokens"):
        final[k] = totals[k]
    final["requested"] = len(asked)  # steps, however many answers each took
    final["reused"] = max(0, final["reused"] - len(asked))
    if _pending(jobs_dir):
        log.warning("batch jobs still pending in %s; run again to collect them", jobs_dir)
    return final, n


def _submit_round(teacher, store, episodes, cfg, jobs_dir: Path, held: set[str], round_: int) -> int:
    batch, size, submitted = [], 0, 0

    def flush() -> None:
        nonlocal batch, size, submitted
        if not batch:
            return
        name = teacher.submit_batch([r for _, r in batch], display_name=f"refinevla-{store.root.parent.name}-r{round_}")
        write_json_atomic(jobs_dir / f"{name.rsplit('/', 1)[-1]}.json", {
            "name": name, "keys": [k for k, _ in batch], "submitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        log.info("submitted batch job %s with %d requests", name, len(batch))
        submitted += len(batch)
        batch, size = [], 0

    try:
        for ep in episodes:
            plan = EpisodePlan(ep, store.load(ep.episode_id, ep.num_steps), teacher, cfg)
            for t in plan.ask:
                key = f"{ep.episode_id}/{t}"
                if key in held:
                    continue
                request, nbytes = teacher.batch_request(ep, t, key)
                if batch and size + nbytes > cfg.batch_max_mb * 1e6:
                    flush()
                batch.append((key, request))
                size += nbytes
        flush()
    except TeacherUnavailable as e:  # e.g. too many jobs in flight: collect what is submitted, submit the rest later
        log.warning("%s; collecting the %d submitted requests first", e, submitted)
    return submitted


def _collect(teacher, store: TraceStore, jobs_dir: Path, cfg, episodes_fn, asked: set) -> Counter:
    """Poll every recorded job until it ends; write its answers into the episode files."""
    counts = Counter()
    jobs = _pending(jobs_dir)
    while jobs:
        answers: dict[str, dict[int, tuple]] = {}
        finished = []
        for stem, job in list(jobs.items()):
            state, results = teacher.batch_results(job["name"])
            if state == "pending":
                continue
            if state != "succeeded":
                log.warning("batch job %s ended %s; its %d steps will be asked again", job["name"], state, len(job["keys"]))
            for key, response, error in results or []:
                episode_id, step = key.rsplit("/", 1)
                answers.setdefault(episode_id, {})[int(step)] = (response, error)
            finished.append(stem)
            del jobs[stem]
        counts += _apply(teacher, store, cfg, episodes_fn, answers, asked)  # one pass over the data per poll
        for stem in finished:
            (jobs_dir / f"{stem}.json").unlink()  # only once its answers are on disk
        if jobs:
            time.sleep(cfg.batch_poll_s)
    return counts


def _apply(teacher, store: TraceStore, cfg, episodes_fn, answers: dict[str, dict[int, tuple]], asked: set) -> Counter:
    counts = Counter()
    if not answers:
        return counts
    for ep in episodes_fn(False):
        if ep.episode_id not in answers:
            continue
        plan = EpisodePlan(ep, store.load(ep.episode_id, ep.num_steps), teacher, cfg)
        for step, (response, error) in answers[ep.episode_id].items():
            if step not in plan.ask:  # answered meanwhile (e.g. results collected twice after a kill)
                continue
            old = plan.records[step]
            previous = TraceRecord(**old) if old and old.get("episode_key") == plan.key and old["status"] == "failed" else None
            rec = teacher.record(step, response, previous, error)
            plan.set(step, rec)
            asked.add((ep.episode_id, step))
            counts["answers"] += 1
            for k in ("input_tokens", "output_tokens"):
                counts[k] += rec.usage.get(k, 0) - (previous.usage.get(k, 0) if previous else 0)
        store.save(ep.episode_id, plan.records)
    return counts
