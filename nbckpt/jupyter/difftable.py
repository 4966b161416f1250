"""What a visual diff of two checkpoints shows, from :func:`nbckpt.diff`'s report: pure functions.

:class:`~nbckpt.jupyter.diffview.DiffBrowser` and the JupyterLab viewer's diff
tab show one line per array that differs, **most changed first**:

1. arrays only in A, only in B, or with another shape or dtype (a structural
   change: the most a record can change);
2. arrays with other values, by their largest relative difference
   (``|a - b| / max(|a|, |b|)``, see :mod:`nbckpt.compare`), largest first;
   where there is none (raw types), by the fraction of elements that differ;
3. arrays whose values could not be compared (the report's ``note`` says why).

Each line carries a bar of the relative change on a **log scale** from
:data:`BAR_FLOOR` (an empty bar) to 1 (a full bar): training steps change
weights by 1e-4 to 1e-1, which a linear bar would show as nothing.

    >>> import io, numpy as np, nbckpt
    >>> def saved(obj):
    ...     buf = io.BytesIO(); nbckpt.save(obj, buf); buf.seek(0); return buf
    >>> a = saved({"w": np.array([1.0, 2.0]), "v": np.array([1.0, 2.0]), "old": np.zeros(1)})
    >>> b = saved({"w": np.array([1.0, 2.2]), "v": np.array([1.0, 2.00002]), "new": np.ones(1)})
    >>> for row in diff_rows(nbckpt.diff(a, b)):
    ...     print(f"{row.name:4} {row.change:10} {row.relative or 0:.4g} {row.bar:.3f}")
    old  only in A  0 1.000
    new  only in B  0 1.000
    w    values     0.09091 0.826
    v    values     1e-05 0.167
"""

from __future__ import annotations

import html
import math
from typing import Any, NamedTuple, Sequence

from ..summary import format_bytes, format_shape

__all__ = ["DiffRow", "diff_rows", "bar_fraction", "rows_html", "row_json", "BAR_FLOOR", "STRUCTURAL"]

#: A relative change this small (or smaller) draws an empty bar; 1 and more a full one.
BAR_FLOOR = 1e-6
#: The changes that alter a record's structure (they sort first, with a full bar).
STRUCTURAL = ("only in A", "only in B", "shape and dtype", "shape", "dtype")


class DiffRow(NamedTuple):
    """One array that differs, as the visual diff shows it.

    ``a`` and ``b`` describe each side (``"(3, 4) float32"``, ``""`` when absent);
    ``relative`` is the largest relative difference (``None`` where there is none),
    ``fraction`` the share of elements that differ (``None`` unless values were
    compared), ``bar`` the bar's length in [0, 1] (see :func:`bar_fraction`).
    """

    name: str
    change: str
    a: str
    b: str
    relative: float | None
    absolute: float | int | None
    fraction: float | None
    bar: float
    note: str


def bar_fraction(relative: float | None) -> float:
    """How long the bar of a relative change is, in [0, 1], on a log scale from
    :data:`BAR_FLOOR` to 1.

        >>> bar_fraction(1e-6), bar_fraction(1e-3), round(bar_fraction(0.5), 3), bar_fraction(2.0), bar_fraction(None)
        (0.0, 0.5, 0.95, 1.0, 0.0)
    """
    if relative is None or relative <= BAR_FLOOR:
        return 0.0
    if relative >= 1:
        return 1.0
    return math.log10(relative / BAR_FLOOR) / -math.log10(BAR_FLOOR)


def _side(record: Any) -> str:
    if record is None:
        return ""
    return f"{format_shape(record.shape)} {record.dtype}, {format_bytes(record.nbytes)}"


def _row(d: Any) -> DiffRow:
    record = d.a if d.a is not None else d.b
    size = math.prod(record.shape) if record is not None else 0
    fraction = d.differing / size if d.differing is not None and size else None
    if d.change in STRUCTURAL:
        bar = 1.0
    elif d.max_rel is not None:
        bar = bar_fraction(d.max_rel)
    else:
        bar = fraction or 0.0
    return DiffRow(d.name, d.change, _side(d.a), _side(d.b), d.max_rel, d.max_abs, fraction, bar, d.note)


def _order(row: DiffRow) -> tuple:
    if row.change in STRUCTURAL:
        return (0, STRUCTURAL.index(row.change) if row.change.startswith("only") else 2, 0.0)
    if row.note and row.relative is None and row.fraction is None:
        return (2, 0, 0.0)
    if row.relative is not None:
        return (1, 0, -row.relative)
    return (1, 1, -(row.fraction or 0.0))


def diff_rows(report: Any) -> list[DiffRow]:
    """The arrays of ``report`` (a :class:`nbckpt.compare.DiffReport`) that differ, most
    changed first (see the module doc); ties keep the report's order."""
    return sorted((_row(d) for d in report.records), key=_order)


def _number(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3g}"


def row_json(row: DiffRow) -> dict[str, Any]:
    """A row as JSON-able values (what the viewer's server sends)."""
    return {"name": row.name, "change": row.change, "a": row.a, "b": row.b,
            "relative": row.relative if row.relative is None or math.isfinite(row.relative) else None,
            "absolute": None if row.absolute is None else (row.absolute if isinstance(row.absolute, int)
                                                            else float(row.absolute)),
            "fraction": row.fraction, "bar": row.bar, "note": row.note}


#: Bar colours: a structural change, and a change of values.
STRUCTURAL_COLOR, VALUES_COLOR = "#c62828", "#1565c0"


def rows_html(rows: Sequence[DiffRow]) -> str:
    """The rows as an HTML table: name, change, A, B, the bar, max relative and absolute
    difference, and the share of elements that differ (everything escaped)."""
    head = "".join(f"<th style='text-align:left'>{title}</th>" for title in (
        "name", "change", "A", "B", "relative change (log scale)", "max rel", "max abs", "differing"))
    lines = []
    for row in rows:
        color = STRUCTURAL_COLOR if row.change in STRUCTURAL else VALUES_COLOR
        bar = (f"<div class='nbckpt-bar' title='{row.bar:.2f}' style='width:12em;background:#eee;height:0.9em'>"
               f"<div style='width:{100 * row.bar:.1f}%;background:{color};height:100%'></div></div>")
        differing = "" if row.fraction is None else f"{100 * row.fraction:.3g}%"
        change = html.escape(row.change) + (f"<br><small>{html.escape(row.note)}</small>" if row.note else "")
        cells = [f"<code>{html.escape(row.name)}</code>", change, html.escape(row.a), html.escape(row.b), bar,
                 _number(row.relative), _number(row.absolute), differing]
        lines.append("<tr>" + "".join(f"<td style='text-align:left'>{cell}</td>" for cell in cells) + "</tr>")
    return (f"<table class='nbckpt-diff-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(lines)}</tbody></table>")
