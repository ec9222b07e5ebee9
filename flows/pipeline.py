"""Prefect flows: the whole pipeline, and one flow per stage for the command line.

Flows only compose: stage logic lives in `tasks/`. Stages pass paths and small summaries; every output
is a file under the working directory (data/layout.py). One MLflow run per flow run, with a nested run
per stage; the pipeline's own run also gets the headline artifacts and metrics, even when stages were
cached, and its Prefect flow run gets a Markdown artifact with the results.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from data.io import read_json, write_json_atomic
from data.layout import Layout
from data.storage import Workspace, is_uri
from data.sample import SampleConfig
from flows.config import PRESETS, DatasetSpec, PipelineConfig
from tasks.annotate import AnnotateConfig, annotate_task, reannotate_task
from tasks.attention import AttentionConfig, attention_task
from tasks.build import BuildConfig, build_task
from tasks.evaluate import EvaluateConfig, evaluate_task
from tasks.finetune import FinetuneConfig, finetune_task
from tasks.parse import ParseConfig, merge_summaries, parse_task, shard_groups
from tasks.report import ReportConfig, report_task
from tasks.sample import sample_task
from tasks.simpler import SimplerConfig, simpler_available, simpler_task
from tasks.tracking import Tracker, TrackingConfig, link_mlflow_run, prefect_tags, start_run

log = logging.getLogger("refinevla")


class ConfigError(ValueError):
    """Settings that cannot work; raised before any expensive work starts."""


def preflight(config: PipelineConfig) -> None:
    """Check what can be checked cheaply: inputs exist, the teacher can authenticate, shapes fit."""
    from data.rlds import RldsError, open_rlds
    from models.spatialvla.configuration_spatialvla import SHAPES
    from models.teachers import TeacherConfigError, api_key

    problems = []
    for ds in config.datasets:
        try:
            found = open_rlds(ds.path)
            missing = [s for s in ds.splits if s not in found.splits]
            if missing:
                problems.append(f"dataset {ds.path}: no split(s) {missing} (has {sorted(found.splits)})")
        except RldsError as e:
            problems.append(str(e))
    if config.annotate.teacher.kind == "gemini":
        try:
            api_key(config.annotate.teacher)
        except TeacherConfigError as e:
            problems.append(str(e))
    if is_uri(config.workdir) and not (config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")):
        problems.append(f"workdir {config.workdir} is shared storage, but MLflow would write to a worker-local SQLite file: "
                        "set tracking.uri to an MLflow server (or $MLFLOW_TRACKING_URI)")
    if config.build.val_fraction == 0:
        problems.append("build.val_fraction is 0: evaluation and attention maps need held-out episodes")
    ft = config.finetune
    if ft.base_model in SHAPES:
        layers = SHAPES[ft.base_model]["text"]["num_hidden_layers"]
        if ft.freeze_first_n_layers > layers:
            problems.append(f"finetune.freeze_first_n_layers={ft.freeze_first_n_layers} exceeds the {layers} layers of '{ft.base_model}'")
    elif not (Path(ft.base_model) / "config.json").exists():
        problems.append(f"finetune.base_model '{ft.base_model}' is neither a shape ({', '.join(SHAPES)}) nor a checkpoint directory")
    if problems:
        raise ConfigError("invalid settings:\n  - " + "\n  - ".join(problems))


def parse_datasets(datasets: list[DatasetSpec], out_dir: str, cfg: ParseConfig, opts: dict, run: Tracker) -> list[dict]:
    """Map `parse_task` over shard groups of every (dataset, split); one merged summary per (dataset, split),
    logged to `run` with the error report of skipped episodes."""
    task = parse_task.with_options(**opts)
    jobs = [(d.path, s, group) for d in datasets for s in d.splits for group in shard_groups(d.path, s, cfg)]
    futures = [task.submit(path, split, group, out_dir, cfg) for path, split, group in jobs]
    by_split: dict[tuple[str, str], list[dict]] = {}
    for (path, split, _), f in zip(jobs, futures):
        by_split.setdefault((path, split), []).append(f.result())
    merged = [merge_summaries(parts) for parts in by_split.values()]
    for m in merged:
        prefix = f"parse.{m['dataset']}.{m['split']}."
        run.log_metrics({prefix + k: m[k] for k in ("episodes", "steps", "broken_episodes", "unlabelled_episodes")})
        for f in sorted((Path(m["steps_dir"]) / m["split"] / "_reports").glob("*.json")):
            if read_json(f)["broken"]:
                run.log_artifact(f, f"parse_errors/{m['dataset']}/{m['split']}")
    return merged


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


@flow(name="refinevla-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=4))
def refinevla_pipeline(config: PipelineConfig = PRESETS["demo"]) -> dict:
    """The whole ReFineVLA pipeline on one working directory (a local folder or a storage URI)."""
    preflight(config)
    ws = Workspace(config.workdir)
    layout = Layout(ws.root)
    run = start_run(config.tracking, layout.root, config.run_name, tags=prefect_tags())
    link_mlflow_run(run.ref)
    run.log_params(config)
    opts = {"result_storage": layout.prefect_results, "refresh_cache": config.refresh_cache}
    ckpt_dir, eval_dir, attn_dir = (layout.checkpoints / config.run_name, layout.eval / config.run_name, layout.attention / config.run_name)
    try:
        datasets = list(config.datasets)
        if not datasets:
            paths = synced(ws, [], [layout.datasets], lambda: sample_task.with_options(**opts)(str(layout.datasets), config.sample))
            datasets = [DatasetSpec(path=p, splits=list(read_json(Path(p) / "sample_scenes.json")["settings"]["splits"])) for p in paths]

        parsed = synced(ws, [], [layout.steps], lambda: parse_datasets(datasets, str(layout.steps), config.parse, opts, run))
        steps_dirs = sorted({p["steps_dir"] for p in parsed})

        annotate = annotate_task.with_options(**opts)
        annotated = synced(ws, steps_dirs, [layout.traces], lambda: [
            f.result() for f in [annotate.submit(d, str(layout.traces), config.annotate, run.ref) for d in steps_dirs]])

        build = build_task.with_options(**opts)
        data_dirs = [str(layout.reasoning / Path(d).name) for d in steps_dirs]
        built = synced(ws, [layout.traces], data_dirs, lambda: [
            f.result() for f in [build.submit(s, a["traces_dir"], out, config.build, run.ref) for s, a, out in zip(steps_dirs, annotated, data_dirs)]])

        if config.dispatch.finetune:
            trained = dispatch(ws, config, config.dispatch.finetune, finetune_flow, ckpt_dir, run, data_dirs=data_dirs, cfg=config.finetune)
        else:
            trained = synced(ws, [], [ckpt_dir], lambda: finetune_task.with_options(**opts)(data_dirs, str(ckpt_dir), config.finetune, run.ref))
        ckpt = trained["checkpoint"]

        ws.pull(eval_dir, attn_dir, layout.reports / config.run_name)
        with ws.pushing(eval_dir, attn_dir, layout.reports / config.run_name, layout.prefect_results):
            if config.dispatch.evaluate:
                evaluated = dispatch(ws, config, config.dispatch.evaluate, evaluate_flow, eval_dir, run, checkpoint=ckpt, data_dirs=data_dirs,
                                     cfg=config.evaluate, simpler=config.simpler, report=config.report)
                simulated = evaluated.pop("simpler")
            else:
                evaluated = evaluate_task.with_options(**opts).submit(ckpt, data_dirs, str(eval_dir), config.evaluate, run.ref)
                simulated = simpler_task.with_options(**opts).submit(ckpt, str(eval_dir / "simpler"), config.simpler, simpler_available(), run.ref)
            explain = config.attention.model_copy(update={
                "object_boxes_from": config.attention.object_boxes_from or [d.path for d in datasets],
                # before vs after: fine-tuning from a checkpoint directory compares with it
                "compare_checkpoint": config.attention.compare_checkpoint or (config.finetune.base_model if Path(config.finetune.base_model).is_dir() else None),
            })
            explained = attention_task.with_options(**opts).submit(ckpt, data_dirs, str(attn_dir), explain, run.ref).result()
            if not config.dispatch.evaluate:
                evaluated, simulated = evaluated.result(), simulated.result()
            reported = report_task.with_options(**opts)(str(layout.reports / config.run_name), data_dirs, [str(eval_dir)], [str(attn_dir)],
                                                         config.report, run.ref)

        summary = {
            "workdir": config.workdir, "local_root": str(layout.root), "datasets": [d.path for d in datasets], "reasoning": data_dirs,
            "stats": [b["stats"] for b in built], "checkpoint": ckpt, "training_curves": trained["curves"],
            "results": evaluated["results"], "attention": explained["pngs"], "attention_scores": explained["scores"], "simpler": simulated,
            "report": reported["report"],
            "mlflow_uri": run.ref.uri, "mlflow_experiment_id": run.ref.experiment_id, "mlflow_run_id": run.ref.run_id,
            "prefect_flow_run_id": _flow_run_id(),
            "steps": sum(p["steps"] for p in parsed), "episodes": sum(p["episodes"] for p in parsed),
            "broken_episodes": sum(p["broken_episodes"] for p in parsed),
        }
        _report(run, summary, trained, evaluated, built, annotated)
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish()
    return summary


def synced(ws: Workspace, inputs: list, outputs: list, call):
    """Run one stage on this worker's copy of the working directory: bring its inputs, its earlier outputs
    (a resumed or cached stage finds them) and the cache records from shared storage, then share what it wrote.
    No-ops for a local working directory."""
    ws.pull(*inputs, *outputs, Layout(ws.root).prefect_results)
    with ws.pushing(*outputs, Layout(ws.root).prefect_results):
        return call()


RESULT_FILE = ".flow-result.json"


def dispatch(ws: Workspace, config: PipelineConfig, deployment: str, stage_flow, out_dir: Path, run: Tracker, **params) -> dict:
    """Run a stage flow as `deployment` (on its own work pool) and wait; its outputs come back through the
    shared working directory, never through this worker's paths."""
    from prefect.deployments import run_deployment

    portable = {k: ws.portable(v) if not hasattr(v, "model_dump") else v for k, v in params.items()}
    parameters = {
        **portable, "out_dir": ws.rel(out_dir), "parent_run_id": run.ref.run_id, "refresh_cache": config.refresh_cache,
        "workdir": config.workdir if ws.remote else str(ws.root),  # a relative local path means another folder elsewhere
        "tracking": config.tracking.model_copy(update={"uri": run.ref.uri}),  # this run's store, whatever the worker's env says
    }
    log.info("dispatching %s to deployment '%s'", stage_flow.name, deployment)
    child = run_deployment(deployment, parameters=parameters, timeout=config.dispatch.timeout_s)
    if not child.state or not child.state.is_final():
        _cancel(child.id)  # a later run must not race this one on the same folders
        raise TimeoutError(f"deployment '{deployment}' (flow run {child.id}) did not finish within {config.dispatch.timeout_s}s; cancelled it")
    if not child.state.is_completed():
        raise RuntimeError(f"deployment '{deployment}' (flow run {child.id}) ended {child.state.name}; its finished work is kept: run the pipeline again to resume")
    ws.pull(out_dir / RESULT_FILE)
    result = ws.localize(read_json(out_dir / RESULT_FILE), PATH_KEYS)
    # only what this flow reads next: the final checkpoint without its optimizer state, figures, tables
    ws.pull(*(result[k] for k in PATH_KEYS if isinstance(result.get(k), str)), skip=("trainer_state.pt",))
    return result


