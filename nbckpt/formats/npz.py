"""The reader of ``.npz`` files: NumPy's zip of ``.npy`` arrays (``np.savez``).

Each member ``name.npy`` holds one array: the ``.npy`` magic, a header
(dtype, Fortran order, shape) and the raw data (see
``numpy.lib.format``). Opening reads the zip directory and each member's
header only. Object arrays need pickle: nbckpt never allows it and refuses
them (``np.load(..., allow_pickle=True)`` loads such trusted files).
Members compressed by ``np.savez_compressed`` are inflated when read;
stored members are read (or memory-mapped) in place. Arrays in the other
byte order come back in native order.
"""

from __future__ import annotations

import math
import mmap as mmap_module
import struct
import sys
import tokenize
import zipfile
import zlib
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from ..devices import DeviceMap
from ..errors import FormatError
from ..format import dtypes as torch_dtypes
from ..format.container import readinto_exact
from ..materialize import read_flat, swap_to_native
from .base import ArrayRef, FormatInfo, LoadOptions, StorageRef, contiguous_strides

__all__ = ["NpzReader"]

#: A .npy header larger than this is refused (NumPy's own limit is 10000).
HEADER_LIMIT = 1 << 16


class _Member:
    __slots__ = ("info", "dtype", "shape", "fortran", "header_size", "data_offset", "swapped")

    def __init__(self, info: zipfile.ZipInfo, dtype: np.dtype, shape: tuple, fortran: bool,
                 header_size: int) -> None:
        self.info, self.dtype, self.shape, self.fortran = info, dtype, shape, fortran
        self.header_size = header_size
        self.data_offset: int | None = None  # absolute, for stored members
        self.swapped = not dtype.isnative and dtype.itemsize > 1


def _torch_dtype(dtype: np.dtype) -> torch_dtypes.TorchDtype:
    native = dtype.newbyteorder("=") if not dtype.isnative else dtype
    found = torch_dtypes.for_numpy(native)
    # Dtypes torch has no name for (strings, datetimes) are still read as plain bytes.
    return found if found is not None else torch_dtypes.TorchDtype(str(native), native, None)


class NpzReader:
    """An ``.npz`` archive: see :class:`nbckpt.formats.base.Reader`."""

    format = "npz"
    byteorder = sys.byteorder  # members in the other order are swapped as they are read

    def __init__(self, target: Any, *, weights_only: bool = True) -> None:
        self._target = target
        self._stream = target.stream
        self.source = target.source
        try:
            self._zip = zipfile.ZipFile(self._stream)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as err:
            raise FormatError(f"corrupt .npz archive: {err}") from None  # NotImplemented: a zip version
        self._members: dict[str, _Member] = {}
        for info in self._zip.infolist():
            if not info.filename.endswith(".npy"):
                continue
            self._members[info.filename[:-4]] = self._read_header(info)
        self._mapped: dict[int, mmap_module.mmap] = {}
        self._refs = {}
        for name, member in self._members.items():
            tdtype = _torch_dtype(member.dtype)
            numel = math.prod(member.shape)
            storage = StorageRef(member.info.filename, tdtype, numel, "cpu")
            itemsize = tdtype.itemsize
            strides = contiguous_strides(member.shape, itemsize, fortran=member.fortran)
            self._refs[name] = ArrayRef(storage, tdtype.numpy, 0, member.shape, strides)

    def _read_header(self, info: zipfile.ZipInfo) -> _Member:
        what = f"member {info.filename}"
        if info.flag_bits & 0x1:  # zipfile would ask for a password (RuntimeError); NumPy never encrypts
            raise FormatError(f".npz {what} is marked encrypted; an .npz NumPy writes never is: the file is "
                              f"corrupt (or not made by np.savez)", record=info.filename)
        stored = info.compress_type == zipfile.ZIP_STORED
        try:
            if stored:  # read the header in place: zipfile would read ahead into the data
                self._stream.seek(info.header_offset)
                local = self._stream.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise FormatError(f"corrupt .npz {what}: bad local header", record=info.filename)
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                self._stream.seek(start)
                shape, fortran, dtype, header_size = _npy_header(self._stream, what)
            else:
                start = None
                with self._zip.open(info) as member:
                    shape, fortran, dtype, header_size = _npy_header(member, what)
        except FormatError:
            raise
        except _BAD_HEADER as err:
            raise FormatError(f"corrupt .npz {what}: {err}", record=info.filename) from None
        if dtype.hasobject:
            raise FormatError(
                f".npz {what} holds Python objects ({dtype}), which only pickle can load; nbckpt never "
                f"runs pickle from .npz files. Load a trusted file with np.load(f, allow_pickle=True).",
                record=info.filename)
        nbytes = math.prod(shape) * dtype.itemsize
        if header_size + nbytes != info.file_size:
            raise FormatError(f".npz {what} holds {info.file_size - header_size} bytes of data, its header "
                              f"declares {nbytes}", record=info.filename)
        result = _Member(info, dtype, tuple(shape), bool(fortran), header_size)
        if start is not None:
            result.data_offset = start + header_size
        return result

    def tree(self) -> dict[str, ArrayRef]:
        return dict(self._refs)

    def storages(self, *, mmap_access: int | None = None) -> "_NpzSource":
        mapped = None
        if mmap_access is not None:
            if mmap_access not in self._mapped:
                self._mapped[mmap_access] = mmap_module.mmap(self._stream.fileno(), 0, access=mmap_access)
            mapped = self._mapped[mmap_access]
        return _NpzSource(self, mapped)

    def load(self, device_map: DeviceMap, options: LoadOptions) -> dict[str, Any]:
        return read_flat(self._refs, self.storages(mmap_access=options.mmap_access), device_map,
                         byteorder=self.byteorder, skip_data=options.skip_data)

    def info(self) -> FormatInfo:
        compressed = sum(m.info.compress_type != zipfile.ZIP_STORED for m in self._members.values())
        return FormatInfo(
            format=self.format,
            description="npz (NumPy)" + (f", {compressed} compressed members" if compressed else ""),
            byteorder=self.byteorder,
            storages=len(self._members),
            array_bytes=sum(m.info.file_size - m.header_size for m in self._members.values()),
            file_bytes=self._stream.seek(0, 2),
        )

    def verify(self, report: Any, progress: bool | None) -> None:
        from ..verify import Problem

        for name, member in self._members.items():
            report.records_checked += 1
            try:
                with self._zip.open(member.info) as f:  # zipfile checks the CRC-32 at the end
                    while f.read(1 << 20):
                        pass
            except _CORRUPT_MEMBER as err:
                report.problems.append(Problem(member.info.filename, str(err)))

    def pickles(self) -> list[bytes]:
        return []

    def close(self) -> None:
        self._zip.close()
        self._target.close()


