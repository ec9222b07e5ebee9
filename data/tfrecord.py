"""TFRecord framing, read record by record with both CRCs checked.

A TFRecord file is a sequence of

    uint64 length (little endian) | uint32 masked crc32c(length) | data[length] | uint32 masked crc32c(data)

We read the framing ourselves (and hand each record to TensorFlow's C++ parser) because a reader must be
able to step over one corrupt record and go on: `tf.data.TFRecordDataset` stops the whole file at the
first bad one. A record whose data CRC fails is reported and skipped; a damaged length or a truncated
file ends the file, since the next record boundary is unknown.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@dataclass
class RecordError:
    index: int  # record number in the file (0-based)
    offset: int  # byte offset of the record's header
    reason: str
    fatal: bool  # True: the rest of the file cannot be read


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, bytes | RecordError]]:
    """Yield (index, data) for each record, or (index, RecordError) for a bad one."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        index = 0
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                yield index, RecordError(index, offset, f"file ends inside the record header ({len(header)} of 12 bytes): truncated", True)
                return
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(header[:8]) != length_crc:
                yield index, RecordError(index, offset, "length CRC mismatch: the file is corrupt from here on", True)
                return
            if offset + 16 + length > size:
                yield index, RecordError(index, offset, f"record of {length} bytes runs past the end of the file ({size} bytes): truncated", True)
                return
            data = f.read(length)
            (data_crc,) = struct.unpack("<I", f.read(4))
            if masked_crc(data) != data_crc:
                yield index, RecordError(index, offset, "data CRC mismatch: the record is corrupt", False)
            else:
                yield index, data
            index += 1
