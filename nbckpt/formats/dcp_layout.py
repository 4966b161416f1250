"""Where every byte of a DCP checkpoint is, checked against its folder before anything is read.

:func:`check_layout` turns a ``.metadata`` (:class:`~.dcp_metadata.Metadata`)
into a :class:`DcpLayout`: for each tensor its nesting path, torch dtype,
global shape and chunks (each with its file, offset and length), and for each
non-tensor entry its file region. Everything a hostile ``.metadata`` could use
to make a reader go astray is refused here with :class:`nbckpt.FormatError`,
before a single array is allocated:

- a file outside the folder (absolute paths, ``..``, symlinks leading out),
  a missing file, or a region past the end of its file;
- two regions of one file that overlap (so the tensors' bytes cannot add up
  to more than the files hold);
- chunks outside their tensor, chunks that overlap, or chunks that leave a gap
  (the chunks must tile each tensor exactly);
- a chunk whose region is smaller than its data, an unknown dtype, stream
  extensions (``transform_descriptors``, such as compression) nbckpt cannot undo.

    >>> import os, tempfile
    >>> from nbckpt.formats.dcp_metadata import *
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "__0_0.distcp"), "wb") as f:
    ...     _ = f.write(bytes(16))
    >>> md = Metadata({"w": TensorStorageMetadata(TensorProperties("float32"), (4,),
    ...     [ChunkStorageMetadata((0,), (2,)), ChunkStorageMetadata((2,), (2,))])})
    >>> md.storage_data = {MetadataIndex("w", (0,)): StorageInfo("__0_0.distcp", 0, 8),
    ...                    MetadataIndex("w", (2,)): StorageInfo("__0_0.distcp", 8, 8)}
    >>> layout = check_layout(folder, md)
    >>> t = layout.tensors["w"]
    >>> t.shape, t.dtype.name, len(t.chunks), t.files
    ((4,), 'float32', 2, ('__0_0.distcp',))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError
from ..format import dtypes as torch_dtypes
from .dcp_metadata import BytesStorageMetadata, Metadata, MetadataIndex, StorageInfo, TensorStorageMetadata

__all__ = ["Region", "Chunk", "TensorEntry", "ObjectEntry", "DcpLayout", "check_layout", "flat_name_path"]

#: Dimensions a tensor may have (torch's own limit is 64).
MAX_DIMS = 64
#: Chunk pairs the overlap check may compare for one tensor (a bound on hostile metadata's cost).
MAX_COMPARISONS = 20_000_000


@dataclass(frozen=True)
class Region:
    """``length`` bytes at ``offset`` in ``file`` (a name relative to the folder)."""

    file: str
    offset: int
    length: int


@dataclass(frozen=True)
class Chunk:
    """One chunk of a tensor: its box in the tensor and where its bytes are."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    region: Region

    @property
    def numel(self) -> int:
        n = 1
        for s in self.sizes:
            n *= s
        return n

    def slices(self) -> tuple[slice, ...]:
        """The chunk's place in the full tensor, as an index."""
        return tuple(slice(o, o + s) for o, s in zip(self.offsets, self.sizes))


@dataclass
class TensorEntry:
    """A tensor of the checkpoint: flat ``name``, nesting ``path``, dtype, global shape, chunks."""

    name: str
    path: tuple
    dtype: torch_dtypes.TorchDtype
    shape: tuple[int, ...]
    chunks: list[Chunk]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def files(self) -> tuple[str, ...]:
        """The files holding its chunks, in first-use order."""
        return tuple(dict.fromkeys(c.region.file for c in self.chunks))


@dataclass
class ObjectEntry:
    """A non-tensor entry (DCP's BytesStorageMetadata): a torch.save stream in ``region``."""

    name: str
    path: tuple
    region: Region


@dataclass
class DcpLayout:
    """A checked DCP checkpoint: its entries in ``.metadata`` order and the files' sizes."""

    folder: str
    metadata: Metadata
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    objects: dict[str, ObjectEntry] = field(default_factory=dict)
    file_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def order(self) -> list[str]:
        """All entry names in ``.metadata`` order."""
        return [n for n in self.metadata.state_dict_metadata if n in self.tensors or n in self.objects]


def _fail(message: str) -> FormatError:
    return FormatError(f".metadata: {message}", record=".metadata")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_DIMS or not all(
            type(v) is int and v >= 0 for v in value):
        raise _fail(f"{what} must be a tuple of at most {MAX_DIMS} non-negative ints, found {value!r:.80}")
    return value


