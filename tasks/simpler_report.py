"""SimplerEnv results: per-task rates with Wilson intervals, and the paper's Tables 1 and 2 with its baselines.

Aggregation follows SimplerEnv's `tools/calc_metrics_evaluation_videos.py`: success (and grasp) rate per
evaluation config, then the plain mean over a task's configs (visual matching: the 4 robot-colour URDFs;
variant aggregation: the variants; drawers: also the top/middle/bottom drawers). Every config of a task has
the same number of episodes in the protocol, so that mean equals the pooled rate, and the 95 % Wilson score
interval is computed on the pooled counts (successes, episodes). Table columns: Pick Coke Can = mean of its 3
orientations; Open/Close Drawer = mean of open and close; Average = mean of the table's task columns
(Table 1: of the 4 success rates).
"""

from __future__ import annotations

import math

import pandas as pd

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial rate k/n; (nan, nan) when n == 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def task_results(episodes: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, task): counts, rates (mean over configs) and Wilson intervals."""
    rows = []
    for (suite, task), df in episodes.groupby(["suite", "task"], sort=False):
        per_config = df.groupby("config", sort=False).agg(success=("success", "mean"), grasp=("grasped", "mean"))
        n, ks, kg = len(df), int(df["success"].sum()), int(df["grasped"].sum())
        s_lo, s_hi = wilson(ks, n)
        g_lo, g_hi = wilson(kg, n)
        rows.append({"suite": suite, "task": task, "configs": len(per_config), "episodes": n,
                     "successes": ks, "success_rate": float(per_config["success"].mean()), "success_ci_low": s_lo, "success_ci_high": s_hi,
                     "grasps": kg, "grasp_rate": float(per_config["grasp"].mean()), "grasp_ci_low": g_lo, "grasp_ci_high": g_hi})
    return pd.DataFrame(rows)


def results_markdown(results: pd.DataFrame) -> str:
    lines = ["| suite | task | configs | episodes | success | 95 % CI | grasp | 95 % CI |", "|---|---|---|---|---|---|---|---|"]
    for r in results.itertuples():
        lines.append(f"| {r.suite} | {r.task} | {r.configs} | {r.episodes} | {_pct(r.success_rate)} | {_pct(r.success_ci_low)}–{_pct(r.success_ci_high)} "
                     f"| {_pct(r.grasp_rate)} | {_pct(r.grasp_ci_low)}–{_pct(r.grasp_ci_high)} |")
    return "\n".join(lines) + "\n"


# --- the paper's tables ---------------------------------------------------------------------------------------
# ../shared/reference/refinevla-paper.txt, Table 1 (WidowX): grasp, success per task, then the average success.
# None = missing in the paper (or lost in the text extraction).
TABLE1_COLUMNS = [("widowx_spoon_on_towel", "Put Spoon on Towel"), ("widowx_carrot_on_plate", "Put Carrot on Plate"),
                  ("widowx_stack_cube", "Stack Green Block on Yellow Block"), ("widowx_put_eggplant_in_basket", "Put Eggplant in Yellow Basket")]
TABLE1_BASELINES = {
    "RT-1-X": (16.7, 0.0, 20.8, 4.2, 8.3, 0.0, 0.0, 0.0, 1.1),
    "Octo-Base": (34.7, 12.5, 52.8, 8.3, 31.9, 0.0, 66.7, 43.1, 16.0),
    "Octo-Small": (77.8, 47.2, 27.8, 9.7, 40.3, 4.2, 87.5, 56.9, 30.0),
    "OpenVLA": (4.1, 0.0, 33.3, 0.0, 12.5, 0.0, 8.3, 4.1, 1.1),
    "RoboVLM (zero-shot)": (37.5, 20.8, 33.3, 25.0, 8.3, 8.3, 0.0, 0.0, 13.5),
    "RoboVLM (fine-tuning)": (54.2, 29.2, 25.0, 25.0, 45.8, 12.5, 58.3, 58.3, 31.3),
    "SpatialVLA (zero-shot)": (25.0, 20.8, 41.7, 20.8, 58.3, 25.0, 79.2, 70.8, 34.4),
    "SpatialVLA (fine-tuning)": (20.8, 16.7, 29.2, 25.0, 62.5, 29.2, 100.0, 100.0, 42.7),
    "ReFineVLA (paper)": (42.9, 38.1, 33.3, 33.3, 71.4, 23.8, 100.0, 95.2, 47.7),
}
# Table 2 (Google robot): visual matching (coke can, move near, open/close drawer, average), then variant aggregation.
TABLE2_BASELINES = {
    "RT-1 (begin)": (2.7, 5.0, 13.9, 6.8, 2.2, 4.0, 6.9, 4.2),
    "RT-1 (15%)*": (71.0, 35.4, 56.5, 60.2, 81.3, 44.6, 26.7, 56.2),
    "RT-1 (converged)": (85.7, 44.2, 73.0, 74.6, 89.8, 50.0, 32.3, 63.3),
    "HPT": (56.0, 60.0, 24.0, 46.0, None, None, None, None),
    "TraceVLA": (28.0, 53.7, 57.0, 42.0, 60.0, 56.4, 31.0, 45.0),
    "RT-1-X": (56.7, 31.7, 59.7, 53.4, 49.0, 32.3, 29.4, 39.6),
    "RT-2-X": (78.7, 77.9, 25.0, 60.7, 82.3, 79.2, 35.3, 64.3),
    "Octo-Base": (17.0, 4.2, 22.7, 16.8, 0.6, 3.1, 1.1, 1.1),
    "OpenVLA": (16.3, 46.2, 35.6, 27.7, 54.5, 47.7, 17.7, 39.8),
    "RoboVLM (zero-shot)": (72.7, 66.3, 26.8, 56.3, 68.3, 56.0, 8.5, 46.3),
    "RoboVLM (fine-tuning)": (77.3, 61.7, 43.5, 63.4, 75.6, 60.0, 10.6, 51.3),
    "SpatialVLA (zero-shot)": (81.7, 85.7, 56.0, 74.4, 89.7, 79.7, 33.0, 67.4),
    "SpatialVLA (fine-tuning)": (82.5, 85.7, 54.6, 74.3, 90.6, 79.1, 26.2, 65.3),
    "ReFineVLA (paper)": (83.0, 95.3, 51.4, 76.6, 83.8, 88.1, 34.4, 68.8),
}
TABLE_NOTES = ("Baseline rows: the ReFineVLA paper's Tables 1 and 2 (their numbers, their protocol); '–' = not reported. "
               "* the label's percentage is lost in the paper's text extraction; 15 % is SimplerEnv's name for that RT-1 checkpoint. "
               "Ours: SimplerEnv's scripts, success read at the last step; 'n/a' = not run in this mode.")


def _pct(v) -> str:
    return "–" if v is None else ("n/a" if isinstance(v, float) and math.isnan(v) else f"{100 * v:.1f}%")


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals and len(vals) == len(values) else float("nan")


def table1(results: pd.DataFrame, label: str) -> pd.DataFrame:
    rate = {r.task: r for r in results.itertuples() if r.suite == "widowx"}
    ours: list[float] = []
    for task, _ in TABLE1_COLUMNS:
        r = rate.get(task)
        ours += [r.grasp_rate, r.success_rate] if r else [float("nan")] * 2
    ours.append(_mean(ours[1::2]))
    cols = [f"{name} {m}" for _, name in TABLE1_COLUMNS for m in ("Grasp", "Success")] + ["Average"]
    rows = {name: [None if v is None else v / 100 for v in vals] for name, vals in TABLE1_BASELINES.items()}
    rows[label] = ours
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols, dtype=object).rename_axis("Method")  # None: not reported


def table2(results: pd.DataFrame, label: str) -> pd.DataFrame:
    rate = {r.task: r.success_rate for r in results.itertuples()}
    ours = []
    for suite in ("google_vm", "google_va"):
        coke = _mean([rate.get(f"{suite}_pick_coke_can_{o}", float("nan")) for o in ("horizontal", "vertical", "standing")])
        near = rate.get(f"{suite}_move_near", float("nan"))
        drawer = _mean([rate.get(f"{suite}_open_drawer", float("nan")), rate.get(f"{suite}_close_drawer", float("nan"))])
        ours += [coke, near, drawer, _mean([coke, near, drawer])]
    cols = [f"{s} {t}" for s in ("Visual Matching", "Variant Aggregation") for t in ("Pick Coke Can", "Move Near", "Open/Close Drawer", "Average")]
    rows = {name: [None if v is None else v / 100 for v in vals] for name, vals in TABLE2_BASELINES.items()}
    rows[label] = ours
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols, dtype=object).rename_axis("Method")  # None: not reported


def table_markdown(t1: pd.DataFrame, t2: pd.DataFrame) -> str:
    def md(t: pd.DataFrame, title: str) -> str:
        head = "| Method | " + " | ".join(t.columns) + " |"
        lines = [f"### {title}", "", head, "|---" * (len(t.columns) + 1) + "|"]
        for name, row in t.iterrows():
            lines.append(f"| {name} | " + " | ".join(_pct(v) for v in row) + " |")
        return "\n".join(lines)

    return (md(t1, "Table 1: SimplerEnv WidowX (visual matching)") + "\n\n"
            + md(t2, "Table 2: SimplerEnv Google robot (success)") + "\n\n" + TABLE_NOTES + "\n")


def table_csv(t1: pd.DataFrame, t2: pd.DataFrame) -> str:
    """Both tables in one long CSV: table, method, column, value (fraction; empty when not reported)."""
    rows = []
    for name, t in (("table1", t1), ("table2", t2)):
        for method, row in t.iterrows():
            for col, v in row.items():
                rows.append({"table": name, "method": method, "column": col,
                             "value": None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6),
                             "source": "ours" if method not in (TABLE1_BASELINES if name == "table1" else TABLE2_BASELINES) else "paper"})
    return pd.DataFrame(rows).to_csv(index=False)
