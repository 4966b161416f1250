"""``ArrayPreview``: one array at a glance, as a widget made of stock ipywidgets.

A :class:`ArrayPreview` is a ``VBox`` of a header (name, shape, dtype, device,
size), a table of statistics (min, max, mean, std, NaN and Inf counts, zero
fraction; "sampled" when the array is too large to summarise exactly), a
histogram and a heat map (images) and the first values. The numbers come from
:func:`nbckpt.jupyter.stats.array_stats` (exact up to
:data:`~nbckpt.jupyter.stats.EXACT_LIMIT` elements, on a sample of
:data:`~nbckpt.jupyter.stats.SAMPLE_SIZE` beyond; on the GPU for CuPy arrays),
the pictures from :mod:`nbckpt.jupyter.pictures`; the text is made by the plain
functions :func:`header_text` and :func:`statistics_rows`.

The preview keeps no reference to the array: everything is computed when it
is built.

    >>> import numpy as np
    >>> p = ArrayPreview(np.array([[0.0, 1.0], [np.nan, 3.0]], dtype=np.float32), name="w")
    >>> p.header.value
    '<b>w</b>&nbsp; (2, 2) float32 on cpu, 4 elements, 16 B'
    >>> dict(statistics_rows(p.array_stats))["NaN"], p.first_values.value
    ('1', '<code>[ 0.,  1., nan,  3.]</code>')
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import numpy as np

from ..summary import format_bytes, format_shape
from ..text import safe_repr
from .stats import ArrayStats, array_stats, first_values
from .views import pairs_html

__all__ = ["ArrayPreview", "header_text", "statistics_rows", "sampled_text", "FIRST_VALUES", "STYLE"]

#: How many of the first values the preview shows.
FIRST_VALUES = 20

_HIDDEN = {"display": "none"}

#: Compact tables and text in the preview and the browser (widgets' HTML is set for one-line labels).
STYLE = (
    "<style>"
    ".nbckpt-preview .widget-html-content, .nbckpt-browser .widget-html-content {line-height: 1.45;}"
    ".nbckpt-preview table th, .nbckpt-preview table td, .nbckpt-browser table th, .nbckpt-browser table td "
    "{padding: 1px 14px 1px 0; text-align: left;}"
    ".nbckpt-preview code {white-space: pre-wrap; font-family: var(--jp-code-font-family, monospace);}"
    ".nbckpt-records select {font-family: var(--jp-code-font-family, monospace); "
    "font-size: var(--jp-code-font-size, 13px);}"
    "</style>"
)


def header_text(stats: ArrayStats, name: str = "") -> str:
    """``(2, 3) float32 on cuda:0, 6 elements, 24 B`` (plain text; the name goes before it).

        >>> import numpy as np
        >>> header_text(array_stats(np.zeros(3, np.int8)))
        '(3,) int8 on cpu, 3 elements, 3 B'
    """
    text = (f"{format_shape(stats.shape)} {stats.dtype} on {stats.device}, {stats.size:,} "
            f"element{'' if stats.size == 1 else 's'}, {format_bytes(stats.nbytes)}")
    return f"{name}  {text}" if name else text


def statistics_rows(stats: ArrayStats) -> list[tuple[str, str]]:
    """The statistics as ``(label, value)`` rows: min … zeros, and a note (meta tensor,
    raw bits, complex magnitudes) when there is one. Shape, dtype and size are in the header."""
    return [(label, value) for label, value in stats.rows()[4:] if label != "computed on"]


def sampled_text(stats: ArrayStats) -> str:
    """``sampled: ...`` for statistics computed on a sample, else ``""``.

        >>> import numpy as np
        >>> sampled_text(array_stats(np.arange(100), exact_limit=10))
        'sampled: statistics of 10 of 100 elements (NaN, Inf and zero counts are of the sample)'
    """
    if not stats.sampled:
        return ""
    return (f"sampled: statistics of {stats.counted:,} of {stats.size:,} elements (NaN, Inf and zero counts "
            f"are of the sample)")


class ArrayPreview(widgets.VBox):
    """A widget showing one array (NumPy, CuPy or :class:`nbckpt.MetaArray`): see the module doc.

    Parts, for tests and for arranging them otherwise: ``header``, ``statistics``
    (HTML table), ``sampled`` (label, hidden unless sampled), ``histogram`` and
    ``heatmap`` (``Image`` widgets, ``None`` when there is nothing to draw),
    ``pictures_note`` (why there are no pictures), ``first_values``;
    ``array_stats`` holds the numbers.

        >>> import numpy as np
        >>> p = ArrayPreview(np.arange(12).reshape(3, 4))
        >>> p.heatmap is not None, p.sampled.layout.display
        (True, 'none')
    """

    def __init__(self, array: Any, *, name: str = "") -> None:
        self.array_stats = stats = array_stats(array)
        heading = f"<b>{html.escape(name)}</b>&nbsp; " if name else ""
        self.header = widgets.HTML(heading + html.escape(header_text(stats)))
        self.statistics = widgets.HTML(pairs_html(statistics_rows(stats)))
        self.sampled = widgets.Label(sampled_text(stats), layout={} if stats.sampled else _HIDDEN)
        self.histogram, self.heatmap, note = _pictures(array, stats)
        self.pictures_note = widgets.Label(note, layout={} if note else _HIDDEN)
        self.first_values = widgets.HTML(f"<code>{html.escape(first_values(array, FIRST_VALUES))}</code>")
        pictures = [image for image in (self.histogram, self.heatmap) if image is not None]
        numbers = widgets.VBox([self.statistics, self.sampled, self.pictures_note],
                               layout={"flex": "0 0 auto", "min_width": "14em", "margin": "0 16px 0 0"})
        body = widgets.HBox([numbers, *pictures], layout={"flex_flow": "row wrap", "align_items": "flex-start"})
        super().__init__([widgets.HTML(STYLE), self.header, body, widgets.HTML("<b>first values</b>"),
                          self.first_values])
        self.add_class("nbckpt-preview")
        self._name = name

    def __repr__(self) -> str:
        # Short and stable: notebooks store it as the output's text (the default lists every part).
        stats = self.array_stats
        return f"<ArrayPreview {self._name + ' ' if self._name else ''}{format_shape(stats.shape)} {stats.dtype}>"


def _pictures(array: Any, stats: ArrayStats) -> tuple[widgets.Image | None, widgets.Image | None, str]:
    """The histogram and heat-map images, and a note when there are none."""
    if not stats.has_values:
        return None, None, "no pictures: no values to draw"
    from . import pictures  # noqa: PLC0415 - matplotlib is imported when drawing

    try:
        with np.errstate(all="ignore"):
            histogram, heatmap = pictures.histogram_png(array), pictures.heatmap_png(array)
    except ImportError as err:
        return None, None, f"no pictures: they need matplotlib ({err}); pip install matplotlib (part of nbckpt's jupyter extra)"
    except (ValueError, ArithmeticError, MemoryError) as err:
        # Values from a file can defeat the drawing (a range of ±1.7e308 overflows
        # the bins); the numbers above are still right, so say so and go on.
        return None, None, f"no pictures: the values cannot be drawn ({type(err).__name__}: {safe_repr(str(err), 120)})"
    image = lambda png: widgets.Image(value=png, format="png")  # noqa: E731
    return image(histogram), (image(heatmap) if heatmap is not None else None), ""
