"""`refinevla`: one subcommand per stage, and `run` for the whole pipeline.

Every setting of a stage's pydantic model is a flag (nested fields are dotted: `--teacher.model`,
`--finetune.max-steps`), documented with its default; `--config FILE.yaml` loads settings first and flags
override them. Each command runs that stage's Prefect flow locally and prints its summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from flows import env

STAGES = ("sample", "parse", "annotate", "reannotate", "build", "finetune", "evaluate", "attention", "view", "run")


# ---------------------------------------------------------------------------------------------------- flags from models
def _unwrap(ann):
    """Optional[X] → X; returns (type, is_list)."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else (str, False)
    if origin is list:
        return typing.get_args(ann)[0], True
    return ann, False


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group(f"{prefix.rstrip('.') or model.__name__} settings", (model.__doc__ or "").strip())
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        ann, is_list = _unwrap(field.annotation)
        default = field.get_default(call_default_factory=True)
        if isinstance(ann, type) and issubclass(ann, BaseModel) and not is_list:
            add_model_flags(parser, ann, f"{prefix}{name}.")
            continue
        flag = "--" + f"{prefix}{name}".replace("_", "-")
        shown = default.model_dump(mode="json") if isinstance(default, BaseModel) else default
        kwargs: dict[str, Any] = {"dest": f"{prefix}{name}", "default": argparse.SUPPRESS,
                                  "help": f"{field.description or ''} (default: {shown})".replace("%", "%%")}
        if ann is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(ann) is Literal:
            kwargs["choices"] = list(typing.get_args(ann))
        else:
            kwargs["type"] = ann if ann in (int, float) else str
            if is_list:
                kwargs["nargs"] = "+"
        group.add_argument(flag, **kwargs)


def overrides(args: argparse.Namespace, names: set[str] | None = None) -> dict:
    """Dotted flag destinations → a nested dict of the given settings."""
    out: dict = {}
    for key, value in vars(args).items():
        if "." not in key and names is None or names is not None and key.split(".")[0] not in names:
            continue
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of settings")
    return data


def settings(model: type[BaseModel], args: argparse.Namespace, base: dict | None = None) -> BaseModel:
    names = set(model.model_fields)
    return model.model_validate(merge(merge(base or {}, load_yaml(getattr(args, "config", None))), overrides(args, names)))