class _NpzSource:
    """The data of each ``.npy`` member: in place when stored, inflated when compressed."""

    def __init__(self, reader: NpzReader, mapped: mmap_module.mmap | None) -> None:
        self._reader, self._mapped = reader, mapped
        self._by_key = {m.info.filename: m for m in reader._members.values()}

    def _member(self, key: str) -> _Member:
        try:
            return self._by_key[key]
        except KeyError:
            raise FormatError(f".npz member {key} is not in the archive", record=key) from None

    def size(self, key: str) -> int:
        member = self._member(key)
        return member.info.file_size - member.header_size

    def host_bytes(self, key: str, nbytes: int, backend: Any, *, mapped_ok: bool) -> np.ndarray:
        member = self._member(key)
        stream = self._reader._stream
        if member.data_offset is not None and self._mapped is not None and mapped_ok and not member.swapped:
            return np.frombuffer(self._mapped, dtype=np.uint8, count=nbytes, offset=member.data_offset)
        host = backend.host_buffer(nbytes)
        if member.data_offset is not None:
            stream.seek(member.data_offset)
            readinto_exact(stream, host, f".npz member {key}")
        else:
            try:
                with self._reader._zip.open(member.info) as f:
                    f.seek(member.header_size)
                    readinto_exact(f, host, f".npz member {key}")
            except FormatError:
                raise
            except _CORRUPT_MEMBER as err:  # a corrupt compressed stream, a CRC that does not match
                raise FormatError(f"corrupt .npz member {key}: {err}", record=key) from None
        if member.swapped:
            swap_to_native(host, member.dtype)
        return host


#: What zipfile, its decompressors and NumPy's .npy header parser raise on a corrupt member
#: (an unknown compression method is NotImplementedError; a header that is not a Python
#: literal can fail in ``tokenize`` before ``ast.literal_eval`` sees it).
_CORRUPT_MEMBER = (ValueError, OSError, EOFError, zipfile.BadZipFile, struct.error, SyntaxError,
                   NotImplementedError, tokenize.TokenError, zlib.error)
#: ... and, reading a header, NumPy's own checks of the header dict (``sorted`` of its keys
#: raises TypeError when a key is not a str).
_BAD_HEADER = _CORRUPT_MEMBER + (TypeError,)


def _npy_header(f: Any, what: str) -> tuple[tuple, bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, header size)`` of the .npy data at ``f``'s position."""
    start = f.tell()
    version = npy_format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise FormatError(f".npz {what}: unknown .npy version {version}")
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran, dtype = read(f, max_header_size=HEADER_LIMIT)
    return tuple(shape), bool(fortran), dtype, f.tell() - start


