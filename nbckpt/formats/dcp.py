"""torch.distributed.checkpoint (DCP) folders, read without torch: :class:`DcpReader`.

A DCP checkpoint is a folder: ``.metadata`` (see :mod:`.dcp_metadata`) and the
data files it points to (``__R_I.distcp``: one or more per writer). Each tensor
is cut into chunks (boxes of the global tensor, one per shard a rank held);
each chunk is stored at an offset in a data file as an ordinary ``torch.save``
stream of the chunk (the default ``SerializationFormat.TORCH_SAVE``) or as the
chunk's raw little-endian bytes in C order. Non-tensor entries (DCP's
``BytesStorageMetadata``: numbers, strings, lists of an optimizer's
``param_groups``) are ``torch.save`` streams of the object.

Reading a DCP folder here:

1. ``.metadata`` runs through the safe VM with only DCP's classes allowed;
2. :func:`~.dcp_layout.check_layout` checks every file, region and chunk
   against the folder (nothing outside it, nothing past a file's end, chunks
   tiling each tensor exactly) before anything is allocated;
3. a tensor is read by allocating it once and filling it chunk by chunk, each
   chunk's stream read through nbckpt's own (safe) loader; ``planner_data``
   gives the state dict its nesting back.

    >>> import os, tempfile, numpy as np, nbckpt
    >>> folder = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> nbckpt.save({"model": {"w": np.arange(6.0).reshape(2, 3)}, "step": 3}, folder, format="dcp")
    >>> reader = DcpReader.open_folder(folder)
    >>> [(r.name, r.shape, len(r.chunks)) for r in reader.layout.tensors.values()]
    [('model.w', (2, 3), 1)]
    >>> nbckpt.load(folder)
    {'model': {'w': array([[0., 1., 2.],
           [3., 4., 5.]])}, 'step': 3}
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from ..devices import DeviceMap
from ..errors import CheckpointError, FormatError, UnpicklingError
from ..format import spec
from ..format.checkpoint import open_zip_checkpoint
from ..io.ranges import RangeFile
from .base import ArrayRef, FormatInfo, LoadOptions, StorageRef, contiguous_strides
from .dcp_layout import Chunk, DcpLayout, ObjectEntry, TensorEntry, check_layout
from .dcp_metadata import METADATA_LIMIT, read_metadata

__all__ = ["DcpReader", "DcpSource", "open_layout", "scan_folder", "read_chunk", "read_object",
           "assemble", "nest", "is_dcp_folder", "METADATA_FILE"]

#: The file that makes a folder a DCP checkpoint.
METADATA_FILE = ".metadata"


def is_dcp_folder(path: Any) -> bool:
    """Whether ``path`` is a folder holding a DCP ``.metadata``."""
    try:
        return os.path.isdir(path) and os.path.isfile(os.path.join(path, METADATA_FILE))
    except (TypeError, ValueError):
        return False


def open_layout(folder: str) -> DcpLayout:
    """Read ``folder``'s ``.metadata`` safely and check it against the folder's files."""
    return check_layout(folder, read_metadata(metadata_bytes(folder)))


def scan_folder(folder: str) -> list[Any]:
    """What :func:`nbckpt.scan` reports for a DCP folder: the globals of every pickle a load runs.

    ``.metadata`` is scanned with DCP's own classes allowed (as the loader reads it), so a
    ``.metadata`` naming ``posix.system`` is *reported* as refused rather than raising; the
    object entries' pickles are scanned when the metadata could be read.
    """
    from ..pickling import allowlist
    from ..pickling.scan import GlobalRef, scan_pickle
    from .dcp_metadata import METADATA_GLOBALS, PATH_GLOBALS

    with allowlist.safe_globals(METADATA_GLOBALS):
        refs = [GlobalRef(ref.name, True, "a checkpoint_id path, read back as a str")
                if ref.name in PATH_GLOBALS else ref for ref in scan_pickle(metadata_bytes(folder))]
    try:
        layout = open_layout(folder)
    except UnpicklingError:
        return refs  # refused globals in .metadata: reported above; object entries cannot be located
    for entry in layout.objects.values():
        with _window(folder, entry.region) as window:
            refs.extend(scan_pickle(open_zip_checkpoint(window).data_pkl))
    return refs


def metadata_bytes(folder: str) -> bytes:
    """The bytes of ``folder``'s ``.metadata`` (at most :data:`METADATA_LIMIT`)."""
    path = os.path.join(folder, METADATA_FILE)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > METADATA_LIMIT:
                raise FormatError(f"{path} is {size} bytes; a DCP .metadata nbckpt reads is at most "
                                  f"{METADATA_LIMIT}", record=METADATA_FILE)
            return f.read(size)
    except FileNotFoundError:
        raise FormatError(
            f"{folder} is not a torch.distributed.checkpoint folder: it has no {METADATA_FILE} (a save "
            f"that did not finish leaves none). Pass a checkpoint folder or file.", record=METADATA_FILE
        ) from None


