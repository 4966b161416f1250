"""Checks of the loading options that every format shares (``mmap``).

    >>> import mmap
    >>> mmap_access(True) == mmap.ACCESS_READ, mmap_access(False)
    (True, None)
"""

from __future__ import annotations

import mmap as mmap_module
from typing import Any

from ..io.sources import is_path, is_url

__all__ = ["mmap_access", "check_mmap_source"]


def mmap_access(mmap: bool | str | None) -> int | None:
    """The ``mmap`` module access mode for ``load(mmap=...)``, or None."""
    if mmap is False or mmap is None:
        return None
    if mmap is True or mmap == "r":
        return mmap_module.ACCESS_READ
    if mmap == "c":
        return mmap_module.ACCESS_COPY
    raise ValueError(f"mmap must be False, True, 'r' (read-only) or 'c' (copy-on-write), got {mmap!r}")


def check_mmap_source(f: Any, access: int | None) -> None:
    """ValueError when ``mmap`` is asked for on something that is not a local path."""
    if access is None:
        return
    if is_url(f):
        raise ValueError(
            f"mmap maps local files only; {f} is a URL. Load it without mmap (arrays are then read "
            f"with ranged requests), or copy it to a local file first."
        )
    if not is_path(f):
        raise ValueError(
            f"mmap needs a path to map the file; got a {type(f).__qualname__}. Pass the file's "
            f"path, or load without mmap."
        )
