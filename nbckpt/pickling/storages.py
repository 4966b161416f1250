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


@dataclass(eq=False, slots=True)
class PlannedStorage:
    """One ``data/<key>`` record: a 1-D array whose bytes are written as they are."""

    dtype: torch_dtypes.TorchDtype
    location: str
    data: Any = None  # 1-D C-contiguous array (host or device) over exactly the bytes to write
    numel: int = 0
    key: str | None = None  # assigned in the order the pickle first mentions it
    backend: Any = None  # holds ``data``; ``backend.to_host(data)`` gives the bytes to write
    shared: bool = False  # viewed by more than one array (set by ``finish``)

    def host_bytes(self) -> np.ndarray:
        """The storage's bytes in host memory (one copy for device storages)."""
        data = self.data
        if self.backend is HOST and data.ndim == 1:  # the common case, without a call to the backend
            return data.view(np.uint8)
        return self.backend.to_host(data).reshape(-1).view(np.uint8)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(eq=False, slots=True)
class PlannedView:
    """How one array is written: a view of ``storage``, all counts in elements."""

    storage: PlannedStorage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    own: bool = False  # the array owns its memory and is its storage (no view of it planned so far)


@dataclass(eq=False, slots=True)
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
        self._grouped_owners: set[int] = set()  # ids of the owners in ``_groups``
        self._element_strides: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}
        self._shapes: dict[tuple[int, ...], tuple[int, ...]] = {}  # one tuple per distinct shape
        #: ids of the arrays added more than once (the pickle refers to them again)
        self.repeated: set[int] = set()
        self._storages: list[PlannedStorage] = []
        self._finished = False

    def add(self, array: Any) -> PlannedView:
        """Plan ``array`` (once per object); the same object returns the same view."""
        planned = self._views.get(id(array))
        if planned is not None:
            self.repeated.add(id(array))
            return planned
        if type(array) is np.ndarray and array.base is None and id(array) not in self._grouped_owners:
            planned = self._add_own(array)
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
            alone = self._views.get(id(owner))
            if alone is not None and alone.own:
                self._regroup(owner, alone)
            gkey = (id(owner), tdtype.name, lo % itemsize, location)
            group = self._groups.get(gkey)
            if group is None:
                group = self._groups[gkey] = _Group(owner, tdtype, location, backend)
                self._grouped_owners.add(id(owner))
                self._keep_alive.append(owner)
            member = _Member(array, lo, hi)
            group.members.append(member)
            # The storage is created and the offset set by finish().
            element_strides = strides if itemsize == 1 else tuple([s // itemsize for s in strides])
            planned = PlannedView(None, 0, array.shape, element_strides)  # type: ignore[arg-type]
            member.view = planned
        self._views[id(array)] = planned
        return planned

    def _add_own(self, array: np.ndarray) -> PlannedView | None:
        """Plan a host array that owns its memory as its own storage (None: not that simple).

        The common case of a save of many arrays takes this path: no group, no
        span, the storage final at once. Should a view of the array come later,
        :meth:`_regroup` turns the array into a member of that view's group.
        """
        dtype = array.dtype
        tdtype = torch_dtypes.for_numpy(dtype)
        if tdtype is None or not array.flags.c_contiguous or not dtype.isnative or not array.size:
            return None
        itemsize = dtype.itemsize
        key = (array.strides, itemsize)
        strides = self._element_strides.get(key)
        if strides is None:
            if not all(s >= 0 and not s % itemsize for s in array.strides):
                return None
            strides = tuple([s // itemsize for s in array.strides])
            if len(self._element_strides) < _STRIDES_CACHE:
                self._element_strides[key] = strides
        shape = array.shape
        shape = self._shapes.setdefault(shape, shape) if len(self._shapes) < _SHAPES_CACHE else shape
        data = array if array.ndim == 1 else array.reshape(-1)
        storage = PlannedStorage(tdtype, "cpu", data, array.size, None, HOST)
        planned = self._views[id(array)] = PlannedView(storage, 0, shape, strides, True)
        return planned

    def _regroup(self, owner: np.ndarray, planned: PlannedView) -> None:
        """Make an array planned by :meth:`_add_own` the first member of its group."""
        planned.own = False
        storage = planned.storage
        lo = owner.__array_interface__["data"][0]
        itemsize = storage.dtype.itemsize
        group = _Group(owner, storage.dtype, "cpu", HOST)
        group.members.append(_Member(owner, lo, lo + owner.nbytes, planned))
        planned.storage = None  # type: ignore[assignment]  # set by finish()
        self._groups[(id(owner), storage.dtype.name, lo % itemsize, "cpu")] = group
        self._grouped_owners.add(id(owner))
        self._keep_alive.append(owner)

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
        storage.shared = len(group.members) > 1
        for member in group.members:
            member.view.storage = storage
            member.view.offset = (member.lo - lo) // itemsize


_STRIDES_CACHE = 1024  # distinct (strides, itemsize) pairs whose element strides are kept
_SHAPES_CACHE = 4096  # distinct shapes shared between the views that have them


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
