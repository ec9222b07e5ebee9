"""Atomic writes and input fingerprints: the two conventions every stage relies on.

A reader never sees half a file: we write to a hidden temporary name in the destination folder and
`os.replace` it into place (atomic on POSIX within one filesystem). Hidden names (leading '.') are
also skipped by pyarrow.dataset, so a crash never leaves a file that readers would pick up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success it is renamed onto `dest`, on error removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(dest: str | os.PathLike, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json_atomic(dest: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(dest, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


BINARY_COLUMNS = ("images",)  # columns of already-compressed bytes


class ParquetPartWriter:
    """Rows in, one Parquet file out: row groups are written as they fill (memory stays bounded) into a
    hidden temporary file that replaces `dest` only when the block, final flush included, ends without error.

    `metadata` (str → str) goes into the file's key-value metadata: what produced the part, so a later
    run can tell whether it may reuse it (`part_metadata`)."""

    def __init__(self, dest: str | os.PathLike, schema, row_group_size: int = 256, metadata: dict[str, str] | None = None):
        self.dest, self.row_group_size = Path(dest), row_group_size
        self.schema = schema.with_metadata({**(schema.metadata or {}), **{k.encode(): v.encode() for k, v in (metadata or {}).items()}})
        self.rows: list[dict] = []
        self.count = 0

    def __enter__(self) -> ParquetPartWriter:
        import pyarrow.parquet as pq

        self._path = atomic_path(self.dest)
        self._tmp = self._path.__enter__()
        # Encoded images (JPEG/PNG) do not compress: zstd and dictionary encoding on them only cost time,
        # on every write and read. Everything else: zstd.
        names = self.schema.names
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression={n: "none" if n in BINARY_COLUMNS else "zstd" for n in names},
                                        use_dictionary=[n for n in names if n not in BINARY_COLUMNS])
        return self

    def write_rows(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        self.count += len(rows)
        if len(self.rows) >= self.row_group_size:
            self._flush()

    def write_table(self, table) -> None:
        """Append an Arrow table (columns in the schema's order) without going through Python rows."""
        self._flush()
        self._writer.write_table(table.cast(self.schema), row_group_size=self.row_group_size)
        self.count += table.num_rows

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), row_group_size=self.row_group_size)
            self.rows = []

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
            self._writer.close()
        except BaseException as e:  # a failed final flush must not publish a partial file
            self._writer.close()
            self._path.__exit__(type(e), e, e.__traceback__)
            raise
        self._path.__exit__(exc_type, exc, tb)


def part_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key-value metadata a `ParquetPartWriter` stored (empty for other files)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}


def fingerprint(paths: Iterable[str | os.PathLike], extra: Any = None, portable: bool = False) -> str:
    """A content fingerprint of files: relative name, size, and a hash of the first and last 64 KiB.

    Rewriting a file with the same content keeps the fingerprint (mtimes are ignored), so an identical
    rebuild does not invalidate what depends on it. The tail covers Parquet footers (row-group metadata
    and statistics); TFRecord and Parquet files are always rewritten whole, never patched in the middle.
    Directories are walked recursively; hidden (temporary) files and folders are ignored. `extra` (JSON-able) is
    folded in so one key covers inputs and settings. `portable`: only each root's last name enters the key, so
    the same data mirrored under another folder (another worker) has the same fingerprint.
    """
    h = hashlib.sha256()
    for root in sorted(str(Path(p).resolve()) for p in paths):  # one file, one key, however the path is spelled
        base = Path(root)
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []
        files = [f for f in files if f == base or not any(part.startswith(".") for part in f.relative_to(base).parts)]
        h.update(f"root:{base.name if portable else root}:{len(files)}\n".encode())
        for f in files:
            size = f.stat().st_size
            h.update(f"{f.relative_to(base) if f != base else f.name}:{size}\n".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(_EDGE))
                if size > 2 * _EDGE:
                    fh.seek(-_EDGE, os.SEEK_END)
                h.update(fh.read(_EDGE))
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=_json_default).encode())
    return h.hexdigest()[:16]


_EDGE = 64 * 1024


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
