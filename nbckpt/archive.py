"""Lazy, random-access view of a checkpoint of any format: list its arrays, load any one.

:func:`open` works on every format :func:`nbckpt.load` reads (torch zip,
legacy stream and tar, safetensors, sharded ``*.index.json`` checkpoints,
``.npz``; see :mod:`nbckpt.formats`). Opening reads what describes the arrays
(a zip directory and ``data.pkl``, a legacy file's pickles and storage
headers, a safetensors header, an index) — never a storage byte — so opening
and listing a 10 GB checkpoint costs as much as a 10 kB one. Each array is
read when asked for, and only its storage is read.

    >>> import io, numpy as np, nbckpt
    >>> buf = io.BytesIO()
    >>> nbckpt.save({"layer": {"weight": np.eye(3, dtype=np.float32)}, "step": 7}, buf)
    >>> _ = buf.seek(0)
    >>> with nbckpt.open(buf) as archive:
    ...     print([(r.name, r.shape, str(r.dtype)) for r in archive.records])
    ...     print(archive["layer.weight"][0], archive.values["step"])
    [('layer.weight', (3, 3), 'float32')]
    [1. 0. 0.] 7
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import operator
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .devices import DeviceMap
from .errors import FormatError
from .formats.base import ArrayRef, LoadOptions
from .formats.names import KEY_STR_LIMIT, NAMES_LIMIT, dotted_name, unique_names
from .formats.options import check_mmap_source, mmap_access
from .formats.recording import as_array_ref, holds_array, stands_for_array
from .formats.sniff import open_reader
from .materialize import StorageMaterializer, view_of_ref
from .meta import MetaArray
from .pickling import scan
from .display.tables import records_html

if TYPE_CHECKING:  # verify imports this module: no import cycle at run time
    from .verify import VerifyReport

__all__ = ["Archive", "Record", "ArchiveInfo", "open"]

_MAX_DEPTH = 200  # arrays deeper than this are refused (a FormatError), never silently left out


@dataclass(frozen=True)
class Record:
    """One array of an archive, described without reading it.

    ``offset`` and ``strides`` count elements of ``dtype`` within ``storage``
    (the ``data/<key>`` record of a zip checkpoint, the tensor's name in a
    safetensors file...); ``shares`` names the other records whose arrays view
    the same storage; ``shard`` names the file (or files) that hold the array
    in a sharded checkpoint (``""`` otherwise) and ``chunks`` how many pieces
    it is stored in (DCP folders; 1 otherwise).
    """

    name: str
    path: tuple
    shape: tuple[int, ...]
    dtype: np.dtype
    location: str
    nbytes: int
    storage: str
    offset: int
    strides: tuple[int, ...]
    shares: tuple[str, ...] = ()
    shard: str = ""
    chunks: int = 1

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _record(fields: dict[str, Any]) -> Record:
    """``Record(**fields)`` with every field given, made without the frozen dataclass's
    ``__init__`` (twelve ``object.__setattr__`` calls: 30 ms for 20,000 records)."""
    record = object.__new__(Record)
    object.__setattr__(record, "__dict__", fields)
    return record


@dataclass(frozen=True)
class ArchiveInfo:
    """What a checkpoint holds, read from its directory, header or pickle.

    ``format`` is the reader's short name (``"zip"``, ``"legacy"``, ``"tar"``,
    ``"safetensors"``, ``"sharded"``, ``"npz"``, ``"dcp"``) and ``description``
    one line for people; ``metadata`` is the file's own metadata
    (safetensors' ``__metadata__``); ``details`` are format-specific
    ``(label, value)`` rows (the shards of a sharded checkpoint...).
    """

    source: str
    format: str
    prefix: str
    version: int
    byteorder: str
    byteorder_recorded: bool
    records: int
    storages: int
    array_bytes: int
    file_bytes: int
    pickle_bytes: int
    globals: tuple[scan.GlobalRef, ...] = field(default=())
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    details: tuple[tuple[str, str], ...] = ()

    @property
    def refused_globals(self) -> list[str]:
        """Globals a ``weights_only`` load would refuse."""
        return [g.name for g in self.globals if not g.allowed]


def open(f: Any, *, map_location: Any = None, weights_only: bool = True,
         mmap: bool | str = False, storage_options: dict | None = None) -> "Archive":
    """Open a checkpoint lazily: see :class:`Archive`. Use it as a context manager.

    ``f`` is a checkpoint of any format nbckpt reads: a path (a file, or the
    folder of a sharded checkpoint), a seekable binary file object, or a URL (``s3://bucket/model.pt``, ``https://...``; ``storage_options``
    go to fsspec): opening then fetches the zip directory and ``data.pkl`` with
    ranged requests, and each array's bytes only when it is read.

        >>> import io, numpy as np, nbckpt
        >>> buf = io.BytesIO()
        >>> nbckpt.save({"a": np.arange(3)}, buf)
        >>> _ = buf.seek(0)
        >>> with nbckpt.open(buf) as archive:
        ...     len(archive), archive.info.format
        (1, 'zip')

    ``nbckpt.open(f).load()`` returns what ``nbckpt.load(f)`` does.
    """
    return Archive(f, map_location=map_location, weights_only=weights_only, mmap=mmap,
                   storage_options=storage_options)


class Archive:
    """A checkpoint opened for browsing: ``records``, ``archive[name]``, ``load()``.

    ``f`` is a path or a URL (kept open until :meth:`close`) or a seekable
    binary file object (used in place; do not use it elsewhere while the archive
    is open). ``map_location``, ``weights_only`` and ``mmap`` act as in
    :func:`nbckpt.load` on every array read from the archive; ``storage_options``
    go to fsspec for URLs.
    """

    def __init__(self, f: Any, *, map_location: Any = None, weights_only: bool = True,
                 mmap: bool | str = False, storage_options: dict | None = None) -> None:
        self._device_map = DeviceMap.parse(map_location)
        self._weights_only = weights_only
        self._access = mmap_access(mmap)
        check_mmap_source(f, self._access)
        self._reader = open_reader(f, weights_only=weights_only, storage_options=storage_options)
        self._owns_reader = True
        self._closed = False
        self.source = self._reader.source
        try:
            tree = self._reader.tree()
        except BaseException:
            self.close()
            raise
        records, refs, self.values = _index(tree)
        #: One Record per array, in the order the structure holds them.
        self.records: list[Record] = records
        self._refs = dict(zip(map(operator.attrgetter("path"), records), refs))
        names = list(map(operator.attrgetter("name"), records))
        self._by_name: dict[str, Record] = dict(zip(names, records))
        if len(self._by_name) != len(records):  # the first record of a name wins
            self._by_name = {}
            for record in records:
                self._by_name.setdefault(record.name, record)
        self._storage_roots: dict[str, tuple[Any, np.dtype, int]] = {}
        self._storage_backends: dict[str, Any] = {}
        self._materializer: StorageMaterializer | None = None

    @property
    def format(self) -> str:
        """The checkpoint's format: ``"zip"``, ``"legacy"``, ``"tar"``, ``"safetensors"``, ``"sharded"``, ``"npz"``..."""
        return self._reader.format

    # -- context manager --------------------------------------------------------------------

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the file if the archive opened it (arrays already loaded stay valid)."""
        if self._owns_reader:
            self._reader.close()
            self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` closed this archive's file (clones from :meth:`remapped` close nothing)."""
        return self._closed

    # -- listing ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def record(self, name: str | tuple) -> Record:
        """The record of ``name`` (dotted) or of a path tuple; KeyError if absent."""
        if isinstance(name, tuple):
            for record in self.records:
                if record.path == name:
                    return record
        elif name in self._by_name:
            return self._by_name[name]
        close = [r.name for r in self.records if str(name) in r.name][:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise KeyError(f"no array named {name!r} in {self.source}{hint}")

    @property
    def info(self) -> ArchiveInfo:
        """Format, byte order, counts and sizes, metadata, and the globals a pickle names."""
        info = self._reader.info()
        # Every field of the reader's FormatInfo, and what only the archive knows.
        fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
        fields["metadata"] = dict(info.metadata)  # the caller's own copy
        return ArchiveInfo(source=self.source, records=len(self.records), **fields)

    def verify(self, *, progress: bool | None = None) -> "VerifyReport":
        """Check the checkpoint (CRC-32s, sizes, pickle, views): see :func:`nbckpt.verify`."""
        from .verify import REPORT_FORMATS, VerifyReport

        report = VerifyReport(self.source, REPORT_FORMATS.get(self._reader.format, self._reader.format))
        self._reader.verify(report, progress)
        return report

    # -- loading ---------------------------------------------------------------------------------

    def __getitem__(self, name: str | tuple) -> Any:
        """Load one array (reading only its storage) onto its ``map_location`` device."""
        record = self.record(name)
        return self._materialize(self._refs[record.path])

    def remapped(self, map_location: Any) -> "Archive":
        """The same open archive, whose arrays load onto ``map_location`` instead.

        Nothing is read: the clone shares the file, the records and the values
        with this archive, and keeps its own cache of storages read (arrays from
        the two do not share memory). Closing either closes nothing of the
        other; the file stays open until this archive is closed.

            >>> import io, numpy as np, nbckpt
            >>> buf = io.BytesIO()
            >>> nbckpt.save({"w": np.ones(2)}, buf)
            >>> _ = buf.seek(0)
            >>> archive = nbckpt.open(buf, map_location="cuda:0")
            >>> archive.remapped("cpu")["w"]
            array([1., 1.])
        """
        clone = copy.copy(self)
        clone._device_map = DeviceMap.parse(map_location)
        clone._owns_reader = False
        clone._storage_roots, clone._storage_backends, clone._materializer = {}, {}, None
        return clone

    def load(self, *, progress: bool | None = None) -> Any:
        """Load the whole object, exactly as :func:`nbckpt.load` would; ``progress`` as there
        (``None``: a progress bar only for large checkpoints)."""
        options = LoadOptions(weights_only=self._weights_only, mmap_access=self._access, progress=progress)
        return self._reader.load(self._device_map, options)

    def _materialize(self, ref: ArrayRef | MetaArray) -> Any:
        if isinstance(ref, MetaArray):
            return ref
        materializer = self._storage_reader()
        sref = ref.storage
        storage = self._cached_storage(sref.key)
        if storage is None:
            storage = materializer.storage(sref.key, sref.dtype, sref.numel, sref.location, sref.untyped)
            self._remember_storage(sref.key, storage, materializer.backend_of(storage))
        else:
            materializer.adopt(storage, self._storage_backends[sref.key])
        return view_of_ref(ref, storage, materializer)

    def _storage_reader(self) -> StorageMaterializer:
        if self._materializer is None:
            source = self._reader.storages(mmap_access=self._access)
            self._materializer = StorageMaterializer(source, self._device_map, byteorder=self._reader.byteorder)
        return self._materializer

    # Storages already read are reused while any array from them is alive, so
    # arrays asked for one by one share memory as they did in the file. Arrays
    # keep only the root of their storage's memory alive (NumPy collapses base
    # chains; CuPy views hold the allocation), so the cache holds a weak
    # reference to that root and rebuilds the storage from it.

    def _remember_storage(self, key: str, storage: Any, backend: Any) -> None:
        root = backend.root(storage)
        try:
            reference = weakref.ref(root)
        except TypeError:  # a memory object without weak references: keep it alive
            reference = lambda root=root: root  # noqa: E731
        self._storage_roots[key] = (reference, storage.dtype, storage.nbytes)
        self._storage_backends[key] = backend

    def _cached_storage(self, key: str) -> Any:
        entry = self._storage_roots.get(key)
        if entry is None:
            return None
        root = entry[0]()
        if root is None:
            del self._storage_roots[key]
            return None
        return self._storage_backends[key].storage_from_root(root, entry[1], entry[2])

    # -- display -------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<nbckpt.Archive {self.source}: {len(self.records)} arrays>"

    def _repr_html_(self) -> str:
        return records_html(self)


def _holders_of_arrays(tree: Any) -> set[int]:
    """ids of the containers in ``tree`` that hold an array at some depth.

    Iterative post-order walk, each container once (linear however deep or shared): a
    container holds arrays if any child is an array or a holder. Only containers are pushed,
    and a child costs one set lookup or one isinstance (a hostile file of 100,000 nested
    lists is walked in well under a second).
    """
    holders: set[int] = set()
    visited: set[int] = set()
    containers = (dict, list, tuple)
    stack: list[tuple[Any, Any]] = [(tree, None)]
    while stack:
        obj, children = stack.pop()
        if children is not None:  # second visit: every child container has been decided
            for child in children:
                if id(child) in holders or stands_for_array(child):
                    holders.add(id(obj))
                    break
            continue
        if id(obj) in visited or not isinstance(obj, containers):
            continue
        visited.add(id(obj))
        children = tuple(dict.values(obj)) if isinstance(obj, dict) else tuple(obj)
        stack.append((obj, children))
        stack.extend((child, None) for child in children if isinstance(child, containers))
    return holders


def _refuse_hidden_arrays(path: tuple, obj: Any, *, attributes_only: bool = False) -> None:
    """FormatError if ``obj`` (a value; or only its attributes) holds an array the listing would omit."""
    if attributes_only:
        try:  # not vars(): an allowlisted class may define __dict__ itself
            obj = object.__getattribute__(obj, "__dict__")
        except (AttributeError, TypeError):
            return
    if holds_array(obj):
        raise FormatError(
            f"the checkpoint holds an array inside {dotted_name(path[:3]) or 'its object'!r} where nbckpt.open "
            f"does not list arrays (in an attribute, a set or an object): it would be left out of the listing. "
            f"Load it with nbckpt.load instead.")


def _flat_arrays(tree: Any) -> list[tuple[tuple, ArrayRef]] | None:
    """``[((key,), ref), ...]`` when ``tree`` is a dict (a state dict) whose values are all
    :class:`ArrayRef` objects, as the walk of :func:`_index` would find them; else None."""
    if not isinstance(tree, dict):
        return None
    items = list(dict.items(tree))
    if not all(isinstance(value, ArrayRef) for _, value in items):
        return None
    _refuse_hidden_arrays((), tree, attributes_only=True)  # as the walk checks every container
    return [((key,), value) for key, value in items]


_RECORD_FIELDS = ("name", "path", "shape", "dtype", "location", "nbytes", "storage", "offset", "strides",
                  "shares", "shard", "chunks")


def _flat_index(tree: Any) -> tuple[list[Record], list[ArrayRef], dict[str, Any]] | None:
    """What :func:`_index` gives for a state dict of arrays (see :func:`_flat_arrays`), column
    by column, when it is the plain case: every key a ``str`` that is its own dotted name (so
    names are the keys, distinct), every array on a storage of its own, every dtype with
    elements of at least one byte. None otherwise (the record-by-record loop decides)."""
    if not isinstance(tree, dict) or not tree:
        return None
    keys, refs = list(dict.keys(tree)), list(dict.values(tree))
    if not all(map(isinstance, refs, itertools.repeat(ArrayRef))) or set(map(type, keys)) != {str}:
        return None
    _refuse_hidden_arrays((), tree, attributes_only=True)  # as the walk checks every container
    paths = list(zip(keys))
    lengths = list(map(len, keys))
    if max(lengths) > KEY_STR_LIMIT or sum(lengths) > NAMES_LIMIT:
        return None  # names by digest, or too long: unique_names decides (and refuses)
    storages = list(map(operator.attrgetter("storage"), refs))
    storage_keys = list(map(operator.attrgetter("key"), storages))
    if len(set(storage_keys)) != len(storage_keys):
        return None  # arrays sharing a storage: their records name each other
    dtypes = list(map(operator.attrgetter("dtype"), refs))
    itemsizes = list(map(operator.attrgetter("itemsize"), dtypes))
    if min(itemsizes) <= 0:
        return None
    shapes = list(map(operator.attrgetter("shape"), refs))
    strides = list(map(operator.attrgetter("strides"), refs))
    element_strides = {pair: () if pair[0] is None else tuple([s // pair[1] for s in pair[0]])
                       for pair in set(zip(strides, itemsizes))}
    nbytes = {pair: math.prod(pair[0]) * pair[1] for pair in set(zip(shapes, itemsizes))}
    repeat = itertools.repeat
    rows = zip(keys, paths, shapes, dtypes, map(operator.attrgetter("location"), storages),
               map(nbytes.__getitem__, zip(shapes, itemsizes)), storage_keys,
               map(operator.floordiv, map(operator.attrgetter("offset"), refs), itemsizes),
               map(element_strides.__getitem__, zip(strides, itemsizes)), repeat(()),
               map(operator.attrgetter("shard"), storages), map(operator.attrgetter("chunks"), storages))
    records = list(map(_record, map(dict, map(zip, repeat(_RECORD_FIELDS), rows))))
    return records, list(refs), {}


def _index(tree: Any) -> tuple[list[Record], list[ArrayRef], dict[str, Any]]:
    """Walk the loaded structure: one Record per array, and the other leaf values."""
    found: list[tuple[tuple, ArrayRef]] = []
    values: dict[str, Any] = {}
    value_items: list[tuple[tuple, Any]] = []
    stack: list[tuple[tuple, Any, int]] = [((), tree, 0)]
    seen: set[int] = set()
    indexed = _flat_index(tree)
    if indexed is not None:  # a state dict of arrays, the plain case: column by column
        return indexed
    flat = _flat_arrays(tree)
    if flat is not None:  # what the walk below finds in a dict of arrays, without walking
        found, stack = flat, []
    holds_arrays = _holders_of_arrays(tree) if stack else set()
    while stack:
        path, obj, depth = stack.pop()
        if isinstance(obj, (ArrayRef, MetaArray)):
            found.append((path, obj))
            continue
        stored_alone = as_array_ref(obj)  # a storage saved on its own loads as a 1-D array
        if stored_alone is not None:
            found.append((path, stored_alone))
            continue
        # Containers without arrays (hyper-parameters, betas...) are one value each; the
        # top-level dict is always listed entry by entry.
        if isinstance(obj, (dict, list, tuple)) and (id(obj) in holds_arrays or (not path and isinstance(obj, dict))):
            if depth >= _MAX_DEPTH:
                raise FormatError(
                    f"the checkpoint holds arrays nested more than {_MAX_DEPTH} containers deep (at "
                    f"{dotted_name(path[:3])}...); nbckpt.open lists arrays down to that depth only. Load it "
                    f"with nbckpt.load instead.")
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            _refuse_hidden_arrays(path, obj, attributes_only=True)  # an OrderedDict's BUILD attributes
            # dict.items, not obj.items: a loaded mapping's attributes are the file's.
            items = dict.items(obj) if isinstance(obj, dict) else enumerate(obj)
            children = [(path + (k,), v, depth + 1) for k, v in items]
            stack.extend(reversed(children))
            continue
        _refuse_hidden_arrays(path, obj)
        value_items.append((path, obj))
    # Every entry under a name no other entry has ({"a.b": x} and {"a": {"b": y}} are
    # named apart), so that nothing looked up by name is silently missed (issue 15).
    all_names = unique_names([path for path, _ in found] + [path for path, _ in value_items])
    names = all_names[:len(found)]
    values.update(zip(all_names[len(found):], (obj for _, obj in value_items)))
    by_storage: dict[str, list[str]] = {}
    for (path, ref), name in zip(found, names):
        if isinstance(ref, ArrayRef):
            by_storage.setdefault(ref.storage.key, []).append(name)
    records = []
    element_strides: dict[tuple, tuple] = {}  # (byte strides, itemsize) -> strides in elements
    for (path, ref), name in zip(found, names):
        if isinstance(ref, MetaArray):
            records.append(Record(name=name, path=path, shape=ref.shape, dtype=ref.dtype, location="meta",
                                  nbytes=ref.nbytes, storage="", offset=0, strides=ref.strides))
            continue
        itemsize = ref.dtype.itemsize
        storage = ref.storage
        strides = ()
        if ref.strides is not None:
            strides = element_strides.get((ref.strides, itemsize))
            if strides is None:
                strides = element_strides[(ref.strides, itemsize)] = tuple([s // itemsize for s in ref.strides])
        sharing = by_storage[storage.key]
        records.append(_record({
            "name": name, "path": path, "shape": ref.shape, "dtype": ref.dtype, "location": storage.location,
            "nbytes": math.prod(ref.shape) * itemsize, "storage": storage.key,
            "offset": ref.offset // itemsize if itemsize else 0, "strides": strides,
            "shares": () if len(sharing) == 1 else tuple([n for n in sharing if n != name]),
            "shard": storage.shard, "chunks": storage.chunks,
        }))
    return records, [ref for _, ref in found], values
