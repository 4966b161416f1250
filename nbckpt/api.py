"""``save`` and ``load``: orchestration of the format, pickling and device layers."""

from __future__ import annotations

import os
import sys
from typing import Any

from .devices import DeviceMap
from .format import spec
from .format import legacy as legacy_format
from .format.container import ZipWriter
from .formats.base import LoadOptions
from .formats.options import check_mmap_source, mmap_access
from .formats.sniff import open_reader, sniff_folder_format
from .pickling.run import gc_paused
from .pickling.scan import GlobalRef, scan_pickle
from .pickling.writer import CheckpointPickler, SavePlan, skipped_data
from .progress import progress_bar
from .io.sources import archive_prefix, atomic_write, check_storage_options, check_writable, is_path

__all__ = ["save", "load", "scan"]



def save(obj: Any, f: Any, *, format: str = "zip", progress: bool | None = None,
         storage_options: dict | None = None, durable: bool = True, skip_data: bool = False) -> None:
    """Save ``obj`` to ``f`` in torch's checkpoint format (torch.load reads it).

    ``f`` is a path (written atomically: a failed save leaves any previous file
    untouched), a URL (``s3://bucket/model.pt``: written to a local temporary
    file, then uploaded in one operation; on S3, GCS and Azure the object appears
    whole or not at all, see :mod:`nbckpt.io.remote`; ``storage_options`` go to
    fsspec) or a binary file object (only ``write`` and ``flush`` are used).
    ``obj`` may nest dicts, OrderedDicts, lists, tuples, namedtuples and sets of
    NumPy arrays and scalars, str, bytes, bytearray, int, float, complex, bool
    and None. Arrays that view one buffer are stored once and view one buffer
    again when loaded. ``format="legacy"`` writes torch's pre-1.6 stream format
    instead of the zip archive (torch still reads it); ``format="dcp"`` writes a
    torch.distributed.checkpoint folder at ``f``, Dask arrays in parallel (see
    :mod:`nbckpt.formats.dcp_write`). ``progress`` shows a
    progress bar: ``None`` only for large saves, ``True`` always, ``False`` never.
    A save to a path is also durable: the file and its folder are fsynced, so
    the new checkpoint survives a power loss. ``durable=False`` skips that (the
    save stays atomic against crashes of the process) for scratch files, where
    speed matters more. ``skip_data=True`` writes the whole structure and
    reserves each storage's bytes as zeros without reading any array (as
    torch's ``skip_data`` context does); the data can be written into the
    records later (see the README).

        >>> import io, numpy as np, nbckpt
        >>> buf = io.BytesIO()
        >>> w = np.arange(6, dtype=np.float32).reshape(2, 3)
        >>> nbckpt.save({"w": w, "wT": w.T, "step": 3}, buf)
        >>> _ = buf.seek(0)
        >>> out = nbckpt.load(buf)
        >>> np.shares_memory(out["w"], out["wT"]), out["step"]
        (True, 3)
    """
    if format == "dcp":  # a torch.distributed.checkpoint folder (Dask arrays written in parallel)
        from .formats.dcp_write import save_dcp
        return save_dcp(obj, f, durable=durable, progress=progress, storage_options=storage_options,
                        skip_data=skip_data)
    if format not in ("zip", "legacy"):
        raise ValueError(f"format must be 'zip' (torch >= 1.6), 'legacy' (torch < 1.6) or 'dcp' "
                         f"(a torch.distributed.checkpoint folder), got {format!r}")
    if skip_data and format == "legacy":
        raise ValueError("skip_data=True needs format='zip': the legacy format has no records to fill in later")
    check_storage_options(f, storage_options)
    write = None if is_path(f) else check_writable(f)
    with gc_paused():  # thousands of small objects, all kept: see nbckpt.pickling.run.gc_paused
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
            _write_zip(write_to, archive_prefix(f), data_pkl, pickler.storages, bar, skip_data=skip_data)
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


def _write_zip(write, prefix: str, data_pkl: bytes, storages, bar, *, skip_data: bool = False) -> None:
    writer = ZipWriter(write, prefix)
    writer.write_record("data.pkl", data_pkl)
    writer.write_record(".format_version", b"1")
    writer.write_record(".storage_alignment", b"%d" % spec.ALIGNMENT)
    writer.write_record("byteorder", sys.byteorder.encode("ascii"))
    for storage in storages:
        # Device storages are copied to the host here, one at a time.
        if skip_data:  # zeros with CRC 0, as torch's write_record_metadata
            writer.write_record(f"data/{storage.key}", skipped_data(storage.nbytes), crc32=0)
        else:
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
    options = LoadOptions(weights_only=weights_only, encoding=encoding, skip_data=skip_data,
                          mmap_access=access, verify=verify, progress=progress)
    reader = open_reader(f, weights_only=weights_only, storage_options=storage_options)
    try:
        return reader.load(device_map, options)
    finally:
        reader.close()


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
    found: dict[str, GlobalRef] = {}
    if is_path(f) and sniff_folder_format(f) == "dcp":
        # A DCP folder's .metadata is itself a pickle: scanned (not run) even where the
        # reader would refuse it, so a refused global there is reported, not raised.
        from .formats.dcp import scan_folder

        refs = scan_folder(os.fsdecode(f))
    else:
        reader = open_reader(f, storage_options=storage_options)
        try:
            pickles = reader.pickles()
        finally:
            reader.close()
        refs = [ref for data in pickles for ref in scan_pickle(data)]
    for ref in refs:
        found.setdefault(ref.name, ref)
    return list(found.values())
