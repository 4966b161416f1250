"""torch's formats before the zip archive, byte by byte.

Pre-1.6 stream format (``_use_new_zipfile_serialization=False``); one
checkpoint is, back to back with no padding::

    pickle(MAGIC_NUMBER)            protocol 2: 0x1950A86A20F9469CFC6C
    pickle(PROTOCOL_VERSION)        1001
    pickle(sys_info)                {'protocol_version', 'little_endian', 'type_sizes'}
    pickle(obj)                     storages as persistent ids
                                    ('storage', class, key, location, numel, view_metadata)
    pickle(keys)                    the storage keys, a list of str
    for each key, in that order:    int64 LE numel, then numel * itemsize raw bytes (little-endian)

``numel`` counts elements of the dtype the key's first persistent id names
(bytes for ``UntypedStorage``); ``view_metadata`` is ``None`` or
``(view_key, offset, size)``, a slice of the storage in its elements (torch ≤
0.4). Several checkpoints and other pickles may follow one another in a stream.

Tar format (torch 0.1 to 0.3), a tar archive with members ``sys_info``,
``pickle``, ``tensors`` and ``storages``; see :mod:`nbckpt.formats.legacy_parse`.
"""

from __future__ import annotations

import pickletools
import struct
import sys

import numpy as np

from ..errors import FormatError
from .dtypes import swap_to_native

__all__ = [
    "MAGIC_NUMBER",
    "PROTOCOL_VERSION",
    "SYS_INFO",
    "read_pickle_bytes",
    "read_int64",
    "is_tar",
    "write_stream",
]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": sys.byteorder == "little",
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}
# The first bytes of a pickle of MAGIC_NUMBER at protocol 2.
MAGIC_PICKLE = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


class _BoundedRecorder:
    """A read-only view of a stream that records what is read and never over-reads.

    ``pickletools.genops`` reads one opcode and its argument at a time; a length
    field larger than what is left in the stream is refused before any read.
    """

    def __init__(self, stream, end: int) -> None:
        self._stream = stream
        self._end = end
        self.chunks: list[bytes] = []

    def _left(self) -> int:
        return self._end - self._stream.tell()

    def read(self, n: int = -1) -> bytes:
        left = self._left()
        if n < 0:
            n = left
        if n > left:
            raise FormatError(f"a pickle in the file claims {n} bytes, but only {left} are left")
        data = self._stream.read(n)
        self.chunks.append(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        data = self._stream.readline(min(1024, self._left()))
        self.chunks.append(data)
        return data


def read_pickle_bytes(stream, end: int, what: str) -> bytes:
    """The bytes of the pickle starting at ``stream``'s position, which is left after it."""
    recorder = _BoundedRecorder(stream, end)
    try:
        for opcode, _arg, _pos in pickletools.genops(recorder):
            if opcode.name == "STOP":
                break
        else:
            raise FormatError(f"the file ends inside the {what}", record=what)
    except FormatError:
        raise
    except (ValueError, EOFError, struct.error, UnicodeDecodeError) as err:
        raise FormatError(f"corrupt {what}: {err}", record=what) from None
    return b"".join(recorder.chunks)


def read_int64(stream, what: str) -> int:
    raw = stream.read(8)
    if len(raw) != 8:
        raise FormatError(f"truncated file while reading {what}: expected 8 bytes, got {len(raw)}", record=what)
    return struct.unpack("<q", raw)[0]


def is_tar(stream) -> bool:
    """Whether a tar archive starts at ``stream``'s position (the position is kept)."""
    start = stream.tell()
    try:
        stream.seek(start + 257)
        return stream.read(5) == b"ustar"
    finally:
        stream.seek(start)


def write_stream(write, data_pkl: bytes, storages) -> None:
    """Write one checkpoint in the pre-1.6 stream format (storages: PlannedStorage)."""
    import pickle

    for value in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO):
        write(pickle.dumps(value, protocol=2))
    write(data_pkl)
    by_key = {s.key: s for s in storages}
    keys = sorted(by_key)  # torch writes the keys in lexicographic order
    write(pickle.dumps(keys, protocol=2))
    for key in keys:
        storage = by_key[key]
        numel = storage.nbytes if storage.dtype.uses_v3 else storage.numel
        write(struct.pack("<q", numel))
        data = storage.host_bytes()
        if sys.byteorder == "big" and storage.dtype.itemsize > 1:
            # The format is little-endian whatever wrote it (complex32 included).
            data = np.array(data, dtype=np.uint8).reshape(-1)
            swap_to_native(data, storage.dtype.numpy)
        if data.size:
            write(memoryview(data))

