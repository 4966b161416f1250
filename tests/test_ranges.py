"""RangeFile: one byte range of another file, for URLs (nbckpt.io.remote) and DCP regions (formats.dcp)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from nbckpt.io import ranges
from nbckpt.io.ranges import RangeFile


class Counting(io.BytesIO):
    """A file that counts the readinto and read calls made on it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.readintos = self.reads = 0

    def readinto(self, buffer):
        self.readintos += 1
        return super().readinto(buffer)

    def read(self, n=-1):
        self.reads += 1
        return super().read(n)


def test_a_window_never_shows_bytes_outside_it():
    data = bytes(range(256)) * 4
    window = RangeFile(io.BytesIO(data), 100, "w", offset=300)
    assert window.read() == data[300:400]
    assert window.seek(90) == 90 and window.read(50) == data[390:400]  # cut at the window's end
    assert window.read(1) == b""
    assert window.seek(-10, io.SEEK_END) == 90 and window.tell() == 90
    with pytest.raises(OSError, match="negative seek position -1 in w"):
        window.seek(-1)


def test_large_reads_go_straight_into_the_buffer():
    data = np.arange(ranges.BLOCK, dtype=np.uint32).tobytes()
    raw = Counting(b"x" * 7 + data)
    window = RangeFile(raw, len(data), "w", offset=7)
    out = np.empty(ranges.BLOCK, np.uint32)
    assert window.readinto(out) == len(data)
    np.testing.assert_array_equal(out, np.arange(ranges.BLOCK, dtype=np.uint32))
    assert raw.readintos == 1 and raw.reads == 0 and window.requests == 1 and window.bytes_fetched == len(data)


def test_small_reads_fetch_a_block_once():
    raw = Counting(bytes(range(256)) * 1024)
    window = RangeFile(raw, 200_000, "w", offset=5)
    assert [window.read(4) for _ in range(3)] == [bytes([5, 6, 7, 8]), bytes([9, 10, 11, 12]),
                                                  bytes([13, 14, 15, 16])]
    assert window.requests == 1 and window.bytes_fetched == ranges.BLOCK


def test_a_file_shorter_than_its_range_is_an_error():
    window = RangeFile(io.BytesIO(b"0123456789"), 20, "short.bin", offset=4)
    with pytest.raises(OSError) as info:
        window.read(20)
    assert str(info.value) == ("short.bin: expected 20 bytes at offset 4, the file gave 6 (it was truncated or "
                               "changed while open)")


def test_a_raw_file_without_readinto_is_read():
    class ReadOnly:
        def __init__(self, data):
            self._f = io.BytesIO(data)

        def seek(self, pos):
            return self._f.seek(pos)

        def read(self, n):
            return self._f.read(n)

        def close(self):
            pass

    window = RangeFile(ReadOnly(b"ab" * ranges.BLOCK), 2 * ranges.BLOCK - 1, "r", offset=1)
    assert window.read() == (b"ba" * ranges.BLOCK)[: 2 * ranges.BLOCK - 1]
