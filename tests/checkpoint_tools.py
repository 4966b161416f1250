"""Test helpers that rewrite real (torch-written) checkpoints.

- :func:`retag` changes the location tags of storages (``cpu`` -> ``cuda:1``),
  to make "saved on a GPU" files on a machine without one.
- :func:`to_big_endian` swaps every storage's bytes and writes ``byteorder=big``
  (or drops the record), to make files as a big-endian machine writes them.
"""

from __future__ import annotations

import io
import pickletools
import struct

import numpy as np

import nbckpt
from nbckpt.format.container import ZipReader, ZipWriter


def _records(data: bytes) -> tuple[str, dict[str, bytes]]:
    reader = ZipReader(io.BytesIO(data))
    return reader.prefix, {name: reader.read(name) for name in reader.names()}


def _write(prefix: str, records: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    writer = ZipWriter(out.write, prefix)
    for name, content in records.items():
        if name not in ("version", ".data/serialization_id"):
            writer.write_record(name, content)
    writer.close()
    return out.getvalue()


def rewrite_strings(pkl: bytes, mapping: dict[str, str]) -> bytes:
    """Re-emit a pickle with BINUNICODE constants replaced (lengths re-encoded)."""
    out = bytearray()
    ops = list(pickletools.genops(pkl))
    for i, (opcode, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(pkl)
        if opcode.name == "BINUNICODE" and arg in mapping:
            encoded = mapping[arg].encode("utf-8")
            out += b"X" + struct.pack("<I", len(encoded)) + encoded
        else:
            out += pkl[pos:end]
    return bytes(out)


def retag(data: bytes, mapping: dict[str, str]) -> bytes:
    """The same checkpoint with storage location tags renamed per ``mapping``."""
    prefix, records = _records(data)
    records["data.pkl"] = rewrite_strings(records["data.pkl"], mapping)
    return _write(prefix, records)


def to_big_endian(data: bytes, *, record: bool = True) -> bytes:
    """The checkpoint as a big-endian machine writes it (``record=False``: no byteorder)."""
    prefix, records = _records(data)
    with nbckpt.open(io.BytesIO(data)) as archive:
        units = {}
        for r in archive.records:
            dtype = r.dtype
            unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
            if dtype.fields is not None:  # complex32
                unit = 2
            units[r.storage] = unit
    for key, unit in units.items():
        raw = np.frombuffer(records[f"data/{key}"], dtype=np.uint8)
        if unit > 1:
            raw = raw.view(f"u{unit}").byteswap().view(np.uint8)
        records[f"data/{key}"] = raw.tobytes()
    if record:
        records["byteorder"] = b"big"
    else:
        records.pop("byteorder", None)
    return _write(prefix, records)
