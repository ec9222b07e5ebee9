"""The working directory as storage that workers share: a local folder, or an fsspec URI.

`workdir` is either a local path (every worker sees the same folder: one machine, or a shared mount) or a
URI such as `s3://bucket/refinevla`, `gs://bucket/x` or `file:///mnt/shared/x` (any fsspec filesystem; install
its package, e.g. `s3fs`, on every worker). With a URI, each worker keeps a local mirror of the parts it
needs (`$REFINEVLA_CACHE_DIR`, default `~/.cache/refinevla`) and stages still read and write plain local
files: a flow pulls a stage's inputs before it runs and pushes the stage's outputs after it, so results move
between workers only through the shared storage, never through one worker's local paths.

Transfers are incremental: a manifest beside the mirror records what was last synced (local size and mtime,
the remote file's fsspec `ukey`), so a pull downloads only files that changed remotely and a push uploads only
files that changed locally. Downloads land under a temporary name and are renamed (atomic); object stores
write each object atomically. Stage paths handed between workers are relative to the working directory
(`rel` / `local`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.io import atomic_path, write_json_atomic

log = logging.getLogger("refinevla")
MANIFEST = ".storage-manifest.json"


def is_uri(workdir: str) -> bool:
    return "://" in str(workdir)


def cache_root() -> Path:
    return Path(os.environ.get("REFINEVLA_CACHE_DIR") or Path.home() / ".cache" / "refinevla")


class Workspace:
    """`root` is the local folder stages use; `pull`/`push` move a relative subtree from/to shared storage."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = str(workdir)
        self.remote = is_uri(self.workdir)
        if self.remote:
            import fsspec

            self.fs, self.base = fsspec.core.url_to_fs(self.workdir)
            self.base = self.base.rstrip("/")
            key = hashlib.sha256(self.workdir.encode()).hexdigest()[:12]
            self.root = (cache_root() / f"{self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]}-{key}").resolve()
        else:
            self.root = Path(self.workdir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ paths
    def local(self, path: str | os.PathLike) -> Path:
        """A path as this worker sees it. With a URI, relative paths are relative to the working directory
        (the portable form); with a local workdir every worker sees the same paths, so they are used as given."""
        p = Path(path)
        return self.root / p if self.remote and not p.is_absolute() else p

    def rel(self, path: str | os.PathLike) -> str:
        """The portable form of a local path: relative to the working directory when it is a URI."""
        p = Path(path).resolve()
        return p.relative_to(self.root).as_posix() if self.remote and p.is_relative_to(self.root) else str(p)

    def portable(self, obj: Any) -> Any:
        """`obj` (a stage summary) with local paths under the working directory made relative."""
        if isinstance(obj, dict):
            return {k: self.portable(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.portable(v) for v in obj]
        if isinstance(obj, str) and self.remote and obj.startswith(str(self.root) + os.sep):
            return self.rel(obj)
        return obj

    def localize(self, obj: Any, keys: tuple[str, ...]) -> Any:
        """The inverse of `portable` for the summary entries named by `keys`."""
        out = dict(obj)
        for k in keys:
            v = out.get(k)
            if isinstance(v, str):
                out[k] = str(self.local(v))
            elif isinstance(v, list):
                out[k] = [str(self.local(x)) for x in v]
        return out

    # ------------------------------------------------------------------ sync
    @contextlib.contextmanager
    def _manifest(self) -> Iterator[dict]:
        """What was last synced, for one pull or push at a time; written back when it ends (also after an error,
        so files already transferred are not transferred again)."""
        f = self.root / MANIFEST
        with self._lock:
            manifest = json.loads(f.read_text()) if f.exists() else {}
            try:
                yield manifest
            finally:
                write_json_atomic(f, manifest)

    def _remote_files(self, rel: str) -> dict[str, dict]:
        top = f"{self.base}/{rel}".rstrip("/")
        if not self.fs.exists(top):
            return {}
        if self.fs.isfile(top):
            return {rel: self.fs.info(top)}
        return {f"{rel}/{Path(p).relative_to(top).as_posix()}": info for p, info in self.fs.find(top, detail=True).items()}

    def pull(self, *rels: str | os.PathLike, skip: tuple[str, ...] = ()) -> int:
        """Download what changed remotely under each relative path, except files named in `skip`; returns the count."""
        if not self.remote:
            return 0
        fetched = 0
        with self._manifest() as manifest:
            for rel in filter(None, map(self._relpath, rels)):
                for name, info in self._remote_files(rel).items():
                    if name.rsplit("/", 1)[-1] in skip:
                        continue
                    ukey = self.fs.ukey(f"{self.base}/{name}")
                    dest = self.root / name
                    entry = manifest.get(name, {})
                    if dest.exists() and entry.get("remote") == ukey and entry.get("local") == _stat(dest):
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(dest) as tmp:
                        self.fs.get_file(f"{self.base}/{name}", str(tmp))
                    manifest[name] = {"local": _stat(dest), "remote": ukey}
                    fetched += 1
        if fetched:
            log.info("storage: pulled %d file(s) of %s from %s", fetched, ", ".join(map(str, rels)), self.workdir)
        return fetched

    def push(self, *paths: str | os.PathLike) -> int:
        """Upload what changed locally under each path (relative, or local under the root); returns the count."""
        if not self.remote:
            return 0
        sent = 0
        with self._manifest() as manifest:
            for rel in filter(None, map(self._relpath, paths)):
                top = self.root / rel
                files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.exists() else []
                for f in files:
                    name = f.relative_to(self.root).as_posix()
                    if name == MANIFEST or _temporary(name) or manifest.get(name, {}).get("local") == _stat(f):
                        continue
                    target = f"{self.base}/{name}"
                    self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                    self.fs.put_file(str(f), target)
                    manifest[name] = {"local": _stat(f), "remote": self.fs.ukey(target)}
                    sent += 1
        if sent:
            log.info("storage: pushed %d file(s) of %s to %s", sent, ", ".join(map(str, paths)), self.workdir)
        return sent

    @contextlib.contextmanager
    def pushing(self, *paths: str | os.PathLike, every_s: float = 120.0) -> Iterator[None]:
        """Push `paths` every `every_s` seconds while the block runs (checkpoints of a long fine-tune reach
        storage before the worker could die), and once more at the end, also when the block fails."""
        if not self.remote:
            yield
            return
        stop = threading.Event()

        def loop():
            while not stop.wait(every_s):
                try:
                    self.push(*paths)
                except Exception as e:  # the final push reports real problems; keep training meanwhile
                    log.warning("storage: periodic push failed: %s", e)

        thread = threading.Thread(target=loop, name="storage-push", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            stop.set()
            thread.join()
            with contextlib.suppress(Exception):  # keep what finished before the failure; report the failure itself
                self.push(*paths)
            raise
        stop.set()
        thread.join()
        self.push(*paths)

    def _relpath(self, path: str | os.PathLike) -> str | None:
        """Relative name under the root; None for a path outside it (a worker-local input, not shared)."""
        p = Path(path)
        if p.is_absolute():
            return p.resolve().relative_to(self.root).as_posix() if p.resolve().is_relative_to(self.root) else None
        return p.as_posix()


def _temporary(name: str) -> bool:
    """Files being written (data/io.atomic_path's `.x.tmp-…`, a checkpoint's `.step-N.tmp/`) are not shared."""
    return any(part.startswith(".") and ".tmp" in part for part in name.split("/"))


def _stat(f: Path) -> list[int]:
    s = f.stat()
    return [s.st_size, s.st_mtime_ns]