PATH_KEYS = ("checkpoint", "curves", "results", "out_dir", "report")


def _cancel(flow_run_id) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message="the dispatching pipeline stopped waiting"), force=True)


def _report(run: Tracker, summary: dict, trained: dict, evaluated: dict, built: list[dict], annotated: list[dict]) -> None:
    """Headline artifacts and metrics on the pipeline's own MLflow run, and a Prefect Markdown artifact."""
    for b in built:
        run.log_artifact(b["stats"], f"datasets/{b['dataset']}")
        run.log_artifact(Path(b["out_dir"]) / "README.md", f"datasets/{b['dataset']}")
    run.log_artifact(summary["training_curves"])
    run.log_artifact(summary["results"])
    run.log_artifact(summary["report"], "report")
    for png in summary["attention"]:
        run.log_artifact(png, "attention")
    run.log_metrics({
        "steps": summary["steps"], "episodes": summary["episodes"], "trace_failed": sum(a["failed"] for a in annotated),
        **{k: v for k, v in trained.items() if k.startswith("final_") and isinstance(v, float)},
        **{k: v for k, v in evaluated.items() if k.startswith("val_") and isinstance(v, (int, float))},
    })
    run.set_tags({"checkpoint": summary["checkpoint"], "simpler_env": summary["simpler"]["status"]})
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(
            key="refinevla-results",
            markdown=Path(summary["results"]).read_text() + f"\n\nMLflow run `{summary['mlflow_run_id']}` at `{summary['mlflow_uri']}`; "
            f"checkpoint `{summary['checkpoint']}`; SimplerEnv: {summary['simpler']['status']}.\n",
            description="ReFineVLA offline evaluation",
        )
    except Exception as e:  # the results are on disk and in MLflow; a UI artifact is a convenience
        log.warning("could not create the Prefect artifact: %s", e)


