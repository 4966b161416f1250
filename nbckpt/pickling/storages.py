"""Decide which bytes each saved array becomes: storages, offsets and strides.

torch writes one record per *storage* and describes every tensor as a view of
one (offset, size, stride, in elements). NumPy has no storages, only buffers
that arrays view, so the planner reconstructs them: arrays that view the same
memory owner with the same dtype become one storage spanning exactly the bytes
they cover, and each array becomes a view of it. On load they view one buffer
again, so ``np.shares_memory`` is true where it was before.

Arrays torch cannot express as a view are written as a contiguous copy of
their own (sharing is then not kept, and the saved strides are C order):

- negative strides, or strides that are not a multiple of the item size;
- non-native byte order (the bytes are stored in native order);
- memory whose owner does not export a buffer.

Two arrays that view overlapping bytes as different dtypes cannot be written
(torch refuses the same); arrays of size 0 always get an empty storage of their
own.

    >>> import numpy as np
    >>> base = np.arange(10, dtype=np.float32)
    >>> plan = StoragePlanner()
    >>> a, b = plan.add(base[2:6]), plan.add(base[4:9:2])
    >>> plan.finish()
    >>> a.storage is b.storage, a.offset, b.offset, b.strides, a.storage.numel
    (True, 0, 2, (2,), 7)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import HOST, backend_of
from ..format import dtypes as torch_dtypes

__all__ = ["StoragePlanner", "PlannedStorage", "PlannedView", "DTYPE_CONFLICT_MESSAGE"]

DTYPE_CONFLICT_MESSAGE = (
    "Cannot save multiple arrays or storages that view the same data as different types"
)


@dataclass(eq=False)
class PlannedStorage:
    """One ``data/<key>`` record: a 1-D array whose bytes are written as they are."""

    dtype: torch_dtypes.TorchDtype
    location: str
    data: Any = None  # 1-D C-contiguous array (host or device) over exactly the bytes to write
    numel: int = 0
    key: str | None = None  # assigned in the order the pickle first mentions it
    backend: Any = None  # holds ``data``; ``backend.to_host(data)`` gives the bytes to write

    def host_bytes(self) -> np.ndarray:
        """The storage's bytes in host memory (one copy for device storages)."""
        return self.backend.to_host(self.data).reshape(-1).view(np.uint8)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(eq=False)
class PlannedView:
    """How one array is written: a view of ``storage``, all counts in elements."""

    storage: PlannedStorage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


@dataclass(eq=False)
class _Member:
    array: Any
    lo: int  # address of the lowest byte the array covers
    hi: int  # one past the highest
    view: PlannedView | None = None


@dataclass(eq=False)
class _Group:
    """Arrays of one dtype over one memory owner, with the same byte phase."""

    owner: object
    dtype: torch_dtypes.TorchDtype
    location: str
    backend: Any
    members: list[_Member] = field(default_factory=list)


