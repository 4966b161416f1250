"""Write torch.distributed.checkpoint (DCP) folders that ``torch.distributed.checkpoint.load`` reads.

:func:`save_dcp` (``nbckpt.save(state, folder, format="dcp")``) lays ``state``
out as DCP's default planner does: nested dicts and lists are flattened to
dotted names (``planner_data`` keeps each name's path), arrays become tensor
entries and every other leaf a ``BytesStorageMetadata`` entry (a ``torch.save``
stream of the value). Each chunk is written as a ``torch.save`` stream of the
chunk, DCP's default ``SerializationFormat.TORCH_SAVE``:

- a NumPy or CuPy array is one chunk, written by this process;
- a Dask array is one chunk per Dask block, written by the worker that
  computes (and so holds) the block, through whatever scheduler is active (a
  ``dask.distributed`` client on one machine or a cluster, or Dask's local
  threads); each block gets its own data file.

Crash safety: data files get names no previous save used
(``__<n>_<save id>.distcp``), and the ``.metadata`` that makes them a checkpoint
is written once, last, atomically (a temporary file, fsynced, renamed over the
old one, the folder fsynced). Until that rename the folder still holds the
previous checkpoint, whole; a save that fails removes the files it wrote, and
one that succeeds removes the data files only the previous checkpoint used
(and any that saves killed before their cleanup left behind).

    >>> import os, tempfile, numpy as np, nbckpt
    >>> folder = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> save_dcp({"w": np.ones((2, 2), np.float32), "lr": 0.1}, folder)
    >>> sorted(n for n in os.listdir(folder) if not n.endswith(".distcp"))
    ['.metadata']
    >>> nbckpt.load(folder)["lr"]
    0.1
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError
from ..format import dtypes as torch_dtypes
from .dcp_metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata, MetadataIndex, StorageInfo,
                           StorageMeta, TensorProperties, TensorStorageMetadata, dump_metadata, read_metadata)

__all__ = ["save_dcp", "flatten_state", "write_chunk_file", "is_dask_array", "DCP_VERSION"]

#: The DCP format version torch 2.13 writes (``filesystem.CURRENT_DCP_VERSION``).
DCP_VERSION = "1.0.0"
METADATA_FILE = ".metadata"
#: The data files nbckpt's saves write: ``__<n>_<first 12 hex digits of the save id>.distcp``.
_OWN_FILE = re.compile(r"__\d+_[0-9a-f]{12}\.distcp")


def is_dask_array(obj: Any) -> bool:
    """Whether ``obj`` is a ``dask.array.Array`` (recognised without importing Dask)."""
    return type(obj).__module__.startswith("dask.array") and hasattr(obj, "chunks") and hasattr(obj, "dask")


def _is_array(obj: Any) -> bool:
    from ..backends import is_cupy_array

    return isinstance(obj, np.ndarray) or is_cupy_array(obj) or is_dask_array(obj)


def _is_terminal(value: Any) -> bool:
    """DCP's rule: a list is walked into only when it holds arrays, dicts or walkable lists."""
    if isinstance(value, Mapping):
        return False
    if not isinstance(value, list):
        return True
    for entry in value:
        if isinstance(entry, (Mapping, list)) and not _is_terminal(entry):
            return False
        if _is_array(entry):
            return False
    return True