# ---------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from data.sample import SampleConfig
    from flows.config import PRESETS, PipelineConfig
    from tasks.annotate import AnnotateConfig
    from tasks.attention import AttentionConfig
    from tasks.build import BuildConfig
    from tasks.evaluate import EvaluateConfig
    from tasks.finetune import FinetuneConfig
    from tasks.parse import ParseConfig
    from tasks.report import ReportConfig
    from tasks.simpler import SimplerConfig

    p = argparse.ArgumentParser(prog="refinevla", description="ReFineVLA: teacher-guided reasoning fine-tuning of VLA models.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, model: type[BaseModel] | None) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--config", help="YAML file with settings (flags override it)")
        if name != "run":
            c.add_argument("--workdir", default="work", help="Folder for the MLflow store and Prefect cache (default: work)")
            c.add_argument("--mlflow-uri", dest="tracking.uri", default=argparse.SUPPRESS,
                           help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<workdir>/mlflow.db)")
            c.add_argument("--experiment", dest="tracking.experiment", default=argparse.SUPPRESS, help="MLflow experiment (default: refinevla)")
        if model is not None:
            add_model_flags(c, model)
        return c

    c = command("sample", "Write the bundled sample datasets (TFDS layout).", SampleConfig)
    c.add_argument("--out", default="work/datasets", help="Output folder (default: work/datasets)")

    c = command("parse", "Parse an RLDS dataset into step rows (Parquet).", ParseConfig)
    c.add_argument("dataset_dir", help="<root>/<name>/<version> or <root>/<name>")
    c.add_argument("--split", required=True, help="Split to parse, e.g. train")
    c.add_argument("--out", default="work/steps", help="Output root; writes <out>/<dataset>/<split>/part-*.parquet (default: work/steps)")

    c = command("annotate", "Annotate parsed steps with reasoning traces from a teacher.", AnnotateConfig)
    c.add_argument("--steps", required=True, help="Parsed steps of one dataset: <steps root>/<dataset>")
    c.add_argument("--traces", default="work/traces", help="Traces root (default: work/traces)")

    c = command("reannotate", "Ask the teacher again about missing, failed or stale steps of a workdir, then rebuild.", AnnotateConfig)
    add_model_flags(c, BuildConfig, "build.")

    c = command("build", "Join steps and traces into the reasoning dataset (Parquet + stats.json + card).", BuildConfig)
    c.add_argument("--steps", required=True, help="Parsed steps of one dataset: <steps root>/<dataset>")
    c.add_argument("--traces", required=True, help="Trace folder: <traces root>/<dataset>/<teacher>@<prompt-version>")
    c.add_argument("--out", required=True, help="Output folder, e.g. work/reasoning/<dataset>")

    c = command("finetune", "Fine-tune the student with the ReFineVLA objective.", FinetuneConfig)
    c.add_argument("--data", nargs="+", required=True, help="Reasoning dataset folder(s) (with train/ and stats.json)")
    c.add_argument("--out", required=True, help="Run folder for checkpoints, e.g. work/checkpoints/<run>")

    c = command("evaluate", "Offline metrics on the val split, and SimplerEnv when installed.", EvaluateConfig)
    add_model_flags(c, SimplerConfig, "simpler.")
    c.add_argument("--checkpoint", required=True, help="Checkpoint folder (step-N)")
    c.add_argument("--data", nargs="+", required=True, help="Reasoning dataset folder(s) (with val/)")
    c.add_argument("--out", required=True, help="Output folder, e.g. work/eval/<run>")

    c = command("attention", "Attention maps of the action tokens over the image.", AttentionConfig)
    c.add_argument("--checkpoint", required=True, help="Checkpoint folder (step-N)")
    c.add_argument("--data", nargs="+", required=True, help="Reasoning dataset folder(s) (with val/)")
    c.add_argument("--out", required=True, help="Output folder, e.g. work/attention/<run>")

    c = command("view", "Write a static HTML report (index.html) of episodes, traces and evaluation results.", ReportConfig)
    c.add_argument("--data", nargs="+", default=[], help="Reasoning dataset folder(s), e.g. work/reasoning/<dataset>")
    c.add_argument("--eval", nargs="+", default=[], dest="eval_dirs", help="Evaluation folder(s) eval/<run> (offline results, simpler/ inside)")
    c.add_argument("--attention", nargs="+", default=[], dest="attention_dirs", help="Attention folder(s) attention/<run>")
    c.add_argument("--out", default=None, help="Report folder (default: <workdir>/reports/view). Without --data/--eval/--attention: "
                   "everything under <workdir>/reasoning, eval and attention")

    c = command("run", "The whole pipeline: parse → annotate → build → fine-tune → evaluate → attention.", None)
    c.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="Named configuration to start from (default: demo)")
    c.add_argument("--dataset", action="append", default=[], metavar="DIR[:SPLIT,SPLIT]",
                   help="Input dataset (repeatable); default: the bundled sample datasets")
    add_model_flags(c, PipelineConfig, skip=("datasets",))
    return p


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    env.configure()
    args = build_parser().parse_args(argv)
    from flows import pipeline as fl
    from tasks.tracking import TrackingConfig

    tracking = TrackingConfig.model_validate(overrides(args).get("tracking", {})) if args.command != "run" else None
    if args.command == "sample":
        from data.sample import SampleConfig

        result = fl.sample_flow(args.out, settings(SampleConfig, args), args.workdir)
    elif args.command == "parse":
        from tasks.parse import ParseConfig

        result = fl.parse_flow(args.dataset_dir, args.split, args.out, settings(ParseConfig, args), args.workdir, tracking)
    elif args.command == "annotate":
        from tasks.annotate import AnnotateConfig

        result = fl.annotate_flow(args.steps, args.traces, settings(AnnotateConfig, args), args.workdir, tracking)
    elif args.command == "reannotate":
        from tasks.annotate import AnnotateConfig
        from tasks.build import BuildConfig

        build = BuildConfig.model_validate(overrides(args).get("build", {}))
        result = fl.reannotate_flow(args.workdir, settings(AnnotateConfig, args), build, tracking)
    elif args.command == "build":
        from tasks.build import BuildConfig

        result = fl.build_flow(args.steps, args.traces, args.out, settings(BuildConfig, args), args.workdir, tracking)
    elif args.command == "finetune":
        from tasks.finetune import FinetuneConfig

        result = fl.finetune_flow(args.data, args.out, settings(FinetuneConfig, args), args.workdir, tracking)
    elif args.command == "evaluate":
        from tasks.evaluate import EvaluateConfig
        from tasks.simpler import SimplerConfig

        simpler = SimplerConfig.model_validate(overrides(args).get("simpler", {}))
        result = fl.evaluate_flow(args.checkpoint, args.data, args.out, settings(EvaluateConfig, args), simpler, args.workdir, tracking)
    elif args.command == "attention":
        from tasks.attention import AttentionConfig

        result = fl.attention_flow(args.checkpoint, args.data, args.out, settings(AttentionConfig, args), args.workdir, tracking)
    elif args.command == "view":
        from tasks.report import ReportConfig

        data, evals, attention = view_inputs(args)
        from data.storage import is_uri

        out = args.out or ("reports/view" if is_uri(args.workdir) else str(Path(args.workdir) / "reports" / "view"))  # URI: relative to it
        result = fl.view_flow(out, data, evals, attention, settings(ReportConfig, args), args.workdir, tracking)
        print(json.dumps(result, indent=2, default=str))
        print(f"Open it: file://{Path(result['report']).resolve()}")
        return 0
    else:
        result = run_pipeline(args)
        print_summary(result)
        return 0
    print(json.dumps(result, indent=2, default=str))
    return 0


