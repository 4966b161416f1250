"""Build torch's legacy checkpoints by hand, from the format's description.

torch 0.1–0.3 wrote a tar archive (``tarfile``, PAX format) whose members are,
in order (torch_format.md §2.2):

``sys_info``
    ``pickle({'protocol_version': 1000, 'little_endian': True, 'type_sizes': {...}})``.
``pickle``
    the object pickle; every tensor and storage is a persistent id ``str(key)``
    (a whole module class is the tuple ``(cls, source_file, source)``).
``tensors``
    ``pickle(count)``; per tensor ``pickle((key, storage_key, <GLOBAL torch XTensor>))``
    then ``int32 ndim``, 4 spare bytes, ``ndim`` int64 sizes, ``ndim`` int64
    strides and the int64 storage offset, all little-endian.
``storages``
    ``pickle(count)``; per storage ``pickle((key, location, <GLOBAL torch XStorage>))``
    then ``int64 numel`` and the raw little-endian elements; finally
    ``pickle([(view_key, root_key, offset, size), ...])``, the storage views.

Every pickle is protocol 2, as torch wrote it then; torch's classes appear as
``GLOBAL 'torch FloatStorage'``, so the pickles are emitted opcode by opcode by
:func:`dumps` (no torch needed). With ``py2=True`` text is written as Python 2
wrote ``str`` (``SHORT_BINSTRING``), which a reader decodes with its
``encoding``.

:func:`stream_checkpoint` writes the pre-1.6 stream format the same way, for
files torch never writes today (storage views, Python 2 strings, hostile sizes).

    >>> ckpt = TarCheckpoint()
    >>> root = ckpt.storage(np.arange(6, dtype=np.float32))
    >>> t = ckpt.tensor(root, (2, 3), (3, 1))
    >>> data = ckpt.build([t, ckpt.view(root, 2, 3)])
    >>> data[257:262]
    b'ustar'
"""

from __future__ import annotations

import io
import struct
import tarfile
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Global", "PersistentId", "Reduce", "Build", "Raw", "dumps",
    "TarCheckpoint", "stream_checkpoint", "storage_pid", "canary", "CANARY_CALLS",
]

#: The storage class torch 0.x pickled for each NumPy dtype.
STORAGE_TYPES = {
    np.dtype("<f8"): "DoubleStorage", np.dtype("<f4"): "FloatStorage", np.dtype("<f2"): "HalfStorage",
    np.dtype("<i8"): "LongStorage", np.dtype("<i4"): "IntStorage", np.dtype("<i2"): "ShortStorage",
    np.dtype("i1"): "CharStorage", np.dtype("u1"): "ByteStorage",
}

#: Calls of :func:`canary`, the global a hostile fixture names.
CANARY_CALLS: list[tuple] = []


def canary(*args: Any) -> str:
    """Stands for code a hostile pickle runs: records that it was called."""
    CANARY_CALLS.append(args)
    return "canary ran"


# -- a protocol-2 pickle writer, opcode by opcode ------------------------------------


@dataclass(frozen=True)
class Global:
    """``GLOBAL 'module name'``: a class or function named, never imported here."""

    module: str
    name: str


@dataclass(frozen=True)
class PersistentId:
    """``BINPERSID`` of ``pid`` (any picklable value)."""

    pid: Any


@dataclass(frozen=True)
class Reduce:
    """``func(*args)``: ``REDUCE``."""

    func: Any
    args: tuple


@dataclass(frozen=True)
class Build:
    """``obj`` then ``BUILD`` with ``state``."""

    obj: Any
    state: Any


@dataclass(frozen=True)
class Raw:
    """Opcodes inserted as they are (for hostile pickles)."""

    data: bytes


def dumps(obj: Any, *, py2: bool = False) -> bytes:
    """``obj`` as a protocol-2 pickle; ``py2=True`` writes ``str`` as Python 2 did."""
    out = bytearray(b"\x80\x02")
    _save(out, obj, py2)
    out += b"."
    return bytes(out)


def _save(out: bytearray, obj: Any, py2: bool) -> None:
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
            out += b"\x8a" + bytes([len(raw)]) + raw
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        encoded = obj.encode("utf-8")
        if py2:  # Python 2 pickled str (bytes) as BINSTRING, whatever they held
            _save_binstring(out, encoded)
        else:
            out += b"X" + struct.pack("<I", len(encoded)) + encoded
    elif isinstance(obj, bytes):
        _save_binstring(out, obj)  # Python 2 str
    elif isinstance(obj, tuple):
        if not obj:
            out += b")"
        elif len(obj) <= 3:
            for item in obj:
                _save(out, item, py2)
            out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(obj)]
        else:
            out += b"("
            for item in obj:
                _save(out, item, py2)
            out += b"t"
    elif isinstance(obj, list):
        out += b"]"
        if obj:
            out += b"("
            for item in obj:
                _save(out, item, py2)
            out += b"e"
    elif isinstance(obj, dict):
        out += b"}"
        if obj:
            out += b"("
            for key, value in obj.items():
                _save(out, key, py2)
                _save(out, value, py2)
            out += b"u"
    elif isinstance(obj, Global):
        out += b"c" + obj.module.encode("ascii") + b"\n" + obj.name.encode("ascii") + b"\n"
    elif isinstance(obj, PersistentId):
        _save(out, obj.pid, py2)
        out += b"Q"
    elif isinstance(obj, Reduce):
        _save(out, obj.func, py2)
        _save(out, tuple(obj.args), py2)
        out += b"R"
    elif isinstance(obj, Build):
        _save(out, obj.obj, py2)
        _save(out, obj.state, py2)
        out += b"b"
    elif isinstance(obj, Raw):
        out += obj.data
    else:
        raise TypeError(f"legacy_tar.dumps cannot write {type(obj).__name__}")


