"""Dask arrays in and out of checkpoints: lazy loading that follows the file's own chunks.

:func:`from_checkpoint` opens any checkpoint nbckpt reads (a
torch.distributed.checkpoint folder, a sharded ``*.index.json`` checkpoint, a
single file) and returns its nested state with a lazy ``dask.array.Array`` in
place of each array. Nothing is read until a block is computed, and each block
is read by the worker that computes it (the task carries only the file name
and where the block lies in it):

- a DCP tensor has one Dask block per DCP chunk (where the chunks form a
  grid, as they do for every sharding torch writes; otherwise the grid of all
  chunk boundaries, each block read from the one chunk that holds it);
- an array of a single file or a sharded index checkpoint is one block.

``chunks=`` rechunks every array afterwards (Dask's own ``rechunk``);
``map_location="cuda:0"`` gives CuPy-backed Dask arrays, each block copied to
the GPU by the worker that reads it.

Saving goes the other way: put Dask arrays in a state and call
``nbckpt.save(state, folder, format="dcp")`` — each block is written by the
worker that holds it (see :mod:`nbckpt.formats.dcp_write`).

Dask is imported when these functions run, never by ``import nbckpt``.

    >>> import os, tempfile, numpy as np, nbckpt, nbckpt.dask
    >>> import dask.array as da
    >>> folder = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> x = np.arange(24.0).reshape(4, 6)
    >>> nbckpt.save({"x": da.from_array(x, chunks=(2, 3)), "step": 1}, folder, format="dcp")
    >>> state = nbckpt.dask.from_checkpoint(folder)
    >>> state["x"].chunks, state["step"]
    (((2, 2), (3, 3)), 1)
    >>> bool((state["x"].compute() == x).all())
    True
"""

from __future__ import annotations

import bisect
import itertools
import os
from typing import Any

import numpy as np

__all__ = ["from_checkpoint", "read_dcp_block", "read_record"]


def _place(host: np.ndarray, map_location: Any) -> Any:
    """``host`` on the device ``map_location`` sends the host's arrays to (NumPy stays NumPy)."""
    from .backends import HOST, backend_for
    from .devices import DeviceMap, canonical_tag

    device_map = DeviceMap.parse(map_location)
    if device_map.mode == "callable":
        raise ValueError("nbckpt.dask.from_checkpoint takes a device tag or dict as map_location, not a function")
    tag = "cpu" if device_map.mode == "auto" else canonical_tag(device_map.target("cpu"))
    backend = backend_for(tag)
    if backend is HOST:
        return host
    flat = np.ascontiguousarray(host).reshape(-1)
    strides = np.empty(host.shape, dtype=host.dtype).strides if host.size else (0,) * host.ndim
    return backend.view(backend.from_host(flat), host.dtype, 0, host.shape, strides)


def read_dcp_block(folder: str, chunk: Any, dtype_name: str, index: tuple, map_location: Any = None) -> Any:
    """One Dask block of a DCP tensor: ``index`` (slices within ``chunk``) of the chunk's data.

    Runs on the worker that computes the block; ``chunk`` is a
    :class:`nbckpt.formats.dcp_layout.Chunk` (its file, offset, length and box).
    """
    from .format import dtypes as torch_dtypes
    from .formats.dcp import read_chunk

    data = read_chunk(folder, chunk, torch_dtypes.by_torch_name(dtype_name))
    if index:
        data = np.ascontiguousarray(data[index])
    return _place(data, map_location)


def read_record(path: str, record_path: tuple, map_location: Any = None, weights_only: bool = True) -> Any:
    """One array of a single-file or sharded checkpoint, read on the worker that computes it."""
    from .archive import open as open_archive

    with open_archive(path, map_location=map_location, weights_only=weights_only) as archive:
        return archive[record_path]


def _grid(entry: Any) -> tuple[tuple[int, ...], ...]:
    """Block boundaries per dimension: every chunk's start and end."""
    grid = []
    for dim, size in enumerate(entry.shape):
        cuts = sorted({0, size} | {c.offsets[dim] for c in entry.chunks} | {c.offsets[dim] + c.sizes[dim]
                                                                          for c in entry.chunks})
        grid.append(tuple(cuts))
    return tuple(grid)


