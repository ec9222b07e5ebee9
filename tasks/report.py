"""Look at the data: one static HTML page of episodes, traces and evaluation results → `reports/<name>/index.html`.

For a sample of episodes of each reasoning dataset: the instruction, the action curves (inline SVG), and
a filmstrip of steps, each with its frame per camera and the teacher's trace (four parts, logical steps,
sub-action, teacher model, prompt version); failed, stale and missing annotations are flagged. For
evaluation runs (`eval/<run>/`): the offline metrics and free generations, the SimplerEnv per-task
success/grasp table with each sampled episode's video and the policy's reasoning aligned with its frames,
and the attention maps and scores where they exist. Episodes not sampled are listed by id.

Frames are embedded as small JPEG data URIs, so `index.html` is one self-contained file: it opens from
disk and in the MLflow UI, which shows an HTML artifact in a sandboxed `blob:` frame where relative links
cannot resolve. The page's size is bounded by the sampling settings (episodes × steps × cameras × a few
KB); images carry `loading="lazy"` and `decoding="async"`, so the browser decodes only what is near the
viewport. Only what cannot be a small image
(an MP4/WebM video, or a GIF/WebP above `max_inline_video_kb`) is copied to `assets/` beside the page.
Every text (traces are untrusted model output) is HTML-escaped; the page has no script and loads nothing
from the network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import random
import re
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from data.io import atomic_path, write_text_atomic
from tasks.caching import stage_cache_policy
from tasks.tracking import RunRef, Tracker, stage_run

log = logging.getLogger("refinevla")
SPLITS = ("train", "val")
FLAGGED = ("failed", "stale", "missing")
TRACE_PARTS = (("observation", "Observation"), ("situation_analysis", "Situation Analysis"),
               ("spatial_reasoning", "Spatial Reasoning"), ("task_planning", "Task Planning"))
VIDEO_TAGS = {".mp4": "video/mp4", ".webm": "video/webm"}
IMAGE_MIME = {".gif": "image/gif", ".webp": "image/webp", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class ReportConfig(BaseModel):
    """What the HTML report shows, and how large it may get."""

    model_config = ConfigDict(extra="forbid")

    episodes: list[str] = Field(default_factory=list, description="Episode ids to show (of any dataset); empty: a seeded sample of "
                                "max_episodes per dataset. An id found in no dataset is an error.")
    max_episodes: int = Field(6, ge=0, description="Episodes sampled per dataset, and simulated episodes per SimplerEnv task; the others "
                              "are listed by id.")
    seed: int = Field(0, description="Seed of the episode sample (the same seed shows the same episodes).")
    splits: list[str] = Field(default_factory=lambda: list(SPLITS), description="Splits of the reasoning datasets to show.")
    max_steps: int = Field(24, ge=1, description="Steps shown per episode, spread evenly with the first and last; the action curves "
                           "plot every step.")
    blank_cameras: bool = Field(False, description="Also show cameras that are all-zero placeholders (recorded as dummy).")
    thumb_size: int = Field(128, ge=32, le=512, description="Longest side of frame thumbnails, in pixels.")
    jpeg_quality: int = Field(70, ge=10, le=95, description="JPEG quality of thumbnails and figures.")
    figure_width: int = Field(900, ge=200, le=2400, description="Width, in pixels, to which attention figures are scaled down.")
    max_attention_figures: int = Field(8, ge=0, description="Per-step attention figures shown per attention folder (comparison.png always).")
    max_inline_video_kb: int = Field(1024, ge=0, description="Animated GIF/WebP episode videos up to this size (KiB) are embedded; larger "
                                     "ones, and MP4/WebM, are copied to assets/ beside index.html.")
    max_listed: int = Field(1000, ge=0, description="Episodes not shown that are still listed by id (flagged ones first); the rest are counted.")
    title: str = Field("refinevla report", description="Page title.")


# ------------------------------------------------------------------------------------------------ small pieces
def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def anchor(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(str(p) for p in parts))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(data: bytes, size: int, quality: int, what: str = "image") -> str:
    """An encoded image (JPEG/PNG/...) as a JPEG data URI whose longest side is at most `size` px."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale directly
        im = im.convert("RGB")
    except Exception as e:
        raise ValueError(f"{what}: not a readable image ({e})") from None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return data_uri(buf.getvalue(), "image/jpeg")


