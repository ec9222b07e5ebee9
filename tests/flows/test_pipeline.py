"""The whole Prefect flow on the sample: real Prefect API, real MLflow store, real model."""

from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from mlflow import MlflowClient
from PIL import Image

from data.sample import SampleConfig
from flows.config import PipelineConfig
from flows.pipeline import refinevla_pipeline
from tasks.evaluate import EvaluateConfig
from tasks.finetune import FinetuneConfig
from tests.conftest import SAMPLE_SETTINGS, TINY_FINETUNE


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path, prefect_api):
    from models.spatialvla.policy import load_checkpoint, predict

    cfg = PipelineConfig(
        workdir=str(tmp_path / "work"),
        run_name="e2e",
        sample=SampleConfig(**SAMPLE_SETTINGS),
        finetune=FinetuneConfig(**{**TINY_FINETUNE, "max_steps": 6, "save_steps": 3}),
        evaluate=EvaluateConfig(generate_samples=1),
    )
    s = refinevla_pipeline(cfg)

    # Parquet rows = parsed steps, every row with a non-empty trace, statistics present
    steps = pads.dataset(str(tmp_path / "work" / "steps"), format="parquet").count_rows()
    rows = pads.dataset([str(p) for d in s["reasoning"] for p in Path(d).rglob("part-*.parquet")]).to_table().to_pandas()
    assert len(rows) == steps == s["steps"] > 0
    assert (rows.trace_status == "ok").all() and rows.reasoning_text.str.len().gt(50).all()
    assert all(Path(p).exists() for p in s["stats"])

    # the checkpoint reloads and predicts a valid action
    model, proc = load_checkpoint(s["checkpoint"])
    row = rows.iloc[0]
    p = predict(model, proc, min(row.images, key=lambda im: im["camera"])["data"], row.instruction, row.unnorm_key, reason=False)
    assert p.actions.shape == (4, 7) and np.isfinite(p.actions).all()

    # metrics and artifacts in the MLflow run, per-step losses in the fine-tune child run
    client = MlflowClient(s["mlflow_uri"])
    run = client.get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert {"val_action_token_acc", "final_loss", "steps"} <= set(run.data.metrics)
    assert run.data.params["finetune.reasoning_weight"] == "0.5"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for d in ("datasets/bridge_dataset", "attention", "report") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"results.md", "training_curves.png", "datasets/bridge_dataset/stats.json", "report/index.html"} <= artifacts
    assert any(a.startswith("attention/") and a.endswith(".png") for a in artifacts)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    names = sorted(c.info.run_name for c in children)
    assert {"finetune", "evaluate", "attention", "annotate bridge_dataset", "build fractal20220817_data"} <= set(names)
    assert run.data.metrics["parse.bridge_dataset.val.steps"] > 0 and run.data.metrics["parse.bridge_dataset.train.unlabelled_episodes"] == 1
    finetune = next(c for c in children if c.info.run_name == "finetune")
    assert [m.step for m in client.get_metric_history(finetune.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]

    # the heatmap PNG exists and is an image
    assert Image.open(s["attention"][0]).format == "PNG"

    # a second run with nothing changed recomputes nothing
    mtime = Path(s["checkpoint"], "model.safetensors").stat().st_mtime_ns
    again = refinevla_pipeline(cfg)
    assert again["checkpoint"] == s["checkpoint"] and Path(s["checkpoint"], "model.safetensors").stat().st_mtime_ns == mtime
    children = client.search_runs([run.info.experiment_id], "attributes.run_name = 'finetune'")
    assert len(children) == 1  # the cached stage opened no new run


def test_reannotation_flow_fills_failed_steps_and_rebuilds(tmp_path, workdir, prefect_api):
    import json
    import shutil

    import pyarrow.dataset as pads

    from flows.pipeline import reannotate_flow
    from tasks.tracking import TrackingConfig

    w = tmp_path / "w"
    for sub in ("steps", "traces", "reasoning"):
        shutil.copytree(workdir / sub, w / sub)
    f = sorted((w / "traces" / "fractal20220817_data" / "offline@offline-v1").glob("*.json"))[0]
    records = json.loads(f.read_text())
    records[0] = {**records[0], "status": "failed", "trace": None, "error": "malformed", "attempts": 3}
    f.write_text(json.dumps(records))
    result = reannotate_flow(str(w), tracking=TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db"))
    by_dataset = {r["annotate"]["dataset"]: r for r in result}
    assert by_dataset["fractal20220817_data"]["annotate"]["requested"] == 1
    assert by_dataset["bridge_dataset"]["annotate"]["requested"] == 0
    rows = pads.dataset(sorted(str(p) for p in (w / "reasoning" / "fractal20220817_data").rglob("part-*.parquet"))).to_table(columns=["trace_status"]).to_pandas()
    assert (rows.trace_status == "ok").all()


def test_prefect_yaml_deployments_resolve_and_reannotation_is_scheduled():
    import importlib

    import yaml
    from prefect.schedules import Cron

    spec = yaml.safe_load(open("prefect.yaml"))
    deployments = {d["name"]: d for d in spec["deployments"]}
    for d in deployments.values():
        module, name = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
        required = {p: [] if flow.parameters.properties[p].get("type") == "array" else "x" for p in flow.parameters.required}  # what the UI form asks the user for (stage paths)
        flow.validate_parameters({**required, **(d.get("parameters") or {})})  # the shipped parameters are valid
    assert not deployments["pipeline"].get("parameters"), "the pipeline deployment runs the embedded demo as it is"
    nightly = deployments["reannotate-nightly"]
    assert nightly["entrypoint"].endswith(":reannotate_flow") and nightly["parameters"]["cfg"]["teacher"]["kind"] == "gemini"
    Cron(nightly["schedules"][0]["cron"], timezone=nightly["schedules"][0]["timezone"])  # a valid cron
