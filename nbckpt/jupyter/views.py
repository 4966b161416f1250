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

from typing import Any

from ..display.info import globals_rows, info_rows, pairs_html, pairs_text  # noqa: F401 - moved there
from ..display.tables import format_shape
from ..meta import MetaArray
from ..numeric import device_of
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
    from ..text import safe_repr  # bounded, total, escaped: the value comes from a file

    return f"{type(value).__name__}: {safe_repr(value, limit)}"


def variables_text(variables: dict[str, Any]) -> str:
    """One indented line per variable: its name and :func:`describe_value`."""
    width = max((len(name) for name in variables), default=0)
    return "\n".join(f"  {name.ljust(width)}  {describe_value(value)}" for name, value in variables.items())


def bundle(text: str, html_text: str | None = None) -> dict[str, str]:
    """A display bundle: ``text/plain`` always, ``text/html`` when given."""
    data = {"text/plain": text}
    if html_text is not None:
        data["text/html"] = html_text
    return data
