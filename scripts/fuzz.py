#!/usr/bin/env python3
"""Fuzz nbckpt's loaders with mutated checkpoints, for as long as asked.

    python scripts/fuzz.py --minutes 10            # make fuzz FUZZ_ARGS="--minutes 10"
    python scripts/fuzz.py --minutes 60 --seed 7 --workers 4
    python scripts/fuzz.py --replay fuzz-findings/<file>.bin

Valid small checkpoints (one written by torch, one by nbckpt, one legacy stream,
one legacy tar, one with views and shared storage, one with sparse arrays, a
safetensors file with bf16 and f8, an ``.npz``) are mutated: bit flips, byte
substitutions, truncation, record swaps/duplication inside the zip (or the
npz), pickle opcode substitutions inside data.pkl (the zip is rebuilt around
the mutated pickle with ``ZipWriter`` so that the mutation reaches the
unpickler), and changes inside JSON (a safetensors header's dtypes, shapes and
offsets, its length). Checkpoint folders (:func:`build_folder_bases`: sharded
safetensors and torch shards behind an index JSON, a DCP folder) are mutated
one file at a time (the index or ``.metadata`` most often), or lose, rename or
swap a file; they are checked through their path. Every input goes through ``nbckpt.load``, ``nbckpt.open``,
``nbckpt.scan``, ``nbckpt.verify``, ``nbckpt.diff``, ``nbckpt.convert`` and every
command of the ``nbckpt`` CLI (:data:`ALL_ENTRIES`; the test suite runs the tools
on fewer inputs). The only acceptable outcomes are a value or an nbckpt
error (``CheckpointError``); anything else is a finding: another exception
type (``MemoryError`` included), a crash, or a hang.

Workers are subprocesses with an address-space limit (``--memory-mb``), each
running a batch of inputs from its own seed. Every finding is written to
``fuzz-findings/`` (the input as ``.bin``, what happened as ``.txt``), at most a
few per distinct signature; a worker that crashes or hangs leaves the input it
was on. The exit status is 1 when a finding is not one of the known nbckpt
bugs listed in ``KNOWN_BUGS``.

The mutators draw their choices through a small ``Draw`` interface, so that
``tests/test_fuzz.py`` runs the same mutators under hypothesis (bounded and
reproducible) and this script runs them from random seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickletools
import random
import re
import signal
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CORPUS = ROOT / "tests" / "data" / "attacks"

# ---------------------------------------------------------------------------------------
# Draws: how a mutator makes its choices
# ---------------------------------------------------------------------------------------


class Draw:
    """Choices for a mutator; subclasses draw from hypothesis or from a seeded RNG."""

    def int(self, lo: int, hi: int) -> int:  # inclusive
        raise NotImplementedError

    def choice(self, items: list | tuple) -> Any:
        return items[self.int(0, len(items) - 1)]

    def chance(self, one_in: int) -> bool:
        return self.int(0, one_in - 1) == 0


class RandomDraw(Draw):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


# ---------------------------------------------------------------------------------------
# Base checkpoints
# ---------------------------------------------------------------------------------------


def build_bases() -> dict[str, bytes]:
    """The valid checkpoints that get mutated, by name."""
    import numpy as np

    import nbckpt

    bases: dict[str, bytes] = {}

    def saved(obj: Any, **kwargs: Any) -> bytes:
        buf = io.BytesIO()
        nbckpt.save(obj, buf, **kwargs)
        return buf.getvalue()

    for name in ("ok_torch.pt", "ok_torch_legacy.pt", "ok_handmade_tar.tar"):
        path = CORPUS / name
        if path.exists():  # written by torch (or by hand, for the tar) when the corpus was built
            bases[name.split(".")[0].removeprefix("ok_")] = path.read_bytes()
    small = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([7, -1], np.int64),
             "h": np.ones(2, np.float16), "cfg": {"lr": 0.5, "name": "x", "steps": (1, 2)}}
    bases["nbckpt"] = saved(small)
    bases["nbckpt_legacy"] = saved(small, format="legacy")
    bases["deflated"] = _deflated(bases["nbckpt"])  # torch inflates DEFLATED records: so must nbckpt
    grid = np.arange(12, dtype=np.float64).reshape(3, 4)
    bases["views"] = saved({"a": grid, "t": grid.T, "s": grid[1:, ::2], "row": grid[2], "again": grid,
                            "c": (np.arange(4) + 1j).astype(np.complex64)})
    try:
        import scipy.sparse as sparse
    except ImportError:
        pass
    else:
        dense = np.array([[0, 1.5, 0, 0], [0, 0, 0, 2], [3, 0, 0, 0]], np.float32)
        bases["sparse"] = saved({"csr": sparse.csr_array(dense), "coo": sparse.coo_array(dense),
                                 "csc": sparse.csc_array(dense)})
    try:
        import safetensors.numpy
    except ImportError:
        pass
    else:  # the header (JSON: dtypes, shapes, offsets) is what gets mutated most
        bases["safetensors"] = safetensors.numpy.save(_flat_arrays(), metadata={"format": "np", "step": "3"})
    npz = io.BytesIO()
    np.savez(npz, **{k: v for k, v in _flat_arrays().items() if v.dtype.num < 256})  # NumPy dtypes only
    bases["npz"] = npz.getvalue()
    return bases


def _flat_arrays() -> dict[str, Any]:
    """A few small arrays of the dtypes the flat formats hold (bf16 and f8 through ml_dtypes)."""
    import ml_dtypes
    import numpy as np

    return {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([7, -1], np.int64),
            "bf": np.array([1.5, -2.0, 0.25], ml_dtypes.bfloat16), "f8": np.array([0.5, 3.0], ml_dtypes.float8_e4m3fn),
            "b": np.array([True, False])}


def build_folder_bases() -> dict[str, dict[str, bytes]]:
    """The valid checkpoint folders that get mutated, by name: ``{relative path: bytes}`` each.

    ``sharded``: an index JSON and two safetensors shards (safetensors.numpy, bf16 and f8 included);
    ``sharded_bin``: an index JSON and two torch shards; ``dcp``: a torch.distributed.checkpoint folder
    (``.metadata``, a data file of chunk streams, a non-tensor entry).
    """
    import json
    import tempfile

    import numpy as np

    import nbckpt

    bases: dict[str, dict[str, bytes]] = {}
    arrays = _flat_arrays()
    names = sorted(arrays)
    halves = {"model-00001-of-00002": names[: len(names) // 2], "model-00002-of-00002": names[len(names) // 2:]}
    try:
        import safetensors.numpy
    except ImportError:
        pass
    else:
        files = {f"{shard}.safetensors": safetensors.numpy.save({n: arrays[n] for n in part})
                 for shard, part in halves.items()}
        index = {"metadata": {"total_size": sum(a.nbytes for a in arrays.values())},
                 "weight_map": {n: f"{shard}.safetensors" for shard, part in halves.items() for n in part}}
        files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
        bases["sharded"] = files
    files = {}
    for shard, part in halves.items():
        buf = io.BytesIO()
        nbckpt.save({n: arrays[n] for n in part}, buf)
        files[f"pytorch_{shard}.bin"] = buf.getvalue()
    index = {"metadata": {}, "weight_map": {n: f"pytorch_{shard}.bin" for shard, part in halves.items()
                                            for n in part}}
    files["pytorch_model.bin.index.json"] = json.dumps(index).encode()
    bases["sharded_bin"] = files
    with tempfile.TemporaryDirectory(prefix="nbckpt-fuzz-base-") as tmp:
        folder = os.path.join(tmp, "dcp")
        nbckpt.save({"model": {"w": np.arange(6.0).reshape(2, 3), "b": np.ones(2, np.float16)}, "step": 3,
                     "cfg": {"lr": 0.5}}, folder, format="dcp", durable=False)
        bases["dcp"] = {name: Path(folder, name).read_bytes() for name in sorted(os.listdir(folder))}
    return bases


def _deflated(data: bytes) -> bytes:
    """The same checkpoint with every record DEFLATED (written by Python's zipfile)."""
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            fresh = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            target.writestr(fresh, source.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


# ---------------------------------------------------------------------------------------
# Mutators: (data, draw) -> mutated data
# ---------------------------------------------------------------------------------------

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x28, 0x2E, 0x4B, 0x51, 0x52, 0x58, 0x62, 0x63,
                     0x71, 0x73, 0x85, 0x95, 0x50, 0x4B)
INTERESTING_INTS = (0, 1, -1, 2, 3, 6, 7, 64, 255, 256, 65535, 2**31 - 1, -(2**31), 2**32, 2**32 - 1,
                    2**40, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63))
