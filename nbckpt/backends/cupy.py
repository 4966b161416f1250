"""The GPU backend: storages and arrays in CuPy memory on one device.

Imported only when a storage goes to a ``cuda`` tag. Each storage is read once
from the file into (pinned, where CuPy can) host memory and copied to the
device inside ``cupy.cuda.Device(N)``, so ``cuda:1`` lands on GPU 1 and nothing
is allocated on GPU 0.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import DeviceError
from . import _cupy_module, device_supports, gpu_count

__all__ = ["CupyBackend", "cupy_backend"]


def cupy_backend(tag: str, *, saved_as: str | None = None) -> "CupyBackend":
    """The backend of GPU ``tag`` (``cuda`` is CuPy's current device)."""
    cupy = _cupy_module()
    if saved_as is None or saved_as == tag:
        what = f"the file holds arrays saved on {tag!r}"
    else:
        what = f"map_location sends arrays saved on {saved_as!r} to {tag!r}"
    fix = "pass map_location='cpu' (or 'auto') to load them on the host"
    if isinstance(cupy, str):
        raise DeviceError(f"{what}, but no GPU is usable here: {cupy}; or {fix}.", location=tag)
    count = gpu_count()
    if count == 0:
        raise DeviceError(
            f"{what}, but no GPU is usable here: CuPy finds no CUDA device. To load them anyway, {fix}.",
            location=tag,
        )
    index = cupy.cuda.runtime.getDevice() if tag == "cuda" else int(tag.split(":")[1])
    if index >= count:
        raise DeviceError(
            f"{what}, but this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1}). "
            f"Pass map_location, e.g. {{{tag!r}: 'cuda:0'}}, or 'cpu' (or 'auto').",
            location=tag,
        )
    return _backend(index)


@functools.lru_cache(maxsize=None)
def _backend(index: int) -> "CupyBackend":
    return CupyBackend(index)


class CupyBackend:
    """Arrays on GPU ``index`` as ``cupy.ndarray``."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.tag = f"cuda:{index}"
        self._cupy = _cupy_module()

    def host_buffer(self, nbytes: int) -> np.ndarray:
        """Page-locked host memory to read a storage into before the copy."""
        try:
            import cupyx

            return cupyx.empty_pinned((nbytes,), dtype=np.uint8)
        except Exception:  # pinned allocation can fail (limits); plain memory still works
            return np.empty(nbytes, dtype=np.uint8)

    def from_host(self, host: np.ndarray):
        """Copy a host storage (1-D) to this GPU."""
        cupy = self._cupy
        with cupy.cuda.Device(self.index):
            raw = self._owned(cupy.empty(host.nbytes, dtype=np.uint8))
            raw.set(host.view(np.uint8))
            return raw.view(host.dtype) if device_supports(host.dtype) else raw

    def _owned(self, raw):
        """``raw`` (a fresh allocation) seen through memory a :class:`_StorageOwner` keeps alive.

        CuPy's memory objects take no weak references (they are ``cdef``
        classes), but :class:`nbckpt.Archive` must hold each storage weakly, or
        its cache would keep GPU memory alive as long as it is open. Arrays made
        from the storage hold the owner (through ``UnownedMemory``); the cache
        holds it weakly (:meth:`root`).
        """
        cupy = self._cupy
        owner = _StorageOwner(raw)
        memory = cupy.cuda.UnownedMemory(raw.data.ptr, raw.nbytes, owner, self.index)
        return cupy.ndarray((raw.nbytes,), dtype=np.uint8, memptr=cupy.cuda.MemoryPointer(memory, 0))

    def view(self, storage, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]):
        cupy = self._cupy
        with cupy.cuda.Device(self.index):
            return cupy.ndarray(shape, dtype=_device_dtype(dtype), memptr=storage.data + offset, strides=strides)

    def empty(self, dtype: np.dtype, shape: tuple[int, ...]):
        cupy = self._cupy
        with cupy.cuda.Device(self.index):
            return cupy.empty(shape, dtype=_device_dtype(dtype))

    # -- what saving needs ---------------------------------------------------------------

    def location(self, array) -> str:
        return f"cuda:{array.device.id}"

    def memory(self, array) -> tuple[object, int]:
        """The device allocation behind ``array`` and the address of its first element."""
        return array.data.mem, array.data.ptr

    def span(self, owner, address: int, nbytes: int):
        cupy = self._cupy
        with cupy.cuda.Device(self.index):
            pointer = cupy.cuda.MemoryPointer(owner, address - owner.ptr)
            return cupy.ndarray((nbytes,), dtype=np.uint8, memptr=pointer)

    def contiguous(self, array, dtype: np.dtype):
        with self._cupy.cuda.Device(self.index):
            return self._cupy.ascontiguousarray(array, dtype=dtype).reshape(-1)

    def root(self, storage):
        """What keeps a storage's memory alive and can be held weakly: its :class:`_StorageOwner`.

        Storages a ``map_location`` function returned have none: their memory
        object is returned (not weakly referenceable, so the archive keeps it).
        """
        memory = storage.data.mem
        owner = memory._owner if isinstance(memory, self._cupy.cuda.UnownedMemory) else None
        return owner if isinstance(owner, _StorageOwner) else memory

    def storage_from_root(self, root, dtype: np.dtype, nbytes: int):
        cupy = self._cupy
        with cupy.cuda.Device(self.index):
            if isinstance(root, _StorageOwner):
                memory = cupy.cuda.UnownedMemory(root.raw.data.ptr, nbytes, root, self.index)
            else:
                memory = root
            raw = cupy.ndarray((nbytes,), dtype=np.uint8, memptr=cupy.cuda.MemoryPointer(memory, 0))
            return raw.view(dtype) if dtype != np.uint8 else raw

    def to_host(self, array) -> np.ndarray:
        """Copy a device storage to host memory once, for writing."""
        with self._cupy.cuda.Device(self.index):
            return array.get()


class _StorageOwner:
    """Owns one storage's device allocation (``raw``); weakly referenceable."""

    __slots__ = ("raw", "__weakref__")

    def __init__(self, raw) -> None:
        self.raw = raw


def _device_dtype(dtype: np.dtype) -> np.dtype:
    """CuPy has no bfloat16/float8: such arrays hold their raw bits on the GPU."""
    if device_supports(dtype):
        return dtype
    return np.dtype(f"u{dtype.itemsize}")
