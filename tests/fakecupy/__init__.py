"""A test double of the parts of CuPy that nbckpt uses: several GPUs, without a GPU.

``tests/gpu_helpers.py`` installs it in ``sys.modules`` as ``cupy`` (with
``cupy.cuda``, ``cupy.cuda.runtime`` and ``cupyx``). It models:

- N devices and a current one: ``cupy.cuda.Device(i)`` as a context manager,
  ``cupy.cuda.runtime.getDevice()`` and ``getDeviceCount()`` (which raises, as
  CUDA does, when there is no device);
- device allocations (``cupy.cuda.Memory``): device N's live at the fake
  addresses N * 2**40 + k and are backed by NumPy byte buffers;
  ``cupy.cuda.UnownedMemory(ptr, size, owner)`` (memory an ``owner`` keeps
  alive); like CuPy's ``cdef`` classes, memory objects take no weak references;
  ``cupy.cuda.MemoryPointer(mem, offset)`` with ``.ptr``, ``.mem`` and ``+ int``;
- ``ndarray(shape, dtype, memptr=, strides=)``: a view of an allocation, with
  ``data``, ``device``, ``base``, ``flags``, ``view``, ``reshape``, slicing,
  ``get``/``set``, ``copy``, ``conj``, ``-a`` and ``__cuda_array_interface__``;
- where memory is allocated, as in CuPy: on the *current* device for ``empty``,
  ``asarray``, ``ascontiguousarray``, ``copy``, ``conj`` (of complex arrays),
  ``-a`` and the copies ``reshape`` or advanced indexing make; ``get`` of a
  non-contiguous array first copies it on the array's own device.

Tests read the logs: ``_allocations[i]`` (sizes of every allocation on device
i), ``_transfers`` (("get" or "set", device, nbytes) per host copy) and
``cupyx._pinned`` (``empty_pinned`` calls). Values are computed with NumPy;
no kernel runs. It is stricter than CuPy where that catches bugs: a view that
reaches outside its allocation raises, and dtypes CuPy cannot compute with
(bfloat16, float8, structured) are refused. ``reset(n)`` starts over with n
devices, ``clear_logs()`` empties the logs.
"""

from __future__ import annotations

import types

import numpy as np

from . import cuda, cupyx
from .cuda import Memory, MemoryPointer, UnownedMemory, runtime

_allocations = cuda._allocations
_transfers: list[tuple[str, int, int]] = []


def reset(n_devices: int = 2) -> None:
    """Start over: ``n_devices`` devices, device 0 current, empty logs.

    Arrays made before stay usable (their memory stays where it was).
    """
    runtime._count, runtime._current = n_devices, 0
    clear_logs()


def clear_logs() -> None:
    """Empty the allocation, transfer and pinned-memory logs."""
    _allocations.clear()
    _allocations.update({i: [] for i in range(runtime._count)})
    _transfers.clear()
    cupyx._pinned.clear()


