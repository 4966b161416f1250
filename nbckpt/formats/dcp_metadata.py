"""The ``.metadata`` file of a torch.distributed.checkpoint (DCP) folder, read and written without torch.

``.metadata`` is a pickle (protocol 2 or higher) of DCP's dataclasses, which
nbckpt implements here as plain classes with the same fields. Reading runs the
pickle in nbckpt's safe VM (:class:`nbckpt.pickling.unpickler.SafeUnpickler`)
with exactly these classes allowed, through the allowlist's own scoped
mechanism (:func:`nbckpt.pickling.allowlist.safe_globals`), only while a
``.metadata`` is read; nothing is imported from torch and no code from the file
runs. Writing emits the same GLOBAL names torch pickles, so
``torch.distributed.checkpoint.load`` reads the result with its own classes.

The structure (torch 2.x, ``torch/distributed/checkpoint/metadata.py`` and
``filesystem.py``):

- ``Metadata``: ``state_dict_metadata`` (flat name -> ``TensorStorageMetadata``
  or ``BytesStorageMetadata``), ``planner_data`` (flat name -> the tuple of keys
  and list indices that nest it: ``"optim.state.0.exp_avg" -> ("optim",
  "state", "0", "exp_avg")``), ``storage_data`` (``MetadataIndex`` ->
  ``_StorageInfo``), ``storage_meta`` and ``version``.
- ``TensorStorageMetadata``: ``properties`` (``TensorProperties``: dtype,
  layout, requires_grad, memory format as ``_MEM_FORMAT_ENCODING``, pin_memory;
  pickled as a 5-tuple), global ``size`` (``torch.Size``) and ``chunks``
  (``ChunkStorageMetadata``: ``offsets`` and ``sizes``, each a ``torch.Size``).
- ``MetadataIndex``: ``fqn`` (the flat name), ``offset`` (the chunk's offsets
  for tensors, None for bytes entries) and an ``index`` hint that is neither
  hashed nor compared.
- ``_StorageInfo``: ``relative_path`` (the ``__R_I.distcp`` file), ``offset``
  and ``length`` in that file, and optionally ``transform_descriptors``
  (stream extensions such as compression; none means the bytes are as written).
- ``StorageMeta``: ``checkpoint_id`` (often a ``pathlib.PosixPath``, read back
  as a ``str``), ``save_id``, ``load_id``, ``modules``.

    >>> md = Metadata({"w": TensorStorageMetadata(TensorProperties("float32"), (2, 3),
    ...                                           [ChunkStorageMetadata((0, 0), (2, 3))])})
    >>> md.storage_data = {MetadataIndex("w", (0, 0), 0): StorageInfo("__0_0.distcp", 0, 24)}
    >>> back = read_metadata(dump_metadata(md))
    >>> back.state_dict_metadata["w"].size, back.storage_data[MetadataIndex("w", (0, 0))].length
    ((2, 3), 24)
"""

from __future__ import annotations

import enum
import posixpath
import struct
from typing import Any

import numpy as np

from ..errors import CheckpointError, FormatError, UnpicklingError
from ..format import dtypes as torch_dtypes
from ..pickling import allowlist
from ..pickling.rebuild import Rebuilder, TorchMarker
from ..pickling.unpickler import SafeUnpickler

__all__ = [
    "ChunkStorageMetadata", "TensorProperties", "TensorStorageMetadata", "BytesStorageMetadata",
    "Metadata", "MetadataIndex", "StorageInfo", "StorageMeta", "MemFormatEncoding",
    "METADATA_GLOBALS", "read_metadata", "dump_metadata", "METADATA_LIMIT",
]

#: A ``.metadata`` larger than this is refused before it is read (1 GiB: millions of chunks).
METADATA_LIMIT = 1 << 30

_MD = "torch.distributed.checkpoint.metadata"
_FS = "torch.distributed.checkpoint.filesystem"


def _fields(obj: Any, state: Any, names: tuple[str, ...]) -> None:
    """BUILD for the classes below: set the known fields of a dict state, ignore newer ones."""
    if state is None:
        return
    if not isinstance(state, dict):
        raise FormatError(
            f".metadata: a {type(obj).__name__} is built from a dict of fields, found a "
            f"{type(state).__name__}", record=".metadata")
    for name in names:
        if name in state:
            object.__setattr__(obj, name, state[name])


