"""The Jupyter layer: ``%ckpt`` magics, widgets, statistics and pictures of arrays.

Nothing here is imported by ``import nbckpt``; ``%load_ext nbckpt`` imports
:mod:`nbckpt.jupyter.magics` (and with it IPython) when it registers the magics.
The widgets :class:`ArchiveBrowser`, :class:`ArrayPreview` and :class:`DiffBrowser` are imported (with
ipywidgets) on first use of their names. :mod:`~nbckpt.jupyter.stats` needs only
NumPy, :mod:`~nbckpt.jupyter.pictures` imports matplotlib when it draws.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_ipython_extension", "ArchiveBrowser", "ArrayPreview", "DiffBrowser"]

# Widget names -> the module that defines them, imported on first access (PEP 562).
_LAZY = {"ArchiveBrowser": ".browser", "ArrayPreview": ".preview", "DiffBrowser": ".diffview"}


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%ckpt`` / ``%%ckpt`` magics in ``ipython`` (``%load_ext nbckpt`` calls it).

    IPython and the magics module are imported here, not when nbckpt is.
    """
    from .magics import CheckpointMagics  # noqa: PLC0415 - the Jupyter layer loads only when asked for

    ipython.register_magics(CheckpointMagics)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
