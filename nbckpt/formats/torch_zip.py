"""The reader of torch's zip checkpoints (torch >= 1.6, and what nbckpt.save writes).

The byte-level format is specified in :mod:`nbckpt.format.spec`; opening
reads the zip directory and the small records (:mod:`nbckpt.format.checkpoint`)
and never a storage byte. TorchScript archives are refused there.
"""

from __future__ import annotations

import mmap as mmap_module
from typing import Any

from ..devices import DeviceMap
from ..errors import CheckpointError
from ..format.checkpoint import open_zip_checkpoint
from ..format.container import ZipReader
from ..format.crc import crc32
from ..materialize import StorageMaterializer, ZipSource
from ..pickling import scan
from ..pickling.rebuild import Rebuilder
from ..pickling.run import run_unpickler
from ..pickling.unpickler import FullUnpickler, SafeUnpickler
from ..progress import SILENT, progress_bar
from .base import FormatInfo, LoadOptions
from .recording import RecordingMaterializer

__all__ = ["TorchZipReader", "verify_zip"]


class RecordSizes:
    """``size_of`` for :class:`RecordingMaterializer`: the bytes of record ``data/<key>``
    (FormatError when it is missing); ``many(keys)`` gives the list for many keys at once,
    or None when one is missing (the caller then asks key by key, which reports it)."""

    __slots__ = ("_reader",)

    def __init__(self, reader: ZipReader) -> None:
        self._reader = reader

    def __call__(self, key: str) -> int:
        return self._reader.size("data/" + key)

    def many(self, keys: tuple) -> list[int] | None:
        return self._reader.sizes(list(map("data/".__add__, keys)))


class TorchZipReader:
    """A torch zip checkpoint: see :class:`nbckpt.formats.base.Reader`."""

    format = "zip"

    def __init__(self, target: Any, *, weights_only: bool = True) -> None:
        self._target = target
        self._stream = target.stream
        self.source = target.source
        self._weights_only = weights_only
        self._checkpoint = open_zip_checkpoint(self._stream)
        self.byteorder = self._checkpoint.byteorder
        self._tree: Any = None
        self._mapped: dict[int, mmap_module.mmap] = {}

    def tree(self) -> Any:
        if self._tree is None:
            reader = self._checkpoint.reader
            recorder = Rebuilder(RecordingMaterializer(RecordSizes(reader)))
            # run_unpickler: the fast path for flat dicts of tensors (H3, issue 16), else the VM.
            try:
                self._tree = run_unpickler(self._checkpoint.data_pkl, recorder, weights_only=self._weights_only)
            finally:
                recorder.close()
        return self._tree

    def storages(self, *, mmap_access: int | None = None) -> ZipSource:
        # One array at a time: read exactly its storage, nothing around it.
        return ZipSource(self._checkpoint.reader, mapped=self._map(mmap_access), read_ahead=False)

    def _map(self, access: int | None) -> mmap_module.mmap | None:
        if access is None:
            return None
        if access not in self._mapped:
            self._mapped[access] = mmap_module.mmap(self._stream.fileno(), 0, access=access)
        return self._mapped[access]

    def load(self, device_map: DeviceMap, options: LoadOptions) -> Any:
        checkpoint = self._checkpoint
        if options.verify:
            checkpoint.reader.check_crc("data.pkl", crc32(checkpoint.data_pkl))
        skip = options.skip_data or options.mmap_access is not None
        bar = progress_bar(0 if skip else checkpoint.storage_bytes, "loading", options.progress)
        try:
            # Our own file handle may read small records with their headers in one go; a
            # caller's file object gets exact readinto() calls.
            source = ZipSource(checkpoint.reader, mapped=self._map(options.mmap_access),
                               skip_data=options.skip_data, verify=options.verify,
                               on_read=None if bar is SILENT else bar.update,
                               read_ahead=self._target.owned)
            materializer = StorageMaterializer(source, device_map, byteorder=checkpoint.byteorder,
                                               skip_data=options.skip_data)
            rebuilder = Rebuilder(materializer)
            try:
                result = run_unpickler(checkpoint.data_pkl, rebuilder, weights_only=options.weights_only,
                                       encoding=options.encoding, materializer=materializer)
            finally:
                rebuilder.close()  # frees the storages it holds now, not at the next cyclic collection
        finally:
            bar.close()
        self._stream.seek(checkpoint.reader.end)
        return result

    def info(self) -> FormatInfo:
        checkpoint = self._checkpoint
        reader = checkpoint.reader
        keys = checkpoint.storage_keys
        return FormatInfo(
            format="zip",
            description=f"zip (torch >= 1.6), version {checkpoint.version}",
            byteorder=checkpoint.byteorder,
            byteorder_recorded=checkpoint.byteorder_recorded,
            version=checkpoint.version,
            prefix=reader.prefix,
            storages=len(keys),
            array_bytes=sum(reader.size("data/" + k) for k in keys),
            file_bytes=reader.end - reader.start,
            pickle_bytes=len(checkpoint.data_pkl),
            globals=tuple(scan.scan_pickle(checkpoint.data_pkl)),
        )

    def verify(self, report: Any, progress: bool | None) -> None:
        here = self._stream.tell()
        self._stream.seek(self._checkpoint.reader.start)
        try:
            verify_zip(self._stream, report, progress, weights_only=self._weights_only)
        finally:
            self._stream.seek(here)

    def pickles(self) -> list[bytes]:
        self._stream.seek(self._checkpoint.reader.end)
        return [self._checkpoint.data_pkl]

    def close(self) -> None:
        self._target.close()