class _Fields:
    """Base of the classes below: every instance has all its fields, at their defaults until set.

    A pickle may make an object with NEWOBJ (``cls.__new__``, no ``__init__``) and never BUILD it;
    the reader must then find defaults (and refuse them where they mean nothing), not a missing
    attribute.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        cls.__init__(obj)
        return obj


class ChunkStorageMetadata(_Fields):
    """One chunk of a tensor: where it starts (``offsets``) and how big it is (``sizes``)."""

    def __init__(self, offsets: tuple[int, ...] = (), sizes: tuple[int, ...] = ()) -> None:
        self.offsets, self.sizes = offsets, sizes

    def __setstate__(self, state: Any) -> None:
        self.offsets, self.sizes = (), ()
        _fields(self, state, ("offsets", "sizes"))

    def __repr__(self) -> str:
        return f"ChunkStorageMetadata(offsets={self.offsets}, sizes={self.sizes})"


class MemFormatEncoding(enum.Enum):
    """DCP's ``_MEM_FORMAT_ENCODING``: how ``TensorProperties`` pickles a memory format."""

    TORCH_CONTIGUOUS_FORMAT = 0
    TORCH_CHANNELS_LAST = 1
    TORCH_PRESERVE_FORMAT = 2


class TensorProperties(_Fields):
    """A tensor's dtype (here: torch's name, ``"float32"``) and its deprecated layout fields."""

    def __init__(self, dtype: str = "float32", layout: str = "torch.strided", requires_grad: bool = False,
                 memory_format: MemFormatEncoding = MemFormatEncoding.TORCH_CONTIGUOUS_FORMAT,
                 pin_memory: bool = False) -> None:
        self.dtype, self.layout, self.requires_grad = dtype, layout, requires_grad
        self.memory_format, self.pin_memory = memory_format, pin_memory

    def __setstate__(self, state: Any) -> None:
        self.__init__()  # type: ignore[misc]
        if isinstance(state, dict):  # torch before TensorProperties had __getstate__
            _fields(self, state, ("dtype", "layout", "requires_grad", "memory_format", "pin_memory"))
        elif isinstance(state, tuple) and len(state) == 5:
            self.dtype, self.layout, self.requires_grad, self.memory_format, self.pin_memory = state
        else:
            raise FormatError(
                f".metadata: TensorProperties are a 5-tuple (dtype, layout, requires_grad, memory "
                f"format, pin_memory), found {type(state).__name__}", record=".metadata")
        self.dtype = _dtype_name(self.dtype)
        if isinstance(self.layout, TorchMarker):
            self.layout = self.layout.name

    def __repr__(self) -> str:
        return f"TensorProperties(dtype={self.dtype})"


def _dtype_name(value: Any) -> Any:
    """torch's name of a dtype the safe VM resolved (it resolves ``torch.float32`` to NumPy's)."""
    if isinstance(value, np.dtype):
        found = torch_dtypes.for_numpy(value)
        return found.name if found is not None else value
    return value


class TensorStorageMetadata(_Fields):
    """A tensor's properties, global size and chunks."""

    def __init__(self, properties: TensorProperties | None = None, size: tuple[int, ...] = (),
                 chunks: list[ChunkStorageMetadata] | None = None) -> None:
        self.properties = properties if properties is not None else TensorProperties()
        self.size, self.chunks = size, chunks if chunks is not None else []

    def __setstate__(self, state: Any) -> None:
        self.properties, self.size, self.chunks = None, (), []
        _fields(self, state, ("properties", "size", "chunks"))

    def __repr__(self) -> str:
        return f"TensorStorageMetadata({self.properties!r}, size={self.size}, {len(self.chunks)} chunks)"


class BytesStorageMetadata(_Fields):
    """A non-tensor entry: a ``torch.save`` stream of any object."""

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "BytesStorageMetadata()"


