"""nbckpt's own implementations of the globals a checkpoint's pickle may name.

A torch checkpoint's pickle calls ``torch._utils._rebuild_tensor_v2``,
``torch.Size``, ``collections.OrderedDict``... Nothing here imports torch:
each allowed global maps to a function of :class:`Rebuilder` that validates its
arguments as if they were hostile (they may be) and builds NumPy objects.

Storages and array views are made by a *materializer*, so the same rebuild code
serves eager loads (bytes read into host or GPU memory), memory maps, and lazy
archives that only describe arrays. The materializer interface::

    storage(key, dtype, numel, location, untyped) -> storage object
    view(storage, dtype, byte_offset, shape, byte_strides) -> array
    empty(storage, dtype, shape) -> array of size 0

Every view is checked against its storage's size *before* the materializer
is asked for it.
"""

from __future__ import annotations

import _compat_pickle
import collections
import importlib
import itertools
import math
import operator
from typing import Any, Callable

import numpy as np

from .keys import KeyGuard
from ..backends import is_cupy_array
from ..errors import FormatError, UnpicklingError
from ..format import dtypes as torch_dtypes

__all__ = ["Rebuilder", "StorageClass", "PendingObject", "MAX_NDIM"]

#: Highest rank accepted for a rebuilt array (NumPy's own limit).
MAX_NDIM = 64

_TEXT_ENCODINGS = frozenset({"latin1", "latin-1", "utf-8", "utf8", "ascii"})
_SPARSE_LAYOUTS = ("sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc")
_LAYOUTS = ("strided",) + _SPARSE_LAYOUTS + ("_mkldnn", "jagged")
_QSCHEMES = (
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
    "per_channel_symmetric", "per_channel_affine_float_qparams",
)


class StorageClass:
    """A torch storage class named in a persistent id (``torch.FloatStorage``)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch_dtypes.TorchDtype) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<torch storage class {self.name}>"


class TorchMarker:
    """A torch object that only matters by name (``torch.Tensor``, a layout, a qscheme)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TorchMarker) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class _NotBatched(Exception):
    """A call :meth:`Rebuilder.rebuild_many` leaves to the one-by-one path."""


def _geometry(size: Any, stride: Any) -> tuple[int, int]:
    """``(elements, extent)`` of a view of the common form (tuples of ints in range), or _NotBatched.

    ``extent`` is ``sum((n - 1) * s)``: the view's last element is ``offset + extent``.
    """
    if type(size) is not tuple or type(stride) is not tuple or len(size) != len(stride) or len(size) > MAX_NDIM:
        raise _NotBatched
    count, extent = 1, 0
    for n, s in zip(size, stride):
        if type(n) is not int or type(s) is not int or not (0 <= n < _INDEX_LIMIT and 0 <= s < _INDEX_LIMIT):
            raise _NotBatched
        extent += (n - 1) * s
        count *= n
    return count, extent


def _columns(columns: tuple) -> tuple | None:
    """``(cls, keys, locations, numels, offsets, sizes, strides)`` of :meth:`Rebuilder.rebuild_many`'s
    calls (given as columns) when they share one typed storage class, name distinct keys, and
    every field has the common type (str, int >= 0); else None (the call-by-call loop decides)."""
    if len(columns) != 7 or not columns[0]:
        return None
    classes, keys, locations, numels, offsets, sizes, strides = columns
    cls = classes[0]
    if (type(cls) is not StorageClass or cls.name in ("UntypedStorage", "TypedStorage")
            or classes.count(cls) != len(classes) or len(set(keys)) != len(keys)):
        return None
    if set(map(type, keys)) | set(map(type, locations)) != {str}:
        return None
    if set(map(type, numels)) | set(map(type, offsets)) != {int} or min(numels) < 0 or min(offsets) < 0:
        return None
    return cls, keys, locations, numels, offsets, sizes, strides