INTERESTING_STRINGS = ("", "0", "1", "7", "../x", "/etc/passwd", "0\x00", "cpu", "cuda", "cuda:0", "meta",
                       "evil:0", "storage", "module", "data.pkl", "little", "big", "x" * 300,
                       "torch", "FloatStorage", "os", "system", "_rebuild_tensor_v2")
# Opcodes a substitution may put in place of another (their argument bytes stay as they were).
OPCODE_BYTES = tuple(sorted({op.code.encode("latin1")[0] for op in pickletools.opcodes}))
INSERTS = (b"0", b"1", b"2", b"(", b"t", b")", b"]", b"}", b"e", b"a", b"s", b"u", b"b", b"R", b"Q",
           b"N", b"\x85", b"\x86", b"\x87", b"\x81", b"h\x00", b"q\x00", b"K\x00", b"K\xff", b"\x88",
           b"ccollections\nOrderedDict\n", b"ctorch\nFloatStorage\n", b"ctorch._utils\n_rebuild_tensor_v2\n",
           b"cbuiltins\nset\n", b"(t", b"(l", b".")


def bitflip(data: bytes, d: Draw, *, flips: tuple[int, int] = (1, 1)) -> bytes:
    out = bytearray(data)
    for _ in range(d.int(*flips)):
        bit = d.int(0, len(out) * 8 - 1)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def multi_bitflip(data: bytes, d: Draw) -> bytes:
    return bitflip(data, d, flips=(2, 16))


