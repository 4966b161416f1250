"""Build the hostile checkpoint corpus in this folder: ``python tests/data/attacks/build.py``.

Every file here is a checkpoint (zip, pre-1.6 stream or 0.1-0.3 tar) written to
attack a safe loader: globals that run code, opcodes that import, storages and
views that lie, allocation bombs, zip structures that lie. ``manifest.json``
says, for each file, what it attacks and what nbckpt must do with it (refuse it
with an nbckpt error, or load it to a given value); ``README.md`` is generated
from it. ``tests/test_attacks.py`` runs them all.

Nothing here runs a payload: pickles are emitted opcode by opcode. Payloads
that would do harm if executed only ever touch a canary path,
``nbckpt-canary-<name>`` (relative: the test runs every entry point in a fresh
folder of its own, and asserts that no canary appears there), or import a module
nbckpt never imports (``this``), or add to nbckpt's safe-globals list; the test
checks all three.

torch is used for two control files only (written by ``torch.save``); without
torch they are skipped and the other files are still built. The output is
deterministic: rebuilding gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CANARY_PREFIX = "nbckpt-canary-"  # relative to the folder the test runs each entry point in
#: A module nbckpt never imports; a payload that imports it is detected by the test.
CANARY_MODULE = "this"


def canary(name: str) -> str:
    return CANARY_PREFIX + name


# ---------------------------------------------------------------------------------------
# The value a loaded object is compared by (shared with tests/test_attacks.py)
# ---------------------------------------------------------------------------------------

#: Arrays up to this size are compared by content; larger ones by shape and strides only.
HASH_LIMIT = 1 << 20
_MAX_SUMMARY_DEPTH = 40
#: Objects described at most (a value the memo repeats 2**40 times is cut there).
_MAX_SUMMARY_ITEMS = 100_000


def summarize(obj: Any, _depth: int = 0, _budget: list | None = None) -> Any:
    """A JSON-able description of a loaded object (arrays by dtype, shape and content hash).

    Deep structures are cut at a fixed depth, large ones after a fixed number of
    objects; unknown objects are described by their type only, so an internal
    placeholder leaking into a result shows up.
    """
    if _budget is None:
        _budget = [_MAX_SUMMARY_ITEMS]
    _budget[0] -= 1
    if _budget[0] < 0:
        return {"cut": True}
    if _depth > _MAX_SUMMARY_DEPTH:
        return {"deep": True}
    d = _depth + 1

    def summarize(obj: Any, _depth: int) -> Any:  # noqa: F811 - the same budget all the way down
        return _summarize(obj, _depth, _budget)

    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, bool):
        return {"bool": obj}
    if isinstance(obj, int):
        return obj if abs(obj) < 2**53 else {"int": hex(obj)[:80] + f"/{obj.bit_length()}"}
    if isinstance(obj, float):
        return {"float": repr(obj)}
    if isinstance(obj, complex):
        return {"complex": repr(obj)}
    if isinstance(obj, (bytes, bytearray)):
        return {type(obj).__name__: obj.hex()[:200]}
    if isinstance(obj, np.ndarray):
        out = {"ndarray": obj.dtype.str, "shape": list(obj.shape)}
        if obj.dtype.hasobject:
            out["object"] = True
        elif obj.nbytes <= HASH_LIMIT:
            out["sha256"] = hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()[:16]
        else:
            out["strides"] = list(obj.strides)
        return out
    if isinstance(obj, np.generic):
        return {"scalar": obj.dtype.str, "hex": obj.tobytes().hex()}
    if isinstance(obj, np.dtype):
        return {"dtype": obj.str}
    module = type(obj).__module__
    if module == "nbckpt.meta":
        return {"meta": str(obj.dtype), "shape": list(obj.shape)}
    if module.startswith("scipy.sparse"):
        return {"sparse": obj.format, "shape": list(obj.shape), "nnz": int(obj.nnz)}
    if isinstance(obj, dict):
        # dict.items: a loaded mapping may carry an instance attribute named "items".
        out = {type(obj).__name__: [[summarize(k, d), summarize(v, d)] for k, v in dict.items(obj)]}
        attributes = getattr(obj, "__dict__", None)
        if attributes:
            out["attrs"] = sorted(str(k) for k in attributes)
        return out
    if isinstance(obj, (list, tuple)):
        return {type(obj).__name__: [summarize(v, d) for v in obj]}
    if isinstance(obj, (set, frozenset)):
        items = [summarize(v, d) for v in obj]
        return {type(obj).__name__: sorted(items, key=lambda s: json.dumps(s, sort_keys=True))}
    if isinstance(obj, slice):
        return {"slice": [summarize(obj.start, d), summarize(obj.stop, d), summarize(obj.step, d)]}
    return {"type": f"{module}.{type(obj).__qualname__}"}


_summarize = summarize


class Summary(dict):
    """An expected value given directly as its summary (for values too big to build)."""


def expected(obj: Any) -> Any:
    """``summarize(obj)`` normalised through JSON (as the test compares it)."""
    if isinstance(obj, Summary):
        return json.loads(json.dumps(dict(obj)))
    return json.loads(json.dumps(summarize(obj)))


# ---------------------------------------------------------------------------------------
# A pickle writer, opcode by opcode (protocol 2, plus raw opcodes for hostile files)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class G:
    """``GLOBAL module\\nname\\n``."""

    module: str
    name: str


@dataclass(frozen=True)
class SG:
    """``module`` and ``name`` pushed as strings, then ``STACK_GLOBAL``."""

    module: str
    name: str


@dataclass(frozen=True)
class R:
    """``func(*args)`` by ``REDUCE``."""

    func: Any
    args: tuple = ()


@dataclass(frozen=True)
class B:
    """``obj`` then ``state`` then ``BUILD``."""

    obj: Any
    state: Any


@dataclass(frozen=True)
class NO:
    """``cls`` then ``args`` then ``NEWOBJ``."""

    cls: Any
    args: tuple = ()


@dataclass(frozen=True)
class PID:
    """``pid`` then ``BINPERSID``."""

    pid: Any


@dataclass(frozen=True)
class Raw:
    """Bytes inserted as they are."""

    data: bytes


@dataclass(frozen=True)
class Py2:
    """A Python 2 ``str``: SHORT_BINSTRING / BINSTRING."""

    data: bytes


@dataclass(frozen=True)
class Seq:
    """Several items emitted one after the other (they stay on the stack)."""

    items: tuple


def od(*pairs: tuple) -> R:
    """``collections.OrderedDict()`` filled by SETITEMS, as torch pickles it."""
    return _ODict(tuple(pairs))


@dataclass(frozen=True)
class _ODict:
    pairs: tuple


def od_value(*pairs: tuple):
    import collections

    return collections.OrderedDict(pairs)


def emit(obj: Any, *, proto: bool = True, stop: bool = True) -> bytes:
    """``obj`` as a pickle (PROTO 2 ... STOP)."""
    out = bytearray(b"\x80\x02" if proto else b"")
    _emit(out, obj)
    if stop:
        out += b"."
    return bytes(out)


def _str(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _emit(out: bytearray, obj: Any) -> None:
    if obj is None:
        out += b"N"
    elif obj is True or obj is False:
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out += b"K" + bytes([obj])
        elif 0 <= obj < 65536:
            out += b"M" + struct.pack("<H", obj)
        elif -(2**31) <= obj < 2**31:
            out += b"J" + struct.pack("<i", obj)
        else:
            raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            if len(raw) < 256:
                out += b"\x8a" + bytes([len(raw)]) + raw
            else:
                out += b"\x8b" + struct.pack("<i", len(raw)) + raw
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        out += _str(obj)
    elif isinstance(obj, Py2):
        if len(obj.data) < 256:
            out += b"U" + bytes([len(obj.data)]) + obj.data
        else:
            out += b"T" + struct.pack("<i", len(obj.data)) + obj.data
    elif isinstance(obj, bytes):
        # Protocol 2 writes bytes as _codecs.encode(latin1 text, 'latin1').
        _emit(out, R(G("_codecs", "encode"), (obj.decode("latin1"), "latin1")))
    elif isinstance(obj, tuple):
        if not obj:
            out += b")"
        elif len(obj) <= 3:
            for item in obj:
                _emit(out, item)
            out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(obj)]
        else:
            out += b"("
            for item in obj:
                _emit(out, item)
            out += b"t"
    elif isinstance(obj, list):
        out += b"]"
        if obj:
            out += b"("
            for item in obj:
                _emit(out, item)
            out += b"e"
    elif isinstance(obj, dict):
        out += b"}"
        if obj:
            out += b"("
            for key, value in obj.items():
                _emit(out, key)
                _emit(out, value)
            out += b"u"
    elif isinstance(obj, _ODict):
        _emit(out, R(G("collections", "OrderedDict"), ()))
        if obj.pairs:
            out += b"("
            for key, value in obj.pairs:
                _emit(out, key)
                _emit(out, value)
            out += b"u"
    elif isinstance(obj, G):
        out += b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n"
    elif isinstance(obj, SG):
        out += _str(obj.module) + _str(obj.name) + b"\x93"
    elif isinstance(obj, R):
        _emit(out, obj.func)
        _emit(out, tuple(obj.args))
        out += b"R"
    elif isinstance(obj, B):
        _emit(out, obj.obj)
        _emit(out, obj.state)
        out += b"b"
    elif isinstance(obj, NO):
        _emit(out, obj.cls)
        _emit(out, tuple(obj.args))
        out += b"\x81"
    elif isinstance(obj, PID):
        _emit(out, obj.pid)
        out += b"Q"
    elif isinstance(obj, Raw):
        out += obj.data
    elif isinstance(obj, Seq):
        for item in obj.items:
            _emit(out, item)
    else:
        raise TypeError(f"cannot emit {type(obj).__name__}")


# -- torch objects ----------------------------------------------------------------------

def storage_pid(key: Any = "0", numel: Any = 6, *, cls: Any = "FloatStorage", location: Any = "cpu",
                legacy_view: Any = "absent") -> PID:
    klass = G("torch", cls) if isinstance(cls, str) else cls
    fields = ("storage", klass, key, location, numel)
    if legacy_view != "absent":
        fields += (legacy_view,)
    return PID(fields)


def tensor(storage: Any = None, offset: Any = 0, size: Any = (2, 3), stride: Any = (3, 1), *,
           metadata: Any = "absent", rebuild: str = "_rebuild_tensor_v2") -> R:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    if storage is None:
        storage = storage_pid()
    args = (storage, offset, tuple(size) if isinstance(size, list) else size,
            tuple(stride) if isinstance(stride, list) else stride, False, od())
    if metadata != "absent":
        args += (metadata,)
    return R(G("torch._utils", rebuild), args)


def np_dtype(code: str = "f4", order: str = "<") -> B:
    """``numpy.dtype(code)`` completed by BUILD, as NumPy pickles a dtype."""
    return B(R(G("numpy", "dtype"), (code, False, True)), (3, order, None, None, None, -1, -1, 0))


W = np.arange(6, dtype=np.float32)  # storage "0" of most files
W_BYTES = W.tobytes()


def w_value() -> np.ndarray:
    return W.reshape(2, 3)


# ---------------------------------------------------------------------------------------
# A zip writer that can lie
# ---------------------------------------------------------------------------------------

LOCAL = struct.Struct("<4sHHHHHIIIHH")
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
EOCD = struct.Struct("<4sHHHHIIH")
EOCD64 = struct.Struct("<4sQHHIIQQQQ")
LOCATOR = struct.Struct("<4sIQI")


@dataclass
class Rec:
    """One zip record; the optional fields make it lie."""

    name: str  # without the prefix
    data: bytes
    method: int = 0
    compressed: bytes | None = None  # the bytes written (default: data, deflated if method 8)
    crc: int | None = None
    csize: int | None = None  # central-directory sizes (default: true)
    usize: int | None = None
    full_name: str | None = None  # the whole name (default: prefix/name)
    cd_extra: bytes = b""  # extra field of the central-directory entry
    cd_offset: int | None = None  # header offset in the central directory (default: true)
    local_name: str | None = None
    local_method: int | None = None
    local_extra: bytes | None = None
    local_extra_len: int | None = None  # the extra length the local header declares
    local_magic: bytes = b"PK\x03\x04"


@dataclass
class Zip:
    data: bytearray
    local_offsets: dict[str, int] = field(default_factory=dict)
    cd_entries: dict[str, int] = field(default_factory=dict)
    cd_offset: int = 0
    cd_size: int = 0
    eocd64: int = 0
    locator: int = 0
    eocd: int = 0


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def zip_build(records: list[Rec], *, prefix: str = "archive", comment: bytes = b"",
              comment_len: int | None = None, entries: int | None = None) -> Zip:
    """A torch-style zip (64-byte aligned data, zip64 end records) of ``records``."""
    out = bytearray()
    z = Zip(out)
    central = bytearray()
    for rec in records:
        full = rec.full_name if rec.full_name is not None else f"{prefix}/{rec.name}"
        name_b = full.encode("utf-8", "surrogateescape")
        local_name_b = (rec.local_name if rec.local_name is not None else full).encode("utf-8", "surrogateescape")
        payload = rec.compressed if rec.compressed is not None else (
            deflate(rec.data) if rec.method == 8 else rec.data)
        crc = zlib.crc32(rec.data) if rec.crc is None else rec.crc
        offset = len(out)
        if rec.local_extra is None:
            start = offset + LOCAL.size + len(local_name_b) + 4
            pad = (64 - start % 64) % 64
            extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        else:
            extra = rec.local_extra
        method = rec.method if rec.local_method is None else rec.local_method
        out += LOCAL.pack(rec.local_magic, 20, 0x0800, method, 0, 0, crc, len(payload), len(rec.data),
                          len(local_name_b), len(extra) if rec.local_extra_len is None else rec.local_extra_len)
        out += local_name_b + extra + payload
        z.local_offsets[rec.name] = offset
        csize = len(payload) if rec.csize is None else rec.csize
        usize = len(rec.data) if rec.usize is None else rec.usize
        hdr = offset if rec.cd_offset is None else rec.cd_offset
        z.cd_entries[rec.name] = len(central)
        central += CENTRAL.pack(b"PK\x01\x02", 0x031E, 20, 0x0800, rec.method, 0, 0, crc, csize, usize,
                                len(name_b), len(rec.cd_extra), 0, 0, 0, 0, hdr)
        central += name_b + rec.cd_extra
    z.cd_offset = len(out)
    z.cd_size = len(central)
    n = len(records) if entries is None else entries
    out += central
    z.eocd64 = len(out)
    out += EOCD64.pack(b"PK\x06\x06", 44, 0x031E, 45, 0, 0, n, n, len(central), z.cd_offset)
    z.locator = len(out)
    out += LOCATOR.pack(b"PK\x06\x07", 0, z.eocd64, 1)
    z.eocd = len(out)
    out += EOCD.pack(b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), len(central), z.cd_offset,
                     len(comment) if comment_len is None else comment_len)
    out += comment
    for name, pos in list(z.cd_entries.items()):
        z.cd_entries[name] = z.cd_offset + pos
    return z


def ckpt_records(data_pkl: bytes, storages: dict[str, bytes] | None = None, *,
                 version: bytes | None = b"3\n", byteorder: bytes | None = b"little",
                 extra: list[Rec] | None = None) -> list[Rec]:
    """The records of a checkpoint, in torch's order."""
    storages = {"0": W_BYTES} if storages is None else storages
    recs = [Rec("data.pkl", data_pkl), Rec(".format_version", b"1"), Rec(".storage_alignment", b"64")]
    if byteorder is not None:
        recs.append(Rec("byteorder", byteorder))
    recs += [Rec(f"data/{k}", v) for k, v in storages.items()]
    recs += extra or []
    if version is not None:
        recs.append(Rec("version", version))
    recs.append(Rec(".data/serialization_id", b"0" * 40))
    return recs


def ckpt(obj: Any = None, storages: dict[str, bytes] | None = None, *, pkl: bytes | None = None,
         **kwargs: Any) -> bytes:
    """A zip checkpoint of ``obj`` (emitted) or of the raw ``pkl``."""
    data_pkl = pkl if pkl is not None else emit(obj)
    records = ckpt_records(data_pkl, storages, **kwargs)
    if len(data_pkl) > 16384:  # keep the corpus small: large pickles are stored deflated
        records[0] = Rec("data.pkl", data_pkl, method=8)
    return bytes(zip_build(records).data)


def patch(data: bytearray | bytes, offset: int, fmt: str, *values: Any) -> bytes:
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


# ---------------------------------------------------------------------------------------
# Legacy writers: the pre-1.6 stream and the 0.1-0.3 tar
# ---------------------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def legacy_stream(obj: Any, storages: dict[str, tuple[int, bytes]] | None = None, *,
                  keys: Any = None, header: tuple | None = None, main: bytes | None = None,
                  keys_pkl: bytes | None = None) -> bytes:
    """Pre-1.6 stream: magic, version, sys_info, object, keys, then (int64 numel, bytes) per key."""
    storages = {"0": (6, W_BYTES)} if storages is None else storages
    keys = sorted(storages) if keys is None else keys
    magic, version, sys_info = header or (LEGACY_MAGIC, 1001, SYS_INFO)
    out = bytearray()
    for part in (magic, version, sys_info):
        out += part if isinstance(part, bytes) else emit(part)
    out += main if main is not None else emit(obj)
    out += keys_pkl if keys_pkl is not None else emit(list(keys))
    for key in (k for k in storages):
        numel, data = storages[key]
        out += struct.pack("<q", numel) + data
    return bytes(out)


