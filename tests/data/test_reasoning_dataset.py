"""The reasoning dataset as users get it: documented schema, readable by common tools, resumable build."""

import json
import shutil

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from data.schema import REASONING_SCHEMA
from tasks.build import BuildConfig, run_build

DATASET = "bridge_dataset"


def _out(workdir):
    return workdir / "reasoning" / DATASET


def test_files_carry_the_documented_schema(workdir):
    part = sorted((_out(workdir) / "train").glob("part-*.parquet"))[0]
    schema = pq.read_schema(part)
    assert schema.remove_metadata().equals(REASONING_SCHEMA.remove_metadata())
    for field in schema:
        assert field.metadata and field.metadata[b"description"].strip(), field.name
    assert schema.metadata[b"refinevla.schema_version"] == REASONING_SCHEMA.metadata[b"refinevla.schema_version"]
    card = (_out(workdir) / "README.md").read_text()
    assert "| `trace_status` | `string` |" in card and "| `images` |" in card


def test_readable_by_pandas_pyarrow_duckdb_and_hf_datasets(workdir):
    import duckdb
    import pandas as pd
    from datasets import load_dataset

    out = _out(workdir)
    expected = pads.dataset(str(out / "train")).to_table(columns=["episode_id", "step_index"]).to_pandas()
    n = len(expected)
    by_pandas = pd.read_parquet(out / "train", columns=["episode_id", "step_index", "trace_status", "images"])
    assert len(by_pandas) == n and by_pandas["images"].iloc[0][0]["data"][:3] == b"\xff\xd8\xff"
    con = duckdb.connect()
    rows = con.execute(f"SELECT count(*), count(DISTINCT episode_id), min(len(images)) FROM read_parquet('{out}/train/*.parquet')").fetchone()
    assert rows == (n, expected.episode_id.nunique(), 4)
    ok = con.execute(f"SELECT count(*) FROM read_parquet('{out}/*/*.parquet') WHERE trace_status = 'ok'").fetchone()[0]
    assert ok == n + pads.dataset(str(out / "val")).count_rows()
    hf = load_dataset("parquet", data_files={"train": f"{out}/train/*.parquet", "val": f"{out}/val/*.parquet"},
                      cache_dir=str(workdir / "hf-cache"))
    assert hf["train"].num_rows == n and hf["train"][0]["logical_steps"] and hf["train"][0]["action"].__len__() == 7


def test_a_killed_build_leaves_no_partial_file_and_resumes(tmp_path, workdir, monkeypatch):
    steps, traces = workdir / "steps" / DATASET, workdir / "traces" / DATASET / "offline@offline-v1"
    clean = run_build(steps, traces, tmp_path / "clean", BuildConfig())
    from data import io

    real, calls = io.ParquetPartWriter.write_table, []

    def dies_on_the_third_part(self, table):
        calls.append(self.dest)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(self, table)

    monkeypatch.setattr(io.ParquetPartWriter, "write_table", dies_on_the_third_part)
    with pytest.raises(KeyboardInterrupt):
        run_build(steps, traces, tmp_path / "out", BuildConfig())
    monkeypatch.undo()
    visible = sorted((tmp_path / "out").rglob("part-*.parquet"))
    total = len(list((tmp_path / "clean").rglob("part-*.parquet")))
    assert 2 <= len(visible) < total and all(pq.read_metadata(f).num_rows > 0 for f in visible)  # finished parts only
    assert not list((tmp_path / "out").rglob("*.json"))  # no stats for a build that did not finish
    resumed = run_build(steps, traces, tmp_path / "out", BuildConfig())
    assert resumed["parts_reused"] >= 1 and resumed["parts_built"] < clean["parts_built"]
    for k in ("train_steps", "val_steps", "train_episodes", "trace_ok"):
        assert resumed[k] == clean[k]
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == json.loads((tmp_path / "clean" / "stats.json").read_text())
    again = run_build(steps, traces, tmp_path / "out", BuildConfig())
    assert again["parts_built"] == 0
    # a changed trace file rebuilds only the parts holding that episode
    shutil.copytree(traces, tmp_path / "traces")
    f = sorted((tmp_path / "traces").glob("*.json"))[0]
    records = json.loads(f.read_text())
    records[0]["trace"]["sub_action"] = "Something else."
    f.write_text(json.dumps(records))
    changed = run_build(steps, tmp_path / "traces", tmp_path / "out", BuildConfig())
    assert changed["parts_built"] == 1


def test_a_rebuild_reuses_parts_however_the_paths_are_spelled(tmp_path, workdir, monkeypatch):
    steps, traces = workdir / "steps" / DATASET, workdir / "traces" / DATASET / "offline@offline-v1"
    run_build(steps, traces, tmp_path / "out")
    monkeypatch.chdir(workdir)
    again = run_build(f"steps/{DATASET}", f"traces/{DATASET}/offline@offline-v1", tmp_path / "out")
    assert again["parts_built"] == 0 and again["parts_reused"] > 0
