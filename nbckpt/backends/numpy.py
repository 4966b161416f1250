"""The host backend: storages and arrays in NumPy memory."""

from __future__ import annotations

import numpy as np

__all__ = ["NumpyBackend"]


class NumpyBackend:
    """Arrays on the host (location tag ``cpu``).

    A storage is a 1-D array holding the record's bytes with the storage's
    dtype; arrays are views of it, so arrays that shared a storage in the file
    share memory after loading.

        >>> backend = NumpyBackend()
        >>> storage = backend.from_host(np.arange(6, dtype=np.float32))
        >>> backend.view(storage, np.dtype(np.float32), 4, (2, 2), (8, 4))
        array([[1., 2.],
               [3., 4.]], dtype=float32)
    """

    tag = "cpu"

    def host_buffer(self, nbytes: int) -> np.ndarray:
        """Memory to read a storage's bytes into: for the host, the storage itself."""
        return np.empty(nbytes, dtype=np.uint8)

    def from_host(self, host: np.ndarray) -> np.ndarray:
        """The storage for bytes already read into host memory (no copy)."""
        return host

    def view(self, storage: np.ndarray, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> np.ndarray:
        """An array over ``storage`` (bounds were checked by the caller), in bytes."""
        # ml_dtypes arrays cannot export a buffer: view the storage as bytes first.
        buffer = storage if storage.dtype.isbuiltin == 1 else storage.view(np.uint8)
        return np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset, strides=strides)

    def empty(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """An array of size 0."""
        return np.empty(shape, dtype=dtype)

    # -- what saving needs ---------------------------------------------------------------

    def location(self, array: np.ndarray) -> str:
        return "cpu"

    def memory(self, array: np.ndarray) -> tuple[object, int]:
        """The object owning ``array``'s memory (end of its ``.base`` chain), and its address.

        The chain can pass through objects that only describe memory, such as the
        wrapper ``np.lib.stride_tricks.as_strided`` puts between an array and its base.
        """
        owner: object = array
        while True:
            if isinstance(owner, np.ndarray) or hasattr(owner, "__array_interface__"):
                base = getattr(owner, "base", None)
            elif isinstance(owner, memoryview):
                base = owner.obj  # np.asarray(memoryview(x)) views x's memory
            else:
                break
            if base is None:
                break
            owner = base
        return owner, array.__array_interface__["data"][0]

    def span(self, owner: object, address: int, nbytes: int) -> np.ndarray:
        """A flat uint8 view of ``nbytes`` of ``owner``'s memory from ``address``.

        Raises TypeError/ValueError/BufferError when the owner exports no buffer.
        """
        if isinstance(owner, np.ndarray):
            flat = owner.reshape(-1, order="A" if owner.flags.f_contiguous else "C")
            raw = flat.view(np.uint8)
        else:
            raw = np.frombuffer(owner, dtype=np.uint8)
        start = address - raw.__array_interface__["data"][0]
        if start < 0 or start + nbytes > raw.size:
            raise ValueError("the span lies outside the owner's memory")
        return raw[start : start + nbytes]

    def contiguous(self, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """A C-contiguous 1-D copy (or the array itself when it already is one)."""
        return np.ascontiguousarray(array, dtype=dtype).reshape(-1)

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return array

    def root(self, storage: np.ndarray) -> np.ndarray:
        """What keeps a storage's memory alive: NumPy views reference the root array."""
        root = storage
        while isinstance(root.base, np.ndarray):
            root = root.base
        return root

    def storage_from_root(self, root: np.ndarray, dtype: np.dtype, nbytes: int) -> np.ndarray:
        return root if root.dtype == dtype else root.view(np.uint8)[:nbytes].view(dtype)
