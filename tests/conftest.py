"""Shared fixtures: the sample datasets and the stages run once per test session on them.

Everything is real: TFDS writes the datasets, TensorFlow parses them, the tiny student trains with
torch. Fixtures are session-scoped because each stage builds on the previous one's files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from flows import env

_HOME = tempfile.mkdtemp(prefix="refinevla-prefect-")
env.configure()
os.environ["PREFECT_HOME"] = _HOME  # tests never touch the project's .prefect
os.environ.pop("MLFLOW_TRACKING_URI", None)

SAMPLE_SETTINGS = dict(seed=7, bridge_train_episodes=3, bridge_val_episodes=2, fractal_episodes=3, num_shards=2, bridge_unlabelled_episodes=1)
TINY_FINETUNE = dict(base_model="tiny", learning_rate=3e-3, batch_size=4, max_steps=4, save_steps=2, warmup_ratio=0.0,
                     freeze_first_n_layers=1, freeze_embeddings=False, max_reasoning_tokens=64)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    from data.sample import SampleConfig, write_sample_datasets

    root = tmp_path_factory.mktemp("datasets")
    write_sample_datasets(root, SampleConfig(**SAMPLE_SETTINGS))
    return root


@pytest.fixture(scope="session")
def bridge_dir(sample_root) -> Path:
    return sample_root / "bridge_dataset" / "1.0.0"


@pytest.fixture(scope="session")
def fractal_dir(sample_root) -> Path:
    return sample_root / "fractal20220817_data" / "0.1.0"


@pytest.fixture(scope="session")
def openx_dir(tmp_path_factory) -> Path:
    """Open-X `bridge` 0.1.0 (PNG 480x640 frames), written by TFDS; only the RLDS tests need it."""
    from data.sample import SampleConfig, write_sample_datasets

    root = tmp_path_factory.mktemp("openx")
    write_sample_datasets(root, SampleConfig(seed=3, bridge_train_episodes=1, bridge_val_episodes=1, fractal_episodes=0, openx_bridge_episodes=2))
    return root / "bridge" / "0.1.0"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory, bridge_dir, fractal_dir) -> Path:
    """parse → annotate (offline) → build, on both sample datasets."""
    from tasks.annotate import run_annotate
    from tasks.build import run_build
    from tasks.parse import run_parse

    w = tmp_path_factory.mktemp("work")
    for d, splits in ((bridge_dir, ("train", "val")), (fractal_dir, ("train",))):
        for s in splits:
            run_parse(d, s, w / "steps")
    for name in ("bridge_dataset", "fractal20220817_data"):
        a = run_annotate(w / "steps" / name, w / "traces")
        run_build(w / "steps" / name, a["traces_dir"], w / "reasoning" / name)
    return w


@pytest.fixture(scope="session")
def reasoning_dirs(workdir) -> list[Path]:
    return [workdir / "reasoning" / "bridge_dataset", workdir / "reasoning" / "fractal20220817_data"]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, reasoning_dirs) -> Path:
    from tasks.finetune import FinetuneConfig, run_finetune

    out = tmp_path_factory.mktemp("ckpt") / "run"
    return Path(run_finetune(reasoning_dirs, out, FinetuneConfig(**TINY_FINETUNE))["checkpoint"])


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API (SQLite, subprocess server) for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