# ---------------------------------------------------------------------------------------------------
# One flow per stage, for `refinevla <stage>`: the same tasks, their own MLflow run.


def _stage(ws: Workspace, tracking: TrackingConfig, name: str, call, inputs=(), outputs=(), parent_run_id: str | None = None,
           refresh_cache: bool = False):
    """One stage as its own flow run: sync with shared storage around it, an MLflow run (nested under the
    pipeline's run when dispatched by it), and the result written beside the outputs for a dispatching flow."""
    layout = Layout(ws.root)
    tags = {"stage": name, **prefect_tags(), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    ws.pull(*inputs, *outputs, layout.prefect_results)
    run = start_run(tracking, layout.root, name, tags=tags)
    link_mlflow_run(run.ref)
    try:
        with ws.pushing(*outputs, layout.prefect_results):
            result = call({"result_storage": layout.prefect_results, "refresh_cache": refresh_cache}, run.ref)
            if outputs and isinstance(result, dict):
                write_json_atomic(Path(outputs[0]) / RESULT_FILE, ws.portable(result))
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish()
    return result


@flow(name="refinevla-sample")
def sample_flow(out_dir: str = "work/datasets", cfg: SampleConfig = SampleConfig(), workdir: str = "work") -> list[str]:
    ws = Workspace(workdir)
    out = str(ws.local(out_dir))
    paths = sample_task.with_options(result_storage=Layout(ws.root).prefect_results)(out, cfg)
    ws.push(out, Layout(ws.root).prefect_results)
    return paths


@flow(name="refinevla-parse", task_runner=ThreadPoolTaskRunner(max_workers=4))
def parse_flow(dataset_dir: str, split: str, out_dir: str, cfg: ParseConfig = ParseConfig(), workdir: str = "work",
               tracking: TrackingConfig = TrackingConfig()) -> dict:
    ws = Workspace(workdir)
    src, out = str(ws.local(dataset_dir)), str(ws.local(out_dir))

    def parse(o, ref):
        return parse_datasets([DatasetSpec(path=src, splits=[split])], out, cfg, o, Tracker(ref))[0]

    return _stage(ws, tracking, "parse", parse, [src], [out])


@flow(name="refinevla-annotate")
def annotate_flow(steps_dir: str, traces_root: str, cfg: AnnotateConfig = AnnotateConfig(), workdir: str = "work",
                  tracking: TrackingConfig = TrackingConfig()) -> dict:
    ws = Workspace(workdir)
    steps, traces = str(ws.local(steps_dir)), str(ws.local(traces_root))
    return _stage(ws, tracking, "annotate", lambda o, ref: annotate_task.with_options(**o)(steps, traces, cfg, ref), [steps], [traces])


@flow(name="refinevla-reannotate", task_runner=ThreadPoolTaskRunner(max_workers=4))
def reannotate_flow(workdir: str = "work", cfg: AnnotateConfig = AnnotateConfig(), build: BuildConfig = BuildConfig(),
                    tracking: TrackingConfig = TrackingConfig()) -> list[dict]:
    """Scheduled upkeep of a working directory: for every parsed dataset, ask the teacher again about the
    steps whose trace is missing, failed or stale (data, model or prompt changed), then rebuild the
    dataset (a cached no-op when no trace changed). Steps with a current answer are never asked again."""
    ws = Workspace(workdir)
    layout = Layout(ws.root)
    ws.pull(layout.steps)
    steps_dirs = sorted(str(d) for d in layout.steps.iterdir() if d.is_dir() and any(d.rglob("part-*.parquet"))) if layout.steps.exists() else []
    if not steps_dirs:
        raise FileNotFoundError(f"{layout.steps}: no parsed datasets to re-annotate; run the pipeline first")

    def run(o, ref):
        asked = [(d, reannotate_task.with_options(**o).submit(d, str(layout.traces), cfg, ref)) for d in steps_dirs]
        return [{"annotate": (a := f.result()), "build": build_task.with_options(**o)(d, a["traces_dir"], str(layout.reasoning / Path(d).name), build, ref)}
                for d, f in asked]

    return _stage(ws, tracking, "reannotate", run, [], [layout.traces, layout.reasoning])


@flow(name="refinevla-build")
def build_flow(steps_dir: str, traces_dir: str, out_dir: str, cfg: BuildConfig = BuildConfig(), workdir: str = "work",
               tracking: TrackingConfig = TrackingConfig(), report: ReportConfig = ReportConfig()) -> dict:
    ws = Workspace(workdir)
    steps, traces, out = str(ws.local(steps_dir)), str(ws.local(traces_dir)), str(ws.local(out_dir))
    page_dir = Layout(ws.root).reports / f"build-{Path(out).name}"

    def build_and_report(o, ref):
        built = build_task.with_options(**o)(steps, traces, out, cfg, ref)
        return {**built, "report": _page(o, ref, page_dir, [out], [], [], report)["report"]}

    return _stage(ws, tracking, "build", build_and_report, [steps, traces], [out, page_dir])


@flow(name="refinevla-finetune")
def finetune_flow(data_dirs: list[str], out_dir: str, cfg: FinetuneConfig = FinetuneConfig(), workdir: str = "work",
                  tracking: TrackingConfig = TrackingConfig(), parent_run_id: str | None = None, refresh_cache: bool = False) -> dict:
    """Fine-tune on GPU workers (the `finetune` deployment); resumes from the newest checkpoint in `out_dir`."""
    ws = Workspace(workdir)
    data, out = [str(ws.local(d)) for d in data_dirs], str(ws.local(out_dir))
    return _stage(ws, tracking, "finetune", lambda o, ref: finetune_task.with_options(**o)(data, out, cfg, ref), data, [out], parent_run_id,
                  refresh_cache)


@flow(name="refinevla-evaluate")
def evaluate_flow(checkpoint: str, data_dirs: list[str], out_dir: str, cfg: EvaluateConfig = EvaluateConfig(),
                  simpler: SimplerConfig = SimplerConfig(), workdir: str = "work", tracking: TrackingConfig = TrackingConfig(),
                  report: ReportConfig = ReportConfig(), parent_run_id: str | None = None, refresh_cache: bool = False) -> dict:
    """Offline metrics and SimplerEnv (the `evaluate` deployment runs on workers that have SimplerEnv)."""
    ws = Workspace(workdir)
    ckpt, data, out = str(ws.local(checkpoint)), [str(ws.local(d)) for d in data_dirs], str(ws.local(out_dir))
    page_dir = Layout(ws.root).reports / f"eval-{Path(out).name}"

    def both(o, ref):
        offline = evaluate_task.with_options(**o)(ckpt, data, out, cfg, ref)
        sim = simpler_task.with_options(**o)(ckpt, str(Path(out) / "simpler"), simpler, simpler_available(), ref)
        return {**offline, "simpler": sim, "report": _page(o, ref, page_dir, [], [out], [], report)["report"]}

    return _stage(ws, tracking, "evaluate", both, [ckpt, *data], [out, page_dir], parent_run_id, refresh_cache)


@flow(name="refinevla-attention")
def attention_flow(checkpoint: str, data_dirs: list[str], out_dir: str, cfg: AttentionConfig = AttentionConfig(), workdir: str = "work",
                   tracking: TrackingConfig = TrackingConfig()) -> dict:
    ws = Workspace(workdir)
    ckpt, data, out = str(ws.local(checkpoint)), [str(ws.local(d)) for d in data_dirs], str(ws.local(out_dir))
    return _stage(ws, tracking, "attention", lambda o, ref: attention_task.with_options(**o)(ckpt, data, out, cfg, ref), [ckpt, *data], [out])


@flow(name="refinevla-view")
def view_flow(out_dir: str, data_dirs: list[str], eval_dirs: list[str], attention_dirs: list[str], cfg: ReportConfig = ReportConfig(),
              workdir: str = "work", tracking: TrackingConfig = TrackingConfig()) -> dict:
    """The HTML report of the given folders; always written afresh (it is cheap), and logged to MLflow."""
    ws = Workspace(workdir)
    out, data, evals, attn = str(ws.local(out_dir)), *([str(ws.local(p)) for p in ps] for ps in (data_dirs, eval_dirs, attention_dirs))

    return _stage(ws, tracking, "view", lambda o, ref: _page({**o, "refresh_cache": True}, ref, out, data, evals, attn, cfg),
                  [*data, *evals, *attn], [out])


def _page(opts: dict, ref, out_dir, data_dirs: list, eval_dirs: list, attention_dirs: list, cfg: ReportConfig) -> dict:
    """The HTML report task, its page also logged on the calling flow's own MLflow run."""
    page = report_task.with_options(**opts)(str(out_dir), data_dirs, eval_dirs, attention_dirs, cfg, ref)
    Tracker(ref).log_artifact(page["report"], "report")
    return page
