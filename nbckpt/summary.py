"""Former home of the record tables: now :mod:`nbckpt.display.tables` (kept so old imports work).

    >>> from nbckpt.summary import format_bytes
    >>> format_bytes(2048)
    '2.0 KiB'
"""

from __future__ import annotations

from .display.tables import (  # noqa: F401 - re-exported
    RECORD_COLUMNS,
    SHARD_COLUMNS,
    format_bytes,
    format_shape,
    record_columns,
    record_rows,
    records_html,
    records_text,
    table_html,
    table_text,
)

__all__ = ["RECORD_COLUMNS", "SHARD_COLUMNS", "record_columns", "format_bytes", "format_shape", "record_rows", "records_text", "records_html",
           "table_html", "table_text"]
