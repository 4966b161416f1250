"""A materializer that describes storages and views instead of reading them.

Running a checkpoint's pickle over :class:`RecordingMaterializer` gives the
checkpoint's object with an :class:`~nbckpt.formats.base.ArrayRef` wherever an
array would be, and reads no storage byte: it is how the pickle-based formats
(torch zip, legacy stream, legacy tar) list their arrays for
:class:`nbckpt.Archive`. The legacy formats, which store the data after the
pickle, also call :meth:`RecordingMaterializer.fill` for each storage: it
remembers where the bytes are and seeks over them.

    >>> from nbckpt.format import dtypes
    >>> recorder = RecordingMaterializer()
    >>> storage = recorder.storage("0", dtypes.by_torch_name("float32"), 6, "cuda:1")
    >>> ref = recorder.view(storage, np.dtype(np.float32), 8, (2, 2), (8, 4))
    >>> ref.storage.location, ref.offset, ref.shape
    ('cuda:1', 8, (2, 2))
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import numpy as np

from ..devices import check_saved_tag
from ..errors import FormatError
from ..format import dtypes as torch_dtypes
from ..meta import MetaArray
from .base import ArrayRef, StorageRef

__all__ = ["RecordingMaterializer", "SPARSE_PART_NAMES", "as_array_ref", "holds_array"]

#: The parts a sparse tensor is listed as (``name.values``...), per layout.
SPARSE_PART_NAMES = {
    "sparse_coo": ("indices", "values", "size"),
    "sparse_csr": ("crow_indices", "col_indices", "values", "size"),
    "sparse_csc": ("ccol_indices", "row_indices", "values", "size"),
    "sparse_bsr": ("crow_indices", "col_indices", "values", "size"),
    "sparse_bsc": ("ccol_indices", "row_indices", "values", "size"),
}


#: Byte offsets and strides must fit NumPy's intp, as ``np.ndarray(...)`` checks when a load
#: builds the view (a 2**62-element stride is 2**64 bytes of float32).
_INTP_LIMIT = 2**63


# The stand-ins are unhashable because what they stand for is: a load refuses a tensor
# used as a dict key or set item (NumPy arrays are unhashable), so the listing, open and
# verify, which run the same pickle over these, must refuse it at the same opcode.

class _RecordedArray(ArrayRef):
    """An :class:`ArrayRef` that, like the array it describes, cannot be hashed."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def conj(self) -> "_RecordedArray":
        _check_ufunc(np.conjugate, self.dtype)
        return _RecordedArray(self.storage, self.dtype, self.offset, self.shape, self.strides, self.transforms + ("conj",))

    def __neg__(self) -> "_RecordedArray":
        _check_ufunc(np.negative, self.dtype)
        return _RecordedArray(self.storage, self.dtype, self.offset, self.shape, self.strides, self.transforms + ("neg",))


def _check_ufunc(ufunc: Any, dtype: np.dtype) -> None:
    """FormatError where NumPy cannot apply ``ufunc`` to ``dtype`` (``-`` of a bool array).

    The eager load applies it when the pickle asks (a TypeError there, refused); the
    listing only records it, and would fail later, untyped, when the array is read.
    Trying it on an empty array of the dtype gives NumPy's own answer.
    """
    try:
        ufunc(np.empty(0, dtype))
    except TypeError as err:
        raise FormatError(f"invalid pickle: {err}", record="data.pkl") from None