def _check_dtype(dtype) -> np.dtype:
    """CuPy's dtypes: NumPy's own bool, int, uint, float and complex types. Not the
    ml_dtypes ones (bfloat16, float8...: user-defined, ``num >= 256``), even where
    their ``kind`` says "f" (float8_e5m2)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.num >= 256:
        raise TypeError(f"Unsupported dtype {dtype}")
    return dtype


class ndarray:
    """A CuPy array: ``shape``/``strides`` (in bytes) over device memory at ``data``."""

    __module__ = "cupy._core.core"  # nbckpt recognises CuPy arrays by their type's module
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr: MemoryPointer | None = None, strides=None) -> None:
        dtype = _check_dtype(dtype)
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(n) for n in shape)
        if strides is not None and memptr is None:
            raise ValueError("memptr is required if strides is given.")
        if memptr is None:  # a new allocation, on the current device
            memptr = MemoryPointer(Memory(int(np.prod(shape)) * dtype.itemsize), 0)
        # NumPy refuses (ValueError/TypeError) a view that leaves the allocation.
        self._np = np.ndarray(shape, dtype, buffer=memptr.mem._buffer, offset=memptr.ptr - memptr.mem.ptr,
                              strides=strides)
        self.data = memptr
        self.base: ndarray | None = None

    def _wrap(self, result: np.ndarray) -> "ndarray":
        """``result`` as a CuPy array: a view if it views this memory, else a new copy."""
        root = result
        while isinstance(root.base, np.ndarray):
            root = root.base
        mem = self.data.mem
        if root is not mem._buffer:
            return _from_numpy(result)
        view = ndarray.__new__(ndarray)
        view._np = result
        view.data = MemoryPointer(mem, result.__array_interface__["data"][0] - mem._buffer.ctypes.data)
        view.base = self.base if self.base is not None else self
        return view

    dtype = property(lambda self: self._np.dtype)
    shape = property(lambda self: self._np.shape)
    strides = property(lambda self: self._np.strides)
    size = property(lambda self: self._np.size)
    ndim = property(lambda self: self._np.ndim)
    nbytes = property(lambda self: self._np.nbytes)
    itemsize = property(lambda self: self._np.itemsize)
    device = property(lambda self: self.data.device)
    T = property(lambda self: self._wrap(self._np.T))

    @property
    def flags(self):
        np_flags = self._np.flags
        return types.SimpleNamespace(c_contiguous=np_flags.c_contiguous, f_contiguous=np_flags.f_contiguous,
                                     owndata=self.base is None)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "descr": self.dtype.descr, "version": 3,
                "strides": None if self._np.flags.c_contiguous else self.strides,
                "data": (self.data.ptr if self.size else 0, False), "stream": 1}

    def view(self, dtype=None) -> "ndarray":
        if dtype is None:
            return self._wrap(self._np.view())
        dtype = _check_dtype(dtype)
        if dtype.itemsize != self.dtype.itemsize and not self._np.flags.c_contiguous:
            raise ValueError("To change to a dtype of a different size, the array must be C-contiguous")
        return self._wrap(self._np.view(dtype))

    def reshape(self, *shape) -> "ndarray":
        if len(shape) == 1 and not np.isscalar(shape[0]):
            shape = tuple(shape[0])
        return self._wrap(self._np.reshape(shape))

    def __getitem__(self, key) -> "ndarray":
        result = self._np[key]
        if not isinstance(result, np.ndarray):  # one element: CuPy gives a 0-d view
            result = self._np[(key if isinstance(key, tuple) else (key,)) + (Ellipsis,)]
        return self._wrap(result)

    def __setitem__(self, key, value) -> None:
        if isinstance(value, np.ndarray):
            raise TypeError("Unsupported type <class 'numpy.ndarray'>")
        self._np[key] = value._np if isinstance(value, ndarray) else value

    def get(self) -> np.ndarray:
        """A copy in host memory (C order)."""
        source = self
        if not self._np.flags.c_contiguous:  # CuPy copies on the array's device first
            with self.device:
                source = self.copy()
        _transfers.append(("get", self.data.device_id, self.nbytes))
        return np.array(source._np, order="C", copy=True)

    def set(self, arr: np.ndarray) -> None:
        """Copy a host array of the same dtype and shape into this array."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if not (self._np.flags.c_contiguous or self._np.flags.f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
        _transfers.append(("set", self.data.device_id, self.nbytes))
        self._np[...] = arr

    def copy(self) -> "ndarray":
        return _from_numpy(self._np)

    def conj(self) -> "ndarray":
        return _from_numpy(np.conj(self._np)) if self.dtype.kind == "c" else self

    conjugate = conj

    def __neg__(self) -> "ndarray":
        return _from_numpy(np.negative(self._np))

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __len__(self) -> int:
        return len(self._np)

    def __repr__(self) -> str:
        return repr(self._np)


def _from_numpy(values: np.ndarray) -> ndarray:
    """A new C-contiguous array on the current device holding ``values`` (no host copy logged)."""
    out = ndarray(values.shape, values.dtype)
    out._np[...] = values
    return out


def empty(shape, dtype=float) -> ndarray:
    return ndarray(shape, dtype)


def asarray(a, dtype=None) -> ndarray:
    """``a`` on the current device: host arrays are copied there, device arrays when elsewhere."""
    if isinstance(a, ndarray):
        if a.data.device_id == runtime.getDevice() and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        return _from_numpy(a._np.astype(a.dtype if dtype is None else dtype))
    host = np.asarray(a, dtype=dtype)
    out = ndarray(host.shape, host.dtype)
    out.set(np.ascontiguousarray(host))
    return out


def ascontiguousarray(a: ndarray, dtype=None) -> ndarray:
    """``a`` itself when already C-contiguous with ``dtype``, else a copy on the current device."""
    dtype = a.dtype if dtype is None else _check_dtype(dtype)
    if a.ndim == 0:
        a = a.reshape(1)
    if a._np.flags.c_contiguous and dtype == a.dtype:
        return a
    return _from_numpy(np.ascontiguousarray(a._np, dtype=dtype))