def _window(folder: str, region: Any) -> RangeFile:
    """The region of a data file as a file of its own (closing it closes the data file).

    Each chunk and object is read through one, so a corrupt chunk stream can never make a
    reader see the bytes of the next one (see :mod:`nbckpt.io.ranges`).
    """
    f = open(os.path.join(folder, *region.file.split("/")), "rb", buffering=0)
    return RangeFile(f, region.length, region.file, offset=region.offset)


def _load_stream(window: RangeFile, map_location: Any = "cpu", *, weights_only: bool = True) -> Any:
    """The object of the torch.save stream in ``window``, through its format's reader."""
    from .sniff import open_reader

    reader = open_reader(window, weights_only=weights_only)
    try:
        return reader.load(DeviceMap.parse(map_location), LoadOptions(weights_only=weights_only))
    finally:
        reader.close()


class _Into:
    """A backend whose host buffer is the destination: the storage is read straight into it."""

    def __init__(self, target: np.ndarray) -> None:
        self._bytes = target.reshape(-1).view(np.uint8)

    def host_buffer(self, nbytes: int) -> np.ndarray:
        return self._bytes


def _read_stream_into(window: RangeFile, chunk: Chunk, dtype: Any, out: np.ndarray | None) -> np.ndarray:
    """A chunk's torch.save stream: read straight into ``out`` when the file holds exactly its bytes."""
    from .sniff import open_reader

    reader = open_reader(window, weights_only=True)
    try:
        ref = reader.tree()
        nbytes = chunk.numel * dtype.itemsize
        if (out is not None and isinstance(ref, ArrayRef) and ref.dtype == dtype.numpy and ref.shape == chunk.sizes
                and ref.offset == 0 and not ref.transforms and ref.storage.nbytes == nbytes
                and ref.strides == contiguous_strides(chunk.sizes, dtype.itemsize) and reader.byteorder == sys.byteorder):
            reader.storages().host_bytes(ref.storage.key, nbytes, _Into(out), mapped_ok=False)
            return out
        return reader.load(DeviceMap.parse("cpu"), LoadOptions())
    finally:
        reader.close()


def _refuse_safetensors_variant(folder: str, chunk: Chunk) -> None:
    """DCP's ``SerializationFormat.SAFETENSORS`` writes whole safetensors files whose regions do not
    locate the data (they would be read as the header): refuse them rather than read wrong bytes."""
    with open(os.path.join(folder, *chunk.region.file.split("/")), "rb") as f:
        head = f.read(9)  # the data file's own start, wherever the region lies
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < (1 << 27):
        raise FormatError(
            f"{chunk.region.file} is a safetensors file (DCP's SerializationFormat.SAFETENSORS, written for "
            f"Hugging Face storage readers); its .metadata regions do not locate the tensors, and nbckpt does "
            f"not read this variant. Save with the default SerializationFormat.TORCH_SAVE.",
            record=chunk.region.file)


