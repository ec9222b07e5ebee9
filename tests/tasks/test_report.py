"""The HTML report (`refinevla view`): built from the sample datasets and an evaluation folder that honours the
SimplerEnv stage's contract, checked as text and in headless Chromium."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tasks.report import ReportConfig, run_report

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def count(page: str, attr: str) -> int:
    return len(re.findall(rf'\b{attr}="', page))


def episode_ids(page: str) -> list[str]:
    return re.findall(r'<section class="episode[^"]*" id="[^"]*" data-episode="([^"]*)"', page)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory) -> Path:
    """eval/<run>/ with offline results, and simpler/ as the SimplerEnv stage writes it: episodes.parquet, GIF videos,
    per-step JSONL traces with frames (2 tasks x 3 episodes x 4 steps); attention/<run>/ beside it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("eval")
    run, sim = root / "eval" / "run", root / "eval" / "run" / "simpler"
    for sub in ("frames", "traces", "videos"):
        (sim / sub).mkdir(parents=True)
    rows = []
    for t, task in enumerate(("widowx_carrot_on_plate", "widowx_stack_cube")):
        for e in range(3):
            name = f"{task}_{e}"
            frames = [Image.new("RGB", (64, 48), (60 * s, 90 + 40 * e, 120 * t)) for s in range(4)]
            for s, im in enumerate(frames):
                im.save(sim / "frames" / f"{name}_{s}.jpg")
            frames[0].save(sim / "videos" / f"{name}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
            steps = [{"step": s, "reasoning": f"<Observation>: the carrot <b>{s}</b>", "action": [0.01 * s, 0, -0.01, 0, 0, 0.02, float(s < 2)],
                      "frame": f"frames/{name}_{s}.jpg"} for s in range(4)]
            (sim / "traces" / f"{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
            rows.append({"task": task, "variant": "", "episode_id": e, "instruction": f"put the carrot on the plate ({task})",
                         "success": e == 0, "grasped": e < 2, "steps": 4, "video": f"videos/{name}.gif", "trace_file": f"traces/{name}.jsonl"})
    pd.DataFrame(rows).to_parquet(sim / "episodes.parquet")
    (run / "results.csv").write_text("dataset,samples,action_token_acc\nbridge_dataset/1.0.0,12,0.25\nall,12,0.25\n")
    (run / "generations.jsonl").write_text(json.dumps({"episode_id": "val-1", "step_index": 0, "instruction": "pick it",
                                                       "reasoning": "<sub_action> move <left>", "actions": [[0.0] * 7], "gt_actions": [[0.1] * 7]}) + "\n")
    attention = root / "attention" / "run"
    attention.mkdir(parents=True)
    Image.new("RGB", (300, 110), (200, 30, 30)).save(attention / "fine-tuned_bridge_dataset_val-1_step000.png")
    (attention / "scores.json").write_text(json.dumps({"tokens": "action", "top_k": 8, "scores": {
        "fine-tuned": {"scored": 1, "object_mass_mean": 0.4, "uniform_mean": 0.1, "per_step": [0.4]}}}))
    return root


def test_samples_episodes_by_setting_and_lists_the_rest_by_id(tmp_path, reasoning_dirs):
    cfg = ReportConfig(max_episodes=2, max_steps=5, seed=3)
    r = run_report(tmp_path / "a", reasoning_dirs, cfg=cfg)
    page = Path(r["report"]).read_text()
    shown = episode_ids(page)
    assert r["episodes"] == len(shown) == 4 and r["steps"] == count(page, "data-step") == 4 * 5  # every sample episode has > 5 steps
    rest = re.findall(r"<tr><td><code>([^<]*)</code>", page)
    assert len(rest) == 5 + 3 - 4 and not set(rest) & set(shown)  # the others, listed by id
    again = Path(run_report(tmp_path / "b", reasoning_dirs, cfg=cfg)["report"]).read_text()
    assert episode_ids(again) == shown  # the same seed shows the same episodes
    one = run_report(tmp_path / "c", reasoning_dirs, cfg=ReportConfig(episodes=[rest[0]], max_steps=100))
    assert episode_ids(Path(one["report"]).read_text()) == [rest[0]] and one["steps"] > 5
    with pytest.raises(ValueError, match="no-such-episode"):
        run_report(tmp_path / "d", reasoning_dirs, cfg=ReportConfig(episodes=["no-such-episode"]))
    assert r["bytes"] < 2_000_000 and not (tmp_path / "a" / "assets").exists()  # one self-contained page


def test_failed_and_stale_traces_are_flagged_and_text_is_escaped(tmp_path, workdir):
    from tasks.build import run_build

    w = tmp_path / "w"
    for sub in ("steps", "traces"):
        shutil.copytree(workdir / sub / "fractal20220817_data", w / sub / "fractal20220817_data")
    traces = w / "traces" / "fractal20220817_data" / "offline@offline-v1"
    f = sorted(traces.glob("*.json"))[0]
    records = json.loads(f.read_text())
    records[0] = {**records[0], "status": "failed", "trace": None, "error": "teacher said <b>no</b>"}
    records[1] = {**records[1], "episode_key": "other-data"}
    records[2]["trace"]["observation"] = "<script>alert(1)</script> a <img src=x onerror=alert(2)> carrot"
    f.write_text(json.dumps(records))
    run_build(w / "steps" / "fractal20220817_data", traces, w / "reasoning" / "fractal20220817_data")

    r = run_report(tmp_path / "report", [w / "reasoning" / "fractal20220817_data"], cfg=ReportConfig(episodes=[f.stem]))
    page = Path(r["report"]).read_text()
    assert episode_ids(page) == [f.stem] and f'class="episode flagged" id="ep-fractal20220817_data-{f.stem}"' in page
    assert re.search(r'class="step failed" id="[^"]*-s0"', page) and re.search(r'class="step stale" id="[^"]*-s1"', page)
    assert "teacher said &lt;b&gt;no&lt;/b&gt;" in page and "asked about other data" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a &lt;img src=x onerror=alert(2)&gt;" in page
    assert "<script" not in page and "onerror=alert" not in page.replace("&lt;img src=x onerror=alert(2)&gt;", "")
    assert "offline-v1" in page and "rule-based" in page  # teacher model and prompt version per step


def test_evaluation_results_per_task_with_videos_and_aligned_reasoning(tmp_path, eval_run):
    r = run_report(tmp_path / "r", eval_dirs=[eval_run / "eval" / "run"], attention_dirs=[eval_run / "attention" / "run"],
                   cfg=ReportConfig(max_episodes=2))
    page = Path(r["report"]).read_text()
    assert (r["sim_episodes"], r["sim_steps"]) == (4, 16) and count(page, "data-episode") == 4
    table = re.search(r'<table class="simpler">(.*?)</table>', page).group(1)  # the per-task table
    assert re.findall(r"<th>([^<]*)</th>", table) == ["task", "episodes", "grasp rate", "success rate"]
    assert "<tr><td>widowx_stack_cube</td><td>3</td><td>0.667</td><td>0.333</td></tr>" in table
    assert page.count('class="video"') == 4 and page.count("data:image/gif;base64,") == 4  # small GIFs embedded
    assert "&lt;Observation&gt;: the carrot &lt;b&gt;3&lt;/b&gt;" in page and "<b>3</b>" not in page
    assert "1 more episodes of widowx_stack_cube not shown" in page
    assert "object mass (mean)" in page and "fine-tuned_bridge_dataset_val-1_step000.png" in page
    assert "&lt;sub_action&gt; move &lt;left&gt;" in page and "0.250" in page  # offline generations and metrics

    big = run_report(tmp_path / "big", eval_dirs=[eval_run / "eval" / "run"], cfg=ReportConfig(max_episodes=1, max_inline_video_kb=0))
    big_page = Path(big["report"]).read_text()
    assert big_page.count('src="assets/') == 2 and len(list((tmp_path / "big" / "assets").glob("*.gif"))) == 2


def test_missing_columns_and_files_leave_their_part_out(tmp_path, eval_run):
    d = tmp_path / "eval" / "run"
    shutil.copytree(eval_run / "eval" / "run" / "simpler", d / "simpler")
    df = pd.read_parquet(d / "simpler" / "episodes.parquet").drop(columns=["grasped", "video", "variant"])
    df.loc[0, "trace_file"] = None
    df.to_parquet(d / "simpler" / "episodes.parquet")
    bad = d / "simpler" / df.loc[1, "trace_file"]  # actions that are not numbers: shown as text, not plotted
    bad.write_text("".join(json.dumps({"step": s, "reasoning": "?", "action": ["<oops>", None]}) + "\n" for s in range(4)))
    page = Path(run_report(tmp_path / "r", eval_dirs=[d], cfg=ReportConfig(max_episodes=3))["report"]).read_text()
    assert "success rate" in page and "grasp rate" not in page and 'class="video"' not in page
    assert count(page, "data-episode") == 6 and count(page, "data-step") == 5 * 4  # one episode without a trace
    assert "Offline evaluation" not in page and "Attention" not in page
    assert "&lt;oops&gt;" in page and "<oops>" not in page


def test_report_renders_in_headless_chromium(tmp_path, reasoning_dirs, eval_run):
    from tests.chromium import browser, find_chromium

    if find_chromium() is None:
        pytest.skip("chromium not installed: apt-get install -y chromium (scripts/test.sh installs it when run as root)")
    r = run_report(tmp_path / "report", reasoning_dirs, [eval_run / "eval" / "run"], [eval_run / "attention" / "run"],
                   ReportConfig(max_episodes=2, max_steps=6))
    with browser() as page:
        page.open(Path(r["report"]).as_uri())
        seen = page.evaluate("""(async () => {
            const imgs = [...document.images];
            for (const img of imgs) {  // lazy images load only near the viewport
                img.scrollIntoView({block: 'center', inline: 'center'});
                if (!img.complete) await new Promise(done => { img.onload = img.onerror = done; setTimeout(done, 10000); });
            }
            document.querySelectorAll('.strip').forEach(s => s.scrollLeft = 0);
            window.scrollTo(0, 0);
            return {episodes: document.querySelectorAll('section.episode').length, steps: document.querySelectorAll('.step').length,
                    images: imgs.length, broken: imgs.filter(i => !(i.naturalWidth > 0)).map(i => i.alt)};
        })()""")
        shot = page.screenshot(ARTIFACTS / "report.png")
        page.evaluate("document.querySelector('section.episode.sim').scrollIntoView()")
        page.screenshot(ARTIFACTS / "report-simpler.png")
    assert seen["episodes"] == r["episodes"] + r["sim_episodes"] == 4 + 4
    assert seen["steps"] == r["steps"] + r["sim_steps"] == 4 * 6 + 4 * 4
    assert seen["broken"] == [] and seen["images"] > 8 * 4
    assert shot.stat().st_size > 10_000


def test_build_flow_logs_the_report_to_mlflow(tmp_path, workdir, prefect_api):
    from mlflow import MlflowClient

    from flows.pipeline import build_flow
    from tasks.tracking import TrackingConfig

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    built = build_flow(str(workdir / "steps" / "fractal20220817_data"), str(workdir / "traces" / "fractal20220817_data" / "offline@offline-v1"),
                       str(tmp_path / "reasoning" / "fractal20220817_data"), workdir=str(tmp_path / "w"), tracking=TrackingConfig(uri=uri))
    page = Path(built["report"])
    assert page == (tmp_path / "w" / "reports" / "build-fractal20220817_data" / "index.html").resolve()
    assert len(episode_ids(page.read_text())) == 3  # the dataset just built
    client = MlflowClient(uri)
    runs = {r.info.run_name: r.info.run_id for r in client.search_runs([client.get_experiment_by_name("refinevla").experiment_id])}
    for name in ("build", "report"):  # the flow's run, and the report stage's own run under it
        assert [a.path for a in client.list_artifacts(runs[name], "report")] == ["report/index.html"]


def test_view_command_reports_on_what_the_workdir_holds(tmp_path, workdir, eval_run):
    from flows.cli import build_parser, settings, view_inputs

    args = build_parser().parse_args(["view", "--workdir", str(workdir), "--max-episodes", "1", "--episodes", "a", "b"])
    assert view_inputs(args) == ([str(workdir / "reasoning" / d) for d in ("bridge_dataset", "fractal20220817_data")], [], [])
    assert settings(ReportConfig, args) == ReportConfig(max_episodes=1, episodes=["a", "b"])
    args = build_parser().parse_args(["view", "--workdir", str(eval_run), "--eval", "e"])
    assert view_inputs(args) == ([], ["e"], [])
    args = build_parser().parse_args(["view", "--workdir", str(eval_run)])
    assert view_inputs(args) == ([], [str(eval_run / "eval" / "run")], [str(eval_run / "attention" / "run")])
    with pytest.raises(SystemExit, match="no reasoning/, eval/ or attention/"):
        view_inputs(build_parser().parse_args(["view", "--workdir", str(tmp_path)]))