def evenly(n: int, k: int) -> list[int]:
    """At most k indices of range(n), evenly spread, first and last included."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


PALETTE = ("#d62728", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#555555")


def line_chart(title: str, series: dict[str, list[float]], marks: list[int] = (), width: int = 260, height: int = 120) -> str:
    """A small inline SVG line chart: one polyline per series over the step index, min/max labelled, and a tick
    under each step that the filmstrip shows."""
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    n = max((len(s) for s in series.values()), default=0)
    if not values or n == 0:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    left, right, top, bottom = 44, 6, 16, 16
    pw, ph = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph * (hi - v) / (hi - lo)

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{esc(title)}">',
           f'<text x="{left}" y="11" class="t">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>',
           f'<text x="{left - 3}" y="{top + 8}" class="l">{hi:.3g}</text>',
           f'<text x="{left - 3}" y="{top + ph}" class="l">{lo:.3g}</text>',
           f'<text x="{left}" y="{height - 3}" class="s">0</text>',
           f'<text x="{left + pw}" y="{height - 3}" class="s e">{n - 1}</text>']
    if lo < 0 < hi:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(0):.1f}" y2="{y(0):.1f}" class="zero"/>')
    for i in marks:
        out.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{top + ph}" y2="{top + ph + 3}" class="mark"/>')
    for k, (name, s) in enumerate(series.items()):
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s) if v is not None and math.isfinite(v))
        color = PALETTE[k % len(PALETTE)]
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.4"><title>{esc(name)}</title></polyline>')
        out.append(f'<text x="{width - right - 34 * (len(series) - k) + 30}" y="11" fill="{color}" class="k e">{esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


ACTION_GROUPS = (("position deltas", ("x", "y", "z"), (0, 1, 2)), ("rotation deltas", ("roll", "pitch", "yaw"), (3, 4, 5)),
                 ("gripper (1 = open)", ("grip",), (6,)))


def action_charts(actions: list, marks: list[int] = ()) -> str:
    """Three charts of 7-D actions [dx, dy, dz, droll, dpitch, dyaw, gripper] over the steps."""
    rows = [list(a) if isinstance(a, (list, tuple)) or hasattr(a, "tolist") else [] for a in actions]
    charts = []
    for title, names, dims in ACTION_GROUPS:
        series = {name: [number(r[d]) if len(r) > d else None for r in rows] for name, d in zip(names, dims)}
        charts.append(line_chart(title, series, marks))
    body = "".join(charts)
    return f'<div class="charts">{body}</div>' if body else ""


def badge(text: str, kind: str | None = None) -> str:
    return f'<span class="badge {esc(kind or text)}">{esc(text)}</span>'


def number(v) -> float | None:
    """A finite float, or None for anything else (the files are read defensively)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_action(a) -> str:
    if a is None:
        return ""
    try:
        return "[" + ", ".join(f"{float(v):.3f}" for v in a) + "]"
    except (TypeError, ValueError):
        return esc(a)


