"""Lazy, random-access view of a checkpoint: list its arrays, load any one.

Opening reads the zip directory and ``data.pkl`` only — never a storage byte —
so opening and listing a 10 GB checkpoint costs as much as a 10 kB one. Each
array is read when asked for, and only its storage is read.

    >>> import io, numpy as np, nbckpt
    >>> buf = io.BytesIO()
    >>> nbckpt.save({"layer": {"weight": np.eye(3, dtype=np.float32)}, "step": 7}, buf)
    >>> _ = buf.seek(0)
    >>> with nbckpt.open(buf) as archive:
    ...     print([(r.name, r.shape, str(r.dtype)) for r in archive.records])
    ...     print(archive["layer.weight"][0], archive.values["step"])
    [('layer.weight', (3, 3), 'float32')]
    [1. 0. 0.] 7
"""

from __future__ import annotations

import copy
import math
import mmap as mmap_module
import os
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from . import api
from .backends import device_scope
from .devices import DeviceMap
from .errors import FormatError
from .format import dtypes as torch_dtypes
from .format.checkpoint import ZipCheckpoint, open_zip_checkpoint
from .materialize import ZipMaterializer, ZipSource
from .meta import MetaArray
from .pickling import scan
from .pickling.rebuild import Rebuilder, transform_covered
from .pickling.unpickler import FullUnpickler, SafeUnpickler
from .sources import is_path, open_input
from .summary import records_html

if TYPE_CHECKING:  # verify imports this module: no import cycle at run time
    from .verify import VerifyReport

__all__ = ["Archive", "Record", "ArchiveInfo", "open"]

_MAX_DEPTH = 200  # deeper structures are listed down to this depth


@dataclass(frozen=True)
class Record:
    """One array of an archive, described without reading it.

    ``offset`` and ``strides`` count elements of ``dtype`` within ``storage``
    (the ``data/<key>`` record); ``shares`` names the other records whose
    arrays view the same storage.
    """

    name: str
    path: tuple
    shape: tuple[int, ...]
    dtype: np.dtype
    location: str
    nbytes: int
    storage: str
    offset: int
    strides: tuple[int, ...]
    shares: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ArchiveInfo:
    """What a checkpoint holds, read from its directory and pickle."""

    source: str
    format: str
    prefix: str
    version: int
    byteorder: str
    byteorder_recorded: bool
    records: int
    storages: int
    array_bytes: int
    file_bytes: int
    pickle_bytes: int
    globals: tuple[scan.GlobalRef, ...] = field(default=())

    @property
    def refused_globals(self) -> list[str]:
        """Globals a ``weights_only`` load would refuse."""
        return [g.name for g in self.globals if not g.allowed]


class _StorageRef:
    """A storage the pickle refers to; nothing of it has been read."""

    __slots__ = ("key", "dtype", "numel", "location", "untyped")

    def __init__(self, key: str, dtype: torch_dtypes.TorchDtype, numel: int, location: str,
                 untyped: bool) -> None:
        self.key, self.dtype, self.numel, self.location, self.untyped = key, dtype, numel, location, untyped


class _ArrayRef:
    """An array the pickle builds: a checked view of a storage, plus value transforms."""

    __slots__ = ("storage", "dtype", "offset", "shape", "strides", "transforms")

    def __init__(self, storage: _StorageRef, dtype: np.dtype, offset: int, shape: tuple[int, ...],
                 strides: tuple[int, ...] | None, transforms: tuple[str, ...] = ()) -> None:
        self.storage, self.dtype, self.offset = storage, dtype, offset
        self.shape, self.strides, self.transforms = shape, strides, transforms

    # torch stores conj()/neg views unmaterialized; the rebuild asks for these.
    def conj(self) -> "_ArrayRef":
        return _ArrayRef(self.storage, self.dtype, self.offset, self.shape, self.strides, self.transforms + ("conj",))

    def __neg__(self) -> "_ArrayRef":
        return _ArrayRef(self.storage, self.dtype, self.offset, self.shape, self.strides, self.transforms + ("neg",))


