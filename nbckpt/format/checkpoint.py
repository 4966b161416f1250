"""A torch zip checkpoint opened for reading: its records checked, data.pkl read.

Both :func:`nbckpt.load` and :class:`nbckpt.Archive` start here. Opening reads
the zip directory and the small records (``version``, ``byteorder``,
``data.pkl``) and never a storage byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import byteorder_without_record
from ..errors import FormatError
from . import spec
from .container import ZipReader

__all__ = ["ZipCheckpoint", "open_zip_checkpoint", "PICKLE_LIMIT"]

#: A data.pkl larger than this is not a checkpoint anyone wrote (it holds no array data).
PICKLE_LIMIT = 1 << 31


@dataclass
class ZipCheckpoint:
    """The parts of a zip checkpoint every reader needs."""

    reader: ZipReader
    version: int
    byteorder: str  # "little" or "big"
    byteorder_recorded: bool
    data_pkl: bytes

    @property
    def storage_keys(self) -> list[str]:
        return [name[5:] for name in self.reader.names() if name.startswith("data/")]

    @property
    def storage_bytes(self) -> int:
        """Bytes of all storage records (what an eager load reads)."""
        return sum(map(self.reader.size, [name for name in self.reader.names() if name.startswith("data/")]))


def open_zip_checkpoint(stream, *, verify: bool = False) -> ZipCheckpoint:
    """Open the zip checkpoint at ``stream``'s position; FormatError if it is not one.

    ``verify`` checks the CRC-32 of every record read here (``data.pkl``...).
    """
    reader = ZipReader(stream)
    if "constants.pkl" in reader:
        raise FormatError(
            "this is a TorchScript archive (it has constants.pkl), not a checkpoint: load it "
            "with torch.jit.load. nbckpt never runs TorchScript code, with or without weights_only."
        )
    version = _read_version(reader)
    if "byteorder" in reader:
        byteorder = reader.read("byteorder", limit=16).decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise FormatError(
                f"byteorder record holds {byteorder!r}, expected 'little' or 'big'", record="byteorder"
            )
        recorded = True
    else:
        byteorder, recorded = byteorder_without_record(), False
    if "data.pkl" not in reader:
        raise FormatError(
            f"the archive has no {reader.prefix}/data.pkl record: it is not a torch checkpoint",
            record="data.pkl",
        )
    data_pkl = reader.read("data.pkl", limit=PICKLE_LIMIT, verify=verify)
    return ZipCheckpoint(reader, version, byteorder, recorded, data_pkl)


def _read_version(reader: ZipReader) -> int:
    name = ".data/version" if ".data/version" in reader else "version"
    if name not in reader:
        raise FormatError(
            "the archive has no 'version' record: it is not a torch checkpoint", record="version"
        )
    raw = reader.read(name, limit=32).strip()
    try:
        version = int(raw)
    except ValueError:
        raise FormatError(f"version record holds {raw[:32]!r}, expected a number", record=name) from None
    if not spec.MIN_READ_VERSION <= version <= spec.MAX_READ_VERSION:
        raise FormatError(
            f"the archive has format version {version}; nbckpt reads versions "
            f"{spec.MIN_READ_VERSION} to {spec.MAX_READ_VERSION}",
            record=name,
        )
    return version
