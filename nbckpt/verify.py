"""Check a checkpoint's integrity and report every problem found, without loading it.

``nbckpt.verify(f)`` checks, for a zip checkpoint: the zip structure (directory,
local headers, no overlaps), every record's CRC-32 and size, that ``data.pkl``
is a pickle the safe loader accepts, that every storage it names exists with the
declared size, and that every array view lies inside its storage. For the
legacy formats (which carry no checksums) it checks the structure, the storage
sizes and every view; for safetensors the header, sizes and offsets; for
``.npz`` every member's CRC-32; for a sharded checkpoint each shard (a missing
shard is a problem). Array data is read once, in chunks, to compute the CRCs.
Each format's reader does its own checks (:meth:`nbckpt.formats.base.Reader.verify`).

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

from .errors import CheckpointError
from .io.sources import open_source
from .text import escape

__all__ = ["Problem", "VerifyReport", "verify"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where, what was expected, what was found."""

    record: str
    message: str
    expected: Any = None
    found: Any = None

    def __str__(self) -> str:
        # Errors of a reader often name their record already (".metadata holds ..."): once is enough.
        if self.message.startswith(f"{self.record} ") or self.message.startswith(f"{self.record}:"):
            return self.message
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
        # One line each: a problem's text may quote names from the file (a shard, a record),
        # whose newlines must not start lines of their own.
        lines = ([escape(head)] + [f"  problem: {escape(str(p))}" for p in self.problems]
                 + [f"  note: {escape(n)}" for n in self.notes])
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(str(p))}</li>" for p in self.problems)
        notes = "".join(f"<li><i>{html.escape(n)}</i></li>" for n in self.notes)
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return (f"<b>{html.escape(self.source)}</b>: {html.escape(self.format)} checkpoint, "
                f"{self.records_checked} records checked: <b>{status}</b><ul>{items}{notes}</ul>")


def verify(f: Any, *, storage_options: dict | None = None, progress: bool | None = None) -> VerifyReport:
    """Check the checkpoint at ``f`` (path, folder, URL or seekable file object); see the module doc.

    Every format nbckpt reads is checked by its reader
    (:meth:`nbckpt.formats.base.Reader.verify`). ``storage_options`` go to
    fsspec for URLs. ``progress`` shows a progress bar while the records'
    CRC-32s are computed (``None``: only for large files).
    """
    from .formats.sniff import open_reader
    from .formats.torch_zip import verify_zip

    source = str(f) if not hasattr(f, "read") else f"<{type(f).__qualname__}>"
    report = VerifyReport(source)
    if _is_zip(f, storage_options):
        # A zip's CRCs are checked even when its records cannot be opened as a checkpoint.
        report.format = "zip"
        with open_source(f, storage_options) as (stream, _path):
            start = stream.tell()
            verify_zip(stream, report, progress)
            if report.ok:
                after = stream.tell()
                stream.seek(start)
                try:
                    zip_reader = open_reader(stream)
                    _check_listing(zip_reader, report)
                    zip_reader.close()
                except CheckpointError:
                    pass
                stream.seek(after)
        return report
    try:
        reader = open_reader(f, storage_options=storage_options)
    except CheckpointError as err:
        report.problems.append(Problem(getattr(err, "record", None) or "file", str(err)))
        return report
    try:
        report.format = REPORT_FORMATS.get(reader.format, reader.format)
        reader.verify(report, progress)
        if report.ok:
            _check_listing(reader, report)
    finally:
        reader.close()
    return report


def _check_listing(reader: Any, report: VerifyReport) -> None:
    """Run the listing (``open``'s reading of the file); note each location a default ``load``
    cannot place here (``xla:0``; ``cuda`` without a GPU).

    For those the file is fine (verify checks the file, and its answer must not change with the
    machine), but ``load`` with the default ``map_location`` would refuse it here: an
    OK that says nothing of it would read as "load succeeds".
    """
    from .backends import backend_for
    from .devices import canonical_tag
    from .formats.base import ArrayRef

    try:
        refs = [ref for ref in _leaves(reader.tree()) if isinstance(ref, ArrayRef)]
    except CheckpointError as err:
        # The listing (open) refuses what the format's own checks let through (a legacy
        # file's location that is no device tag: its eager check maps everything to the
        # host): a file open refuses is not OK.
        report.problems.append(Problem(getattr(err, "record", None) or "pickle", str(err)))
        return
    for location in sorted({ref.storage.location for ref in refs} - {"cpu", "meta", "missing"}):
        try:
            backend_for(canonical_tag(location), saved_as=location)
        except CheckpointError as err:
            report.notes.append(f"the file is sound, but a load with the default map_location would fail "
                                f"here: {err}")


def _leaves(tree: Any) -> list:
    """The leaves of ``tree``'s dicts, lists and tuples (each container once)."""
    leaves, stack, seen = [], [tree], set()
    while stack:
        item = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(dict.values(item) if isinstance(item, dict) else item)
        else:
            leaves.append(item)
    return leaves


#: How reports name the formats whose reader names are short.
REPORT_FORMATS = {"legacy": "legacy stream", "tar": "legacy tar"}


def _is_zip(f: Any, storage_options: dict | None) -> bool:
    from .formats.sniff import sniff

    try:
        return sniff(f, storage_options=storage_options) == "zip"
    except CheckpointError:
        return False
