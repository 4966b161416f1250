"""The one interface every checkpoint format implements: :class:`Reader`.

A *reader* is one checkpoint opened for reading, whatever its format (torch
zip, legacy stream, legacy tar, safetensors, a sharded index, ``.npz``, a DCP
folder). ``nbckpt.load``, ``nbckpt.open`` (:class:`nbckpt.Archive`),
``nbckpt.verify``, ``nbckpt.scan`` and, through them, ``diff``, ``convert``,
the command line, the magics and the widgets only ever talk to this interface;
:func:`nbckpt.formats.sniff.open_reader` picks the reader for a file.

Opening a reader reads only what is needed to *describe* the checkpoint (a zip
directory and ``data.pkl``, a safetensors header, an index JSON): never a byte
of array data. A reader describes its arrays as :class:`ArrayRef` objects (a
view of a :class:`StorageRef`), and hands out a :class:`StorageSource` from
which :class:`nbckpt.materialize.Materializer` reads one storage at a time onto
the device ``map_location`` asks for.

    >>> import io, numpy as np, nbckpt
    >>> from nbckpt.formats.sniff import open_reader
    >>> buf = io.BytesIO()
    >>> nbckpt.save({"w": np.ones(3, np.float32)}, buf)
    >>> _ = buf.seek(0)
    >>> reader = open_reader(buf)
    >>> reader.format, reader.tree()["w"].shape
    ('zip', (3,))

Writing a reader for a new format: a class whose constructor is
``Cls(target, *, weights_only)`` (``target`` is a
:class:`nbckpt.formats.sniff.Target`: the opened stream, or None for a folder,
and the path) and which has the members of :class:`Reader` below (no base
class needed; ``isinstance(obj, Reader)`` checks the names). Then add one line
to :data:`nbckpt.formats.sniff.READERS` and the format to the matrix in
``tests/test_formats.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..format import dtypes as torch_dtypes

if TYPE_CHECKING:
    from ..devices import DeviceMap
    from ..pickling.scan import GlobalRef
    from ..verify import VerifyReport

__all__ = ["Reader", "StorageSource", "StorageRef", "ArrayRef", "LoadOptions", "FormatInfo", "contiguous_strides"]


class StorageRef:
    """A storage (one run of bytes) that a checkpoint's arrays view; nothing of it read.

    ``key`` names it for the reader's :class:`StorageSource`; ``dtype`` is the
    torch dtype of its elements and ``numel`` their count; ``location`` the
    device tag it was saved on (``"cpu"``, ``"cuda:1"``); ``untyped`` marks
    torch's ``UntypedStorage`` (elements are bytes until the first view);
    ``shard`` names the file (or files) holding it, for sharded checkpoints;
    ``chunks`` counts the pieces it is stored in (DCP folders; 1 elsewhere).
    """

    __slots__ = ("key", "dtype", "numel", "location", "untyped", "shard", "chunks")

    def __init__(self, key: str, dtype: torch_dtypes.TorchDtype, numel: int, location: str,
                 untyped: bool = False, shard: str = "", chunks: int = 1) -> None:
        self.key, self.dtype, self.numel, self.location = key, dtype, numel, location
        self.untyped, self.shard, self.chunks = untyped, shard, chunks

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"StorageRef({self.key!r}, {self.dtype!r}, numel={self.numel}, location={self.location!r})"


def contiguous_strides(shape: tuple[int, ...], itemsize: int, *, fortran: bool = False) -> tuple[int, ...]:
    """Byte strides of a contiguous array (C order, or Fortran order when ``fortran``).

        >>> contiguous_strides((2, 3), 4), contiguous_strides((2, 3), 4, fortran=True)
        ((12, 4), (4, 8))
    """
    order = range(len(shape)) if fortran else reversed(range(len(shape)))
    strides = [0] * len(shape)
    step = itemsize
    for axis in order:
        strides[axis] = step
        step *= max(shape[axis], 1)
    return tuple(strides)


class ArrayRef:
    """An array a checkpoint holds: a view of a storage, described, not read.

    ``offset`` and ``strides`` are in bytes (``strides`` is None for an array of
    size 0 that needs no storage bytes); ``transforms`` lists the values torch
    keeps unmaterialized (``"conj"``, ``"neg"``), applied after reading.
    """

    __slots__ = ("storage", "dtype", "offset", "shape", "strides", "transforms")

    def __init__(self, storage: StorageRef, dtype: np.dtype, offset: int, shape: tuple[int, ...],
                 strides: tuple[int, ...] | None, transforms: tuple[str, ...] = ()) -> None:
        self.storage, self.dtype, self.offset = storage, dtype, offset
        self.shape, self.strides, self.transforms = shape, strides, transforms

    @property
    def nbytes(self) -> int:
        size = 1
        for n in self.shape:
            size *= n
        return size * self.dtype.itemsize

    # torch stores conj()/neg views unmaterialized; the rebuild asks for these.
    def conj(self) -> "ArrayRef":
        return ArrayRef(self.storage, self.dtype, self.offset, self.shape, self.strides, self.transforms + ("conj",))

    def __neg__(self) -> "ArrayRef":
        return ArrayRef(self.storage, self.dtype, self.offset, self.shape, self.strides, self.transforms + ("neg",))

    def __repr__(self) -> str:
        return f"ArrayRef({self.storage.key!r}, {self.dtype}, shape={self.shape})"


@dataclass(frozen=True)
class LoadOptions:
    """How :meth:`Reader.load` builds the whole object (the options of :func:`nbckpt.load`)."""

    weights_only: bool = True
    encoding: str = "utf-8"
    skip_data: bool = False
    mmap_access: int | None = None  # an ``mmap.ACCESS_*`` mode, or None
    verify: bool = False
    progress: bool | None = None


@dataclass(frozen=True)
class FormatInfo:
    """What a reader knows about its file, for :attr:`nbckpt.Archive.info`.

    ``description`` is one line for people (``"safetensors"``,
    ``"legacy stream (torch < 1.6)"``); ``details`` are further ``(label,
    value)`` rows shown by ``%ckpt info`` and the browser; ``metadata`` is the
    file's own free-form metadata (safetensors' ``__metadata__``).
    """

    format: str
    description: str
    byteorder: str = "little"
    byteorder_recorded: bool = True
    version: int = 0
    prefix: str = ""
    storages: int = 0
    array_bytes: int = 0
    file_bytes: int = 0
    pickle_bytes: int = 0
    globals: tuple["GlobalRef", ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    details: tuple[tuple[str, str], ...] = ()


@runtime_checkable
class StorageSource(Protocol):
    """Where a reader's storage bytes come from (used by the materializer).

    ``host_bytes`` returns exactly ``nbytes`` bytes of storage ``key`` as a flat
    uint8 host array, in the file's byte order: a fresh buffer from
    ``backend.host_buffer(nbytes)`` read with ``readinto``, or, when
    ``mapped_ok`` and the file is memory-mapped, a view of the mapping.
    """

    def size(self, key: str) -> int:
        """The storage's size in bytes as the file stores it (FormatError if it is missing)."""
        ...

    def host_bytes(self, key: str, nbytes: int, backend: Any, *, mapped_ok: bool) -> np.ndarray:
        """The storage's bytes in host memory."""
        ...