def table_html(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="wide"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


class Markup(str):
    """HTML we built ourselves (already escaped), to pass through `table_html` unescaped."""


def fmt_num(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


# ------------------------------------------------------------------------------------------------ datasets
def _dataset_files(d: Path, splits: list[str]) -> dict[str, list[str]]:
    return {s: [str(f) for f in sorted((d / s).glob("part-*.parquet"))] for s in splits if (d / s).is_dir()}


LIGHT = ["dataset", "episode_id", "step_index", "instruction", "trace_status"]


def dataset_overview(d: Path, splits: list[str]):
    """One row per episode of a reasoning dataset (light columns only): split, steps, instruction, status counts."""
    import pandas as pd
    import pyarrow.dataset as pads

    files = _dataset_files(d, splits)
    if not any(files.values()):
        raise FileNotFoundError(f"{d}: no part-*.parquet under {'/, '.join(splits)}/ (is it a reasoning dataset folder?)")
    frames = []
    for split, fs in files.items():
        if fs:
            t = pads.dataset(fs, format="parquet").to_table(columns=LIGHT).to_pandas()
            frames.append(t.assign(build_split=split))
    steps = pd.concat(frames, ignore_index=True)
    g = steps.groupby("episode_id", sort=True)
    episodes = g.agg(dataset=("dataset", "first"), split=("build_split", "first"), steps=("step_index", "size"),
                     instruction=("instruction", "first"))
    by_status = steps.groupby(["episode_id", "trace_status"]).size().unstack(fill_value=0)
    for status in ("ok", *FLAGGED):
        episodes[status] = by_status[status].reindex(episodes.index, fill_value=0) if status in by_status else 0
    episodes["flagged"] = episodes[list(FLAGGED)].sum(axis=1)
    return episodes, Counter(steps["trace_status"])


def choose(ids: list[str], cfg: ReportConfig) -> list[str]:
    """The episodes to show: the requested ones present here, else a seeded sample of max_episodes."""
    if cfg.episodes:
        present = set(ids)
        return [e for e in cfg.episodes if e in present]
    k = min(cfg.max_episodes, len(ids))
    return sorted(random.Random(cfg.seed).sample(sorted(ids), k))


def load_episodes(d: Path, chosen: list[str], splits: list[str]) -> dict[str, list[dict]]:
    """Every column of the chosen episodes' steps, ordered by step."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    out: dict[str, list[dict]] = {}
    for split, fs in _dataset_files(d, splits).items():
        if not fs or not chosen:
            continue
        t = pads.dataset(fs, format="parquet").to_table(filter=pc.field("episode_id").isin(chosen))
        for row in t.to_pylist():
            out.setdefault(row["episode_id"], []).append(row | {"build_split": split})
    return {e: sorted(rows, key=lambda r: r["step_index"]) for e, rows in out.items()}


def trace_card(row: dict) -> str:
    status = row.get("trace_status") or "missing"
    meta = " · ".join(esc(v) for v in (row.get("teacher"), row.get("teacher_model"), row.get("prompt_version")) if v)
    if row.get("trace_derived_from") is not None:
        meta += f" · from step {esc(row['trace_derived_from'])}"
    parts = [f'<div class="trace-head">{badge(status)} <span class="meta">{meta}</span></div>']
    if status != "ok":
        parts.append(f'<p class="err">{esc(row.get("trace_error") or status)}</p>')
    if any(row.get(k) for k, _ in TRACE_PARTS):
        parts.append("<dl>" + "".join(f"<dt>{t}</dt><dd>{esc(row.get(k))}</dd>" for k, t in TRACE_PARTS if row.get(k)) + "</dl>")
    if row.get("logical_steps"):
        parts.append('<ol class="logical">' + "".join(f"<li>{esc(s)}</li>" for s in row["logical_steps"]) + "</ol>")
    if row.get("sub_action"):
        parts.append(f'<p class="sub"><b>sub-action</b> {esc(row["sub_action"])}</p>')
    return f'<div class="trace">{"".join(parts)}</div>'


def episode_section(dataset: str, episode_id: str, rows: list[dict], cfg: ReportConfig) -> tuple[str, int]:
    shown = evenly(len(rows), cfg.max_steps)
    statuses = Counter(r.get("trace_status") or "missing" for r in rows)
    flags = "".join(badge(f"{statuses[s]} {s}", s) for s in FLAGGED if statuses[s])
    ep = anchor("ep", dataset, episode_id)
    instruction = rows[0].get("instruction") or ""
    cols = []
    for i in shown:
        r = rows[i]
        frames = []
        for im in sorted(r.get("images") or [], key=lambda im: im["camera"]):
            if im.get("dummy") and not cfg.blank_cameras:
                continue
            src = thumbnail(im["data"], cfg.thumb_size, cfg.jpeg_quality, f"{dataset} {episode_id} step {r['step_index']} {im['camera']}")
            frames.append(f'<figure><img loading="lazy" decoding="async" src="{src}" alt="{esc(im["camera"])} step {r["step_index"]}">'
                          f'<figcaption>{esc(im["camera"])}</figcaption></figure>')
        status = r.get("trace_status") or "missing"
        cols.append(f'<div class="step {esc(status)}" id="{ep}-s{r["step_index"]}" data-step="{r["step_index"]}">'
                    f'<div class="step-no">step {r["step_index"]}</div><div class="frames">{"".join(frames)}</div>'
                    f'<div class="act">action {fmt_action(r.get("action"))}</div>{trace_card(r)}</div>')
    head = (f'<h3>{esc(dataset)} / {esc(rows[0].get("build_split", ""))} / <code>{esc(episode_id)}</code></h3>'
            f'<p class="instr">{esc(instruction) if instruction else "<i>(no instruction recorded)</i>"}</p>'
            f'<p class="counts">{len(rows)} steps, showing {len(shown)}. Traces: {statuses["ok"]} ok {flags}</p>')
    body = head + action_charts([r.get("action") for r in rows], shown) + f'<div class="strip">{"".join(cols)}</div>'
    return f'<section class="episode{" flagged" if sum(statuses[s] for s in FLAGGED) else ""}" id="{ep}" data-episode="{esc(episode_id)}">{body}</section>', len(shown)


def dataset_section(d: Path, cfg: ReportConfig, wanted: set[str]) -> tuple[str, dict]:
    episodes, status = dataset_overview(d, cfg.splits)
    chosen = choose(list(episodes.index), cfg)
    wanted -= set(chosen)
    rows = load_episodes(d, chosen, cfg.splits)
    name = str(episodes["dataset"].iloc[0])
    sections, n_steps = [], 0
    for e in chosen:
        html_, k = episode_section(name, e, rows[e], cfg)
        sections.append(html_)
        n_steps += k
    rest = episodes.drop(index=chosen).sort_values(["flagged"], ascending=False, kind="stable")
    listed = rest.head(cfg.max_listed)
    rest_rows = [[Markup(f"<code>{esc(e)}</code>"), r.split, r.steps, r.instruction, r.ok,
                  Markup("".join(badge(f"{r[s]} {s}", s) for s in FLAGGED if r[s]))] for e, r in listed.iterrows()]
    more = ""
    if len(rest):
        more = (f'<details class="rest"><summary>{len(rest)} more episodes, not shown'
                f'{f" ({len(rest) - len(listed)} not listed)" if len(rest) > len(listed) else ""}</summary>'
                f'<p>Show any of them with <code>refinevla view --episodes ID ...</code>.</p>'
                f'{table_html(["episode", "split", "steps", "instruction", "ok traces", "flagged"], rest_rows, "rest")}</details>')
    summary = table_html(["split", "episodes", "steps"], [[s, int((episodes.split == s).sum()), int(episodes.steps[episodes.split == s].sum())]
                                                          for s in cfg.splits if (episodes.split == s).any()])
    counts = " ".join(badge(f"{status[s]} {s}", s) for s in ("ok", *FLAGGED) if status[s])
    body = (f'<h2 id="{anchor("ds", name)}">Dataset {esc(name)}</h2><p class="path">{esc(d)}</p>{summary}<p>Trace status of every step: {counts}</p>'
            f'<p>{len(chosen)} of {len(episodes)} episodes shown ({"chosen by id" if cfg.episodes else f"sampled with seed {cfg.seed}"}).</p>'
            + "".join(sections) + more)
    return f'<section class="dataset">{body}</section>', {"dataset": name, "episodes": len(chosen), "steps": n_steps,
                                                             "anchors": {e: anchor("ep", name, e) for e in chosen}}


# ------------------------------------------------------------------------------------------------ evaluation
def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not JSON ({e.msg})") from None
    return out


def offline_section(d: Path, shown: dict[str, str]) -> str:
    """metrics.json / results.csv table and the free generations of `eval/<run>/` (tasks/evaluate.py)."""
    import pandas as pd

    parts = []
    if (d / "results.csv").exists():
        df = pd.read_csv(d / "results.csv")
        parts.append(table_html(list(df.columns), [[fmt_num(v) for v in r] for r in df.itertuples(index=False)], "metrics"))
    if (d / "generations.jsonl").exists():
        cards = []
        for g in _read_jsonl(d / "generations.jsonl"):
            a = shown.get(g.get("episode_id"))
            link = f' <a href="#{a}">(see the episode)</a>' if a else ""
            cards.append(f'<div class="gen"><h4><code>{esc(g.get("episode_id"))}</code> step {esc(g.get("step_index"))}{link}</h4>'
                         f'<p class="instr">{esc(g.get("instruction"))}</p><pre class="reasoning">{esc(g.get("reasoning")) or "(no reasoning generated)"}</pre>'
                         f'<p class="act">predicted {esc(", ".join(fmt_action(a) for a in g.get("actions") or []))}<br>'
                         f'recorded {esc(", ".join(fmt_action(a) for a in g.get("gt_actions") or []))}</p></div>')
        parts.append("<h4>Free generations (reason, then act)</h4>" + "".join(cards))
    if not parts:
        return ""
    return f'<h3>Offline evaluation</h3><p class="path">{esc(d)}</p>' + "".join(parts)


class Assets:
    """Files that cannot be small inline images, copied beside index.html (`assets/`)."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / "assets"
        self.used: set[str] = set()

    def copy(self, src: Path, *name_parts) -> str:
        name = anchor(*name_parts) + src.suffix.lower()
        with atomic_path(self.dir / name) as tmp:
            shutil.copyfile(src, tmp)
        self.used.add(name)
        return f"assets/{name}"

    def prune(self) -> None:
        if self.dir.exists():
            for f in self.dir.iterdir():
                if f.name not in self.used and not f.name.startswith("."):
                    f.unlink()


def video_html(path: Path, cfg: ReportConfig, assets: Assets, *name_parts) -> str:
    suffix = path.suffix.lower()
    if suffix in VIDEO_TAGS:
        return f'<video controls preload="none" src="{esc(assets.copy(path, *name_parts))}"></video>'
    if suffix not in IMAGE_MIME:
        return f'<p class="err">video {esc(path.name)}: unknown format</p>'
    size = path.stat().st_size
    src = data_uri(path.read_bytes(), IMAGE_MIME[suffix]) if size <= cfg.max_inline_video_kb * 1024 else assets.copy(path, *name_parts)
    return f'<img class="video" loading="lazy" decoding="async" src="{esc(src)}" alt="episode video">'


def _get(rec, key, default=None):
    v = rec.get(key, default)
    try:
        import pandas as pd

        return default if v is not None and not isinstance(v, (list, tuple)) and pd.isna(v) else v
    except (TypeError, ValueError):
        return v


def simpler_section(d: Path, cfg: ReportConfig, assets: Assets) -> tuple[str, int, int]:
    """`eval/<run>/simpler/episodes.parquet` (one row per simulated episode): per-task table, then per task a sample
    of episodes with their video and the policy's per-step reasoning aligned with the frames. Columns are read
    defensively: a missing one leaves its part out."""
    import pandas as pd

    f = d / "episodes.parquet"
    if not f.exists():
        return "", 0, 0
    df = pd.read_parquet(f)
    if df.empty or "task" not in df.columns:
        return "", 0, 0
    g = df.groupby("task", sort=True)
    header, cols = ["task", "episodes"], [g.size().rename("episodes")]
    for col, label in (("grasped", "grasp rate"), ("success", "success rate")):
        if col in df.columns:
            header.append(label)
            cols.append(g[col].apply(lambda s: float(s.astype(bool).mean())).rename(label))
    table = pd.concat(cols, axis=1)
    parts = [table_html(header, [[t, *[fmt_num(v) for v in r]] for t, r in zip(table.index, table.itertuples(index=False))], "simpler")]
    n_eps = n_steps = 0
    rng = random.Random(cfg.seed)
    for t, rows in g:
        recs = rows.to_dict("records")
        pick = sorted(rng.sample(range(len(recs)), min(cfg.max_episodes, len(recs))))
        parts.append(f'<h4 id="{anchor("sim", t)}">{esc(t)}</h4>')
        for i in pick:
            r = recs[i]
            eid = _get(r, "episode_id", i)
            variant = _get(r, "variant") or ""
            ep = anchor("sim", t, variant, eid)
            flags = "".join(badge(name if bool(r[col]) else f"no {name}", name if bool(r[col]) else "failed")
                            for col, name in (("success", "success"), ("grasped", "grasped")) if col in r and _get(r, col) is not None)
            head = (f'<h5>{esc(t)}{" / " + esc(variant) if variant else ""} / episode {esc(eid)} {flags}</h5>'
                    f'<p class="instr">{esc(_get(r, "instruction") or "")}</p>'
                    + (f'<p class="counts">{esc(_get(r, "steps"))} steps</p>' if _get(r, "steps") is not None else ""))
            media = ""
            video = _get(r, "video")
            if video:
                vp = d / str(video)
                media = video_html(vp, cfg, assets, t, variant, eid) if vp.exists() else f'<p class="err">video {esc(video)} not found</p>'
            strip, k = "", 0
            trace_file = _get(r, "trace_file")
            if trace_file:
                tp = d / str(trace_file)
                if tp.exists():
                    steps = _read_jsonl(tp)
                    shown = evenly(len(steps), cfg.max_steps)
                    k = len(shown)
                    cols = []
                    for j in shown:
                        s = steps[j]
                        frame = ""
                        if s.get("frame") and (d / s["frame"]).exists():
                            src = thumbnail((d / s["frame"]).read_bytes(), cfg.thumb_size, cfg.jpeg_quality, str(d / s["frame"]))
                            frame = f'<figure><img loading="lazy" decoding="async" src="{src}" alt="step {esc(s.get("step", j))}"></figure>'
                        cols.append(f'<div class="step sim" id="{ep}-s{esc(s.get("step", j))}" data-step="{esc(s.get("step", j))}">'
                                    f'<div class="step-no">step {esc(s.get("step", j))}</div><div class="frames">{frame}</div>'
                                    f'<div class="act">action {fmt_action(s.get("action"))}</div>'
                                    f'<pre class="reasoning">{esc(s.get("reasoning") or "")}</pre></div>')
                    strip = action_charts([s.get("action") for s in steps], shown) + f'<div class="strip">{"".join(cols)}</div>'
                else:
                    strip = f'<p class="err">trace {esc(trace_file)} not found</p>'
            parts.append(f'<section class="episode sim" id="{ep}" data-episode="{esc(eid)}">{head}{media}{strip}</section>')
            n_eps, n_steps = n_eps + 1, n_steps + k
        if len(recs) > len(pick):
            others = ", ".join(str(_get(recs[i], "episode_id", i)) for i in range(len(recs)) if i not in pick)
            parts.append(f'<p class="rest">{len(recs) - len(pick)} more episodes of {esc(t)} not shown: {esc(others)}</p>')
    return f'<h3>SimplerEnv</h3><p class="path">{esc(d)}</p>' + "".join(parts), n_eps, n_steps


def attention_section(d: Path, cfg: ReportConfig) -> str:
    """scores.json and the figures of `attention/<run>/` (tasks/attention.py), scaled down and embedded."""
    from data.io import read_json

    parts = []
    if (d / "scores.json").exists():
        s = read_json(d / "scores.json")
        rows = [[label, f"{v.get('scored')}", fmt_num(v.get("object_mass_mean")) if v.get("object_mass_mean") is not None else "n/a",
                 fmt_num(v.get("uniform_mean")) if v.get("uniform_mean") is not None else "n/a"] for label, v in (s.get("scores") or {}).items()]
        parts.append(f'<p>{esc(s.get("tokens", "action"))} tokens, top-{esc(s.get("top_k"))} heads.</p>'
                     + table_html(["checkpoint", "steps with known objects", "object mass (mean)", "uniform attention would give"], rows))
    figures = ([d / "comparison.png"] if (d / "comparison.png").exists() else []) + sorted(d.glob("*_step*.png"))[: cfg.max_attention_figures]
    for fig in figures:
        src = thumbnail(fig.read_bytes(), cfg.figure_width, cfg.jpeg_quality, str(fig))
        parts.append(f'<figure class="attn"><img loading="lazy" decoding="async" src="{src}" alt="{esc(fig.stem)}"><figcaption>{esc(fig.name)}</figcaption></figure>')
    if not parts:
        return ""
    return f'<h3>Attention maps</h3><p class="path">{esc(d)}</p>' + "".join(parts)


# ------------------------------------------------------------------------------------------------ page
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 48px;color:#222;background:#fafafa}
h1{margin:16px 0 4px}h2{border-bottom:2px solid #ccc;margin-top:32px}h3{margin:20px 0 4px}h5{margin:8px 0 4px;font-size:14px}
.path,.meta,.counts{color:#666;font-size:12px}code{font-size:12px}
section.episode{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:14px 0}
section.episode.flagged{border-left:5px solid #d62728}
.instr{font-weight:600;margin:2px 0}
.badge{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;font-weight:600;background:#ddd;margin-right:3px}
.badge.ok,.badge.success,.badge.grasped{background:#cdeccd;color:#135213}.badge.failed{background:#f8c9c9;color:#8a1111}
.badge.stale{background:#fde2b5;color:#7a4a00}.badge.missing{background:#e2e2e2;color:#444}
.strip{display:flex;gap:8px;overflow-x:auto;padding-bottom:6px}
.step{flex:0 0 auto;width:280px;border:1px solid #e3e3e3;border-radius:4px;padding:4px;background:#fcfcfc}
.step.failed{background:#fff1f1;border-color:#e99}.step.stale{background:#fff8ea;border-color:#e5b35c}.step.missing{background:#f3f3f3}
.step-no{font-weight:600;font-size:12px}.frames{display:flex;flex-wrap:wrap;gap:4px}
figure{margin:0}figcaption{font-size:10px;color:#666;text-align:center}
.frames img{display:block;max-width:136px;height:auto}
.act{font:11px monospace;color:#444;margin:2px 0;word-break:break-all}
.trace{font-size:12px;max-height:340px;overflow-y:auto}.trace dl{margin:2px 0}.trace dt{font-weight:600;color:#345}.trace dd{margin:0 0 3px 6px}
.trace ol{margin:2px 0;padding-left:18px}.sub{margin:2px 0}.err{color:#8a1111;font-size:12px}
pre.reasoning{white-space:pre-wrap;font-size:11px;max-height:260px;overflow-y:auto;margin:2px 0}
.charts{display:flex;flex-wrap:wrap;gap:8px;margin:4px 0}
svg.chart{background:#fff}svg .frame{fill:none;stroke:#bbb}svg .zero{stroke:#ccc;stroke-dasharray:3 3}svg .mark{stroke:#888}
svg text{font:10px sans-serif;fill:#444}svg .l{text-anchor:end}svg .e{text-anchor:end}svg .t{font-weight:600}
table{border-collapse:collapse;margin:6px 0;background:#fff}td,th{border:1px solid #ddd;padding:2px 8px;font-size:12px;text-align:left}
img.video{max-width:320px;display:block;margin:4px 0}video{max-width:320px;display:block}
figure.attn{display:inline-block;margin:4px}figure.attn img{max-width:100%}.gen{background:#fff;border:1px solid #ddd;padding:6px 10px;margin:8px 0}
.wide{overflow-x:auto}nav a{margin-right:12px}details.rest{margin:10px 0}
"""


def run_report(out_dir: str | Path, data_dirs: list[str | Path] = (), eval_dirs: list[str | Path] = (), attention_dirs: list[str | Path] = (),
               cfg: ReportConfig = ReportConfig(), tracker: Tracker = Tracker(None)) -> dict:
    """Write `<out_dir>/index.html` (+ `assets/` for large videos) for reasoning datasets (`reasoning/<dataset>`),
    evaluation folders (`eval/<run>`, with `simpler/` inside) and attention folders (`attention/<run>`)."""
    out_dir = Path(out_dir)
    data_dirs, eval_dirs, attention_dirs = [Path(p) for p in data_dirs], [Path(p) for p in eval_dirs], [Path(p) for p in attention_dirs]
    for p in (*data_dirs, *eval_dirs, *attention_dirs):
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such folder to report on")
    assets = Assets(out_dir)
    wanted = set(cfg.episodes)
    body, nav = [], []
    n_eps = n_steps = 0
    anchors: dict[str, str] = {}
    datasets = []
    for d in data_dirs:
        section, info = dataset_section(d, cfg, wanted)
        body.append(section)
        nav.append(f'<a href="#{anchor("ds", info["dataset"])}">{esc(info["dataset"])}</a>')
        n_eps, n_steps = n_eps + info["episodes"], n_steps + info["steps"]
        anchors |= info["anchors"]
        datasets.append(info["dataset"])
    if wanted and data_dirs:
        raise ValueError(f"episode(s) {sorted(wanted)} are in none of {[str(d) for d in data_dirs]} (splits {cfg.splits})")
    sim_eps = sim_steps = 0
    for d in eval_dirs:
        sections = [offline_section(d, anchors)]
        sim, e, s = simpler_section(d / "simpler", cfg, assets) if (d / "simpler").is_dir() else simpler_section(d, cfg, assets)
        sections.append(sim)
        sim_eps, sim_steps = sim_eps + e, sim_steps + s
        if any(sections):
            ident = anchor("eval", d.name)
            nav.append(f'<a href="#{ident}">evaluation {esc(d.name)}</a>')
            body.append(f'<section class="eval"><h2 id="{ident}">Evaluation {esc(d.name)}</h2>{"".join(sections)}</section>')
    for d in attention_dirs:
        section = attention_section(d, cfg)
        if section:
            ident = anchor("attn", d.name)
            nav.append(f'<a href="#{ident}">attention {esc(d.name)}</a>')
            body.append(f'<section class="attention" id="{ident}"><h2>Attention {esc(d.name)}</h2>{section}</section>')
    if not body:
        body.append("<p>Nothing to show: no datasets, evaluation or attention folders were given.</p>")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{esc(cfg.title)}</title><style>{CSS}</style></head><body><h1>{esc(cfg.title)}</h1>'
            f'<p class="meta">generated {stamp} by refinevla view; {n_eps} dataset episodes ({n_steps} steps) and {sim_eps} simulated '
            f'episodes shown; at most {cfg.max_steps} steps per episode.</p><nav>{"".join(nav)}</nav>{"".join(body)}</body></html>\n')
    index = write_text_atomic(out_dir / "index.html", page)
    assets.prune()
    size = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    log.info("report %s: %d episodes, %d steps, %.1f MB", index, n_eps + sim_eps, n_steps + sim_steps, size / 1e6)
    tracker.log_metrics({"report_episodes": n_eps + sim_eps, "report_steps": n_steps + sim_steps, "report_bytes": size})
    tracker.log_artifact(index, "report")
    for f in sorted(assets.used):
        tracker.log_artifact(assets.dir / f, "report/assets")
    return {"report": str(index), "out_dir": str(out_dir), "datasets": datasets, "episodes": n_eps, "steps": n_steps,
            "sim_episodes": sim_eps, "sim_steps": sim_steps, "bytes": size}


@task(name="report", cache_policy=stage_cache_policy(__name__, "data_dirs", "eval_dirs", "attention_dirs"), persist_result=True)
def report_task(out_dir: str, data_dirs: list[str], eval_dirs: list[str], attention_dirs: list[str], cfg: ReportConfig,
                tracking: RunRef | None = None) -> dict:
    with stage_run(tracking, "report", cfg) as tracker:
        return run_report(out_dir, data_dirs, eval_dirs, attention_dirs, cfg, tracker)
