"""Fake ``cupyx``: ``empty_pinned`` gives ordinary NumPy memory and records each call."""

from __future__ import annotations

import numpy as np

#: (shape, dtype) of each empty_pinned call (reset by fakecupy.reset()).
_pinned: list[tuple[object, np.dtype]] = []


def empty_pinned(shape, dtype=float, order="C") -> np.ndarray:
    _pinned.append((shape, np.dtype(dtype)))
    return np.empty(shape, dtype=dtype, order=order)