@runtime_checkable
class Reader(Protocol):
    """One checkpoint opened for reading. See the module docstring.

    ``format`` is the short name (``"zip"``, ``"legacy"``, ``"tar"``,
    ``"safetensors"``, ``"sharded"``, ``"npz"``, ``"dcp"``); ``source`` the
    file's name for messages; ``byteorder`` the order of the storage bytes
    ``storages()`` returns (the materializer swaps them when it is not the
    host's).
    """

    format: str
    source: str
    byteorder: str

    def tree(self) -> Any:
        """The checkpoint's object with an :class:`ArrayRef` (or ``MetaArray``) for each array.

        Reads no storage byte. Non-array leaves (numbers, strings) are the values
        themselves. Raises the same errors a ``weights_only`` load would.
        """
        ...

    def storages(self, *, mmap_access: int | None = None) -> StorageSource:
        """A source of the bytes of the storages the tree's refs name (each read when asked).

        ``mmap_access`` (an ``mmap.ACCESS_*`` mode) maps the file where the
        format allows; readers that cannot map ignore it.
        """
        ...

    def load(self, device_map: "DeviceMap", options: LoadOptions) -> Any:
        """The whole object, as :func:`nbckpt.load` returns it."""
        ...

    def info(self) -> FormatInfo:
        """Format, byte order, sizes, globals and metadata (no storage byte read)."""
        ...

    def verify(self, report: "VerifyReport", progress: bool | None) -> None:
        """Check the file, adding every problem found to ``report`` (see :func:`nbckpt.verify`)."""
        ...

    def pickles(self) -> list[bytes]:
        """The pickles the file holds, for :func:`nbckpt.scan` (``[]`` for pickle-free formats)."""
        ...

    def close(self) -> None:
        """Close the files the reader opened (arrays already read stay valid)."""
        ...