def read_chunk(folder: str, chunk: Chunk, dtype: Any, out: np.ndarray | None = None) -> np.ndarray:
    """The host array of one chunk (into ``out``, a C-contiguous array of its shape, when given).

    The chunk's region holds a torch.save stream (``PK\\x03\\x04``...) or its raw
    bytes; either way its dtype and shape must be the chunk's. A stream that
    holds exactly the chunk's bytes, in C order, is read straight into ``out``.
    """
    with _window(folder, chunk.region) as window:
        head = window.read(4)
        window.seek(0)
        nbytes = chunk.numel * dtype.itemsize
        if head != spec.LOCAL_MAGIC:
            _refuse_safetensors_variant(folder, chunk)
            if chunk.region.length != nbytes:
                raise FormatError(
                    f"the chunk at {chunk.offsets} in {chunk.region.file} is neither a torch.save stream nor "
                    f"{nbytes} raw bytes ({chunk.region.length} bytes found)", record=chunk.region.file)
            target = out if out is not None else np.empty(chunk.sizes, dtype=dtype.numpy)
            flat = target.reshape(-1).view(np.uint8)
            if window.readinto(flat) != nbytes:
                raise FormatError(f"{chunk.region.file} ended inside a chunk", record=chunk.region.file)
            return target
        array = _read_stream_into(window, chunk, dtype, out)
    if array is out:
        return out
    if not isinstance(array, np.ndarray) or array.shape != chunk.sizes or array.dtype != dtype.numpy:
        found = (f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__)
        raise FormatError(
            f"the chunk at offsets {chunk.offsets} in {chunk.region.file} holds {found}; the metadata "
            f"describes {dtype.name} {chunk.sizes}", record=chunk.region.file)
    if out is not None:
        out[...] = array
        return out
    return array


