"""``save`` and ``load``: orchestration of the format, pickling and device layers."""

from __future__ import annotations

import contextlib
import mmap as mmap_module
import sys
from typing import Any

from .devices import DeviceMap
from .errors import FormatError
from .format import spec
from .format.checkpoint import open_zip_checkpoint
from .format import legacy as legacy_format
from .format.container import ZipWriter
from . import legacy_loader
from .materialize import ZipMaterializer, ZipSource
from .pickling.rebuild import Rebuilder
from .pickling.run import run_unpickler
from .pickling.scan import GlobalRef, scan_pickle
from .pickling.writer import CheckpointPickler, SavePlan
from .progress import SILENT, progress_bar
from .sources import archive_prefix, atomic_write, check_storage_options, check_writable, is_path, is_url, open_source

__all__ = ["save", "load", "scan"]



def save(obj: Any, f: Any, *, format: str = "zip", progress: bool | None = None,
         storage_options: dict | None = None, durable: bool = True) -> None:
    """Save ``obj`` to ``f`` in torch's checkpoint format (torch.load reads it).

    ``f`` is a path (written atomically: a failed save leaves any previous file
    untouched), a URL (``s3://bucket/model.pt``: written to a local temporary
    file, then uploaded in one operation; on S3, GCS and Azure the object appears
    whole or not at all, see :mod:`nbckpt.remote`; ``storage_options`` go to
    fsspec) or a binary file object (only ``write`` and ``flush`` are used).
    ``obj`` may nest dicts, OrderedDicts, lists, tuples, namedtuples and sets of
    NumPy arrays and scalars, str, bytes, bytearray, int, float, complex, bool
    and None. Arrays that view one buffer are stored once and view one buffer
    again when loaded. ``format="legacy"`` writes torch's pre-1.6 stream format
    instead of the zip archive (torch still reads it). ``progress`` shows a
    progress bar: ``None`` only for large saves, ``True`` always, ``False`` never.
    A save to a path is also durable: the file and its folder are fsynced, so
    the new checkpoint survives a power loss. ``durable=False`` skips that (the
    save stays atomic against crashes of the process) for scratch files, where
    speed matters more.

        >>> import io, numpy as np, nbckpt
        >>> buf = io.BytesIO()
        >>> w = np.arange(6, dtype=np.float32).reshape(2, 3)
        >>> nbckpt.save({"w": w, "wT": w.T, "step": 3}, buf)
        >>> _ = buf.seek(0)
        >>> out = nbckpt.load(buf)
        >>> np.shares_memory(out["w"], out["wT"]), out["step"]
        (True, 3)
    """
    if format not in ("zip", "legacy"):
        raise ValueError(f"format must be 'zip' (torch >= 1.6) or 'legacy' (torch < 1.6), got {format!r}")
    check_storage_options(f, storage_options)
    write = None if is_path(f) else check_writable(f)
    plan = SavePlan.build(obj)  # every check happens before the first byte is written
    pickler = CheckpointPickler(plan, legacy=format == "legacy")
    data_pkl = pickler.dumps(obj)
    bar = progress_bar(sum(s.nbytes for s in pickler.storages), "saving", progress)
    if format == "legacy":
        def emit(write_to):
            legacy_format.write_stream(write_to, data_pkl, pickler.storages)
            bar.update(sum(s.nbytes for s in pickler.storages))
    else:
        def emit(write_to):
            _write_zip(write_to, archive_prefix(f), data_pkl, pickler.storages, bar)
    try:
        if write is None:
            with atomic_write(f, storage_options=storage_options, progress=progress, durable=durable) as handle:
                emit(handle.write)
            return
        emit(write)
    finally:
        bar.close()
    flush = getattr(f, "flush", None)
    if callable(flush):
        flush()


def _write_zip(write, prefix: str, data_pkl: bytes, storages, bar) -> None:
    writer = ZipWriter(write, prefix)
    writer.write_record("data.pkl", data_pkl)
    writer.write_record(".format_version", b"1")
    writer.write_record(".storage_alignment", b"%d" % spec.ALIGNMENT)
    writer.write_record("byteorder", sys.byteorder.encode("ascii"))
    for storage in storages:
        # Device storages are copied to the host here, one at a time.
        writer.write_record(f"data/{storage.key}", storage.host_bytes())
        bar.update(storage.nbytes)
    writer.close()


