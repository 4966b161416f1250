"""Turn a checkpoint's storages into arrays on their devices.

:class:`StorageMaterializer` is the materializer the rebuild functions call
(see :mod:`nbckpt.pickling.rebuild`) while loading, and that
:class:`nbckpt.Archive` uses to read one array. It reads storages from any
format's :class:`~nbckpt.formats.base.StorageSource` (the ``data/<key>``
records of a zip archive, byte ranges of a legacy or safetensors file, the
members of an ``.npz``). Each storage is checked against the size the file
declares, then either read once straight into the memory the arrays will use
(``readinto``, no intermediate ``bytes``) or, with ``mmap``, viewed in place in
the mapped file; byte-swapped by :func:`swap_to_native` if the file's byte
order differs; and handed to the backend of its target device.

The interface every materializer follows (this one, the recording one of
:mod:`nbckpt.formats.recording`, and the legacy loader's) is :class:`Materializer`.
"""

from __future__ import annotations

import itertools
import mmap as mmap_module
import operator
import sys
from typing import Any, Callable, Protocol

import numpy as np

from .backends import HOST, backend_for, backend_of, device_scope, device_supports, is_cupy_array
from .devices import DeviceMap, canonical_tag
from .errors import DeviceError, FormatError
from .format import dtypes as torch_dtypes
from .format.dtypes import swap_bytes, swap_to_native, swap_unit
from .formats.base import ArrayRef
from .meta import MetaArray
from .format import spec
from .format.container import ZipReader, readinto_exact
from .format.crc import crc32

__all__ = ["Materializer", "StorageMaterializer", "read_ref", "view_of_ref", "read_flat", "ZipMaterializer", "ZipSource", "RangeSource", "swap_bytes",
           "swap_unit", "swap_to_native", "check_mapped_storage"]


