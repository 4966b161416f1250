"""``MetaArray``: an array that has a shape and a dtype but no data.

torch's ``meta`` device holds tensors without storage (for example a model built
with ``device="meta"`` before its weights are loaded). They load as
:class:`MetaArray` and save back as meta tensors.

    >>> import numpy as np
    >>> m = MetaArray((2, 3), np.float32)
    >>> m, m.nbytes, m.strides
    (MetaArray(shape=(2, 3), dtype=float32), 24, (3, 1))
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["MetaArray"]


class MetaArray:
    """Shape, dtype and strides (in elements) of a tensor on torch's meta device."""

    __slots__ = ("shape", "dtype", "strides")

    def __init__(self, shape: tuple[int, ...], dtype: Any, strides: tuple[int, ...] | None = None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        if strides is None:
            strides, step = [], 1
            for n in reversed(self.shape):
                strides.append(step)
                step *= max(n, 1)
            strides = tuple(reversed(strides))
        self.strides = tuple(int(s) for s in strides)

    device = "meta"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the array would take if it had data."""
        return self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"MetaArray(shape={self.shape}, dtype={self.dtype})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MetaArray) and self.shape == other.shape
                and self.dtype == other.dtype and self.strides == other.strides)

    def __hash__(self) -> int:
        return hash((self.shape, self.dtype.str, self.strides))

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            f"{self!r} has no data (torch's meta device); load the checkpoint that holds its "
            f"values, or make an array with np.empty(meta.shape, meta.dtype)"
        )
