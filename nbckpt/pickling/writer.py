"""Write ``data.pkl``: a protocol-2 pickle that references torch's globals by name.

The standard pickler cannot write ``torch._utils._rebuild_tensor_v2`` without
importing torch (it checks that every global it writes can be imported), so
nbckpt emits the opcodes itself. It only ever has to write the kinds of objects
nbckpt saves, which :class:`~.saveplan.SavePlan` has checked before any byte
reaches the file, and writing them directly lets it spend about a microsecond
per array rather than the generic pickler's tens (see
:meth:`CheckpointPickler._save_array`).

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
from dataclasses import dataclass

import numpy as np

from ..backends import is_cupy_array
from ..format import dtypes as torch_dtypes
from ..meta import MetaArray
from ..sparse import SparseParts
from .saveplan import UNSUPPORTED_HINT, SavePlan, is_namedtuple
from .storages import PlannedStorage, PlannedView

__all__ = ["SavePlan", "CheckpointPickler", "UNSUPPORTED_HINT", "skipped_data"]

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


class CheckpointPickler:
    """Emit the protocol-2 pickle of an object validated by :class:`SavePlan`.

    ``persistent_id`` names a storage the way torch does; storages get their
    record keys ("0", "1", ...) in the order the pickle first mentions them,
    available afterwards as ``storages``.

    Arrays are the hot path of a save with many of them: once the globals and
    strings every array refers to are in the memo, an array is written from
    cached pieces (:meth:`_save_array`) instead of opcode by opcode
    (:meth:`_save_array_opcodes`, the reference). ``fast_arrays = False``
    writes every array opcode by opcode; the tests check that both give the
    same bytes.
    """

    fast_arrays = True

    def __init__(self, plan: SavePlan, *, legacy: bool = False) -> None:
        self._plan = plan
        self._legacy = legacy  # the pre-1.6 format adds view_metadata (None) to each id
        self._buf = bytearray()
        self._write = self._buf.extend
        self._memo: dict[int, int] = {}  # id(object) -> memo index
        self._alive: list[object] = []  # what the memo refers to by id stays alive (ids stay unique)
        self._globals: dict[_Global, int] = {}  # globals are memoized by name
        self._next_memo = 0
        self._heads: dict[tuple[str, int], tuple[bytes, bytes, bytes, bool]] = {}
        self._tuple_codes: dict[tuple, bytes] = {}
        self._layouts: dict[tuple, tuple] = {}
        self._repeated = plan.repeated
        self.storages: list[PlannedStorage] = []

    def dumps(self, obj) -> bytes:
        self._buf = bytearray(PROTO2)
        self._write = self._buf.extend
        self._save(obj)
        self._write(STOP)
        data = bytes(self._buf)
        self._buf = bytearray()
        self._write = self._buf.extend
        return data

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
            return (_STORAGE, cls, storage.key, storage.location, numel, None)
        return (_STORAGE, cls, storage.key, storage.location, numel)

    # -- memo ------------------------------------------------------------------
    # Every object is memoized as pickle (and torch) does, so the bytes match
    # torch's; objects that can never be met again (the argument tuples of an
    # array) get a memo slot number but no entry in the lookup table.

    def _put(self, obj) -> None:
        index = self._next_memo
        self._next_memo = index + 1
        self._memo[id(obj)] = index
        self._alive.append(obj)
        self._write(_put_code(index))

    def _put_anonymous(self) -> None:
        index = self._next_memo
        self._next_memo = index + 1
        self._write(_put_code(index))

    def _get(self, obj) -> bool:
        index = self._memo.get(id(obj))
        if index is None:
            return False
        self._write(_get_code(index))
        return True

    def _save_str(self, text: str) -> None:
        index = self._memo.get(id(text))
        if index is not None:
            self._write(_get_code(index))
            return
        encoded = text.encode("utf-8", "surrogatepass")
        self._write(_pack_op_u4(BINUNICODE, len(encoded)))
        self._write(encoded)
        self._put(text)

    def _save_int_tuple(self, values: tuple) -> None:
        """A fresh tuple of ints (a shape or strides), memoized like any tuple."""
        self._write(self._int_tuple_code(values))
        if values:
            self._put_anonymous()

    def _int_tuple_code(self, values: tuple) -> bytes:
        """The opcodes of a tuple of ints, without its memo slot (cached: shapes repeat)."""
        code = self._tuple_codes.get(values)
        if code is None:
            n = len(values)
            if n == 0:
                code = EMPTY_TUPLE
            else:
                body = b"".join([_int_code(v) for v in values])
                code = MARK + body + TUPLE if n > 3 else body + (TUPLE1, TUPLE2, TUPLE3)[n - 1]
            if len(self._tuple_codes) < _TUPLE_CACHE:
                self._tuple_codes[values] = code
        return code

    # -- objects ---------------------------------------------------------------

    def _save(self, obj) -> None:
        t = type(obj)
        if obj is None:
            self._write(NONE)
        elif t is bool:
            self._write(NEWTRUE if obj else NEWFALSE)
        elif t is int:
            self._write(_int_code(obj))
        elif t is float:
            self._write(BINFLOAT + _pack_float(obj))
        elif t is str:
            self._save_str(obj)
        elif t is _Global:
            self._save_global(obj)
        elif self._get(obj):
            return
        elif t is np.ndarray or isinstance(obj, np.ndarray) or is_cupy_array(obj):
            self._save_array(obj)
        elif isinstance(obj, np.generic):
            self._save_array(self._plan.scalars[id(obj)], memo_as=obj)
        elif t is dict:
            self._write(EMPTY_DICT)
            self._put(obj)
            self._save_items(obj)
        elif t is list:
            self._write(EMPTY_LIST)
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
                self._write(BUILD)
        elif t is set:
            self._save_reduce(_Global("__builtin__", "set"), (list(obj),), obj)
        elif t is complex:
            self._save_reduce(_Global("__builtin__", "complex"), (obj.real, obj.imag), obj)
        elif t is bytes:
            self._save_reduce(_Global("_codecs", "encode"), (obj.decode("latin1"), "latin1"), obj)
        elif t is bytearray:
            self._save_reduce(_Global("__builtin__", "bytearray"), (bytes(obj),), obj)
        elif is_namedtuple(obj):
            cls = type(obj)
            self._save_global(_Global(cls.__module__, cls.__qualname__))
            self._save(tuple(obj))
            self._write(NEWOBJ)
            self._put(obj)
        elif isinstance(obj, np.dtype):
            self._save_global(_Global("torch", torch_dtypes.for_numpy(obj).name))
        elif t is MetaArray:
            self._save_global(_Global("torch._utils", "_rebuild_meta_tensor_no_storage"))
            self._save((obj.dtype, obj.shape, obj.strides, False))
            self._write(REDUCE)
            self._put(obj)
        elif id(obj) in self._plan.sparse:
            self._save_sparse(obj, self._plan.sparse[id(obj)])
        elif t is _TorchSize:
            self._save_reduce(_Global("torch", "Size"), (tuple(obj),), obj)
        else:  # SavePlan.build rejects everything else first
            raise TypeError(f"cannot pickle {t.__qualname__}")

    def _save_global(self, glob: "_Global") -> None:
        index = self._globals.get(glob)
        if index is not None:
            self._write(_get_code(index))
            return
        self._write(GLOBAL + f"{glob.module}\n{glob.name}\n".encode("ascii"))
        index = self._next_memo
        self._next_memo = index + 1
        self._globals[glob] = index
        self._write(_put_code(index))

    def _save_reduce(self, func: "_Global", args: tuple, obj) -> None:
        self._save_global(func)
        self._save(args)
        self._write(REDUCE)
        self._put(obj)

    def _save_tuple(self, obj: tuple) -> None:
        n = len(obj)
        if n == 0:
            self._write(EMPTY_TUPLE)
            return
        if n > 3:
            self._write(MARK)
        for item in obj:
            self._save(item)
        self._write((TUPLE1, TUPLE2, TUPLE3)[n - 1] if n <= 3 else TUPLE)
        self._put(obj)

    def _save_value(self, value) -> None:
        """``_save``, with arrays and strings (most values of a state dict) first."""
        t = type(value)
        if t is np.ndarray:
            index = self._memo.get(id(value))
            if index is None:
                self._save_array(value)
            else:
                self._write(_get_code(index))
        elif t is str:
            self._save_str(value)
        else:
            self._save(value)

    def _save_list_items(self, items: list) -> None:
        save = self._save_value
        for start in range(0, len(items), _BATCH):
            batch = items[start : start + _BATCH]
            if len(batch) == 1:
                save(batch[0])
                self._write(APPEND)
            else:
                self._write(MARK)
                for item in batch:
                    save(item)
                self._write(APPENDS)

    def _save_items(self, mapping: dict) -> None:
        save = self._save_value
        items = list(mapping.items())
        for start in range(0, len(items), _BATCH):
            batch = items[start : start + _BATCH]
            if len(batch) == 1:
                save(batch[0][0])
                save(batch[0][1])
                self._write(SETITEM)
            else:
                self._write(MARK)
                for key, value in batch:
                    save(key)
                    save(value)
                self._write(SETITEMS)

    def _save_sparse(self, obj, parts: "SparseParts") -> None:
        """``_rebuild_sparse_tensor(_get_layout('torch.sparse_csr'), (parts..., size))``."""
        self._save_global(_Global("torch._utils", "_rebuild_sparse_tensor"))
        self._save_reduce(_Global("torch.serialization", "_get_layout"), (f"torch.{parts.layout}",), _Layout())
        data = parts.arrays + (_TorchSize(parts.size),)
        if parts.is_coalesced is not None:
            data += (parts.is_coalesced,)
        self._save(data)
        self._write(TUPLE2)
        self._put(parts)
        self._write(REDUCE)
        self._put(obj)

    def _save_array(self, array, *, memo_as=None) -> None:
        """``_rebuild_tensor_v2(pid, offset, size, stride, False, OrderedDict())`` (v3: + dtype).

        The bytes :meth:`_save_array_opcodes` writes, from pieces cached per
        dtype and location: every memo reference but the array's own slots is
        the same for all arrays of one dtype, once the first has put the
        globals and strings in the memo.
        """
        view = self._plan.planner.planned(array)
        storage = view.storage
        location = storage.location
        head_key = (storage.dtype.name, id(location))
        head = self._heads.get(head_key)
        k = self._next_memo
        if head is None or k < 256:  # all memo slots from here on take LONG_BINPUT
            self._save_array_opcodes(array, view, memo_as)
            if self.fast_arrays:
                self._learn_head(storage)
            return
        prefix, location_get, hooks, arguments_end, uses_v3 = head
        w = self._write
        memo = self._memo
        key = storage.key
        shape, strides = view.shape, view.strides
        if key is None and shape and strides and not storage.shared:
            # The commonest array of all (a storage of its own, at least 1-D): one
            # ``pack`` per array, with a layout cached per shape.
            storage.key = key = str(len(self.storages))
            self.storages.append(storage)
            encoded = key.encode("ascii")
            layout_key = (head_key, storage.numel, view.offset, shape, strides, len(encoded))
            layout = self._layouts.get(layout_key)
            if layout is None:
                layout = self._layout(layout_key, head, storage.nbytes if uses_v3 else storage.numel)
            pack, a, c, d, e, f, g, h = layout
            w(pack(a, encoded, LONG_BINPUT, k, c, k + 1, d, k + 2, e, k + 3, f, k + 4, g, k + 5, h, k + 6))
            target = id(memo_as if memo_as is not None else array)
            if target in self._repeated:
                memo[target] = k + 6
            self._next_memo = k + 7
            return
        w(prefix)
        if key is None:
            storage.key = key = str(len(self.storages))
            self.storages.append(storage)  # keeps ``key`` alive, so its id stays in the memo
            encoded = key.encode("ascii")
            w(_pack_op_u4(BINUNICODE, len(encoded)))
            w(encoded)
            w(_pack_op_u4(LONG_BINPUT, k))
            if storage.shared:  # only another view of the storage refers to its key again
                memo[id(key)] = k
            k += 1
        else:
            w(_get_code(memo[id(key)]))
        w(location_get)
        w(_int_code(storage.numel * storage.dtype.itemsize if uses_v3 else storage.numel))
        if self._legacy:
            w(NONE)
        w(TUPLE)
        w(_pack_op_u4(LONG_BINPUT, k))  # the persistent id
        w(BINPERSID)
        w(_int_code(view.offset))
        w(self._int_tuple_code(shape))
        if shape:
            k += 1
            w(_pack_op_u4(LONG_BINPUT, k))
        w(self._int_tuple_code(strides))
        if strides:
            k += 1
            w(_pack_op_u4(LONG_BINPUT, k))
        w(hooks)
        w(_pack_op_u4(LONG_BINPUT, k + 1))  # OrderedDict()
        w(arguments_end)
        w(_pack_op_u4(LONG_BINPUT, k + 2))  # the arguments tuple
        w(REDUCE)
        w(_pack_op_u4(LONG_BINPUT, k + 3))
        # Only what the object holds again is looked up (arrays and the scalars they
        # stand for are kept alive by the object and the plan).
        target = id(memo_as if memo_as is not None else array)
        if target in self._repeated:
            memo[target] = k + 3
        self._next_memo = k + 4

    def _layout(self, layout_key: tuple, head: tuple, size: int) -> tuple:
        """How :meth:`_save_array` packs an array with a new storage key of its own.

        The fixed pieces of :meth:`_save_array_opcodes`' bytes, and one struct
        that interleaves them with the key's digits and the seven memo slots.
        """
        _, _, offset, shape, strides, key_len = layout_key
        prefix, location_get, hooks, arguments_end, _ = head
        a = prefix + _pack_op_u4(BINUNICODE, key_len)
        c = location_get + _int_code(size) + (NONE if self._legacy else b"") + TUPLE + LONG_BINPUT
        d = BINPERSID + _int_code(offset) + self._int_tuple_code(shape) + LONG_BINPUT
        e = self._int_tuple_code(strides) + LONG_BINPUT
        f = hooks + LONG_BINPUT
        g = arguments_end + LONG_BINPUT
        h = REDUCE + LONG_BINPUT
        fmt = f"<{len(a)}s{key_len}scI" + "".join(f"{len(piece)}sI" for piece in (c, d, e, f, g, h))
        layout = (struct.Struct(fmt).pack, a, c, d, e, f, g, h)
        if len(self._layouts) < _TUPLE_CACHE:
            self._layouts[layout_key] = layout
        return layout

    def _learn_head(self, storage: PlannedStorage) -> None:
        """Cache the pieces of :meth:`_save_array` for arrays like the one just written."""
        dtype = storage.dtype
        location = storage.location
        names = [_REBUILD_V3 if dtype.uses_v3 else _REBUILD_V2, _ORDERED_DICT]
        if dtype.uses_v3:
            names += [_UNTYPED_STORAGE, _torch_dtype_global(dtype.name)]
        else:
            names.append(_storage_global(dtype.storage_class))
        indices = [self._globals.get(name) for name in names]
        strings = [self._memo.get(id(_STORAGE)), self._memo.get(id(location))]
        if None in indices or None in strings:
            return
        rebuild, ordered_dict, storage_class = indices[0], indices[1], indices[2]
        prefix = b"".join((_get_code(rebuild), MARK, MARK, _get_code(strings[0]), _get_code(storage_class)))
        hooks = NEWFALSE + _get_code(ordered_dict) + EMPTY_TUPLE + REDUCE
        arguments_end = (_get_code(indices[3]) if dtype.uses_v3 else b"") + TUPLE
        self._heads[(dtype.name, id(location))] = (prefix, _get_code(strings[1]), hooks, arguments_end,
                                                     dtype.uses_v3)

    def _save_array_opcodes(self, array, view: PlannedView, memo_as=None) -> None:
        """The reference for :meth:`_save_array`: the same bytes, opcode by opcode."""
        storage = view.storage
        dtype = storage.dtype
        write = self._write
        self._save_global(_REBUILD_V3 if dtype.uses_v3 else _REBUILD_V2)
        write(MARK)
        # The persistent id tuple, then BINPERSID.
        pid = self.persistent_id(storage)
        write(MARK)
        self._save_str(pid[0])
        self._save_global(pid[1])
        self._save_str(pid[2])
        self._save_str(pid[3])
        write(_int_code(pid[4]))
        if self._legacy:
            write(NONE)
        write(TUPLE)
        self._put_anonymous()
        write(BINPERSID)
        write(_int_code(view.offset))
        self._save_int_tuple(view.shape)
        self._save_int_tuple(view.strides)
        write(NEWFALSE)  # requires_grad
        self._save_global(_ORDERED_DICT)  # the (empty) backward hooks
        write(EMPTY_TUPLE + REDUCE)
        self._put_anonymous()
        if dtype.uses_v3:
            self._save_global(_torch_dtype_global(dtype.name))
        write(TUPLE)
        self._put_anonymous()  # the arguments tuple
        write(REDUCE)
        self._put(memo_as if memo_as is not None else array)


def _int_code(value: int) -> bytes:
    """The opcode pickle writes for an int (BININT1, BININT2, BININT, LONG1 or LONG4)."""
    if 0 <= value < 256:
        return _BININT1_CODES[value]
    if 0 <= value < 65536:
        return BININT2 + value.to_bytes(2, "little")
    if -(2**31) <= value < 2**31:
        return BININT + _pack_i4(value)
    n = (value.bit_length() + 8) // 8  # room for the sign bit
    encoded = value.to_bytes(n, "little", signed=True)
    # pickle.encode_long drops one redundant sign byte where it can.
    if n > 1 and encoded[-1] == 0xFF and encoded[-2] & 0x80:
        encoded = encoded[:-1]
    if len(encoded) < 256:
        return LONG1 + bytes((len(encoded),)) + encoded
    return LONG4 + _pack_i4(len(encoded)) + encoded


def _put_code(index: int) -> bytes:
    return _BINPUT_CODES[index] if index < 256 else _pack_op_u4(LONG_BINPUT, index)


def _get_code(index: int) -> bytes:
    return _BINGET_CODES[index] if index < 256 else _pack_op_u4(LONG_BINGET, index)


_pack_op_u4 = struct.Struct("<cI").pack  # an opcode and its 4-byte argument
_BININT1_CODES = [BININT1 + bytes((i,)) for i in range(256)]
_BINPUT_CODES = [BINPUT + bytes((i,)) for i in range(256)]
_BINGET_CODES = [BINGET + bytes((i,)) for i in range(256)]
_TUPLE_CACHE = 4096  # distinct shapes and strides whose opcodes are kept
_STORAGE = "storage"  # one object: memoized once, referenced by every persistent id


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
