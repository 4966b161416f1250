"""``DiffBrowser``: the visual diff of two checkpoints, as a widget.

A :class:`DiffBrowser` is a ``VBox`` of stock ipywidgets over the report of
:func:`nbckpt.diff`:

- a header: the summary line (how many arrays are equal, how many differ and how);
- a filter box (a substring or a glob, as in the archive browser) and a count;
- the table of the arrays that differ, most changed first (see
  :mod:`nbckpt.jupyter.difftable`): name, change, each side's shape, dtype and
  size, a bar of the relative change (log scale), the largest relative and
  absolute difference and the share of elements that differ; at most
  :data:`MAX_SHOWN` lines, with a note saying how many more match;
- the other entries (numbers, strings, configs) that differ.

``%ckpt diff A B --widget`` shows one.

    >>> import io, numpy as np, nbckpt
    >>> def saved(obj):
    ...     buf = io.BytesIO(); nbckpt.save(obj, buf); buf.seek(0); return buf
    >>> view = DiffBrowser(saved({"w": np.ones(3), "b": np.zeros(2), "step": 1}),
    ...                    saved({"w": np.array([1.0, 1.5, 1.0]), "b": np.zeros(2), "step": 2}))
    >>> [(row.name, row.change) for row in view.rows], view.count.value
    ([('w', 'values')], '1 array differs')
"""

from __future__ import annotations

import html
from typing import Any, Mapping

import ipywidgets as widgets

from ..compare import MISSING, DiffReport, diff
from . import difftable, listing
from .preview import STYLE

__all__ = ["DiffBrowser", "MAX_SHOWN"]

#: The table shows at most this many arrays; the filter narrows the rest down.
MAX_SHOWN = 500


class DiffBrowser(widgets.VBox):
    """The arrays (and other entries) that differ between checkpoints ``a`` and ``b``
    (paths, file objects or open :class:`nbckpt.Archive`\\ s, compared by
    :func:`nbckpt.diff` on ``map_location``), or of a :class:`~nbckpt.compare.DiffReport`
    given alone.

    Parts, for tests and for arranging them otherwise: ``header``, ``filter``,
    ``count``, ``table`` (HTML), ``more``, ``values`` (HTML); :attr:`rows` are the
    :class:`~nbckpt.jupyter.difftable.DiffRow`\\ s in the order shown, :attr:`report`
    the report.
    """

    def __init__(self, a: Any, b: Any = None, *, map_location: Any = "cpu") -> None:
        if b is None:
            if not isinstance(a, DiffReport):
                raise TypeError(f"DiffBrowser takes two checkpoints, or one nbckpt.diff report; got "
                                f"{type(a).__name__} alone: DiffBrowser(a, b) or DiffBrowser(nbckpt.diff(a, b))")
            self.report = a
        else:
            self.report = diff(a, b, map_location=map_location)
        #: The arrays that differ, most changed first.
        self.rows = difftable.diff_rows(self.report)
        self._filter = listing.EntryFilter(row.name for row in self.rows)

        self.header = widgets.HTML(f"<b>{html.escape(self.report.summary())}</b>")
        self.filter = widgets.Text(placeholder="substring or glob, e.g. layers.1 or *.weight", description="filter",
                                   continuous_update=True, layout={"width": "50%"})
        self.count = widgets.Label()
        self.table = widgets.HTML()
        self.more = widgets.Label()
        self.values = widgets.HTML(self._values_html())
        for part, name in ((self.header, "diff-header"), (self.filter, "diff-filter"), (self.count, "diff-count"),
                           (self.table, "diff-table"), (self.values, "diff-values")):
            part.add_class(f"nbckpt-{name}")
        self.filter.observe(self._on_filter, names="value")
        self._show(self._filter.matching(""))
        super().__init__([widgets.HTML(STYLE), self.header, widgets.HBox([self.filter, self.count]), self.table,
                          self.more, self.values])
        self.add_class("nbckpt-diff")

    def _on_filter(self, change: Mapping[str, Any]) -> None:
        self._show(self._filter.matching(change["new"]))

    def _show(self, indices: list[int]) -> None:
        shown = [self.rows[i] for i in indices[:MAX_SHOWN]]
        total = len(self.rows)
        noun = "array differs" if total == 1 else "arrays differ"
        self.count.value = (f"{total:,} {noun}" if len(indices) == total
                            else f"{len(indices):,} of {total:,} {'differing arrays' if total > 1 else noun} match")
        self.table.value = difftable.rows_html(shown) if shown else (
            "<i>no array differs</i>" if not total else "<i>no differing array matches the filter</i>")
        hidden = len(indices) - len(shown)
        self.more.value = f"{hidden:,} more… type in the filter to narrow the list" if hidden else ""

    def _values_html(self) -> str:
        if not self.report.values:
            return ""
        rows = "".join(
            f"<tr><td><code>{html.escape(d.name or '(root)')}</code></td><td>{html.escape(d.change)}</td>"
            f"<td>{html.escape(_value(d.a))}</td><td>{html.escape(_value(d.b))}</td></tr>"
            for d in self.report.values)
        return (f"<table><caption style='text-align:left'>other entries that differ</caption><thead><tr>"
                f"<th>name</th><th>change</th><th>A</th><th>B</th></tr></thead><tbody>{rows}</tbody></table>")

    def __repr__(self) -> str:
        return f"<DiffBrowser of {self.report.source_a} vs {self.report.source_b}: {len(self.rows)} arrays differ>"


def _value(value: Any) -> str:
    return "" if value is MISSING else listing.value_text(value)
