"""The reader of ``.safetensors`` files (no ``safetensors`` package needed).

The format, byte by byte (as the safetensors project specifies it)::

    u64 little-endian N          the header's size in bytes
    N bytes of UTF-8 JSON        {"name": {"dtype": "F32", "shape": [2, 3],
                                           "data_offsets": [begin, end]}, ...,
                                  "__metadata__": {"key": "value", ...}}
    the data                     each tensor's bytes at [begin, end) of this
                                 region, C order, little-endian

The header MUST be a JSON object; each tensor MUST name a known dtype, a shape
of non-negative integers and offsets with ``end - begin`` equal to the shape's
element count times the dtype's size, inside the data region, and no two
tensors may overlap. ``__metadata__``, when present, MUST map strings to
strings. All of this is checked when the file is opened, before any tensor is
read; a file that breaks a rule raises :class:`nbckpt.FormatError` naming the
tensor and the rule. BF16 and the F8 types load through ``ml_dtypes``.

    >>> import io, numpy as np
    >>> from nbckpt.formats.sniff import open_reader
    >>> header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    >>> data = len(header).to_bytes(8, "little") + header + np.ones(2, np.float32).tobytes()
    >>> reader = open_reader(io.BytesIO(data))
    >>> reader.format, reader.tree()["w"].shape
    ('safetensors', (2,))
"""

from __future__ import annotations

import json
import math
import mmap as mmap_module
import struct
from typing import Any


from ..devices import DeviceMap
from ..errors import CheckpointError, FormatError
from ..format import dtypes as torch_dtypes
from ..format.container import read_exact
from ..materialize import RangeSource, read_flat
from .base import ArrayRef, FormatInfo, LoadOptions, StorageRef, contiguous_strides
from .sniff import SAFETENSORS_HEADER_LIMIT

__all__ = ["SafetensorsReader", "DTYPES", "parse_header"]

#: safetensors dtype name -> torch dtype (NumPy through ml_dtypes for BF16/F8).
DTYPES: dict[str, torch_dtypes.TorchDtype] = {
    name: torch_dtypes.by_torch_name(torch_name)  # type: ignore[misc]
    for name, torch_name in {
        "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
        "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
        "F64": "float64", "I64": "int64", "U64": "uint64", "C64": "complex64",
        "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
    }.items()
}

_METADATA = "__metadata__"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(f"the safetensors header names {key!r} twice", record=key)
        result[key] = value
    return result


def _is_int(value: Any) -> bool:
    return type(value) is int and value >= 0


def parse_header(raw: bytes, data_size: int) -> tuple[dict[str, tuple[torch_dtypes.TorchDtype, tuple, int, int]],
                                                        dict[str, str]]:
    """``({name: (dtype, shape, begin, end)}, metadata)`` from a header, every rule checked.

    ``data_size`` is the size of the data region that follows the header.
    """
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        if isinstance(err, FormatError):
            raise
        raise FormatError(f"the safetensors header is not valid UTF-8 JSON: {err}", record="header") from None
    if not isinstance(header, dict):
        raise FormatError(f"the safetensors header is a JSON {type(header).__name__}, expected an object",
                          record="header")
    metadata = header.pop(_METADATA, None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in metadata.items())):
        raise FormatError("the safetensors __metadata__ must map strings to strings", record=_METADATA)
    tensors: dict[str, tuple[torch_dtypes.TorchDtype, tuple, int, int]] = {}
    for name, entry in header.items():
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise FormatError(f"safetensors tensor {name!r} must have exactly dtype, shape and data_offsets, "
                              f"found {entry!r:.200}", record=name)
        dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise FormatError(f"safetensors tensor {name!r} has dtype {entry['dtype']!r:.40}; nbckpt reads "
                              f"{', '.join(DTYPES)}", record=name)
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and len(shape) <= 64 and all(_is_int(n) for n in shape)):
            raise FormatError(f"safetensors tensor {name!r} has shape {shape!r:.200}, expected a list of "
                              f"non-negative integers", record=name)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) for n in offsets)
                and offsets[0] <= offsets[1]):
            raise FormatError(f"safetensors tensor {name!r} has data_offsets {offsets!r:.200}, expected "
                              f"[begin, end] with 0 <= begin <= end", record=name)
        begin, end = offsets
        # An array must be representable even when empty: NumPy refuses (ValueError) a shape
        # whose non-zero extents multiply past a 64-bit index, as the pickle formats do.
        extent = math.prod(n for n in shape if n) * dtype.itemsize
        if extent >= 2**63:
            raise FormatError(f"safetensors tensor {name!r} has shape {shape!r:.200}: no array of that shape can "
                              f"be represented (more than 2**63 bytes)", record=name)
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise FormatError(
                f"safetensors tensor {name!r} of shape {tuple(shape)} and dtype {entry['dtype']} needs "
                f"{nbytes} bytes, but its data_offsets [{begin}, {end}] hold {end - begin}", record=name)
        if end > data_size:
            raise FormatError(
                f"safetensors tensor {name!r} ends at byte {end} of the data, which holds {data_size} "
                f"bytes: the file is truncated or its header lies", record=name)
        tensors[name] = (dtype, tuple(shape), begin, end)
    previous_end, previous = 0, None
    for name, (_dtype, _shape, begin, end) in sorted(tensors.items(), key=lambda item: item[1][2:]):
        if begin < previous_end and end > begin:
            raise FormatError(f"safetensors tensors {previous!r} and {name!r} overlap in the file",
                              record=name)
        if end > begin:
            previous_end, previous = end, name
    return tensors, dict(metadata)



