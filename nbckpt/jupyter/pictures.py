"""PNG pictures of one array: a histogram of its values and a heat map of 2-D data.

Drawn with matplotlib's Agg renderer on a :class:`matplotlib.figure.Figure` of
its own: pyplot is never imported and no global state (backend, current
figure, rcParams) changes, so drawing is safe in any notebook and thread.
matplotlib is imported on the first drawing, not with this module.

Work is bounded whatever the array's size: the histogram draws at most
:data:`HISTOGRAM_SAMPLE` values (the deterministic sample of
:func:`nbckpt.jupyter.stats.sample_flat`), the heat map at most
:data:`HEATMAP_SIDE` rows and columns (every k-th one, labelled as such). For a
CuPy array only those values are copied from the GPU.

    >>> import numpy as np
    >>> png = histogram_png(np.random.default_rng(0).normal(size=1000))
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    >>> heatmap_png(np.arange(5)) is None   # 1-D: no heat map
    True
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from ..meta import MetaArray
from ..numeric import computable, no_numbers_reason, numeric_kind, to_host
from ..summary import format_shape
from .stats import sample_flat

__all__ = ["histogram_png", "heatmap_png", "HISTOGRAM_SAMPLE", "HEATMAP_SIDE"]

#: The histogram draws at most this many values (a deterministic sample beyond).
HISTOGRAM_SAMPLE = 1 << 20
#: The heat map draws at most this many rows and columns.
HEATMAP_SIDE = 256
#: Size of every picture, in inches at :data:`DPI`.
FIGSIZE = (5.0, 3.0)
DPI = 80


def histogram_png(array: Any, *, bins: int = 50) -> bytes:
    """A PNG histogram of ``array``'s finite values (magnitudes for complex arrays).

    Booleans get two bars, integers of a small range one bar per value. An
    array without values to draw (empty, a meta tensor, raw bits, no finite
    value) gets a picture that says so.
    """
    title = f"{array.dtype} {format_shape(array.shape)}"
    reason = _no_values(array)
    if reason:
        return _message_png(title, reason)
    size = math.prod(array.shape)
    sampled = size > HISTOGRAM_SAMPLE
    kind = numeric_kind(array.dtype)
    values = _host_numbers(sample_flat(array, HISTOGRAM_SAMPLE) if sampled else array.reshape(-1))
    finite = values[np.isfinite(values)]
    left_out = values.size - finite.size
    if not finite.size:
        return _message_png(title, "no finite values to draw")
    figure = _figure()
    axes = figure.add_subplot()
    if kind == "bool":
        counts = [int(np.count_nonzero(finite == 0)), int(np.count_nonzero(finite))]
        axes.bar([0, 1], counts, tick_label=["False", "True"], color="C0")
    else:
        low, high = float(finite.min()), float(finite.max())
        if kind == "int" and high - low < bins:
            edges: Any = np.arange(low, high + 2) - 0.5  # one bar per integer
        else:
            edges = bins
        axes.hist(finite, bins=edges, color="C0")
    axes.set_xlabel("|value|" if kind == "complex" else "value")
    axes.set_ylabel("count")
    notes = []
    if sampled:
        notes.append(f"sample of {values.size:,} of {size:,}")
    if left_out:
        notes.append(f"{left_out:,} NaN/Inf left out")
    axes.set_title(title + (f" ({', '.join(notes)})" if notes else ""), fontsize=9)
    return _png(figure)


def heatmap_png(array: Any) -> bytes | None:
    """A PNG heat map of a 2-D array (of the first 2-D slice ``a[0, ..., 0, :, :]``
    of higher ranks), or ``None`` for 0-d and 1-D arrays and arrays without values.

    Arrays larger than :data:`HEATMAP_SIDE` on a side are drawn every k-th row
    or column; complex arrays by magnitude; NaN and Inf are left blank.
    """
    if array.ndim < 2 or _no_values(array):
        return None
    lead = (0,) * (array.ndim - 2)
    plane = array[lead] if lead else array
    rows, cols = plane.shape
    step_rows, step_cols = -(-rows // HEATMAP_SIDE), -(-cols // HEATMAP_SIDE)
    values = _host_numbers(plane[::step_rows, ::step_cols])
    figure = _figure()
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), aspect="auto", interpolation="nearest", cmap="viridis",
                        extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
    figure.colorbar(image, ax=axes)
    title = f"{array.dtype} {format_shape(array.shape)}"
    if lead:
        title += f", slice [{', '.join(str(i) for i in lead)}, :, :]"
    strides = [f"every {step}{_ordinal(step)} {axis}" for step, axis in ((step_rows, "row"), (step_cols, "column"))
               if step > 1]
    if strides:
        title += f" ({', '.join(strides)})"
    if numeric_kind(array.dtype) == "complex":
        title += " |z|"
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("column")
    axes.set_ylabel("row")
    return _png(figure)


def _no_values(array: Any) -> str:
    """Why ``array`` has nothing to draw, or ``""``."""
    if isinstance(array, MetaArray):
        return "a meta tensor has no data"
    if numeric_kind(array.dtype) is None:
        return no_numbers_reason(array.dtype)
    if math.prod(array.shape) == 0:
        return "the array is empty"
    return ""


def _host_numbers(values: Any) -> np.ndarray:
    """Drawable float64 host values: magnitudes for complex, 0/1 for booleans."""
    host = computable(to_host(values))
    if host.dtype.kind == "c":
        host = np.abs(host)
    return host.astype(np.float64)


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _figure() -> Any:
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib only when drawing

    return Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")


def _message_png(title: str, message: str) -> bytes:
    figure = _figure()
    figure.text(0.5, 0.6, title, ha="center", va="center", fontsize=9)
    figure.text(0.5, 0.4, message, ha="center", va="center", fontsize=9, color="0.4", wrap=True)
    return _png(figure)


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()
