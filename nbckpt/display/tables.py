"""Plain-text and HTML tables of an archive's records (pure functions).

Used by ``Archive._repr_html_``, the ``%ckpt`` magics, the widgets and the
command line; nothing here imports IPython or ipywidgets.

    >>> print(format_bytes(1536), format_bytes(3 * 2**30))
    1.5 KiB 3.0 GiB
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

__all__ = ["RECORD_COLUMNS", "SHARD_COLUMNS", "record_columns", "format_bytes", "format_shape", "record_rows", "records_text", "records_html", "table_html", "table_text"]

RECORD_COLUMNS = ("name", "shape", "dtype", "device", "size", "shared with")
#: Columns added for checkpoints stored in several files (sharded, DCP).
SHARD_COLUMNS = ("chunks", "files")


def format_bytes(n: int) -> str:
    """``1.5 KiB``: sizes as people read them."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_shape(shape: Sequence[int]) -> str:
    """``(3, 4)``; ``()`` for 0-d arrays."""
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def record_columns(records: Iterable[Any]) -> tuple[str, ...]:
    """:data:`RECORD_COLUMNS`, plus :data:`SHARD_COLUMNS` when a record lies in other files or chunks."""
    if any(r.shard or r.chunks > 1 for r in records):
        return RECORD_COLUMNS + SHARD_COLUMNS
    return RECORD_COLUMNS


def record_rows(records: Iterable[Any], columns: Sequence[str] = RECORD_COLUMNS) -> list[tuple[str, ...]]:
    """One row of strings per record, in the order of ``columns`` (see :func:`record_columns`)."""
    rows = []
    for r in records:
        row = (r.name or "(root)", format_shape(r.shape), str(r.dtype), r.location, format_bytes(r.nbytes),
               ", ".join(r.shares))
        if len(columns) > len(RECORD_COLUMNS):
            row += (str(r.chunks), r.shard)
        rows.append(row)
    return rows


def table_text(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width text table."""
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def table_html(columns: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> str:
    """An HTML table (cells escaped)."""
    head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def records_text(records: Iterable[Any]) -> str:
    records = list(records)
    columns = record_columns(records)
    return table_text(columns, record_rows(records, columns))


def records_html(archive: Any, limit: int = 500) -> str:
    """The records of an archive as an HTML table (the first ``limit`` of them)."""
    records = list(archive.records)
    shown = records[:limit]
    caption = f"{archive.source}: {len(records)} arrays"
    if len(records) > limit:
        caption += f" (first {limit} shown)"
    columns = record_columns(records)
    return table_html(columns, record_rows(shown, columns), caption)