class SafetensorsReader:
    """A ``.safetensors`` file: see :class:`nbckpt.formats.base.Reader`."""

    format = "safetensors"
    byteorder = "little"

    def __init__(self, target: Any, *, weights_only: bool = True) -> None:
        self._target = target
        self._stream = stream = target.stream
        self.source = target.source
        self._start = stream.tell()
        end = stream.seek(0, 2)
        stream.seek(self._start)
        size = struct.unpack("<Q", read_exact(stream, 8, "safetensors header size"))[0]
        if size > SAFETENSORS_HEADER_LIMIT or 8 + size > end - self._start:
            raise FormatError(
                f"the safetensors header claims {size} bytes, but the file holds {end - self._start - 8} "
                f"after the size field (and headers are at most {SAFETENSORS_HEADER_LIMIT}): the file is "
                f"truncated or lies", record="header")
        raw = read_exact(stream, size, "safetensors header")
        self._data_start = self._start + 8 + size
        self._data_size = end - self._data_start
        self._tensors, self.metadata = parse_header(raw, self._data_size)
        self._header_bytes = size
        self._mapped: dict[int, mmap_module.mmap] = {}
        self._refs = {
            name: ArrayRef(StorageRef(name, dtype, math.prod(shape), "cpu"), dtype.numpy, 0, shape,
                           contiguous_strides(shape, dtype.itemsize))
            for name, (dtype, shape, _begin, _end) in sorted(self._tensors.items())
        }

    def tree(self) -> dict[str, ArrayRef]:
        return dict(self._refs)

    def storages(self, *, mmap_access: int | None = None) -> RangeSource:
        mapped = None
        if mmap_access is not None:
            if mmap_access not in self._mapped:
                self._mapped[mmap_access] = mmap_module.mmap(self._stream.fileno(), 0, access=mmap_access)
            mapped = self._mapped[mmap_access]
        ranges = {name: (self._data_start + begin, end - begin)
                  for name, (_d, _s, begin, end) in self._tensors.items()}
        return RangeSource(self._stream, ranges, mapped=mapped, what="safetensors tensor")

    def load(self, device_map: DeviceMap, options: LoadOptions) -> dict[str, Any]:
        result = read_flat(self._refs, self.storages(mmap_access=options.mmap_access), device_map,
                           byteorder=self.byteorder, skip_data=options.skip_data)
        self._stream.seek(self._data_start + self._data_size)
        return result

    def info(self) -> FormatInfo:
        return FormatInfo(
            format=self.format,
            description="safetensors",
            storages=len(self._tensors),
            array_bytes=sum(end - begin for _d, _s, begin, end in self._tensors.values()),
            file_bytes=8 + self._header_bytes + self._data_size,
            metadata=dict(self.metadata),
            details=(("header", f"{self._header_bytes} bytes"),),
        )

    def verify(self, report: Any, progress: bool | None) -> None:
        from ..verify import Problem

        report.notes.append("safetensors files carry no checksums: the header, sizes and offsets were checked")
        report.records_checked = len(self._tensors)
        try:  # every byte of the data region must be there
            self._stream.seek(self._data_start + self._data_size - 1 if self._data_size else self._data_start)
            if self._data_size and len(self._stream.read(1)) != 1:
                raise FormatError("the file ends before its data region does")
        except CheckpointError as err:
            report.problems.append(Problem("data", str(err)))

    def pickles(self) -> list[bytes]:
        return []

    def close(self) -> None:
        self._target.close()