def load(
    f: Any,
    map_location: Any = None,
    *,
    weights_only: bool = True,
    mmap: bool | str = False,
    skip_data: bool = False,
    encoding: str = "utf-8",
    verify: bool = False,
    progress: bool | None = None,
    storage_options: dict | None = None,
) -> Any:
    """Load a checkpoint written by ``torch.save`` or :func:`nbckpt.save`.

    Tensors come back as NumPy arrays (CuPy arrays on ``cuda`` devices), views
    sharing memory where the tensors shared storage. ``f`` is a path, a URL
    (``s3://``, ``https://``... through fsspec, with ``storage_options``) or a
    seekable binary file object; loading starts at its current position and
    leaves it just after the checkpoint.

    With ``weights_only=True`` (the default) no code from the file runs: only
    nbckpt's allowlist and :func:`nbckpt.add_safe_globals` are used, and any
    other global raises :class:`nbckpt.UnpicklingError` naming it.
    ``weights_only=False`` runs the file's pickle: only for trusted files.

    ``map_location`` places storages (see :mod:`nbckpt.devices`). ``mmap=True``
    (or ``"r"``) maps host arrays read-only from the file, ``"c"``
    copy-on-write (writable; the file never changes); it needs a local path.
    ``skip_data=True`` builds every array with its shape and dtype but reads no
    storage byte (the values are undefined). ``verify=True`` checks every zip
    record's CRC-32 as it is read (a corrupt record raises FormatError); torch
    never checks them. ``progress`` shows a progress bar (``None``: only for
    large files).

        >>> import io, numpy as np, nbckpt
        >>> buf = io.BytesIO()
        >>> nbckpt.save([np.ones(2, np.float16), "text"], buf)
        >>> _ = buf.seek(0)
        >>> nbckpt.load(buf)
        [array([1., 1.], dtype=float16), 'text']
    """
    device_map = DeviceMap.parse(map_location)
    access = mmap_access(mmap)
    check_mmap_source(f, access)
    with open_source(f, storage_options) as (stream, _path):
        start = stream.tell()
        magic = stream.read(4)
        stream.seek(start)
        if magic == spec.LOCAL_MAGIC:
            checkpoint = open_zip_checkpoint(stream, verify=verify)
            total = 0 if skip_data or access is not None else checkpoint.storage_bytes
            bar = progress_bar(total, "loading", progress)
            try:
                with map_file(stream, access) as mapped:
                    # Our own file handle may read small records with their headers in one
                    # go; a caller's file object gets exact readinto() calls.
                    source = ZipSource(checkpoint.reader, mapped=mapped, skip_data=skip_data, verify=verify,
                                       on_read=None if bar is SILENT else bar.update,
                                       read_ahead=_path is not None)
                    materializer = ZipMaterializer(source, device_map, byteorder=checkpoint.byteorder,
                                                   skip_data=skip_data)
                    result = unpickle(checkpoint.data_pkl, materializer, weights_only=weights_only,
                                      encoding=encoding)
            finally:
                bar.close()
            stream.seek(checkpoint.reader.end)
            return result
        if not magic:
            raise FormatError("the file is empty (or the stream is at its end): there is no checkpoint to load")
        if access is not None:
            raise ValueError(
                "mmap can only be used with zip checkpoints (torch >= 1.6, the default format); "
                "this file is in torch's legacy format. Load it without mmap, or save it again "
                "with nbckpt.save to get a zip checkpoint."
            )
        if legacy_format.is_tar(stream):
            return legacy_loader.load_tar(stream, device_map, weights_only=weights_only, encoding=encoding,
                                          skip_data=skip_data)
        return legacy_loader.load_stream(stream, device_map, weights_only=weights_only,
                                         encoding=encoding, skip_data=skip_data)


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


def unpickle(data_pkl: bytes, materializer: Any, *, weights_only: bool, encoding: str) -> Any:
    """Run a zip checkpoint's pickle over ``materializer``."""
    return run_unpickler(data_pkl, Rebuilder(materializer), weights_only=weights_only,
                         encoding=encoding, materializer=materializer)


def mmap_access(mmap: bool | str) -> int | None:
    """The ``mmap`` module access mode for ``load(mmap=...)``, or None."""
    if mmap is False or mmap is None:
        return None
    if mmap is True or mmap == "r":
        return mmap_module.ACCESS_READ
    if mmap == "c":
        return mmap_module.ACCESS_COPY
    raise ValueError(f"mmap must be False, True, 'r' (read-only) or 'c' (copy-on-write), got {mmap!r}")


@contextlib.contextmanager
def map_file(stream, access: int | None):
    """An mmap of the whole file behind ``stream`` (or None when not asked)."""
    if access is None:
        yield None
        return
    mapped = mmap_module.mmap(stream.fileno(), 0, access=access)
    yield mapped
    # Arrays keep the mapping alive through their buffers; it closes when they go.


def scan(f: Any, *, storage_options: dict | None = None) -> list[GlobalRef]:
    """The globals a checkpoint's pickle names, each marked allowed or not; nothing runs.

    ``f`` is a path, a URL (with ``storage_options``) or a seekable file object.

    Use it to see everything a ``weights_only`` load would refuse, at once:

        >>> import io, collections, nbckpt
        >>> buf = io.BytesIO()
        >>> nbckpt.save(collections.OrderedDict(a=1), buf)
        >>> _ = buf.seek(0)
        >>> [(g.name, g.allowed) for g in nbckpt.scan(buf)]
        [('collections.OrderedDict', True)]
    """
    with open_source(f, storage_options) as (stream, _path):
        start = stream.tell()
        magic = stream.read(4)
        stream.seek(start)
        if magic == spec.LOCAL_MAGIC:
            checkpoint = open_zip_checkpoint(stream)
            pickles = [checkpoint.data_pkl]
            stream.seek(checkpoint.reader.end)
        elif legacy_format.is_tar(stream):
            pickles = legacy_loader.tar_pickles(stream)
        else:
            pickles = legacy_loader.stream_pickles(stream)
    found: dict[str, GlobalRef] = {}
    for data in pickles:
        for ref in scan_pickle(data):
            found.setdefault(ref.name, ref)
    return list(found.values())
