"""Text and HTML for what the ``%ckpt`` magics display: pure functions.

Each view is a list of rows; :func:`bundle` turns text and HTML into one
display bundle, so a notebook shows the HTML and a terminal the text.

    >>> import numpy as np
    >>> describe_value(np.zeros((2, 3), np.float32)), describe_value({"a": 1, "b": 2}), describe_value(0.5)
    ('ndarray (2, 3) float32, cpu', 'dict of 2 entries', 'float: 0.5')
    >>> print(pairs_text([("file", "a.pt"), ("arrays", "3")]))
    file    a.pt
    arrays  3
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

from ..archive import ArchiveInfo, Record
from ..meta import MetaArray
from ..numeric import device_of
from ..pickling.scan import GlobalRef
from ..summary import format_bytes, format_shape
from .namespace import is_array

__all__ = ["describe_value", "variables_text", "info_rows", "globals_rows", "pairs_text", "pairs_html", "bundle"]


def describe_value(value: Any, limit: int = 60) -> str:
    """One line about a value: type, shape, dtype and device of arrays; sizes of containers."""
    if isinstance(value, MetaArray):
        return f"MetaArray {format_shape(value.shape)} {value.dtype} (no data)"
    if is_array(value):
        text = f"{type(value).__name__} {format_shape(value.shape)} {value.dtype}"
        return text if type(value).__module__.startswith(("scipy", "cupyx")) else f"{text}, {device_of(value)}"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return f"{type(value).__name__} of {len(value)} {'entry' if len(value) == 1 else 'entries'}"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(value).__name__}: {text}"


def variables_text(variables: dict[str, Any]) -> str:
    """One indented line per variable: its name and :func:`describe_value`."""
    width = max((len(name) for name in variables), default=0)
    return "\n".join(f"  {name.ljust(width)}  {describe_value(value)}" for name, value in variables.items())


def info_rows(info: ArchiveInfo, records: Sequence[Record]) -> list[tuple[str, str]]:
    """What ``%ckpt info`` shows: format, byte order, counts, sizes, sharing, globals."""
    byteorder = info.byteorder + (" (recorded in the file)" if info.byteorder_recorded else
                                  " (not recorded in the file: assumed, see nbckpt.set_default_load_endianness)")
    storages_shared = {r.storage for r in records if r.shares}
    sharing = "none"
    if storages_shared:
        viewing = sum(1 for r in records if r.shares)
        sharing = f"{viewing} arrays view {len(storages_shared)} shared storages"
    rows = [
        ("file", info.source),
        ("format", f"zip (torch >= 1.6), version {info.version}, records under {info.prefix}/"),
        ("byte order", byteorder),
        ("arrays", f"{info.records:,}"),
        ("storages", f"{info.storages:,}"),
        ("sharing", sharing),
        ("array data", format_bytes(info.array_bytes)),
        ("file size", format_bytes(info.file_bytes)),
        ("pickle", format_bytes(info.pickle_bytes)),
    ]
    return rows + globals_rows(info.globals)


def globals_rows(globals_: Iterable[GlobalRef]) -> list[tuple[str, str]]:
    """A summary row, then one row per global: allowed or refused, and why."""
    found = list(globals_)
    refused = [g for g in found if not g.allowed]
    summary = f"{len(found)} referenced, " + (f"{len(refused)} refused by the safe loader" if refused else "all allowed")
    rows = [("globals", summary)]
    rows += [(f"  {g.name}", ("allowed" if g.allowed else "REFUSED") + f" ({g.reason})") for g in found]
    return rows


def pairs_text(rows: Sequence[tuple[str, str]]) -> str:
    """``label  value`` lines, labels padded to one width."""
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{label.ljust(width)}  {value}".rstrip() for label, value in rows)


def pairs_html(rows: Sequence[tuple[str, str]], caption: str = "") -> str:
    """The same rows as a two-column HTML table, labels as row headers (escaped)."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
        f"<td style='text-align:left'>{html.escape(value)}</td></tr>"
        for label, value in rows
    )
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tbody>{body}</tbody></table>"


def bundle(text: str, html_text: str | None = None) -> dict[str, str]:
    """A display bundle: ``text/plain`` always, ``text/html`` when given."""
    data = {"text/plain": text}
    if html_text is not None:
        data["text/html"] = html_text
    return data