def flat_name_path(name: str, planner_data: Any) -> tuple:
    """The nesting path of flat entry ``name`` (``planner_data``'s, or ``(name,)`` without one)."""
    if not isinstance(planner_data, dict) or name not in planner_data:
        return (name,)
    path = planner_data[name]
    if not isinstance(path, tuple) or not path or not all(type(p) in (str, int) for p in path):
        raise _fail(f"planner_data[{name!r}] must be a non-empty tuple of keys (str) and list indices (int), "
                    f"found {path!r:.80}")
    if type(path[0]) is not str or any(type(p) is int and not 0 <= p < (1 << 24) for p in path):
        raise _fail(f"planner_data[{name!r}] = {path!r:.80} starts with a list index or holds an index out of range")
    return path


class _Files:
    """Resolves ``relative_path``s inside the folder and checks regions against file sizes."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.real_folder = os.path.realpath(folder)
        self.sizes: dict[str, int] = {}
        self.regions: dict[str, list[tuple[int, int, str]]] = {}

    def region(self, info: Any, owner: str) -> Region:
        if not isinstance(info, StorageInfo):
            raise _fail(f"storage_data for {owner} is a {type(info).__name__}, expected _StorageInfo")
        name, offset, length = info.relative_path, info.offset, info.length
        if info.transform_descriptors:
            raise _fail(
                f"{owner} is stored through DCP stream extensions {list(info.transform_descriptors)!r:.80} "
                f"(such as compression), which nbckpt does not read. Save the checkpoint without "
                f"_extensions, or convert it with torch.distributed.checkpoint.format_utils.dcp_to_torch_save.")
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            raise _fail(f"{owner} has offset {offset!r} and length {length!r}; expected non-negative ints")
        self._check_name(name, owner)
        size = self._size(name, owner)
        if offset + length > size:
            raise _fail(f"{owner} lies at bytes {offset}..{offset + length} of {name}, which has only {size} bytes: "
                        f"the file is truncated or the metadata is corrupt")
        self.regions.setdefault(name, []).append((offset, length, owner))
        return Region(name, offset, length)

    def _check_name(self, name: Any, owner: str) -> None:
        if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
            raise _fail(f"{owner} names the file {name!r:.80}; expected a file name inside the checkpoint folder")
        parts = name.split("/")
        if name.startswith("/") or os.path.isabs(name) or any(p in ("", ".", "..") for p in parts):
            raise _fail(f"{owner} names the file {name!r:.80}, which is outside the checkpoint folder; a DCP "
                        f"checkpoint only references files inside its folder")

    def _size(self, name: str, owner: str) -> int:
        size = self.sizes.get(name)
        if size is not None:
            return size
        full = os.path.join(self.folder, *name.split("/"))
        real = os.path.realpath(full)
        if os.path.commonpath([self.real_folder, real]) != self.real_folder:
            raise _fail(f"{owner} names {name!r}, which links to {real}, outside the checkpoint folder")
        if not os.path.isfile(real):
            raise _fail(f"{owner} is stored in {name}, which is missing from {self.folder}: copy the whole "
                        f"checkpoint folder")
        size = self.sizes[name] = os.path.getsize(real)
        return size

    def check_disjoint(self) -> None:
        """No two regions of one file overlap (each byte belongs to one entry)."""
        for name, regions in self.regions.items():
            regions.sort()
            for (o1, l1, a), (o2, _l2, b) in zip(regions, regions[1:]):
                if o2 < o1 + l1:
                    raise _fail(f"{a} and {b} share bytes {o2}..{o1 + l1} of {name}; every entry needs its own bytes")


def _check_tiling(name: str, shape: tuple[int, ...], chunks: list[Chunk]) -> None:
    """The chunks cover the tensor exactly: each inside it, none overlapping, their volumes adding up."""
    total = 0
    for chunk in chunks:
        for dim, (o, s, n) in enumerate(zip(chunk.offsets, chunk.sizes, shape)):
            if o + s > n:
                raise _fail(f"a chunk of {name} spans {o}..{o + s} of dimension {dim}, which has size {n}")
        total += chunk.numel
    numel = 1
    for n in shape:
        numel *= n
    # A sweep along the dimension the chunks are cut most along: only chunks still open
    # there can overlap the next one (for a grid of r x c chunks, about c at a time).
    boxes = [c for c in chunks if c.numel]
    dim = max(range(len(shape)), key=lambda d: len({c.offsets[d] for c in boxes}), default=0)
    boxes.sort(key=lambda c: c.offsets[dim] if c.offsets else 0)
    active: list[Chunk] = []
    budget = MAX_COMPARISONS
    for chunk in boxes:
        start = chunk.offsets[dim] if chunk.offsets else 0
        active = [a for a in active if not a.offsets or a.offsets[dim] + a.sizes[dim] > start]
        budget -= len(active)
        if budget < 0:
            raise _fail(f"{name} has {len(chunks)} chunks whose overlaps would take more than "
                        f"{MAX_COMPARISONS} comparisons to check; no checkpoint torch writes is cut like that")
        for other in active:
            if all(o1 < o2 + s2 and o2 < o1 + s1
                   for o1, s1, o2, s2 in zip(chunk.offsets, chunk.sizes, other.offsets, other.sizes)):
                raise _fail(f"chunks of {name} at offsets {other.offsets} and {chunk.offsets} overlap; "
                            f"each element must be stored exactly once")
        active.append(chunk)
    if total != numel:
        raise _fail(f"the chunks of {name} cover {total} of its {numel} elements: they leave a gap. The "
                    f"checkpoint is incomplete (a rank's chunks are missing)")


def _tensor(name: str, path: tuple, md: TensorStorageMetadata, storage: dict, files: _Files) -> TensorEntry:
    props = md.properties
    dtype_name = getattr(props, "dtype", None)
    dtype = torch_dtypes.by_torch_name(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise _fail(f"{name} has dtype {dtype_name!r}, which is not a torch dtype nbckpt knows")
    shape = _int_tuple(md.size, f"the size of {name}")
    if not isinstance(md.chunks, list):
        raise _fail(f"the chunks of {name} must be a list, found {type(md.chunks).__name__}")
    chunks = []
    for raw in md.chunks:
        offsets = _int_tuple(getattr(raw, "offsets", None), f"a chunk offset of {name}")
        sizes = _int_tuple(getattr(raw, "sizes", None), f"a chunk size of {name}")
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            raise _fail(f"a chunk of {name} has {len(offsets)} offsets and {len(sizes)} sizes for a tensor "
                        f"of {len(shape)} dimensions")
        owner = f"the chunk of {name} at {offsets}"
        try:
            info = storage[MetadataIndex(name, offsets)]
        except KeyError:
            raise _fail(f"{owner} has no storage_data entry: the checkpoint is incomplete") from None
        chunk = Chunk(offsets, sizes, files.region(info, owner))
        if chunk.region.length < chunk.numel * dtype.itemsize:
            raise _fail(f"{owner} holds {chunk.numel} x {dtype.name} = {chunk.numel * dtype.itemsize} bytes but "
                        f"its region in {chunk.region.file} has only {chunk.region.length}")
        chunks.append(chunk)
    _check_tiling(name, shape, chunks)
    return TensorEntry(name, path, dtype, shape, chunks)


def check_layout(folder: str, metadata: Metadata) -> DcpLayout:
    """Check ``metadata`` against ``folder`` (see the module docstring) and describe every entry."""
    entries = metadata.state_dict_metadata
    storage = metadata.storage_data
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise _fail("state_dict_metadata and storage_data must be dicts")
    if metadata.planner_data is not None and not isinstance(metadata.planner_data, dict):
        raise _fail(f"planner_data must be a dict of nesting paths, found {type(metadata.planner_data).__name__}")
    files = _Files(folder)
    layout = DcpLayout(folder, metadata)
    for name, md in entries.items():
        if not isinstance(name, str):
            raise _fail(f"entry names must be str, found {type(name).__name__}")
        path = flat_name_path(name, metadata.planner_data)
        if isinstance(md, TensorStorageMetadata):
            layout.tensors[name] = _tensor(name, path, md, storage, files)
        elif isinstance(md, BytesStorageMetadata):
            info = storage.get(MetadataIndex(name))
            if info is None:
                raise _fail(f"the entry {name} has no storage_data: the checkpoint is incomplete")
            layout.objects[name] = ObjectEntry(name, path, files.region(info, f"the entry {name}"))
        else:
            raise _fail(f"{name} is described by a {type(md).__name__}, expected TensorStorageMetadata or "
                        f"BytesStorageMetadata")
    files.check_disjoint()
    layout.file_sizes = dict(files.sizes)
    return layout
