"""The working directory: one place that names every stage's files (see ../shared/design.md).

```
datasets/<name>/<version>/                         RLDS in TFDS layout (user data or the sample generator)
steps/<dataset>/<split>/part-*.parquet             parse: one row per step
traces/<dataset>/<teacher>@<prompt>/<episode>.json annotate: one JSON list per episode, indexed by step
reasoning/<dataset>/<train|val>/part-*.parquet     build: steps + trace fields + status
reasoning/<dataset>/stats.json, README.md          build: action statistics and dataset card
checkpoints/<run>/step-<n>/                        finetune: HF layout
eval/<run>/                                        evaluate: metrics, tables, per-sample records
attention/<run>/*.png                              attention: heatmaps
reports/<name>/index.html                          view: HTML report of episodes, traces and results
mlflow.db, mlartifacts/                            default MLflow store
.prefect-results/                                  Prefect task cache records
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def steps(self) -> Path:
        return self.root / "steps"

    @property
    def traces(self) -> Path:
        return self.root / "traces"

    @property
    def reasoning(self) -> Path:
        return self.root / "reasoning"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def attention(self) -> Path:
        return self.root / "attention"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def prefect_results(self) -> Path:
        return self.root / ".prefect-results"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifacts(self) -> Path:
        return (self.root / "mlartifacts").resolve()
