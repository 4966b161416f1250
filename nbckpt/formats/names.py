"""The one way nbckpt names an entry of a checkpoint: dotted paths.

Every place that shows or looks up an array by name (``nbckpt.open``,
``convert``, ``diff``, the CLI, the widgets) builds the name here, so a name
means the same everywhere. Keys are joined with dots; integer keys (list
items) are written as numbers; other non-string keys by their ``repr``. The
object itself, when it is a single array, is named :data:`ROOT_NAME`.

    >>> dotted_name(("layer1", "weight")), dotted_name(("state", 0, "exp_avg")), dotted_name(())
    ('layer1.weight', 'state.0.exp_avg', '')
    >>> dotted_name((("a", 1),))
    "('a', 1)"
"""

from __future__ import annotations

from typing import Any

__all__ = ["dotted_name", "format_key", "ROOT_NAME"]

#: The name of a checkpoint's object when it is one array (not a container).
ROOT_NAME = ""


def format_key(key: Any) -> str:
    """One key of a path, as it appears in a dotted name."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    return repr(key)


def dotted_name(path: tuple) -> str:
    """The dotted name of the entry at ``path`` (a tuple of keys); ``""`` for the root."""
    return ".".join(format_key(k) for k in path) if path else ROOT_NAME
