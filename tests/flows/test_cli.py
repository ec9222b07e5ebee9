import subprocess
import sys

import pyarrow.dataset as pads
import pytest
import yaml

from flows.cli import build_parser, main, settings
from flows.config import PRESETS, DatasetSpec
from flows.pipeline import ConfigError, preflight
from tasks.finetune import FinetuneConfig


def test_help_documents_every_stage_and_setting():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in ("sample", "parse", "annotate", "build", "finetune", "evaluate", "attention", "run"):
        assert stage in out
    run_help = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--finetune.reasoning-weight" in run_help and "(default: 0.5)" in run_help
    assert "--annotate.teacher.model" in run_help


def test_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "ft.yaml"
    cfg_file.write_text(yaml.safe_dump({"reasoning_weight": 0.2, "batch_size": 16}))
    args = build_parser().parse_args(["finetune", "--data", "d", "--out", "o", "--config", str(cfg_file), "--batch-size", "4", "--no-freeze-vision"])
    cfg = settings(FinetuneConfig, args)
    assert (cfg.reasoning_weight, cfg.batch_size, cfg.freeze_vision) == (0.2, 4, False)


def test_invalid_settings_fail_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    bad = PRESETS["paper"].model_copy(update={"datasets": [DatasetSpec(path=str(tmp_path / "nope"))]})
    with pytest.raises(ConfigError) as e:
        preflight(bad)
    msg = str(e.value)
    assert "no such directory" in msg and "GEMINI_API_KEY" in msg and "finetune.base_model" in msg
    with pytest.raises(ValueError):
        FinetuneConfig(reasoning_weight=-1)


def test_parse_command_writes_parquet(tmp_path, bridge_dir, prefect_api, capsys):
    assert main(["parse", str(bridge_dir), "--split", "val", "--out", str(tmp_path / "steps"), "--workdir", str(tmp_path / "w")]) == 0
    files = list((tmp_path / "steps" / "bridge_dataset" / "val").glob("part-*.parquet"))
    assert len(files) == 2
    assert pads.dataset([str(f) for f in files]).count_rows() > 0
    assert '"shards_parsed": 2' in capsys.readouterr().out


def test_skipped_episodes_are_reported_to_mlflow(tmp_path, bridge_dir, prefect_api):
    import shutil

    from mlflow import MlflowClient

    from tasks.tracking import TrackingConfig, resolve_uri

    d = tmp_path / "bridge_dataset" / "1.0.0"
    shutil.copytree(bridge_dir, d)
    shard = d / "bridge_dataset-train.tfrecord-00001-of-00002"
    data = bytearray(shard.read_bytes())
    data[3000] ^= 0xFF  # corrupt the first episode of the shard
    shard.write_bytes(bytes(data))
    work = tmp_path / "w"
    assert main(["parse", str(d), "--split", "train", "--out", str(tmp_path / "steps"), "--workdir", str(work), "--on-error", "skip"]) == 0
    client = MlflowClient(resolve_uri(TrackingConfig(), work))
    run = client.search_runs([client.get_experiment_by_name("refinevla").experiment_id])[0]
    assert run.data.metrics["parse.bridge_dataset.train.broken_episodes"] == 1
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "parse_errors/bridge_dataset/train")]
    assert artifacts == [f"parse_errors/bridge_dataset/train/{shard.name}.json"]


def test_unknown_settings_are_errors():
    from pydantic import ValidationError

    from flows.config import PipelineConfig

    with pytest.raises(ValidationError, match="max_step"):
        PipelineConfig.model_validate({"finetune": {"max_step": 10}})
    with pytest.raises(ValidationError, match="anotate"):
        PipelineConfig.model_validate({"anotate": {}})


def test_no_held_out_episodes_is_caught_before_training():
    bad = PRESETS["demo"].model_copy(update={"build": PRESETS["demo"].build.model_copy(update={"val_fraction": 0.0})})
    with pytest.raises(ConfigError, match="val_fraction is 0"):
        preflight(bad)


def test_only_transient_failures_are_retried():
    from prefect.states import Failed

    from data.rlds import RldsError
    from models.teachers import TeacherConfigError
    from tasks.retry import transient_only

    for permanent in (TeacherConfigError("no key"), RldsError("bad shard"), FileNotFoundError("x"), ValueError("settings")):
        assert not transient_only(None, None, Failed(data=permanent))
    for transient in (OSError("disk hiccup"), ConnectionError("reset"), RuntimeError("CUDA error")):
        assert transient_only(None, None, Failed(data=transient))