def bytesub(data: bytes, d: Draw) -> bytes:
    out = bytearray(data)
    for _ in range(d.int(1, 8)):
        pos = d.int(0, len(out) - 1)
        out[pos] = d.choice(INTERESTING_BYTES) if d.chance(2) else d.int(0, 255)
    return bytes(out)


def truncate(data: bytes, d: Draw) -> bytes:
    return data[: d.int(0, len(data) - 1)]


def _zip_records(data: bytes) -> tuple[str, list[tuple[str, bytes]]] | None:
    from nbckpt.format.container import ZipReader

    try:
        reader = ZipReader(io.BytesIO(data))
        return reader.prefix, [(name, reader.read(name)) for name in reader.names()]
    except Exception:  # not a torch zip base
        return None


def _npz_records(data: bytes) -> list[tuple[str, bytes]] | None:
    """The records of an npz (a plain zip, records in no folder), or None."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [(info.filename, archive.read(info)) for info in archive.infolist()]
    except Exception:
        return None


def _npz_write(recs: list[tuple[str, bytes]]) -> bytes:
    import warnings
    import zipfile

    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names: they are the point
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, content in recs:
                archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return out.getvalue()


def npz_records(data: bytes, d: Draw) -> bytes:
    """Swap, duplicate, drop or rename the .npy records of an npz, or mutate one's header or data."""
    recs = _npz_records(data)
    if not recs:
        return bitflip(data, d)
    for _ in range(d.int(1, 3)):
        i, j = d.int(0, len(recs) - 1), d.int(0, len(recs) - 1)
        op = d.int(0, 5)
        if op == 0:
            recs[i], recs[j] = recs[j], recs[i]
        elif op == 1:
            recs.insert(j, recs[i])
        elif op == 2 and len(recs) > 1:
            del recs[i]
        elif op == 3:
            (ni, ci), (nj, cj) = recs[i], recs[j]
            recs[i], recs[j] = (ni, cj), (nj, ci)
        elif op == 4:
            recs[i] = (d.choice(("../x.npy", "/abs.npy", "a/b.npy", "x", "", "w.npy", "x" * 300 + ".npy")),
                       recs[i][1])
        else:  # the .npy header's dict (dtype, shape, order) or its data
            name, content = recs[i]
            recs[i] = (name, bytesub(content, d) if content else content)
    return _npz_write(recs)


def _zip_write(prefix: str, records: list[tuple[str, bytes]], *, close: bool = True) -> bytes:
    """A zip of ``records`` in order, then version and serialization_id (as torch writes them).

    ``close`` drops the ``version`` and ``.data/serialization_id`` of ``records`` (ZipWriter
    writes its own); without it they are written too (twice, then).
    """
    from nbckpt.format.container import ZipWriter

    out = io.BytesIO()
    writer = ZipWriter(out.write, prefix)
    for name, content in records:
        if close and name in ("version", ".data/serialization_id"):
            continue
        writer.write_record(name, content)
    writer.close()
    return out.getvalue()