def verify_zip(stream: Any, report: Any, progress: bool | None = False, *, weights_only: bool = True) -> None:
    """Check a zip checkpoint at ``stream``'s position: every CRC, then the pickle and views.

    Problems go to ``report`` (a :class:`nbckpt.verify.VerifyReport`); the zip
    structure is checked first, so every CRC is checked even when the records'
    contents turn out to be wrong.
    """
    from ..verify import Problem

    start = stream.tell()
    try:
        reader = ZipReader(stream)
    except CheckpointError as err:
        report.problems.append(Problem(getattr(err, "record", None) or "archive", str(err)))
        return
    unchecked = []
    bar = progress_bar(sum(reader.entry(name).size for name in reader.names()), "verifying", progress)
    try:
        crcs: dict[str, Any] = {}
        for name in reader.names():
            try:
                crcs[name] = reader.crc32(name)
            except CheckpointError as err:
                crcs[name] = err
            bar.update(reader.entry(name).size)
    finally:
        bar.close()
    for name in reader.names():
        report.records_checked += 1
        entry = reader.entry(name)
        crc = crcs[name]
        if isinstance(crc, CheckpointError):
            report.problems.append(Problem(name, str(crc)))
            continue
        if entry.crc32 == 0 and entry.size:
            unchecked.append(name)
        elif crc != entry.crc32:
            report.problems.append(Problem(name, f"CRC-32 mismatch: expected {entry.crc32:#010x}, "
                                                 f"found {crc:#010x}", entry.crc32, crc))
    if unchecked:
        report.notes.append(f"{len(unchecked)} record(s) carry no CRC-32 (saved with CRCs off): "
                            f"{', '.join(unchecked[:5])}{'...' if len(unchecked) > 5 else ''}")
    stream.seek(start)
    try:
        checkpoint = open_zip_checkpoint(stream)
    except CheckpointError as err:
        report.problems.append(Problem(getattr(err, "record", None) or "archive", str(err)))
        return
    try:  # the pickle, every storage it names and every view are checked
        reader_of_checkpoint = checkpoint.reader
        unpickler = SafeUnpickler if weights_only else FullUnpickler
        recorder = RecordingMaterializer(lambda key: reader_of_checkpoint.entry(f"data/{key}").size)
        unpickler(checkpoint.data_pkl, Rebuilder(recorder)).load()
    except CheckpointError as err:
        report.problems.append(Problem(getattr(err, "record", None) or "data.pkl", str(err)))
        return
    unused = sorted(set(checkpoint.storage_keys) - set(recorder.storages))
    if unused:
        report.notes.append(f"storage records no array uses (stored on their own or unused): {', '.join(unused[:5])}")
    stream.seek(reader.end)
