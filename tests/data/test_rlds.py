import io
import json
import shutil

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from data.actions import binarize_gripper, rel2abs_gripper
from data.rlds import ParseReport, RldsError, iter_episodes, open_rlds
from data.sample import SampleConfig, write_sample_datasets
from data.tfrecord import read_records
from tasks.parse import ParseConfig, run_parse, shard_groups
from tests.conftest import SAMPLE_SETTINGS


def _tfds_episodes(path, split, raw_images=()):
    import tensorflow_datasets as tfds

    decoders = {"steps": {"observation": {k: tfds.decode.SkipDecoding() for k in raw_images}}} if raw_images else None
    episodes = list(tfds.as_numpy(tfds.builder_from_directory(str(path)).as_dataset(split=split, decoders=decoders)))
    return [{**e, "steps": list(e["steps"])} for e in episodes]


# ---------------------------------------------------------------------------------------------- fidelity
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
        assert mine.dummy == {"image_0": False, "image_1": False, "image_2": True, "image_3": True}
        assert mine.source_episode_id.endswith(f"#{int(theirs['episode_metadata']['episode_id'])}")


def test_fractal_parse_converts_dict_actions(fractal_dir):
    ds = open_rlds(fractal_dir)
    assert ds.flavour == "fractal" and ds.cameras == ["image"]
    ref = _tfds_episodes(fractal_dir, "train")
    by_instruction = {tuple(s["observation"]["natural_language_instruction"].decode() for s in e["steps"]): e for e in ref}
    ours = list(iter_episodes(ds, "train"))
    assert len(ours) == len(ref)
    for mine in ours:
        theirs = by_instruction[tuple(mine.instruction)]["steps"]
        rel = np.concatenate([s["action"]["gripper_closedness_action"] for s in theirs])
        np.testing.assert_array_equal(mine.action[:, :3], np.stack([s["action"]["world_vector"] for s in theirs]))
        np.testing.assert_array_equal(mine.action[:, 3:6], np.stack([s["action"]["rotation_delta"] for s in theirs]))
        np.testing.assert_array_equal(mine.action[:, 6], rel2abs_gripper(rel))
        assert mine.state.shape == (mine.num_steps, 8) and mine.action_raw.shape == (mine.num_steps, 13)
        assert mine.source_episode_id == "" and mine.encodings == {"image": "jpeg"}


def test_openx_bridge_parse_matches_tfds(openx_dir):
    ds = open_rlds(openx_dir)
    assert (ds.name, ds.flavour, sorted(ds.splits)) == ("bridge", "bridge_oxe", ["test", "train"])
    features = json.dumps(json.loads((openx_dir / "features.json").read_text()))
    assert "encodingFormat" not in features  # the spec does not say how images are encoded
    ref = {e["episode_id"].decode(): e["steps"] for e in _tfds_episodes(openx_dir, "test", raw_images=("image",))}
    ours = list(iter_episodes(ds, "test"))
    assert {e.source_episode_id for e in ours} == set(ref)
    for mine in ours:
        steps = ref[mine.source_episode_id]
        assert mine.encodings == {"image": "png"}  # sniffed from the bytes
        assert mine.images["image"] == [s["observation"]["image"] for s in steps]
        assert Image.open(io.BytesIO(mine.images["image"][0])).size == (640, 480)
        np.testing.assert_array_equal(mine.action[:, :3], np.stack([s["action"]["world_vector"] for s in steps]))
        np.testing.assert_array_equal(mine.action[:, 6], [float(s["action"]["open_gripper"]) for s in steps])
        assert mine.action_raw.shape == (mine.num_steps, 8)
        assert mine.instruction[0] == steps[0]["observation"]["natural_language_instruction"].decode()


