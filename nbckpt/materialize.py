"""Turn a zip archive's storage records into arrays on their devices.

:class:`ZipMaterializer` is the materializer the rebuild functions call (see
:mod:`nbckpt.pickling.rebuild`) while loading. Each storage record is checked
against the size the pickle declares, then either read once straight into the
memory the arrays will use (``readinto``, no intermediate ``bytes``) or, with
``mmap``, viewed in place in the mapped file; byte-swapped if the file's byte
order differs; and handed to the backend of its target device.
"""

from __future__ import annotations

import mmap as mmap_module
import sys
import zlib
from typing import Any

import numpy as np

from .backends import HOST, backend_for, device_scope, device_supports
from .devices import DeviceMap, canonical_tag
from .errors import DeviceError, FormatError
from .format import dtypes as torch_dtypes
from .format import spec
from .format.container import ZipReader

__all__ = ["ZipMaterializer", "ZipSource", "swap_bytes"]


def swap_bytes(raw: Any, unit: int) -> None:
    """Reverse the bytes of each ``unit``-byte element of a flat uint8 array, in place."""
    if unit <= 1 or raw.size == 0:
        return
    if isinstance(raw, np.ndarray):
        raw.view(f"u{unit}").byteswap(inplace=True)
    else:  # a CuPy array: the same, written with indexing CuPy supports, on its GPU
        with device_scope(raw):
            pairs = raw.reshape(-1, unit)
            pairs[...] = pairs[:, ::-1].copy()


def _swap_unit(dtype: np.dtype) -> int:
    """Bytes per swapped value: complex numbers swap each half separately."""
    if dtype.fields is not None:  # complex32: two float16
        return dtype.fields[next(iter(dtype.fields))][0].itemsize
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


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
        return self._reader.entry("data/" + key).size

    def can_map(self, key: str) -> bool:
        return self._mapped is not None and self._reader.entry(f"data/{key}").method == spec.METHOD_STORED

    def host_bytes(self, key: str, nbytes: int, backend: Any, *, mapped_ok: bool) -> np.ndarray:
        """The record's bytes in host memory: mapped in place, or read into a fresh buffer."""
        name = "data/" + key
        if self._mapped is not None and mapped_ok and self.can_map(key):
            offset = self._reader.data_offset(name)
            mapped = np.frombuffer(self._mapped, dtype=np.uint8, count=nbytes, offset=offset)
            if self._verify:
                self._reader.check_crc(name, zlib.crc32(mapped))
            return mapped
        host = np.empty(nbytes, dtype=np.uint8) if backend is HOST else backend.host_buffer(nbytes)
        if not self._skip_data:
            self._reader.readinto(name, host, verify=self._verify, read_ahead=self._read_ahead)
            if self._on_read is not None:
                self._on_read(nbytes)
        return host


class ZipMaterializer:
    """Reads storages of a checkpoint and places them per ``map_location``.

    ``source`` gives each storage's bytes (a zip reader wrapped in
    :class:`ZipSource`, or buffers a legacy loader read already).
    ``skip_data`` allocates storages without reading them (their content is
    undefined). With a mapped source, storages are views of the file's mapping,
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
            host = self._source.host_bytes(key, nbytes, backend, mapped_ok=not self._swap)
            if self._swap and dtype.itemsize > 1 and not self._skip_data:
                swap_bytes(host, _swap_unit(dtype.numpy))
            storage = backend.from_host(host.view(dtype.numpy))
        self._backends[id(storage)] = backend
        if self._swap and untyped:
            # Element size of an UntypedStorage is known only at its first view.
            self._pending_swap[id(storage)] = storage
        return storage

    def view(self, storage: Any, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> Any:
        if self._pending_swap and id(storage) in self._pending_swap:
            del self._pending_swap[id(storage)]
            if not self._skip_data:
                swap_bytes(_flat_bytes(storage), _swap_unit(dtype))
        backend = self._backends[id(storage)]
        if backend is not HOST:
            self._note_raw(backend, dtype)
        return backend.view(storage, dtype, offset, shape, strides)

    def empty(self, storage: Any, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
        backend = self._backends[id(storage)]
        self._note_raw(backend, dtype)
        return backend.empty(dtype, shape)

    def _note_raw(self, backend: Any, dtype: np.dtype) -> None:
        """Remember dtypes a GPU can only hold as raw bits (for one warning per load)."""
        if backend is not HOST and not device_supports(dtype):
            tdtype = torch_dtypes.for_numpy(dtype)
            self.raw_dtypes.add(tdtype.name if tdtype else str(dtype))

    def backend_of(self, storage: Any) -> Any:
        """The backend holding a storage this materializer made."""
        return self._backends[id(storage)]

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
        name = f"data/{key}"
        host = self._source.host_bytes(key, nbytes, HOST, mapped_ok=not self._swap)
        if self._swap and dtype.itemsize > 1 and not self._skip_data:
            swap_bytes(host, _swap_unit(dtype.numpy))
        typed = host.view(dtype.numpy)
        result = self._device_map.function(typed, location)  # type: ignore[misc]
        if result is None:
            backend = self.backend_for_location(location)
            return backend, backend.from_host(typed)
        backend = HOST if isinstance(result, np.ndarray) else _backend_of_array(result)
        if (getattr(result, "nbytes", None) != nbytes or getattr(result, "ndim", None) != 1
                or not result.flags.c_contiguous):
            raise DeviceError(
                f"map_location function returned {type(result).__name__} for {name}; it must "
                f"return a contiguous 1-D array of {nbytes} bytes (or None for the default)"
            )
        return backend, result


def _flat_bytes(storage: Any) -> Any:
    """A flat uint8 view of a storage array (host or device)."""
    return storage.view(np.uint8) if storage.dtype != np.uint8 else storage


def _backend_of_array(array: Any) -> Any:
    """The backend that owns an array returned by a map_location function."""
    if type(array).__module__.startswith("cupy"):
        return backend_for(f"cuda:{array.device.id}")
    raise DeviceError(
        f"map_location function returned a {type(array).__module__}.{type(array).__qualname__}; "
        f"expected a NumPy or CuPy array (or None)"
    )
