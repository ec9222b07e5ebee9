import io
import shutil

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from data.actions import binarize_gripper, rel2abs_gripper
from data.rlds import RldsError, iter_episodes, open_rlds
from tasks.parse import run_parse


def _tfds_episodes(path, split, raw_images=()):
    import tensorflow_datasets as tfds

    decoders = {"steps": {"observation": {k: tfds.decode.SkipDecoding() for k in raw_images}}} if raw_images else None
    episodes = list(tfds.as_numpy(tfds.builder_from_directory(str(path)).as_dataset(split=split, decoders=decoders)))
    return [{**e, "steps": list(e["steps"])} for e in episodes]


def test_bridge_parse_matches_tfds(bridge_dir):
    ds = open_rlds(bridge_dir)
    assert (ds.name, ds.version, ds.flavour) == ("bridge_dataset", "1.0.0", "bridge")
    assert ds.cameras == ["image_0", "image_1", "image_2", "image_3"]
    ours = sorted(iter_episodes(ds, "train"), key=lambda e: e.source_episode_id)
    ref = sorted(_tfds_episodes(bridge_dir, "train", raw_images=("image_0", "image_1")), key=lambda e: int(e["episode_metadata"]["episode_id"]))
    assert len(ours) == len(ref)
    for mine, theirs in zip(ours, ref):
        steps = theirs["steps"]
        raw = np.stack([s["action"] for s in steps])
        assert mine.num_steps == len(steps)
        np.testing.assert_array_equal(mine.action_raw, raw)
        np.testing.assert_array_equal(mine.action[:, :6], raw[:, :6])
        np.testing.assert_array_equal(mine.action[:, 6], binarize_gripper(raw[:, 6]))
        assert mine.instruction == [s["language_instruction"].decode() for s in steps]
        np.testing.assert_array_equal(mine.state, np.stack([s["observation"]["state"] for s in steps]))
        for cam in ("image_0", "image_1"):  # encoded bytes kept exactly as stored
            assert mine.images[cam] == [s["observation"][cam] for s in steps]
        assert np.asarray(Image.open(io.BytesIO(mine.images["image_0"][0]))).shape == (256, 256, 3)


def test_fractal_parse_converts_dict_actions(fractal_dir):
    ds = open_rlds(fractal_dir)
    assert ds.flavour == "fractal" and ds.cameras == ["image"]
    ours = list(iter_episodes(ds, "train"))
    ref = _tfds_episodes(fractal_dir, "train")
    by_instruction = {tuple(s["observation"]["natural_language_instruction"].decode() for s in e["steps"]): e for e in ref}
    for mine in ours:
        theirs = by_instruction[tuple(mine.instruction)]["steps"]
        wv = np.stack([s["action"]["world_vector"] for s in theirs])
        rel = np.concatenate([s["action"]["gripper_closedness_action"] for s in theirs])
        np.testing.assert_array_equal(mine.action[:, :3], wv)
        np.testing.assert_array_equal(mine.action[:, 6], rel2abs_gripper(rel))
        assert mine.state.shape == (mine.num_steps, 8)  # base_pose_tool_reached (7) + gripper_closed (1)
        assert mine.action_raw.shape == (mine.num_steps, 13)


def test_parse_writes_one_row_per_step_and_resumes(tmp_path, bridge_dir):
    first = run_parse(bridge_dir, "train", tmp_path)
    files = sorted((tmp_path / "bridge_dataset" / "train").glob("part-*.parquet"))
    assert first["shards_parsed"] == 2 and len(files) == 2
    table = pads.dataset([str(f) for f in files]).to_table()
    assert table.num_rows == first["steps"]
    assert set(table.column("episode_id").to_pylist()) and table.column("action").type.list_size == 7
    files[0].unlink()  # as if killed before the second shard finished
    again = run_parse(bridge_dir, "train", tmp_path)
    assert (again["shards_parsed"], again["shards_reused"], again["steps"]) == (1, 1, first["steps"])


def test_renamed_folder_and_name_root(tmp_path, bridge_dir):
    renamed = tmp_path / "bridge_orig" / "1.0.0"
    shutil.copytree(bridge_dir, renamed)
    ds = open_rlds(tmp_path / "bridge_orig")  # <root>/<name>: newest version
    assert ds.name == "bridge_dataset" and ds.path == renamed
    assert ds.splits["val"][0].name.startswith("bridge_dataset-val.tfrecord-")


def test_bad_input_is_reported_precisely(tmp_path, bridge_dir):
    with pytest.raises(RldsError, match="not a TFDS dataset"):
        open_rlds(tmp_path)
    broken = tmp_path / "bridge_dataset" / "1.0.0"
    shutil.copytree(bridge_dir, broken)
    shard = broken / "bridge_dataset-train.tfrecord-00000-of-00002"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    ds = open_rlds(broken)
    with pytest.raises(RldsError, match=r"bridge_dataset-train\.tfrecord-00000-of-00002: record \d"):
        list(iter_episodes(ds, "train"))
    with pytest.raises(RldsError, match="no split 'test'"):
        list(iter_episodes(ds, "test"))
