"""SimplerEnv evaluation as its own flow and deployment, so one work pool of GPU workers can share the protocol.

- `refinevla-simpler` with `num_shards=1` runs every (task, config) item on this worker's threads (each item a
  cached, retried Prefect task writing its own file) and merges them into `episodes.parquet` and the tables.
- With `shard=i, num_shards=n` it runs only items i, i+n, i+2n, ... and does not merge.
- With `fan_out="refinevla-simpler/simpler"` (a deployment of this flow) and `num_shards=n > 1`, it starts n flow
  runs of that deployment, one per shard, which any worker of the deployment's pool picks up; waits for them;
  and merges what they wrote. Workers must share the working directory (the same requirement as the pipeline).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from data.storage import Workspace
from flows.pipeline import _stage
from tasks.simpler import (
    INSTALL_HINT,
    SimplerConfig,
    SimplerInstallError,
    check_install,
    item_options,
    merge_results,
    plan,
    shard_items,
    simpler_available,
    simpler_item_task,
)
from tasks.tracking import Tracker, TrackingConfig


def _run_shard(deployment: str, params: dict) -> None:
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters=params, timeout=None)
    if run.state is None or not run.state.is_completed():
        raise RuntimeError(f"SimplerEnv shard {params['shard']}: flow run '{run.name}' ended {run.state.name if run.state else 'without a state'}")


@flow(name="refinevla-simpler", task_runner=ThreadPoolTaskRunner(max_workers=4))
def simpler_flow(checkpoint: str | None = None, out_dir: str | None = None, cfg: SimplerConfig = SimplerConfig(), shard: int = 0,
                 num_shards: int = 1, fan_out: str | None = None, workdir: str = "work", run_name: str = "refinevla-bridge",
                 tracking: TrackingConfig = TrackingConfig()) -> dict:
    """`checkpoint` None: the newest finished `step-*` of <workdir>/checkpoints/<run_name>; `out_dir` None:
    <workdir>/eval/<run_name>/simpler (the pipeline's layout)."""
    from data.layout import Layout
    from tasks.finetune import latest_checkpoint

    ws = Workspace(workdir)
    layout = Layout(ws.root)
    if checkpoint is None:
        ws.pull(layout.checkpoints / run_name)
        found = latest_checkpoint(layout.checkpoints / run_name)
        if found is None:
            raise FileNotFoundError(f"no finished checkpoint under {layout.checkpoints / run_name}; pass checkpoint=")
        checkpoint = str(found)
    checkpoint = str(ws.local(checkpoint))
    out_dir = str(ws.local(out_dir)) if out_dir else str(layout.eval / run_name / "simpler")
    items = plan(cfg)

    def body(o, ref):
        tracker = Tracker(ref)
        tracker.log_params(cfg, "simpler.")
        if fan_out and num_shards > 1:
            base = {"checkpoint": ws.rel(checkpoint), "out_dir": ws.rel(out_dir), "cfg": cfg.model_dump(mode="json"), "num_shards": num_shards,
                    "workdir": workdir, "run_name": run_name, "tracking": tracking.model_dump(mode="json")}
            with ThreadPoolExecutor(num_shards) as pool:
                list(pool.map(lambda i: _run_shard(fan_out, {**base, "shard": i}), range(num_shards)))
            ws.pull(out_dir)  # what every shard wrote
            return merge_results(out_dir, items, cfg, checkpoint, tracker)
        if not simpler_available():
            return {"status": "skipped", "reason": INSTALL_HINT}
        mine = shard_items(items, shard, num_shards)
        problems = check_install(cfg.asset_dir, mine, probe_env=False)
        if problems:
            raise SimplerInstallError("SimplerEnv cannot run here:\n  - " + "\n  - ".join(problems))
        opts = dict(zip([it.key for it in items], item_options(cfg, items)))  # video quota over the whole protocol
        futures = simpler_item_task.with_options(**o).map(unmapped(checkpoint), unmapped(out_dir), mine, [opts[it.key] for it in mine])
        done = [f.result() for f in futures]
        if num_shards == 1:
            return merge_results(out_dir, items, cfg, checkpoint, tracker)
        return {"status": "shard", "shard": shard, "num_shards": num_shards, "items": len(done), "episodes": sum(d["episodes"] for d in done)}

    name = f"simpler-eval-{shard}-of-{num_shards}" if num_shards > 1 and not fan_out else "simpler-eval"
    return _stage(ws, tracking, name, body, [checkpoint], [out_dir])


if __name__ == "__main__":  # python -m flows.simpler CHECKPOINT OUT_DIR [full]
    import sys

    print(simpler_flow(sys.argv[1], str(Path(sys.argv[2])), SimplerConfig(mode=sys.argv[3] if len(sys.argv) > 3 else "smoke")))