def legacy_pid(key: Any = "0", numel: Any = 6, *, cls: str = "FloatStorage", view: Any = None,
               location: Any = "cpu") -> PID:
    return storage_pid(key, numel, cls=cls, location=location, legacy_view=view)


def tar_bytes(members: list[tuple[str, bytes]], *, raw_headers: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw_headers + out.getvalue()


TAR_KEY = 94_000_000_000_016
TAR_TENSOR = 94_000_000_000_032


def tar_checkpoint(*, pickle_obj: Any = None, storages: bytes | None = None,
                   tensors: bytes | None = None, sys_info: bytes | None = None,
                   drop: str | None = None) -> bytes:
    """A torch 0.1-0.3 tar checkpoint holding one float tensor (2, 3) over 6 floats."""
    if storages is None:
        storages = (emit(1) + emit((TAR_KEY, "cpu", G("torch", "FloatStorage")))
                    + struct.pack("<q", 6) + W_BYTES + emit([]))
    if tensors is None:
        tensors = (emit(1) + emit((TAR_TENSOR, TAR_KEY, G("torch", "FloatTensor")))
                   + struct.pack("<i", 2) + b"\0" * 4 + struct.pack("<2q", 2, 3)
                   + struct.pack("<2q", 3, 1) + struct.pack("<q", 0))
    members = [
        ("sys_info", sys_info if sys_info is not None else emit(dict(SYS_INFO, protocol_version=1000))),
        ("pickle", emit({"w": PID(str(TAR_TENSOR))} if pickle_obj is None else pickle_obj)),
        ("tensors", tensors),
        ("storages", storages),
    ]
    return tar_bytes([m for m in members if m[0] != drop])


def tar_checkpoint_member(name: str) -> bytes:
    """The ``storages`` or ``tensors`` member :func:`tar_checkpoint` writes by default."""
    with tarfile.open(fileobj=io.BytesIO(tar_checkpoint())) as tar:
        return tar.extractfile(name).read()


# ---------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    kind: str  # zip | legacy | tar
    data: bytes
    attack: str
    must: str  # what nbckpt must do, in words
    load: str = "error"  # error | ok | ok_or_error
    error: str = "CheckpointError"  # the class an error must be (or subclass)
    value: Any = None  # summarize() of the correct load, for ok / ok_or_error
    open: str | None = None  # expectation for nbckpt.open (default: derived)
    verify: str | None = None  # ok | problems | either, for nbckpt.verify (default: derived)
    scan: str = "ok_or_error"
    scan_flags: list[str] = field(default_factory=list)  # globals scan must report as refused
    bomb: bool = False  # check in-process with tracemalloc that nothing big is allocated
    group: str = ""
    extra: dict[str, bytes] = field(default_factory=dict)  # other files of a sharded case (its shards)

    @property
    def file(self) -> str:
        """The path every entry point is given (a sharded case: the index in its own folder)."""
        if self.kind == "sharded":
            return f"{self.name}/{SHARDED_INDEX}"
        return self.name + {"tar": ".tar", "safetensors": ".safetensors"}.get(self.kind, ".pt")

    def files(self) -> dict[str, bytes]:
        """Every file of the case, by its path relative to the corpus folder."""
        folder = self.file.rpartition("/")[0]
        return {self.file: self.data, **{f"{folder}/{name}" if folder else name: data
                                         for name, data in self.extra.items()}}


CASES: list[Case] = []
_GROUP = [""]


def group(title: str) -> None:
    _GROUP[0] = title


def add(name: str, kind: str, data: bytes, attack: str, must: str, **kw: Any) -> None:
    if any(c.name == name for c in CASES):
        raise ValueError(f"duplicate case {name}")
    if "value" in kw and kw["value"] is not None:
        kw["value"] = expected(kw["value"])
    CASES.append(Case(name, kind, data, attack, must, group=_GROUP[0], **kw))


def refuse_global(name: str, pickle_obj: Any, flagged: str, attack: str, *, kind: str = "zip",
                  error: str = "UnpicklingError") -> None:
    """A file whose pickle names ``flagged``: load refuses it, scan reports it."""
    if kind == "zip":
        data = ckpt({"w": tensor(), "x": pickle_obj})
    else:
        data = legacy_stream({"w": tensor(legacy_pid()), "x": pickle_obj})
    add(name, kind, data, attack, f"refuse ({error}); scan reports {flagged} as refused",
        error=error, scan="ok", scan_flags=[flagged])


def build_cases(with_torch: bool = True) -> None:
    CASES.clear()
    base_value = {"w": w_value()}

    # -- controls ---------------------------------------------------------------------
    group("Controls (well-formed files: the corpus tools produce valid checkpoints)")
    add("ok_handmade", "zip", ckpt({"w": tensor()}), "none: a valid checkpoint built by build.py",
        "load it", load="ok", value=base_value)
    add("ok_handmade_legacy", "legacy", legacy_stream({"w": tensor(legacy_pid())}),
        "none: a valid pre-1.6 stream checkpoint built by build.py", "load it", load="ok", value=base_value)
    add("ok_handmade_tar", "tar", tar_checkpoint(), "none: a valid 0.1-0.3 tar checkpoint built by build.py",
        "load it", load="ok", value=base_value)
    add("ok_state_dict_metadata", "zip",
        ckpt(B(od(("w", tensor())), {"_metadata": od(("", {"version": 1}))})),
        "none: an OrderedDict with _metadata set by BUILD, as every torch state_dict has",
        "load it (the attribute is set)", load="ok",
        value=_with_attrs(od_value(("w", w_value())), _metadata=od_value(("", {"version": 1}))))
    if with_torch:
        _torch_controls()
    _round_two_cases()
    _reader_cases()

    # -- GLOBAL / STACK_GLOBAL of code-running callables ---------------------------------
    group("GLOBAL and STACK_GLOBAL of callables that run code or reach the system")
    c = canary
    refuse_global("g_os_system", R(G("os", "system"), (f"touch {c('g_os_system')}",)), "os.system",
                  "GLOBAL os.system + REDUCE (the classic pickle RCE)")
    refuse_global("g_posix_system", R(G("posix", "system"), (f"touch {c('g_posix_system')}",)), "posix.system",
                  "GLOBAL posix.system (what os.system pickles as on Linux)")
    refuse_global("g_nt_system", R(G("nt", "system"), (f"echo > {c('g_nt_system')}",)), "nt.system",
                  "GLOBAL nt.system (os.system on Windows)")
    refuse_global("g_subprocess_popen", R(G("subprocess", "Popen"), (["touch", c("g_subprocess_popen")],)),
                  "subprocess.Popen", "GLOBAL subprocess.Popen")
    refuse_global("g_subprocess_check_output",
                  R(G("subprocess", "check_output"), (["touch", c("g_subprocess_check_output")],)),
                  "subprocess.check_output", "GLOBAL subprocess.check_output")
    code = f"open({c('g_builtins_eval')!r}, 'w').close()"
    refuse_global("g_builtins_eval", R(G("builtins", "eval"), (code,)), "builtins.eval", "GLOBAL builtins.eval")
    code = f"open({c('g_builtins_exec')!r}, 'w').close()"
    refuse_global("g_builtins_exec", R(G("builtins", "exec"), (code,)), "builtins.exec", "GLOBAL builtins.exec")
    code = f"open({c('g_py2_builtin_eval')!r}, 'w').close()"
    refuse_global("g_py2_builtin_eval", R(G("__builtin__", "eval"), (code,)), "builtins.eval",
                  "GLOBAL __builtin__.eval (the Python 2 name, translated to builtins.eval)")
    refuse_global("g_builtins_compile", R(G("builtins", "compile"), ("1", "<x>", "eval")), "builtins.compile",
                  "GLOBAL builtins.compile")
    refuse_global("g_builtins_import", R(G("builtins", "__import__"), ("os",)), "builtins.__import__",
                  "GLOBAL builtins.__import__('os')")
    refuse_global("g_builtins_open", R(G("builtins", "open"), (c("g_builtins_open"), "w")), "builtins.open",
                  "GLOBAL builtins.open(canary, 'w') (creates a file)")
    refuse_global("g_io_open", R(G("io", "open"), (c("g_io_open"), "w")), "io.open", "GLOBAL io.open(canary, 'w')")
    refuse_global("g_builtins_getattr_globals",
                  R(G("builtins", "getattr"), (G("torch._utils", "_rebuild_tensor_v2"), "__globals__")),
                  "torch._utils._rebuild_tensor_v2.__globals__",
                  "builtins.getattr(<allowlisted rebuild function>, '__globals__') to reach a module's globals",
                  error="UnpicklingError")
    refuse_global("g_builtins_getattr_method",
                  R(R(G("builtins", "getattr"), (G("collections", "OrderedDict"), "fromkeys")), ([1],)),
                  "collections.OrderedDict.fromkeys",
                  "builtins.getattr(collections.OrderedDict, 'fromkeys') then a call (scan reports what "
                  "getattr fetches, decided like a global)")
    refuse_global("g_builtins_setattr", R(G("builtins", "setattr"), (G("collections", "OrderedDict"), "x", 1)),
                  "builtins.setattr", "GLOBAL builtins.setattr on an allowlisted class")
    refuse_global("g_builtins_type", R(G("builtins", "type"), ("X", (), {})), "builtins.type",
                  "GLOBAL builtins.type (creating classes)")
    refuse_global("g_importlib_import_module", R(G("importlib", "import_module"), (CANARY_MODULE,)),
                  "importlib.import_module", f"importlib.import_module({CANARY_MODULE!r}) (an import)")
    inner = emit(R(G("os", "system"), (f"touch {c('g_pickle_loads')}",)))
    refuse_global("g_pickle_loads", R(G("pickle", "loads"), (inner,)), "pickle.loads",
                  "pickle.loads of an inner pickle that runs os.system (escape to the full unpickler)")
    inner = emit(R(G("os", "system"), (f"touch {c('g__pickle_loads')}",)))
    refuse_global("g__pickle_loads", R(G("_pickle", "loads"), (inner,)), "_pickle.loads",
                  "_pickle.loads of an inner pickle")
    refuse_global("g_runpy_run_path", R(G("runpy", "run_path"), (c("g_runpy_run_path") + ".py",)), "runpy.run_path",
                  "runpy.run_path (runs a file)")
    refuse_global("g_shutil_rmtree", R(G("shutil", "rmtree"), (c("g_shutil_rmtree"),)), "shutil.rmtree",
                  "shutil.rmtree (deletes a tree)")
    refuse_global("g_webbrowser_open", R(G("webbrowser", "open"), ("file://" + c("g_webbrowser_open"),)),
                  "webbrowser.open", "webbrowser.open")
    refuse_global("g_ctypes_cdll", R(G("ctypes", "CDLL"), ("libc.so.6",)), "ctypes.CDLL", "ctypes.CDLL (native code)")
    refuse_global("g_operator_attrgetter",
                  R(R(G("operator", "attrgetter"), ("__globals__",)), (G("torch._utils", "_rebuild_tensor_v2"),)),
                  "operator.attrgetter", "operator.attrgetter('__globals__') applied to an allowed function")
    refuse_global("g_functools_partial", R(G("functools", "partial"), (G("os", "system"),)), "functools.partial",
                  "functools.partial wrapping os.system", error="UnpicklingError")
    refuse_global("g_copyreg_reconstructor",
                  R(G("copyreg", "_reconstructor"), (G("collections", "OrderedDict"), G("builtins", "dict"), None)),
                  "copyreg._reconstructor", "copyreg._reconstructor (object.__new__ of any class)")
    refuse_global("g_sys_modules", R(G("sys", "exit"), (3,)), "sys.exit", "GLOBAL sys.exit (a blocked module)")
    refuse_global("g_builtins_exit", R(G("builtins", "exit"), (3,)), "builtins.exit", "GLOBAL builtins.exit")
    # nbckpt's own internals
    refuse_global("g_nbckpt_api_load", R(G("nbckpt.api", "load"), (c("g_nbckpt_api_load"),)), "nbckpt.api.load",
                  "GLOBAL nbckpt.api.load (load another file, weights_only=False by keyword)")
    refuse_global("g_nbckpt_add_safe_globals",
                  R(G("nbckpt.pickling.allowlist", "add_safe_globals"), ([("x", "posix.system")],)),
                  "nbckpt.pickling.allowlist.add_safe_globals",
                  "nbckpt.pickling.allowlist.add_safe_globals (widen the allowlist from inside the file)")
    refuse_global("g_nbckpt_add_safe_globals_toplevel",
                  R(G("nbckpt", "add_safe_globals"), ([("x", "posix.system")],)), "nbckpt.add_safe_globals",
                  "nbckpt.add_safe_globals (the public name)")
    refuse_global("g_nbckpt_unpickler",
                  R(G("nbckpt.pickling.unpickler", "FullUnpickler"), (b"", None)),
                  "nbckpt.pickling.unpickler.FullUnpickler", "nbckpt's unrestricted unpickler")
    # torch internals not in the allowlist
    refuse_global("g_torch_load", R(G("torch", "load"), (c("g_torch_load"),)), "torch.load",
                  "GLOBAL torch.load (weights_only=False by argument)")
    refuse_global("g_torch_serialization_load", R(G("torch.serialization", "load"), (c("g_torch_serialization_load"),)),
                  "torch.serialization.load", "GLOBAL torch.serialization.load")
    refuse_global("g_torch_jit_load", R(G("torch.jit", "load"), (c("g_torch_jit_load"),)), "torch.jit.load",
                  "GLOBAL torch.jit.load (TorchScript runs code)")
    refuse_global("g_torch_storage_load_from_bytes",
                  R(G("torch.storage", "_load_from_bytes"), (b"\x80\x02N.",)), "torch.storage._load_from_bytes",
                  "torch.storage._load_from_bytes (calls torch.load with weights_only=False)")
    refuse_global("g_torch_c_nn", R(G("torch._C", "_nn"), ()), "torch._C._nn", "GLOBAL torch._C._nn (native module)")
    refuse_global("g_torch_hub_load", R(G("torch.hub", "load"), ("evil/repo", "model")), "torch.hub.load",
                  "torch.hub.load (downloads and runs code)")
    refuse_global("g_torch_module_class", NO(G("torch.nn.modules.linear", "Linear"), ()),
                  "torch.nn.modules.linear.Linear", "a pickled torch.nn.Module class (NEWOBJ)")
    refuse_global("g_torch_ops", R(G("torch._ops", "ops"), ()), "torch._ops.ops", "torch._ops.ops (operator registry)")
    # numpy functions
    refuse_global("g_numpy_load", R(G("numpy", "load"), (c("g_numpy_load"),)), "numpy.load",
                  "GLOBAL numpy.load (reads a file, may unpickle)")
    refuse_global("g_numpy_frombuffer", R(G("numpy", "frombuffer"), (b"\0" * 8,)), "numpy.frombuffer",
                  "GLOBAL numpy.frombuffer (not allowlisted)")
    refuse_global("g_numpy_fromfile", R(G("numpy", "fromfile"), ("/etc/hostname",)), "numpy.fromfile",
                  "GLOBAL numpy.fromfile")
    refuse_global("g_numpy_runstring",
                  R(G("numpy.testing._private.utils", "runstring"),
                    (f"open({c('g_numpy_runstring')!r}, 'w').close()", {})),
                  "numpy.testing._private.utils.runstring", "numpy's runstring (exec in disguise)")
    refuse_global("g_numpy_ctypeslib", R(G("numpy.ctypeslib", "load_library"), ("libc", "/lib")),
                  "numpy.ctypeslib.load_library", "numpy.ctypeslib.load_library (native code)")
    refuse_global("g_numpy_reconstruct_masked",
                  R(G("numpy._core.multiarray", "_reconstruct"), (G("numpy.ma.core", "MaskedArray"), (0,), b"b")),
                  "numpy.ma.core.MaskedArray", "numpy _reconstruct of a class other than ndarray")
    # STACK_GLOBAL
    refuse_global("sg_os_system", R(SG("os", "system"), (f"touch {c('sg_os_system')}",)), "os.system",
                  "STACK_GLOBAL os.system")
    refuse_global("sg_builtins_eval", R(SG("builtins", "eval"), (f"open({c('sg_builtins_eval')!r},'w')",)),
                  "builtins.eval", "STACK_GLOBAL builtins.eval")
    refuse_global("sg_subprocess_popen", R(SG("subprocess", "Popen"), (["touch", c("sg_subprocess_popen")],)),
                  "subprocess.Popen", "STACK_GLOBAL subprocess.Popen")
    refuse_global("sg_torch_load", R(SG("torch", "load"), (c("sg_torch_load"),)), "torch.load",
                  "STACK_GLOBAL torch.load")
    memo = Raw(_str("posix") + b"q\x10" + b"0" + _str("system") + b"q\x11" + b"0" + b"h\x10h\x11\x93")
    refuse_global("sg_via_memo", R(memo, (f"touch {c('sg_via_memo')}",)), "posix.system",
                  "STACK_GLOBAL whose strings come back from the memo (BINPUT, POP, BINGET): defeats naive scanners")
    decoy = Raw(_str("os") + _str("system") + _str("decoy") + b"0" + b"\x93")
    refuse_global("sg_pop_decoy", R(decoy, (f"touch {c('sg_pop_decoy')}",)), "os.system",
                  "STACK_GLOBAL after a decoy string is pushed and POPped (a scanner that tracks the last "
                  "two strings names the wrong global)")
    short = Raw(b"\x8c\x02os" + b"\x8c\x06system" + b"\x93")
    refuse_global("sg_short_binunicode", R(short, (f"touch {c('sg_short_binunicode')}",)), "os.system",
                  "STACK_GLOBAL with SHORT_BINUNICODE strings (protocol 4)")
    py2 = Raw(b"U\x02os" + b"U\x06system" + b"\x93")
    refuse_global("sg_binstring", R(py2, (f"touch {c('sg_binstring')}",)), "os.system",
                  "STACK_GLOBAL whose strings are Python 2 str (SHORT_BINSTRING, decoded to str by the "
                  "default encoding): scanners that only track unicode strings miss it")
    refuse_global("legacy_g_os_system", R(G("os", "system"), (f"touch {c('legacy_g_os_system')}",)), "os.system",
                  "GLOBAL os.system in a pre-1.6 stream checkpoint", kind="legacy")

    # -- opcodes that import or call ----------------------------------------------------------
    group("Opcodes that import or call by other means, and protocol 4/5 opcodes")
    op = canary
    inst = Raw(b"(" + _str(f"touch {op('op_inst_os_system')}") + b"ios\nsystem\n")
    add("op_inst_os_system", "zip", ckpt({"w": tensor(), "x": inst}),
        "INST os system (protocol 0: imports and calls in one opcode)", "refuse (UnpicklingError); scan "
        "reports os.system", error="UnpicklingError", scan="ok", scan_flags=["os.system"])
    inst_ok = Raw(b"(icollections\nOrderedDict\n")
    add("op_inst_allowed_class", "zip", ckpt({"w": tensor(), "x": inst_ok}),
        "INST of an allowlisted class (the opcode itself must be refused)", "refuse (UnpicklingError)",
        error="UnpicklingError")
    add("op_obj_allowed_class", "zip", ckpt({"w": tensor(), "x": Raw(b"(ccollections\nOrderedDict\no")}),
        "OBJ on an allowlisted class", "refuse (UnpicklingError)", error="UnpicklingError")
    add("op_obj_os_system", "zip",
        ckpt({"w": tensor(), "x": Raw(b"(cos\nsystem\n" + _str(f"touch {op('op_obj_os_system')}") + b"o")}),
        "OBJ calling os.system", "refuse (UnpicklingError)", error="UnpicklingError", scan="ok",
        scan_flags=["os.system"])
    add("op_newobj_ordereddict", "zip", ckpt({"w": tensor(), "x": NO(G("collections", "OrderedDict"), ())}),
        "NEWOBJ on an allowlisted callable that is not an allowed class", "refuse (UnpicklingError)",
        error="UnpicklingError")
    add("op_newobj_storage_class", "zip", ckpt({"w": tensor(), "x": NO(G("torch", "FloatStorage"), (6,))}),
        "NEWOBJ on a storage class (torch would allocate a storage)", "refuse (UnpicklingError)",
        error="UnpicklingError")
    add("op_newobj_set", "zip", ckpt({"w": tensor(), "x": NO(G("builtins", "set"), ())}),
        "NEWOBJ on builtins.set (allowlisted for REDUCE only)", "refuse (UnpicklingError)", error="UnpicklingError")
    add("op_newobj_ex", "zip",
        ckpt({"w": tensor(), "x": Raw(b"ccollections\nOrderedDict\n)}\x92")}),
        "NEWOBJ_EX (calls a class with keyword arguments)", "refuse (UnpicklingError)", error="UnpicklingError")
    for ext, raw in (("ext1", b"\x82\x01"), ("ext2", b"\x83\x01\x00"), ("ext4", b"\x84\x01\x00\x00\x00")):
        add(f"op_{ext}", "zip", ckpt({"w": tensor(), "x": Raw(raw)}),
            f"{ext.upper()} (imports through the copyreg extension registry)", "refuse (UnpicklingError)",
            error="UnpicklingError")
    add("op_persid_text", "zip", ckpt({"w": tensor(), "x": Raw(b"P0\n")}),
        "PERSID (text persistent id)", "refuse (UnpicklingError)", error="UnpicklingError")
    add("op_text_protocol", "zip", ckpt(None, pkl=b"(lp0\nI1\naI2\na."),
        "a protocol-0 text pickle (LIST, INT, PUT, APPEND)", "refuse (UnpicklingError)", error="UnpicklingError")
    add("op_unknown_byte", "zip", ckpt({"w": tensor(), "x": Raw(b"\xff")}),
        "a byte that is no pickle opcode", "refuse (FormatError)", error="FormatError")
    add("op_bytearray8", "zip",
        ckpt({"w": tensor(), "x": Raw(b"\x96" + struct.pack("<Q", 2**40))}),
        "BYTEARRAY8 claiming 2**40 bytes (protocol 5)", "refuse, allocate nothing", bomb=True)
    add("op_next_buffer", "zip", ckpt({"w": tensor(), "x": Raw(b"\x97")}),
        "NEXT_BUFFER (out-of-band buffer, protocol 5)", "refuse (UnpicklingError)", error="UnpicklingError")
    add("op_readonly_buffer", "zip", ckpt({"w": tensor(), "x": Raw(b"\x80\x05\x8c\x01a\x97\x98")}),
        "READONLY_BUFFER after NEXT_BUFFER", "refuse (UnpicklingError)", error="UnpicklingError")
    frame = emit({"w": tensor()})
    framed = b"\x80\x04\x95" + struct.pack("<Q", 2**62) + frame[2:]
    add("op_frame_lie", "zip", ckpt(None, pkl=framed),
        "protocol 4 FRAME whose length (2**62) is a lie", "load it (the length is a hint) or refuse; allocate "
        "nothing", load="ok_or_error", value=base_value, bomb=True)
    framed = b"\x80\x04\x95" + struct.pack("<Q", 3) + frame[2:]
    add("op_frame_short", "zip", ckpt(None, pkl=framed),
        "protocol 4 FRAME shorter than the opcodes it holds", "load it or refuse", load="ok_or_error",
        value=base_value)
    add("op_proto_99", "zip", ckpt(None, pkl=b"\x80\x63N."), "PROTO 99", "refuse (FormatError)")

    # -- opcodes applied to the wrong targets ---------------------------------------------------
    group("REDUCE / BUILD / SETITEM(S) / APPEND(S) on objects they must not touch")
    add("setitem_on_array", "zip", ckpt({"w": Seq((tensor(), Raw(b"K\x00K\x07s")))}),
        "SETITEM on a rebuilt array (CVE-2026-24747: tensor.__setitem__ during load)",
        "refuse (UnpicklingError)", error="UnpicklingError")
    add("setitems_on_array", "zip", ckpt({"w": Seq((tensor(), Raw(b"(K\x00K\x07K\x01K\x08u")))}),
        "SETITEMS on a rebuilt array", "refuse (UnpicklingError)", error="UnpicklingError")
    add("setitem_on_list", "zip", ckpt({"w": Seq(([1, 2], Raw(b"K\x00K\x07s")))}),
        "SETITEM on a list", "refuse (UnpicklingError)", error="UnpicklingError")
    add("setitem_on_storage_class", "zip", ckpt({"w": Seq((G("torch", "FloatStorage"), Raw(b"K\x00K\x07s")))}),
        "SETITEM on a global (a storage class object)", "refuse (UnpicklingError)", error="UnpicklingError")
    add("append_on_dict", "zip", ckpt({"w": Seq(({}, Raw(b"K\x01a")))}),
        "APPEND on a dict", "refuse (UnpicklingError)", error="UnpicklingError")
    add("appends_on_array", "zip", ckpt({"w": Seq((tensor(), Raw(b"(K\x01K\x02e")))}),
        "APPENDS on a rebuilt array", "refuse (UnpicklingError)", error="UnpicklingError")
    add("append_on_tuple", "zip", ckpt({"w": Seq(((1, 2), Raw(b"K\x01a")))}),
        "APPEND on a tuple", "refuse (UnpicklingError)", error="UnpicklingError")
    add("additems_on_list", "zip", ckpt({"w": Seq(([], Raw(b"(K\x01\x90")))}),
        "ADDITEMS on a list", "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_on_array", "zip",
        ckpt({"w": B(tensor(), (storage_pid(), 0, (100,), (1,)))}),
        "BUILD on a rebuilt array with set_-style state (storage, offset, size, stride): torch #147867",
        "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_on_array_setstate", "zip",
        ckpt({"w": B(tensor(), (1, (1000,), G("torch", "float32"), False, b"\0" * 16))}),
        "BUILD on a rebuilt array with an ndarray.__setstate__ state (reshape it over too little data)",
        "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_twice_numpy", "zip",
        ckpt({"w": B(B(R(G("numpy._core.multiarray", "_reconstruct"), (G("numpy", "ndarray"), (0,), b"b")),
                       (1, (2,), np_dtype("f4"), False, b"\0" * 8)),
                     (1, (100,), np_dtype("f4"), False, b"\0" * 8))}),
        "a numpy array BUILT twice (the second BUILD is __setstate__ on a finished array)",
        "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_on_list", "zip", ckpt({"w": B([1], {"x": 1})}), "BUILD on a list",
        "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_on_storage_class", "zip", ckpt({"w": B(G("torch", "FloatStorage"), {"dtype": 1})}),
        "BUILD on a global object (a storage class: change its dtype for later storages)",
        "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_on_rebuild_function", "zip",
        ckpt({"w": B(G("torch._utils", "_rebuild_tensor_v2"), {"__code__": 1})}),
        "BUILD on an allowlisted function", "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_od_class", "zip", ckpt({"w": B(od(), {"__class__": G("collections", "Counter")})}),
        "BUILD on an OrderedDict with a __class__ key", "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_od_dict", "zip", ckpt({"w": B(od(), {"__dict__": {"a": 1}})}),
        "BUILD on an OrderedDict with a __dict__ key", "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_od_setstate", "zip", ckpt({"w": B(od(), {"__setstate__": G("collections", "OrderedDict")})}),
        "BUILD that installs __setstate__ on an OrderedDict (a __setstate__ trick for a later BUILD)",
        "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_od_reduce_ex", "zip", ckpt({"w": B(od(), {"__reduce_ex__": 1, "__getattr__": 1})}),
        "BUILD that sets dunder hooks (__reduce_ex__, __getattr__) on an OrderedDict (torch PR #195615)",
        "refuse (UnpicklingError)", error="UnpicklingError")
    add("build_od_nonstr_key", "zip", ckpt({"w": B(od(), {1: 2})}),
        "BUILD on an OrderedDict with a non-string attribute name", "refuse (nbckpt error)")
    add("build_od_shadow_items", "zip", ckpt(B(od(("w", tensor())), {"items": 0, "keys": 0, "values": 0})),
        "BUILD on a state dict that shadows its methods (items, keys, values) with ints",
        "load it as torch does (the attributes are set) or refuse; nbckpt.open must not crash on it",
        load="ok_or_error", value=_with_attrs(od_value(("w", w_value())), items=0, keys=0, values=0))
    add("reduce_storage_class", "zip", ckpt({"w": R(G("torch", "FloatStorage"), (2**40,))}),
        "REDUCE of a storage class (torch.FloatStorage(2**40) would allocate 4 TiB)",
        "refuse (UnpicklingError), allocate nothing", error="UnpicklingError", bomb=True)
    add("reduce_dtype", "zip", ckpt({"w": R(G("torch", "float32"), ())}),
        "REDUCE of a dtype value", "refuse (UnpicklingError)", error="UnpicklingError")
    add("reduce_layout_marker", "zip", ckpt({"w": R(G("torch", "sparse_coo"), ())}),
        "REDUCE of a layout marker", "refuse (UnpicklingError)", error="UnpicklingError")
    add("reduce_bytearray_huge", "zip", ckpt({"w": R(G("builtins", "bytearray"), (10**12,))}),
        "bytearray(10**12): an allowed function asked for a terabyte", "refuse, allocate nothing", bomb=True)
    add("reduce_bytearray_iterable", "zip", ckpt({"w": R(G("builtins", "bytearray"), ([1, 2, 3],))}),
        "bytearray(list)", "refuse")
    add("reduce_bytearray_codec", "zip", ckpt({"w": R(G("builtins", "bytearray"), ("x", "utf-16"))}),
        "bytearray(str, 'utf-16') (an encoding torch never writes)", "refuse")
    add("reduce_complex_string", "zip", ckpt({"w": R(G("builtins", "complex"), ("1e99999",))}),
        "complex('1e99999') (a string argument)", "refuse")
    add("reduce_complex_huge_int", "zip", ckpt({"w": R(G("builtins", "complex"), (10**400, 1))}),
        "complex(10**400) (an int too large for a float)", "refuse (FormatError)", error="FormatError")
    add("reduce_codecs_zlib", "zip", ckpt({"w": R(G("_codecs", "encode"), (b"x" * 10, "zlib"))}),
        "_codecs.encode(bytes, 'zlib') (a codec that is not text)", "refuse")
    add("reduce_codecs_bz2", "zip", ckpt({"w": R(G("_codecs", "encode"), ("x", "bz2_codec"))}),
        "_codecs.encode(str, 'bz2_codec')", "refuse")
    add("reduce_set_unhashable", "zip", ckpt({"w": R(G("builtins", "set"), ([[1]],))}),
        "set() of an unhashable item", "refuse (FormatError)", error="FormatError")
    add("reduce_slice_huge", "zip", ckpt({"w": R(G("builtins", "slice"), (0, 10**30, "x"))}),
        "slice() with a string step", "refuse")
    add("reduce_from_type_v2_getattr", "zip",
        ckpt({"w": R(G("torch._tensor", "_rebuild_from_type_v2"),
                     (G("builtins", "getattr"), G("torch", "Tensor"), (G("torch._utils", "_rebuild_tensor_v2"),
                                                                        "__globals__"), {}))}),
        "_rebuild_from_type_v2 asked to call getattr (a callable that is not a rebuild function)",
        "refuse (UnpicklingError); scan reports builtins.getattr as restricted (allowed only for nested "
        "classes): the VM refuses it here", error="UnpicklingError", scan="ok")
    add("reduce_from_type_v2_state", "zip",
        ckpt({"w": R(G("torch._tensor", "_rebuild_from_type_v2"),
                     (G("torch._utils", "_rebuild_tensor_v2"), G("torch", "Tensor"),
                      tensor().args, {"__class__": G("collections", "OrderedDict")}))}),
        "_rebuild_from_type_v2 with a hostile state dict (__class__)", "load the plain array (the state is "
        "dropped) or refuse", load="ok_or_error", value=base_value)
    add("reduce_qtensor", "zip", ckpt({"w": R(G("torch._utils", "_rebuild_qtensor"), (storage_pid(), 0, (2,), (1,)))}),
        "_rebuild_qtensor (quantized tensors: torch #184652 unchecked strides)", "refuse (UnpicklingError)",
        error="UnpicklingError")
    add("reduce_device_long", "zip", ckpt({"w": R(G("torch", "device"), ("cuda" * 10000, 0))}),
        "torch.device with a 40 kB type string", "refuse (FormatError)", error="FormatError")
    add("reduce_size_huge", "zip", ckpt({"w": R(G("torch", "Size"), ([2**64, -1],))}),
        "torch.Size with an element of 2**64 and a negative one", "refuse (FormatError)", error="FormatError")
    add("reduce_legacy_tensor_args", "zip", ckpt({"w": R(G("torch", "Tensor"), (1, 2, 3))}),
        "torch.Tensor(1, 2, 3) (a constructor call with arguments)", "refuse (FormatError)", error="FormatError")
    add("unfinished_legacy_tensor", "zip", ckpt({"w": R(G("torch", "Tensor"), ())}),
        "torch.Tensor() never completed by BUILD (torch PR #194647: objects left uninitialised)",
        "refuse (FormatError)", error="FormatError")
    alias = Raw(b"\x80\x02}q\x00" + emit(R(G("numpy._core.multiarray", "_reconstruct"),
                                           (G("numpy", "ndarray"), (0,), b"b")), proto=False, stop=False)
                + b"q\x01" + b"0"  # memo 1 = the unfinished array; POP it
                + _str("early") + b"h\x01" + b"s"  # dict['early'] = unfinished array
                + b"h\x01" + emit((1, (2,), np_dtype("f4"), False, b"\0" * 8),
                                  proto=False, stop=False)
                + b"b" + b"0" + b".")
    add("pending_alias", "zip", ckpt(None, pkl=alias.data),
        "a numpy array referenced (from the memo) before its BUILD completes it",
        "refuse, or load without leaking nbckpt's internal placeholder objects", load="ok_or_error",
        value={"early": np.zeros(2, np.float32)})
    add("numpy_object_array", "zip",
        ckpt({"w": B(R(G("numpy._core.multiarray", "_reconstruct"), (G("numpy", "ndarray"), (0,), b"b")),
                     (1, (1,), np_dtype("O", "|"), False, [R(G("os", "system"), ("true",))]))}),
        "a numpy object array whose items would be unpickled objects", "refuse (UnpicklingError)",
        error="UnpicklingError", scan="ok", scan_flags=["os.system"])
    add("numpy_dtype_object", "zip", ckpt({"w": np_dtype("O", "|")}),
        "numpy.dtype('O') (object dtype)", "refuse (UnpicklingError)", error="UnpicklingError")
    add("numpy_dtype_void", "zip", ckpt({"w": np_dtype("V8", "|")}),
        "numpy.dtype('V8') (void dtype)", "refuse (UnpicklingError)", error="UnpicklingError")
    add("numpy_array_shape_lie", "zip",
        ckpt({"w": B(R(G("numpy._core.multiarray", "_reconstruct"), (G("numpy", "ndarray"), (0,), b"b")),
                     (1, (2**40,), np_dtype("f4"), False, b"\0" * 8))}),
        "a numpy array state declaring 2**40 elements over 8 bytes", "refuse, allocate nothing",
        error="FormatError", bomb=True)

    # -- persistent ids and storages -------------------------------------------------------
    group("Persistent ids of the wrong shape, storage keys and numel that lie")
    def pid_case(name, pid, attack, must, *, error="CheckpointError", storages=None, **kw):
        add(name, "zip", ckpt({"w": tensor(pid)}, storages), attack, must, error=error, **kw)

    pid_case("pid_int", PID(0), "an int persistent id", "refuse (UnpicklingError)", error="UnpicklingError")
    pid_case("pid_str", PID("0"), "a str persistent id (the tar format's form, in a zip)", "refuse (UnpicklingError)",
             error="UnpicklingError")
    pid_case("pid_list", PID(["storage", G("torch", "FloatStorage"), "0", "cpu", 6]), "a list persistent id",
             "refuse (UnpicklingError)", error="UnpicklingError")
    pid_case("pid_4tuple", PID(("storage", G("torch", "FloatStorage"), "0", "cpu")), "a 4-tuple persistent id",
             "refuse (FormatError)", error="FormatError")
    pid_case("pid_6tuple", PID(("storage", G("torch", "FloatStorage"), "0", "cpu", 6, None)),
             "a 6-tuple (legacy) persistent id in a zip file", "refuse (FormatError)", error="FormatError")
    pid_case("pid_module", PID(("module", G("collections", "OrderedDict"), "x.py", "import os")),
             "a 'module' persistent id in a zip file", "refuse (UnpicklingError)", error="UnpicklingError")
    pid_case("pid_typename_int", PID((1, G("torch", "FloatStorage"), "0", "cpu", 6)),
             "a persistent id whose typename is an int", "refuse (UnpicklingError)", error="UnpicklingError")
    pid_case("key_dotdot", storage_pid("../x"), "storage key '../x' (no such record)", "refuse (FormatError)",
             error="FormatError")
    add("key_dotdot_record", "zip",
        bytes(zip_build(ckpt_records(emit({"w": tensor(storage_pid("../../x"))}), {"../../x": W_BYTES})).data),
        "storage key '../../x' with a record 'archive/data/../../x'",
        "load it: keys are record names, nothing touches the file system", load="ok", value=base_value)
    pid_case("key_absolute", storage_pid("/etc/passwd"), "storage key '/etc/passwd'", "refuse (FormatError)",
             error="FormatError")
    pid_case("key_nul", storage_pid("0\x00"), "storage key with a NUL byte", "refuse (FormatError)",
             error="FormatError")
    pid_case("key_missing", storage_pid("7"), "storage key with no record", "refuse (FormatError)", error="FormatError")
    pid_case("key_int", storage_pid(0), "storage key that is an int", "refuse (FormatError)", error="FormatError")
    pid_case("key_huge", storage_pid("9" * 100000), "a 100 kB storage key", "refuse (FormatError)",
             error="FormatError")
    pid_case("numel_negative", storage_pid("0", -1), "numel -1", "refuse (FormatError)", error="FormatError")
    pid_case("numel_huge", storage_pid("0", 2**62), "numel 2**62 over a 24-byte record",
             "refuse (FormatError), allocate nothing", error="FormatError", bomb=True)
    pid_case("numel_huge_untyped", storage_pid("0", 2**63 + 5, cls=G("torch.storage", "UntypedStorage")),
             "numel 2**63+5 bytes (UntypedStorage)", "refuse (FormatError), allocate nothing", error="FormatError",
             bomb=True)
    pid_case("numel_larger", storage_pid("0", 100), "numel 100 over a 24-byte record (read past the record)",
             "refuse (FormatError)", error="FormatError")
    pid_case("numel_smaller", storage_pid("0", 2), "numel 2 over a 24-byte record", "refuse (FormatError)",
             error="FormatError")
    pid_case("numel_float", storage_pid("0", 6.0), "numel 6.0 (a float)", "refuse (FormatError)", error="FormatError")
    add("key_two_dtypes", "zip",
        ckpt({"a": tensor(storage_pid("0", 6)), "b": tensor(storage_pid("0", 3, cls="DoubleStorage"), 0, (3,), (1,))}),
        "one key referenced as 6 x float32 and as 3 x float64", "refuse (FormatError)", error="FormatError")
    add("key_two_numels", "zip",
        ckpt({"a": tensor(storage_pid("0", 6)), "b": tensor(storage_pid("0", 3), 0, (3,), (1,))}),
        "one key referenced with numel 6 and numel 3", "refuse (FormatError)", error="FormatError")
    add("key_two_numels_bigger_second", "zip",
        ckpt({"a": tensor(storage_pid("0", 2), 0, (2,), (1,)), "b": tensor(storage_pid("0", 6))},
             {"0": W_BYTES[:8]}),
        "one key: numel 2 (matches the record) then numel 6 with a view needing 6",
        "refuse (FormatError)", error="FormatError")
    pid_case("storage_evil_class", storage_pid(cls="EvilStorage"), "GLOBAL torch.EvilStorage as storage class",
             "refuse (UnpicklingError); scan reports torch.EvilStorage", error="UnpicklingError", scan="ok",
             scan_flags=["torch.EvilStorage"])
    pid_case("storage_class_dtype", storage_pid(cls=G("torch", "float32")), "a dtype where a storage class goes",
             "refuse (FormatError)", error="FormatError")
    pid_case("storage_class_string", storage_pid(cls="FloatStorage\x00"), "storage class name with a NUL",
             "refuse (UnpicklingError)", error="UnpicklingError")
    pid_case("location_unknown", storage_pid(location="evil:0"), "an unknown device tag",
             "refuse (DeviceError)", error="DeviceError", verify="either")
    pid_case("location_not_str", storage_pid(location=5), "a device tag that is an int", "refuse (FormatError)",
             error="FormatError")
    pid_case("location_cuda_huge", storage_pid(location="cuda:99999999999999999999"),
             "a CUDA device index beyond any machine", "refuse (DeviceError)", error="DeviceError", verify="either")

    # -- views ----------------------------------------------------------------------------------
    group("Array views outside their storage")
    def view_case(name, attack, must, *, error="FormatError", **kw):
        load = kw.pop("load", "error")
        value = kw.pop("value", None)
        verify = kw.pop("verify", None)
        add(name, "zip", ckpt({"w": tensor(**kw)}), attack, must, error=error, load=load, value=value,
            verify=verify)

    view_case("view_offset_past_end", "storage offset 100 of 6", "refuse (FormatError)", offset=100, size=(1,),
              stride=(1,))
    view_case("view_size_past_end", "size 100 over 6 elements", "refuse (FormatError)", size=(100,), stride=(1,))
    view_case("view_stride_past_end", "stride 1000 on a size-2 dimension", "refuse (FormatError)", size=(2,),
              stride=(1000,))
    view_case("view_negative_stride", "stride -1", "refuse (FormatError)", offset=5, size=(6,), stride=(-1,))
    view_case("view_negative_offset", "offset -1", "refuse (FormatError)", offset=-1, size=(1,), stride=(1,))
    view_case("view_negative_size", "size -1", "refuse (FormatError)", size=(-1,), stride=(1,))
    view_case("view_overflow_64", "size and stride whose product overflows 64 bits (2**62 x 2**62)",
              "refuse (FormatError)", size=(2**62, 4), stride=(2**62, 1))
    view_case("view_overflow_wrap", "offset + extent that wraps to a small number modulo 2**64",
              "refuse (FormatError)", offset=2**64 - 8, size=(2,), stride=(4,))
    view_case("view_size_product_overflow", "size (2**32, 2**32) stride (0, 0): 2**64 elements",
              "refuse (FormatError)", size=(2**32, 2**32), stride=(0, 0), verify="either")
    view_case("view_rank_65", "65 dimensions", "refuse (FormatError)", size=(1,) * 65, stride=(1,) * 65)
    view_case("view_rank_mismatch", "size of rank 2 with stride of rank 1", "refuse (FormatError)", size=(2, 3),
              stride=(1,))
    view_case("view_size_float", "a float size", "refuse (FormatError)", size=(2.0,), stride=(1,))
    view_case("view_size_not_tuple", "a str size", "refuse (FormatError)", size="ab", stride=(1,))
    view_case("view_zero_size_huge_stride", "size (0,) with stride 2**62 and offset 2**62",
              "load an empty array (nothing is read) or refuse", load="ok_or_error", offset=2**62, size=(0,),
              stride=(2**62,), value={"w": np.zeros(0, np.float32)})
    view_case("view_zero_size_huge_dims", "size (0, 2**62): empty but not representable",
              "refuse (FormatError)", size=(0, 2**62), stride=(1, 1))
    view_case("view_stride_zero_huge", "size 2**40 with stride 0 over 6 elements (a 4 TiB broadcast view)",
              "load a stride-0 view without copying, or refuse; allocate nothing", load="ok_or_error",
              size=(2**40,), stride=(0,),
              value={"w": np.lib.stride_tricks.as_strided(W[:1], (2**40,), (0,))})
    add("view_v3_dtype_wider", "zip",
        ckpt({"w": R(G("torch._utils", "_rebuild_tensor_v3"),
                     (storage_pid("0", 20, cls=G("torch.storage", "UntypedStorage")), 0, (3,), (1,), False, od(),
                      G("torch", "float64")))}, {"0": b"\0" * 20}),
        "_rebuild_tensor_v3: 3 x float64 over a 20-byte untyped storage", "refuse (FormatError)", error="FormatError")
    add("view_v3_dtype_not_dtype", "zip",
        ckpt({"w": R(G("torch._utils", "_rebuild_tensor_v3"),
                     (storage_pid("0", 24, cls=G("torch.storage", "UntypedStorage")), 0, (3,), (1,), False, od(),
                      G("torch", "FloatStorage")))}),
        "_rebuild_tensor_v3 with a storage class where the dtype goes", "refuse (FormatError)", error="FormatError")
    add("view_not_a_storage", "zip", ckpt({"w": tensor([1, 2, 3])}),
        "_rebuild_tensor_v2 over a list instead of a storage", "refuse (FormatError)", error="FormatError")
    add("view_over_array", "zip", ckpt({"w": tensor(tensor())}),
        "_rebuild_tensor_v2 over another rebuilt array", "refuse (FormatError)", error="FormatError")
    add("legacy_view_wider_than_root", "legacy",
        legacy_stream({"w": tensor(legacy_pid("0", 6, view=("v", 2, 100)), 0, (100,), (1,))}),
        "a legacy storage view (view_metadata) of 100 elements from element 2 of a 6-element root",
        "refuse (FormatError)", error="FormatError")
    add("legacy_view_negative", "legacy",
        legacy_stream({"w": tensor(legacy_pid("0", 6, view=("v", -2, 2)), 0, (2,), (1,))}),
        "a legacy storage view with offset -2", "refuse (FormatError)", error="FormatError")
    add("legacy_view_ok", "legacy",
        legacy_stream({"w": tensor(legacy_pid("0", 6, view=("v", 2, 3)), 0, (3,), (1,))}),
        "none: a legacy storage view inside its root (control)", "load it", load="ok", value={"w": W[2:5]})
    add("conj_broadcast_bomb", "zip",
        ckpt({"w": tensor(storage_pid("0", 3, cls="ComplexFloatStorage"), 0, (2**31,), (0,), metadata={"conj": True})}),
        "a conj() view (math bit) of a stride-0 view of 2**31 complex64 (16 GiB) over 24 bytes",
        "refuse, or return a stride-0 view; never materialise 16 GiB", load="ok_or_error", bomb=True,
        value={"w": np.lib.stride_tricks.as_strided(np.zeros(1, np.complex64), (2**31,), (0,))})
    add("neg_broadcast_bomb", "zip",
        ckpt({"w": tensor(storage_pid("0", 6), 0, (2**16, 2**16), (0, 0), metadata={"neg": True})}),
        "a neg view (math bit) of a stride-0 (65536, 65536) float32 view (16 GiB) over 24 bytes",
        "refuse, or return a stride-0 view; never materialise 16 GiB", load="ok_or_error", bomb=True,
        value={"w": np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2**16, 2**16), (0, 0))})
    add("meta_huge", "zip",
        ckpt({"w": R(G("torch._utils", "_rebuild_meta_tensor_no_storage"), (G("torch", "float32"), (2**40, 2**20),
                                                                             (2**20, 1)))}),
        "a meta tensor (no storage) of 2**60 elements", "load the MetaArray (no data) or refuse; allocate nothing",
        load="ok_or_error", bomb=True, value={"w": _Meta((2**40, 2**20), "float32")})
    sparse_storages = {"0": np.zeros(2, np.int64).tobytes(), "1": np.ones(1, np.float32).tobytes()}
    nnz = 2**28
    coo = R(G("torch._utils", "_rebuild_sparse_tensor"), (
        R(G("torch.serialization", "_get_layout"), ("torch.sparse_coo",)),
        (tensor(storage_pid("0", 2, cls="LongStorage"), 0, (2, nnz), (1, 0)),
         tensor(storage_pid("1", 1), 0, (nnz,), (0,)), (4, 4), False)))
    add("sparse_broadcast_bomb", "zip", ckpt({"w": coo}, sparse_storages),
        f"a sparse COO tensor whose indices and values are stride-0 views of {nnz} entries over 20 bytes",
        "refuse, or load without allocating per-entry memory (2 GiB)", load="ok_or_error", bomb=True,
        value=Summary(dict=[["w", {"sparse": "coo", "shape": [4, 4], "nnz": nnz}]]))
    coo = R(G("torch._utils", "_rebuild_sparse_tensor"), (
        R(G("torch.serialization", "_get_layout"), ("torch.sparse_coo",)),
        (tensor(storage_pid("0", 2, cls="LongStorage"), 0, (2, 1), (1, 1)),
         tensor(storage_pid("1", 1), 0, (1,), (1,)), (2**62, 2**62), False)))
    add("sparse_huge_size", "zip", ckpt({"w": coo}, {"0": np.array([2**40, 5], np.int64).tobytes(),
                                                     "1": np.ones(1, np.float32).tobytes()}),
        "a sparse COO tensor of size (2**62, 2**62) with one entry", "load it (scipy holds the shape) or refuse; "
        "allocate nothing", load="ok_or_error", bomb=True,
        value=Summary(dict=[["w", {"sparse": "coo", "shape": [2**62, 2**62], "nnz": 1}]]))
    coo = R(G("torch._utils", "_rebuild_sparse_tensor"), (
        R(G("torch.serialization", "_get_layout"), ("torch.sparse_coo",)),
        (tensor(storage_pid("0", 2, cls="LongStorage"), 0, (2, 1), (1, 1)),
         tensor(storage_pid("1", 1), 0, (1,), (1,)), (4, 4), False)))
    csr = R(G("torch._utils", "_rebuild_sparse_tensor"), (
        R(G("torch.serialization", "_get_layout"), ("torch.sparse_csr",)),
        (tensor(storage_pid("0", 4, cls="LongStorage"), 0, (4,), (1,)),
         tensor(storage_pid("1", 3, cls="LongStorage"), 0, (3,), (1,)),
         tensor(storage_pid("2", 3), 0, (3,), (1,)), (3, 3))))
    add("sparse_csr_not_monotonic", "zip",
        ckpt({"w": csr}, {"0": np.array([0, 2, 1, 3], np.int64).tobytes(), "1": np.array([0, 1, 2], np.int64).tobytes(),
                          "2": np.ones(3, np.float32).tobytes()}),
        "a sparse CSR tensor whose crow_indices decrease (0, 2, 1, 3)", "refuse (FormatError)", error="FormatError",
        open="ok_or_error", verify="either")
    add("sparse_index_out_of_range", "zip", ckpt({"w": coo}, {"0": np.array([9, 1], np.int64).tobytes(),
                                                              "1": np.ones(1, np.float32).tobytes()}),
        "a sparse COO tensor with index 9 in a 4 x 4 tensor", "refuse (FormatError)", error="FormatError",
        open="ok_or_error", verify="either")

    # -- allocation bombs -------------------------------------------------------------------
    group("Allocation bombs (every one must be refused before anything big is allocated)")
    add("bomb_binunicode8", "zip", ckpt(None, pkl=b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"abc."),
        "BINUNICODE8 claiming 2**40 bytes", "refuse (FormatError), allocate nothing", error="FormatError", bomb=True)
    add("bomb_binunicode", "zip", ckpt(None, pkl=b"\x80\x02X" + struct.pack("<I", 2**32 - 1) + b"abc."),
        "BINUNICODE claiming 4 GiB", "refuse (FormatError), allocate nothing", error="FormatError", bomb=True)
    add("bomb_binbytes8", "zip", ckpt(None, pkl=b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc."),
        "BINBYTES8 claiming 2**40 bytes", "refuse (FormatError), allocate nothing", error="FormatError", bomb=True)
    add("bomb_binstring", "zip", ckpt(None, pkl=b"\x80\x02T" + struct.pack("<i", 2**31 - 1) + b"abc."),
        "BINSTRING (Python 2 str) claiming 2 GiB", "refuse (FormatError), allocate nothing", error="FormatError",
        bomb=True)
    add("bomb_binstring_negative", "zip", ckpt(None, pkl=b"\x80\x02T" + struct.pack("<i", -5) + b"abc."),
        "BINSTRING with a negative length", "refuse (FormatError)", error="FormatError")
    add("bomb_long4", "zip", ckpt(None, pkl=b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01."),
        "LONG4 claiming 2 GiB of digits", "refuse (FormatError), allocate nothing", error="FormatError", bomb=True)
    add("bomb_long4_negative", "zip", ckpt(None, pkl=b"\x80\x02\x8b" + struct.pack("<i", -1) + b"\x01."),
        "LONG4 with a negative length", "refuse (FormatError)", error="FormatError")
    big = 2**(8 * 20000 - 1) + 7
    add("numel_huge_digits", "zip", ckpt({"w": tensor(storage_pid("0", big))}),
        "a numel of 48000 decimal digits (int-to-str conversion in error messages raises ValueError)",
        "refuse (FormatError)", error="FormatError")
    add("bomb_marks", "zip", ckpt(None, pkl=b"\x80\x02" + b"(" * 100000 + b"N."),
        "100000 nested MARKs", "refuse (FormatError)", error="FormatError")
    deep = b"\x80\x02" + b"]" * 100000 + b"a" * 99999 + b"."
    add("bomb_nested_lists", "zip", ckpt(None, pkl=deep),
        "100000 nested lists (EMPTY_LIST x 100000, APPEND x 99999)",
        "load it (a deep list) or refuse; never crash on recursion", load="ok_or_error",
        value=_nested_list(100000))
    deep = b"\x80\x02" + b"}" + b")" + b"\x85" * 300_000 + b"K\x01s."
    add("bomb_deep_tuple_key", "zip",
        bytes(zip_build([Rec("data.pkl", deep, method=8)] + ckpt_records(b"")[1:]).data),
        "a 300,000-deep nested tuple used as a dict key (hashing it recurses in C); data.pkl deflated",
        "refuse, never crash (segfault)", bomb=True)
    deep = b"\x80\x02" + b"c__builtin__\nset\n" + b")" + b"\x85" * 300_000 + b"\x85\x85R."
    add("bomb_deep_tuple_set", "zip",
        bytes(zip_build([Rec("data.pkl", deep, method=8)] + ckpt_records(b"")[1:]).data),
        "a 300,000-deep nested tuple put in a set (builtins.set REDUCE); data.pkl deflated",
        "refuse, never crash (segfault)", bomb=True)
    add("bomb_memo_binget_unset", "zip", ckpt(None, pkl=b"\x80\x02h\x05."),
        "BINGET of a memo slot never set", "refuse (FormatError)", error="FormatError")
    add("bomb_memo_long_binget_unset", "zip", ckpt(None, pkl=b"\x80\x02j\xff\xff\xff\xff."),
        "LONG_BINGET 2**32-1 (never set)", "refuse (FormatError)", error="FormatError")
    add("bomb_memo_long_binput_max", "zip", ckpt(None, pkl=b"\x80\x02K\x07r\xff\xff\xff\xffj\xff\xff\xff\xff\x86."),
        "LONG_BINPUT at index 2**32-1 then LONG_BINGET of it (a list-based memo would allocate 32 GiB)",
        "load (7, 7) or refuse; allocate nothing", load="ok_or_error", value=(7, 7), bomb=True)
    add("bomb_stop_empty_stack", "zip", ckpt(None, pkl=b"\x80\x02."), "STOP with an empty stack",
        "refuse (FormatError)", error="FormatError")
    add("bomb_pop_empty_stack", "zip", ckpt(None, pkl=b"\x80\x020N."), "POP with an empty stack",
        "refuse (FormatError)", error="FormatError")
    add("bomb_no_stop", "zip", ckpt(None, pkl=b"\x80\x02N"), "a pickle without STOP", "refuse (FormatError)",
        error="FormatError")
    add("bomb_global_no_newline", "zip", ckpt(None, pkl=b"\x80\x02c" + b"a" * 5000),
        "GLOBAL whose module name never ends", "refuse (FormatError)", error="FormatError")
    add("bomb_zip_deflated_storage_tb", "zip",
        bytes(zip_build(ckpt_records(emit({"w": tensor(storage_pid("0", 2**38), 0, (2,), (1,))}), {})
                        [:4] + [Rec("data/0", b"", method=8, compressed=deflate(b"\0" * 4096), usize=0xFFFFFFFF,
                                    cd_extra=b"\x01\x00\x08\x00" + struct.pack("<Q", 2**40))]
                        + ckpt_records(b"", {})[4:]).data),
        "a DEFLATED storage record (4 kB in the file) declaring 2**40 bytes (zip64), numel to match",
        "refuse before allocating (FormatError)", error="FormatError", bomb=True)
    add("bomb_zip_deflated_storage_1g", "zip",
        bytes(zip_build(ckpt_records(emit({"w": tensor(storage_pid("0", 2**28), 0, (2,), (1,))}), {})
                        [:4] + [Rec("data/0", b"", method=8, compressed=deflate(b"\0" * 4096), usize=2**30)]
                        + ckpt_records(b"", {})[4:]).data),
        "a DEFLATED storage record (a few bytes) declaring 1 GiB, numel to match (deflate cannot exceed 1032:1)",
        "refuse (FormatError) without a 1 GiB allocation", error="FormatError", bomb=True)
    add("bomb_zip_deflated_datapkl", "zip",
        bytes(zip_build([Rec("data.pkl", b"", method=8, compressed=deflate(emit(None)), usize=2**31 - 1)]
                        + ckpt_records(b"")[1:]).data),
        "a DEFLATED data.pkl (a few bytes) declaring 2 GiB - 1", "refuse (FormatError) without a 2 GiB allocation",
        error="FormatError", bomb=True)
    add("bomb_zip_inflates_past", "zip",
        bytes(zip_build(ckpt_records(emit({"w": tensor()}), {})[:4]
                        + [Rec("data/0", W_BYTES, method=8, compressed=deflate(W_BYTES + b"\0" * (16 << 20)))]
                        + ckpt_records(b"", {})[4:]).data),
        "a zip bomb: a DEFLATED storage declared 24 bytes that inflates to 16 MiB",
        "refuse (FormatError) after inflating at most the declared size", error="FormatError", bomb=True)
    add("bomb_datapkl_inflates_past", "zip",
        bytes(zip_build([Rec("data.pkl", emit(None), method=8, compressed=deflate(emit(None) + b"\0" * (16 << 20)))]
                        + ckpt_records(b"")[1:]).data),
        "a zip bomb in data.pkl: declared 4 bytes, inflates to 16 MiB",
        "refuse (FormatError) after inflating at most the declared size", error="FormatError", bomb=True)
    add("bomb_legacy_storage_tb", "legacy",
        legacy_stream({"w": tensor(legacy_pid("0", 2**38), 0, (2,), (1,))}, {"0": (2**38, b"\0" * 64)}),
        "a legacy storage declaring 2**38 floats (1 TiB) in a tiny file", "refuse (FormatError), allocate nothing",
        error="FormatError", bomb=True)
    add("bomb_legacy_numel_2_62", "legacy",
        legacy_stream({"w": tensor(legacy_pid("0", 2**62), 0, (2,), (1,))}, {"0": (2**62, b"\0" * 64)}),
        "a legacy storage declaring 2**62 floats", "refuse (FormatError), allocate nothing", error="FormatError",
        bomb=True)
    add("bomb_tar_storage_tb", "tar",
        tar_checkpoint(storages=emit(1) + emit((TAR_KEY, "cpu", G("torch", "FloatStorage")))
                       + struct.pack("<q", 2**38) + W_BYTES + emit([])),
        "a tar storage declaring 2**38 floats (1 TiB)", "refuse (FormatError), allocate nothing",
        error="FormatError", bomb=True)
    add("bomb_tar_pax_size", "tar", _tar_pax_bomb(),
        "a tar whose first member is a PAX header declaring 8 GiB of records (tarfile reads it in one call)",
        "refuse (FormatError), allocate nothing", error="FormatError", bomb=True)

    # -- zip lies ----------------------------------------------------------------------------
    group("Zip structures that lie")
    ok = ckpt_records(emit({"w": tensor()}))

    def zcase(name, data, attack, must, *, load="error", error="FormatError", value=None, scan=None, **kw):
        if scan is None:
            scan = "error" if load == "error" and error == "FormatError" else "ok_or_error"
        add(name, "zip", bytes(data), attack, must, load=load, error=error, value=value, scan=scan, **kw)

    z = zip_build(ok)
    zcase("zip_wrong_local_sizes", patch(z.data, z.local_offsets["data/0"] + 14, "<III", 0xDEAD, 5, 7),
          "local header CRC and sizes that disagree with the central directory",
          "load it (the central directory is authoritative, as in torch)", load="ok", value=base_value,
          verify="either")
    z = zip_build(ok)
    zcase("zip_wrong_crc", patch(z.data, z.cd_entries["data/0"] + 16, "<I", 0x12345678),
          "a wrong CRC-32 for data/0 in the central directory",
          "load it (torch does not check CRCs, and neither does nbckpt.load by default); nbckpt.verify "
          "must report the mismatch", load="ok", value=base_value, verify="problems")
    z = zip_build(ok)
    zcase("zip_cd_size_larger", patch(z.data, z.cd_entries["data/0"] + 20, "<II", 1000, 1000),
          "central directory sizes of data/0 larger than the record (1000 bytes)", "refuse (FormatError)",
          scan="ok_or_error")
    z = zip_build(ok)
    zcase("zip_cd_size_smaller", patch(z.data, z.cd_entries["data/0"] + 20, "<II", 8, 8),
          "central directory sizes of data/0 smaller than the record (8 of 24 bytes)", "refuse (FormatError)",
          scan="ok_or_error")
    z = zip_build(ok)
    zcase("zip_stored_sizes_differ", patch(z.data, z.cd_entries["data/0"] + 20, "<II", 24, 48),
          "a STORED record whose compressed and uncompressed sizes differ", "refuse (FormatError)")
    recs = ckpt_records(emit({"w": tensor(storage_pid("0")), "b": tensor(storage_pid("1"))}),
                        {"0": W_BYTES, "1": W_BYTES})
    z = zip_build(recs)
    zcase("zip_overlapping_records", patch(z.data, z.cd_entries["data/1"] + 42, "<I", z.local_offsets["data/0"]),
          "two central-directory entries (data/0, data/1) pointing at the same local header",
          "refuse (FormatError)")
    z = zip_build(ok)
    zcase("zip_cd_offset_outside", patch(patch(z.data, z.eocd + 16, "<I", 10**6), z.eocd64 + 48, "<Q", 10**6),
          "end records pointing the central directory past the end of the file", "refuse (FormatError)")
    z = zip_build(ok)
    zcase("zip_cd_entry_offset_outside", patch(z.data, z.cd_entries["data/0"] + 42, "<I", 10**8),
          "a central-directory entry whose local header offset is past the end of the file",
          "refuse (FormatError)")
    z = zip_build(ok)
    zcase("zip64_eocd_disagrees", patch(z.data, z.eocd64 + 24, "<QQ", 99, 99),
          "a zip64 end record whose entry counts disagree with the classic end record", "refuse (FormatError)")
    z = zip_build(ok)
    zcase("zip64_locator_lies", patch(z.data, z.locator + 8, "<Q", 5),
          "a zip64 locator pointing at the wrong offset", "refuse (FormatError)")
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, cd_extra=b"\x01\x00\x18\x00" + struct.pack("<QQQ", 2**40, 2**40, 0))
    zcase("zip64_extra_disagrees", zip_build(recs).data,
          "a zip64 extra (2**40 bytes, offset 0) on an entry whose classic fields are not 0xFFFFFFFF",
          "load it (the classic fields are authoritative when not saturated) or refuse", load="ok_or_error",
          value=base_value, scan="ok_or_error")
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, csize=0xFFFFFFFF, usize=0xFFFFFFFF,
                  cd_extra=b"\x01\x00\x10\x00" + struct.pack("<QQ", 2**40, 2**40))
    zcase("zip64_extra_huge", zip_build(recs).data,
          "a STORED entry whose zip64 extra declares 2**40 bytes", "refuse (FormatError), allocate nothing",
          bomb=True)
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, csize=0xFFFFFFFF, usize=0xFFFFFFFF, cd_extra=b"\x01\x00\x04\x00abcd")
    zcase("zip64_extra_truncated", zip_build(recs).data,
          "saturated sizes with a zip64 extra too short to hold them", "refuse (FormatError)")
    recs = ckpt_records(emit({"w": tensor()}))
    zcase("zip_duplicate_datapkl", zip_build([Rec("data.pkl", emit({"evil": 1}))] + recs).data,
          "two data.pkl records (which one a reader picks decides what loads)", "refuse (FormatError)")
    zcase("zip_duplicate_storage", zip_build(recs[:5] + [Rec("data/0", b"\xff" * 24)] + recs[5:]).data,
          "two data/0 records", "refuse (FormatError)")
    zcase("zip_record_outside_prefix", zip_build(ok + [Rec("x", b"evil", full_name="other/data.pkl")]).data,
          "a record outside the archive's top folder", "refuse (FormatError)")
    zcase("zip_record_no_folder", zip_build([Rec("x", emit(None), full_name="data.pkl")] + ok).data,
          "a first record that is in no folder", "refuse (FormatError)")
    zcase("zip_prefix_dotdot", zip_build(ok, prefix="..").data,
          "every record under '../' (a path traversal for an extracting reader)",
          "load it: nothing is extracted, names are only names", load="ok", value=base_value, scan="ok")
    zcase("zip_data_version_99",
          zip_build(ckpt_records(emit({"w": tensor()}), extra=[Rec(".data/version", b"99\n")])).data,
          "a .data/version record (read before version) of 99, next to a valid version 3", "refuse (FormatError)")
    zcase("zip_version_zero", zip_build(ckpt_records(emit({"w": tensor()}), version=b"0\n")).data,
          "version 0", "refuse (FormatError)")
    add("pytorch1_magic", "legacy", b"PYTORCH1" + zip_build(ok).data,
        "the preview-release magic PYTORCH1 before a zip (not a zip, not a legacy stream)",
        "refuse (FormatError)", error="FormatError", scan="error")
    zcase("zip_missing_version", zip_build(ckpt_records(emit({"w": tensor()}), version=None)).data,
          "no version record", "refuse (FormatError)")
    zcase("zip_version_99", zip_build(ckpt_records(emit({"w": tensor()}), version=b"99\n")).data,
          "version 99", "refuse (FormatError)")
    zcase("zip_version_text", zip_build(ckpt_records(emit({"w": tensor()}), version=b"three")).data,
          "version 'three'", "refuse (FormatError)")
    zcase("zip_version_huge", zip_build(ckpt_records(emit({"w": tensor()}), version=b"9" * 5000)).data,
          "a 5000-digit version", "refuse (FormatError)")
    zcase("zip_byteorder_middle", zip_build(ckpt_records(emit({"w": tensor()}), byteorder=b"middle")).data,
          "byteorder 'middle'", "refuse (FormatError)")
    zcase("zip_byteorder_huge", zip_build(ckpt_records(emit({"w": tensor()}), byteorder=b"little" * 1000)).data,
          "a 6 kB byteorder record", "refuse (FormatError)")
    zcase("zip_torchscript", zip_build(ok[:1] + [Rec("constants.pkl", emit(())),
                                                 Rec("code/__torch__.py", b"import os\nos.system('touch "
                                                     + canary("zip_torchscript").encode() + b"')\n")] + ok[1:]).data,
          "a constants.pkl record: a TorchScript archive with code (CVE-2025-32434 dispatched these to torch.jit.load)",
          "refuse (FormatError): never run TorchScript")
    zcase("zip_no_datapkl", zip_build(ok[1:]).data, "no data.pkl record", "refuse (FormatError)")
    zcase("zip_empty_datapkl", zip_build([Rec("data.pkl", b"")] + ok[1:]).data, "an empty data.pkl",
          "refuse (FormatError)", scan="ok_or_error")
    z = zip_build(ok, comment=b"", comment_len=0xFFFF)
    zcase("zip_eocd_comment_lie", z.data, "an end record claiming a 65535-byte comment that is not there",
          "refuse (FormatError)")
    zcase("zip_eocd_comment_real", zip_build(ok, comment=b"PK\x05\x06" + b"c" * 65000).data,
          "a real 65004-byte comment that itself holds an end-record signature",
          "load it", load="ok", value=base_value, scan="ok")
    z = zip_build(ok)
    zcase("zip_truncated_cd", z.data[: z.cd_offset + (z.eocd64 - z.cd_offset) // 2],
          "the file cut in the middle of the central directory", "refuse (FormatError)")
    z = zip_build(ok)
    zcase("zip_truncated_cd_count", patch(patch(z.data, z.eocd + 8, "<HH", 50, 50), z.eocd64 + 24, "<QQ", 50, 50),
          "end records claiming 50 entries in a directory that holds 7", "refuse (FormatError)")
    z = zip_build(ok)
    zcase("zip_only_local_headers", z.data[: z.cd_offset], "local records only: no central directory",
          "refuse (FormatError)")
    zcase("zip_magic_only", b"PK\x03\x04", "just the zip magic", "refuse (FormatError)")
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, method=12)
    zcase("zip_method_bzip2", zip_build(recs).data, "a record compressed with bzip2 (method 12)",
          "refuse (FormatError)")
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, local_magic=b"PK\x09\x09")
    zcase("zip_local_magic_bad", zip_build(recs).data, "a bad local header signature", "refuse (FormatError)",
          scan="ok_or_error")
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, local_method=8)
    zcase("zip_local_method_mismatch", zip_build(recs).data,
          "local header says deflated, central directory says stored", "refuse (FormatError)", scan="ok_or_error")
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, local_extra=b"FB\x0a\x00" + b"Z" * 10, local_extra_len=0xFFFF)
    zcase("zip_local_extra_huge", zip_build(recs).data,
          "a local extra length of 65535 (the data would start far past the record)", "refuse (FormatError)",
          scan="ok_or_error")
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, method=8, compressed=b"\xff\xff\xff\xff" * 8)
    zcase("zip_deflate_corrupt", zip_build(recs).data, "a DEFLATED record holding invalid deflate data",
          "refuse (FormatError)", scan="ok_or_error")
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, method=8, compressed=deflate(W_BYTES)[:5])
    zcase("zip_deflate_truncated", zip_build(recs).data, "a DEFLATED record cut short", "refuse (FormatError)",
          scan="ok_or_error")
    recs = ckpt_records(emit(None))
    recs[0] = Rec("data.pkl", emit(None), method=8, compressed=b"\x00\x01\x00" + b"\xff" * 10)
    zcase("zip_datapkl_deflate_corrupt", zip_build(recs).data, "a DEFLATED data.pkl holding invalid deflate data",
          "refuse (FormatError)")
    recs = ckpt_records(emit({"w": tensor()}))
    recs[4] = Rec("data/0", W_BYTES, method=8)
    zcase("zip_deflated_ok", zip_build(recs).data, "none: a valid DEFLATED storage record (control)", "load it",
          load="ok", value=base_value, scan="ok")
    zcase("zip_name_not_utf8", zip_build(ok + [Rec("x", b"", full_name="archive/\udcff\udcfe")]).data,
          "a record name that is not UTF-8", "load it (the name is decoded as cp437) or refuse",
          load="ok_or_error", value=base_value)

    # -- legacy formats ----------------------------------------------------------------------------
    group("Legacy formats (pre-1.6 stream, 0.1-0.3 tar)")
    add("legacy_header_os_system", "legacy",
        legacy_stream({"w": tensor(legacy_pid())},
                      header=(LEGACY_MAGIC, 1001,
                              R(G("os", "system"), (f"touch {canary('legacy_header_os_system')}",)))),
        "os.system in the sys_info pickle of the header (run before the object pickle)",
        "refuse (UnpicklingError); scan reports os.system", error="UnpicklingError", scan="ok",
        scan_flags=["os.system"])
    add("legacy_keys_os_system", "legacy",
        legacy_stream({"w": tensor(legacy_pid())},
                      keys_pkl=emit(R(G("os", "system"), (f"touch {canary('legacy_keys_os_system')}",)))),
        "os.system in the storage-key pickle", "refuse (UnpicklingError); scan reports os.system",
        error="UnpicklingError", scan="ok", scan_flags=["os.system"])
    add("legacy_version_os_system", "legacy",
        legacy_stream({"w": tensor(legacy_pid())},
                      header=(LEGACY_MAGIC, R(G("posix", "system"), (f"touch {canary('legacy_version_os_system')}",)),
                              SYS_INFO)),
        "posix.system in the protocol-version pickle", "refuse (UnpicklingError)", error="UnpicklingError",
        scan="ok", scan_flags=["posix.system"])
    add("legacy_module_pid", "legacy",
        legacy_stream({"w": PID(("module", G("torch.nn.modules.linear", "Linear"), "linear.py", "import os"))}),
        "a pickled module (the 'module' persistent id with source code)", "refuse (UnpicklingError)",
        error="UnpicklingError")
    add("legacy_key_unhashable", "legacy", legacy_stream({"w": tensor(legacy_pid())}, keys=[["0"]]),
        "a storage-key list holding a list", "refuse (FormatError)", error="FormatError")
    add("legacy_keys_not_list", "legacy", legacy_stream({"w": tensor(legacy_pid())}, keys_pkl=emit({"0": 1})),
        "a storage-key pickle that is a dict", "refuse (FormatError)", error="FormatError")
    add("legacy_key_unused", "legacy",
        legacy_stream({"w": tensor(legacy_pid())}, {"0": (6, W_BYTES), "1": (6, W_BYTES)}),
        "a storage key listed but never used", "refuse (FormatError)", error="FormatError")
    add("legacy_numel_mismatch", "legacy", legacy_stream({"w": tensor(legacy_pid())}, {"0": (7, W_BYTES + b"\0" * 4)}),
        "data section numel 7 where the pickle declares 6", "refuse (FormatError)", error="FormatError")
    add("legacy_numel_negative", "legacy",
        legacy_stream({"w": tensor(legacy_pid("0", -6))}, {"0": (-6, W_BYTES)}),
        "numel -6 in the persistent id and in the data", "refuse (FormatError)", error="FormatError")
    add("legacy_numel_huge_digits", "legacy",
        legacy_stream({"w": tensor(legacy_pid("0", big))}, {"0": (6, W_BYTES)}),
        "a persistent-id numel of 48000 decimal digits (int-to-str in error messages raises ValueError)",
        "refuse (FormatError)", error="FormatError")
    add("legacy_storage_truncated", "legacy", legacy_stream({"w": tensor(legacy_pid())}, {"0": (6, W_BYTES[:10])}),
        "storage data cut short", "refuse (FormatError)", error="FormatError")
    add("legacy_version_wrong", "legacy",
        legacy_stream({"w": tensor(legacy_pid())}, header=(LEGACY_MAGIC, 999, SYS_INFO)),
        "protocol version 999", "refuse (FormatError)", error="FormatError")
    add("legacy_sys_info_not_dict", "legacy",
        legacy_stream({"w": tensor(legacy_pid())}, header=(LEGACY_MAGIC, 1001, [1])),
        "a sys_info that is a list", "refuse (FormatError)", error="FormatError")
    add("legacy_magic_only", "legacy", emit(LEGACY_MAGIC), "the magic number and nothing else",
        "refuse (FormatError)", error="FormatError")
    add("legacy_pid_5_fields", "legacy", legacy_stream({"w": tensor(storage_pid())}),
        "a zip-style 5-field persistent id in a stream file", "refuse (FormatError)", error="FormatError")
    add("legacy_dtype_conflict", "legacy",
        legacy_stream({"a": tensor(legacy_pid("0", 6)),
                       "b": tensor(legacy_pid("0", 3, cls="DoubleStorage"), 0, (3,), (1,))}),
        "one key as 6 x float32 and 3 x float64", "refuse (FormatError)", error="FormatError")
    add("tar_os_system", "tar",
        tar_checkpoint(pickle_obj={"w": PID(str(TAR_TENSOR)),
                                   "x": R(G("os", "system"), (f"touch {canary('tar_os_system')}",))}),
        "os.system in the tar's object pickle", "refuse (UnpicklingError); scan reports os.system",
        error="UnpicklingError", scan="ok", scan_flags=["os.system"])
    add("tar_storage_header_os_system", "tar",
        tar_checkpoint(storages=emit(1)
                       + emit(R(G("os", "system"), (f"touch {canary('tar_storage_header_os_system')}",)))
                       + struct.pack("<q", 6) + W_BYTES + emit([])),
        "os.system in a storage header pickle of the tar", "refuse (UnpicklingError); scan reads the storages "
        "member's pickles and reports os.system", error="UnpicklingError", scan="ok", scan_flags=["os.system"])
    system = R(G("os", "system"), (f"touch {canary('tar_member_pickles')}",))
    good_storages = emit(1) + emit((TAR_KEY, "cpu", G("torch", "FloatStorage"))) + struct.pack("<q", 6) + W_BYTES
    tensor_fields = (struct.pack("<i", 2) + b"\0" * 4 + struct.pack("<2q", 2, 3) + struct.pack("<2q", 3, 1)
                     + struct.pack("<q", 0))
    for name, storages, tensors, where in (
            ("tar_storage_count_os_system", emit(system) + good_storages[len(emit(1)):] + emit([]), None,
             "the storage count pickle"),
            ("tar_storage_views_os_system", good_storages + emit([system]), None, "the storage views pickle"),
            ("tar_tensor_count_os_system", None, emit(system) + emit((TAR_TENSOR, TAR_KEY, G("torch", "FloatTensor")))
             + tensor_fields, "the tensor count pickle"),
            ("tar_tensor_header_os_system", None, emit(1) + emit((TAR_TENSOR, TAR_KEY, system)) + tensor_fields,
             "a tensor header pickle")):
        add(name, "tar", tar_checkpoint(storages=storages, tensors=tensors),
            f"os.system in {where} (the storages and tensors members are pickles that load runs)",
            "refuse (UnpicklingError); scan reads every pickle load runs and reports os.system",
            error="UnpicklingError", scan="ok", scan_flags=["os.system"])
    add("tar_missing_member", "tar", tar_checkpoint(drop="tensors"), "a tar without its 'tensors' member",
        "refuse (FormatError)", error="FormatError")
    add("tar_view_unhashable", "tar",
        tar_checkpoint(storages=emit(1) + emit((TAR_KEY, "cpu", G("torch", "FloatStorage")))
                       + struct.pack("<q", 6) + W_BYTES + emit([(1, [TAR_KEY], 0, 2)])),
        "a storage view whose root key is a list", "refuse (FormatError)", error="FormatError")
    add("tar_view_wider", "tar",
        tar_checkpoint(storages=emit(1) + emit((TAR_KEY, "cpu", G("torch", "FloatStorage")))
                       + struct.pack("<q", 6) + W_BYTES + emit([(5, TAR_KEY, 4, 100)])),
        "a storage view of 100 elements of a 6-element storage", "refuse (FormatError)", error="FormatError")
    add("tar_tensor_key_unhashable", "tar",
        tar_checkpoint(tensors=emit(1) + emit(([1], TAR_KEY, G("torch", "FloatTensor")))
                       + struct.pack("<i", 1) + b"\0" * 4 + struct.pack("<qqq", 2, 1, 0)),
        "a tensor header whose key is a list", "refuse (FormatError)", error="FormatError")
    add("tar_tensor_negative_size", "tar",
        tar_checkpoint(tensors=emit(1) + emit((TAR_TENSOR, TAR_KEY, G("torch", "FloatTensor")))
                       + struct.pack("<i", 1) + b"\0" * 4 + struct.pack("<qqq", -1, 1, 0)),
        "a tensor of size -1", "refuse (FormatError)", error="FormatError")
    add("tar_tensor_rank_huge", "tar",
        tar_checkpoint(tensors=emit(1) + emit((TAR_TENSOR, TAR_KEY, G("torch", "FloatTensor")))
                       + struct.pack("<i", 2**31 - 1) + b"\0" * 4),
        "a tensor of rank 2**31-1 (the sizes would be read one by one)", "refuse (FormatError)", error="FormatError")
    scalar = R(G("numpy._core.multiarray", "scalar"), (np_dtype("f4"), b"\0" * 4))
    add("tar_storage_type_scalar", "tar",
        tar_checkpoint(storages=emit(1) + emit((TAR_KEY, "cpu", scalar)) + struct.pack("<q", 6) + W_BYTES + emit([])),
        "a storage header whose type is a numpy scalar (it has a .dtype, but is no storage class)",
        "refuse (FormatError)", error="FormatError")
    add("tar_count_huge", "tar", tar_checkpoint(storages=emit(2**62)),
        "a storage count of 2**62 with no storages", "refuse (FormatError)", error="FormatError")
    add("tar_pax_bad_next", "tar", _tar_pax_bad_next(),
        "a PAX extended header followed by a corrupt member header", "refuse (FormatError)", error="FormatError")


