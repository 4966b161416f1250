"""The readers of torch's legacy formats: the pre-1.6 stream and the 0.1–0.3 tar.

The byte layout is in :mod:`nbckpt.format.legacy`; the parsing (shared with
:func:`nbckpt.load`) in :mod:`nbckpt.formats.legacy_parse`. Opening indexes the file
once: the pickles are read, and of each storage only its 8-byte size header,
seeking over the data, so listing costs O(storages) small reads. Nothing is
placed on a device while listing: records saved on ``cuda:N`` list with no GPU.
"""

from __future__ import annotations

import mmap as mmap_module
from typing import Any

from . import legacy_parse
from ..devices import DeviceMap
from ..errors import CheckpointError, FormatError
from ..materialize import RangeSource
from ..pickling import scan
from .base import FormatInfo, LoadOptions
from .recording import RecordingMaterializer

__all__ = ["LegacyStreamReader", "LegacyTarReader"]


class LegacyStreamReader:
    """A pre-1.6 stream checkpoint: see :class:`nbckpt.formats.base.Reader`."""

    format = "legacy"
    description = "legacy stream (torch < 1.6)"
    byteorder = "little"  # the format is little-endian whatever wrote it

    def __init__(self, target: Any, *, weights_only: bool = True) -> None:
        self._target = target
        self._stream = target.stream
        self.source = target.source
        self._weights_only = weights_only
        self._start = self._stream.tell()
        self._tree: Any = None
        self._recorder: RecordingMaterializer | None = None
        self._end: int | None = None
        self._mapped: dict[int, mmap_module.mmap] = {}

    def _parse(self, stream: Any, device_map: DeviceMap, **options: Any) -> Any:
        return legacy_parse.load_stream(stream, device_map, **options)

    def tree(self) -> Any:
        if self._tree is None:
            recorder = RecordingMaterializer()
            self._stream.seek(self._start)
            self._tree = self._parse(self._stream, DeviceMap.parse("cpu"), weights_only=self._weights_only,
                                     encoding="utf-8", recorder=recorder)
            self._recorder, self._end = recorder, self._stream.tell()
        return self._tree

    def storages(self, *, mmap_access: int | None = None) -> RangeSource:
        self.tree()
        mapped = None
        if mmap_access is not None:
            if mmap_access not in self._mapped:
                self._mapped[mmap_access] = mmap_module.mmap(self._stream.fileno(), 0, access=mmap_access)
            mapped = self._mapped[mmap_access]
        return RangeSource(self._stream, self._recorder.ranges, mapped=mapped)  # type: ignore[union-attr]

    def load(self, device_map: DeviceMap, options: LoadOptions) -> Any:
        if options.mmap_access is not None:
            raise FormatError(
                "mmap can only be used with zip checkpoints (torch >= 1.6, the default format); "
                "this file is in torch's legacy format. Load it without mmap, or save it again "
                "with nbckpt.save to get a zip checkpoint."
            )
        self._stream.seek(self._start)
        return self._parse(self._stream, device_map, weights_only=options.weights_only,
                           encoding=options.encoding, skip_data=options.skip_data)

    def info(self) -> FormatInfo:
        self.tree()
        recorder = self._recorder
        pickles = self.pickles()
        return FormatInfo(
            format=self.format,
            description=self.description,
            byteorder="little",
            storages=len(recorder.ranges),  # type: ignore[union-attr]
            array_bytes=sum(n for _, n in recorder.ranges.values()),  # type: ignore[union-attr]
            file_bytes=(self._end or 0) - self._start,
            pickle_bytes=sum(len(p) for p in pickles),
            globals=tuple(_scan_all(pickles)),
        )

    def verify(self, report: Any, progress: bool | None) -> None:
        from ..verify import Problem

        report.notes.append("legacy formats carry no checksums: structure, sizes and views were checked")
        here = self._stream.tell()
        try:
            self._stream.seek(self._start)
            self._parse(self._stream, DeviceMap.parse("cpu"), weights_only=True, encoding="utf-8",
                        skip_data=True)
            report.records_checked = 1
        except CheckpointError as err:
            report.problems.append(Problem(getattr(err, "record", None) or self.description, str(err)))
        finally:
            self._stream.seek(here)

    def pickles(self) -> list[bytes]:
        self._stream.seek(self._start)
        return legacy_parse.stream_pickles(self._stream)

    def close(self) -> None:
        self._target.close()


class LegacyTarReader(LegacyStreamReader):
    """A torch 0.1–0.3 tar checkpoint: see :class:`nbckpt.formats.base.Reader`."""

    format = "tar"
    description = "legacy tar (torch 0.1 to 0.3)"

    def _parse(self, stream: Any, device_map: DeviceMap, **options: Any) -> Any:
        return legacy_parse.load_tar(stream, device_map, **options)

    def pickles(self) -> list[bytes]:
        self._stream.seek(self._start)
        return legacy_parse.tar_pickles(self._stream)


def _scan_all(pickles: list[bytes]) -> list[scan.GlobalRef]:
    found: dict[str, scan.GlobalRef] = {}
    for data in pickles:
        for ref in scan.scan_pickle(data):
            found.setdefault(ref.name, ref)
    return list(found.values())
