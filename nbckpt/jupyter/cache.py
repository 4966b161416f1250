"""The cell cache behind ``%%ckpt cache``: a cell's variables saved with the cell's fingerprint.

A cache file is an ordinary checkpoint (``nbckpt.load`` and ``torch.load`` read
it): a dict of the cached variables plus one entry :data:`CACHE_KEY` holding
``{"cell_sha256": ..., "variables": [...]}``. The fingerprint is the SHA-256 of
the cell's source text exactly as written, so any edit (even of a comment)
makes the cache stale. Reading the fingerprint reads no array data.

    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "cell.pt")
    >>> fp = cell_fingerprint("x = 1\\n")
    >>> cache_state(path, fp, ["x"]).status
    'missing'
    >>> save_cache(path, {"x": np.arange(3)}, fp)
    >>> cache_state(path, fp, ["x"]).status, cache_state(path, cell_fingerprint("x = 2\\n"), ["x"]).status
    ('fresh', 'stale')
    >>> load_cache(path, ["x"])
    {'x': array([0, 1, 2])}
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

from .. import api
from ..archive import Archive
from ..errors import CheckpointError

__all__ = ["CACHE_KEY", "CacheState", "cell_fingerprint", "cache_state", "save_cache", "load_cache"]

#: The entry of a cache file that holds its fingerprint and variable names.
CACHE_KEY = "__ckpt_cache__"


@dataclass(frozen=True)
class CacheState:
    """What a cache file at a path holds, compared with a cell.

    ``status`` is ``"missing"`` (no file), ``"foreign"`` (a file, but not a
    cache: ``detail`` says what it is), ``"stale"`` (made from another cell
    source), ``"incomplete"`` (same source, but ``missing`` variables are not in
    it) or ``"fresh"`` (same source, every variable in it).
    """

    status: str
    detail: str = ""
    missing: tuple[str, ...] = ()


def cell_fingerprint(source: str) -> str:
    """The SHA-256 (hex) of a cell's source text."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def cache_state(path: str | os.PathLike, fingerprint: str, names: Sequence[str]) -> CacheState:
    """Compare the cache file at ``path`` with a cell's fingerprint and variable names.

    Reads the file's directory and pickle only. A file nbckpt cannot read is
    ``"foreign"``.
    """
    try:
        with Archive(path) as archive:
            header = archive.values.get(CACHE_KEY)
    except FileNotFoundError:  # a path or a URL: the same answer
        return CacheState("missing")
    except CheckpointError as err:
        return CacheState("foreign", f"nbckpt cannot read it: {err}")
    if not (isinstance(header, dict) and isinstance(header.get("cell_sha256"), str)):
        return CacheState("foreign", "a checkpoint without a cell fingerprint")
    if header["cell_sha256"] != fingerprint:
        return CacheState("stale")
    cached = header.get("variables", ())
    missing = tuple(name for name in names if name not in cached)
    return CacheState("incomplete", missing=missing) if missing else CacheState("fresh")


def save_cache(path: str | os.PathLike, variables: dict[str, Any], fingerprint: str, *,
               progress: bool | None = None) -> None:
    """Save ``variables`` and the cell's ``fingerprint`` to ``path`` (atomically)."""
    if CACHE_KEY in variables:
        raise ValueError(f"{CACHE_KEY!r} is the cache's own entry; name the variable otherwise")
    header = {"cell_sha256": fingerprint, "variables": list(variables)}
    api.save({**variables, CACHE_KEY: header}, path, progress=progress)


def load_cache(path: str | os.PathLike, names: Sequence[str], *, map_location: Any = None,
               progress: bool | None = None) -> dict[str, Any]:
    """The variables ``names`` from the cache file at ``path`` (safe loading)."""
    saved = api.load(path, map_location, progress=progress)
    return {name: saved[name] for name in names}