def records(data: bytes, d: Draw) -> bytes:
    """Swap, duplicate, drop, rename or exchange the contents of zip records (rebuilt with ZipWriter)."""
    parsed = _zip_records(data)
    if parsed is None:
        return npz_records(data, d) if data[:4] == b"PK\x03\x04" else bitflip(data, d)
    prefix, recs = parsed
    # version and serialization_id are added back by ZipWriter.close (unless injected again below)
    recs = [r for r in recs if r[0] not in ("version", ".data/serialization_id")]
    for _ in range(d.int(1, 3)):
        op = d.int(0, 7)
        i, j = d.int(0, len(recs) - 1), d.int(0, len(recs) - 1)
        if op == 0:  # swap two records' places
            recs[i], recs[j] = recs[j], recs[i]
        elif op == 1:  # duplicate a record (same name twice)
            recs.insert(j, recs[i])
        elif op == 2 and len(recs) > 1:  # drop a record
            del recs[i]
        elif op == 3:  # exchange two records' contents
            (ni, ci), (nj, cj) = recs[i], recs[j]
            recs[i], recs[j] = (ni, cj), (nj, ci)
        elif op == 4:  # rename a record to another's name, or to a string of interest
            name = recs[j][0] if d.chance(2) else d.choice(INTERESTING_STRINGS)
            recs[i] = (name, recs[i][1])
        elif op == 5:  # a storage record grows or shrinks
            name, content = recs[i]
            recs[i] = (name, content[: d.int(0, len(content))] if d.chance(2) else content + content[:8])
        elif op == 6:  # change the prefix of the whole archive
            prefix = d.choice(("archive", "a/b", "..", "x" * 200, "data.pkl"))
        else:  # a different small record value
            name = d.choice(("version", "byteorder", ".format_version", ".storage_alignment"))
            value = d.choice((b"", b"0", b"3\n", b"99", b"big", b"little", b"middle", b"-1", b"1e9", b"\xff"))
            recs.append((name, value)) if d.chance(2) else recs.insert(0, (name, value))
    return _zip_write(prefix, recs, close=False)


def _pickle_ops(pkl: bytes) -> list[tuple[int, int]] | None:
    """(start, end) of each opcode (with its argument) of a pickle, up to STOP."""
    spans = []
    try:
        ops = list(pickletools.genops(pkl))
    except Exception:
        return None
    for k, (_op, _arg, pos) in enumerate(ops):
        end = ops[k + 1][2] if k + 1 < len(ops) else len(pkl)
        spans.append((pos, end))
    return spans


def _encode_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def mutate_pickle(pkl: bytes, d: Draw) -> bytes:
    """Opcode-level mutations of one pickle (substitute, delete, duplicate, swap, insert, new args)."""
    spans = _pickle_ops(pkl)
    if not spans:
        return bitflip(pkl, d)
    ops = [pkl[a:b] for a, b in spans]
    for _ in range(d.int(1, 3)):
        k = d.int(0, len(ops) - 1)
        choice = d.int(0, 6)
        op = ops[k]
        if choice == 0 and op:  # substitute the opcode byte, keep the argument bytes
            ops[k] = bytes([d.choice(OPCODE_BYTES)]) + op[1:]
        elif choice == 1:
            del ops[k]
        elif choice == 2:
            ops.insert(k, op)
        elif choice == 3:
            m = d.int(0, len(ops) - 1)
            ops[k], ops[m] = ops[m], ops[k]
        elif choice == 4:
            ops.insert(k, d.choice(INSERTS))
        elif choice == 5 and op[:1] in (b"K", b"M", b"J", b"\x8a"):  # another integer
            ops[k] = _encode_int(d.choice(INTERESTING_INTS))
        elif choice == 6 and op[:1] in (b"X", b"U", b"\x8c"):  # another string
            raw = d.choice(INTERESTING_STRINGS).encode("utf-8")
            ops[k] = b"X" + struct.pack("<I", len(raw)) + raw
        if not ops:
            ops = [b"."]
    return b"".join(ops)


def _legacy_split(data: bytes) -> list[bytes] | None:
    """The five pickles of a legacy stream and the raw storage data after them."""
    from nbckpt.format import legacy

    stream = io.BytesIO(data)
    parts = []
    try:
        for what in ("magic", "version", "sys_info", "object", "keys"):
            parts.append(legacy.read_pickle_bytes(stream, len(data), what))
    except Exception:
        return None
    parts.append(data[stream.tell():])
    return parts


