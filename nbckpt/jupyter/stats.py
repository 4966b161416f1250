"""Statistics and first values of one array: pure functions, no widgets.

:func:`array_stats` gives an :class:`ArrayStats`: shape, dtype, device and
size; min, max, mean and std of the finite values; NaN and Inf counts; the
fraction of zeros. Arrays of up to :data:`EXACT_LIMIT` elements are summarised
exactly; larger ones on a deterministic sample of :data:`SAMPLE_SIZE` elements
(one from each equal stretch of the flattened array), and the result says so
(``sampled=True``, ``counted`` elements).

Every dtype nbckpt loads works: bool and integers (exact min/max), floats,
bfloat16 and float8 (through float32), complex numbers and ``nbckpt.complex32``
(statistics of the magnitudes ``|z|``; NaN/Inf counted when either part is);
raw torch types and ``nbckpt.MetaArray`` have no statistics, only a note. A CuPy
array is summarised on its GPU: only the resulting scalars are copied back.

    >>> import numpy as np
    >>> s = array_stats(np.array([[0.0, 1.0], [np.nan, 3.0]], dtype=np.float32))
    >>> s.min, s.max, s.mean, s.nan_count, s.zero_fraction, s.sampled
    (0.0, 3.0, 1.3333333333333333, 1, 0.25, False)
    >>> first_values(np.arange(10), 4)
    '[0, 1, 2, 3, …]'
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..meta import MetaArray
from ..numeric import array_module, computable, device_of, no_numbers_reason, numeric_kind, to_host, to_scalar
from ..summary import format_bytes, format_shape
from .views import pairs_html, pairs_text

__all__ = ["ArrayStats", "array_stats", "first_values", "leading_values", "sample_flat", "EXACT_LIMIT",
           "SAMPLE_SIZE"]

#: Arrays with more elements than this are summarised on a sample (16 Mi elements).
EXACT_LIMIT = 1 << 24
#: Elements in that sample (never more than the exact limit in force).
SAMPLE_SIZE = 1 << 20
#: The sample is the same every time for the same array.
SAMPLE_SEED = 0


@dataclass(frozen=True)
class ArrayStats:
    """What :func:`array_stats` found. Statistics are ``None`` where there are none
    (an empty array, a meta tensor, raw bits, no finite values).

    ``min``/``max`` keep the array's kind (``int`` for integer arrays, exact;
    ``bool`` for booleans), ``mean``/``std`` (population std) are floats computed
    in float64; all four cover the finite values only. ``counted`` is how many
    elements the statistics cover: ``size``, or the sample size when ``sampled``.
    """

    shape: tuple[int, ...]
    dtype: str
    device: str
    nbytes: int
    size: int
    min: Any = None
    max: Any = None
    mean: float | None = None
    std: float | None = None
    nan_count: int | None = None
    inf_count: int | None = None
    zero_fraction: float | None = None
    sampled: bool = False
    counted: int = 0
    note: str = ""

    @property
    def has_values(self) -> bool:
        """Whether any statistics were computed (not for meta tensors or raw bits)."""
        return self.nan_count is not None

    def rows(self) -> list[tuple[str, str]]:
        """``(label, value)`` pairs as people read them, for tables."""
        rows = [("shape", format_shape(self.shape)), ("dtype", self.dtype), ("device", self.device),
                ("size", f"{self.size:,} elements, {format_bytes(self.nbytes)}")]
        if self.has_values:
            rows += [("min", _format(self.min)), ("max", _format(self.max)), ("mean", _format(self.mean)),
                     ("std", _format(self.std)), ("NaN", f"{self.nan_count:,}"), ("Inf", f"{self.inf_count:,}"),
                     ("zeros", "—" if self.zero_fraction is None else f"{self.zero_fraction:.2%}")]
            if self.sampled:
                rows.append(("computed on", f"a sample of {self.counted:,} of {self.size:,} elements "
                                            f"(counts are of the sample)"))
        if self.note:
            rows.append(("note", self.note))
        return rows

    def __str__(self) -> str:
        return pairs_text(self.rows())

    def _repr_html_(self) -> str:
        return pairs_html(self.rows())


def array_stats(array: Any, *, exact_limit: int | None = None) -> ArrayStats:
    """Statistics of ``array`` (NumPy, CuPy or :class:`nbckpt.MetaArray`): see the module doc.

    ``exact_limit`` overrides :data:`EXACT_LIMIT`: above it, the statistics are
    computed on a sample of at most ``min(SAMPLE_SIZE, exact_limit)`` elements.

        >>> s = array_stats(np.array([1 + 1j, 3 - 4j]))
        >>> s.min, s.max, s.note
        (1.4142135623730951, 5.0, 'complex: min, max, mean and std of the magnitudes |z|')
    """
    if not (hasattr(array, "shape") and hasattr(array, "dtype")):
        raise TypeError(f"array_stats takes a NumPy or CuPy array, got {type(array).__qualname__}")
    shape = tuple(int(n) for n in array.shape)
    size = math.prod(shape)
    described = dict(shape=shape, dtype=str(array.dtype), device=device_of(array),
                     nbytes=size * array.dtype.itemsize, size=size)
    if isinstance(array, MetaArray):
        return ArrayStats(**described, note="a meta tensor: shape and dtype only, no data")
    kind = numeric_kind(array.dtype)
    if kind is None:
        return ArrayStats(**described, note=f"{no_numbers_reason(array.dtype)}: no statistics")
    limit = EXACT_LIMIT if exact_limit is None else int(exact_limit)
    sampled = size > limit
    values = sample_flat(array, min(SAMPLE_SIZE, limit)) if sampled else array
    found = _reduce(computable(values), kind)
    note = "complex: min, max, mean and std of the magnitudes |z|" if kind == "complex" else ""
    return ArrayStats(**described, **found, sampled=sampled, counted=int(values.size), note=note)


def _reduce(values: Any, kind: str) -> dict[str, Any]:
    """The statistics of a computable array, computed where it lives."""
    xp = array_module(values)
    n = int(values.size)
    if n == 0:
        return dict(nan_count=0, inf_count=0)

    def count(mask: Any) -> int:
        return int(to_scalar(xp.count_nonzero(mask)))

    with _quiet(xp):
        zeros = count(values == 0)
        nans = infs = 0
        numbers = values
        if kind in ("float", "complex"):
            nans, infs = count(xp.isnan(values)), count(xp.isinf(values))
            if kind == "complex":
                numbers = xp.abs(values)
            if nans or infs:
                numbers = numbers[xp.isfinite(values)]
        found: dict[str, Any] = dict(nan_count=nans, inf_count=infs, zero_fraction=zeros / n)
        if numbers.size:
            found.update(min=to_scalar(xp.min(numbers)), max=to_scalar(xp.max(numbers)),
                         mean=float(to_scalar(xp.mean(numbers, dtype=xp.float64))),
                         std=float(to_scalar(xp.std(numbers, dtype=xp.float64))))
    return found


def _quiet(xp: Any) -> Any:
    """NumPy's overflow warnings (std of huge values is inf) are noise here."""
    return np.errstate(all="ignore") if xp is np else contextlib.nullcontext()


