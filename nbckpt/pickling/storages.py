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

import numpy as np

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
    data: object = None  # 1-D C-contiguous array over exactly the bytes to write
    numel: int = 0
    key: str | None = None  # assigned in the order the pickle first mentions it

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
    array: np.ndarray
    lo: int  # address of the lowest byte the array covers
    hi: int  # one past the highest
    view: PlannedView | None = None


@dataclass(eq=False)
class _Group:
    """Arrays of one dtype over one memory owner, with the same byte phase."""

    owner: object
    dtype: torch_dtypes.TorchDtype
    location: str
    members: list[_Member] = field(default_factory=list)


def _owner_of(array: np.ndarray) -> object:
    """The object that owns ``array``'s memory: the end of its ``.base`` chain.

    The chain can pass through objects that only describe memory, such as the
    wrapper ``np.lib.stride_tricks.as_strided`` puts between an array and its base.
    """
    owner: object = array
    while isinstance(owner, np.ndarray) or hasattr(owner, "__array_interface__"):
        base = getattr(owner, "base", None)
        if base is None:
            break
        owner = base
    return owner


def _owner_bytes(owner: object) -> tuple[np.ndarray, int]:
    """A flat uint8 view of everything ``owner`` holds, and its address."""
    if isinstance(owner, np.ndarray):
        flat = owner.reshape(-1, order="A" if owner.flags.f_contiguous else "C")
        raw = flat.view(np.uint8)
    else:
        raw = np.frombuffer(owner, dtype=np.uint8)
    return raw, raw.__array_interface__["data"][0]


class StoragePlanner:
    """Collects arrays (``add``) and then builds their storages (``finish``).

    ``add`` returns a :class:`PlannedView` at once; its storage, offset and
    strides are final only after ``finish()``, which must run before pickling.
    """

    def __init__(self) -> None:
        self._views: dict[int, PlannedView] = {}
        self._keep_alive: list[object] = []
        self._groups: dict[tuple[int, str, int, str], _Group] = {}
        self._storages: list[PlannedStorage] = []
        self._finished = False

    def add(self, array: np.ndarray, location: str = "cpu") -> PlannedView:
        """Plan ``array`` (once per object); the same object returns the same view."""
        planned = self._views.get(id(array))
        if planned is not None:
            return planned
        self._keep_alive.append(array)
        tdtype = torch_dtypes.for_numpy(array.dtype)
        if tdtype is None:
            raise TypeError(f"dtype {array.dtype} has no torch equivalent")
        itemsize = array.dtype.itemsize
        strides = array.strides
        if array.size == 0:
            storage = self._new_storage(tdtype, location)
            storage.data = np.empty(0, dtype=tdtype.numpy)
            planned = PlannedView(storage, 0, array.shape, _contiguous_strides(array.shape))
        elif (
            not array.dtype.isnative
            or any(s < 0 or s % itemsize for s in strides)
        ):
            planned = self._copy(array, tdtype, location)
        else:
            owner = _owner_of(array)
            lo = array.__array_interface__["data"][0]
            hi = lo + sum((n - 1) * s for n, s in zip(array.shape, strides)) + itemsize
            gkey = (id(owner), tdtype.name, lo % itemsize, location)
            group = self._groups.get(gkey)
            if group is None:
                group = self._groups[gkey] = _Group(owner, tdtype, location)
                self._keep_alive.append(owner)
            member = _Member(array, lo, hi)
            group.members.append(member)
            # Filled in by finish(); the storage object is created there.
            planned = PlannedView(None, 0, array.shape, tuple(s // itemsize for s in strides))  # type: ignore[arg-type]
            member.view = planned
        self._views[id(array)] = planned
        return planned

    def _new_storage(self, dtype: torch_dtypes.TorchDtype, location: str) -> PlannedStorage:
        storage = PlannedStorage(dtype, location)
        self._storages.append(storage)
        return storage

    def _copy(self, array: np.ndarray, dtype: torch_dtypes.TorchDtype, location: str) -> PlannedView:
        native = array.dtype if array.dtype.isnative else array.dtype.newbyteorder("=")
        data = np.ascontiguousarray(array, dtype=native).reshape(-1)
        storage = self._new_storage(dtype, location)
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
        numel = (hi - lo) // itemsize
        first = group.members[0]
        if len(group.members) == 1 and first.array.flags.c_contiguous:
            data = first.array.reshape(-1)
        else:
            try:
                raw, address = _owner_bytes(group.owner)
                data = raw[lo - address : hi - address].view(group.dtype.numpy)
            except (TypeError, ValueError, BufferError):
                data = None
            if data is None or data.size != numel:
                # The owner does not expose its memory: each array is copied.
                for member in group.members:
                    copied = self._copy(member.array, group.dtype, group.location)
                    member.view.storage, member.view.offset = copied.storage, 0
                    member.view.strides = copied.strides
                return
        storage = self._new_storage(group.dtype, group.location)
        storage.data, storage.numel = data, numel
        for member in group.members:
            member.view.storage = storage
            member.view.offset = (member.lo - lo) // itemsize


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _check_dtype_conflicts(groups: list[_Group]) -> None:
    """Raise when two dtypes view overlapping bytes of one owner."""
    spans = [
        (min(m.lo for m in g.members), max(m.hi for m in g.members), g.dtype)
        for g in groups
    ]
    for i, (lo_a, hi_a, dt_a) in enumerate(spans):
        for lo_b, hi_b, dt_b in spans[i + 1 :]:
            if lo_a < hi_b and lo_b < hi_a and dt_a.name != dt_b.name:
                raise ValueError(
                    f"{DTYPE_CONFLICT_MESSAGE} ({dt_a.name} and {dt_b.name} over the same "
                    f"memory). Save a copy of one of them (array.copy()) to store both."
                )
