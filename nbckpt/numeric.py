"""Numbers out of any array nbckpt loads, on the device the array lives on.

Statistics (:mod:`nbckpt.jupyter.stats`) and comparisons (:mod:`nbckpt.compare`)
are written once against an *array module*: ``numpy`` for host arrays, ``cupy``
for GPU arrays (imported only when such an array is met), so a GPU array's
numbers are computed on its GPU and only scalars are copied back.

Not every dtype nbckpt loads can be computed with directly. :func:`computable`
turns an array into one that can: ml_dtypes' bfloat16 and float8 types become
float32 (every value is exactly representable), ``nbckpt.complex32`` becomes
complex64; raw torch types (``bits8``, ``float4_e2m1fn_x2``...) have no numbers
and give ``None``.

    >>> import numpy as np, ml_dtypes
    >>> computable(np.array([1.5, -2], dtype=ml_dtypes.bfloat16))
    array([ 1.5, -2. ], dtype=float32)
    >>> numeric_kind(np.dtype(np.uint8)), numeric_kind(np.dtype("U3"))
    ('int', None)
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .backends import is_cupy_array
from .format.dtypes import complex32
from .meta import MetaArray

__all__ = ["array_module", "device_of", "to_host", "to_scalar", "numeric_kind", "computable", "no_numbers_reason"]

_KINDS = {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "complex"}


def array_module(array: Any) -> ModuleType:
    """``cupy`` for a CuPy array (imported now, not before), else ``numpy``."""
    if is_cupy_array(array):
        import cupy  # noqa: PLC0415 - only ever imported for an array that already is one

        return cupy
    return np


def device_of(array: Any) -> str:
    """``"cpu"``, ``"cuda:N"`` or ``"meta"``: where ``array``'s values live."""
    if isinstance(array, MetaArray):
        return "meta"
    if is_cupy_array(array):
        return f"cuda:{array.device.id}"
    return "cpu"


def to_host(array: Any) -> np.ndarray:
    """``array`` as a NumPy array (a copy from the GPU for CuPy arrays)."""
    if is_cupy_array(array):
        return array.get()
    return np.asarray(array)


def to_scalar(value: Any) -> Any:
    """A Python ``int``/``float``/``bool``/``complex`` from a 0-d array or NumPy scalar."""
    if is_cupy_array(value):
        value = value.get()
    return np.asarray(value).item()


def numeric_kind(dtype: np.dtype) -> str | None:
    """``"bool"``, ``"int"``, ``"float"`` or ``"complex"`` for the numbers a dtype holds
    once :func:`computable`; ``None`` for dtypes without numbers."""
    dtype = np.dtype(dtype)
    if _is_complex32(dtype):
        return "complex"
    if dtype.metadata and "torch" in dtype.metadata:
        return None  # raw bits of a torch type NumPy cannot compute with
    if dtype.fields is not None or dtype.subdtype is not None:
        return None
    if dtype.isbuiltin == 1:
        return _KINDS.get(dtype.kind)
    # ml_dtypes' types (bfloat16, float8_*, int4...) are user-defined NumPy types.
    try:
        np.zeros(1, dtype).astype(np.float32)
    except (TypeError, ValueError):
        return None
    return "float"


def _is_complex32(dtype: np.dtype) -> bool:
    """``nbckpt.complex32`` (two float16 fields ``real`` and ``imag``), with or without metadata."""
    return dtype.names == complex32.names and all(
        dtype.fields[name][0] == np.float16 for name in complex32.names)


def no_numbers_reason(dtype: np.dtype) -> str:
    """Why :func:`computable` gives no numbers for ``dtype`` (for messages)."""
    dtype = np.dtype(dtype)
    if dtype.metadata and "torch" in dtype.metadata:
        return f"raw bits of torch.{dtype.metadata['torch']} (NumPy cannot compute with it)"
    return f"{dtype} holds no numbers"


def computable(array: Any) -> Any:
    """``array`` with a dtype its module computes with, or ``None`` (see the module doc).

    The result is ``array`` itself when its dtype already is one, else a new
    array on the same device.
    """
    if isinstance(array, MetaArray):
        return None
    dtype = array.dtype
    kind = numeric_kind(dtype)
    if kind is None:
        return None
    if dtype.isbuiltin == 1 and dtype.metadata is None:
        return array
    xp = array_module(array)
    if _is_complex32(dtype):
        values = xp.empty(array.shape, dtype=xp.complex64)
        values.real = array["real"]
        values.imag = array["imag"]
        return values
    return array.astype(np.float32)
