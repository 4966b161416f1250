"""Process-wide settings: the byte order assumed for files that do not record one.

torch ≥ 2.1 writes a ``byteorder`` record; older files have none, and their
byte order is that of the machine that wrote them, which the file does not say.
As in torch, the default is little-endian (almost every machine that ever
wrote one); :func:`set_default_load_endianness` changes it.

    >>> import nbckpt
    >>> nbckpt.get_default_load_endianness() is None
    True
    >>> nbckpt.set_default_load_endianness(nbckpt.LoadEndianness.BIG)
    >>> nbckpt.get_default_load_endianness()
    <LoadEndianness.BIG: 3>
    >>> nbckpt.set_default_load_endianness(None)
"""

from __future__ import annotations

import enum
import sys
import warnings

__all__ = [
    "LoadEndianness",
    "set_default_load_endianness",
    "get_default_load_endianness",
    "byteorder_without_record",
]


class LoadEndianness(enum.Enum):
    """Byte order of files without a ``byteorder`` record (values as in torch)."""

    NATIVE = 1
    LITTLE = 2
    BIG = 3


_default: LoadEndianness | None = None


def set_default_load_endianness(endianness: LoadEndianness | None) -> None:
    """Set the byte order assumed for files without a ``byteorder`` record."""
    global _default
    if endianness is not None and not isinstance(endianness, LoadEndianness):
        raise TypeError(
            f"expected a nbckpt.LoadEndianness or None, got {type(endianness).__name__}"
        )
    _default = endianness


def get_default_load_endianness() -> LoadEndianness | None:
    """The byte order assumed for files without a ``byteorder`` record (None: little)."""
    return _default


def byteorder_without_record() -> str:
    """``"little"`` or ``"big"``: how to read a file that has no ``byteorder`` record."""
    if _default is LoadEndianness.BIG:
        return "big"
    if _default is LoadEndianness.NATIVE:
        return sys.byteorder
    if _default is None and sys.byteorder == "big":
        # torch < 2.1 read such files in the machine's order; torch >= 2.1 (and nbckpt) read
        # them as little-endian. On a big-endian machine the two differ: say so (torch warns too).
        warnings.warn(
            "this checkpoint has no byteorder record (torch < 2.1 wrote none); nbckpt reads it as "
            "little-endian, as torch >= 2.1 does, although this machine is big-endian. If it was "
            "written on a big-endian machine, call nbckpt.set_default_load_endianness("
            "nbckpt.LoadEndianness.NATIVE) before loading; to silence this warning, set "
            "nbckpt.set_default_load_endianness(nbckpt.LoadEndianness.LITTLE).",
            UserWarning,
            stacklevel=2,
        )
    return "little"
