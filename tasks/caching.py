"""Prefect cache keys for stages: settings + a fingerprint of the input files + the stage's code.

A stage task is skipped (Prefect state `Cached`) when its settings, its input files (content
fingerprint, data/io.py) and the source of every project module the stage imports are unchanged; editing
the fine-tune loop does not re-run parsing. The MLflow handle (`tracking`) is left out of the key. If you
delete a stage's outputs by hand, run with `refresh_cache` (`--refresh-cache`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from prefect.cache_policies import INPUTS, CacheKeyFnPolicy, CachePolicy

from data.io import fingerprint

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("data", "models", "tasks")


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.exists():
            return candidate
    return None


@functools.cache
def code_hash(module: str) -> str:
    """Hash of a project module's source and of every project module it imports, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        f = _module_file(todo.pop())
        if f is None or f in seen:
            continue
        seen.add(f)
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                todo.append(node.module)
                todo.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names)
    h = hashlib.sha256()
    for f in sorted(seen):
        h.update(f.relative_to(ROOT).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _paths(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def stage_cache_policy(module: str, *input_params: str) -> CachePolicy:
    """Cache on the task's inputs (minus `tracking`), the files under `input_params`, and `module`'s code."""

    def files_and_code(context, parameters) -> str:
        files = [p for name in input_params for p in _paths(parameters.get(name))]
        return f"{fingerprint(files)}-{code_hash(module)}"

    return (INPUTS - "tracking") + CacheKeyFnPolicy(cache_key_fn=files_and_code)