class PendingObject:
    """An object that a later BUILD opcode completes (NumPy arrays and dtypes).

    The unpickler replaces it, on its stack and in its memo, by ``finish(state)``.
    """

    __slots__ = ()

    def finish(self, state: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def resolve(self) -> Any:
        """The object to use when no BUILD ever comes."""
        raise FormatError(f"{self!r} was used before the pickle finished building it")


def _is_int(value: Any) -> bool:
    return type(value) is int or isinstance(value, np.integer)


_INDEX_LIMIT = 2**63  # sizes, strides and byte counts must fit NumPy's intp


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is tuple and len(value) <= MAX_NDIM:  # the common case, checked fast
        for v in value:
            if type(v) is not int or v < 0 or v >= _INDEX_LIMIT:
                break
        else:
            return value
    if not isinstance(value, (tuple, list)):
        raise FormatError(f"{what} must be a tuple of integers, got {type(value).__name__}")
    if len(value) > MAX_NDIM:
        raise FormatError(f"{what} has {len(value)} dimensions; at most {MAX_NDIM} are supported")
    if not all(_is_int(v) and 0 <= v < _INDEX_LIMIT for v in value):
        raise FormatError(f"{what} must hold integers from 0 to 2**63 - 1, got {tuple(value)!r}")
    return tuple(int(v) for v in value)


def _check_empty_shape(shape: tuple[int, ...], itemsize: int) -> None:
    """An empty array still needs a representable shape (NumPy checks the non-zero extents)."""
    extent = math.prod(n for n in shape if n) * max(itemsize, 1)
    if extent >= _INDEX_LIMIT:
        raise FormatError(f"array size {shape} is too large to represent")


class Rebuilder:
    """Implements the allowlisted globals on top of a materializer.

    ``globals`` maps dotted names (``"torch._utils._rebuild_tensor_v2"``) to the
    object the unpickler pushes; ``callables`` holds the ids of those that
    REDUCE may call and ``classes`` those that NEWOBJ may instantiate.
    """

    def __init__(self, materializer: Any, *, legacy: bool = False, modules: bool = False) -> None:
        self._materializer = materializer
        self.legacy = legacy  # the pre-1.6 stream format's persistent ids
        self.modules = modules  # return pickled module classes (weights_only=False only)
        self._storages: dict[str, tuple[Any, torch_dtypes.TorchDtype, int]] = {}
        self._storage_info: dict[int, tuple[Any, torch_dtypes.TorchDtype, int, str]] = {}
        self.globals: dict[str, Any] = {}
        self.callables: set[int] = set()
        self.classes: set[int] = set()
        self.tensor_marker = TorchMarker("torch.Tensor")
        self.ndarray_marker = TorchMarker("numpy.ndarray")
        #: Checks every key the pickle makes a dict or set hash (depth, work, collisions).
        self.keys = KeyGuard()
        self._register_all()

    def close(self) -> None:
        """Drop everything the rebuilder holds, once its pickle is read.

        Its globals are its own bound methods, so a rebuilder is a reference
        cycle: without this, the storages it made (every array's memory, after
        a load) stay referenced until Python's cyclic collector runs, which
        then also has to scan them.
        """
        self.globals.clear()
        self.callables.clear()
        self.classes.clear()
        self._storages.clear()
        self._storage_info.clear()

    # -- registration ----------------------------------------------------------

    def _call(self, name: str, fn: Callable) -> None:
        self.globals[name] = fn
        self.callables.add(id(fn))

    def _value(self, name: str, value: Any) -> None:
        self.globals[name] = value

    def _register_all(self) -> None:
        call = self._call
        for prefix in ("torch._utils.", "torch._tensor."):
            call(prefix + "_rebuild_tensor", self.rebuild_tensor)
            call(prefix + "_rebuild_tensor_v2", self.rebuild_tensor_v2)
            call(prefix + "_rebuild_tensor_v3", self.rebuild_tensor_v3)
        call("torch._utils._rebuild_parameter", self.rebuild_parameter)
        call("torch._utils._rebuild_parameter_with_state", self.rebuild_parameter_with_state)
        call("torch._tensor._rebuild_from_type_v2", self.rebuild_from_type_v2)
        call("torch._utils._rebuild_from_type_v2", self.rebuild_from_type_v2)
        call("torch._utils._rebuild_device_tensor_from_cpu_tensor", self.rebuild_device_tensor_from_cpu_tensor)
        for unsupported in ("_rebuild_qtensor", "_rebuild_nested_tensor", "_rebuild_wrapper_subclass",
                            "_rebuild_device_tensor_from_numpy", "_rebuild_xla_tensor",
                            "_rebuild_mtia_tensor"):
            call(f"torch._utils.{unsupported}", _unsupported_rebuild(unsupported))
        call("torch.serialization._get_layout", self.get_layout)
        call("torch._utils._rebuild_sparse_tensor", self.rebuild_sparse_tensor)
        call("torch._utils._rebuild_meta_tensor_no_storage", self.rebuild_meta_tensor_no_storage)
        call("torch.Size", self.torch_size)
        call("torch.device", self.torch_device)
        parameter = self.parameter
        call("torch.nn.parameter.Parameter", parameter)
        self.classes.add(id(parameter))
        call("torch.Tensor", self.legacy_tensor)
        call("collections.OrderedDict", self.ordered_dict)
        call("collections.Counter", self.counter)
        call("builtins.set", self.make_set)
        call("builtins.frozenset", self.make_frozenset)
        call("builtins.complex", self.make_complex)
        call("builtins.bytearray", self.make_bytearray)
        call("builtins.bytes", self.make_bytes)
        call("builtins.slice", self.make_slice)
        call("_codecs.encode", self.codecs_encode)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            call(f"{module}._reconstruct", self.numpy_reconstruct)
            call(f"{module}.scalar", self.numpy_scalar)
        call("numpy.dtype", self.numpy_dtype)
        self._value("numpy.ndarray", self.ndarray_marker)
        for tdtype in torch_dtypes.TORCH_DTYPES:
            self._value(f"torch.{tdtype.name}", tdtype.numpy)
            if tdtype.storage_class:
                cls = StorageClass(tdtype.storage_class, tdtype)
                self._value(f"torch.{tdtype.storage_class}", cls)
                if not tdtype.name.startswith("q"):
                    self._value(f"torch.cuda.{tdtype.storage_class}", cls)
        for alias in ("float", "double", "half", "long", "int", "short", "cfloat", "cdouble", "chalf"):
            self._value(f"torch.{alias}", torch_dtypes.by_torch_name(alias).numpy)
        untyped = StorageClass("UntypedStorage", torch_dtypes.by_storage_class("UntypedStorage"))
        self._value("torch.storage.UntypedStorage", untyped)
        self._value("torch.UntypedStorage", untyped)
        self._value("torch.storage.TypedStorage", StorageClass("TypedStorage", untyped.dtype))
        for kind in ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"):
            for module in ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse"):
                if kind == "Bool" and "sparse" in module:
                    continue
                self._value(f"{module}.{kind}Tensor", TorchMarker(f"{module}.{kind}Tensor"))
        for scheme in _QSCHEMES:
            self._value(f"torch.{scheme}", TorchMarker(f"torch.{scheme}"))
        for layout in _LAYOUTS:
            self._value(f"torch.{layout}", TorchMarker(f"torch.{layout}"))

    def resolve(self, module: str, name: str) -> tuple[str, Any] | None:
        """``(dotted name, object)`` of an allowlisted global, or None.

        Python 2 names (``__builtin__.set``) are translated first, as pickle does.
        """
        dotted = canonical_name(module, name)
        if dotted in self.globals:
            return dotted, self.globals[dotted]
        return None

    # -- storages --------------------------------------------------------------

    def persistent_load(self, pid: Any) -> Any:
        """Turn a storage persistent id into a storage.

        Zip checkpoints use ``('storage', StorageClass, key, location, numel)``;
        the legacy stream format (``legacy=True``) adds a sixth field,
        ``view_metadata``: ``None`` or ``(view_key, offset, size)`` naming a slice
        of the storage, and may name a pickled module class (``'module', ...``).
        """
        if not isinstance(pid, tuple):
            raise UnpicklingError(
                f"persistent id must be a tuple ('storage', class, key, location, numel), "
                f"got {type(pid).__name__}"
            )
        kind = pid[0] if pid else None
        kind = _ascii(kind) if type(kind) in (str, bytes) else None
        if kind == "module" and self.legacy:
            return self.legacy_module(pid)
        if kind != "storage":
            shown = kind if kind is not None else type(pid[0] if pid else None).__name__
            raise UnpicklingError(
                f"only storages may be loaded by persistent id, but the file asks for {shown!r}"
            )
        expected = 6 if self.legacy else 5
        if len(pid) != expected:
            fields = "('storage', class, key, location, numel" + (", view_metadata)" if self.legacy else ")")
            raise FormatError(f"storage persistent id has {len(pid)} fields, expected {expected} {fields}")
        storage = self.load_storage(*pid[1:5])
        if self.legacy and pid[5] is not None:
            return self.storage_view(storage, pid[5])
        return storage

    def legacy_module(self, pid: tuple) -> Any:
        """``('module', cls, source_file, source)``: old files pickled whole modules."""
        if self.modules and len(pid) == 4:
            return pid[1]
        raise UnpicklingError(
            "the file pickles a whole torch.nn.Module (its class and source code), not just "
            "its weights; nbckpt loads arrays, not modules. Load it with torch, save "
            "module.state_dict(), and load that instead"
        )

    def storage_view(self, root: Any, view_metadata: Any) -> Any:
        """A slice ``(view_key, offset, size)`` of a storage, in its elements (legacy files)."""
        if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
            raise FormatError(f"storage view metadata must be (key, offset, size), got {view_metadata!r}")
        view_key, offset, size = view_metadata
        view_key = _ascii(view_key)
        cached = self._storages.get(view_key)
        if cached is not None:
            return cached[0]
        dtype, nbytes, key = self.storage_info(root)
        if not (_is_int(offset) and _is_int(size) and offset >= 0 and size >= 0):
            raise FormatError(f"storage view of {key!r} has offset {offset!r} and size {size!r}")
        if (offset + size) * dtype.itemsize > nbytes:
            raise FormatError(
                f"storage view {view_key!r} covers elements {offset} to {offset + size} of storage "
                f"{key!r}, which has {nbytes // dtype.itemsize}"
            )
        view = self._materializer.storage_view(root, dtype, int(offset), int(size))
        self._storages[view_key] = (view, dtype, int(size))
        self._storage_info[id(view)] = (view, dtype, int(size) * dtype.itemsize, view_key)
        return view

    def register_storage(self, storage: Any, dtype: torch_dtypes.TorchDtype, key: str) -> None:
        """Let arrays be built on a storage made outside the pickle (legacy tar files)."""
        self._storage_info[id(storage)] = (storage, dtype, storage.nbytes, key)

    def load_storage(self, storage_class: Any, key: Any, location: Any, numel: Any) -> Any:
        """Validate one storage reference and return its (cached) storage object."""
        if type(storage_class) is not StorageClass:
            raise FormatError(f"storage class must be a torch storage class, got {storage_class!r}")
        if type(key) is not str:
            key = _ascii(key)
        if type(location) is not str:
            location = _ascii(location)
        if type(key) is not str or type(location) is not str:
            raise FormatError(f"storage key and location must be strings, got {key!r} and {location!r}")
        if type(numel) is not int:
            if not _is_int(numel):
                raise FormatError(f"storage {key!r} declares {numel!r} elements; expected a count >= 0")
            numel = int(numel)
        if numel < 0:
            raise FormatError(f"storage {key!r} declares {numel!r} elements; expected a count >= 0")
        dtype = storage_class.dtype
        cached = self._storages.get(key)
        if cached is not None:
            storage, cached_dtype, cached_numel = cached
            if cached_numel * cached_dtype.itemsize != numel * dtype.itemsize or (
                cached_dtype.name != dtype.name and numel
            ):
                raise FormatError(
                    f"storage {key!r} is referenced as {cached_numel} x {cached_dtype.name} and as "
                    f"{numel} x {dtype.name}; a storage has one type and one size",
                    record=f"data/{key}",
                )
            return storage
        untyped = storage_class.name in ("UntypedStorage", "TypedStorage")
        storage = self._materializer.storage(key, dtype, numel, location, untyped)
        self._storages[key] = (storage, dtype, numel)
        self._storage_info[id(storage)] = (storage, dtype, numel * dtype.itemsize, key)
        return storage

    def storage_info(self, storage: Any) -> tuple[torch_dtypes.TorchDtype, int, str]:
        """``(dtype, nbytes, key)`` of a storage this rebuilder made; FormatError otherwise."""
        info = self._storage_info.get(id(storage))
        if info is None or info[0] is not storage:
            raise FormatError(
                f"an array must be built on a storage from the file, got {type(storage).__name__}"
            )
        return info[1], info[2], info[3]

    # -- arrays ----------------------------------------------------------------

    def _view(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None) -> Any:
        # The hot path of every load: called once per array, so checks are inlined.
        info = self._storage_info.get(id(storage))
        if info is None or info[0] is not storage:
            raise FormatError(
                f"an array must be built on a storage from the file, got {type(storage).__name__}"
            )
        _, storage_dtype, nbytes, key = info
        if dtype is None:
            dtype = storage_dtype.numpy
        shape = _int_tuple(size, "array size")
        strides = _int_tuple(stride, "array stride")
        if len(strides) != len(shape):
            raise FormatError(f"array size {shape} and stride {strides} have different lengths")
        if type(offset) is not int:
            if not _is_int(offset):
                raise FormatError(f"array offset must be an integer >= 0, got {offset!r}")
            offset = int(offset)
        if offset < 0:
            raise FormatError(f"array offset must be an integer >= 0, got {offset!r}")
        itemsize = dtype.itemsize
        if 0 in shape:
            _check_empty_shape(shape, itemsize)
            return self._materializer.empty(storage, dtype, shape)
        last = offset
        for n, s in zip(shape, strides):
            last += (n - 1) * s
        if math.prod(shape) * itemsize >= _INDEX_LIMIT:
            raise FormatError(f"array size {shape} is too large to represent", record=f"data/{key}")
        if (last + 1) * itemsize > nbytes:
            raise FormatError(
                f"array of size {shape}, stride {strides} at offset {offset} needs "
                f"{(last + 1) * itemsize} bytes of storage {key!r}, which holds {nbytes}",
                record=f"data/{key}",
            )
        if itemsize != 1:
            strides = tuple([s * itemsize for s in strides])
        return self._materializer.view(storage, dtype, offset * itemsize, shape, strides)

    # -- many arrays at once (the fast path of flat dicts of tensors) ------------------------

    def batches(self, fn: Any, hooks: Any) -> bool:
        """Whether :meth:`rebuild_many` may stand for calls of ``fn`` with hooks from ``hooks()``.

        True when ``fn`` is this rebuilder's own ``_rebuild_tensor_v2`` and
        ``hooks`` its own ``OrderedDict`` (an empty one, no side effect), neither
        overridden, for the zip format's storage ids, and no storage was made yet.
        """
        cls = type(self)
        own = [(fn, Rebuilder.rebuild_tensor_v2), (hooks, Rebuilder.ordered_dict)]
        return (not self.legacy and not self._storages
                and cls.rebuild_tensor_v2 is Rebuilder.rebuild_tensor_v2
                and cls.ordered_dict is Rebuilder.ordered_dict
                and cls.load_storage is Rebuilder.load_storage and cls._view is Rebuilder._view
                and all(getattr(bound, "__self__", None) is self and getattr(bound, "__func__", None) is function
                        for bound, function in own))

    def rebuild_many(self, calls: list[tuple] | None, *, columns: tuple | None = None) -> list[Any]:
        """The arrays of ``rebuild_tensor_v2(persistent_load(("storage", cls, key, location, numel)),
        offset, size, stride, requires_grad, OrderedDict())`` for each ``(cls, key, location,
        numel, offset, size, stride)`` of ``calls``, in one pass.

        Only for calls :meth:`batches` allows. Every check of the one-by-one path
        is made (on the common forms only: anything else raises), all storages
        are asked of the materializer in one ``storages()`` call (reads in
        blocks), then the views. Nothing is kept unless every array is built: on
        any exception, the caller runs the calls one by one, which reports the
        first problem exactly as the VM does.
        """
        if columns is not None:  # the same calls given as columns: (classes, keys, ..., strides)
            calls = None
        else:
            columns = tuple(zip(*calls)) if calls else None
        plain = _columns(columns) if columns is not None else None
        if plain is not None:  # the common case: every storage its own, one storage class
            return self._rebuild_columns(*plain)
        if calls is None:
            calls = list(zip(*columns)) if columns is not None else []
        first: dict[str, int] = {}  # storage key -> its index in requests
        requests: list[tuple] = []
        kinds: list[tuple] = []  # (dtype, bytes) of each request
        views: list[tuple] = []
        geometry: dict[tuple, tuple[int, int]] = {}  # (size, stride) -> (elements, extent), checked
        byte_strides: dict[tuple, tuple] = {}  # (stride, itemsize) -> strides in bytes
        limit = _INDEX_LIMIT
        for cls, key, location, numel, offset, size, stride in calls:
            if (type(cls) is not StorageClass or type(key) is not str or type(location) is not str
                    or type(numel) is not int or numel < 0 or type(offset) is not int or offset < 0
                    or cls.name in ("UntypedStorage", "TypedStorage")):
                raise _NotBatched
            dtype = cls.dtype
            j = first.get(key)
            if j is None:
                j = first[key] = len(requests)
                requests.append((key, dtype, numel, location, False))
                kinds.append((dtype, numel * dtype.itemsize))
                nbytes = numel * dtype.itemsize
            else:
                dtype_j, nbytes = kinds[j]
                if nbytes != numel * dtype.itemsize or (dtype_j.name != dtype.name and numel):
                    raise _NotBatched
                dtype = dtype_j  # the view is of the storage made first
            known = geometry.get((size, stride))
            if known is None:
                known = geometry[(size, stride)] = _geometry(size, stride)
            count, extent = known
            np_dtype = dtype.numpy
            itemsize = np_dtype.itemsize
            if count == 0 or count * itemsize >= limit or (offset + extent + 1) * itemsize > nbytes:
                raise _NotBatched  # an empty array or a view past its storage: one by one
            strides = byte_strides.get((stride, itemsize))
            if strides is None:
                strides = byte_strides[(stride, itemsize)] = tuple([s * itemsize for s in stride])
            views.append((j, np_dtype, offset * itemsize, size, strides))
        materializer = self._materializer
        batched = getattr(type(materializer), "storages", None)  # optional: see materialize.Materializer
        storages = (batched(materializer, requests) if batched is not None
                    else [materializer.storage(*request) for request in requests])
        asked = [(storages[j], dtype, offset, shape, strides) for j, dtype, offset, shape, strides in views]
        batched = getattr(type(materializer), "views", None)  # optional, as storages()
        arrays = batched(materializer, asked) if batched is not None else [materializer.view(*a) for a in asked]
        for (key, dtype, numel, _, _), storage in zip(requests, storages):
            self._storages[key] = (storage, dtype, numel)
            self._storage_info[id(storage)] = (storage, dtype, numel * dtype.itemsize, key)
        return arrays

    def _rebuild_columns(self, cls: StorageClass, keys: tuple, locations: tuple, numels: tuple, offsets: tuple,
                         sizes: tuple, strides: tuple) -> list[Any]:
        """:meth:`rebuild_many` for calls of one storage class whose keys all differ, checked
        column by column (C-level ``map``s over Python ints: exact, as the loop's checks)."""
        dtype = cls.dtype
        np_dtype = dtype.numpy
        itemsize = np_dtype.itemsize
        geometry = {pair: _geometry(*pair) for pair in set(zip(sizes, strides))}
        counts, extents = zip(*map(geometry.__getitem__, zip(sizes, strides)))
        # As the loop: no empty array, no array too large, every view inside its storage
        # (last element offset + extent < numel; itemsize > 0 divides both sides).
        if 0 in counts or max(counts) * itemsize >= _INDEX_LIMIT or itemsize <= 0:
            raise _NotBatched
        if any(map(operator.ge, map(operator.add, offsets, extents), numels)):
            raise _NotBatched
        byte_strides = {stride: tuple([s * itemsize for s in stride]) for stride in set(strides)}
        n = len(keys)
        repeat = itertools.repeat
        requests = list(zip(keys, repeat(dtype, n), numels, locations, repeat(False)))
        materializer = self._materializer
        batched = getattr(type(materializer), "storages", None)
        storages = (batched(materializer, requests) if batched is not None
                    else [materializer.storage(*request) for request in requests])
        asked = list(zip(storages, repeat(np_dtype), map(itemsize.__mul__, offsets), sizes,
                         map(byte_strides.__getitem__, strides)))
        batched = getattr(type(materializer), "views", None)
        arrays = batched(materializer, asked) if batched is not None else [materializer.view(*a) for a in asked]
        nbytes = list(map(itemsize.__mul__, numels))
        self._storages.update(zip(keys, zip(storages, repeat(dtype), numels)))
        self._storage_info.update(zip(map(id, storages), zip(storages, repeat(dtype), nbytes, keys)))
        return arrays

    def rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
        """``torch._utils._rebuild_tensor``: the oldest form of an array."""
        return self._view(storage, storage_offset, size, stride, None)

    def rebuild_tensor_v2(self, storage: Any, storage_offset: Any, size: Any, stride: Any,
                          requires_grad: Any = False, backward_hooks: Any = None,
                          metadata: Any = None) -> Any:
        """``torch._utils._rebuild_tensor_v2``: a view of a typed storage."""
        array = self._view(storage, storage_offset, size, stride, None)
        return self._math_bits(array, metadata)

    def _math_bits(self, array: Any, metadata: Any) -> Any:
        """Apply torch's conj/neg bits, once the data is there (legacy files fill it later)."""
        if metadata is None or metadata == {}:
            return array
        # Legacy files fill the data after the pickle: the materializer decides when.
        return self._materializer.defer_until_filled(array, lambda a: _apply_math_bits(a, metadata))

    def rebuild_tensor_v3(self, storage: Any, storage_offset: Any, size: Any, stride: Any,
                          requires_grad: Any, backward_hooks: Any, dtype: Any,
                          metadata: Any = None) -> Any:
        """``torch._utils._rebuild_tensor_v3``: a view of an untyped storage with a dtype."""
        if not isinstance(dtype, np.dtype) or torch_dtypes.for_numpy(dtype) is None:
            raise FormatError(f"_rebuild_tensor_v3 needs a torch dtype, got {dtype!r}")
        array = self._view(storage, storage_offset, size, stride, dtype)
        return self._math_bits(array, metadata)

    def rebuild_parameter(self, data: Any, requires_grad: Any = True, backward_hooks: Any = None) -> Any:
        """``nn.Parameter``: NumPy has no parameters, the array itself is returned."""
        return data

    def rebuild_parameter_with_state(self, data: Any, requires_grad: Any, backward_hooks: Any,
                                     state: Any) -> Any:
        """``nn.Parameter`` with Python attributes: the attributes are dropped."""
        return data

    def parameter(self, data: Any = None, requires_grad: Any = True) -> Any:
        """``torch.nn.Parameter(data, requires_grad)`` called by REDUCE or NEWOBJ."""
        return data

    def rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        """A tensor subclass or a tensor with attributes: build the plain array."""
        if id(func) not in self.callables:
            raise UnpicklingError(f"_rebuild_from_type_v2 was given a function that is not allowed: {func!r}")
        if not isinstance(args, tuple):
            raise FormatError(f"_rebuild_from_type_v2 arguments must be a tuple, got {type(args).__name__}")
        return func(*args)

    def rebuild_device_tensor_from_cpu_tensor(self, data: Any, dtype: Any, device: Any,
                                              requires_grad: Any) -> Any:
        """A tensor of a storage-less backend (XLA...): its host copy is returned."""
        return data

    def rebuild_sparse_tensor(self, layout: Any, data: Any) -> Any:
        """``torch._utils._rebuild_sparse_tensor``: a scipy.sparse array, invariants checked."""
        name = layout.name.removeprefix("torch.") if isinstance(layout, TorchMarker) else None
        if name not in _SPARSE_LAYOUTS:
            raise FormatError(f"_rebuild_sparse_tensor needs a sparse layout, got {layout!r}")
        # Built now, once the data is in (legacy files) or described (nbckpt.open): see Materializer.
        return self._materializer.sparse(name, data)

    def rebuild_meta_tensor_no_storage(self, dtype: Any, size: Any, stride: Any,
                                       requires_grad: Any = False) -> Any:
        """A tensor on torch's meta device: shape and dtype, no data."""
        from ..meta import MetaArray

        if not isinstance(dtype, np.dtype) or torch_dtypes.for_numpy(dtype) is None:
            raise FormatError(f"a meta tensor needs a torch dtype, got {dtype!r}")
        shape, strides = _int_tuple(size, "meta tensor size"), _int_tuple(stride, "meta tensor stride")
        if len(shape) != len(strides):
            raise FormatError(f"meta tensor size {shape} and stride {strides} have different lengths")
        return MetaArray(shape, dtype, strides)

    def legacy_tensor(self, *args: Any) -> Any:
        """``torch.Tensor()`` followed by BUILD (storage, offset, size, stride)."""
        if args:
            raise FormatError("torch.Tensor(...) with arguments is not a form torch.save writes")
        return _PendingLegacyTensor(self)

    # -- small torch objects -----------------------------------------------------

    def torch_size(self, sizes: Any = ()) -> tuple[int, ...]:
        """``torch.Size`` loads as a tuple of ints."""
        return _int_tuple(sizes, "torch.Size")

    def torch_device(self, kind: Any, index: Any = None) -> str:
        """``torch.device`` loads as its tag string (``"cuda:1"``)."""
        if not isinstance(kind, str) or len(kind) > 64:
            raise FormatError(f"torch.device needs a device type string, got {kind!r}")
        if index is None:
            return kind
        if not _is_int(index) or index < 0:
            raise FormatError(f"torch.device index must be an integer >= 0, got {index!r}")
        return f"{kind}:{int(index)}"

    def get_layout(self, name: Any) -> TorchMarker:
        """``torch.serialization._get_layout('torch.sparse_coo')``."""
        if not isinstance(name, str) or name.removeprefix("torch.") not in _LAYOUTS:
            raise FormatError(f"unknown tensor layout {name!r}")
        return TorchMarker(name if name.startswith("torch.") else f"torch.{name}")

    # -- Python builtins ----------------------------------------------------------

    def ordered_dict(self, items: Any = ()) -> collections.OrderedDict:
        pairs = _pairs(items, "OrderedDict")
        self.keys.check_all(key for key, _ in pairs)
        return collections.OrderedDict(pairs)

    def counter(self, items: Any = ()) -> collections.Counter:
        if isinstance(items, dict):
            items = list(items.items())
        pairs = _pairs(items, "Counter")
        self.keys.check_all(key for key, _ in pairs)
        return collections.Counter(dict(pairs))

    def make_set(self, items: Any = ()) -> set:
        return set(self.keys.check_all(_items(items, "set")))

    def make_frozenset(self, items: Any = ()) -> frozenset:
        return frozenset(self.keys.check_all(_items(items, "frozenset")))

    def make_complex(self, real: Any = 0, imag: Any = 0) -> complex:
        if not all(type(v) in (int, float) for v in (real, imag)):
            raise FormatError(f"complex() needs two numbers, got {real!r} and {imag!r}")
        try:
            return complex(real, imag)
        except OverflowError:
            raise FormatError("complex() of a number too large for a float") from None

    def make_bytes(self, source: Any = b"") -> bytes:
        # Protocol 2 writes b"" as bytes(); bytes(n) would allocate n bytes.
        if type(source) is not bytes:
            raise FormatError(f"bytes() accepts only bytes here, got {type(source).__name__}")
        return source

    def make_slice(self, *args: Any) -> slice:
        if len(args) > 3 or not all(a is None or type(a) is int for a in args):
            raise FormatError(f"slice() needs up to three ints or None, got {args!r}")
        return slice(*args)

    def make_bytearray(self, source: Any = b"", encoding: Any = None) -> bytearray:
        # bytearray(n) would allocate n bytes: only the forms pickle writes are allowed.
        if type(source) is bytes and encoding is None:
            return bytearray(source)
        if type(source) is str and encoding in _TEXT_ENCODINGS:
            return bytearray(source, encoding)
        raise FormatError(f"bytearray() accepts bytes, or a str and its encoding; got {type(source).__name__}")

    def codecs_encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if type(text) is not str or encoding not in _TEXT_ENCODINGS:
            raise FormatError(
                f"_codecs.encode is only allowed on text with latin1/utf-8/ascii, got "
                f"{type(text).__name__} and {encoding!r}"
            )
        return text.encode(encoding)

    # -- NumPy objects pickled natively ----------------------------------------------

    def numpy_reconstruct(self, cls: Any, shape: Any, typecode: Any) -> "_PendingArray":
        if cls is not self.ndarray_marker:
            raise UnpicklingError(f"numpy _reconstruct may only build numpy.ndarray, got {cls!r}")
        return _PendingArray()

    def numpy_dtype(self, name: Any, align: Any = False, copy: Any = True) -> "_PendingDtype":
        return _PendingDtype(_numeric_dtype(name))

    def numpy_scalar(self, dtype: Any, data: Any = None) -> np.generic:
        dtype = _resolved_dtype(dtype)
        if type(data) is not bytes or len(data) != dtype.itemsize:
            raise FormatError(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes of data")
        return np.frombuffer(data, dtype=dtype)[0]


def check_nesting(value: Any) -> None:
    """FormatError if hashing ``value`` would recurse too deep or too long (see :mod:`.keys`)."""
    KeyGuard().check(value)


def canonical_name(module: str, name: str) -> str:
    """``module.name`` after Python 2 name translation (``__builtin__`` -> ``builtins``)."""
    key = (module, name)
    if key in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[key]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _ascii(value: Any) -> Any:
    """Python 2 checkpoints hold some strings as bytes."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"expected an ASCII string, got {value[:40]!r}") from None
    return value


def _pairs(items: Any, what: str) -> list[tuple[Any, Any]]:
    if not isinstance(items, (list, tuple)):
        raise FormatError(f"{what}() needs a list of pairs, got {type(items).__name__}")
    pairs = []
    for pair in items:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise FormatError(f"{what}() needs (key, value) pairs, got {pair!r}")
        pairs.append((pair[0], pair[1]))
    return pairs


def _items(items: Any, what: str) -> list:
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise FormatError(f"{what}() needs a list of items, got {type(items).__name__}")
    return list(items)


def _apply_math_bits(array: Any, metadata: Any) -> Any:
    """torch stores ``conj()``/``neg`` views unmaterialized; NumPy needs the values."""
    if metadata is None or metadata == {}:
        return array
    if not isinstance(metadata, dict) or not set(metadata) <= {"conj", "neg"}:
        raise FormatError(f"unknown tensor metadata {metadata!r}")
    conj, neg = bool(metadata.get("conj")), bool(metadata.get("neg"))
    if not (isinstance(array, np.ndarray) or is_cupy_array(array)):
        # a lazy description (nbckpt.open): it records the bits
        if conj:
            array = array.conj()
        return -array if neg else array
    with _device_scope(array):  # a GPU array's result stays on its GPU
        return transform_covered(array, conj, neg)


def transform_covered(array: Any, conj: bool, neg: bool) -> Any:
    """conj/neg of a view, computed on the storage elements it covers only.

    A view can cover far fewer elements than it has (a stride-0 expansion of
    one value to 2**31 elements): transforming the covered span and viewing it
    with the same strides keeps both the memory and the layout of the original.
    """
    itemsize = array.dtype.itemsize
    if array.size == 0 or itemsize == 0:
        return array
    strides = array.strides
    covered = 1 + sum((n - 1) * s for n, s in zip(array.shape, strides)) // itemsize
    if covered >= array.size or any(s < 0 or s % itemsize for s in strides):
        values = array  # no overlap: transforming the array itself costs no more
        if conj:
            values = values.conj()
        return -values if neg else values
    xp = importlib.import_module(type(array).__module__.split(".")[0])
    stride_tricks = xp.lib.stride_tricks
    span = stride_tricks.as_strided(array, shape=(covered,), strides=(itemsize,))
    if conj:
        span = span.conj()
    span = -span if neg else span.copy()
    return stride_tricks.as_strided(span, shape=array.shape, strides=strides)


def _device_scope(array: Any) -> Any:
    """CuPy's ``Device(N)`` for an array on GPU N (CuPy is imported only if it is one)."""
    from ..backends import device_scope

    return device_scope(array)


def _numeric_dtype(name: Any) -> np.dtype:
    if not isinstance(name, str) or len(name) > 8:
        raise FormatError(f"numpy dtype must be named by a short string, got {name!r}")
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise FormatError(f"{name!r} is not a numpy dtype") from None
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise UnpicklingError(
            f"numpy dtype {dtype} is not numeric; only bool, integer, float and complex "
            f"arrays are loaded with weights_only=True"
        )
    return dtype


def _resolved_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, _PendingDtype):
        return dtype.resolve()
    if isinstance(dtype, np.dtype) and dtype.kind in "biufc" and dtype.fields is None:
        return dtype
    raise FormatError(f"expected a numeric numpy dtype, got {dtype!r}")


class _PendingDtype(PendingObject):
    """``numpy.dtype('f4')`` waiting for BUILD to set its byte order."""

    __slots__ = ("base",)

    def __init__(self, base: np.dtype) -> None:
        self.base = base

    def finish(self, state: Any) -> np.dtype:
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise FormatError(f"unexpected numpy dtype state {state!r}")
        order = state[1]
        if order not in ("<", ">", "|", "=") or state[2:5] != (None, None, None):
            raise UnpicklingError(f"numpy dtype state {state!r} is not that of a plain numeric dtype")
        return self.base.newbyteorder(order) if order in "<>" else self.base

    def resolve(self) -> np.dtype:
        return self.base

    def __repr__(self) -> str:
        return f"<numpy dtype {self.base} before BUILD>"


class _PendingArray(PendingObject):
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` before BUILD."""

    __slots__ = ()

    def finish(self, state: Any) -> np.ndarray:
        if not isinstance(state, tuple) or len(state) != 5:
            raise FormatError(f"unexpected numpy array state of type {type(state).__name__}")
        _, shape, dtype, fortran, data = state
        shape = _int_tuple(shape, "numpy array shape")
        dtype = _resolved_dtype(dtype)
        if type(data) is not bytes:
            raise UnpicklingError(
                "numpy array data must be raw bytes; arrays of Python objects are never "
                "loaded with weights_only=True"
            )
        expected = math.prod(shape) * dtype.itemsize
        if expected == 0:
            _check_empty_shape(shape, dtype.itemsize)
        if len(data) != expected:
            raise FormatError(f"numpy array of shape {shape} and dtype {dtype} needs {expected} bytes, got {len(data)}")
        array = np.frombuffer(bytearray(data), dtype=dtype).reshape(shape, order="F" if fortran else "C")
        # NumPy's own unpickling returns native byte order; so does nbckpt.
        return array if dtype.isnative else array.astype(dtype.newbyteorder("="))

    def __repr__(self) -> str:
        return "<numpy array before BUILD>"


class _PendingLegacyTensor(PendingObject):
    """``torch.Tensor()`` waiting for BUILD (storage, offset, size, stride)."""

    __slots__ = ("_rebuilder",)

    def __init__(self, rebuilder: Rebuilder) -> None:
        self._rebuilder = rebuilder

    def finish(self, state: Any) -> Any:
        if not isinstance(state, tuple) or len(state) != 4:
            raise FormatError("torch.Tensor state must be (storage, offset, size, stride)")
        return self._rebuilder.rebuild_tensor(*state)

    def __repr__(self) -> str:
        return "<torch.Tensor before BUILD>"


def _unsupported_rebuild(name: str) -> Callable:
    what = {
        "_rebuild_qtensor": "quantized tensors",
        "_rebuild_nested_tensor": "nested tensors",
        "_rebuild_wrapper_subclass": "wrapper tensor subclasses",
    }.get(name, "tensors of this backend")

    def refuse(*args: Any) -> Any:
        raise UnpicklingError(
            f"the file holds {what} (torch._utils.{name}), which nbckpt cannot load as "
            f"NumPy arrays; load the file with torch, convert them to plain tensors, and save again"
        )

    refuse.__name__ = name
    return refuse
