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

from typing import Any, Callable

import numpy as np

from ..errors import FormatError
from ..format import dtypes as torch_dtypes
from .base import ArrayRef, StorageRef

__all__ = ["RecordingMaterializer", "SPARSE_PART_NAMES", "as_array_ref"]

#: The parts a sparse tensor is listed as (``name.values``...), per layout.
SPARSE_PART_NAMES = {
    "sparse_coo": ("indices", "values", "size"),
    "sparse_csr": ("crow_indices", "col_indices", "values", "size"),
    "sparse_csc": ("ccol_indices", "row_indices", "values", "size"),
    "sparse_bsr": ("crow_indices", "col_indices", "values", "size"),
    "sparse_bsc": ("ccol_indices", "row_indices", "values", "size"),
}


class _StorageSlice:
    """A legacy storage view: ``base`` bytes into ``root`` (arrays on it are recorded on the root)."""

    __slots__ = ("root", "base", "nbytes", "dtype")

    def __init__(self, root: StorageRef, base: int, nbytes: int, dtype: torch_dtypes.TorchDtype) -> None:
        self.root, self.base, self.nbytes, self.dtype = root, base, nbytes, dtype


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
        ref = StorageRef(key, dtype, numel, location, untyped, self._shard)
        self.storages[key] = (ref, dtype, numel)
        return ref

    def storage_view(self, root: Any, dtype: torch_dtypes.TorchDtype, offset: int, size: int) -> _StorageSlice:
        base = root.base if isinstance(root, _StorageSlice) else 0
        top = root.root if isinstance(root, _StorageSlice) else root
        return _StorageSlice(top, base + offset * dtype.itemsize, size * dtype.itemsize, dtype)

    def view(self, storage: Any, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> ArrayRef:
        if isinstance(storage, _StorageSlice):
            return ArrayRef(storage.root, dtype, storage.base + offset, shape, strides)
        return ArrayRef(storage, dtype, offset, shape, strides)

    def empty(self, storage: Any, dtype: np.dtype, shape: tuple[int, ...]) -> ArrayRef:
        root = storage.root if isinstance(storage, _StorageSlice) else storage
        return ArrayRef(root, dtype, 0, shape, None)

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
