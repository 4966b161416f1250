"""The zip directory read in bulk (NumPy, one pass) against the entry-by-entry reading.

:class:`nbckpt.format.container.ZipReader` reads a directory of 64 entries or
more with :func:`~nbckpt.format.container._bulk_directory`, which either gives
exactly what the entry-by-entry loop gives or declines (None), and the loop
then reports the problem. Checked here on clean archives, on hand-made hostile
directories and on random byte changes: the outcome (names, entries, or the
error message) is the same with the bulk reading on and off.
"""

from __future__ import annotations

import io
import random

import pytest

from nbckpt.errors import FormatError
from nbckpt.format import container, spec
from nbckpt.format.container import ZipReader, ZipWriter


def _archive(count: int = 100) -> bytes:
    buf = io.BytesIO()
    writer = ZipWriter(buf.write, "archive")
    for i in range(count):
        writer.write_record(f"data/{i}", bytes(range(i % 50)))
    writer.close()
    return buf.getvalue()


def _outcome(data: bytes) -> tuple:
    try:
        reader = ZipReader(io.BytesIO(data))
    except FormatError as err:
        return ("error", str(err))
    names = reader.names()
    return ("ok", reader.prefix, names, [reader.entry(name) for name in names],
            [reader.read(name) for name in names[:3]])


def _both(data: bytes, monkeypatch) -> tuple:
    """(bulk reading on, off): the two outcomes."""
    with_bulk = _outcome(data)
    with monkeypatch.context() as m:
        m.setattr(container, "_bulk_directory", lambda *args: None)
        without = _outcome(data)
    return with_bulk, without


def _central_entries(data: bytes) -> list[int]:
    """Where each central-directory entry starts in ``data``."""
    eocd = data.rindex(spec.EOCD_MAGIC)
    _, _, _, _, count, _, cd_offset, _ = spec.EOCD.unpack_from(data, eocd)
    starts, pos = [], cd_offset
    for _ in range(count):
        starts.append(pos)
        fields = spec.CENTRAL_HEADER.unpack_from(data, pos)
        pos += spec.CENTRAL_HEADER.size + fields[10] + fields[11] + fields[12]
    return starts


def _patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def test_a_clean_directory_is_read_in_bulk_and_the_same(monkeypatch):
    data = _archive()
    calls = []
    original = container._bulk_directory

    def spy(*args):
        result = original(*args)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(container, "_bulk_directory", spy)
    with_bulk = _outcome(data)
    assert calls == [True]
    monkeypatch.setattr(container, "_bulk_directory", lambda *args: None)
    assert with_bulk == _outcome(data)
    assert with_bulk[2][:3] == ["data/0", "data/1", "data/2"] and with_bulk[4][2] == b"\x00\x01"


def test_small_directories_are_read_entry_by_entry(monkeypatch):
    calls = []
    monkeypatch.setattr(container, "_bulk_directory", lambda *args: calls.append(args) or None)
    assert _outcome(_archive(10))[0] == "ok"
    assert len(calls) == 1  # asked, and it declines under 64 entries
    assert container._bulk_directory(*calls[0]) is None


def _name_at(data: bytes, start: int) -> int:
    return start + spec.CENTRAL_HEADER.size


HOSTILE = {
    # (which entry, offset in its central header or "name", new bytes)
    "duplicate name": (8, "name", b"archive/data/7"),
    "signature inside a name": (10, "name", b"archive/PK\x01\x02/10"),
    "name not UTF-8": (12, "name", b"archive/data\xff12"),
    "NUL in a name": (12, "name", b"archive/data\x0012"),
    "name outside the folder": (40, "name", b"other00/data/40"),
    "unknown method": (20, 10, (12).to_bytes(2, "little")),
    "deflated, impossible ratio": (20, 10, (8).to_bytes(2, "little") + b"\x00" * 12 + (10**8).to_bytes(4, "little")),
    "stored sizes differ": (21, 20, (5).to_bytes(4, "little")),
    "zip64 size without its extra": (22, 24, b"\xff\xff\xff\xff"),
    "record past the directory": (23, 42, (10**9).to_bytes(4, "little")),
    "records overlap": (24, 42, None),  # the offset of the entry before
    "bad signature": (30, 0, b"PK\x01\x09"),
    "name length runs past the directory": (99, 28, (60000).to_bytes(2, "little")),
    "extra field shifts the next entry": (50, 30, (4).to_bytes(2, "little")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_directories_give_the_entry_by_entry_outcome(case, monkeypatch):
    data = _archive()
    starts = _central_entries(data)
    index, where, new = HOSTILE[case]
    start = starts[index]
    if where == "name":
        old_len = int.from_bytes(data[start + 28 : start + 30], "little")
        assert len(new) == old_len, (new, old_len)
        data = _patch(data, _name_at(data, start), new)
    else:
        if new is None:
            new = data[starts[index - 1] + 42 : starts[index - 1] + 46]
        data = _patch(data, start + where, new)
    with_bulk, without = _both(data, monkeypatch)
    assert with_bulk == without
    if case in ("signature inside a name", "extra field shifts the next entry"):
        return  # readable or not, the same either way
    expect_ok = case in ("name not UTF-8", "NUL in a name")  # read as cp437; a NUL is a character
    assert (with_bulk[0] == "ok") == expect_ok, with_bulk


def test_random_changes_to_the_directory_give_the_same_outcome(monkeypatch):
    data = _archive(80)
    starts = _central_entries(data)
    lo, hi = starts[0], len(data)
    rng = random.Random(16)
    outcomes = set()
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(lo, hi)] = rng.randrange(256)
        with_bulk, without = _both(bytes(mutated), monkeypatch)
        assert with_bulk == without
        outcomes.add(with_bulk[0])
    assert outcomes == {"ok", "error"}


def test_sizes_of_many_records_are_each_records_size():
    for bulk in (True, False):  # columns from the bulk reading and from the entry-by-entry one
        data = _archive(100 if bulk else 3)
        reader = ZipReader(io.BytesIO(data))
        names = reader.names()
        sizes = reader.sizes(names)
        assert sizes == [reader.size(name) for name in names] == [reader.entry(n).size for n in names]
        assert all(type(size) is int for size in sizes)
        assert reader.sizes(list(reversed(names))) == sizes[::-1] and reader.sizes([]) == []
        assert reader.sizes(names[:1] + ["no/such/record"]) is None  # missing: the caller asks one by one
        with pytest.raises(FormatError):
            reader.size("no/such/record")
