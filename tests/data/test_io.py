import os

import pyarrow as pa
import pytest

from data.io import ParquetPartWriter, fingerprint, part_metadata

SCHEMA = pa.schema([pa.field("x", pa.int64())])


def test_a_failed_final_flush_publishes_nothing(tmp_path):
    dest = tmp_path / "part.parquet"
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        with ParquetPartWriter(dest, SCHEMA, row_group_size=16) as w:
            w.write_rows([{"x": i} for i in range(16)])  # one full row group is written
            w.write_rows([{"x": "not a number"}])  # fails only when the last group is flushed on exit
    assert not dest.exists() and os.listdir(tmp_path) == []


def test_an_error_in_the_block_publishes_nothing(tmp_path):
    dest = tmp_path / "part.parquet"
    with pytest.raises(RuntimeError):
        with ParquetPartWriter(dest, SCHEMA) as w:
            w.write_rows([{"x": 1}])
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_parts_remember_what_produced_them(tmp_path):
    dest = tmp_path / "part.parquet"
    with ParquetPartWriter(dest, SCHEMA, metadata={"refinevla.source": "abc"}) as w:
        w.write_rows([{"x": 1}, {"x": 2}])
    assert part_metadata(dest) == {"refinevla.source": "abc"}
    assert pa.parquet.read_table(dest).num_rows == 2


def test_fingerprint_follows_content_not_time_nor_hidden_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 200_000)
    before = fingerprint([tmp_path])
    os.utime(tmp_path / "a.bin", (1, 1))  # same content, other mtime
    (tmp_path / ".a.bin.tmp-1-abc").write_bytes(b"half")
    (tmp_path / ".step-3.tmp").mkdir()
    (tmp_path / ".step-3.tmp" / "model.safetensors").write_bytes(b"partial")
    assert fingerprint([tmp_path]) == before
    data = bytearray((tmp_path / "a.bin").read_bytes())
    data[-5] ^= 1  # a change in the tail
    (tmp_path / "a.bin").write_bytes(bytes(data))
    assert fingerprint([tmp_path]) != before