class StorageMeta(_Fields):
    """Who saved the checkpoint (informational)."""

    def __init__(self, checkpoint_id: Any = None, save_id: str | None = None, load_id: str | None = None,
                 modules: list | None = None) -> None:
        self.checkpoint_id, self.save_id, self.load_id = checkpoint_id, save_id, load_id
        self.modules = modules if modules is not None else []

    def __setstate__(self, state: Any) -> None:
        self.__init__()  # type: ignore[misc]
        _fields(self, state, ("checkpoint_id", "save_id", "load_id", "modules"))


class Metadata(_Fields):
    """The whole ``.metadata``: see the module docstring."""

    def __init__(self, state_dict_metadata: dict | None = None, planner_data: Any = None,
                 storage_data: Any = None, storage_meta: StorageMeta | None = None,
                 version: str | None = None) -> None:
        self.state_dict_metadata = state_dict_metadata if state_dict_metadata is not None else {}
        self.planner_data, self.storage_data = planner_data, storage_data
        self.storage_meta, self.version = storage_meta, version

    def __setstate__(self, state: Any) -> None:
        self.__init__()  # type: ignore[misc]
        _fields(self, state, ("state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"))


class MetadataIndex(_Fields):
    """A key of ``storage_data``: a flat name and, for a tensor chunk, its offsets.

    Equal and hashed on ``(fqn, offset)``; ``index`` is only a hint, as in torch.
    """

    def __init__(self, fqn: str = "", offset: tuple[int, ...] | None = None, index: int | None = None) -> None:
        self.fqn = fqn
        self.offset = tuple(offset) if offset is not None else None
        self.index = index

    def __setstate__(self, state: Any) -> None:
        self.__init__()  # type: ignore[misc]
        _fields(self, state, ("fqn", "offset", "index"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetadataIndex) and (self.fqn, self.offset) == (other.fqn, other.offset)

    def __hash__(self) -> int:
        try:
            return hash((self.fqn, self.offset))
        except TypeError:  # a hostile file's unhashable fqn or offset
            raise FormatError(
                f".metadata: a storage_data key holds unhashable values ({type(self.fqn).__name__}, "
                f"{type(self.offset).__name__}); expected a name and a tuple of offsets", record=".metadata"
            ) from None

    def __repr__(self) -> str:
        return f"MetadataIndex({self.fqn!r}, offset={self.offset})"


class StorageInfo(_Fields):
    """DCP's ``_StorageInfo``: where an entry's bytes are (file relative to the folder, offset, length)."""

    def __init__(self, relative_path: str = "", offset: int = 0, length: int = 0,
                 transform_descriptors: Any = None) -> None:
        self.relative_path, self.offset, self.length = relative_path, offset, length
        self.transform_descriptors = transform_descriptors

    def __setstate__(self, state: Any) -> None:
        self.__init__()  # type: ignore[misc]
        _fields(self, state, ("relative_path", "offset", "length", "transform_descriptors"))

    def __repr__(self) -> str:
        return f"StorageInfo({self.relative_path!r}, offset={self.offset}, length={self.length})"


def checkpoint_path(*parts: Any) -> str:
    """``pathlib.PosixPath(*parts)`` as DCP pickles ``checkpoint_id``, read back as a plain ``str``."""
    if not all(isinstance(p, str) for p in parts):
        raise FormatError(".metadata: a pathlib path is made of strings", record=".metadata")
    return posixpath.join(*parts) if parts else "."


#: The globals a ``.metadata`` may name, each mapped to nbckpt's class (allowed only while one is read).
METADATA_GLOBALS: tuple[tuple[Any, str], ...] = (
    (Metadata, f"{_MD}.Metadata"),
    (TensorStorageMetadata, f"{_MD}.TensorStorageMetadata"),
    (BytesStorageMetadata, f"{_MD}.BytesStorageMetadata"),
    (ChunkStorageMetadata, f"{_MD}.ChunkStorageMetadata"),
    (TensorProperties, f"{_MD}.TensorProperties"),
    (MemFormatEncoding, f"{_MD}._MEM_FORMAT_ENCODING"),
    (MetadataIndex, f"{_MD}.MetadataIndex"),
    (StorageMeta, f"{_MD}.StorageMeta"),
    (StorageInfo, f"{_FS}._StorageInfo"),
)
# pathlib is on the allowlist's blocked list (a path can reach the file system), so
# ``checkpoint_id`` paths are not user globals: the metadata unpickler maps them to
# :func:`checkpoint_path`, which only joins strings.
PATH_GLOBALS = frozenset({"pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path",
                           "pathlib.PurePosixPath", "pathlib.PureWindowsPath"})


class MetadataRebuilder(Rebuilder):
    """nbckpt's rebuilder (torch.Size, dtypes, layouts) plus :func:`checkpoint_path` for pathlib paths."""

    def __init__(self) -> None:
        super().__init__(None)
        for name in PATH_GLOBALS:  # ``globals`` and ``callables`` are the rebuilder's declared tables
            self.globals[name] = checkpoint_path
        self.callables.add(id(checkpoint_path))

    def persistent_load(self, pid: Any) -> Any:
        raise FormatError(".metadata holds a persistent id; DCP metadata never references storages",
                          record=".metadata")


class MetadataUnpickler(SafeUnpickler):
    """The safe VM, resolving pathlib's path classes (blocked elsewhere) to :func:`checkpoint_path`."""

    def find_class(self, module: str, name: str) -> Any:
        dotted = f"{module}.{name}"
        if dotted in PATH_GLOBALS:
            self.globals_seen.append(dotted)
            return checkpoint_path
        return super().find_class(module, name)


def read_metadata(data: bytes) -> Metadata:
    """The :class:`Metadata` in a ``.metadata`` file's bytes, run through the safe VM.

    Any global outside DCP's classes (and nbckpt's usual allowlist of
    torch.Size, dtypes, layouts) raises :class:`nbckpt.UnpicklingError`; a
    pickle that is not a ``Metadata`` raises :class:`nbckpt.FormatError`.
    """
    if len(data) > METADATA_LIMIT:
        raise FormatError(f".metadata is {len(data)} bytes; nbckpt reads at most {METADATA_LIMIT}",
                          record=".metadata")
    with allowlist.safe_globals(METADATA_GLOBALS):
        try:
            result = MetadataUnpickler(data, MetadataRebuilder()).load()
        except UnpicklingError as err:
            raise UnpicklingError(f".metadata: {err}", global_name=err.global_name) from None
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as err:
            raise FormatError(f".metadata is not a valid DCP metadata pickle: {type(err).__name__}: {err}",
                              record=".metadata") from None
    if not isinstance(result, Metadata):
        raise FormatError(
            f".metadata holds a {type(result).__name__}, expected torch.distributed.checkpoint's Metadata: "
            f"this folder is not a DCP checkpoint", record=".metadata")
    return result


# -- writing --------------------------------------------------------------------------------------

_pack_i4 = struct.Struct("<i").pack
_pack_u4 = struct.Struct("<I").pack
_BATCH = 1000


class MetadataPickler:
    """Writes a :class:`Metadata` as the protocol-2 pickle torch writes, naming torch's classes.

    GLOBALs are written by name (torch is never imported) and memoized, so each
    class name appears once in the file.
    """

    _NAMES = {cls: name for cls, name in METADATA_GLOBALS}

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._memo: dict[str, int] = {}

    def dumps(self, obj: Any) -> bytes:
        self._out = [b"\x80\x02"]
        self._memo = {}
        self._save(obj)
        self._out.append(b".")
        return b"".join(self._out)

    def _global(self, dotted: str) -> None:
        index = self._memo.get(dotted)
        if index is not None:
            self._out.append(b"j" + _pack_u4(index))
            return
        module, _, name = dotted.rpartition(".")
        self._out.append(b"c" + f"{module}\n{name}\n".encode("ascii"))
        index = self._memo[dotted] = len(self._memo)
        self._out.append(b"r" + _pack_u4(index))

    def _reduce(self, dotted: str, *args: Any) -> None:
        self._global(dotted)
        self._save(tuple(args))
        self._out.append(b"R")

    def _object(self, obj: Any, state: Any) -> None:
        self._global(self._NAMES[type(obj)])
        self._out.append(b")\x81")  # EMPTY_TUPLE NEWOBJ: cls.__new__(cls)
        self._save(state)
        self._out.append(b"b")  # BUILD

    def _size(self, values: tuple[int, ...]) -> None:
        self._reduce("torch.Size", tuple(int(v) for v in values))

    def _save(self, obj: Any) -> None:  # noqa: C901 - one branch per type written
        out = self._out
        if obj is None:
            out.append(b"N")
        elif obj is True or obj is False:
            out.append(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            if -(1 << 31) <= obj < (1 << 31):
                out.append(b"J" + _pack_i4(obj))
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                out.append(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(obj, str):
            raw = obj.encode("utf-8", "surrogatepass")
            out.append(b"X" + _pack_u4(len(raw)) + raw)
        elif type(obj) is tuple:
            out.append(b"(")
            for item in obj:
                self._save(item)
            out.append(b"t")
        elif type(obj) is list:
            out.append(b"]")
            for start in range(0, len(obj), _BATCH):
                out.append(b"(")
                for item in obj[start : start + _BATCH]:
                    self._save(item)
                out.append(b"e")
        elif type(obj) is dict:
            out.append(b"}")
            items = list(obj.items())
            for start in range(0, len(items), _BATCH):
                out.append(b"(")
                for key, value in items[start : start + _BATCH]:
                    self._save(key)
                    self._save(value)
                out.append(b"u")
        elif isinstance(obj, Metadata):
            self._object(obj, {"state_dict_metadata": obj.state_dict_metadata, "planner_data": obj.planner_data,
                               "storage_data": obj.storage_data, "storage_meta": obj.storage_meta,
                               "version": obj.version})
        elif isinstance(obj, TensorStorageMetadata):
            self._global(self._NAMES[TensorStorageMetadata])
            out.append(b")\x81")
            out.append(b"}(")
            self._save("properties")
            self._save(obj.properties)
            self._save("size")
            self._size(obj.size)
            self._save("chunks")
            self._save(obj.chunks)
            out.append(b"ub")
        elif isinstance(obj, ChunkStorageMetadata):
            self._global(self._NAMES[ChunkStorageMetadata])
            out.append(b")\x81}(")
            self._save("offsets")
            self._size(obj.offsets)
            self._save("sizes")
            self._size(obj.sizes)
            out.append(b"ub")
        elif isinstance(obj, TensorProperties):
            self._global(self._NAMES[TensorProperties])
            out.append(b")\x81(")
            self._global(f"torch.{obj.dtype}")
            self._reduce("torch.serialization._get_layout", "torch.strided")
            self._save(bool(obj.requires_grad))
            self._reduce(self._NAMES[MemFormatEncoding], MemFormatEncoding(obj.memory_format).value)
            self._save(bool(obj.pin_memory))
            out.append(b"tb")
        elif isinstance(obj, BytesStorageMetadata):
            self._global(self._NAMES[BytesStorageMetadata])
            out.append(b")\x81")
        elif isinstance(obj, MetadataIndex):
            self._global(self._NAMES[MetadataIndex])
            out.append(b")\x81}(")
            self._save("fqn")
            self._save(obj.fqn)
            if obj.offset is not None:
                self._save("offset")
                self._size(obj.offset)
            self._save("index")
            self._save(obj.index)
            out.append(b"ub")
        elif isinstance(obj, StorageInfo):
            state = {"relative_path": obj.relative_path, "offset": obj.offset, "length": obj.length}
            if obj.transform_descriptors is not None:
                state["transform_descriptors"] = list(obj.transform_descriptors)
            self._object(obj, state)
        elif isinstance(obj, StorageMeta):
            self._object(obj, {"checkpoint_id": obj.checkpoint_id, "save_id": obj.save_id,
                               "load_id": obj.load_id, "modules": list(obj.modules)})
        else:
            raise TypeError(f"DCP metadata cannot hold a {type(obj).__name__}")


def dump_metadata(metadata: Metadata) -> bytes:
    """The bytes of a ``.metadata`` file for ``metadata`` (torch's names, protocol 2)."""
    return MetadataPickler().dumps(metadata)