class StoragePlanner:
    """Collects arrays (``add``) and then builds their storages (``finish``).

    ``add`` returns a :class:`PlannedView` at once; its storage, offset and
    strides are final only after ``finish()``, which must run before pickling.
    Host (NumPy) and device (CuPy) arrays are planned alike: the backend of each
    array says who owns its memory and how to view a span of it.
    """

    def __init__(self) -> None:
        self._views: dict[int, PlannedView] = {}
        self._keep_alive: list[object] = []
        self._groups: dict[tuple[int, str, int, str], _Group] = {}
        self._storages: list[PlannedStorage] = []
        self._finished = False

    def add(self, array: Any) -> PlannedView:
        """Plan ``array`` (once per object); the same object returns the same view."""
        planned = self._views.get(id(array))
        if planned is not None:
            return planned
        self._keep_alive.append(array)
        dtype = array.dtype
        tdtype = torch_dtypes.for_numpy(dtype)
        if tdtype is None:
            raise TypeError(f"dtype {dtype} has no torch equivalent")
        if type(array) is np.ndarray:  # the common case, without a backend lookup
            backend, location = HOST, "cpu"
        else:
            backend = backend_of(array)
            location = backend.location(array)
        itemsize = dtype.itemsize
        strides = array.strides
        plain_strides = all(s >= 0 and not s % itemsize for s in strides)
        if not plain_strides and array.flags.c_contiguous:
            # NumPy ignores the strides of dimensions of size 1, which may then be
            # negative: the canonical ones describe the same memory.
            strides, plain_strides = _contiguous_byte_strides(array.shape, itemsize), True
        if array.size == 0:
            storage = self._new_storage(tdtype, location, backend)
            storage.data = np.empty(0, dtype=np.uint8)
            storage.backend = HOST
            planned = PlannedView(storage, 0, array.shape, _contiguous_strides(array.shape))
        elif not plain_strides or not dtype.isnative:
            planned = self._copy(array, tdtype, location, backend)
        else:
            owner, lo = backend.memory(array)
            hi = lo + itemsize
            for n, stride in zip(array.shape, strides):
                hi += (n - 1) * stride
            gkey = (id(owner), tdtype.name, lo % itemsize, location)
            group = self._groups.get(gkey)
            if group is None:
                group = self._groups[gkey] = _Group(owner, tdtype, location, backend)
                self._keep_alive.append(owner)
            member = _Member(array, lo, hi)
            group.members.append(member)
            # The storage is created and the offset set by finish().
            element_strides = strides if itemsize == 1 else tuple([s // itemsize for s in strides])
            planned = PlannedView(None, 0, array.shape, element_strides)  # type: ignore[arg-type]
            member.view = planned
        self._views[id(array)] = planned
        return planned

    def planned(self, array: Any) -> PlannedView:
        """The view planned for ``array`` by :meth:`add`."""
        return self._views[id(array)]

    def _new_storage(self, dtype: torch_dtypes.TorchDtype, location: str, backend: Any) -> PlannedStorage:
        storage = PlannedStorage(dtype, location, backend=backend)
        self._storages.append(storage)
        return storage

    def _copy(self, array: Any, dtype: torch_dtypes.TorchDtype, location: str, backend: Any) -> PlannedView:
        native = array.dtype if array.dtype.isnative else array.dtype.newbyteorder("=")
        data = backend.contiguous(array, native)
        storage = self._new_storage(dtype, location, backend)
        storage.data, storage.numel = data, data.size
        return PlannedView(storage, 0, array.shape, _contiguous_strides(array.shape))

    def finish(self) -> None:
        """Build the storages of all grouped arrays; checks dtype conflicts."""
        if self._finished:
            return
        self._finished = True
        by_owner: dict[int, list[_Group]] = {}
        for group in self._groups.values():
            by_owner.setdefault(id(group.owner), []).append(group)
        for groups in by_owner.values():
            if len(groups) > 1:
                _check_dtype_conflicts(groups)
            for group in groups:
                self._build_group_storage(group)

    def _build_group_storage(self, group: _Group) -> None:
        itemsize = group.dtype.itemsize
        lo = min(m.lo for m in group.members)
        hi = max(m.hi for m in group.members)
        first = group.members[0]
        if len(group.members) == 1 and first.array.flags.c_contiguous:
            data = first.array.reshape(-1)
        else:
            try:
                data = group.backend.span(group.owner, lo, hi - lo)
            except (TypeError, ValueError, BufferError):
                # The owner does not expose its memory: each array is copied.
                for member in group.members:
                    copied = self._copy(member.array, group.dtype, group.location, group.backend)
                    member.view.storage, member.view.offset = copied.storage, 0
                    member.view.strides = copied.strides
                return
        storage = self._new_storage(group.dtype, group.location, group.backend)
        storage.data, storage.numel = data, (hi - lo) // itemsize
        for member in group.members:
            member.view.storage = storage
            member.view.offset = (member.lo - lo) // itemsize


def _contiguous_byte_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    if len(shape) == 1:
        return (itemsize,)
    return tuple(s * itemsize for s in _contiguous_strides(shape))


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _check_dtype_conflicts(groups: list[_Group]) -> None:
    """Raise when two arrays of different dtypes view overlapping bytes of one owner."""
    for i, group in enumerate(groups):
        for other in groups[i + 1 :]:
            if group.dtype.name == other.dtype.name:
                continue
            for a in group.members:
                for b in other.members:
                    if a.lo < b.hi and b.lo < a.hi and _really_overlap(a.array, b.array):
                        raise ValueError(
                            f"{DTYPE_CONFLICT_MESSAGE} ({group.dtype.name} and {other.dtype.name} "
                            f"over the same memory). Save a copy of one of them (array.copy()) to "
                            f"store both."
                        )


def _really_overlap(a: Any, b: Any) -> bool:
    """Whether two arrays with overlapping extents share a byte (interleaved views may not)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.shares_memory(a, b))
    return True