def pickle_ops(data: bytes, d: Draw) -> bytes:
    """Mutate the object pickle: data.pkl of a zip (rebuilt with ZipWriter) or a legacy stream's."""
    parsed = _zip_records(data)
    if parsed is not None:
        prefix, recs = parsed
        recs = [(name, mutate_pickle(content, d) if name == "data.pkl" else content) for name, content in recs]
        return _zip_write(prefix, recs)
    parts = _legacy_split(data)
    if parts is not None:
        k = 3 if d.int(0, 3) else d.int(0, 4)  # mostly the object pickle; sometimes a header or the keys
        parts[k] = mutate_pickle(parts[k], d)
        return b"".join(parts)
    return bytesub(data, d)


#: JSON values a header or index mutation puts in place of another.
INTERESTING_JSON = (None, True, 0, -1, 1, 2**31, 2**63, 2**64 + 7, -(2**63), 1.5, "", "F32", "BF16", "F8_E4M3",
                    "I64", "U8", "BOOL", "C64", "F4", "../escape.safetensors", "/etc/passwd", "missing.safetensors",
                    "model-00001-of-00002.safetensors", "pytorch_model-00001-of-00002.bin", ".", "..",
                    [], [0], [0, 0], [2, 3], [-1, 2], [2**40, 2**40], [0, 2**62], {}, {"a": 1}, "x" * 300)


def _mutate_json(value: Any, d: Draw) -> Any:
    """One change somewhere inside a JSON value: replace, drop or add an item."""
    if isinstance(value, dict) and value and not d.chance(6):
        key = d.choice(sorted(value, key=str))
        op = d.int(0, 5)
        if op == 0:
            del value[key]
        elif op == 1:
            value[d.choice(("__metadata__", "weight_map", "metadata", "dtype", "shape", "data_offsets",
                            "w", "x", "total_size"))] = d.choice(INTERESTING_JSON)
        else:
            value[key] = _mutate_json(value[key], d)
        return value
    if isinstance(value, list) and value and not d.chance(6):
        k = d.int(0, len(value) - 1)
        if d.chance(4):
            del value[k]
        else:
            value[k] = _mutate_json(value[k], d)
        return value
    return d.choice(INTERESTING_JSON)


def json_doc(data: bytes, d: Draw) -> bytes:
    """A mutated JSON document: a safetensors header (sizes, offsets, dtypes) or a sharded index."""
    import json

    if data[8:9] == b"{" and len(data) >= 8:  # safetensors: 8-byte length, JSON header, data
        size = int.from_bytes(data[:8], "little")
        try:
            header = json.loads(data[8:8 + size])
        except ValueError:
            return bytesub(data, d)
        body = json.dumps(_mutate_json(header, d)).encode()
        if d.chance(3):  # keep the old length: a header that lies about its own size
            return data[:8] + body + data[8 + size:]
        return len(body).to_bytes(8, "little") + body + data[8 + size:]
    try:
        doc = json.loads(data)
    except ValueError:
        return bytesub(data, d)
    return json.dumps(_mutate_json(doc, d)).encode()


MUTATORS: dict[str, Callable[[bytes, Draw], bytes]] = {
    "bitflip": bitflip,
    "multi_bitflip": multi_bitflip,
    "bytesub": bytesub,
    "truncate": truncate,
    "records": records,
    "pickle_ops": pickle_ops,
    "json_doc": json_doc,
}


def mutate_folder(files: dict[str, bytes], d: Draw) -> dict[str, bytes]:
    """A checkpoint folder with one file mutated (the index or ``.metadata`` most often), or a file
    dropped, renamed or copied over another."""
    files = dict(files)
    names = sorted(files)
    meta = [n for n in names if n.endswith(".json") or n == ".metadata"]
    op = d.int(0, 9)
    if op == 0 and len(names) > 1:  # a shard or data file missing
        del files[d.choice(names)]
    elif op == 1:  # a file under another name (or outside the folder's own names)
        name = d.choice(names)
        files[d.choice(("renamed.safetensors", "x.bin", "__1_0.distcp", "sub/" + name))] = files.pop(name)
    elif op == 2:  # one file's bytes in place of another's
        files[d.choice(names)] = files[d.choice(names)]
    else:
        name = d.choice(meta) if meta and d.chance(2) else d.choice(names)
        mutator = "json_doc" if name.endswith(".json") or d.chance(3) else d.choice(sorted(MUTATORS))
        data = files[name]
        files[name] = MUTATORS[mutator](data, d) if data else data
    return files

# ---------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------