def sample_flat(array: Any, n: int) -> Any:
    """``n`` elements of ``array``, the same ones every time, as a 1-D array on its device.

    The flattened array is cut into ``n`` equal stretches and one element is
    drawn from each (with a fixed seed), so the sample covers the whole array
    without the aliasing of a fixed stride (every row's first column...). Only
    the sampled elements are read: a huge memory-mapped array stays on disk.

        >>> sample_flat(np.arange(100).reshape(10, 10), 4)
        array([15, 31, 51, 75])
    """
    size = math.prod(array.shape)
    if n >= size:
        return array.reshape(-1) if array.ndim != 1 else array
    rng = np.random.default_rng(SAMPLE_SEED)
    starts = (np.arange(n + 1, dtype=np.float64) * (size / n)).astype(np.int64)
    starts[-1] = size
    widths = np.maximum(starts[1:] - starts[:-1], 1)
    flat = starts[:-1] + (rng.random(n) * widths).astype(np.int64)
    xp = array_module(array)
    coords = np.unravel_index(np.minimum(flat, size - 1), array.shape)
    return array[tuple(xp.asarray(c) for c in coords)]


def leading_values(array: Any, n: int) -> np.ndarray:
    """The first ``n`` values of ``array`` in C order, as a 1-D host array.

    Copies at most about ``2 n`` elements (from the GPU for CuPy arrays), however
    large the array is.

        >>> leading_values(np.arange(24).reshape(2, 3, 4), 6)
        array([0, 1, 2, 3, 4, 5])
    """
    view = array
    if view.ndim == 0:
        return to_host(view).reshape(1)
    while view.ndim > 1:
        inner = math.prod(view.shape[1:])
        if inner == 0 or view.shape[0] == 0:
            return np.empty(0, dtype=array.dtype)
        if inner >= n:
            view = view[0]
            continue
        view = view[: -(-n // inner)]
        break
    if view.ndim == 1:
        view = view[:n]
    return to_host(view).reshape(-1)[:n]


def first_values(array: Any, n: int = 10) -> str:
    """The first ``n`` values of ``array`` (C order) as text, ``…`` when there are more.

        >>> first_values(np.array([[True, False], [False, True]]), 3)
        '[ True, False, False, …]'
        >>> first_values(np.array(2.5))
        '2.5'
    """
    if isinstance(array, MetaArray):
        return "no values: a meta tensor has no data"
    values = leading_values(array, n + 1)
    more = values.size > n
    values = values[:n]
    shown = computable(values)
    if shown is None:  # raw torch bits: show the stored integers
        shown = values.view(np.dtype(values.dtype.str)) if values.dtype.fields is None else values
    if array.ndim == 0:
        return np.array2string(shown.reshape(()), separator=", ")
    text = np.array2string(shown, separator=", ", threshold=n + 1, max_line_width=1 << 30)
    return text[:-1] + ", …]" if more else text


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:.6g}"
        return text if any(c in text for c in ".enia") else text + ".0"  # 6.0, not 6
    return str(value)