def test_ids_survive_resharding(tmp_path, bridge_dir, fractal_dir):
    write_sample_datasets(tmp_path, SampleConfig(**{**SAMPLE_SETTINGS, "num_shards": 1}))

    def ids(path, split):
        return {e.episode_id: e.source_file for e in iter_episodes(open_rlds(path), split)}

    for ours, theirs in ((tmp_path / "bridge_dataset" / "1.0.0", bridge_dir), (tmp_path / "fractal20220817_data" / "0.1.0", fractal_dir)):
        one, two = ids(ours, "train"), ids(theirs, "train")
        assert set(one) == set(two) and len(set(one.values())) == 1 and len(set(two.values())) == 2


def test_empty_instructions_follow_the_setting(bridge_dir):
    ds = open_rlds(bridge_dir)
    report = ParseReport()
    kept = list(iter_episodes(ds, "train", report=report))
    assert report.unlabelled == 1 and sum(not any(e.instruction) for e in kept) == 1
    assert len(list(iter_episodes(ds, "train", empty_instruction="skip"))) == len(kept) - 1
    with pytest.raises(RldsError, match="no instruction"):
        list(iter_episodes(ds, "train", empty_instruction="error"))


# ---------------------------------------------------------------------------------------------- the parse stage
def test_parse_writes_one_row_per_step_and_resumes(tmp_path, bridge_dir):
    first = run_parse(bridge_dir, "train", tmp_path)
    files = sorted((tmp_path / "bridge_dataset" / "train").glob("part-*.parquet"))
    assert first["shards_parsed"] == 2 and len(files) == 2
    table = pads.dataset([str(f) for f in files]).to_table()
    assert table.num_rows == first["steps"] and table.column("action").type.list_size == 7
    assert first["unlabelled_episodes"] == 1
    files[0].unlink()  # as if killed before the second shard finished
    again = run_parse(bridge_dir, "train", tmp_path)
    assert (again["shards_parsed"], again["shards_reused"], again["steps"]) == (1, 1, first["steps"])


def test_shard_groups_split_the_work(tmp_path, bridge_dir):
    groups = shard_groups(bridge_dir, "train", ParseConfig(shards_per_task=1))
    assert len(groups) == 2 and all(len(g) == 1 for g in groups)
    s = run_parse(bridge_dir, "train", tmp_path, shards=groups[1])
    assert s["shards_parsed"] == 1
    assert [p.name for p in (tmp_path / "bridge_dataset" / "train").glob("part-*")] == [f"part-{groups[1][0].rsplit('/', 1)[1]}.parquet"]


def test_renamed_folder_and_name_root(tmp_path, bridge_dir):
    renamed = tmp_path / "bridge_orig" / "1.0.0"
    shutil.copytree(bridge_dir, renamed)
    ds = open_rlds(tmp_path / "bridge_orig")  # <root>/<name>: newest version
    assert ds.name == "bridge_dataset" and ds.path == renamed
    assert ds.splits["val"][0].name.startswith("bridge_dataset-val.tfrecord-")
    renamed_ids = {e.episode_id for e in iter_episodes(ds, "val")}
    assert renamed_ids == {e.episode_id for e in iter_episodes(open_rlds(bridge_dir), "val")}


# ---------------------------------------------------------------------------------------------- bad input
SHARD = "bridge_dataset-train.tfrecord-00000-of-00002"


@pytest.fixture
def broken(tmp_path, bridge_dir):
    """A copy of the Bridge sample whose first train shard the test rewrites."""
    d = tmp_path / "bridge_dataset" / "1.0.0"
    shutil.copytree(bridge_dir, d)
    return d


def _records(path):
    return [r for _, r in read_records(path)]


def _rewrite(path, records):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as w:  # TensorFlow's own framing
        for r in records:
            w.write(r)


def _edit(record: bytes, fn) -> bytes:
    import tensorflow as tf

    ex = tf.train.Example.FromString(record)
    fn(ex.features.feature)
    return ex.SerializeToString()


def _expect(ds_dir, match, split="train"):
    with pytest.raises(RldsError, match=match) as e:
        list(iter_episodes(open_rlds(ds_dir), split))
    assert SHARD in str(e.value) or "no such" in str(e.value) or "not a TFDS" in str(e.value)
    return e.value