def _scan_hiding(opcodes: bytes) -> bytes:
    """A pickle that leaves 'os' and 'system' on the stack, runs ``opcodes`` (which must leave the
    stack as it was), then STACK_GLOBAL + REDUCE: os.system('touch <canary>')."""
    return (b"\x80\x02" + _str("os") + _str("system") + opcodes + b"\x93"
            + _str(f"touch {canary('scan_hidden')}") + b"\x85R.")


def _billion_laughs(leaf: Any, depth: int) -> Raw:
    """``leaf`` in a list of two, that list in a list of two... ``depth`` times: 2**depth leaves
    through the memo, a few bytes each level."""
    out = bytearray()
    _emit(out, leaf)
    out += b"q\x00"
    for _ in range(depth):
        out += b"0]q\x01(h\x00h\x00eq\x00"  # pop; x = [m0, m0]; m0 = x
    return Raw(bytes(out))


def _listing_cases() -> None:
    """Files that make a listing (open, diff, the CLI, the browser) omit, merge or explode entries."""
    def nested(n: int, leaf: Any) -> Raw:  # n dicts deep, one key each, then {"w": leaf}
        return Raw(b"}" + b"".join(emit(f"k{i}", proto=False, stop=False) + b"}" for i in range(n))
                   + emit("w", proto=False, stop=False) + emit(leaf, proto=False, stop=False) + b"s" * (n + 1))

    add("deep_array_250", "zip", ckpt(nested(250, tensor())),
        "an array 251 dicts deep (open lists arrays 200 deep)", "load it; open refuses (FormatError), never "
        "leaves the array out of the listing", load="ok", open="error", verify="ok")
    add("array_in_attribute", "zip", ckpt(B(od(("w", tensor())), {"_metadata": od(("", tensor()))})),
        "an array in an OrderedDict's attribute (set by BUILD, as _metadata is): a listing by keys misses it",
        "load it; open refuses (FormatError) rather than leave it out", load="ok", open="error", verify="ok")
    nan = float("nan")
    add("nan_keys", "zip", ckpt({"x": Raw(b"}" + b"".join(emit(nan, proto=False, stop=False) + emit(tensor(), proto=False, stop=False)
                                                       + b"s" for _ in range(2)))}),
        "two NaN keys in one dict (unequal, so both stay; both print as nan)",
        "load them; open refuses (FormatError): it cannot name them apart", load="ok", open="error",
        verify="ok")
    add("colliding_value_names", "zip", ckpt({"a.b": 1, "a": {"b": 2, "w": tensor()}}),
        "two values that flatten to one dotted name (a.b): a listing keyed by name keeps one",
        "load them; open lists both (by exact names)", load="ok",
        value={"a.b": 1, "a": {"b": 2, "w": w_value()}})
    key_laughs = b"K\x01K\x02\x86q\x000" + b"h\x00h\x00\x86q\x000" * 18 + b"h\x00"
    add("tuple_key_laughs_names", "zip",
        ckpt(None, pkl=b"\x80\x02}" + key_laughs + b"}(" + b"".join(
            emit(f"w{i}", proto=False, stop=False) + emit(tensor(), proto=False, stop=False) for i in range(50))
            + b"us."),
        "a tuple key of 2**18 leaves (18 levels of t = (t, t)) over 50 arrays: each dotted name would be 2.6 MB, "
        "and every dict keyed by a path rehashes 2**19 items (CPython caches no tuple hash)",
        "load it; open refuses (FormatError) a key that costs more than 10,000 steps to hash", load="ok",
        open="error", verify="ok", bomb=True)
    add("long_str_key_names", "zip",
        ckpt(None, pkl=b"\x80\x02}" + emit("x" * (4 << 20), proto=False, stop=False) + b"}(" + b"".join(
            emit(f"w{i}", proto=False, stop=False) + emit(tensor(), proto=False, stop=False) for i in range(300))
            + b"us."),
        "a 4 MiB string key (6 kB deflated) over 300 arrays: 1.2 GB of dotted names",
        "load it; the listing names the key by its length and a digest", load="ok", open="ok", verify="ok")
    deep_key: Any = ("x",)
    for _ in range(600):
        deep_key = (deep_key,)
    add("deep_tuple_key_names", "zip", ckpt({deep_key: tensor()}),
        "a tuple key nested 600 deep over an array: writing its name recursively overflows the stack",
        "load it; the listing names the key by a digest", load="ok", open="ok", verify="ok")
    add("legacy_location_nul", "legacy",
        legacy_stream({"w": tensor(PID(("storage", G("torch", "FloatStorage"), "0", "cpu\x00evil", 6, None)))}),
        "a legacy storage saved on 'cpu\\x00evil': the legacy check maps every storage to the host and never "
        "reads the location, so verify said OK while load refuses it", "refuse (DeviceError); verify and open too",
        error="DeviceError")
    add("neg_bool_tensor", "zip", ckpt({"w": tensor(storage_pid(numel=6, cls="BoolStorage"), metadata={"neg": True})},
                                       {"0": b"\x01" * 6}),
        "a neg view (math bit) of a bool tensor: NumPy cannot negate bools; a listing that only records the bit "
        "says OK and fails untyped when the array is read", "refuse (FormatError); open and verify too",
        error="FormatError")


