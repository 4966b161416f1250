"""CRC-32 of zip records: ISA-L's when installed, zlib's otherwise.

Every zip record carries the CRC-32 of its content (the polynomial of zip,
gzip and PNG, as :func:`zlib.crc32` computes it). A save computes one over
every byte it writes, and ``load(verify=True)`` over every byte it reads, so
its speed bounds theirs. `ISA-L <https://github.com/intel/isa-l>`_ (the
``isal`` package, installed by ``pip install isal``, nbckpt's ``fast`` extra) computes the same
value with carry-less multiplication, several times faster than zlib's table
code (measured on this project's machine: 23 GB/s against 2.7 GB/s). Without
it, zlib's is used and every result is the same.

    >>> crc32(b"hello")
    907060870
    >>> crc32(b"lo", crc32(b"hel")) == crc32(b"hello")   # running CRC, as zlib.crc32
    True
    >>> IMPLEMENTATION in ("isal", "zlib")
    True
"""

from __future__ import annotations

import zlib
from typing import Callable

__all__ = ["crc32", "IMPLEMENTATION", "select"]


def select() -> tuple[Callable[..., int], str]:
    """The fastest CRC-32 function available, and its name ("isal" or "zlib").

    ``isal.isal_zlib.crc32`` has zlib's signature and results; it is used when
    the ``isal`` package imports.

        >>> function, name = select()
        >>> function(b"abc") == zlib.crc32(b"abc")
        True
    """
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.crc32, "zlib"
    return isal_zlib.crc32, "isal"


#: ``crc32(data, value=0)``: the CRC-32 of any C-contiguous buffer, continuing from ``value``.
crc32, IMPLEMENTATION = select()