class _RecordedStorage(StorageRef):
    """A :class:`StorageRef` that cannot be hashed (a storage saved on its own loads as an array)."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]


class _StorageSlice:
    """A legacy storage view: ``base`` bytes into ``root`` (arrays on it are recorded on the root)."""

    __slots__ = ("root", "base", "nbytes", "dtype")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, root: StorageRef, base: int, nbytes: int, dtype: torch_dtypes.TorchDtype) -> None:
        self.root, self.base, self.nbytes, self.dtype = root, base, nbytes, dtype


def stands_for_array(obj: Any) -> bool:
    """Whether ``obj`` lists as an array: an array stand-in, or a storage saved on its own.

    The cheap test behind :func:`as_array_ref` (which also builds the array's description).
    """
    return isinstance(obj, _ARRAY_LIKE)


def as_array_ref(obj: Any) -> ArrayRef | None:
    """The array a storage saved on its own loads as (1-D, over all of it), or None.

        >>> from nbckpt.format import dtypes
        >>> as_array_ref(StorageRef("0", dtypes.by_torch_name("int16"), 5, "cpu")).shape
        (5,)
    """
    if isinstance(obj, StorageRef):
        dtype = obj.dtype.numpy
        return ArrayRef(obj, dtype, 0, (obj.numel,), (dtype.itemsize,))
    if isinstance(obj, _StorageSlice):
        dtype = obj.dtype.numpy
        return ArrayRef(obj.root, dtype, obj.base, (obj.nbytes // dtype.itemsize,), (dtype.itemsize,))
    return None


def holds_array(obj: Any) -> bool:
    """Whether ``obj`` holds an array (a stand-in of one) anywhere inside it, attributes included.

    A listing walks dicts, lists and tuples by their keys; an array elsewhere (an
    attribute an OrderedDict got by BUILD, an allowlisted class's attribute, a set)
    would be left out of the listing and shown as an internal object among the
    values. ``nbckpt.open`` asks this of every value and refuses those that hold one.
    Each object is visited once (a memo "billion laughs" costs its size, not 2**40).
    """
    stand_ins = _ARRAY_LIKE
    plain = (list, tuple, dict, set, frozenset)  # exactly these types have no attributes
    atoms = frozenset({str, bytes, int, float, complex, bool, type(None)})
    sequences = frozenset({list, tuple, set, frozenset})
    seen: set[int] = set()
    stack = [obj]
    pop, extend = stack.pop, stack.extend
    while stack:  # the plain containers first and cheaply: this walks every value of a listing
        item = pop()
        kind = type(item)
        if kind in atoms:
            continue
        if kind in sequences:
            key = id(item)
            if key not in seen:
                seen.add(key)
                extend(item)
            continue
        if isinstance(item, stand_ins):
            return True
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(dict.keys(item))
            stack.extend(dict.values(item))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        if kind in plain:
            continue
        try:  # never getattr: an allowlisted class's __getattr__ or properties are its own code
            attributes = object.__getattribute__(item, "__dict__")
        except (AttributeError, TypeError):
            attributes = None
        if type(attributes) is dict:
            stack.extend(attributes.values())
        for cls in type(item).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if isinstance(name, str) and name.startswith("__") and not name.endswith("__"):
                    name = f"_{cls.__name__.lstrip('_')}{name}"  # a private slot is stored mangled
                try:
                    stack.append(object.__getattribute__(item, name))
                except (AttributeError, TypeError):
                    pass
    return False


class RecordingMaterializer:
    """Describes storages and views (see :mod:`nbckpt.pickling.rebuild`) without reading.

    ``size_of(key)``, when given, returns the bytes the file holds for a
    storage; a storage whose declared size differs is refused as the eager
    load refuses it. ``shard`` is copied into every :class:`StorageRef`.
    After a legacy file is indexed, ``ranges`` maps each storage key to the
    ``(offset, nbytes)`` of its data in the file.
    """

    def __init__(self, size_of: Callable[[str], int] | None = None, *, shard: str = "") -> None:
        self._size_of = size_of
        self._shard = shard
        self.storages: dict[str, tuple[StorageRef, torch_dtypes.TorchDtype, int]] = {}
        self.ranges: dict[str, tuple[int, int]] = {}
        self.base = 0  # where the stream handed to fill() starts in the file
        self._budget: int | None = None  # bytes of the file left for storage data (legacy files)

    def storage(self, key: str, dtype: torch_dtypes.TorchDtype, numel: int, location: str,
                untyped: bool = False) -> StorageRef:
        # A location no device can have is refused here, before any array is read: the
        # eager load refuses it when it places the storage (with the default map_location).
        check_saved_tag(location)
        if self._size_of is not None:
            size = self._size_of(key)
            if size != numel * dtype.itemsize:
                raise FormatError(
                    f"record data/{key} holds {size} bytes but the pickle declares {numel} "
                    f"x {dtype.name} = {numel * dtype.itemsize} bytes",
                    record=f"data/{key}",
                )
        if self._budget is not None:
            nbytes = numel * dtype.itemsize
            if nbytes > self._budget:  # as the eager legacy loader refuses it
                from .legacy_parse import shown_int

                raise FormatError(
                    f"storage {key!r} declares {shown_int(nbytes)} bytes, but only {self._budget} bytes of "
                    f"the file are left for storage data: the file is truncated or lies")
            self._budget -= nbytes
        ref = _RecordedStorage(key, dtype, numel, location, untyped, self._shard)
        self.storages[key] = (ref, dtype, numel)
        return ref

    def storage_view(self, root: Any, dtype: torch_dtypes.TorchDtype, offset: int, size: int) -> _StorageSlice:
        base = root.base if isinstance(root, _StorageSlice) else 0
        top = root.root if isinstance(root, _StorageSlice) else root
        return _StorageSlice(top, base + offset * dtype.itemsize, size * dtype.itemsize, dtype)

    def view(self, storage: Any, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> ArrayRef:
        if isinstance(storage, _StorageSlice):
            storage, offset = storage.root, storage.base + offset
        if offset >= _INTP_LIMIT or any(s >= _INTP_LIMIT for s in strides):
            # What np.ndarray refuses ("Maximum allowed dimension exceeded") when a load
            # builds this view: refused here too, typed, so that open and verify agree.
            raise FormatError(f"array byte stride {strides} or offset {offset} does not fit a 64-bit index",
                              record=f"data/{storage.key}")
        return _RecordedArray(storage, dtype, offset, shape, strides)

    # -- the batched forms (see nbckpt.materialize.Materializer; the fast path of flat dicts) ----

    def storages(self, requests: list[tuple]) -> list[StorageRef]:
        """``[self.storage(*request) for request in requests]``, each distinct location checked once."""
        if self._budget is not None or self._size_of is None or type(self).storage is not RecordingMaterializer.storage:
            return [self.storage(*request) for request in requests]
        many = getattr(self._size_of, "many", None)  # sizes of many keys at once (see torch_zip.RecordSizes)
        if many is not None and requests:
            keys, dtypes, numels, locations, untyped = zip(*requests)
            for location in dict.fromkeys(locations):
                check_saved_tag(location)
            declared = (list(map(dtypes[0].itemsize.__mul__, numels)) if len(set(map(id, dtypes))) == 1
                        else [numel * dtype.itemsize for dtype, numel in zip(dtypes, numels)])
            if many(keys) != declared:
                return [self.storage(*request) for request in requests]  # which reports it
            made = list(map(_RecordedStorage, keys, dtypes, numels, locations, untyped,
                            itertools.repeat(self._shard)))
            self.storages.update(zip(keys, zip(made, dtypes, numels)))
            return made
        size_of, shard, storages = self._size_of, self._shard, self.storages
        checked: set[str] = set()
        made = []
        for key, dtype, numel, location, untyped in requests:
            if location not in checked:
                check_saved_tag(location)
                checked.add(location)
            if size_of(key) != numel * dtype.itemsize:
                return [self.storage(*request) for request in requests]  # which reports it
            ref = _RecordedStorage(key, dtype, numel, location, untyped, shard)
            storages[key] = (ref, dtype, numel)
            made.append(ref)
        return made

    def views(self, requests: list[tuple]) -> list[ArrayRef]:
        """``[self.view(*request) for request in requests]``, each distinct strides tuple checked once."""
        if type(self).view is not RecordingMaterializer.view:
            return [self.view(*request) for request in requests]
        if requests:
            storages, _, offsets, _, strides = zip(*requests)
            if (_StorageSlice not in set(map(type, storages)) and max(offsets) < _INTP_LIMIT
                    and not any(s >= _INTP_LIMIT for stride in set(strides) for s in stride)):
                return list(itertools.starmap(_RecordedArray, requests))  # the checks below, column by column
        fitting: set[tuple] = set()
        made = []
        for storage, dtype, offset, shape, strides in requests:
            if strides not in fitting:
                if type(storage) is _StorageSlice or offset >= _INTP_LIMIT or any(s >= _INTP_LIMIT for s in strides):
                    return [self.view(*request) for request in requests]  # which reports it
                fitting.add(strides)
            elif type(storage) is _StorageSlice or offset >= _INTP_LIMIT:
                return [self.view(*request) for request in requests]
            made.append(_RecordedArray(storage, dtype, offset, shape, strides))
        return made

    def empty(self, storage: Any, dtype: np.dtype, shape: tuple[int, ...]) -> ArrayRef:
        root = storage.root if isinstance(storage, _StorageSlice) else storage
        return _RecordedArray(root, dtype, 0, shape, None)

    def defer_until_filled(self, array: Any, compute: Callable[[Any], Any]) -> Any:
        """An ArrayRef records conj/neg itself: compute now."""
        return compute(array)

    def sparse(self, layout: str, parts: Any) -> dict:
        """A sparse tensor is listed as its parts (``name.values``...)."""
        names = SPARSE_PART_NAMES.get(layout, ())
        if not isinstance(parts, tuple) or len(parts) < len(names):
            raise FormatError(f"sparse tensor data of layout {layout} has the wrong form")
        described: dict[str, Any] = {"layout": layout}
        described.update(zip(names, parts))
        return described

    # -- what the legacy parsers call -------------------------------------------------------

    def fill(self, key: str, stream: Any, nbytes: int, skip: bool) -> None:
        """Remember where storage ``key``'s bytes are, and seek over them."""
        self.ranges[key] = (self.base + stream.tell(), nbytes)
        stream.seek(nbytes, 1)

    def budget_for(self, nbytes_left: int) -> None:
        """Refuse storages larger than what is left of the file (legacy files), as loading does."""
        self._budget = nbytes_left

    def fill_deferred(self, result: Any) -> Any:
        return result


#: What :func:`stands_for_array` accepts (MetaArray: a ``device="meta"`` array, no data).
_ARRAY_LIKE = (ArrayRef, StorageRef, _StorageSlice, MetaArray)