def _save_binstring(out: bytearray, data: bytes) -> None:
    if len(data) < 256:
        out += b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING
    else:
        out += b"T" + struct.pack("<i", len(data)) + data  # BINSTRING


def _sys_info(version: int) -> dict:
    return {"protocol_version": version, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _le_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


# -- tar (torch 0.1 to 0.3) -----------------------------------------------------------


class TarCheckpoint:
    """Storages, tensors and storage views of one tar checkpoint, then its bytes.

    Keys stand for the ``_cdata`` pointers torch used: distinct ints. Each
    method returns the :class:`PersistentId` the object pickle uses for it.
    """

    def __init__(self, *, py2: bool = False, first_key: int = 94_000_000_000_000) -> None:
        self.py2 = py2
        self._next = first_key
        self.storages: list[tuple[int, str, Any, bytes, int]] = []  # key, location, type, data, numel
        self.tensors: list[tuple[int, int, Any, tuple, tuple, int]] = []
        self.views: list[tuple[int, int, int, int]] = []
        self.sys_info = _sys_info(1000)

    def _key(self) -> int:
        self._next += 16
        return self._next

    @staticmethod
    def key_of(pid: PersistentId) -> int:
        return int(pid.pid)

    def pid(self, key: int) -> PersistentId:
        return PersistentId(str(key))

    def storage(self, array: np.ndarray, *, location: str = "cpu", storage_type: Any = None,
                numel: int | None = None, data: bytes | None = None) -> PersistentId:
        """A root storage holding ``array``'s elements (``numel``/``data`` override, for corrupt files)."""
        array = np.asarray(array).reshape(-1)
        if storage_type is None:
            storage_type = Global("torch", STORAGE_TYPES[array.dtype.newbyteorder("<")])
        key = self._key()
        self.storages.append((key, location, storage_type,
                              _le_bytes(array) if data is None else data,
                              array.size if numel is None else numel))
        return self.pid(key)

    def view(self, root: PersistentId, offset: int, size: int) -> PersistentId:
        """A storage view: ``size`` elements of ``root`` from element ``offset``."""
        key = self._key()
        self.views.append((key, self.key_of(root), offset, size))
        return self.pid(key)

    def tensor(self, storage: PersistentId, sizes: tuple, strides: tuple, offset: int = 0,
               tensor_type: Any = Global("torch", "FloatTensor")) -> PersistentId:
        key = self._key()
        self.tensors.append((key, self.key_of(storage), tensor_type, tuple(sizes), tuple(strides), offset))
        return self.pid(key)

    def members(self, obj: Any) -> dict[str, bytes]:
        """The four members' bytes, ``obj`` being the pickled object (with persistent ids)."""
        py2 = self.py2
        tensors = bytearray(dumps(len(self.tensors), py2=py2))
        for key, storage_key, tensor_type, sizes, strides, offset in self.tensors:
            tensors += dumps((key, storage_key, tensor_type), py2=py2)
            tensors += struct.pack("<i", len(sizes)) + b"\0" * 4
            tensors += struct.pack(f"<{len(sizes)}q", *sizes) + struct.pack(f"<{len(strides)}q", *strides)
            tensors += struct.pack("<q", offset)
        storages = bytearray(dumps(len(self.storages), py2=py2))
        for key, location, storage_type, data, numel in self.storages:
            storages += dumps((key, location, storage_type), py2=py2)
            storages += struct.pack("<q", numel) + data
        storages += dumps(list(self.views), py2=py2)
        return {
            "sys_info": dumps(self.sys_info, py2=py2),
            "pickle": dumps(obj, py2=py2),
            "tensors": bytes(tensors),
            "storages": bytes(storages),
        }

    def build(self, obj: Any, *, members: dict[str, bytes] | None = None) -> bytes:
        """The tar checkpoint's bytes; ``members`` replaces some members (corrupt files)."""
        contents = self.members(obj)
        contents.update(members or {})
        return tar_bytes(contents)


def tar_bytes(contents: dict[str, bytes]) -> bytes:
    """A PAX tar archive of ``contents``, in order, as torch's ``_add_to_tar`` wrote it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# -- the pre-1.6 stream format ----------------------------------------------------------

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


def storage_pid(storage_type: str, key: str, numel: int, *, location: str = "cpu",
                view: tuple | None = None, module: str = "torch") -> PersistentId:
    """``('storage', <GLOBAL torch XStorage>, key, location, numel, view_metadata)``."""
    return PersistentId(("storage", Global(module, storage_type), key, location, numel, view))


def stream_checkpoint(obj: Any, storages: dict[str, bytes], *, py2: bool = False,
                      numels: dict[str, int] | None = None, keys: list[str] | None = None,
                      version: int = 1001) -> bytes:
    """One pre-1.6 stream checkpoint: header, ``obj``'s pickle, key list, storage data.

    ``storages`` maps keys to their raw little-endian bytes; ``numels`` gives
    each storage's element count as written before its data (default: bytes / 4,
    float32); ``keys`` overrides the key list (default: sorted keys).
    """
    numels = numels or {}
    keys = sorted(storages) if keys is None else keys
    out = bytearray()
    out += dumps(MAGIC_NUMBER, py2=py2) + dumps(version, py2=py2) + dumps(_sys_info(version), py2=py2)
    out += dumps(obj, py2=py2)
    out += dumps(list(keys), py2=py2)
    for key in keys:
        data = storages.get(key, b"")
        out += struct.pack("<q", numels.get(key, len(data) // 4)) + data
    return bytes(out)
