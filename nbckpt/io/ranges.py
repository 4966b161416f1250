"""A byte range of another file, read as a seekable file of its own: :class:`RangeFile`.

Two readers need one: a checkpoint at a URL (the range is the whole object,
read with ranged requests through fsspec, see :mod:`nbckpt.io.remote`) and a
chunk or object of a DCP folder (the range is the region ``.metadata`` gives
it inside a data file, see :mod:`nbckpt.formats.dcp`). Inside the range a
reader seeks and reads as in any file; it can never see a byte outside it, so
a corrupt chunk stream cannot make a reader run into the next chunk.

What each read fetches from the underlying file:

- a read of less than :data:`BLOCK` bytes fetches the block around it (the
  last :data:`BLOCK` bytes of the range when it lies there: a zip's end
  records, central directory and small last records come in one fetch), and
  the last few blocks are kept;
- a larger read goes straight into the caller's buffer (``readinto`` of the
  underlying file where it has one: no intermediate copy), at most
  :data:`CHUNK` bytes per fetch, after copying whatever a kept block holds.

fsspec's own caches do not fit this pattern: ``readahead`` and ``bytes`` keep
(and copy) the last large read, ``blockcache`` fetches a large read one block
per request.

    >>> import io
    >>> window = RangeFile(io.BytesIO(b"headerPAYLOADtrailer"), 7, "payload", offset=6)
    >>> window.read(), window.seek(-4, io.SEEK_END), window.read(10)
    (b'PAYLOAD', 3, b'LOAD')
"""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Any

__all__ = ["RangeFile", "BLOCK", "CHUNK"]

#: Reads smaller than this fetch the whole block around them (64 KiB).
BLOCK = 1 << 16
#: Larger reads fetch at most this much at a time (64 MiB), into the caller's buffer.
CHUNK = 1 << 26
#: Blocks kept per open file.
_BLOCKS_KEPT = 4


class RangeFile(io.RawIOBase):
    """``size`` bytes of the seekable binary file ``raw`` from ``offset``, as a read-only, seekable file.

    ``name`` names the range in errors. ``requests`` and ``bytes_fetched``
    count what was fetched from ``raw``; :meth:`close` closes ``raw``. See the
    module doc for which reads fetch what.
    """

    def __init__(self, raw: Any, size: int, name: str, *, offset: int = 0) -> None:
        super().__init__()
        self._raw = raw
        self._offset = offset
        self.size = size
        self.name = name
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self.requests = 0
        self.bytes_fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset} in {self.name}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(view.nbytes, self.size - self._pos))
        if n == 0:
            return 0
        if n < BLOCK:
            start, block = self._block_for(self._pos, n)
            at = self._pos - start
            view[:n] = block[at : at + n]
        else:
            # The start may be in a block already fetched (an array's first bytes come with the
            # block read for its local header): copy those, fetch only the rest.
            done = self._from_blocks(self._pos, view[:n])
            while done < n:
                step = min(CHUNK, n - done)
                self._fetch_into(self._pos + done, view[done : done + step])
                done += step
        self._pos += n
        return n

    def _from_blocks(self, pos: int, view: memoryview) -> int:
        """Copy the bytes at ``pos`` that a kept block holds into ``view``; how many."""
        for start, block in self._blocks.items():
            if start <= pos < start + len(block):
                n = min(view.nbytes, start + len(block) - pos)
                view[:n] = block[pos - start : pos - start + n]
                return n
        return 0

    def _block_for(self, pos: int, n: int) -> tuple[int, bytes]:
        for start, block in self._blocks.items():
            if start <= pos and pos + n <= start + len(block):
                self._blocks.move_to_end(start)
                return start, block
        # Near the end of the range, fetch the whole tail: the zip end records, the central
        # directory and the last small records are read backwards from there.
        start = max(0, self.size - BLOCK) if pos + n > self.size - BLOCK else pos
        block = bytearray(min(BLOCK, self.size - start))
        self._fetch_into(start, memoryview(block))
        self._blocks[start] = bytes(block)
        while len(self._blocks) > _BLOCKS_KEPT:
            self._blocks.popitem(last=False)
        return start, self._blocks[start]

    def _fetch_into(self, start: int, view: memoryview) -> None:
        """Fill ``view`` with the range's bytes from ``start`` (one request of the underlying file)."""
        n = view.nbytes
        self._raw.seek(self._offset + start)
        readinto = getattr(self._raw, "readinto", None)
        got = 0
        if callable(readinto):
            while got < n:
                step = readinto(view[got:])
                if not step:
                    break
                got += step
        else:
            data = self._raw.read(n)
            got = len(data)
            view[:got] = data
        self.requests += 1
        self.bytes_fetched += got
        if got != n:
            raise OSError(f"{self.name}: expected {n} bytes at offset {self._offset + start}, the file "
                          f"gave {got} (it was truncated or changed while open)")

    def close(self) -> None:
        if not self.closed:
            self._blocks.clear()
            self._raw.close()
        super().close()
