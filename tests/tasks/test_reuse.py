"""Stages reuse finished work only when it was made from the same data and settings."""

import json
import shutil

import pyarrow.dataset as pads

from data.tfrecord import read_records
from tasks.annotate import run_annotate
from tasks.build import BuildConfig, run_build
from tasks.parse import ParseConfig, run_parse


def _copy(src, tmp_path):
    d = tmp_path / "bridge_dataset" / "1.0.0"
    shutil.copytree(src, d)
    return d


def test_parse_redoes_shards_whose_settings_or_data_changed(tmp_path, bridge_dir):
    d = _copy(bridge_dir, tmp_path)
    out = tmp_path / "steps"
    keep = run_parse(d, "train", out)
    skip = run_parse(d, "train", out, ParseConfig(empty_instruction="skip"))
    assert skip["shards_parsed"] == 2 and skip["steps"] < keep["steps"]  # the unlabelled episode is gone
    again = run_parse(d, "train", out, ParseConfig(empty_instruction="skip"))
    assert again["shards_reused"] == 2 and again["unlabelled_episodes"] == skip["unlabelled_episodes"] == 1
    import tensorflow as tf

    shard = d / "bridge_dataset-train.tfrecord-00000-of-00002"
    records = [r for _, r in read_records(shard)]
    with tf.io.TFRecordWriter(str(shard)) as w:  # same episodes, other order: new bytes
        for r in reversed(records):
            w.write(r)
    changed = run_parse(d, "train", out, ParseConfig(empty_instruction="skip"))
    assert (changed["shards_parsed"], changed["shards_reused"]) == (1, 1)


def test_a_missing_shard_is_parsed_when_it_comes_back(tmp_path, bridge_dir):
    d = _copy(bridge_dir, tmp_path)
    shard = d / "bridge_dataset-train.tfrecord-00001-of-00002"
    saved = shard.read_bytes()
    shard.unlink()
    first = run_parse(d, "train", tmp_path / "steps", ParseConfig(on_error="skip"))
    assert first["shards_parsed"] == 1 and first["broken_episodes"] == 1 and first["errors"][0]["record"] == -1
    assert not (tmp_path / "steps" / "bridge_dataset" / "train" / f"part-{shard.name}.parquet").exists()
    shard.write_bytes(saved)
    second = run_parse(d, "train", tmp_path / "steps", ParseConfig(on_error="skip"))
    assert (second["shards_parsed"], second["shards_reused"], second["broken_episodes"]) == (1, 1, 0)


def test_rebuild_with_other_splits_leaves_no_stale_parts(tmp_path, workdir):
    steps = workdir / "steps" / "bridge_dataset"
    traces = workdir / "traces" / "bridge_dataset" / "offline@offline-v1"
    run_build(steps, traces, tmp_path, BuildConfig(val_fraction=0.4))
    assert list((tmp_path / "val").glob("part-*"))
    s = run_build(steps, traces, tmp_path, BuildConfig(val_fraction=0.0))
    assert s["val_steps"] == 0 and not list((tmp_path / "val").glob("part-*"))
    assert pads.dataset(str(tmp_path / "train")).count_rows() == s["train_steps"]


def test_build_skips_parts_with_no_rows(tmp_path, bridge_dir, workdir):
    d = _copy(bridge_dir, tmp_path)
    shard = d / "bridge_dataset-train.tfrecord-00000-of-00002"
    shard.write_bytes(b"\x00" * 10)  # every episode of this shard is unreadable
    run_parse(d, "train", tmp_path / "steps", ParseConfig(on_error="skip"))
    run_parse(d, "val", tmp_path / "steps")
    a = run_annotate(tmp_path / "steps" / "bridge_dataset", tmp_path / "traces")
    s = run_build(tmp_path / "steps" / "bridge_dataset", a["traces_dir"], tmp_path / "out")
    assert s["train_steps"] + s["val_steps"] == pads.dataset(str(tmp_path / "steps" / "bridge_dataset")).count_rows() > 0


def test_traces_of_changed_data_are_stale_and_asked_again(tmp_path, workdir):
    src = workdir / "traces" / "fractal20220817_data" / "offline@offline-v1"
    traces = tmp_path / "traces" / "fractal20220817_data" / "offline@offline-v1"
    shutil.copytree(src, traces)
    victim = sorted(traces.glob("*.json"))[0]
    records = json.loads(victim.read_text())
    for r in records:
        r["episode_key"] = "made-for-other-data"
    victim.write_text(json.dumps(records))
    built = run_build(workdir / "steps" / "fractal20220817_data", traces, tmp_path / "out", BuildConfig(val_fraction=0.0))
    assert built["trace_stale"] == len(records) and built["trace_ok"] > 0
    again = run_annotate(workdir / "steps" / "fractal20220817_data", tmp_path / "traces")
    assert again["stale"] == again["requested"] == len(records)
    rebuilt = run_build(workdir / "steps" / "fractal20220817_data", traces, tmp_path / "out", BuildConfig(val_fraction=0.0))
    assert rebuilt["trace_stale"] == 0 and rebuilt["trace_ok"] == rebuilt["train_steps"]
