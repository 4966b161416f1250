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

    def from_host(self, host: np.ndarray) -> np.ndarray:
        """The storage for bytes already read into host memory (no copy)."""
        return host

    def view(self, storage: np.ndarray, dtype: np.dtype, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...]) -> np.ndarray:
        """An array over ``storage`` (bounds were checked by the caller), in bytes."""
        buffer = storage if storage.dtype == np.uint8 else storage.view(np.uint8)
        return np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset, strides=strides)

    def empty(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """An array of size 0."""
        return np.empty(shape, dtype=dtype)

    def owns(self, array: object) -> bool:
        return isinstance(array, np.ndarray)
