"""Turn a zip archive's storage records into arrays on their devices.

:class:`ZipMaterializer` is the materializer the rebuild functions call (see
:mod:`nbckpt.pickling.rebuild`) during an eager load. Each storage record is
checked against the size the pickle declares, read once straight into the
memory the arrays will use (``readinto``, no intermediate ``bytes``), byte-
swapped if the file's byte order differs, and handed to the backend of its
target device.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .backends import HOST, backend_for
from .devices import DeviceMap, canonical_tag
from .errors import DeviceError, FormatError
from .format import dtypes as torch_dtypes
from .format.container import ZipReader

__all__ = ["ZipMaterializer", "byteswap_storage"]


def byteswap_storage(host: np.ndarray, itemsize: int, is_complex: bool) -> None:
    """Swap each element's bytes in place (each half, for complex numbers)."""
    unit = itemsize // 2 if is_complex else itemsize
    if unit > 1 and host.size:
        host.view(f"u{unit}").byteswap(inplace=True)


class ZipMaterializer:
    """Reads storages of a zip checkpoint and places them per ``map_location``.

    ``skip_data`` allocates storages without reading them (their content is
    undefined). ``moved`` lists ``(saved, target)`` tags that ``"auto"`` changed.
    """

    def __init__(self, reader: ZipReader, device_map: DeviceMap, *, byteorder: str = sys.byteorder,
                 skip_data: bool = False) -> None:
        self._reader = reader
        self._device_map = device_map
        self._swap = byteorder != sys.byteorder
        self._skip_data = skip_data
        self._backends: dict[int, Any] = {}
        self.moved: dict[str, str] = {}

    # -- the materializer interface ---------------------------------------------------

    def storage(self, key: str, dtype: torch_dtypes.TorchDtype, numel: int, location: str) -> Any:
        name = f"data/{key}"
        nbytes = numel * dtype.itemsize
        entry = self._reader.entry(name)
        if entry.size != nbytes:
            raise FormatError(
                f"record {name} holds {entry.size} bytes but the pickle declares {numel} "
                f"x {dtype.name} = {nbytes} bytes",
                record=name,
            )
        if self._device_map.mode == "callable":
            return self._storage_by_function(name, dtype, nbytes, location)
        backend = self._backend(location)
        host = self._read(name, nbytes, dtype, backend)
        storage = backend.from_host(host)
        self._backends[id(storage)] = backend
        return storage

    def view(self, storage: Any, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> Any:
        return self._backends[id(storage)].view(storage, dtype, offset, shape, strides)

    def empty(self, storage: Any, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
        return self._backends[id(storage)].empty(dtype, shape)

    # -- helpers ----------------------------------------------------------------------------

    def _read(self, name: str, nbytes: int, dtype: torch_dtypes.TorchDtype, backend: Any) -> np.ndarray:
        make = getattr(backend, "host_buffer", None)
        host = make(nbytes) if make is not None else np.empty(nbytes, dtype=np.uint8)
        if not self._skip_data:
            self._reader.readinto(name, host)
            if self._swap:
                byteswap_storage(host, dtype.itemsize, dtype.numpy.kind == "c" or dtype.name == "complex32")
        return host.view(dtype.numpy)

    def _backend(self, location: str) -> Any:
        saved = location
        if self._device_map.mode == "auto":
            target = canonical_tag(saved)
            try:
                return backend_for(target, saved_as=saved)
            except DeviceError:
                self.moved[saved] = "cpu"
                return HOST
        target = self._device_map.target(saved)
        return backend_for(canonical_tag(target), saved_as=saved)

    def _storage_by_function(self, name: str, dtype: torch_dtypes.TorchDtype, nbytes: int,
                             location: str) -> Any:
        host = self._read(name, nbytes, dtype, HOST)
        result = self._device_map.function(host, location)  # type: ignore[misc]
        if result is None:
            backend = self._backend(location)
            storage = backend.from_host(host)
        else:
            backend = HOST if isinstance(result, np.ndarray) else backend_for_array(result)
            if getattr(result, "nbytes", None) != nbytes or getattr(result, "ndim", None) != 1:
                raise DeviceError(
                    f"map_location function returned {type(result).__name__} for {name}; it must "
                    f"return a 1-D array of {nbytes} bytes (or None for the default)"
                )
            storage = result
        self._backends[id(storage)] = backend
        return storage


def backend_for_array(array: Any) -> Any:
    """The backend that owns an array returned by a map_location function."""
    if type(array).__module__.startswith("cupy"):
        return backend_for(f"cuda:{array.device.id}")
    raise DeviceError(
        f"map_location function returned a {type(array).__module__}.{type(array).__qualname__}; "
        f"expected a NumPy or CuPy array (or None)"
    )