#: nbckpt bugs already known (see tests/test_attacks.py): (exception type, message regex, what).
#: A finding that matches one is reported as known; the tests tolerate them, each having its
#: own strict-xfail regression test, so that new problems stay visible.
KNOWN_BUGS: list[tuple[str, str, str]] = []


#: Outcomes that are not nbckpt errors but are nbckpt's documented behaviour: (type, why).
ACCEPTED: dict[str, str] = {
    "UnicodeDecodeError": "a Python 2 str that the load's `encoding` cannot decode raises UnicodeDecodeError, "
                          "as torch does (tests/test_legacy.py asserts it)",
}


@dataclass
class Finding:
    kind: str  # exception | crash | hang
    entry: str  # load | open | scan
    type: str
    message: str
    trace: str = ""

    @property
    def signature(self) -> str:
        message = re.sub(r"\d+", "N", self.message.splitlines()[0] if self.message else "")[:80]
        return f"{self.kind}:{self.entry}:{self.type}:{message}"

    def known(self) -> str | None:
        for type_name, pattern, what in KNOWN_BUGS:
            if self.type == type_name and re.search(pattern, self.message):
                return what
        return None


class Hang(BaseException):
    pass


def _on_alarm(signum, frame):
    raise Hang()


#: Every entry point the fuzzer can drive: the loaders, then the tools built on them.
ALL_ENTRIES = ("load", "open", "scan", "verify", "diff", "convert", "cli")