class _RecordingMaterializer:
    """Describes storages and views instead of reading them (see rebuild.py)."""

    def __init__(self, checkpoint: ZipCheckpoint) -> None:
        self._reader = checkpoint.reader

    def storage(self, key: str, dtype: torch_dtypes.TorchDtype, numel: int, location: str,
                untyped: bool = False) -> _StorageRef:
        name = f"data/{key}"
        entry = self._reader.entry(name)
        if entry.size != numel * dtype.itemsize:
            raise FormatError(
                f"record {name} holds {entry.size} bytes but the pickle declares {numel} "
                f"x {dtype.name} = {numel * dtype.itemsize} bytes",
                record=name,
            )
        return _StorageRef(key, dtype, numel, location, untyped)

    def view(self, storage: _StorageRef, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> _ArrayRef:
        return _ArrayRef(storage, dtype, offset, shape, strides)

    def empty(self, storage: _StorageRef, dtype: np.dtype, shape: tuple[int, ...]) -> _ArrayRef:
        return _ArrayRef(storage, dtype, 0, shape, None)

    def sparse(self, layout: str, parts: Any) -> dict:
        """A sparse tensor is listed as its parts (``name.values``...)."""
        names = _SPARSE_PART_NAMES.get(layout, ())
        if not isinstance(parts, tuple) or len(parts) < len(names):
            raise FormatError(f"sparse tensor data of layout {layout} has the wrong form")
        described = {"layout": layout}
        described.update(zip(names, parts))
        return described


_SPARSE_PART_NAMES = {
    "sparse_coo": ("indices", "values", "size"),
    "sparse_csr": ("crow_indices", "col_indices", "values", "size"),
    "sparse_csc": ("ccol_indices", "row_indices", "values", "size"),
    "sparse_bsr": ("crow_indices", "col_indices", "values", "size"),
    "sparse_bsc": ("ccol_indices", "row_indices", "values", "size"),
}


def open(f: Any, *, map_location: Any = None, weights_only: bool = True,
         mmap: bool | str = False, storage_options: dict | None = None) -> "Archive":
    """Open a checkpoint lazily: see :class:`Archive`. Use it as a context manager.

    ``f`` may be a URL (``s3://bucket/model.pt``, ``https://...``; ``storage_options``
    go to fsspec): opening then fetches the zip directory and ``data.pkl`` with
    ranged requests, and each array's bytes only when it is read.

        >>> import io, numpy as np, nbckpt
        >>> buf = io.BytesIO()
        >>> nbckpt.save({"a": np.arange(3)}, buf)
        >>> _ = buf.seek(0)
        >>> with nbckpt.open(buf) as archive:
        ...     len(archive), archive.info.format
        (1, 'zip')
    """
    return Archive(f, map_location=map_location, weights_only=weights_only, mmap=mmap,
                   storage_options=storage_options)


class Archive:
    """A checkpoint opened for browsing: ``records``, ``archive[name]``, ``load()``.

    ``f`` is a path or a URL (kept open until :meth:`close`) or a seekable
    binary file object (used in place; do not use it elsewhere while the archive
    is open). ``map_location``, ``weights_only`` and ``mmap`` act as in
    :func:`nbckpt.load` on every array read from the archive; ``storage_options``
    go to fsspec for URLs.
    """

    def __init__(self, f: Any, *, map_location: Any = None, weights_only: bool = True,
                 mmap: bool | str = False, storage_options: dict | None = None) -> None:
        self._device_map = DeviceMap.parse(map_location)
        self._weights_only = weights_only
        self._access = api.mmap_access(mmap)
        api.check_mmap_source(f, self._access)
        self.source = os.fsdecode(f) if is_path(f) else f"<{type(f).__qualname__}>"
        self._stream, self._owns_stream = open_input(f, storage_options)
        try:
            here = self._stream.tell()
            magic = self._stream.read(4)
            self._stream.seek(here)
            if magic and magic != b"PK\x03\x04":
                raise FormatError(
                    "nbckpt.open browses zip checkpoints (torch >= 1.6); this file is not one (a "
                    "legacy torch file, or not a checkpoint at all). Load legacy files with "
                    "nbckpt.load, or save them again with nbckpt.save to browse them."
                )
            self._checkpoint = open_zip_checkpoint(self._stream)
            unpickler = SafeUnpickler if weights_only else FullUnpickler
            recorder = Rebuilder(_RecordingMaterializer(self._checkpoint))
            tree = unpickler(self._checkpoint.data_pkl, recorder).load()
        except BaseException:
            self.close()
            raise
        records, refs, self.values = _index(tree)
        #: One Record per array, in the order the structure holds them.
        self.records: list[Record] = records
        self._refs = {record.path: ref for record, ref in zip(records, refs)}
        self._by_name: dict[str, Record] = {}
        for record in records:
            self._by_name.setdefault(record.name, record)
        self._storage_roots: dict[str, tuple[Any, np.dtype, int]] = {}
        self._storage_backends: dict[str, Any] = {}
        self._materializer: ZipMaterializer | None = None

    # -- context manager --------------------------------------------------------------------

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the file if the archive opened it (arrays already loaded stay valid)."""
        if self._owns_stream and not self._stream.closed:
            self._stream.close()

    # -- listing ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def record(self, name: str | tuple) -> Record:
        """The record of ``name`` (dotted) or of a path tuple; KeyError if absent."""
        if isinstance(name, tuple):
            for record in self.records:
                if record.path == name:
                    return record
        elif name in self._by_name:
            return self._by_name[name]
        close = [r.name for r in self.records if str(name) in r.name][:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise KeyError(f"no array named {name!r} in {self.source}{hint}")

    @property
    def info(self) -> ArchiveInfo:
        """Format, byte order, counts and sizes, and the globals the pickle names."""
        checkpoint = self._checkpoint
        reader = checkpoint.reader
        keys = checkpoint.storage_keys
        return ArchiveInfo(
            source=self.source,
            format="zip",
            prefix=reader.prefix,
            version=checkpoint.version,
            byteorder=checkpoint.byteorder,
            byteorder_recorded=checkpoint.byteorder_recorded,
            records=len(self.records),
            storages=len(keys),
            array_bytes=sum(reader.entry(f"data/{k}").size for k in keys),
            file_bytes=reader.end - reader.start,
            pickle_bytes=len(checkpoint.data_pkl),
            globals=tuple(scan.scan_pickle(checkpoint.data_pkl)),
        )

    def verify(self) -> "VerifyReport":
        """Check the archive's records (CRC-32s, sizes, pickle, views): see :func:`nbckpt.verify`."""
        from .verify import verify

        here = self._stream.tell()
        self._stream.seek(self._checkpoint.reader.start)
        try:
            return verify(self._stream)
        finally:
            self._stream.seek(here)

    # -- loading ---------------------------------------------------------------------------------

    def __getitem__(self, name: str | tuple) -> Any:
        """Load one array (reading only its storage) onto its ``map_location`` device."""
        record = self.record(name)
        return self._materialize(self._refs[record.path])

    def remapped(self, map_location: Any) -> "Archive":
        """The same open archive, whose arrays load onto ``map_location`` instead.

        Nothing is read: the clone shares the file, the records and the values
        with this archive, and keeps its own cache of storages read (arrays from
        the two do not share memory). Closing either closes nothing of the
        other; the file stays open until this archive is closed.

            >>> import io, numpy as np, nbckpt
            >>> buf = io.BytesIO()
            >>> nbckpt.save({"w": np.ones(2)}, buf)
            >>> _ = buf.seek(0)
            >>> archive = nbckpt.open(buf, map_location="cuda:0")
            >>> archive.remapped("cpu")["w"]
            array([1., 1.])
        """
        clone = copy.copy(self)
        clone._device_map = DeviceMap.parse(map_location)
        clone._owns_stream = False
        clone._storage_roots, clone._storage_backends, clone._materializer = {}, {}, None
        return clone

    def load(self) -> Any:
        """Load the whole object, exactly as :func:`nbckpt.load` would."""
        with api.map_file(self._stream, self._access) as mapped:
            source = ZipSource(self._checkpoint.reader, mapped=mapped)
            materializer = ZipMaterializer(source, self._device_map, byteorder=self._checkpoint.byteorder)
            return api.unpickle(self._checkpoint.data_pkl, materializer, weights_only=self._weights_only,
                                encoding="utf-8")

    def _materialize(self, ref: _ArrayRef | MetaArray) -> Any:
        if isinstance(ref, MetaArray):
            return ref
        materializer = self._storage_reader()
        sref = ref.storage
        storage = self._cached_storage(sref.key)
        if storage is None:
            storage = materializer.storage(sref.key, sref.dtype, sref.numel, sref.location, sref.untyped)
            if ref.strides is None:
                array = materializer.empty(storage, ref.dtype, ref.shape)
            else:
                # The first view goes through the materializer (it may byte-swap).
                array = materializer.view(storage, ref.dtype, ref.offset, ref.shape, ref.strides)
            self._remember_storage(sref.key, storage, materializer.backend_of(storage))
        else:
            backend = self._storage_backends[sref.key]
            if ref.strides is None:
                array = backend.empty(ref.dtype, ref.shape)
            else:
                array = backend.view(storage, ref.dtype, ref.offset, ref.shape, ref.strides)
        if ref.transforms:
            with device_scope(array):
                array = transform_covered(array, "conj" in ref.transforms, "neg" in ref.transforms)
        return array

    def _storage_reader(self) -> ZipMaterializer:
        if self._materializer is None:
            mapped = None
            if self._access is not None:
                mapped = mmap_module.mmap(self._stream.fileno(), 0, access=self._access)
            # One array at a time: read exactly its storage, nothing around it.
            source = ZipSource(self._checkpoint.reader, mapped=mapped, read_ahead=False)
            self._materializer = ZipMaterializer(source, self._device_map,
                                                 byteorder=self._checkpoint.byteorder)
        return self._materializer

    # Storages already read are reused while any array from them is alive, so
    # arrays asked for one by one share memory as they did in the file. Arrays
    # keep only the root of their storage's memory alive (NumPy collapses base
    # chains; CuPy views hold the allocation), so the cache holds a weak
    # reference to that root and rebuilds the storage from it.

    def _remember_storage(self, key: str, storage: Any, backend: Any) -> None:
        root = backend.root(storage)
        try:
            reference = weakref.ref(root)
        except TypeError:  # a memory object without weak references: keep it alive
            reference = lambda root=root: root  # noqa: E731
        self._storage_roots[key] = (reference, storage.dtype, storage.nbytes)
        self._storage_backends[key] = backend

    def _cached_storage(self, key: str) -> Any:
        entry = self._storage_roots.get(key)
        if entry is None:
            return None
        root = entry[0]()
        if root is None:
            del self._storage_roots[key]
            return None
        return self._storage_backends[key].storage_from_root(root, entry[1], entry[2])

    # -- display -------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<nbckpt.Archive {self.source}: {len(self.records)} arrays>"

    def _repr_html_(self) -> str:
        return records_html(self)


def _format_key(key: Any) -> str:
    return key if isinstance(key, str) else repr(key) if not isinstance(key, int) else str(key)


def _holders_of_arrays(tree: Any) -> set[int]:
    """ids of the containers in ``tree`` that hold an array at some depth."""
    holders: set[int] = set()
    visited: set[int] = set()
    # Iterative post-order walk: a container holds arrays if any child does.
    stack: list[tuple[Any, int, bool]] = [(tree, 0, False)]
    while stack:
        obj, depth, expanded = stack.pop()
        if not isinstance(obj, (dict, list, tuple)):
            continue
        children = list(dict.values(obj)) if isinstance(obj, dict) else list(obj)
        if expanded:
            if any(isinstance(c, (_ArrayRef, MetaArray)) or id(c) in holders for c in children):
                holders.add(id(obj))
            continue
        if id(obj) in visited or depth >= _MAX_DEPTH:
            continue
        visited.add(id(obj))
        stack.append((obj, depth, True))
        stack.extend((c, depth + 1, False) for c in children)
    return holders


def _index(tree: Any) -> tuple[list[Record], list[_ArrayRef], dict[str, Any]]:
    """Walk the loaded structure: one Record per array, and the other leaf values."""
    found: list[tuple[tuple, _ArrayRef]] = []
    values: dict[str, Any] = {}
    stack: list[tuple[tuple, Any, int]] = [((), tree, 0)]
    seen: set[int] = set()
    holds_arrays = _holders_of_arrays(tree)
    while stack:
        path, obj, depth = stack.pop()
        if isinstance(obj, (_ArrayRef, MetaArray)):
            found.append((path, obj))
            continue
        # Containers without arrays (hyper-parameters, betas...) are one value each.
        if isinstance(obj, (dict, list, tuple)) and id(obj) in holds_arrays:
            if id(obj) in seen or depth >= _MAX_DEPTH:
                continue
            seen.add(id(obj))
            # dict.items, not obj.items: a loaded mapping's attributes are the file's.
            items = dict.items(obj) if isinstance(obj, dict) else enumerate(obj)
            children = [(path + (k,), v, depth + 1) for k, v in items]
            stack.extend(reversed(children))
            continue
        values[".".join(_format_key(k) for k in path)] = obj
    by_storage: dict[str, list[str]] = {}
    names = []
    for path, ref in found:
        name = ".".join(_format_key(k) for k in path)
        names.append(name)
        if isinstance(ref, _ArrayRef):
            by_storage.setdefault(ref.storage.key, []).append(name)
    records = []
    for (path, ref), name in zip(found, names):
        if isinstance(ref, MetaArray):
            records.append(Record(name=name, path=path, shape=ref.shape, dtype=ref.dtype, location="meta",
                                  nbytes=ref.nbytes, storage="", offset=0, strides=ref.strides))
            continue
        itemsize = ref.dtype.itemsize
        size = math.prod(ref.shape)
        records.append(Record(
            name=name,
            path=path,
            shape=ref.shape,
            dtype=ref.dtype,
            location=ref.storage.location,
            nbytes=size * itemsize,
            storage=ref.storage.key,
            offset=ref.offset // itemsize if itemsize else 0,
            strides=tuple(s // itemsize for s in ref.strides) if ref.strides is not None else (),
            shares=tuple(n for n in by_storage[ref.storage.key] if n != name),
        ))
    return records, [ref for _, ref in found], values
