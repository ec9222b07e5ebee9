"""Stage 0: write the bundled sample datasets (the demo's input when no dataset is given)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from data.sample import SampleConfig, write_sample_datasets


def run_sample(out_dir: str | Path, cfg: SampleConfig = SampleConfig()) -> list[str]:
    return [str(p) for p in write_sample_datasets(out_dir, cfg)]


@task(name="sample", cache_policy=NO_CACHE)
def sample_task(out_dir: str, cfg: SampleConfig) -> list[str]:
    """Not cached: `write_sample_datasets` itself checks in milliseconds whether the datasets on disk are up to date."""
    return run_sample(out_dir, cfg)
