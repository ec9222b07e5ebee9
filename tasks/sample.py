"""Stage 0: write the bundled sample datasets (the demo's input when no dataset is given)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from data.sample import SampleConfig, write_sample_datasets
from tasks.caching import stage_cache_policy


def run_sample(out_dir: str | Path, cfg: SampleConfig = SampleConfig()) -> list[str]:
    return [str(p) for p in write_sample_datasets(out_dir, cfg)]


@task(name="sample", cache_policy=stage_cache_policy(__name__, "out_dir"), persist_result=True)
def sample_task(out_dir: str, cfg: SampleConfig) -> list[str]:
    return run_sample(out_dir, cfg)
