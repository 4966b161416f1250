"""The Jupyter layer: ``%ckpt`` magics, statistics and pictures of arrays.

Nothing here is imported by ``import nbckpt``; ``%load_ext nbckpt`` imports
:mod:`nbckpt.jupyter.magics` (and with it IPython) when it registers the magics.
:mod:`~nbckpt.jupyter.stats` needs only NumPy, :mod:`~nbckpt.jupyter.pictures`
imports matplotlib when it draws.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%ckpt`` / ``%%ckpt`` magics in ``ipython`` (``%load_ext nbckpt`` calls it).

    IPython and the magics module are imported here, not when nbckpt is.
    """
    from .magics import CheckpointMagics  # noqa: PLC0415 - the Jupyter layer loads only when asked for

    ipython.register_magics(CheckpointMagics)