def flatten_state(state: Mapping) -> list[tuple[str, tuple, Any]]:
    """``(dotted name, path, leaf)`` for each leaf, as ``torch.distributed.checkpoint`` flattens a state dict.

        >>> [(n, p) for n, p, _ in flatten_state({"a": {"b": 1}, "l": [np.zeros(1), 2]})]
        [('a.b', ('a', 'b')), ('l.0', ('l', 0)), ('l.1', ('l', 1))]
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"a DCP checkpoint holds a dict (a state dict), got {type(state).__name__}")
    found: list[tuple[str, tuple, Any]] = []
    names: set[str] = set()

    def visit(path: tuple, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(path + (str(key),), item)
        elif _is_terminal(value):
            name = ".".join(map(str, path))
            if name in names:
                raise ValueError(f"two entries flatten to the same name {name!r}; DCP names entries by their "
                                 f"dotted path, so keys must not contain the dots that separate them")
            names.add(name)
            found.append((name, path, value))
        else:
            for index, item in enumerate(value):
                visit(path + (index,), item)

    for key, value in state.items():
        visit((str(key),), value)
    return found


def _torch_dtype(array: Any, name: str) -> torch_dtypes.TorchDtype:
    found = torch_dtypes.for_numpy(np.dtype(array.dtype))
    if found is None:
        raise TypeError(f"{name} has dtype {array.dtype}, which torch has no tensor type for")
    return found


def _stream(value: Any) -> bytes:
    """A torch.save stream of ``value`` (zip format), as bytes."""
    from .. import api

    buf = io.BytesIO()
    api.save(value, buf)
    return buf.getvalue()


def _host_copy(array: Any) -> np.ndarray:
    """A C-contiguous host array owning its memory (a view would save its whole base buffer)."""
    from ..backends import is_cupy_array

    if is_cupy_array(array):
        return array.get()
    if array.flags.c_contiguous and array.base is None:
        return array
    return np.array(array, order="C", copy=True)


def write_chunk_file(block: Any, path: str, *, durable: bool = True) -> int:
    """Write one chunk as a file of its own (a torch.save stream); its length. Runs on Dask workers."""
    from .. import api

    block = _host_copy(np.asarray(block) if not hasattr(block, "__cuda_array_interface__") else block)
    with open(path, "xb") as f:
        api.save(block, f)
        f.flush()
        if durable:
            os.fsync(f.fileno())
        return f.tell()


@dataclass
class _Entry:
    name: str
    path: tuple
    value: Any
    dtype: torch_dtypes.TorchDtype | None = None  # None for objects


def _plan(state: Mapping) -> list[_Entry]:
    """Every entry, checked before any file is written."""
    entries = []
    for name, path, value in flatten_state(state):
        if _is_array(value):
            entry = _Entry(name, path, value, _torch_dtype(value, name))
            if is_dask_array(value) and any(np.isnan(c) for dim in value.chunks for c in dim):
                raise ValueError(f"{name} is a Dask array of unknown chunk sizes; call compute_chunk_sizes() first")
        else:
            entry = _Entry(name, path, _stream(value))  # validates the value now
        entries.append(entry)
    return entries


def _previous_files(folder: str) -> set[str]:
    """Data files the folder's current checkpoint uses (to remove once the new one is in place)."""
    try:
        with open(os.path.join(folder, METADATA_FILE), "rb") as f:
            md = read_metadata(f.read())
        infos = md.storage_data.values() if isinstance(md.storage_data, dict) else ()
        return {i.relative_path for i in infos if isinstance(getattr(i, "relative_path", None), str)}
    except (OSError, FormatError, Exception):  # no checkpoint, or one nbckpt cannot read: keep its files
        return set()


def _offsets(chunks: tuple[tuple[int, ...], ...], index: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(sum(dim[:i])) for dim, i in zip(chunks, index))