def view_inputs(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """The folders `view` reports on: as given, or when none is given, every dataset, evaluation and attention
    folder of the working directory."""
    if args.data or args.eval_dirs or args.attention_dirs:
        return args.data, args.eval_dirs, args.attention_dirs
    from data.storage import Workspace

    ws = Workspace(args.workdir)  # a storage URI: look at this machine's copy of it, brought up to date
    ws.pull("reasoning", "eval", "attention", skip=("trainer_state.pt",))
    root = ws.root

    def subdirs(name: str) -> list[str]:
        return sorted(str(d) for d in (root / name).iterdir() if d.is_dir()) if (root / name).is_dir() else []

    found = ([d for d in subdirs("reasoning") if any(Path(d).glob("*/part-*.parquet"))], subdirs("eval"), subdirs("attention"))
    if not any(found):
        raise SystemExit(f"{root}: no reasoning/, eval/ or attention/ folders to show; give --data, --eval or --attention")
    return found


def parse_dataset_arg(text: str) -> dict:
    path, _, splits = text.partition(":")
    return {"path": path, "splits": splits.split(",") if splits else ["train"]}


def run_pipeline(args: argparse.Namespace) -> dict:
    from flows.config import PRESETS, PipelineConfig
    from flows.pipeline import refinevla_pipeline

    base = PRESETS[args.preset].model_dump(mode="json")
    extra = overrides(args, set(PipelineConfig.model_fields))
    if args.dataset:
        extra["datasets"] = [parse_dataset_arg(d) for d in args.dataset]
    config = PipelineConfig.model_validate(merge(merge(base, load_yaml(args.config)), extra))
    return refinevla_pipeline(config)


def print_summary(s: dict) -> None:
    import os

    db = s["mlflow_uri"]
    lines = [
        "",
        "ReFineVLA pipeline finished.",
        f"  steps parsed        {s['steps']} steps in {s['episodes']} episodes"
        + (f"; {s['broken_episodes']} broken episodes skipped (see steps/<dataset>/<split>/_reports/)" if s["broken_episodes"] else ""),
        f"  reasoning dataset   {', '.join(s['reasoning'])}  (train/ val/ Parquet, stats.json, README.md)",
        f"  action statistics   {', '.join(s['stats'])}",
        f"  checkpoint          {s['checkpoint']}",
        f"  training curves     {s['training_curves']}",
        f"  result table        {s['results']}",
        f"  report              {s['report']}  (open in a browser; refinevla view for other episodes)" if s.get("report") else "",
        f"  attention maps      {Path(s['attention'][0]).parent}/  ({len(s['attention'])} PNGs, scores.md)" + "".join(
            f"; {label}: object mass {sc['object_mass_mean']:.3f} (uniform attention: {sc['uniform_mean']:.3f})"
            for label, sc in s["attention_scores"].items() if sc["object_mass_mean"] is not None),
        f"  SimplerEnv          {s['simpler']['status']}" + (" (not installed; see README 'SimplerEnv')" if s["simpler"]["status"] == "skipped" else ""),
        f"  MLflow run          {s['mlflow_run_id']} (experiment id {s['mlflow_experiment_id']}) in {db}",
        "",
        "Open the UIs:",
        f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri {db} --host 127.0.0.1 --port 5000 --workers 1",
        f"           then http://127.0.0.1:5000/#/experiments/{s['mlflow_experiment_id']}/runs/{s['mlflow_run_id']}",
        f"  Prefect: PREFECT_HOME={os.environ.get('PREFECT_HOME')} .venv/bin/prefect server start --host 127.0.0.1 --port 4200",
        f"           then http://127.0.0.1:4200/runs/flow-run/{s['prefect_flow_run_id']}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