class Materializer(Protocol):
    """What the rebuild functions ask of a materializer (see :mod:`nbckpt.pickling.rebuild`).

    Offsets and strides are in bytes; every view was bounds-checked before.
    """

    def storage(self, key: str, dtype: torch_dtypes.TorchDtype, numel: int, location: str,
                untyped: bool = False) -> Any:
        """The storage ``key`` of ``numel`` elements of ``dtype``, saved on ``location``."""
        ...

    def storage_view(self, root: Any, dtype: torch_dtypes.TorchDtype, offset: int, size: int) -> Any:
        """A slice of ``size`` elements of ``root`` from element ``offset`` (legacy files)."""
        ...

    # Optional, both: ``storages(requests)``, what ``[storage(*r) for r in requests]`` gives
    # for a list of ``(key, dtype, numel, location, untyped)``, and ``views(requests)``,
    # what ``[view(*r) for r in requests]`` gives, with the same checks and the same first
    # error, made in one go. Rebuilder.rebuild_many (flat dicts of tensors) asks for them
    # where the materializer has them, and calls storage()/view() one by one otherwise.

    def view(self, storage: Any, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> Any:
        """An array over ``storage``."""
        ...

    def empty(self, storage: Any, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
        """An array of size 0."""
        ...

    def defer_until_filled(self, array: Any, compute: Callable[[Any], Any]) -> Any:
        """``compute(array)`` (torch's conj/neg bits), now or once the data is in."""
        ...

    def sparse(self, layout: str, parts: Any) -> Any:
        """A sparse matrix of ``layout`` from torch's parts (built, deferred or described)."""
        ...


def check_mapped_storage(result: Any, nbytes: int, what: str) -> Any:
    """The backend of an array a ``map_location`` function returned; DeviceError if unusable.

    The one check of a callable ``map_location``'s result (every format): a
    contiguous 1-D NumPy or CuPy array of exactly ``nbytes`` bytes.
    """
    if not (isinstance(result, np.ndarray) or is_cupy_array(result)):
        raise DeviceError(
            f"map_location function returned a {type(result).__module__}.{type(result).__qualname__} "
            f"for {what}; expected a NumPy or CuPy array (or None for the default)"
        )
    if result.nbytes != nbytes or result.ndim != 1 or not result.flags.c_contiguous:
        raise DeviceError(
            f"map_location function returned {type(result).__name__} for {what}; it must "
            f"return a contiguous 1-D array of {nbytes} bytes (or None for the default)"
        )
    return backend_of(result)


class RangeSource:
    """Storages stored as byte ranges of one file: ``key -> (offset, nbytes)``.

    Used by formats whose storages lie at known offsets (legacy streams and tar
    files, safetensors). ``mapped`` is an mmap of the whole file, or None.
    """

    def __init__(self, stream: Any, ranges: dict[str, tuple[int, int]], *,
                 mapped: mmap_module.mmap | None = None, what: str = "storage") -> None:
        self._stream, self._ranges, self._mapped, self._what = stream, ranges, mapped, what

    def _range(self, key: str) -> tuple[int, int]:
        try:
            return self._ranges[key]
        except KeyError:
            raise FormatError(f"{self._what} {key!r} is not in the file", record=key) from None

    def size(self, key: str) -> int:
        return self._range(key)[1]

    def host_bytes(self, key: str, nbytes: int, backend: Any, *, mapped_ok: bool) -> np.ndarray:
        offset, _size = self._range(key)
        if self._mapped is not None and mapped_ok:
            return np.frombuffer(self._mapped, dtype=np.uint8, count=nbytes, offset=offset)
        host = backend.host_buffer(nbytes)
        self._stream.seek(offset)
        readinto_exact(self._stream, host, f"{self._what} {key}")
        return host


class ZipSource:
    """Storage bytes from the ``data/<key>`` records of a zip checkpoint."""

    def __init__(self, reader: ZipReader, *, mapped: mmap_module.mmap | None = None,
                 skip_data: bool = False, verify: bool = False, on_read: Any = None,
                 read_ahead: bool = True) -> None:
        self._reader = reader
        self._read_ahead = read_ahead  # small records in one read (may touch the next one)
        self._mapped = mapped
        self._skip_data = skip_data
        self._verify = verify and not skip_data
        self._on_read = on_read  # called with the byte count of each record read (progress)

    def size(self, key: str) -> int:
        """The record's size in bytes (FormatError when it is missing)."""
        return self._reader.size("data/" + key)

    def can_map(self, key: str) -> bool:
        return self._mapped is not None and self._reader.entry(f"data/{key}").method == spec.METHOD_STORED

    @property
    def reads_ahead(self) -> bool:
        """Whether :meth:`host_bytes_many` may read records in blocks (our own file, not mapped)."""
        return self._read_ahead and self._mapped is None and not self._skip_data

    def host_bytes_many(self, keys: list[str], sizes: list[int]) -> list[np.ndarray]:
        """Each storage's bytes in a fresh host buffer, small records read in blocks (see
        :meth:`ZipReader.read_records`); only when :attr:`reads_ahead`. ValueError unless
        every record exists and holds ``sizes`` bytes."""
        return self._reader.read_records(["data/" + key for key in keys], verify=self._verify, sizes=sizes,
                                         on_read=self._on_read)

    def host_bytes(self, key: str, nbytes: int, backend: Any, *, mapped_ok: bool) -> np.ndarray:
        """The record's bytes in host memory: mapped in place, or read into a fresh buffer."""
        name = "data/" + key
        if self._mapped is not None and mapped_ok and self.can_map(key):
            offset = self._reader.data_offset(name)
            mapped = np.frombuffer(self._mapped, dtype=np.uint8, count=nbytes, offset=offset)
            if self._verify:
                self._reader.check_crc(name, crc32(mapped))
            return mapped
        host = np.empty(nbytes, dtype=np.uint8) if backend is HOST else backend.host_buffer(nbytes)
        if not self._skip_data:
            self._reader.readinto(name, host, verify=self._verify, read_ahead=self._read_ahead)
            if self._on_read is not None:
                self._on_read(nbytes)
        return host


class StorageMaterializer:
    """Reads storages of a checkpoint and places them per ``map_location``.

    ``source`` gives each storage's bytes (a
    :class:`~nbckpt.formats.base.StorageSource`; a bare ``ZipReader`` is wrapped
    in :class:`ZipSource`). ``skip_data`` allocates storages without reading
    them (their content is undefined). With a mapped source, storages are views of the file's mapping,
    read-only or copy-on-write as it was opened. ``moved`` maps saved tags to the
    tags ``"auto"`` sent them to instead; ``raw_dtypes`` names the dtypes that
    had to stay raw bits on a GPU.
    """

    def __init__(self, source: Any, device_map: DeviceMap, *, byteorder: str = sys.byteorder,
                 skip_data: bool = False) -> None:
        if isinstance(source, ZipReader):
            source = ZipSource(source, skip_data=skip_data)
        self._source = source
        self._device_map = device_map
        self._swap = byteorder != sys.byteorder
        self._skip_data = skip_data
        self._backends: dict[int, Any] = {}
        self._placements: dict[str, Any] = {}  # saved tag -> backend, decided once per tag
        self._pending_swap: dict[int, Any] = {}
        self.moved: dict[str, str] = {}
        self.raw_dtypes: set[str] = set()

    # -- the materializer interface ---------------------------------------------------

    def storage(self, key: str, dtype: torch_dtypes.TorchDtype, numel: int, location: str,
                untyped: bool = False) -> Any:
        name = f"data/{key}"
        nbytes = numel * dtype.itemsize
        size = self._source.size(key)
        if size != nbytes:
            raise FormatError(
                f"record {name} holds {size} bytes but the pickle declares {numel} "
                f"x {dtype.name} = {nbytes} bytes",
                record=name,
            )
        if self._device_map.mode == "callable":
            backend, storage = self._storage_by_function(key, dtype, nbytes, location)
        else:
            backend = self.backend_for_location(location)
            host = self._host_bytes(key, nbytes, backend, dtype)
            storage = backend.from_host(host.view(dtype.numpy))
        self._backends[id(storage)] = backend
        if self._swap and untyped:
            # Element size of an UntypedStorage is known only at its first view.
            self._pending_swap[id(storage)] = storage
        return storage

    def storages(self, requests: list[tuple]) -> list[Any]:
        """``[self.storage(*request) for request in requests]``, in one go where it can.

        Host storages of a zip checkpoint read through nbckpt's own file handle
        are checked first (sizes, placements), then read together
        (:meth:`ZipSource.host_bytes_many`: small records in blocks). Anything
        else, and any problem, goes through :meth:`storage` one request at a
        time, which reports the first problem.
        """
        source = self._source
        if (type(source) is not ZipSource or not source.reads_ahead or self._swap
                or self._device_map.mode == "callable" or type(self).storage is not StorageMaterializer.storage):
            return [self.storage(*request) for request in requests]
        try:
            keys, dtypes, numels, locations, untyped = zip(*requests)
            if any(untyped):
                raise ValueError("an untyped storage")
            if any(self.backend_for_location(location) is not HOST for location in dict.fromkeys(locations)):
                raise ValueError("a storage placed on a device")
            one = dtypes[0] if len(set(map(id, dtypes))) == 1 else None  # by identity: no dataclass hash
            sizes = (list(map(one.itemsize.__mul__, numels)) if one is not None
                     else [numel * dtype.itemsize for dtype, numel in zip(dtypes, numels)])
            hosts = source.host_bytes_many(list(keys), sizes)
        except Exception:  # noqa: BLE001 - the one-by-one path reports it
            return [self.storage(*request) for request in requests]
        if one is not None:  # one dtype: one C-level map
            storages = list(map(operator.methodcaller("view", one.numpy), hosts))
        else:
            storages = [host.view(dtype.numpy) for host, dtype in zip(hosts, dtypes)]
        self._backends.update(zip(map(id, storages), itertools.repeat(HOST)))
        return storages

    def views(self, requests: list[tuple]) -> list[Any]:
        """``[self.view(*request) for request in requests]``: straight to NumPy when every storage
        this materializer made is a host one (no GPU placement, no ``map_location`` function,
        no byte swap pending)."""
        if (self._pending_swap or self._device_map.mode == "callable"
                or any(backend is not HOST for backend in self._placements.values())):
            return [self.view(*request) for request in requests]
        storages, dtypes, offsets, shapes, strides = zip(*requests) if requests else ((),) * 5
        if set(map(type, storages)) == {np.ndarray} and all(
                dtype.isbuiltin == 1 for dtype in set(map(operator.attrgetter("dtype"), storages))):
            # What HOST.view does for each (its buffer is the storage itself), in one C-level map.
            return list(map(np.ndarray, shapes, dtypes, storages, offsets, strides))
        view = HOST.view
        return [view(*request) for request in requests]

    def view(self, storage: Any, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> Any:
        if self._pending_swap and id(storage) in self._pending_swap:
            del self._pending_swap[id(storage)]
            if not self._skip_data:
                swap_to_native(_flat_bytes(storage), dtype)
        backend = self._backends[id(storage)]
        if backend is not HOST:
            self._note_raw(backend, dtype)
        return backend.view(storage, dtype, offset, shape, strides)

    def empty(self, storage: Any, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
        backend = self._backends[id(storage)]
        self._note_raw(backend, dtype)
        return backend.empty(dtype, shape)

    def storage_view(self, root: Any, dtype: torch_dtypes.TorchDtype, offset: int, size: int) -> Any:
        view = root[offset : offset + size]
        self._backends[id(view)] = self.backend_of(root)
        return view

    def defer_until_filled(self, array: Any, compute: Callable[[Any], Any]) -> Any:
        """The data is in already: compute now."""
        return compute(array)

    def sparse(self, layout: str, parts: Any) -> Any:
        """A scipy.sparse (or cupyx) matrix from torch's parts, invariants checked."""
        from . import sparse  # scipy is imported there, only when a file has sparse tensors

        return sparse.from_torch_parts(layout, parts)

    def _host_bytes(self, key: str, nbytes: int, backend: Any, dtype: torch_dtypes.TorchDtype) -> np.ndarray:
        """The storage's bytes in host memory, in native order (unread with ``skip_data``)."""
        if self._skip_data:
            self._source.size(key)  # the storage must exist
            return np.empty(nbytes, dtype=np.uint8) if backend is HOST else backend.host_buffer(nbytes)
        host = self._source.host_bytes(key, nbytes, backend, mapped_ok=not self._swap)
        if self._swap and dtype.itemsize > 1:  # untyped storages swap at their first view
            swap_to_native(host, dtype.numpy)
        return host

    def _note_raw(self, backend: Any, dtype: np.dtype) -> None:
        """Remember dtypes a GPU can only hold as raw bits (for one warning per load)."""
        if backend is not HOST and not device_supports(dtype):
            tdtype = torch_dtypes.for_numpy(dtype)
            self.raw_dtypes.add(tdtype.name if tdtype else str(dtype))

    def backend_of(self, storage: Any) -> Any:
        """The backend holding a storage this materializer made."""
        return self._backends[id(storage)]

    def adopt(self, storage: Any, backend: Any) -> None:
        """Let arrays be made over ``storage``, held by ``backend``: a storage this materializer
        made before, rebuilt from its memory (see :class:`nbckpt.Archive`'s cache)."""
        self._backends[id(storage)] = backend

    # -- helpers ----------------------------------------------------------------------------

    def backend_for_location(self, location: str) -> Any:
        """The backend a storage saved at ``location`` goes to (per ``map_location``)."""
        backend = self._placements.get(location)
        if backend is None:
            backend = self._placements[location] = self._place(location)
        return backend

    def _place(self, location: str) -> Any:
        if self._device_map.mode == "auto":
            try:
                return backend_for(canonical_tag(location), saved_as=location)
            except DeviceError:
                self.moved[location] = "cpu"
                return HOST
        target = self._device_map.target(location)
        return backend_for(canonical_tag(target), saved_as=location)

    def _storage_by_function(self, key: str, dtype: torch_dtypes.TorchDtype, nbytes: int,
                             location: str) -> tuple[Any, Any]:
        typed = self._host_bytes(key, nbytes, HOST, dtype).view(dtype.numpy)
        result = self._device_map.function(typed, location)  # type: ignore[misc]
        if result is None:
            backend = self.backend_for_location(location)
            return backend, backend.from_host(typed)
        return check_mapped_storage(result, nbytes, f"storage {key}"), result


def _flat_bytes(storage: Any) -> Any:
    """A flat uint8 view of a storage array (host or device)."""
    return storage.view(np.uint8) if storage.dtype != np.uint8 else storage


#: The former name of :class:`StorageMaterializer` (it reads every format now).
ZipMaterializer = StorageMaterializer


def read_flat(refs: dict[str, Any], source: Any, device_map: DeviceMap, *, byteorder: str = "little",
              skip_data: bool = False) -> dict[str, Any]:
    """``{name: array}`` for a flat ``{name: ArrayRef}`` (formats without a pickle: safetensors,
    sharded checkpoints, npz); other values are kept as they are."""
    materializer = StorageMaterializer(source, device_map, byteorder=byteorder, skip_data=skip_data)
    storages: dict[str, Any] = {}
    return {name: read_ref(ref, materializer, storages) if isinstance(ref, (ArrayRef, MetaArray)) else ref
            for name, ref in refs.items()}


def read_ref(ref: Any, materializer: Any, storages: dict[str, Any]) -> Any:
    """The array an :class:`~nbckpt.formats.base.ArrayRef` describes, read by ``materializer``.

    ``storages`` caches the storages read so far by key: arrays of one storage
    read through the same dict share memory, as they did in the file. A
    ``MetaArray`` is returned as it is.
    """
    if isinstance(ref, MetaArray):
        return ref
    sref = ref.storage
    storage = storages.get(sref.key)
    if storage is None:
        storage = storages[sref.key] = materializer.storage(sref.key, sref.dtype, sref.numel, sref.location,
                                                            sref.untyped)
    return view_of_ref(ref, storage, materializer)


def view_of_ref(ref: ArrayRef, storage: Any, materializer: Any) -> Any:
    """The array ``ref`` describes, over ``storage`` (made or adopted by ``materializer``).

    The one place an :class:`~nbckpt.formats.base.ArrayRef` becomes an array: a
    view (the materializer's, which may byte-swap an untyped storage at its
    first view) or an empty array, then torch's conj/neg bits applied.
    """
    from .pickling.rebuild import transform_covered

    if ref.strides is None:
        array = materializer.empty(storage, ref.dtype, ref.shape)
    else:
        array = materializer.view(storage, ref.dtype, ref.offset, ref.shape, ref.strides)
    if ref.transforms:
        with device_scope(array):
            array = transform_covered(array, "conj" in ref.transforms, "neg" in ref.transforms)
    return array