def test_truncated_shard(broken):
    shard = broken / SHARD
    shard.write_bytes(shard.read_bytes()[:-100])
    _expect(broken, r"record \d+ \(byte \d+\): .*truncated")


def test_crc_mismatch_is_reported_and_skippable(broken, tmp_path):
    shard = broken / SHARD
    n = len(_records(shard))
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF  # inside the first record's data
    shard.write_bytes(bytes(data))
    _expect(broken, "record 0 .*data CRC mismatch")
    report = ParseReport()
    kept = list(iter_episodes(open_rlds(broken), "train", files=[shard], on_error="skip", report=report))
    assert len(kept) == n - 1 and [b["record"] for b in report.broken] == [0]
    summary = run_parse(broken, "train", tmp_path / "steps", ParseConfig(on_error="skip"))
    assert summary["broken_episodes"] == 1
    errors = json.loads((tmp_path / "steps" / "bridge_dataset" / "train" / "_reports" / f"{SHARD}.json").read_text())["broken"]
    assert errors[0]["record"] == 0 and "CRC" in errors[0]["error"]


def test_record_that_is_not_an_episode(broken):
    import tensorflow as tf

    stranger = tf.train.Example(features=tf.train.Features(feature={"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[3]))}))
    _rewrite(broken / SHARD, [stranger.SerializeToString()] + _records(broken / SHARD))
    _expect(broken, "record 0: holds none of the step features of bridge_dataset: not an RLDS episode")
    _rewrite(broken / SHARD, [b"this is not a protobuf at all"])
    _expect(broken, "record 0: not a tf.train.Example matching features.json")


def test_missing_key(broken):
    recs = _records(broken / SHARD)
    _rewrite(broken / SHARD, [_edit(recs[0], lambda f: f.pop("steps/action"))] + recs[1:])
    _expect(broken, r"record 0: 'steps/action' is missing, expected \d+ steps x \(7,\) float32")


def test_wrong_dtype(broken):
    def to_int(f):
        values = list(f["steps/action"].float_list.value)
        f["steps/action"].ClearField("float_list")
        f["steps/action"].int64_list.value.extend(int(v) for v in values)

    recs = _records(broken / SHARD)
    _rewrite(broken / SHARD, recs[:1] + [_edit(recs[1], to_int)])
    _expect(broken, r"record 1: not a tf.train.Example matching features.json.*steps/action")


def test_wrong_shape(broken):
    recs = _records(broken / SHARD)
    _rewrite(broken / SHARD, [_edit(recs[0], lambda f: f["steps/observation/state"].float_list.value.pop())])
    _expect(broken, r"record 0: 'steps/observation/state' has \d+ values, expected \d+ steps x \(7,\)")


def test_unreadable_image(broken):
    def garbage(f):
        f["steps/observation/image_0"].bytes_list.value[3] = b"GIF89a not an image we expect"

    def cut(f):
        f["steps/observation/image_1"].bytes_list.value[0] = f["steps/observation/image_1"].bytes_list.value[0][:200]

    recs = _records(broken / SHARD)
    _rewrite(broken / SHARD, [_edit(recs[0], garbage)])
    _expect(broken, r"record 0: camera 'image_0' step 3: image bytes are not JPEG or PNG")
    _rewrite(broken / SHARD, [_edit(recs[0], cut)])
    _expect(broken, r"record 0: camera 'image_1': unreadable image")


def test_missing_shard_and_not_a_dataset(broken, tmp_path):
    (broken / SHARD).unlink()
    _expect(broken, "shard listed in dataset_info.json is missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RldsError, match="it is empty"):
        open_rlds(empty)
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(RldsError, match="has no dataset_info.json"):
        open_rlds(empty)
    with pytest.raises(RldsError, match="no such directory"):
        open_rlds(tmp_path / "nope")
    with pytest.raises(RldsError, match="no split 'test'"):
        list(iter_episodes(open_rlds(broken), "test"))