def save_dcp(state: Mapping, folder: Any, *, durable: bool = True, progress: bool | None = None,
             storage_options: dict | None = None, skip_data: bool = False) -> None:
    """Save ``state`` as a DCP checkpoint folder (see the module docstring).

    ``folder`` is created when missing; a checkpoint already there is replaced
    atomically. ``durable=False`` skips the fsyncs; ``progress`` shows a
    progress bar as :func:`nbckpt.save` does.
    """
    from ..io.sources import is_path, is_url

    if not is_path(folder) or is_url(folder) or storage_options is not None:
        raise ValueError(f"format='dcp' writes a local folder (workers write its files themselves); got "
                         f"{folder!r:.80}. Save to a local or mounted path.")
    if skip_data:
        raise ValueError("skip_data=True needs format='zip': a DCP folder has no records to fill in later")
    folder = os.fspath(folder)
    entries = _plan(state)
    os.makedirs(folder, exist_ok=True)
    previous = _previous_files(folder)
    save_id = uuid.uuid4().hex
    token = save_id[:12]
    written: list[str] = []
    metadata = Metadata({}, {}, {}, StorageMeta(checkpoint_id=os.path.abspath(folder), save_id=save_id),
                        DCP_VERSION)
    from ..progress import progress_bar

    bar = progress_bar(sum(e.value.nbytes for e in entries if e.dtype is not None), "saving", progress)
    try:
        main_file = f"__0_{token}.distcp"
        written.append(main_file)
        blocks = []
        with open(os.path.join(folder, main_file), "xb") as f:
            for entry in entries:
                metadata.planner_data[entry.name] = entry.path
                if entry.dtype is None:
                    metadata.state_dict_metadata[entry.name] = BytesStorageMetadata()
                    start = f.tell()
                    f.write(entry.value)
                    metadata.storage_data[MetadataIndex(entry.name)] = StorageInfo(main_file, start, len(entry.value))
                    continue
                shape = tuple(int(n) for n in entry.value.shape)
                tensor_md = TensorStorageMetadata(TensorProperties(entry.dtype.name), shape, [])
                metadata.state_dict_metadata[entry.name] = tensor_md
                if is_dask_array(entry.value):
                    blocks.append((entry, tensor_md))
                    continue
                start = f.tell()
                from .. import api

                api.save(_host_copy(entry.value), f)
                bar.update(entry.value.nbytes)
                offsets = (0,) * len(shape)
                tensor_md.chunks.append(ChunkStorageMetadata(offsets, shape))
                metadata.storage_data[MetadataIndex(entry.name, offsets, 0)] = StorageInfo(
                    main_file, start, f.tell() - start)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if blocks:
            _write_dask_blocks(folder, token, blocks, metadata, written, durable)
            bar.update(sum(entry.value.nbytes for entry, _ in blocks))
        _write_metadata(folder, metadata, durable)
    except BaseException:
        for name in written:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
        raise
    finally:
        bar.close()
    _remove_unused(folder, previous, set(written))


def _remove_unused(folder: str, previous: set[str], keep: set[str]) -> None:
    """Remove the data files only the replaced checkpoint used, and those of saves that crashed."""
    stale = {name for name in os.listdir(folder) if _OWN_FILE.fullmatch(name)}
    for name in (previous | stale) - keep:
        if "/" not in name and name.endswith(".distcp"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _write_dask_blocks(folder: str, token: str, blocks: list, metadata: Metadata, written: list[str],
                       durable: bool) -> None:
    """One task per Dask block, each writing the block's own file where the block is computed."""
    import dask

    tasks, places = [], []
    for entry, tensor_md in blocks:
        array = entry.value
        delayed_blocks = array.to_delayed()
        for index in np.ndindex(*array.numblocks):
            name = f"__{len(written)}_{token}.distcp"
            written.append(name)
            tasks.append(dask.delayed(write_chunk_file, pure=False)(delayed_blocks[index],
                                                                     os.path.join(folder, name), durable=durable))
            offsets = _offsets(array.chunks, index)
            sizes = tuple(int(array.chunks[d][i]) for d, i in enumerate(index))
            places.append((entry.name, tensor_md, offsets, sizes, name))
    lengths = dask.compute(*tasks)
    for (name, tensor_md, offsets, sizes, file), length in zip(places, lengths):
        index = len(tensor_md.chunks)
        tensor_md.chunks.append(ChunkStorageMetadata(offsets, sizes))
        metadata.storage_data[MetadataIndex(name, offsets, index)] = StorageInfo(file, 0, int(length))


def _write_metadata(folder: str, metadata: Metadata, durable: bool) -> None:
    from ..io.sources import atomic_write

    with atomic_write(os.path.join(folder, METADATA_FILE), durable=durable) as f:
        f.write(dump_metadata(metadata))