SHARDED_INDEX = "model.safetensors.index.json"


def safetensors_bytes(tensors: dict[str, np.ndarray] | None = None, *, header: Any = None,
                      raw_header: bytes | None = None, size: int | None = None, data: bytes | None = None,
                      metadata: dict | None = None) -> bytes:
    """A .safetensors file: ``tensors`` laid out in order; ``header``/``raw_header``/``size``/``data``
    replace what would be written (to make the header lie)."""
    tensors = {"w": W.reshape(2, 3)} if tensors is None else tensors
    if header is None:
        header, offset = {}, 0
        for name, array in tensors.items():
            code = {"<f4": "F32", "<f8": "F64", "<i8": "I64", "|u1": "U8"}[array.dtype.str]
            header[name] = {"dtype": code, "shape": list(array.shape),
                            "data_offsets": [offset, offset + array.nbytes]}
            offset += array.nbytes
        if metadata is not None:
            header["__metadata__"] = metadata
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    body = data if data is not None else b"".join(np.ascontiguousarray(a).tobytes() for a in tensors.values())
    return struct.pack("<Q", len(raw) if size is None else size) + raw + body


def sharded_index(weight_map: Any, **extra: Any) -> bytes:
    return json.dumps({"metadata": {"total_size": 24}, "weight_map": weight_map, **extra}).encode()


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _reader_cases() -> None:
    """Issue 14/15: the pickle-free readers (safetensors, sharded indexes) get the same hostile treatment."""
    group("Round two: safetensors files and sharded indexes that lie")
    st = safetensors_bytes
    two = {"a": W[:3].copy(), "b": W[3:].copy()}

    def st_case(name: str, data: bytes, attack: str, must: str = "refuse (FormatError)", **kw: Any) -> None:
        kw.setdefault("error", "FormatError")
        add(name, "safetensors", data, attack, must, **kw)

    st_case("st_ok", st(), "none: a valid safetensors file (control)", "load it", load="ok",
            value={"w": W.reshape(2, 3)})
    st_case("st_header_len_past_eof", st(size=1 << 20), "a header length of 1 MiB in a 100-byte file")
    st_case("st_header_len_huge", st(size=2**64 - 1), "a header length of 2**64 - 1 (a reader that allocates it "
            "first asks for 16 EiB)", bomb=True)
    st_case("st_header_truncated", st()[:20], "the file ends inside the header")
    st_case("st_offsets_past_data", st(header={"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}}),
            "data_offsets end past the data region")
    st_case("st_offsets_huge", st(header={"w": {"dtype": "U8", "shape": [2**62], "data_offsets": [0, 2**62]}}),
            "a 2**62-byte tensor in a 100-byte file", bomb=True)
    st_case("st_offsets_reversed", st(header={"w": {"dtype": "F32", "shape": [0], "data_offsets": [24, 0]}}),
            "data_offsets [24, 0] (end before begin)")
    st_case("st_offsets_overlap", st(two, header={"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                                                  "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]}}),
            "two tensors whose data overlap")
    st_case("st_size_mismatch", st(header={"w": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 24]}}),
            "a shape of 8 floats over 24 bytes (the header lies about the size)")
    st_case("st_dtype_lie", st(header={"w": {"dtype": "F64", "shape": [2, 3], "data_offsets": [0, 24]}}),
            "dtype F64 over the bytes of 6 float32 (the size no longer matches)")
    st_case("st_dtype_unknown", st(header={"w": {"dtype": "O", "shape": [6], "data_offsets": [0, 24]}}),
            "dtype 'O' (NumPy objects, the pickle route)")
    st_case("st_dtype_not_str", st(header={"w": {"dtype": ["F32"], "shape": [6], "data_offsets": [0, 24]}}),
            "a dtype that is a list")
    st_case("st_shape_negative", st(header={"w": {"dtype": "F32", "shape": [-6], "data_offsets": [0, 24]}}),
            "a negative dimension")
    st_case("st_shape_float", st(header={"w": {"dtype": "F32", "shape": [6.0], "data_offsets": [0, 24]}}),
            "a dimension written as a float")
    st_case("st_shape_rank_65", st(header={"w": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}),
            "65 dimensions")
    st_case("st_shape_empty_huge", st(header={"w": {"dtype": "F32", "shape": [0, 2**62, 2**62],
                                                    "data_offsets": [0, 0]}}),
            "an empty tensor with two 2**62 dimensions (0 bytes, but no array of that shape can exist)",
            "refuse (FormatError) or load an empty array", load="ok_or_error")
    st_case("st_shape_overflow", st(header={"w": {"dtype": "F32", "shape": [2**32, 2**32],
                                                  "data_offsets": [0, 2**66]}}),
            "a shape of 2**64 elements whose offsets agree with it")
    st_case("st_header_not_object", st(raw_header=b"[1, 2, 3]"), "a header that is a JSON list")
    st_case("st_header_not_utf8", st(raw_header=b'{"w\xff": 1}'),
            "a header that is not UTF-8")
    st_case("st_header_deep_json", st(raw_header=_deep_json(100_000)),
            "a header of 100,000 nested JSON lists (a recursive parser overflows)")
    st_case("st_header_huge_int", st(raw_header=b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000
                                     + b'], "data_offsets": [0, 24]}}'),
            "a dimension of 5000 digits (int() of it raises ValueError)")
    st_case("st_duplicate_name", st(raw_header=b'{"w": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}, '
                                    b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'),
            "a tensor named twice (a JSON parser keeps the last one)")
    st_case("st_metadata_not_strings", st(metadata={"x": {"nested": [1, 2]}}),
            "__metadata__ whose values are not strings")
    st_case("st_extra_field", st(header={"w": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24],
                                               "offset": 4}}),
            "a tensor entry with an unknown field")
    st_case("st_hostile_names", st({"../../nbckpt-canary-st": W[:3].copy(), "x\x1b[2J\nOK": W[3:].copy()}),
            "tensor names with ../ and with ESC and a newline: convert must write safe entry names and the CLI "
            "must print them escaped", "load them", load="ok",
            value={"../../nbckpt-canary-st": W[:3], "x\x1b[2J\nOK": W[3:]})

    # -- sharded indexes ----------------------------------------------------------------------
    ok_shards = {"model-00001-of-00002.safetensors": st({"a": W[:3].copy()}),
                 "model-00002-of-00002.safetensors": st({"b": W[3:].copy()})}
    ok_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}

    def sh_case(name: str, index: bytes, attack: str, must: str = "refuse (FormatError)", *,
                shards: dict[str, bytes] | None = None, **kw: Any) -> None:
        kw.setdefault("error", "FormatError")
        add(name, "sharded", index, attack, must, extra=dict(ok_shards if shards is None else shards), **kw)

    sh_case("sharded_ok", sharded_index(ok_map), "none: an index and two safetensors shards (control)", "load it",
            load="ok", value={"a": W[:3], "b": W[3:]})
    sh_case("sharded_dotdot", sharded_index({"a": "../ok_handmade.pt"}),
            "an index naming a shard outside its folder (../ok_handmade.pt, which exists)",
            "refuse (FormatError) before reading anything")
    sh_case("sharded_absolute", sharded_index({"a": "/etc/passwd"}), "an index naming an absolute path",
            "refuse (FormatError) before reading anything")
    sh_case("sharded_dotdot_nested", sharded_index({"a": "model-00001-of-00002.safetensors/../../ok_handmade.pt"}),
            "a shard path that climbs out through ..", "refuse (FormatError) before reading anything")
    sh_case("sharded_missing_shard", sharded_index({**ok_map, "c": "model-00003-of-00003.safetensors"}),
            "an index naming a shard that is not there", "refuse (FormatError) when the array is read; verify "
            "reports the missing shard", open="error")
    sh_case("sharded_newline_shard", sharded_index({**ok_map, "c": "x\nOK all arrays verified.safetensors"}),
            "a missing shard whose name holds a newline: the error naming it must not print a line of its own",
            "refuse (FormatError) when the array is read, the shard's name escaped", open="error")
    sh_case("sharded_shard_lacks_tensor", sharded_index({"a": "model-00002-of-00002.safetensors"}),
            "an index putting a tensor in a shard that does not hold it")
    sh_case("sharded_deep_json", _deep_json(100_000), "an index of 100,000 nested JSON lists")
    sh_case("sharded_weight_map_deep", b'{"weight_map": {"a": ' + _deep_json(50_000) + b"}}",
            "a weight_map value of 50,000 nested JSON lists")
    sh_case("sharded_huge_int", b'{"metadata": {"total_size": ' + b"9" * 5000 + b'}, "weight_map": '
            + json.dumps(ok_map).encode() + b"}", "metadata with a number of 5000 digits")
    sh_case("sharded_self_reference", sharded_index({"a": SHARDED_INDEX}),
            "an index naming itself as its shard (a reader that opens shards with the format sniffer recurses)")
    sh_case("sharded_index_cycle", sharded_index({"a": "other.safetensors.index.json"}),
            "an index naming another index as its shard, which names the first",
            shards={"other.safetensors.index.json": sharded_index({"a": SHARDED_INDEX})})
    sh_case("sharded_nested_value", sharded_index({"a": "shard.pt"}),
            "a torch shard whose entry named by the index is a dict of arrays, not an array",
            "refuse (FormatError), or load the nested arrays correctly", load="ok_or_error",
            shards={"shard.pt": ckpt({"a": {"b": tensor()}})})
    sh_case("sharded_shard_os_system", sharded_index({"w": "shard.pt"}),
            "a torch shard whose pickle calls os.system", "refuse (UnpicklingError); scan reads the shard's "
            "pickle and reports os.system", error="UnpicklingError", scan="ok", scan_flags=["os.system"],
            shards={"shard.pt": ckpt({"w": tensor(), "x": R(G("os", "system"),
                                                             (f"touch {canary('sharded_shard_os_system')}",))})})
    sh_case("sharded_shard_lies", sharded_index(ok_map),
            "a valid index over a shard whose safetensors header lies (offsets past the data)",
            shards={**ok_shards, "model-00002-of-00002.safetensors": st(
                header={"b": {"dtype": "F32", "shape": [3], "data_offsets": [0, 400]}})})


