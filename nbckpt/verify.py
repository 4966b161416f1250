"""Check a checkpoint's integrity and report every problem found, without loading it.

``nbckpt.verify(f)`` checks, for a zip checkpoint: the zip structure (directory,
local headers, no overlaps), every record's CRC-32 and size, that ``data.pkl``
is a pickle the safe loader accepts, that every storage it names exists with the
declared size, and that every array view lies inside its storage. For the
legacy formats (which carry no checksums) it checks the structure, the storage
sizes and every view. Array data is read once, in chunks, to compute the CRCs.

    >>> import io, numpy as np, nbckpt
    >>> buf = io.BytesIO()
    >>> nbckpt.save({"w": np.ones(4)}, buf)
    >>> report = nbckpt.verify(io.BytesIO(buf.getvalue()))
    >>> report.ok, report.records_checked
    (True, 7)
    >>> data = bytearray(buf.getvalue()); data[data.find(b"\\x00\\x00\\xf0?")] ^= 1
    >>> report = nbckpt.verify(io.BytesIO(bytes(data)))
    >>> report.ok, report.problems[0].record
    (False, 'data/0')
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from .devices import DeviceMap
from .errors import CheckpointError
from .format import legacy as legacy_format
from .format import spec
from .format.checkpoint import open_zip_checkpoint
from .format.container import ZipReader
from .progress import progress_bar
from .sources import open_source

__all__ = ["Problem", "VerifyReport", "verify"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where, what was expected, what was found."""

    record: str
    message: str
    expected: Any = None
    found: Any = None

    def __str__(self) -> str:
        return f"{self.record}: {self.message}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`; ``ok`` when no problem was found."""

    source: str
    format: str = "unknown"
    records_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.source}: {self.format} checkpoint, {self.records_checked} records checked, "
        head += "no problems" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [head] + [f"  problem: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(str(p))}</li>" for p in self.problems)
        notes = "".join(f"<li><i>{html.escape(n)}</i></li>" for n in self.notes)
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return (f"<b>{html.escape(self.source)}</b>: {html.escape(self.format)} checkpoint, "
                f"{self.records_checked} records checked: <b>{status}</b><ul>{items}{notes}</ul>")


def verify(f: Any, *, storage_options: dict | None = None, progress: bool | None = None) -> VerifyReport:
    """Check the checkpoint at ``f`` (path, URL or seekable file object); see the module doc.

    ``storage_options`` go to fsspec for URLs. ``progress`` shows a progress bar
    while the records' CRC-32s are computed (``None``: only for large files).
    """
    from . import archive, legacy_loader  # the loaders sit above this module's imports

    source = str(f) if not hasattr(f, "read") else f"<{type(f).__qualname__}>"
    report = VerifyReport(source)
    with open_source(f, storage_options) as (stream, _path):
        start = stream.tell()
        magic = stream.read(4)
        stream.seek(start)
        if magic == spec.LOCAL_MAGIC:
            report.format = "zip"
            _verify_zip(stream, report, archive, progress)
        elif legacy_format.is_tar(stream):
            report.format = "legacy tar"
            _verify_legacy(lambda: legacy_loader.load_tar(stream, DeviceMap.parse("cpu"),
                                                          weights_only=True, encoding="utf-8"), report)
        else:
            report.format = "legacy stream"
            _verify_legacy(lambda: legacy_loader.load_stream(stream, DeviceMap.parse("cpu"), weights_only=True,
                                                             encoding="utf-8", skip_data=True), report)
    return report


def _verify_zip(stream, report: VerifyReport, archive_module: Any, progress: bool | None = False) -> None:
    start = stream.tell()
    try:
        reader = ZipReader(stream)  # the zip structure first: every CRC is checked even if
    except CheckpointError as err:  # the records' contents turn out to be wrong
        report.problems.append(Problem(getattr(err, "record", None) or "archive", str(err)))
        return
    unchecked = []
    bar = progress_bar(sum(reader.entry(name).size for name in reader.names()), "verifying", progress)
    try:
        crcs = {}
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
    stream.seek(start)
    try:
        with archive_module.Archive(stream) as opened:  # pickle, storages and every view checked
            referenced = {r.storage for r in opened.records if r.storage}
    except CheckpointError as err:
        report.problems.append(Problem(getattr(err, "record", None) or "data.pkl", str(err)))
        return
    unused = sorted(set(checkpoint.storage_keys) - referenced)
    if unused:
        report.notes.append(f"storage records no array uses (stored on their own or unused): {', '.join(unused[:5])}")
    stream.seek(reader.end)


def _verify_legacy(load: Any, report: VerifyReport) -> None:
    report.notes.append("legacy formats carry no checksums: structure, sizes and views were checked")
    try:
        load()
        report.records_checked = 1
    except CheckpointError as err:
        report.problems.append(Problem(getattr(err, "record", None) or "legacy stream", str(err)))