def assemble(layout: DcpLayout, entry: TensorEntry, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (host, the tensor's shape and dtype) from the tensor's chunks."""
    for chunk in entry.chunks:
        if not chunk.numel:
            continue
        target = out[chunk.slices()] if entry.shape else out
        if target.flags.c_contiguous:
            read_chunk(layout.folder, chunk, entry.dtype, out=target)
        else:
            target[...] = read_chunk(layout.folder, chunk, entry.dtype)
    return out


def read_object(layout: DcpLayout, entry: ObjectEntry, *, map_location: Any = None,
                weights_only: bool = True) -> Any:
    """A non-tensor entry, loaded from its torch.save stream (through the safe VM by default)."""
    with _window(layout.folder, entry.region) as window:
        try:
            return _load_stream(window, map_location, weights_only=weights_only)
        except (UnpicklingError, FormatError) as err:
            where = f"{entry.name} (in {entry.region.file})"
            if isinstance(err, UnpicklingError):
                raise UnpicklingError(f"{where}: {err}", global_name=err.global_name) from None
            raise FormatError(f"{where}: {err}", record=entry.region.file) from None


def nest(items: list[tuple[tuple, Any]]) -> dict:
    """The nested state dict from ``(path, value)`` pairs, as DCP's ``set_element`` builds it.

    String keys make dicts and int keys make lists (padded with None).

        >>> nest([(("a", "b"), 1), (("l", 1), 2), (("top",), 3)])
        {'a': {'b': 1}, 'l': [None, 2], 'top': 3}
    """
    root: dict = {}
    for path, value in items:
        node: Any = root
        for key, nxt in zip(path, path[1:]):
            node = _child(node, key, {} if type(nxt) is str else [], path)
        last = path[-1]
        if isinstance(node, list):
            node.extend([None] * (last + 1 - len(node)))
        node[last] = value
    return root


def _child(node: Any, key: Any, default: Any, path: tuple) -> Any:
    if isinstance(node, dict) and type(key) is str:
        child = node.setdefault(key, default)
    elif isinstance(node, list) and type(key) is int:
        node.extend([None] * (key + 1 - len(node)))
        if node[key] is None:
            node[key] = default
        child = node[key]
    else:
        child = None
    if not isinstance(child, type(default)):
        raise FormatError(f".metadata: planner_data nests {path!r} inside a value that is not a "
                          f"{type(default).__name__}", record=".metadata")
    return child


class DcpSource:
    """The bytes of each tensor, keyed by its flat name, assembled from its chunks on request."""

    def __init__(self, layout: DcpLayout, *, skip_data: bool = False, on_read: Any = None) -> None:
        self._layout = layout
        self._skip_data = skip_data
        self._on_read = on_read

    def size(self, key: str) -> int:
        try:
            return self._layout.tensors[key].nbytes
        except KeyError:
            raise FormatError(f"the checkpoint has no tensor {key!r}", record=key) from None

    def can_map(self, key: str) -> bool:
        return False

    def host_bytes(self, key: str, nbytes: int, backend: Any, *, mapped_ok: bool) -> np.ndarray:
        from ..backends import HOST

        entry = self._layout.tensors[key]
        host = np.empty(nbytes, dtype=np.uint8) if backend is HOST else backend.host_buffer(nbytes)
        if not self._skip_data and nbytes:
            assemble(self._layout, entry, host.view(entry.dtype.numpy).reshape(entry.shape))
            if self._on_read is not None:
                self._on_read(nbytes)
        return host



def _map_location(device_map: DeviceMap) -> Any:
    """The ``map_location`` a parsed map came from (for the object entries' own loads)."""
    if device_map.mode == "fixed":
        return device_map.fixed
    if device_map.mode == "dict":
        return dict(device_map.mapping)
    if device_map.mode == "callable":
        return device_map.function
    if device_map.mode == "auto":
        return "auto"
    return None


class DcpReader:
    """A DCP folder behind nbckpt's :class:`~nbckpt.formats.base.Reader` interface.

    ``layout`` is the checked :class:`~.dcp_layout.DcpLayout`; :meth:`tree`
    gives one :class:`ArrayRef` per tensor (its storage key is the flat name;
    ``shard`` lists its files) and the object entries' values.
    """

    format = "dcp"
    byteorder = "little"

    def __init__(self, target: Any, *, weights_only: bool = True) -> None:
        self.source = target.source
        self.folder = target.path
        self.weights_only = weights_only
        self.layout = open_layout(self.folder)
        self._objects: dict[str, Any] | None = None

    @classmethod
    def open_folder(cls, folder: str, *, weights_only: bool = True) -> "DcpReader":
        """Open a DCP folder directly (``nbckpt.open`` does this for you)."""
        from .sniff import Target

        folder = os.fsdecode(folder)
        return cls(Target(None, False, folder, folder), weights_only=weights_only)

    def array_ref(self, entry: TensorEntry) -> ArrayRef:
        storage = StorageRef(entry.name, entry.dtype, entry.numel, "cpu", shard=", ".join(entry.files),
                             chunks=len(entry.chunks))
        strides = contiguous_strides(entry.shape, entry.dtype.itemsize) if entry.numel else None
        return ArrayRef(storage, entry.dtype.numpy, 0, entry.shape, strides)

    def objects(self, map_location: Any = None) -> dict[str, Any]:
        """The non-tensor entries' values, by flat name (read once, through the safe VM by default)."""
        if map_location is not None:
            return {name: read_object(self.layout, e, map_location=map_location, weights_only=self.weights_only)
                    for name, e in self.layout.objects.items()}
        if self._objects is None:
            self._objects = {name: read_object(self.layout, e, weights_only=self.weights_only)
                             for name, e in self.layout.objects.items()}
        return self._objects

    def tree(self) -> Any:
        objects = self.objects()
        items = []
        for name in self.layout.order:
            tensor = self.layout.tensors.get(name)
            if tensor is not None:
                items.append((tensor.path, self.array_ref(tensor)))
            else:
                items.append((self.layout.objects[name].path, objects[name]))
        return nest(items)

    def storages(self, *, mmap_access: int | None = None) -> DcpSource:
        return DcpSource(self.layout)

    def read(self, name: str, map_location: Any = None) -> Any:
        """One tensor by its flat name, assembled from its chunks only, placed per ``map_location``."""
        entry = self.layout.tensors.get(name)
        if entry is None:
            raise KeyError(f"no tensor {name!r} in {self.source}; it holds {sorted(self.layout.tensors)[:10]}")
        return self._materialize(entry, _materializer(DcpSource(self.layout), DeviceMap.parse(map_location)))

    def _materialize(self, entry: TensorEntry, materializer: Any) -> Any:
        storage = materializer.storage(entry.name, entry.dtype, entry.numel, "cpu")
        if not entry.numel:
            return materializer.empty(storage, entry.dtype.numpy, entry.shape)
        return materializer.view(storage, entry.dtype.numpy, 0, entry.shape,
                                 contiguous_strides(entry.shape, entry.dtype.itemsize))

    def load(self, device_map: DeviceMap, options: LoadOptions) -> Any:
        from ..progress import SILENT, progress_bar

        total = 0 if options.skip_data else sum(t.nbytes for t in self.layout.tensors.values())
        bar = progress_bar(total, "loading", options.progress)
        try:
            source = DcpSource(self.layout, skip_data=options.skip_data,
                               on_read=None if bar is SILENT else bar.update)
            materializer = _materializer(source, device_map, skip_data=options.skip_data)
            objects = {name: read_object(self.layout, e, map_location=_map_location(device_map),
                                         weights_only=options.weights_only)
                       for name, e in self.layout.objects.items()}
            items = []
            for name in self.layout.order:
                tensor = self.layout.tensors.get(name)
                if tensor is not None:
                    items.append((tensor.path, self._materialize(tensor, materializer)))
                else:
                    items.append((self.layout.objects[name].path, objects[name]))
        finally:
            bar.close()
        return nest(items)

    def info(self) -> FormatInfo:
        md = self.layout.metadata
        tensors = self.layout.tensors.values()
        chunks = sum(len(t.chunks) for t in tensors)
        return FormatInfo(
            format="dcp",
            description="torch.distributed.checkpoint folder",
            version=0,
            storages=len(self.layout.tensors),
            array_bytes=sum(t.nbytes for t in tensors),
            file_bytes=sum(self.layout.file_sizes.values()),
            details=(("DCP version", str(md.version)), ("tensors", str(len(self.layout.tensors))),
                     ("chunks", str(chunks)), ("objects", str(len(self.layout.objects))),
                     ("files", str(len(self.layout.file_sizes)))),
        )

    def verify(self, report: Any, progress: bool | None) -> None:
        """Read every chunk and object once; each failure becomes a problem of ``report``."""
        from ..verify import Problem

        report.format = "dcp"
        for entry in self.layout.tensors.values():
            for chunk in entry.chunks:
                report.records_checked += 1
                try:
                    read_chunk(self.layout.folder, chunk, entry.dtype)
                except CheckpointError as err:
                    report.problems.append(Problem(f"{entry.name}@{chunk.offsets}", str(err)))
        for entry in self.layout.objects.values():
            report.records_checked += 1
            try:
                read_object(self.layout, entry, weights_only=True)
            except CheckpointError as err:
                report.problems.append(Problem(entry.name, str(err)))

    def pickles(self) -> list[bytes]:
        """The pickles of the object entries (``.metadata`` is read with DCP's classes only)."""
        found = []
        for entry in self.layout.objects.values():
            with _window(self.layout.folder, entry.region) as window:
                found.append(open_zip_checkpoint(window).data_pkl)
        return found

    def close(self) -> None:
        pass  # every read opens and closes its own file


def _materializer(source: DcpSource, device_map: DeviceMap, *, skip_data: bool = False) -> Any:
    from ..materialize import StorageMaterializer

    return StorageMaterializer(source, device_map, skip_data=skip_data)
