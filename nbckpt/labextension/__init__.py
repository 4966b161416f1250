"""The JupyterLab checkpoint viewer: a Jupyter server extension and the prebuilt frontend.

Double-clicking a checkpoint (``.pt``, ``.pth``, ``.bin``, ``.ckpt``,
``.safetensors``, ``*.index.json``) in JupyterLab's file browser opens it in a
"Checkpoint viewer" tab (also "Open With → Checkpoint viewer"): the tree of its
modules, each record's statistics, histogram and heat map, the values of other
entries, a diff of two selected files, and "Load into notebook", which inserts
the cell that loads the chosen record into the active notebook. No kernel is
needed: the server extension (:mod:`nbckpt.labextension.handlers`) reads the
files in worker processes with memory and time limits
(:mod:`nbckpt.labextension.pool`), with nbckpt's safe defaults.

The frontend is built from ``labextension/`` (TypeScript) with JupyterLab's own
builder into ``nbckpt/labextension/prebuilt/``; installing nbckpt puts it in
``share/jupyter/labextensions/nbckpt`` and enables the server extension through
``etc/jupyter/jupyter_server_config.d/nbckpt.json``. For a development checkout:
``jupyter labextension develop --overwrite .`` and
``jupyter server extension enable nbckpt.labextension``.

Limits are set in Jupyter's configuration, e.g. in ``jupyter_server_config.py``::

    c.NbckptViewer.memory_limit = 8 << 30   # bytes of heap per worker (default 4 GiB)
    c.NbckptViewer.time_limit = 120         # seconds per request (default 60)
    c.NbckptViewer.workers = 2              # worker processes (default 2)

Nothing here runs at import: Jupyter calls the hooks below. The workers end
with the server: their requests come on a pipe from it, and they stop when it closes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PREBUILT"]

#: Where the built frontend lives in the package (``package.json`` and ``static/``).
PREBUILT = Path(__file__).resolve().parent / "prebuilt"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Jupyter server's hook: this module is the extension."""
    return [{"module": "nbckpt.labextension"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """JupyterLab's hook (``jupyter labextension develop``): the prebuilt frontend."""
    return [{"src": "prebuilt", "dest": "nbckpt"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Start the worker pool and add the viewer's handlers to ``serverapp``."""
    from .handlers import handlers  # noqa: PLC0415 - jupyter_server and tornado only when loaded by it
    from .pool import MEMORY_LIMIT, TIME_LIMIT, WorkerPool  # noqa: PLC0415

    settings = serverapp.config.get("NbckptViewer", {})
    pool = WorkerPool(int(settings.get("workers", 2)), memory_limit=int(settings.get("memory_limit", MEMORY_LIMIT)),
                      time_limit=float(settings.get("time_limit", TIME_LIMIT)))
    web_app = serverapp.web_app
    web_app.settings["nbckpt_pool"] = pool
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("nbckpt checkpoint viewer: handlers at %snbckpt/ (workers: %d MiB, %g s per request)",
                       web_app.settings["base_url"], pool.memory_limit >> 20, pool.time_limit)

