"""``save`` and ``load``: orchestration of the format, pickling and device layers."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np

from .devices import DeviceMap
from .errors import FormatError
from .format import spec
from .format.container import ZipReader, ZipWriter
from .materialize import ZipMaterializer
from .pickling.rebuild import Rebuilder
from .pickling.unpickler import FullUnpickler, SafeUnpickler
from .pickling.writer import CheckpointPickler, SavePlan
from .sources import archive_prefix, atomic_write, check_writable, is_path, open_source

__all__ = ["save", "load"]

_PICKLE_LIMIT = 1 << 31  # data.pkl larger than 2 GiB is not a checkpoint we can trust


def save(obj: Any, f: Any) -> None:
    """Save ``obj`` to ``f`` in torch's checkpoint format (torch.load reads it).

    ``f`` is a path (written atomically: a failed save leaves any previous file
    untouched) or a binary file object (only ``write`` and ``flush`` are used).
    ``obj`` may nest dicts, OrderedDicts, lists, tuples, namedtuples and sets of
    NumPy arrays and scalars, str, bytes, bytearray, int, float, complex, bool
    and None. Arrays that view one buffer are stored once and view one buffer
    again when loaded.

        >>> import io, numpy as np, nbckpt
        >>> buf = io.BytesIO()
        >>> w = np.arange(6, dtype=np.float32).reshape(2, 3)
        >>> nbckpt.save({"w": w, "wT": w.T, "step": 3}, buf)
        >>> _ = buf.seek(0)
        >>> out = nbckpt.load(buf)
        >>> np.shares_memory(out["w"], out["wT"]), out["step"]
        (True, 3)
    """
    write = None if is_path(f) else check_writable(f)
    plan = SavePlan.build(obj)  # every check happens before the first byte is written
    pickler = CheckpointPickler(plan)
    data_pkl = pickler.dumps(obj)
    if write is None:
        with atomic_write(f) as handle:
            _write_zip(handle.write, archive_prefix(f), data_pkl, pickler.storages)
        return
    _write_zip(write, archive_prefix(f), data_pkl, pickler.storages)
    flush = getattr(f, "flush", None)
    if callable(flush):
        flush()


def _write_zip(write, prefix: str, data_pkl: bytes, storages) -> None:
    writer = ZipWriter(write, prefix)
    writer.write_record("data.pkl", data_pkl)
    writer.write_record(".format_version", b"1")
    writer.write_record(".storage_alignment", b"%d" % spec.ALIGNMENT)
    writer.write_record("byteorder", sys.byteorder.encode("ascii"))
    for storage in storages:
        data = storage.data
        writer.write_record(f"data/{storage.key}", data.view(np.uint8) if data.size else b"")
    writer.close()


def load(
    f: Any,
    map_location: Any = None,
    *,
    weights_only: bool = True,
    skip_data: bool = False,
    encoding: str = "utf-8",
) -> Any:
    """Load a checkpoint written by ``torch.save`` or :func:`nbckpt.save`.

    Tensors come back as NumPy arrays (CuPy arrays on ``cuda`` devices), views
    sharing memory where the tensors shared storage. ``f`` is a path or a
    seekable binary file object; loading starts at its current position and
    leaves it just after the checkpoint.

    With ``weights_only=True`` (the default) no code from the file runs: only
    nbckpt's allowlist and :func:`nbckpt.add_safe_globals` are used, and any
    other global raises :class:`nbckpt.UnpicklingError` naming it.
    ``weights_only=False`` runs the file's pickle: only for trusted files.

        >>> import io, numpy as np, nbckpt
        >>> buf = io.BytesIO()
        >>> nbckpt.save([np.ones(2, np.float16), "text"], buf)
        >>> _ = buf.seek(0)
        >>> nbckpt.load(buf)
        [array([1., 1.], dtype=float16), 'text']
    """
    device_map = DeviceMap.parse(map_location)
    with open_source(f) as (stream, _path):
        start = stream.tell()
        magic = stream.read(4)
        stream.seek(start)
        if magic == spec.LOCAL_MAGIC:
            return _load_zip(stream, device_map, weights_only=weights_only, skip_data=skip_data,
                             encoding=encoding)
        if not magic:
            raise FormatError("the file is empty (or the stream is at its end): there is no checkpoint to load")
        raise FormatError(
            f"not a zip checkpoint: the data starts with {magic!r}, expected {spec.LOCAL_MAGIC!r}. "
            f"Files saved by torch before 1.6 (or with _use_new_zipfile_serialization=False) "
            f"use the legacy format."
        )


def _load_zip(stream, device_map: DeviceMap, *, weights_only: bool, skip_data: bool,
              encoding: str) -> Any:
    reader = ZipReader(stream)
    if "constants.pkl" in reader:
        raise FormatError(
            "this is a TorchScript archive, not a checkpoint: load it with torch.jit.load "
            "(weights_only loading cannot be used with TorchScript archives)"
        )
    _check_version(reader)
    byteorder = sys.byteorder
    if "byteorder" in reader:
        byteorder = reader.read("byteorder", limit=16).decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise FormatError(f"byteorder record holds {byteorder!r}, expected 'little' or 'big'",
                              record="byteorder")
    data_pkl = reader.read("data.pkl", limit=_PICKLE_LIMIT)
    materializer = ZipMaterializer(reader, device_map, byteorder=byteorder, skip_data=skip_data)
    rebuilder = Rebuilder(materializer)
    unpickler_cls = SafeUnpickler if weights_only else FullUnpickler
    result = unpickler_cls(data_pkl, rebuilder, encoding=encoding).load()
    if materializer.moved:
        moved = ", ".join(f"{saved} -> {target}" for saved, target in materializer.moved.items())
        warnings.warn(f"map_location='auto' moved storages that cannot be used here: {moved}",
                      stacklevel=3)
    stream.seek(reader.end)
    return result


def _check_version(reader: ZipReader) -> None:
    name = ".data/version" if ".data/version" in reader else "version"
    if name not in reader:
        raise FormatError("the archive has no 'version' record: it is not a torch checkpoint",
                          record="version")
    raw = reader.read(name, limit=32).strip()
    try:
        version = int(raw)
    except ValueError:
        raise FormatError(f"version record holds {raw[:32]!r}, expected a number", record=name) from None
    if not spec.MIN_READ_VERSION <= version <= spec.MAX_READ_VERSION:
        raise FormatError(
            f"the archive has format version {version}; nbckpt reads versions "
            f"{spec.MIN_READ_VERSION} to {spec.MAX_READ_VERSION}",
            record=name,
        )

