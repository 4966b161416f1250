"""What ``info`` shows about a checkpoint, as ``(label, value)`` rows, as text or HTML.

Every format's :class:`nbckpt.ArchiveInfo` goes through :func:`info_rows`: its
one-line ``description``, byte order, counts and sizes, the file's own
``metadata`` (safetensors' ``__metadata__``, a sharded index's ``metadata``),
format ``details`` (the shards) and the globals its pickle names.

    >>> print(pairs_text([("file", "m.pt"), ("format", "zip")]))
    file    m.pt
    format  zip
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

from .tables import format_bytes

__all__ = ["info_rows", "globals_rows", "pairs_text", "pairs_html"]


def info_rows(info: Any, records: Sequence[Any]) -> list[tuple[str, str]]:
    """Format, byte order, counts, sizes, sharing, metadata, details and globals of ``info``."""
    byteorder = info.byteorder + (" (recorded in the file)" if info.byteorder_recorded else
                                  " (not recorded in the file: assumed, see nbckpt.set_default_load_endianness)")
    storages_shared = {r.storage for r in records if r.shares}
    sharing = "none"
    if storages_shared:
        viewing = sum(1 for r in records if r.shares)
        sharing = f"{viewing} arrays view {len(storages_shared)} shared storages"
    described = info.description or info.format
    if info.prefix:
        described += f", records under {info.prefix}/"
    rows = [
        ("file", info.source),
        ("format", described),
        ("byte order", byteorder),
        ("arrays", f"{info.records:,}"),
        ("storages", f"{info.storages:,}"),
        ("sharing", sharing),
        ("array data", format_bytes(info.array_bytes)),
        ("file size", format_bytes(info.file_bytes)),
    ]
    if info.pickle_bytes:
        rows.append(("pickle", format_bytes(info.pickle_bytes)))
    rows += list(info.details)
    rows += [(f"metadata {key}", value) for key, value in info.metadata.items()]
    return rows + (globals_rows(info.globals) if info.pickle_bytes else [])


def globals_rows(globals_: Iterable[Any]) -> list[tuple[str, str]]:
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
