"""MLflow tracking for stages: explicit run ids, so it works from Prefect's worker threads.

The pipeline opens one MLflow run; each stage task opens a nested child run of it and hands a `Tracker`
to the stage's plain function. Stages never touch MLflow's global "active run" (thread-local), and a
plain function called without a tracker logs nothing (`Tracker(None)`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from data.layout import Layout

log = logging.getLogger("refinevla")
MAX_PARAM_CHARS = 500


class TrackingConfig(BaseModel):
    """Where MLflow records runs."""

    model_config = ConfigDict(extra="forbid")

    uri: str | None = Field(None, description="MLflow tracking URI. None: $MLFLOW_TRACKING_URI if set, else sqlite:///<workdir>/mlflow.db.")
    experiment: str = Field("refinevla", description="MLflow experiment name.")
    system_metrics: bool = Field(True, description="Log CPU/memory (and GPU when available) system metrics during fine-tuning.")


@dataclass(frozen=True)
class RunRef:
    """A picklable handle to an MLflow run, passed to tasks (excluded from cache keys)."""

    uri: str
    run_id: str
    experiment_id: str
    system_metrics: bool = True  # TrackingConfig.system_metrics, for the stages that sample them


def resolve_uri(cfg: TrackingConfig, workdir: str | Path) -> str:
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or Layout(Path(workdir)).mlflow_uri


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if hasattr(d, "model_dump"):
        d = d.model_dump(mode="json")
    if not isinstance(d, dict):
        return {prefix.rstrip("."): str(d)[:MAX_PARAM_CHARS]}
    out: dict[str, str] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


class Tracker:
    def __init__(self, ref: RunRef | None):
        self.ref = ref
        self._client = None
        if ref is not None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=ref.uri)

    @property
    def active(self) -> bool:
        return self._client is not None

    def log_params(self, params: Any, prefix: str = "") -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        flat = flatten(params, prefix)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.ref.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        self._client.log_batch(self.ref.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active and Path(path).exists():
            self._client.log_artifact(self.ref.run_id, str(path), artifact_path)

    def register_model(self, name: str, path: str | Path, tags: dict[str, str]) -> str | None:
        """A new version of registered model `name` pointing at checkpoint directory `path`; returns the version."""
        if not self.active:
            return None
        import re

        from mlflow.exceptions import MlflowException

        name = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
        try:
            self._client.get_registered_model(name)
        except MlflowException:
            self._client.create_registered_model(name, description="ReFineVLA fine-tuned SpatialVLA checkpoints (SpatialVLA 4.47 layout)")
        tags = {k: str(v)[:5000] for k, v in tags.items()}
        try:
            version = self._client.create_model_version(name, Path(path).resolve().as_uri(), run_id=self.ref.run_id, tags=tags)
        except MlflowException as e:
            if e.error_code != "INVALID_PARAMETER_VALUE":
                raise
            # A tracking server accepts no path of a worker's disk as a source: upload the model's files (not the
            # optimizer state) as the run's artifacts and register those; everyone who reaches the server can load it.
            log.info("the tracking server refused a local model source; uploading %s as artifacts of run %s", path, self.ref.run_id)
            for f in sorted(p for p in Path(path).iterdir() if p.is_file() and p.name != "trainer_state.pt"):
                self._client.log_artifact(self.ref.run_id, str(f), "checkpoint")
            version = self._client.create_model_version(name, f"runs:/{self.ref.run_id}/checkpoint", run_id=self.ref.run_id, tags=tags)
        return str(version.version)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            for k, v in tags.items():
                self._client.set_tag(self.ref.run_id, k, str(v))

    def child(self, name: str) -> Tracker:
        if not self.active:
            return Tracker(None)
        run = self._client.create_run(self.ref.experiment_id, run_name=name, tags={"mlflow.parentRunId": self.ref.run_id})
        return Tracker(RunRef(self.ref.uri, run.info.run_id, self.ref.experiment_id, self.ref.system_metrics))

    def finish(self, status: str = "FINISHED") -> None:
        if self.active:
            self._client.set_terminated(self.ref.run_id, status)

    @contextlib.contextmanager
    def system_metrics(self) -> Iterator[None]:
        """Sample CPU / memory / GPU into this run while the block runs (needs psutil), if the run asks for it."""
        if not (self.active and self.ref.system_metrics):
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.ref.run_id, sampling_interval=2, tracking_uri=self.ref.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()


def start_run(cfg: TrackingConfig, workdir: str | Path, run_name: str, tags: dict[str, str] | None = None) -> Tracker:
    """Create the top-level run of a flow. With the default local store, artifacts go to <workdir>/mlartifacts."""
    import mlflow
    from mlflow import MlflowClient

    uri = resolve_uri(cfg, workdir)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        local = uri.startswith("sqlite:") and not cfg.uri and not os.environ.get("MLFLOW_TRACKING_URI")
        location = Layout(Path(workdir)).mlflow_artifacts.as_uri() if local else None
        try:
            exp_id = client.create_experiment(cfg.experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            exp_id = client.get_experiment_by_name(cfg.experiment).experiment_id
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
    log.info("MLflow run %s in experiment '%s' at %s", run.info.run_id, cfg.experiment, uri)
    return Tracker(RunRef(uri, run.info.run_id, exp_id, cfg.system_metrics))


def prefect_tags() -> dict[str, str]:
    """MLflow tags that point at the Prefect flow run (id, name, deployment, UI link when the API has a UI)."""
    from prefect.runtime import deployment, flow_run

    tags = {"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_name": str(flow_run.name or ""),
            "prefect.deployment": str(deployment.name or "")}
    if flow_run.id and (url := flow_run.ui_url):
        tags["prefect.flow_run_url"] = url
    return {k: v for k, v in tags.items() if v}


def mlflow_run_url(ref: RunRef) -> str | None:
    """The MLflow UI page of a run when tracking goes to a server; None for a local store."""
    if ref.uri.startswith(("http://", "https://")):
        return f"{ref.uri.rstrip('/')}/#/experiments/{ref.experiment_id}/runs/{ref.run_id}"
    return None


def link_mlflow_run(ref: RunRef) -> None:
    """The other direction: a Prefect artifact on the current flow run that points at its MLflow run."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    try:
        from prefect.artifacts import create_link_artifact, create_markdown_artifact

        if url := mlflow_run_url(ref):
            create_link_artifact(url, link_text=f"MLflow run {ref.run_id}", key="mlflow-run", description="This flow run's MLflow run")
        else:
            create_markdown_artifact(
                f"MLflow run `{ref.run_id}` (experiment {ref.experiment_id}) in the local store `{ref.uri}`; "
                f"browse it with `mlflow ui --backend-store-uri {ref.uri}`.", key="mlflow-run", description="This flow run's MLflow run")
    except Exception as e:  # a UI convenience: the run itself is recorded either way
        log.warning("could not link the MLflow run in Prefect: %s", e)


@contextlib.contextmanager
def stage_run(parent: RunRef | None, name: str, params: Any = None) -> Iterator[Tracker]:
    """A nested run for one stage; marked FAILED if the stage raises."""
    tracker = Tracker(parent).child(name)
    if params is not None:
        tracker.log_params(params)
    try:
        yield tracker
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