def _round_two_cases() -> None:
    """Issue 15: the tools around the loader (scan, diff, convert, the CLI, the notebook)."""
    group("Round two: files that fool the inspection tools or grow in the tools around load")
    # scan must follow the stack as pickle does after MARK-consuming opcodes
    for name, ops in (("tuple", b"(" + _str("a") + b"t0"), ("pop_mark", b"(" + _str("a") + _str("b") + b"1"),
                      ("pop_of_mark", b"(0"), ("frozenset", b"(" + _str("a") + b"\x910"),
                      ("appends", b"](" + _str("a") + b"e0"), ("setitems", b"}(" + _str("a") + _str("b") + b"u0")):
        add(f"scan_hidden_{name}", "zip", ckpt(None, pkl=_scan_hiding(ops)),
            f"os.system by STACK_GLOBAL after a {name.upper()} that a scan following the stack wrongly "
            f"pairs with other strings", "refuse (UnpicklingError); scan reports os.system as refused",
            error="UnpicklingError", scan="ok", scan_flags=["os.system"])
    add("scan_hidden_extension", "zip", ckpt(None, pkl=b"\x80\x02\x82\x07)R."),
        "a global named by a copyreg extension code (EXT1)", "refuse (UnpicklingError); scan reports the "
        "extension code as refused", error="UnpicklingError", scan="ok", scan_flags=["<copyreg extension 7>"])
    # internal placeholders escaping load
    reconstruct = R(G("numpy.core.multiarray", "_reconstruct"), (G("numpy", "ndarray"), (0,), b"b"))
    state = (1, (2,), np_dtype("f4"), False, np.arange(2, dtype=np.float32).tobytes())
    pkl = (b"\x80\x04" + b"]" + b"K\x07q\x01" + b"0"  # memo {1: 7}: a gap at slot 0
           + emit(reconstruct, proto=False, stop=False) + b"\x94"  # MEMOIZE writes slot 1 (len(memo) was 1)
           + emit(state, proto=False, stop=False) + b"b" + b"a" + b"h\x01a.")
    add("memo_gap_placeholder", "zip", ckpt(None, pkl=pkl),
        "MEMOIZE into a memo with a gap, on a NumPy array BUILD completes later: the memo slot kept the "
        "placeholder", "load the list of the finished array twice (no placeholder)", load="ok",
        value=[np.arange(2, dtype=np.float32)] * 2)
    # bounded hashing
    add("hash_collision_keys", "zip",
        ckpt(None, pkl=b"\x80\x02}(" + b"".join(emit(i * (2**61 - 1), proto=False, stop=False) + b"N"
                                                for i in range(1, 3001)) + b"u."),
        "3000 int dict keys that all hash to 0 (i * (2**61 - 1)): quadratic dict building",
        "refuse (FormatError) past 64 equal hashes", error="FormatError", bomb=True)
    add("hash_collision_complex", "zip",
        ckpt(None, pkl=b"\x80\x02\x8f(" + b"".join(
            emit(R(G("builtins", "complex"), (float(1000003 * i), float(-i))), proto=False, stop=False)
            for i in range(1, 2001)) + b"\x90."),
        "2000 complex set items with one hash (a + 1000003 b constant)", "refuse (FormatError)",
        error="FormatError", bomb=True)
    add("billion_laughs_tuple_key", "zip",
        ckpt(None, pkl=b"\x80\x02}K\x01K\x02\x86q\x000" + b"h\x00h\x00\x86q\x000" * 40 + b"h\x00K\x00s."),
        "a dict key of 40 levels of t = (t, t): hashing it takes 2**40 steps", "refuse (FormatError)",
        error="FormatError", bomb=True)
    # memo "billion laughs": 2**40 references to one value, in a few hundred bytes
    add("billion_laughs_values", "zip", ckpt({"w": tensor(), "config": _billion_laughs("x", 40)}),
        "a value holding 2**40 references to one string through the memo: every tool that walks, "
        "compares, prints or converts values must count each object once (or stop)",
        "load it (the value shares its lists)", load="ok")
    add("billion_laughs_arrays", "zip", ckpt({"w": _billion_laughs(tensor(), 40)}),
        "2**40 paths to one array through the memo: a flat conversion would write it 2**40 times",
        "load it; convert refuses (FormatError)", load="ok", open="ok_or_error", verify="either")
    # views that repeat their data
    add("stride0_view_2_40", "zip", ckpt({"w": tensor(offset=0, size=(1 << 40,), stride=(0,))}),
        "a tensor of 2**40 elements over one float (stride 0): diff, convert, show and previews must not "
        "expand it", "load it as a stride-0 view", load="ok",
        value=Summary(dict=[["w", {"ndarray": "<f4", "shape": [1 << 40], "strides": [0]}]]))
    # values tools show
    extremes = np.array([1.7e308, -1.7e308, 0.0])
    add("float_extremes", "zip",
        ckpt({"w": tensor(storage_pid(numel=3, cls="DoubleStorage"), size=(3,), stride=(1,))},
             {"0": extremes.tobytes()}),
        "floats near ±1.7e308 in an array (a histogram's range overflows)", "load it; previews show it",
        load="ok", value={"w": extremes})
    add("huge_int_value", "zip", ckpt({"w": tensor(), "n": 10 ** 5000, "m": -(10 ** 5000)}),
        "ints of 5000 digits as values (str() of them raises ValueError)", "load them", load="ok",
        value={"w": w_value(), "n": 10 ** 5000, "m": -(10 ** 5000)})
    add("control_characters", "zip",
        ckpt({"w\x1b[2J\x1b]0;pwned\x07": tensor(), "ok\rFAKE": 1, "\u202eevil": "\x1b[31mred\x08"}),
        "names and values with ESC, BEL, CR, backspace and a bidi override: a CLI that prints them raw "
        "lets the file rewrite the terminal", "load them; the CLI prints them escaped", load="ok",
        value={"w\x1b[2J\x1b]0;pwned\x07": w_value(), "ok\rFAKE": 1, "\u202eevil": "\x1b[31mred\x08"})
    add("namespace_takeover", "zip",
        ckpt({"w": tensor(), "__builtins__": 1, "print": 2, "np": 3, "In": 4, "get_ipython": 5}),
        "entries named __builtins__, print, np, In, get_ipython: %ckpt load must not bind them",
        "load them; %ckpt load binds only w", load="ok",
        value={"w": w_value(), "__builtins__": 1, "print": 2, "np": 3, "In": 4, "get_ipython": 5})
    add("npz_path_traversal", "zip",
        ckpt({"../../nbckpt-canary-npz": tensor(), "/abs": tensor(), "a\\..\\b": tensor()}),
        "entry names with ../, a leading / and backslashes: converted to .npz as they are, unzip writes "
        "outside its folder", "load them; convert writes safe entry names", load="ok",
        value={"../../nbckpt-canary-npz": w_value(), "/abs": w_value(), "a\\..\\b": w_value()})
    add("colliding_dotted_names", "zip", ckpt({"a.b": tensor(), "a": {"b": tensor()}}),
        "two arrays that flatten to one dotted name (a.b)", "load them; diff and convert keep them apart "
        "(or refuse)", load="ok", value={"a.b": w_value(), "a": {"b": w_value()}})
    add("cuda_5000_digits", "zip", ckpt({"w": tensor(storage_pid(location="cuda:" + "9" * 5000))}),
        "a storage location cuda: followed by 5000 digits", "refuse (DeviceError or FormatError)",
        load="error")
    # verify must not pass what load refuses
    add("tensor_as_dict_key", "zip", ckpt(None, pkl=b"\x80\x02}" + emit(tensor(), proto=False, stop=False)
                                           + b"K\x01s."),
        "a tensor used as a dict key (NumPy arrays are unhashable)", "refuse (FormatError); verify reports it",
        error="FormatError")
    evil = emit({"w": PID(str(TAR_TENSOR)), "x": R(G("os", "system"), (f"touch {canary('tar_scan_member')}",))})
    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("sys_info", emit(dict(SYS_INFO, protocol_version=1000))), ("pickle", evil),
                           ("benign", emit({"w": 1}))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("pickle")
        info.type, info.linkname = tarfile.SYMTYPE, "benign"
        tar.addfile(info)
        for name, data in (("tensors", tar_checkpoint_member("tensors")), ("storages", tar_checkpoint_member("storages"))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    add("tar_scan_member", "tar", link.getvalue(),
        "two members named pickle: a regular file calling os.system, then a symlink to a benign pickle; "
        "a scan that reads the last entry sees only the benign one", "refuse (UnpicklingError); scan reads the "
        "member load runs and reports os.system", error="UnpicklingError", scan="ok", scan_flags=["os.system"])
    legacy_coo = R(G("torch._utils", "_rebuild_sparse_tensor"), (
        R(G("torch.serialization", "_get_layout"), ("torch.sparse_coo",)),
        (tensor(legacy_pid("0", 2, cls="LongStorage"), 0, (2, 1), (1, 1)),
         tensor(legacy_pid("1", 1), 0, (1,), (1,)), (2, 2), False)))
    legacy_sparse = {"0": (2, np.array([1, 0], np.int64).tobytes()), "1": (1, np.ones(1, np.float32).tobytes())}
    add("legacy_sparse_in_set", "legacy",
        legacy_stream({"s": R(G("builtins", "set"), ([legacy_coo],))}, legacy_sparse),
        "a legacy sparse tensor inside a set (it is built after the pickle ends, in place of a placeholder)",
        "refuse (a sparse matrix cannot be a set item); never return the placeholder", error="FormatError")
    add("legacy_sparse_as_key", "legacy", legacy_stream({"s": Raw(b"}" + emit(legacy_coo, proto=False, stop=False)
                                                                 + b"K\x01s")}, legacy_sparse),
        "a legacy sparse tensor as a dict key", "refuse; never return the placeholder", error="FormatError")
    _listing_cases()
    add("size1_stride_2_62", "zip", ckpt({"w": tensor(size=(1, 6), stride=(2**62, 1))}),
        "a size-1 dimension with a 2**62 stride (2**64 bytes: no 64-bit index holds it)",
        "refuse (FormatError); open and verify refuse it too", error="FormatError")
    conj_storage = np.array([1 + 2j, 3 + 4j, 5 + 6j], np.complex64)
    strided = np.lib.stride_tricks.as_strided
    add("legacy_conj_broadcast_2_36", "legacy",
        legacy_stream({"w": tensor(legacy_pid("0", 3, cls="ComplexFloatStorage"), 0, (2**36,), (0,),
                                   metadata={"conj": True}),
                       "s": tensor(legacy_pid("0", 3, cls="ComplexFloatStorage"), 1, (4,), (0,),
                                   metadata={"conj": True}),
                       "n": tensor(legacy_pid("1", 6), 0, (2**18, 2**18), (0, 0), metadata={"neg": True})},
                      {"0": (3, conj_storage.tobytes()), "1": (6, W_BYTES)}),
        "legacy conj() and neg views (math bits) of stride-0 views of 2**36 elements over a few bytes: the "
        "values are filled after the pickle, element by element (minutes)",
        "load them as stride-0 views, in the time a zip file takes", load="ok", bomb=True,
        value={"w": strided(np.array([1 - 2j], np.complex64), (2**36,), (0,)),
               "s": np.full(4, 3 - 4j, np.complex64),
               "n": strided(np.array([-0.0], np.float32), (2**18, 2**18), (0, 0))})


class _Meta:
    """Stands for an nbckpt MetaArray when computing the expected summary."""

    __module__ = "nbckpt.meta"

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)


