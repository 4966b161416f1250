"""Write ``data.pkl``: a protocol-2 pickle that references torch's globals by name.

The standard pickler cannot write ``torch._utils._rebuild_tensor_v2`` without
importing torch (it checks that every global it writes can be imported), so
nbckpt emits the opcodes itself. It only ever has to write the kinds of objects
nbckpt saves, and writing them directly lets it (1) validate the whole object
before any byte reaches the file, naming where an unsupported object sits, and
(2) spend a few microseconds per array rather than the generic pickler's tens.

The opcodes are the ones ``pickle.Pickler(protocol=2)`` and torch emit, with the
same memoization (``BINPUT``/``BINGET`` by object identity), so the same object
saved twice loads as one object, and recursive lists and dicts work.

    >>> import numpy as np
    >>> obj = {"w": np.zeros(2, np.float32)}
    >>> pickler = CheckpointPickler(SavePlan.build(obj))
    >>> b"_rebuild_tensor_v2" in pickler.dumps(obj)
    True
    >>> [(s.key, s.dtype.name, s.numel) for s in pickler.storages]
    [('0', 'float32', 2)]
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..backends import is_cupy_array
from ..format import dtypes as torch_dtypes
from ..meta import MetaArray
from ..sparse import SparseParts, is_sparse, to_torch_parts
from .storages import PlannedStorage, StoragePlanner

__all__ = ["SavePlan", "CheckpointPickler", "UNSUPPORTED_HINT", "skipped_data"]

UNSUPPORTED_HINT = (
    "nbckpt saves NumPy and CuPy arrays, NumPy scalars, scipy.sparse arrays, "
    "nbckpt.MetaArray, dict, OrderedDict, list, tuple, namedtuple, set, str, bytes, "
    "bytearray, int, float, complex, bool and None"
)

# Opcodes of pickle protocol 2 (names as in the pickle module).
MARK, STOP, NONE = b"(", b".", b"N"
NEWTRUE, NEWFALSE = b"\x88", b"\x89"
BININT, BININT1, BININT2 = b"J", b"K", b"M"
LONG1, LONG4, BINFLOAT = b"\x8a", b"\x8b", b"G"
BINUNICODE = b"X"
EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3 = b")", b"t", b"\x85", b"\x86", b"\x87"
EMPTY_LIST, APPEND, APPENDS = b"]", b"a", b"e"
EMPTY_DICT, SETITEM, SETITEMS = b"}", b"s", b"u"
GLOBAL, REDUCE, BUILD, NEWOBJ = b"c", b"R", b"b", b"\x81"
BINPERSID = b"Q"
BINPUT, LONG_BINPUT, BINGET, LONG_BINGET = b"q", b"r", b"h", b"j"
PROTO2 = b"\x80\x02"

_BATCH = 1000  # items per APPENDS/SETITEMS, as pickle writes them
_pack_float = struct.Struct(">d").pack
_pack_i4 = struct.Struct("<i").pack
_pack_u4 = struct.Struct("<I").pack


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and type(obj) is not tuple and hasattr(type(obj), "_fields")


@dataclass
class SavePlan:
    """Everything a save needs, worked out before any byte is written.

    ``build`` walks the object once: it rejects unsupported objects with a
    ``TypeError`` naming their place (``obj['opt']['fn']``), turns NumPy scalars
    into 0-d arrays, and plans the storages of all arrays.
    """

    root: object
    planner: StoragePlanner
    scalars: dict[int, np.ndarray] = field(default_factory=dict)
    sparse: dict[int, "SparseParts"] = field(default_factory=dict)

    @classmethod
    def build(cls, obj) -> "SavePlan":
        plan = cls(obj, StoragePlanner())
        try:
            plan._walk(obj, "obj", set())
        except RecursionError:
            raise ValueError(
                "the object is nested too deeply to save (Python's recursion limit); "
                "flatten it or raise sys.setrecursionlimit"
            ) from None
        plan.planner.finish()
        return plan

    def _walk(self, obj, path: str, active: set[int]) -> None:
        t = type(obj)
        if obj is None or t in (bool, int, float, complex, str, bytes, bytearray):
            return
        if isinstance(obj, np.ndarray):
            self._add_array(obj, path)
            return
        if isinstance(obj, np.generic):
            if id(obj) not in self.scalars:
                self.scalars[id(obj)] = scalar = np.asarray(obj)
                self._add_array(scalar, path)
            return
        if isinstance(obj, np.dtype):
            if torch_dtypes.for_numpy(obj) is None:
                raise TypeError(f"cannot save the dtype {obj} at {path}: torch has no such dtype")
            return
        if is_cupy_array(obj):
            self._add_array(obj, path)
            return
        if isinstance(obj, MetaArray):
            if torch_dtypes.for_numpy(obj.dtype) is None:
                raise TypeError(f"cannot save the meta array at {path}: dtype {obj.dtype} has no torch equivalent")
            return
        if is_sparse(obj):
            if id(obj) not in self.sparse:
                self.sparse[id(obj)] = parts = to_torch_parts(obj)
                for i, array in enumerate(parts.arrays):
                    self._add_array(array, f"{path}<{parts.layout} part {i}>")
            return
        if t in (dict, OrderedDict, list, tuple, set) or _is_namedtuple(obj):
            if id(obj) in active:
                if t is tuple or _is_namedtuple(obj):
                    raise ValueError(f"cannot save the tuple at {path}: it contains itself")
                return  # a recursive list or dict: the pickle memo handles it
            active.add(id(obj))
            if t in (dict, OrderedDict):
                for key, value in obj.items():
                    self._check_key(key, path)
                    self._walk(value, f"{path}[{key!r}]", active)
                if t is OrderedDict:
                    for name, value in vars(obj).items():
                        self._walk(value, f"{path}.{name}", active)
            elif t is set:
                for item in obj:
                    self._walk(item, f"{path}{{{item!r}}}", active)
            else:
                for i, item in enumerate(obj):
                    self._walk(item, f"{path}[{i}]", active)
            active.discard(id(obj))
            return
        raise TypeError(
            f"cannot save an object of type {t.__module__}.{t.__qualname__} at {path}: "
            f"{UNSUPPORTED_HINT}"
        )

    def _check_key(self, key, path: str) -> None:
        t = type(key)
        if key is None or t in (bool, int, float, complex, str, bytes):
            return
        if t is tuple or _is_namedtuple(key):
            for item in key:
                self._check_key(item, path)
            return
        raise TypeError(
            f"cannot save a dict key of type {t.__module__}.{t.__qualname__} in {path}: "
            f"keys must be str, bytes, numbers, None or tuples of them"
        )

    def _add_array(self, array, path: str) -> None:
        try:
            self.planner.add(array)
        except TypeError as err:
            raise TypeError(f"cannot save the array at {path}: {err}") from None


class CheckpointPickler:
    """Emit the protocol-2 pickle of an object validated by :class:`SavePlan`.

    ``persistent_id`` names a storage the way torch does; storages get their
    record keys ("0", "1", ...) in the order the pickle first mentions them,
    available afterwards as ``storages``.
    """

    def __init__(self, plan: SavePlan, *, legacy: bool = False) -> None:
        self._plan = plan
        self._legacy = legacy  # the pre-1.6 format adds view_metadata (None) to each id
        self._out: list[bytes] = []
        self._memo: dict[object, tuple[int, object]] = {}
        self._next_memo = 0
        self.storages: list[PlannedStorage] = []

    def dumps(self, obj) -> bytes:
        self._out = [PROTO2]
        self._save(obj)
        self._out.append(STOP)
        return b"".join(self._out)

    # -- persistent ids ------------------------------------------------------

    def persistent_id(self, storage: PlannedStorage) -> tuple:
        """The 5-tuple torch writes for a storage; assigns its key on first use."""
        if storage.key is None:
            storage.key = str(len(self.storages))
            self.storages.append(storage)
        dtype = storage.dtype
        if dtype.uses_v3:
            cls = _UNTYPED_STORAGE
            numel = storage.nbytes
        else:
            cls = _storage_global(dtype.storage_class)
            numel = storage.numel
        if self._legacy:
            return ("storage", cls, storage.key, storage.location, numel, None)
        return ("storage", cls, storage.key, storage.location, numel)

    # -- memo ------------------------------------------------------------------
    # Every object is memoized as pickle (and torch) does, so the bytes match
    # torch's; objects that can never be met again (the argument tuples of an
    # array) get a memo slot number but no entry in the lookup table.

    def _put(self, obj) -> None:
        index = self._next_memo
        self._next_memo = index + 1
        self._memo[id(obj)] = (index, obj)
        self._out.append(BINPUT + bytes((index,)) if index < 256 else LONG_BINPUT + _pack_u4(index))

    def _put_anonymous(self) -> None:
        index = self._next_memo
        self._next_memo = index + 1
        self._out.append(BINPUT + bytes((index,)) if index < 256 else LONG_BINPUT + _pack_u4(index))

    def _get(self, obj) -> bool:
        entry = self._memo.get(id(obj))
        if entry is None:
            return False
        index = entry[0]
        self._out.append(BINGET + bytes((index,)) if index < 256 else LONG_BINGET + _pack_u4(index))
        return True

    def _save_str(self, text: str) -> None:
        if not self._get(text):
            encoded = text.encode("utf-8", "surrogatepass")
            self._out.append(BINUNICODE + _pack_u4(len(encoded)) + encoded)
            self._put(text)

    def _save_int_tuple(self, values: tuple) -> None:
        """A fresh tuple of ints (a shape or strides), memoized like any tuple."""
        n = len(values)
        if n == 0:
            self._out.append(EMPTY_TUPLE)
            return
        if n > 3:
            self._out.append(MARK)
        for value in values:
            self._save_int(value)
        self._out.append((TUPLE1, TUPLE2, TUPLE3)[n - 1] if n <= 3 else TUPLE)
        self._put_anonymous()

    # -- objects ---------------------------------------------------------------

    def _save(self, obj) -> None:
        t = type(obj)
        if obj is None:
            self._out.append(NONE)
        elif t is bool:
            self._out.append(NEWTRUE if obj else NEWFALSE)
        elif t is int:
            self._save_int(obj)
        elif t is float:
            self._out.append(BINFLOAT + _pack_float(obj))
        elif t is str:
            self._save_str(obj)
        elif t is _Global:
            self._save_global(obj)
        elif self._get(obj):
            return
        elif isinstance(obj, np.ndarray) or is_cupy_array(obj):
            self._save_array(obj)
        elif isinstance(obj, np.generic):
            self._save_array(self._plan.scalars[id(obj)], memo_as=obj)
        elif t is dict:
            self._out.append(EMPTY_DICT)
            self._put(obj)
            self._save_items(obj)
        elif t is list:
            self._out.append(EMPTY_LIST)
            self._put(obj)
            self._save_list_items(obj)
        elif t is tuple:
            self._save_tuple(obj)
        elif t is OrderedDict:
            self._save_reduce(_Global("collections", "OrderedDict"), (), obj)
            self._save_items(obj)
            state = vars(obj)
            if state:
                self._save(dict(state))
                self._out.append(BUILD)
        elif t is set:
            self._save_reduce(_Global("__builtin__", "set"), (list(obj),), obj)
        elif t is complex:
            self._save_reduce(_Global("__builtin__", "complex"), (obj.real, obj.imag), obj)
        elif t is bytes:
            self._save_reduce(_Global("_codecs", "encode"), (obj.decode("latin1"), "latin1"), obj)
        elif t is bytearray:
            self._save_reduce(_Global("__builtin__", "bytearray"), (bytes(obj),), obj)
        elif _is_namedtuple(obj):
            cls = type(obj)
            self._save_global(_Global(cls.__module__, cls.__qualname__))
            self._save(tuple(obj))
            self._out.append(NEWOBJ)
            self._put(obj)
        elif isinstance(obj, np.dtype):
            self._save_global(_Global("torch", torch_dtypes.for_numpy(obj).name))
        elif t is MetaArray:
            self._save_global(_Global("torch._utils", "_rebuild_meta_tensor_no_storage"))
            self._save((obj.dtype, obj.shape, obj.strides, False))
            self._out.append(REDUCE)
            self._put(obj)
        elif id(obj) in self._plan.sparse:
            self._save_sparse(obj, self._plan.sparse[id(obj)])
        elif t is _TorchSize:
            self._save_reduce(_Global("torch", "Size"), (tuple(obj),), obj)
        else:  # SavePlan.build rejects everything else first
            raise TypeError(f"cannot pickle {t.__qualname__}")

    def _save_int(self, value: int) -> None:
        out = self._out
        if 0 <= value < 256:
            out.append(BININT1 + bytes((value,)))
        elif 0 <= value < 65536:
            out.append(BININT2 + value.to_bytes(2, "little"))
        elif -(2**31) <= value < 2**31:
            out.append(BININT + _pack_i4(value))
        else:
            n = (value.bit_length() + 8) // 8  # room for the sign bit
            encoded = value.to_bytes(n, "little", signed=True)
            # pickle.encode_long drops one redundant sign byte where it can.
            if n > 1 and encoded[-1] == 0xFF and encoded[-2] & 0x80:
                encoded = encoded[:-1]
            if len(encoded) < 256:
                out.append(LONG1 + bytes((len(encoded),)) + encoded)
            else:
                out.append(LONG4 + _pack_i4(len(encoded)) + encoded)

    def _save_global(self, glob: "_Global") -> None:
        entry = self._memo.get(glob)  # globals are memoized by name (_Global is hashable)
        if entry is not None:
            index = entry[0]
            self._out.append(BINGET + bytes((index,)) if index < 256 else LONG_BINGET + _pack_u4(index))
            return
        self._out.append(GLOBAL + f"{glob.module}\n{glob.name}\n".encode("ascii"))
        index = self._next_memo
        self._next_memo = index + 1
        self._memo[glob] = (index, glob)
        self._out.append(BINPUT + bytes((index,)) if index < 256 else LONG_BINPUT + _pack_u4(index))

    def _save_reduce(self, func: "_Global", args: tuple, obj) -> None:
        self._save_global(func)
        self._save(args)
        self._out.append(REDUCE)
        self._put(obj)

    def _save_tuple(self, obj: tuple) -> None:
        n = len(obj)
        if n == 0:
            self._out.append(EMPTY_TUPLE)
            return
        if n > 3:
            self._out.append(MARK)
        for item in obj:
            self._save(item)
        self._out.append((TUPLE1, TUPLE2, TUPLE3)[n - 1] if n <= 3 else TUPLE)
        self._put(obj)

    def _save_list_items(self, items: list) -> None:
        for start in range(0, len(items), _BATCH):
            batch = items[start : start + _BATCH]
            if len(batch) == 1:
                self._save(batch[0])
                self._out.append(APPEND)
            else:
                self._out.append(MARK)
                for item in batch:
                    self._save(item)
                self._out.append(APPENDS)

    def _save_items(self, mapping: dict) -> None:
        items = list(mapping.items())
        for start in range(0, len(items), _BATCH):
            batch = items[start : start + _BATCH]
            if len(batch) == 1:
                self._save(batch[0][0])
                self._save(batch[0][1])
                self._out.append(SETITEM)
            else:
                self._out.append(MARK)
                for key, value in batch:
                    self._save(key)
                    self._save(value)
                self._out.append(SETITEMS)

    def _save_sparse(self, obj, parts: "SparseParts") -> None:
        """``_rebuild_sparse_tensor(_get_layout('torch.sparse_csr'), (parts..., size))``."""
        self._save_global(_Global("torch._utils", "_rebuild_sparse_tensor"))
        self._save_reduce(_Global("torch.serialization", "_get_layout"), (f"torch.{parts.layout}",), _Layout())
        data = parts.arrays + (_TorchSize(parts.size),)
        if parts.is_coalesced is not None:
            data += (parts.is_coalesced,)
        self._save(data)
        self._out.append(TUPLE2)
        self._put(parts)
        self._out.append(REDUCE)
        self._put(obj)

    def _save_array(self, array, *, memo_as=None) -> None:
        """``_rebuild_tensor_v2(pid, offset, size, stride, False, OrderedDict())`` (v3: + dtype).

        Written opcode by opcode (the hot path of a save with many arrays); the
        bytes are those pickle writes for the same tuple.
        """
        view = self._plan.planner.planned(array)
        storage = view.storage
        dtype = storage.dtype
        out = self._out
        self._save_global(_REBUILD_V3 if dtype.uses_v3 else _REBUILD_V2)
        out.append(MARK)
        # The persistent id tuple, then BINPERSID.
        pid = self.persistent_id(storage)
        out.append(MARK)
        self._save_str(pid[0])
        self._save_global(pid[1])
        self._save_str(pid[2])
        self._save_str(pid[3])
        self._save_int(pid[4])
        if self._legacy:
            out.append(NONE)
        out.append(TUPLE)
        self._put_anonymous()
        out.append(BINPERSID)
        self._save_int(view.offset)
        self._save_int_tuple(view.shape)
        self._save_int_tuple(view.strides)
        out.append(NEWFALSE)  # requires_grad
        self._save_global(_ORDERED_DICT)  # the (empty) backward hooks
        out.append(EMPTY_TUPLE + REDUCE)
        self._put_anonymous()
        if dtype.uses_v3:
            self._save_global(_torch_dtype_global(dtype.name))
        out.append(TUPLE)
        self._put_anonymous()  # the arguments tuple
        out.append(REDUCE)
        self._put(memo_as if memo_as is not None else array)


@dataclass(frozen=True)
class _Global:
    """A global written by name (``GLOBAL module\\nname\\n``), never imported."""

    module: str
    name: str


class _Layout:
    """Stands for the layout object ``_get_layout`` returns."""


class _TorchSize(tuple):
    """A size written as ``torch.Size`` (sparse tensors need one)."""


_REBUILD_V2 = _Global("torch._utils", "_rebuild_tensor_v2")
_REBUILD_V3 = _Global("torch._utils", "_rebuild_tensor_v3")
_ORDERED_DICT = _Global("collections", "OrderedDict")
_UNTYPED_STORAGE = _Global("torch.storage", torch_dtypes.UNTYPED_STORAGE)


@functools.lru_cache(maxsize=None)
def _storage_global(name: str) -> _Global:
    return _Global("torch", name)


@functools.lru_cache(maxsize=None)
def _torch_dtype_global(name: str) -> _Global:
    return _Global("torch", name)


def skipped_data(nbytes: int):
    """Zero bytes standing in for a storage's data in a ``save(..., skip_data=True)``.

    The region is reserved in the file (so the data can be written into it
    later, at the record's offset) but nothing is read from the array, and a
    device array is never copied to the host. An anonymous mapping reads as
    zeros without committing memory, so this costs nothing even for many GiB.

        >>> bytes(skipped_data(4)), len(skipped_data(0))
        (b'\\x00\\x00\\x00\\x00', 0)
    """
    if nbytes == 0:
        return b""
    return mmap.mmap(-1, nbytes)