def _write_folder(folder: str, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = os.path.join(folder, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)


def _run_tools(entry: str, data: bytes | None, path: str) -> Any:
    """``verify``, ``diff`` (the input with itself), ``convert`` (to .npz, lossy) or every ``cli``
    command, on ``data`` (a file object) or on ``path`` (where it was written)."""
    import tempfile

    import nbckpt

    def source() -> Any:
        return io.BytesIO(data) if data is not None else path

    if entry == "verify":
        return nbckpt.verify(source())
    if entry == "diff":
        return nbckpt.diff(source(), source())
    with tempfile.TemporaryDirectory(prefix="nbckpt-fuzz-") as folder:
        if entry == "convert":
            return nbckpt.convert(path, os.path.join(folder, "x.npz"), lossy=True)
        from nbckpt import cli

        failures: list[BaseException] = []
        original = cli._message

        def recording(err, args):
            failures.append(err)
            return original(err, args)

        cli._message = recording
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = io.StringIO()
        try:
            for argv in (["ls", path, "--json"], ["ls", path], ["info", path], ["verify", path],
                         ["diff", path, path], ["convert", path, os.path.join(folder, "y.npz"), "--lossy"]):
                cli.main(argv)
        finally:
            sys.stdout, sys.stderr = saved
            cli._message = original
        for err in failures:  # the CLI catches everything: re-raise what was not typed
            if not isinstance(err, (nbckpt.CheckpointError, cli.CommandError)):
                raise err
        return None


def check(data: bytes | dict[str, bytes], *, timeout_s: int = 10,
          entries: tuple[str, ...] = ("load", "open", "scan")) -> list[Finding]:
    """Run ``data`` through nbckpt's entry points (any of :data:`ALL_ENTRIES`); the unacceptable outcomes.

    ``data`` is one file's bytes (given to the loaders as a file object), or a checkpoint
    folder as ``{relative path: bytes}`` (written to a temporary folder, given as its path).
    """
    import tempfile

    needs_path = isinstance(data, dict) or any(e in ("convert", "cli") for e in entries)
    if not needs_path:  # file objects only: no temporary folder (most of the tests' inputs)
        return _check(data, "", timeout_s, entries)
    with tempfile.TemporaryDirectory(prefix="nbckpt-fuzz-input-") as tmp:
        if isinstance(data, dict):
            path = os.path.join(tmp, "checkpoint")
            _write_folder(path, data)
            return _check(None, path, timeout_s, entries)
        path = os.path.join(tmp, "x.pt")
        with open(path, "wb") as f:
            f.write(data)
        return _check(data, path, timeout_s, entries)


def _check(data: bytes | None, path: str, timeout_s: int, entries: tuple[str, ...]) -> list[Finding]:
    import nbckpt

    def source() -> Any:
        return io.BytesIO(data) if data is not None else path

    findings = []
    use_alarm = hasattr(signal, "SIGALRM") and _main_thread()
    for entry in entries:
        previous = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
        if use_alarm:
            signal.alarm(timeout_s)
        try:
            if entry == "load":
                value = nbckpt.load(source())
            elif entry == "open":  # every format: list, then read each record
                with nbckpt.open(source()) as archive:
                    value = [archive[r.path] for r in archive.records]
            elif entry == "scan":
                value = nbckpt.scan(source())
            else:
                value = _run_tools(entry, data, path)
            del value
        except nbckpt.CheckpointError:
            pass
        except UnicodeDecodeError as err:
            if not _from_py2_string(err):  # see ACCEPTED
                findings.append(Finding("exception", entry, "UnicodeDecodeError", str(err)[:500],
                                        traceback.format_exc()[-3000:]))
        except Hang:
            findings.append(Finding("hang", entry, "hang", f"more than {timeout_s} s"))
        except BaseException as err:  # noqa: BLE001 - anything else is a finding
            if isinstance(err, KeyboardInterrupt):
                raise
            findings.append(Finding("exception", entry, f"{type(err).__module__}.{type(err).__qualname__}"
                                    .removeprefix("builtins."), str(err)[:500], traceback.format_exc()[-3000:]))
        finally:
            if use_alarm:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
    return findings


def _from_py2_string(err: BaseException) -> bool:
    """Whether ``err`` was raised decoding a Python 2 str with the load's encoding (documented)."""
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame
        tb = tb.tb_next
    if last is None:
        return False
    # The decode happens in the unpickler's _string (a str method raises from there).
    return last.f_code.co_name == "_string" and last.f_code.co_filename.endswith("unpickler.py")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------
# The long run: workers in subprocesses, findings on disk
# ---------------------------------------------------------------------------------------


#: How a folder input starts when written to a file (``--replay`` reads it back).
FOLDER_MAGIC = b"nbckpt-fuzz-folder\n"


def encode_input(data: bytes | dict[str, bytes]) -> bytes:
    """An input as one file's bytes: a file's own, or a folder as :data:`FOLDER_MAGIC` and JSON."""
    if isinstance(data, dict):
        return FOLDER_MAGIC + json.dumps({name: content.hex() for name, content in data.items()}).encode()
    return data


def decode_input(raw: bytes) -> bytes | dict[str, bytes]:
    """What :func:`encode_input` wrote."""
    if raw.startswith(FOLDER_MAGIC):
        return {name: bytes.fromhex(content) for name, content in json.loads(raw[len(FOLDER_MAGIC):]).items()}
    return raw


def _worker(seed: int, count: int, out: Path, memory_mb: int, timeout_s: int) -> int:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    bases: dict[str, Any] = build_bases()
    folders = build_folder_bases()
    bases.update(folders)
    names = sorted(bases)
    current = out / f".current-{os.getpid()}"
    rng = random.Random(seed)
    for index in range(count):
        draw = RandomDraw(rng)
        base = draw.choice(names)
        if base in folders:
            mutator = "folder"
            data = encode_input(mutate_folder(folders[base], draw))
        else:
            mutator = draw.choice(sorted(MUTATORS))
            data = MUTATORS[mutator](bases[base], draw)
        current.write_bytes(data)
        current.with_suffix(".json").write_text(json.dumps({"base": base, "mutator": mutator, "seed": seed,
                                                            "index": index}))
        print(f"@@INPUT {index}", flush=True)  # keeps the parent's watchdog quiet
        for finding in check(decode_input(data), timeout_s=timeout_s, entries=ALL_ENTRIES):
            print("@@FINDING " + json.dumps({"base": base, "mutator": mutator, "seed": seed, "index": index,
                                             "kind": finding.kind, "entry": finding.entry,
                                             "type": finding.type, "message": finding.message,
                                             "trace": finding.trace, "data": data.hex()}), flush=True)
    for path in (current, current.with_suffix(".json")):
        path.unlink(missing_ok=True)
    print(f"@@DONE {count}", flush=True)
    return 0


class Findings:
    """Writes findings to disk, a few per signature."""

    def __init__(self, out: Path, per_signature: int = 3) -> None:
        self.out = out
        self.per_signature = per_signature
        self.count: dict[str, int] = {}
        self.known: dict[str, str] = {}
        self.new: set[str] = set()

    def add(self, finding: Finding, data: bytes, context: dict) -> None:
        signature = finding.signature
        self.count[signature] = self.count.get(signature, 0) + 1
        known = finding.known()
        if known:
            self.known[signature] = known
        else:
            self.new.add(signature)
        if self.count[signature] > self.per_signature:
            return
        digest = hashlib.sha256(data).hexdigest()[:12]
        stem = f"{finding.kind}-{context.get('mutator', 'x')}-{context.get('base', 'x')}-{digest}"
        (self.out / f"{stem}.bin").write_bytes(data)
        text = [f"signature: {signature}", f"known bug: {known or 'no (new)'}",
                f"context: {json.dumps(context)}", f"entry point: {finding.entry}",
                f"outcome: {finding.type}: {finding.message}", "", finding.trace,
                f"replay: python scripts/fuzz.py --replay {self.out / (stem + '.bin')}"]
        (self.out / f"{stem}.txt").write_text("\n".join(text) + "\n")


def _run_worker(seed: int, count: int, out: Path, args, findings: Findings) -> int:
    import threading

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--seed", str(seed), "--count", str(count),
           "--out", str(out), "--memory-mb", str(args.memory_mb), "--timeout", str(args.timeout)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(ROOT))
    state = {"last": time.monotonic(), "killed": False}
    err_chunks: list[str] = []
    threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True).start()

    def watchdog() -> None:  # a hang in C code is not interrupted by the worker's alarm
        while proc.poll() is None:
            if time.monotonic() - state["last"] > args.timeout + 60:
                state["killed"] = True
                proc.kill()
                return
            time.sleep(1)

    threading.Thread(target=watchdog, daemon=True).start()
    done = 0
    for line in proc.stdout:
        state["last"] = time.monotonic()
        if line.startswith("@@FINDING "):
            record = json.loads(line[10:])
            data = bytes.fromhex(record.pop("data"))
            finding = Finding(record.pop("kind"), record.pop("entry"), record.pop("type"), record.pop("message"),
                              record.pop("trace"))
            findings.add(finding, data, record)
        elif line.startswith("@@DONE "):
            done = int(line[7:])
    proc.wait()
    if proc.returncode != 0 or not done:
        # A crash, a hang, or memory exhaustion outside Python: keep the input it was on.
        current = out / f".current-{proc.pid}"
        context = {"seed": seed}
        if current.with_suffix(".json").exists():
            context = json.loads(current.with_suffix(".json").read_text())
        kind = "hang" if state["killed"] else "crash"
        data = current.read_bytes() if current.exists() else b""
        findings.add(Finding(kind, "worker", f"returncode {proc.returncode}", "".join(err_chunks)[-500:]),
                     data, context)
        for path in (current, current.with_suffix(".json")):
            path.unlink(missing_ok=True)
        done = max(done, context.get("index", 0))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)), help="parallel workers")
    parser.add_argument("--batch", type=int, default=500, help="inputs per worker process")
    parser.add_argument("--out", type=Path, default=ROOT / "fuzz-findings", help="where findings go")
    parser.add_argument("--memory-mb", type=int, default=1536, help="address-space limit of a worker")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--replay", type=Path, default=None, help="run one input and print what happens")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        return _worker(args.seed, args.count, args.out, args.memory_mb, args.timeout)
    if args.replay is not None:
        found = check(decode_input(args.replay.read_bytes()), timeout_s=args.timeout)
        for f in found:
            print(f"{f.entry}: {f.type}: {f.message}\n{f.trace}")
        print("no finding" if not found else f"{len(found)} finding(s)")
        return 1 if found else 0

    from concurrent.futures import ThreadPoolExecutor

    args.out.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    findings = Findings(args.out)
    stop_at = time.monotonic() + args.minutes * 60
    total = 0
    print(f"fuzzing for {args.minutes} min with {args.workers} workers from seed {seed}; findings go to {args.out}")

    def one(s: int) -> int:
        return _run_worker(s, args.batch, args.out, args, findings)

    with ThreadPoolExecutor(args.workers) as pool:
        while time.monotonic() < stop_at:
            seeds = [seed + k for k in range(args.workers)]
            seed += args.workers
            total += sum(pool.map(one, seeds))
            print(f"  {total} inputs, {sum(findings.count.values())} findings "
                  f"({len(findings.new)} new signatures, {len(findings.known)} known)", flush=True)
    for signature in sorted(findings.count):
        tag = f"known: {findings.known[signature]}" if signature in findings.known else "NEW"
        print(f"{findings.count[signature]:6d}  {signature}  [{tag}]")
    print(f"{total} inputs; next seed {seed}")
    return 1 if findings.new else 0


if __name__ == "__main__":
    sys.exit(main())