def _with_attrs(mapping: Any, **attrs: Any) -> Any:
    for key, value in attrs.items():
        setattr(mapping, key, value)
    return mapping


def _nested_list(depth: int) -> list:
    root: list = []
    node = root
    for _ in range(depth - 1):
        child: list = []
        node.append(child)
        node = child
    return root


def _tar_pax_bomb() -> bytes:
    """A tar whose first header is a PAX extended header claiming 8 GiB (octal 77777777777)."""
    header = bytearray(512)
    header[0:9] = b"PaxHeader"
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"77777777777\0"  # 8 GiB - 1
    header[136:148] = b"00000000000\0"
    header[156:157] = b"x"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[148:156] = b" " * 8
    checksum = sum(header)
    header[148:156] = b"%06o\0 " % checksum
    return bytes(header) + b"\0" * 1024


def _tar_pax_bad_next() -> bytes:
    """A valid tar's members, then a PAX header whose member header is garbage."""
    good = tar_checkpoint()
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        tar.getmembers()
        end = tar.offset
    # tarfile writes no PAX header for these plain names: build one by hand.
    record = b"20 path=pickle_evil\n"
    header = bytearray(512)
    header[0:9] = b"PaxHeader"
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % len(record)
    header[136:148] = b"00000000000\0"
    header[156:157] = b"x"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    body = record + b"\0" * (512 - len(record))
    garbage = b"\xff" * 512
    return good[:end] + bytes(header) + body + garbage + b"\0" * 1024


