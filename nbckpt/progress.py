"""Progress bars for long saves and loads (``tqdm.auto``: a widget in notebooks).

``progress=None`` shows a bar only when the bytes to move make it worth it
(:data:`AUTO_THRESHOLD`), ``True`` always, ``False`` never. tqdm is optional: with
``None`` and no tqdm there is simply no bar.

    >>> bar = progress_bar(100, "saving", enabled=False)
    >>> bar.update(50); bar.close()
"""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar", "AUTO_THRESHOLD", "SILENT"]

#: Below this many bytes a save or load takes well under a second: no bar.
AUTO_THRESHOLD = 256 << 20


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


#: The stand-in returned when no bar is shown (callers may skip updating it).
SILENT = _NoBar()


def progress_bar(total: int, description: str, enabled: bool | None) -> Any:
    """A bar counting ``total`` bytes (``update(n)``, ``close()``), or a silent stand-in."""
    if enabled is False or (enabled is None and total < AUTO_THRESHOLD):
        return SILENT
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if enabled:
            raise ImportError("progress=True needs tqdm: pip install tqdm") from None
        return SILENT
    return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