def _dcp_array(folder: str, entry: Any, map_location: Any) -> Any:
    import dask
    import dask.array as da

    dtype = entry.dtype.numpy
    meta = _place(np.empty((0,) * len(entry.shape), dtype=dtype), map_location)
    if not entry.shape:
        chunk = entry.chunks[0]
        task = dask.delayed(read_dcp_block, pure=True)(folder, chunk, entry.dtype.name, (), map_location)
        return da.from_delayed(task, shape=(), dtype=dtype, meta=meta)
    if not entry.numel:  # nothing to read
        return da.zeros(entry.shape, dtype=dtype, chunks=-1)
    grid = _grid(entry)
    counts = tuple(len(cuts) - 1 for cuts in grid)
    owner: dict[tuple, Any] = {}
    for chunk in entry.chunks:
        if not chunk.numel:
            continue
        ranges = [range(bisect.bisect_left(cuts, o), bisect.bisect_left(cuts, o + s))
                  for cuts, o, s in zip(grid, chunk.offsets, chunk.sizes)]
        for cell in itertools.product(*ranges):
            owner[cell] = chunk
    blocks = np.empty(counts, dtype=object)
    for cell in np.ndindex(*counts):
        start = tuple(cuts[i] for cuts, i in zip(grid, cell))
        stop = tuple(cuts[i + 1] for cuts, i in zip(grid, cell))
        shape = tuple(b - a for a, b in zip(start, stop))
        chunk = owner[cell]
        index = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, chunk.offsets))
        if shape == chunk.sizes:
            index = ()
        task = dask.delayed(read_dcp_block, pure=True)(folder, chunk, entry.dtype.name, index, map_location)
        blocks[cell] = da.from_delayed(task, shape=shape, dtype=dtype, meta=meta)
    return da.block(blocks.tolist()) if blocks.size > 1 else blocks.reshape(-1)[0]


def _rechunk(array: Any, chunks: Any) -> Any:
    return array if chunks is None else array.rechunk(chunks)


def _replace_refs(tree: Any, make: Any, path: tuple = ()) -> Any:
    """``tree`` with ``make(ref, path)`` in place of each ArrayRef (``path``: its keys and indices)."""
    from .formats.base import ArrayRef

    if isinstance(tree, ArrayRef):
        return make(tree, path)
    if isinstance(tree, dict):
        items = [(k, _replace_refs(v, make, path + (k,))) for k, v in tree.items()]
        return {k: v for k, v in items} if type(tree) is dict else type(tree)(items)
    if isinstance(tree, list):
        return [_replace_refs(v, make, path + (i,)) for i, v in enumerate(tree)]
    if type(tree) is tuple:
        return tuple(_replace_refs(v, make, path + (i,)) for i, v in enumerate(tree))
    return tree


def from_checkpoint(path: Any, *, chunks: Any = None, map_location: Any = None,
                    weights_only: bool = True) -> Any:
    """The checkpoint at ``path`` as its nested state, with lazy Dask arrays for its arrays.

    ``path`` is a DCP folder, a sharded checkpoint (folder or ``*.index.json``)
    or a single checkpoint file. Blocks follow the file's chunks unless
    ``chunks`` asks for others (anything ``dask.array.Array.rechunk`` takes,
    such as ``"auto"`` or ``(1024, -1)``). ``map_location`` is a device tag or
    dict (``"cuda:0"``: CuPy-backed blocks). Non-array values are returned as
    they are, read at once through the safe VM (``weights_only``).
    """
    from .formats.dcp import DcpReader
    from .formats.sniff import open_reader
    from .io.sources import is_path

    if not is_path(path):
        raise TypeError(f"from_checkpoint needs a local path (workers open the file themselves), got "
                        f"{type(path).__name__}")
    path = os.path.abspath(os.fsdecode(path))
    reader = open_reader(path, weights_only=weights_only)
    try:
        if isinstance(reader, DcpReader):
            layout = reader.layout
            return _replace_refs(
                reader.tree(),
                lambda ref, _path: _rechunk(_dcp_array(layout.folder, layout.tensors[ref.storage.key],
                                                       map_location), chunks))
        tree = reader.tree()
    finally:
        reader.close()
    return _replace_refs(tree, lambda ref, record_path: _rechunk(
        _record_array(path, record_path, ref, map_location, weights_only), chunks))


def _record_array(path: str, record_path: tuple, ref: Any, map_location: Any, weights_only: bool) -> Any:
    import dask
    import dask.array as da

    meta = _place(np.empty((0,) * len(ref.shape), dtype=ref.dtype), map_location)
    task = dask.delayed(read_record, pure=True)(path, record_path, map_location, weights_only)
    return da.from_delayed(task, shape=ref.shape, dtype=ref.dtype, meta=meta)