def _torch_controls() -> None:
    try:
        import torch
    except ImportError:  # the other files do not need torch
        print("torch is not installed: skipping the torch-written controls", file=sys.stderr)
        return
    value = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.float64)}
    expect = {"w": w_value(), "b": np.zeros(3, np.float64)}
    buf = io.BytesIO()
    torch.save(value, buf)
    add("ok_torch", "zip", buf.getvalue(), "none: a state dict written by torch.save (control)", "load it",
        load="ok", value=expect)
    # One storage (two views of it): torch keys legacy storages by address and sorts the
    # keys, so with several storages their order would change from run to run.
    base = torch.arange(6.0)
    buf = io.BytesIO()
    torch.save({"w": base.view(2, 3), "tail": base[3:]}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    import pickletools

    keys = [arg for opcode, arg, _pos in pickletools.genops(data[data.rfind(b"\x80\x02]"):])
            if opcode.name == "BINUNICODE" and arg.isdigit()]
    for key in keys:  # the key is the storage's address: make it fixed
        data = data.replace(key.encode(), b"9" * len(key))
    add("ok_torch_legacy", "legacy", data, "none: a pre-1.6 stream written by torch.save (control)", "load it",
        load="ok", value={"w": w_value(), "tail": W[3:]})


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def manifest_entry(case: Case) -> dict:
    open_expect = case.open
    if open_expect is None:
        open_expect = case.load  # nbckpt.open reads every format load reads (issue 14)
    verify_expect = case.verify
    if verify_expect is None:
        verify_expect = {"ok": "ok", "error": "problems", "ok_or_error": "either"}[case.load]
    return {
        "file": case.file,
        "kind": case.kind,
        "group": case.group,
        "attack": case.attack,
        "must": case.must,
        "load": case.load,
        "error": case.error,
        "value": case.value,
        "open": open_expect,
        "verify": verify_expect,
        "scan": case.scan,
        "scan_flags": case.scan_flags,
        "bomb": case.bomb,
        "bytes": len(case.data),
        **({"shards": sorted(case.extra)} if case.extra else {}),
    }


def readme(entries: list[dict]) -> str:
    lines = [
        "# Hostile checkpoint corpus",
        "",
        "Generated by `build.py` (`python tests/data/attacks/build.py`, from the repository root, with the",
        "project's virtual environment); do not edit by hand. `tests/test_attacks.py` loads every file (torch",
        "zip, legacy stream and tar, safetensors, and sharded indexes in folders of their own) with",
        "`nbckpt.load` (default `weights_only=True`, and `mmap=True` for zip files), `nbckpt.open` (listing",
        "and reading every array), `nbckpt.scan` and `nbckpt.verify`, and the tools (`diff`, `convert`, every",
        "CLI command, `%ckpt load`, the notebook previews), each in a subprocess limited to 1.5 GiB",
        "of address space, and checks the outcome below. Errors must be nbckpt errors (`CheckpointError`:",
        "`FormatError`, `UnpicklingError`, `DeviceError`); anything else (another exception, `MemoryError`,",
        "a crash, a hang, more than 500 MB of memory) fails.",
        "",
        "Payloads that would do harm if run only touch `/tmp/nbckpt-canary-<name>`, import the module",
        f"`{CANARY_MODULE}`, or widen nbckpt's safe-globals list; the test checks none of that happens.",
        "`nbckpt.open` must do what `load` does for zip files and refuse legacy files (it reads zip archives",
        "only); `scan` must either report the globals listed (as refused) or raise an nbckpt error;",
        "`nbckpt.verify` must report problems (or raise an nbckpt error) for every file `load` refuses, and",
        "none for the files that load (the exceptions are marked in manifest.json).",
        "",
        "CRC-32: `nbckpt.load` (like torch) does not check CRCs by default, so a wrong CRC loads normally",
        "(`zip_wrong_crc`); `nbckpt.verify` (and `load(verify=True)`) must report it.",
        "",
        "Where nbckpt does not do what this README says yet, the test is a strict xfail with the reason",
        "(`KNOWN_BUGS` in tests/test_attacks.py).",
        "",
        "Columns: the file; what it attacks; what nbckpt must do (load expectation: `error` = an nbckpt",
        "error, of the class named; `ok` = loads to the value in manifest.json; `ok_or_error` = either).",
        "",
    ]
    current = None
    for e in entries:
        if e["group"] != current:
            current = e["group"]
            lines += ["", f"## {current}", "", "| file | attack | nbckpt must |", "| --- | --- | --- |"]
        must = e["must"]
        tag = e["load"] if e["load"] != "error" else f"error: {e['error']}"
        lines.append(f"| `{e['file']}` | {_md(e['attack'])} | {_md(must)} (`{tag}`) |")
    lines += ["", *ROUND_TWO_NOTES, ""]
    return "\n".join(lines)


#: What was tried against the tools around the loader (issue 15), including what did not get through.
ROUND_TWO_NOTES = [
    "## Round two: what was tried (and what it found)",
    "",
    "Tried as someone who wants past the loader, against every entry point, not only `load`:",
    "",
    "- **Fooling the scan.** MARK-consuming opcodes (TUPLE, POP_MARK, POP of a mark, FROZENSET, APPENDS,",
    "  SETITEMS) between the two strings and STACK_GLOBAL: the old scan popped one item too many and paired",
    "  `system` with another string (files `scan_hidden_*`). EXT1 codes (never shown before). The memo and",
    "  DUP to move strings; Python 2 names (`__builtin__`); protocol-0 GET/PUT arguments; FRAME lengths that",
    "  lie (Python's pure unpickler reads on past a frame, so the byte order is unchanged); UTF-8 vs latin-1",
    "  readings of GLOBAL names (the scan now reads them as pickle does). tests/test_scan.py checks the scan",
    "  against `pickle._Unpickler` itself on this corpus and on fuzzed opcode streams. The tar format's",
    "  `storages`/`tensors` members hold pickles that `load` runs: `scan` reads them too (closed, below).",
    "- **Placeholders escaping.** MEMOIZE into a memo with a gap recorded the wrong slot for an unfinished",
    "  NumPy array (`memo_gap_placeholder`): fixed. BUILD twice, DUP/BINGET of an unfinished object, APPEND",
    "  of one: refused as before.",
    "- **Hashing.** 3000 ints `i * (2**61 - 1)` (all hash 0), complex numbers with one hash, and a tuple key",
    "  repeated 2**40 times through the memo: refused (`nbckpt.pickling.keys`).",
    "- **Growth in the tools.** A value of 2**40 references (`billion_laughs_values`), 2**40 paths to one",
    "  array (`billion_laughs_arrays`), a stride-0 view of 2**40 elements: diff, convert, `ls --json`, `show`,",
    "  `%ckpt load` and the previews stay bounded (convert refuses past its stated limit).",
    "- **Terminal and notebook.** ESC/BEL/CR/bidi characters in names, values and file names; entries named",
    "  `__builtins__`, `print`, `np`, `In`; `../`, `/` and backslashes in names converted to .npz.",
    "- **Closed since** (no strict xfail is left in tests/test_attacks.py): `open`/`verify` accepted a tensor",
    "  used as a dict key (the listing's stand-ins were hashable; now they are not, as arrays are not);",
    "  `open` raised NumPy's ValueError on a 2**62 stride (the listing checks the 64-bit byte strides NumPy",
    "  checks); a `cuda:` location of 5000 digits (a typed DeviceError everywhere: `nbckpt.devices`",
    "  `check_saved_tag`); the tar's `storages`/`tensors` members are pickles that `scan` now reads (it runs",
    "  the load's own walk, keeping each pickle's bytes before it runs; files `tar_*_os_system`); a legacy",
    "  conj/neg view of 2**36 elements took minutes (the values are now filled over the storage elements",
    "  the view covers, as the zip path does: `legacy_conj_broadcast_2_36`).",
    "",
    "## Round two, again: a fresh attack on scan, verify, open and diff (what was tried)",
    "",
    "- **Listings that omit or merge entries.** Arrays 251 dicts deep (`deep_array_250`) and in an",
    "  OrderedDict's attribute (`array_in_attribute`): `open` refuses rather than leave them out (before:",
    "  the attribute's array was silently missing, so `diff` of two files differing only there said",
    "  \"identical\"). Two values flattening to one dotted name (`colliding_value_names`): `open` kept one of",
    "  them, so `diff` missed a change in the other; colliding entries are now named by their exact paths",
    "  (`['a.b']`, `['a']['b']`). Two NaN keys in one dict (`nan_keys`): refused, they cannot be named apart.",
    "- **Names that explode.** A tuple key of 2**18 leaves through the memo over 50 arrays (2.6 MB per",
    "  dotted name, 79 s to list; then 20 s to diff, as every dict keyed by a path rehashes it: such",
    "  keys are now refused by a listing past 10,000 hash steps), a 4 MiB string key (6 kB deflated) over",
    "  300 arrays (1.2 GB of names), a tuple key 600 deep (RecursionError writing its name): keys are now",
    "  written iteratively and bounded (long ones by a digest), and a listing's names are capped in total",
    "  (`nbckpt.formats.names`).",
    "- **verify says OK, load refuses.** A neg math bit on a bool tensor (`neg_bool_tensor`): the listing",
    "  recorded the bit, verify said OK, reading the array raised TypeError; the listing now asks NumPy as",
    "  the load does. Locations that are no device tag (control characters, 5000 digits) are refused by",
    "  the listing too, and verify runs the listing: a legacy file's own check maps every storage to the",
    "  host and never read its location (`legacy_location_nul`). A differential fuzz (byte flips in",
    "  data.pkl, load vs verify vs open, 145,000 files) found only these classes, plus two left open:",
    "  locations of other backends (`xla:0`; verify judges the file, so it adds a note that a default",
    "  load cannot place them here) and a Python 2 string that is not UTF-8 (a bare UnicodeDecodeError,",
    "  kept for torch compatibility; see the report of issue 15). Tried and held: a numpy `_reconstruct` never BUILT (as a value, in a set), a dtype",
    "  never BUILT, conj of a bool tensor (NumPy allows it, so do load and open).",
    "- **The pickle-free readers** (issue 14): safetensors headers that lie about sizes, offsets, dtypes and",
    "  shapes, header lengths past the end of the file or of 2**64 - 1, JSON nested 100,000 deep, numbers",
    "  of 5000 digits, duplicate names (`st_*`): refused before any data is read. An empty tensor with",
    "  2**62-long dimensions raised NumPy's ValueError (`st_shape_empty_huge`): refused as the pickle",
    "  formats refuse it. Sharded indexes naming `../`, absolute or climbing paths, missing shards, shards",
    "  without the tensor, indexes that name themselves or each other, deep JSON (`sharded_*`): refused;",
    "  an index naming a torch shard's nested dict raised KeyError (`sharded_nested_value`): refused; a",
    "  hostile torch shard made `scan` fail instead of reporting os.system (`sharded_shard_os_system`): the",
    "  shards are now described on first use, so `scan` reads their pickles without running them.",
    "- **Lines that forge output.** File names with a newline or CR (`nbckpt verify $'a\\nOK b.pt'`), shard",
    "  names with a newline in error messages (`sharded_newline_shard`), entry names in convert's notes and",
    "  in verify's problem lines: every CLI line now escapes them (the harness fails a run that prints a",
    "  line starting with a name's forged \"OK\").",
]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(out: Path = HERE) -> list[dict]:
    build_cases()
    files = {path: data for case in CASES for path, data in case.files().items()}
    for old in list(out.glob("*.pt")) + list(out.glob("*.tar")) + list(out.glob("*.safetensors")):
        if old.name not in files:
            old.unlink()
    for folder in out.glob("sharded_*"):  # the folders of sharded cases
        for old in folder.iterdir():
            if f"{folder.name}/{old.name}" not in files:
                old.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
    for path, data in files.items():
        (out / path).parent.mkdir(exist_ok=True)
        (out / path).write_bytes(data)
    entries = [manifest_entry(case) for case in CASES]
    (out / "manifest.json").write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    (out / "README.md").write_text(readme(entries))
    total = sum(len(c.data) for c in CASES)
    print(f"wrote {len(CASES)} files ({total / 1024:.0f} KiB) to {out}")
    return entries


if __name__ == "__main__":
    main()
