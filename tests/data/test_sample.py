import json

import numpy as np
import pytest

from data.io import read_json
from data.sample import SIDECAR, SampleConfig, write_sample_datasets
from tests.conftest import SAMPLE_SETTINGS


def test_sample_is_real_tfds_layout(bridge_dir, fractal_dir):
    info = read_json(bridge_dir / "dataset_info.json")
    assert info["name"] == "bridge_dataset" and info["version"] == "1.0.0"
    assert {s["name"]: len(s["shardLengths"]) for s in info["splits"]} == {"train": 2, "val": 2}
    assert (bridge_dir / "bridge_dataset-train.tfrecord-00000-of-00002").exists()
    assert (fractal_dir / "fractal20220817_data-train.tfrecord-00001-of-00002").exists()
    features = json.dumps(read_json(bridge_dir / "features.json"))
    for cls in ("image_feature.Image", "text_feature.Text", "scalar.Scalar", "dataset_feature.Dataset"):
        assert cls in features
    assert '"encodingFormat": "jpeg"' in features


def test_tfds_reads_the_sample_back(bridge_dir, fractal_dir):
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(str(bridge_dir))
    assert b.info.splits["train"].num_examples == SAMPLE_SETTINGS["bridge_train_episodes"]
    ep = next(iter(b.as_dataset(split="val").take(1)))
    steps = list(ep["steps"])
    assert steps[0]["observation"]["image_0"].shape == (256, 256, 3)
    assert steps[0]["language_instruction"].numpy().decode()  # non-empty instruction
    assert np.all(steps[-1]["action"].numpy() == 0)  # Bridge ends with an all-zero action, like the release
    f = tfds.builder_from_directory(str(fractal_dir))
    ep = next(iter(f.as_dataset(split="train").take(1)))
    step = next(iter(ep["steps"]))
    assert step["observation"]["image"].shape == (256, 320, 3)
    assert set(step["action"]) == {"world_vector", "rotation_delta", "gripper_closedness_action", "base_displacement_vector",
                                   "base_displacement_vertical_rotation", "terminate_episode"}


def test_sample_knows_object_boxes(bridge_dir):
    scenes = read_json(bridge_dir / SIDECAR)["episodes"]
    assert len(scenes) == SAMPLE_SETTINGS["bridge_train_episodes"] + SAMPLE_SETTINGS["bridge_val_episodes"]
    for ep in scenes.values():
        source = next(o for o in ep["objects"] if o["role"] == "source")
        boxes = np.array(source["boxes"]["image_0"])
        assert np.all((boxes >= 0) & (boxes <= 255))
        assert source["name"] in ep["instruction"]
        assert np.abs(boxes[-1] - boxes[0]).max() > 5  # the source object is moved during the episode


def test_sample_is_deterministic_and_idempotent(tmp_path, bridge_dir):
    from tasks.parse import run_parse

    cfg = SampleConfig(**SAMPLE_SETTINGS)
    write_sample_datasets(tmp_path / "a", cfg)
    mtime = (tmp_path / "a" / "bridge_dataset" / "1.0.0" / "dataset_info.json").stat().st_mtime_ns
    write_sample_datasets(tmp_path / "a", cfg)  # up to date: not rewritten
    assert (tmp_path / "a" / "bridge_dataset" / "1.0.0" / "dataset_info.json").stat().st_mtime_ns == mtime
    ours = run_parse(tmp_path / "a" / "bridge_dataset", "val", tmp_path / "steps_a")
    ref = run_parse(bridge_dir, "val", tmp_path / "steps_ref")
    import pyarrow.dataset as ds

    a = ds.dataset(ours["steps_dir"] + "/val").to_table().sort_by([("episode_id", "ascending"), ("step_index", "ascending")])
    b = ds.dataset(ref["steps_dir"] + "/val").to_table().sort_by([("episode_id", "ascending"), ("step_index", "ascending")])
    assert a.equals(b)  # same settings, same parsed content (images byte for byte)


def test_sample_refuses_to_overwrite_foreign_data(tmp_path):
    (tmp_path / "bridge_dataset" / "1.0.0").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a sample dataset"):
        write_sample_datasets(tmp_path, SampleConfig(**SAMPLE_SETTINGS))
