"""Operations against real servers: a local Prefect server, process workers, `prefect deploy` from the project's
prefect.yaml, an MLflow server on SQLite, the pipeline triggered through the CLI with fine-tuning dispatched to a
`gpu` pool, outputs moving through shared storage, and a worker killed mid-run whose flow is run again.

Everything runs on loopback and is stopped at the end of the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from data.storage import Workspace

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not (BIN / "prefect").exists(), reason="the prefect CLI is not installed beside this Python")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, procs=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (value := check()):
            return value
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: {p.args[:3]} exited with {p.returncode}")
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


class Ops:
    """The servers and workers of one test module, and helpers to talk to them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.api = f"http://127.0.0.1:{_port()}/api"
        self.mlflow = f"http://127.0.0.1:{_port()}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))},
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
        }

    def start(self, name: str, args: list[str], **env) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        p = subprocess.Popen(args, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        return p

    def stop(self, name: str, sig=signal.SIGINT) -> None:
        p = self.procs.pop(name)
        try:
            os.killpg(p.pid, sig)  # the worker and the flow-run processes it started
            p.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def cli(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run(["prefect", "--no-prompt", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def get(self, path: str):
        return httpx.get(f"{self.api}{path}", timeout=30).raise_for_status().json()

    def post(self, path: str, body: dict):
        return httpx.post(f"{self.api}{path}", json=body, timeout=30).raise_for_status().json()

    def worker(self, pool: str, cache: str) -> None:
        self.start(f"worker-{pool}", ["prefect", "worker", "start", "--pool", pool, "--type", "process", "--name", f"{pool}-w"],
                   REFINEVLA_CACHE_DIR=str(self.tmp / cache))

    def trigger(self, deployment: str, config: dict) -> str:
        """`prefect deployment run` without waiting; returns the flow run id."""
        out = self.cli("deployment", "run", deployment, "--param", f"config={json.dumps(config)}")
        return re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)

    def deployment(self, name: str) -> dict:
        return self.get(f"/deployments/name/{name}")

    def flow_run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def wait_final(self, run_id: str, timeout: float) -> dict:
        return _wait(f"flow run {run_id}", lambda: (r := self.flow_run(run_id))["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and r,
                     timeout, list(self.procs.values()))

    def task_states(self, run_id: str) -> dict[str, str]:
        runs = self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        return {r["name"]: r["state"]["name"] for r in runs}


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    o = Ops(tmp_path_factory.mktemp("ops"))
    try:
        o.start("prefect-server", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", o.api.split(":")[2].split("/")[0]])
        o.start("mlflow-server", ["mlflow", "server", "--backend-store-uri", f"sqlite:///{o.tmp / 'mlflow.db'}",
                                  "--artifacts-destination", str(o.tmp / "mlartifacts"), "--host", "127.0.0.1",
                                  "--port", o.mlflow.rsplit(":", 1)[1], "--workers", "1"])
        _wait("prefect server", lambda: _healthy(f"{o.api}/health"), 120, [o.procs["prefect-server"]])
        for pool in ("local-process", "gpu", "simpler"):
            o.cli("work-pool", "create", pool, "--type", "process", "--base-job-template", "deployments/pools/process.json")
        o.cli("deploy", "--all")
        o.worker("local-process", "cache-cpu")
        o.worker("gpu", "cache-gpu")
        _wait("mlflow server", lambda: _healthy(f"{o.mlflow}/health"), 120, [o.procs["mlflow-server"]])
        yield o
    finally:
        for p in o.procs.values():  # all at once: each takes a few seconds to shut down
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)
        for name in list(o.procs):
            o.stop(name)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _small(workdir: str, run_name: str, **extra) -> dict:
    """A pipeline small enough for a test: two tiny Bridge episodes, four training steps."""
    return {
        "workdir": workdir, "run_name": run_name,
        "sample": {"bridge_train_episodes": 2, "bridge_val_episodes": 1, "fractal_episodes": 0, "num_shards": 1},
        "finetune": {"max_steps": 4, "save_steps": 2, "batch_size": 4},
        "evaluate": {"max_samples": 4, "generate_samples": 0},
        "attention": {"num_samples": 1},
        "simpler": {"enabled": False},
        **extra,
    }


def test_deployments_schedule_and_pools_are_registered(ops):
    names = {f"{d['name']}" for d in ops.post("/deployments/filter", {})}
    assert {"pipeline", "annotate", "reannotate-nightly", "finetune", "evaluate"} <= names
    assert ops.deployment("refinevla-finetune/finetune")["work_pool_name"] == "gpu"
    assert ops.deployment("refinevla-evaluate/evaluate")["work_pool_name"] == "simpler"
    nightly = ops.deployment("refinevla-reannotate/reannotate-nightly")
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * *" and schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"] is False, "created paused until the Gemini key's Secret block exists"
    assert nightly["parameters"]["cfg"]["teacher"]["kind"] == "gemini"
    # the UI's form: typed parameters with descriptions and defaults
    schema = ops.deployment("refinevla-pipeline/pipeline")["parameter_openapi_schema"]
    fields = schema["definitions"]["PipelineConfig"]["properties"]
    assert "workdir" in fields and fields["workdir"]["description"] and fields["workdir"]["default"] == "work"
    # the zombie-run automation is valid for this server
    ops.cli("automation", "create", "--from-file", "deployments/automations/crash-silent-flow-runs.json")
    assert any(a["name"].startswith("refinevla: crash") for a in ops.post("/automations/filter", {}))


def test_pipeline_from_the_cli_with_a_gpu_pool_and_shared_storage(ops):
    storage = ops.tmp / "bucket"
    params = _small(storage.as_uri(), "ops", tracking={"uri": ops.mlflow}, dispatch={"finetune": "refinevla-finetune/finetune"})
    out = ops.cli("deployment", "run", "refinevla-pipeline/pipeline", "--param", f"config={json.dumps(params)}", "--watch",
                  "--watch-timeout", "600", timeout=660)
    assert "Completed" in out, out

    # every stage's outputs are in the shared storage ...
    assert list((storage / "reasoning").glob("*/train/part-*.parquet"))
    assert (storage / "checkpoints/ops/step-4/model.safetensors").exists()
    assert (storage / "eval/ops/results.md").exists() and list((storage / "attention/ops").glob("*.png"))
    # ... fine-tuning ran on the gpu worker, and the pipeline's worker got the checkpoint back through storage
    gpu_mirror, cpu_mirror = [next((ops.tmp / c).glob("file-*")) for c in ("cache-gpu", "cache-cpu")]
    assert (gpu_mirror / "checkpoints/ops/step-4/model.safetensors").exists()
    assert not list((gpu_mirror / "steps").glob("*")), "the gpu worker pulled only what fine-tuning reads"
    assert (cpu_mirror / "checkpoints/ops/step-4/model.safetensors").read_bytes() == (storage / "checkpoints/ops/step-4/model.safetensors").read_bytes()

    # Prefect → MLflow and back
    [parent] = ops.post("/flow_runs/filter", {"deployments": {"name": {"any_": ["pipeline"]}}, "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    [child] = ops.post("/flow_runs/filter", {"deployments": {"name": {"any_": ["finetune"]}}})
    assert child["state"]["type"] == "COMPLETED" and child["parent_task_run_id"], "dispatched as a subflow of the pipeline run"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ops.mlflow)
    runs = client.search_runs([client.get_experiment_by_name("refinevla").experiment_id])
    [top] = [r for r in runs if r.data.tags.get("prefect.flow_run_id") == parent["id"] and "stage" not in r.data.tags]
    assert top.info.status == "FINISHED" and top.data.tags["prefect.deployment"] == "pipeline"
    assert top.data.tags["prefect.flow_run_url"].endswith(parent["id"])
    [ft] = [r for r in runs if r.data.tags.get("prefect.flow_run_id") == child["id"]]
    assert ft.data.tags["mlflow.parentRunId"] == top.info.run_id, "the GPU worker's run nests under the pipeline's run"
    assert client.get_metric_history(ft.info.run_id, "loss") or any(
        client.get_metric_history(r.info.run_id, "loss") for r in runs if r.data.tags.get("mlflow.parentRunId") == ft.info.run_id)
    [version] = client.search_model_versions("name='refinevla-ops'")
    assert version.source == f"runs:/{version.run_id}/checkpoint", "a server gets the checkpoint itself, not a worker's path"
    assert "model.safetensors" in {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(version.run_id, "checkpoint")}
    links = ops.post("/artifacts/filter", {"flow_runs": {"id": {"any_": [parent["id"]]}}, "artifacts": {"key": {"any_": ["mlflow-run"]}}})
    assert links and f"{ops.mlflow}/#/experiments/{top.info.experiment_id}/runs/{top.info.run_id})" in links[0]["data"]


def test_a_killed_worker_loses_no_finished_stage(ops):
    workdir = ops.tmp / "killed"
    params = _small(str(workdir), "k", finetune={"max_steps": 12, "save_steps": 2, "batch_size": 4}, tracking={"uri": ops.mlflow})
    first = ops.trigger("refinevla-pipeline/pipeline", params)
    ckpts = workdir / "checkpoints/k"
    _wait("first checkpoint", lambda: (ckpts / "step-2/model.safetensors").exists(), 300, list(ops.procs.values()))
    built = {f: f.stat().st_mtime_ns for d in ("datasets", "steps", "traces", "reasoning") for f in (workdir / d).rglob("*") if f.is_file()}
    ops.stop("worker-local-process", signal.SIGKILL)  # the worker and its flow run die mid fine-tuning
    assert ops.flow_run(first)["state"]["type"] == "RUNNING", "nobody told the server"
    # what the zombie automation (deployments/automations) does after 10 min without heartbeat
    ops.post(f"/flow_runs/{first}/set_state", {"state": {"type": "CRASHED", "name": "Crashed", "message": "worker killed"}, "force": True})
    ops.worker("local-process", "cache-cpu")

    again = ops.trigger("refinevla-pipeline/pipeline", params)
    final = ops.wait_final(again, 600)
    assert final["state"]["type"] == "COMPLETED", final["state"]
    states = ops.task_states(again)
    for stage in ("parse", "annotate", "build"):  # the sample stage is never cached: it checks its files itself
        assert any(name.startswith(stage) and s == "Cached" for name, s in states.items()), json.dumps(states)
    assert {f: f.stat().st_mtime_ns for f in built} == built, "no finished stage's file was written again"
    steps = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("step-*"))
    assert steps[-1] == 12 and 2 in steps
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ops.mlflow)
    ft_runs = sorted((r for r in client.search_runs([client.get_experiment_by_name("refinevla").experiment_id], "tags.mlflow.runName = 'finetune'")
                      if r.data.params.get("max_steps") == "12"), key=lambda r: r.info.start_time)
    killed, resumed = ([m.step for m in client.get_metric_history(r.info.run_id, "loss")] for r in ft_runs)
    assert min(killed) == 1 and max(resumed) == 12
    assert min(resumed) - 1 in steps and min(resumed) > 2, "training resumed from a checkpoint instead of starting over"


def test_a_dispatched_stage_that_outlives_its_timeout_is_cancelled(ops, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.config import PipelineConfig
    from flows.pipeline import dispatch, evaluate_flow
    from tasks.tracking import start_run

    config = PipelineConfig(workdir=str(tmp_path), tracking={"uri": ops.mlflow}, dispatch={"evaluate": "refinevla-evaluate/evaluate", "timeout_s": 2})
    run = start_run(config.tracking, tmp_path, "timeout")
    with temporary_settings({PREFECT_API_URL: ops.api}), pytest.raises(TimeoutError, match="cancelled"):
        # no worker serves the `simpler` pool here, so the child never starts
        dispatch(Workspace(str(tmp_path)), config, "refinevla-evaluate/evaluate", evaluate_flow, tmp_path / "eval", run, checkpoint="ckpt", data_dirs=[])
    [child] = ops.post("/flow_runs/filter", {"deployments": {"name": {"any_": ["evaluate"]}}})
    assert child["state"]["type"] in ("CANCELLING", "CANCELLED"), "a later run must not race it"
    assert child["parameters"]["tracking"]["uri"] == ops.mlflow and child["parameters"]["workdir"] == str(tmp_path)
