"""The checkpoint viewer's HTTP API, served by the Jupyter server (authenticated requests only).

Every path is relative to the server's root folder (``ServerApp.root_dir``, what
the file browser shows) and is refused (403) when it leads outside it, links
included, or to a hidden file the server hides. Reading happens in the
:class:`~nbckpt.labextension.pool.WorkerPool`'s processes, from a thread, so
the server keeps answering whatever a file does. Errors are JSON:
``{"message": ..., "reason": ...}`` with status 403 (outside the root), 404 (no
such file), 400 (a bad request) or 422 (the file could not be read: the message
says why, e.g. a global the safe loader refuses).

=====================================  ===========================================
``GET nbckpt/listing?path=P``          header, entries and tree of P
``GET nbckpt/record?path=P&name=N``    statistics and first values of array N
``GET nbckpt/picture?path=P&name=N&kind=histogram|heatmap``  a PNG
``GET nbckpt/value?path=P&name=N``     the text of value N (not an array)
``GET nbckpt/diff?a=P&b=Q``            the arrays that differ, most changed first
=====================================  ===========================================
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .pool import ViewerError, WorkerPool

__all__ = ["resolve", "handlers", "ListingHandler", "RecordHandler", "PictureHandler", "ValueHandler",
           "DiffHandler"]


def resolve(root: str, relative: str, *, allow_hidden: bool = True) -> str:
    """The real path of ``relative`` under ``root``; ``web.HTTPError`` 403 when it leads outside
    ``root`` (``..``, an absolute path, a link out) or to a hidden file while hidden files are not
    allowed, 404 when nothing is there.

        >>> resolve("/srv/notebooks", "../etc/passwd")
        Traceback (most recent call last):
        tornado.web.HTTPError: HTTP 403: Forbidden (../etc/passwd is outside the server's root folder)
    """
    real_root = os.path.realpath(root)
    if os.path.isabs(relative) or "\0" in relative:
        raise web.HTTPError(403, f"{relative} is outside the server's root folder")
    full = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, full]) != real_root:
        raise web.HTTPError(403, f"{relative} is outside the server's root folder")
    if not allow_hidden and any(part.startswith(".") for part in os.path.relpath(full, real_root).split(os.sep)):
        raise web.HTTPError(403, f"{relative} is hidden (ContentsManager.allow_hidden is False)")
    if not os.path.exists(full):
        raise web.HTTPError(404, f"no file {relative} under the server's root folder")
    return full


class _ViewerHandler(APIHandler):
    """Common parts: the pool, the root, parameters, running a request in a worker."""

    @property
    def pool(self) -> WorkerPool:
        return self.settings["nbckpt_pool"]

    def _path(self, name: str = "path") -> str:
        relative = self.get_query_argument(name, None)
        if not relative:
            raise web.HTTPError(400, f"the request needs ?{name}=PATH (a path under the server's root folder)")
        manager = self.contents_manager
        return resolve(manager.root_dir, relative, allow_hidden=getattr(manager, "allow_hidden", True))

    def _name(self) -> str:
        name = self.get_query_argument("name", None)
        if name is None:
            raise web.HTTPError(400, "the request needs ?name=NAME (an entry's dotted name; empty for the root)")
        return name

    async def _run(self, op: str, args: dict[str, Any], files: list[str]) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self.pool.call, op, args, files)
        except ViewerError as err:
            raise web.HTTPError(422, f"{err.kind}: {err}", reason="Checkpoint not readable") from None

    def _json(self, data: Any) -> None:
        self.finish(json.dumps(data))


class ListingHandler(_ViewerHandler):
    @web.authenticated
    async def get(self) -> None:
        path = self._path()
        self._json(await self._run("listing", {"path": path, "label": self.get_query_argument("path")}, [path]))


class RecordHandler(_ViewerHandler):
    @web.authenticated
    async def get(self) -> None:
        path = self._path()
        self._json(await self._run("record", {"path": path, "name": self._name()}, [path]))


class PictureHandler(_ViewerHandler):
    @web.authenticated
    async def get(self) -> None:
        path, name = self._path(), self._name()
        kind = self.get_query_argument("kind", "histogram")
        if kind not in ("histogram", "heatmap"):
            raise web.HTTPError(400, f"kind must be histogram or heatmap, not {kind!r}")
        found = await self._run("picture", {"path": path, "name": name, "kind": kind}, [path])
        self.set_header("Cache-Control", "no-cache")
        self.finish(base64.b64decode(found["png"]), set_content_type="image/png")


class ValueHandler(_ViewerHandler):
    @web.authenticated
    async def get(self) -> None:
        path = self._path()
        self._json(await self._run("value", {"path": path, "name": self._name()}, [path]))


class DiffHandler(_ViewerHandler):
    @web.authenticated
    async def get(self) -> None:
        a, b = self._path("a"), self._path("b")
        labels = {"label_a": self.get_query_argument("a"), "label_b": self.get_query_argument("b")}
        self._json(await self._run("diff", {"a": a, "b": b, **labels}, [a, b]))


def handlers(base_url: str) -> list[tuple[str, type]]:
    """The viewer's URL patterns under ``base_url``."""
    return [(url_path_join(base_url, "nbckpt", name), handler) for name, handler in (
        ("listing", ListingHandler), ("record", RecordHandler), ("picture", PictureHandler),
        ("value", ValueHandler), ("diff", DiffHandler))]
