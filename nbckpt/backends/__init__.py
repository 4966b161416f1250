"""Backends turn host bytes into arrays on a device: NumPy (host) and CuPy (GPUs).

Both implement one declared interface, :class:`Backend`; they differ only in
where the memory lives. The CuPy backend is imported on first use, never by
``import nbckpt``. ``tests/test_devices.py`` runs one contract test over every
implementation (NumPy, the CuPy test double, and real CuPy on a GPU).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import DeviceError
from .numpy import NumpyBackend

__all__ = ["Backend", "NumpyBackend", "backend_for", "backend_of", "gpu_count", "is_cupy_array", "device_scope",
           "device_supports", "HOST"]



@runtime_checkable
class Backend(Protocol):
    """Where arrays live: turns host bytes into arrays there, and back (for saving).

    Loading: ``host_buffer`` (memory to read a storage into), ``from_host``
    (the storage for those bytes, on this device), ``view`` and ``empty``
    (arrays over a storage, offsets and strides in bytes), ``root`` and
    ``storage_from_root`` (what keeps a storage's memory alive, held weakly by
    :class:`nbckpt.Archive`'s cache, and the storage rebuilt from it).
    Saving: ``location``, ``memory``, ``span``, ``contiguous``, ``to_host``.
    """

    tag: str

    def host_buffer(self, nbytes: int) -> np.ndarray: ...
    def from_host(self, host: np.ndarray) -> Any: ...
    def view(self, storage: Any, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> Any: ...
    def empty(self, dtype: np.dtype, shape: tuple[int, ...]) -> Any: ...
    def root(self, storage: Any) -> Any: ...
    def storage_from_root(self, root: Any, dtype: np.dtype, nbytes: int) -> Any: ...
    def location(self, array: Any) -> str: ...
    def memory(self, array: Any) -> tuple[object, int]: ...
    def span(self, owner: Any, address: int, nbytes: int) -> Any: ...
    def contiguous(self, array: Any, dtype: np.dtype) -> Any: ...
    def to_host(self, array: Any) -> np.ndarray: ...


HOST = NumpyBackend()


@functools.lru_cache(maxsize=None)
def _cupy_module():
    """CuPy, or the reason it cannot be used (a string)."""
    try:
        import cupy  # noqa: F401 - imported lazily on purpose
    except Exception as err:  # ImportError, or a broken CUDA install
        return f"CuPy is not installed or does not import ({err}); install it with `pip install cupy-cuda12x`"
    return cupy


def gpu_count() -> int:
    """How many GPUs CuPy can use here (0 without CuPy or a driver)."""
    cupy = _cupy_module()
    if isinstance(cupy, str):
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no driver, no device: CuPy raises its own CUDA errors
        return 0


def backend_for(tag: str, *, saved_as: str | None = None):
    """The backend for a canonical tag (``cpu``, ``cuda``, ``cuda:N``)."""
    if tag == "cpu":
        return HOST
    if tag.startswith("cuda"):
        from .cupy import cupy_backend

        return cupy_backend(tag, saved_as=saved_as)
    raise DeviceError(
        f"nbckpt cannot place arrays on {tag!r}; pass map_location='cpu'", location=tag
    )


def is_cupy_array(obj: object) -> bool:
    """True for a ``cupy.ndarray`` (recognised by its type, without importing CuPy)."""
    return type(obj).__module__.startswith("cupy") and hasattr(obj, "__cuda_array_interface__")


def backend_of(array: object):
    """The backend whose memory holds ``array`` (NumPy or CuPy)."""
    if is_cupy_array(array):
        from .cupy import cupy_backend

        return cupy_backend(f"cuda:{array.device.id}")  # type: ignore[attr-defined]
    return HOST


def device_scope(array: object):
    """A context in which new memory lands where ``array`` lives (CuPy's Device(N))."""
    if is_cupy_array(array):
        cupy = _cupy_module()
        return cupy.cuda.Device(array.device.id)  # type: ignore[attr-defined, union-attr]
    return contextlib.nullcontext()


def device_supports(dtype: np.dtype) -> bool:
    """Whether CuPy can hold ``dtype`` as such: NumPy's own numeric types only.

    ml_dtypes' bfloat16 and float8 are user-defined NumPy types (``isbuiltin`` 2,
    some of kind 'f'), and complex32 is structured: CuPy has none of them.
    """
    return dtype.isbuiltin == 1 and dtype.kind in "biufc"
