"""The reader of sharded checkpoints: an ``*.index.json`` and the shard files it names.

Hugging Face writes large models as several files and one index, either
``model.safetensors.index.json`` (safetensors shards) or
``pytorch_model.bin.index.json`` (torch shards)::

    {"metadata": {"total_size": 123},
     "weight_map": {"embed.weight": "model-00001-of-00003.safetensors", ...}}

The checkpoint is opened as one flat ``{name: array}``, in ``weight_map``
order; each record's ``shard`` says which file holds it. Shard names MUST be
relative paths inside the index's folder (``..``, absolute paths and links
leading outside are refused when the index is opened). Opening reads the index
and each shard's header (or zip directory and pickle), never a storage byte; a
shard's data is read only when one of its arrays is. A shard that is missing
lists its arrays (with ``location`` ``"missing"``) and raises
:class:`nbckpt.FormatError` naming the file when one of them is read.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..devices import DeviceMap
from ..errors import CheckpointError, FormatError
from ..format import dtypes as torch_dtypes
from ..materialize import read_flat
from ..text import escape  # shard names come from the index: no newline of theirs starts a line
from .base import ArrayRef, FormatInfo, LoadOptions, StorageRef
from .sniff import Target, find_index, reader_class, sniff_stream

__all__ = ["ShardedReader", "INDEX_LIMIT", "shard_path"]

#: An index JSON larger than this is refused (real ones are a few hundred kB).
INDEX_LIMIT = 64 << 20

MISSING = "missing"


def shard_path(folder: str, name: Any) -> str:
    """The path of shard ``name`` inside ``folder``; FormatError if it would lie outside.

        >>> shard_path("/models/m", "model-00001-of-00002.safetensors")
        '/models/m/model-00001-of-00002.safetensors'
        >>> shard_path("/models/m", "../secret.bin")
        Traceback (most recent call last):
        ...
        nbckpt.errors.FormatError: the index names shard '../secret.bin', which is outside its folder /models/m: ...
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise FormatError(f"the index names shard {name!r:.100}, expected a file name", record="weight_map")
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, path]) != root or path == root:
        raise FormatError(
            f"the index names shard {name!r}, which is outside its folder {escape(folder)}: shards must be files "
            f"next to the index. The index is corrupt or hostile; nothing was read.", record="weight_map")
    return os.path.join(folder, name)


def _open_shard(shard: str, path: str, weights_only: bool) -> Any:
    """The reader of one shard file; FormatError if it is itself an index (a shard holds arrays:
    an index naming an index, or itself, would be opened again and again)."""
    target = Target(open(path, "rb"), True, path, path)  # noqa: SIM115 - the reader closes it
    try:
        fmt = sniff_stream(target.stream, path=path)
        if fmt == "sharded":
            raise FormatError(f"shard {escape(shard)} is a sharded checkpoint's index (JSON), not a checkpoint "
                              f"file: a shard holds arrays (safetensors, torch or npz). The index is corrupt or "
                              f"hostile.", record=shard)
        return reader_class(fmt)(target, weights_only=weights_only)  # the file opened once, as open_reader does
    except BaseException:
        target.close()
        raise


class ShardedReader:
    """A sharded checkpoint (index JSON or its folder): see :class:`nbckpt.formats.base.Reader`."""

    format = "sharded"
    byteorder = "little"

    def __init__(self, target: Any, *, weights_only: bool = True) -> None:
        self._target = target
        self._weights_only = weights_only
        self._options = target.storage_options
        if target.stream is None:  # a folder
            index_path = find_index(target.path)
            self._folder = target.path
            with open(index_path, "rb") as stream:  # type: ignore[arg-type]
                raw = stream.read(INDEX_LIMIT + 1)
        else:
            if target.path is None:
                raise FormatError(
                    "this is a sharded checkpoint's index (JSON); its shards are files next to it, so "
                    "nbckpt needs its path: pass the path of the .index.json (or of its folder), not a "
                    "file object")
            index_path = target.path
            self._folder = os.path.dirname(target.path) or "."
            raw = target.stream.read(INDEX_LIMIT + 1)
            target.close()
        self.source = target.source
        self.index_path = index_path
        self.metadata, weight_map = _parse_index(raw, index_path)
        self._shard_names = list(dict.fromkeys(weight_map.values()))
        self._paths = {shard: shard_path(self._folder, shard) for shard in self._shard_names}
        self._open_shards: dict[str, Any] = {}
        self._refs: dict[str, Any] = {}
        self._inner: dict[str, tuple[str, str]] = {}  # storage key -> (shard, key in the shard)
        self._byteorders: dict[str, str] = {}
        self._weight_map = weight_map
        self._described = False
        self.byteorder = "little"
        # The shards are described (their pickles run, over a recorder) on first use, not
        # here: nbckpt.scan opens this reader to read the shards' pickles *without* running
        # them, and must report a hostile shard's globals rather than fail on them.

    def _ensure_described(self) -> None:
        if not self._described:
            self._describe(self._weight_map)
            self._described = True

    def _describe(self, weight_map: dict[str, str]) -> None:
        from .recording import holds_array

        by_shard: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(name)
        described: dict[str, Any] = {}
        for shard, names in by_shard.items():
            path = self._paths[shard]
            if not os.path.isfile(path):
                for name in names:
                    key = f"{shard}/{name}"
                    self._inner[key] = (shard, name)
                    storage = StorageRef(key, torch_dtypes.by_torch_name("uint8"), 0, MISSING, shard=shard)
                    described[name] = ArrayRef(storage, np.dtype(np.uint8), 0, (0,), (1,))
                continue
            reader = _open_shard(shard, path, self._weights_only)
            try:
                tree = reader.tree()
                self._byteorders[shard] = reader.byteorder
            finally:
                reader.close()
            if not isinstance(tree, dict):
                raise FormatError(f"shard {escape(shard)} holds a {type(tree).__name__}, expected a dict of arrays",
                                  record=shard)
            renamed: dict[int, StorageRef] = {}
            for name in names:
                if name not in tree:
                    raise FormatError(f"the index puts {name!r} in shard {escape(shard)}, which does not hold it: the "
                                      f"index and the shards do not match", record=shard)
                entry = tree[name]
                if not isinstance(entry, ArrayRef) and holds_array(entry):
                    # Arrays nested in the entry would keep the shard's own storage keys, which
                    # name nothing here: refused rather than listed with keys that fail later.
                    raise FormatError(f"the index names {name!r} in shard {escape(shard)}, which holds a "
                                      f"{type(entry).__name__} of arrays there, not one array: a sharded "
                                      f"index names single arrays", record=shard)
                described[name] = self._in_shard(entry, shard, renamed)
        self._refs = {name: described[name] for name in weight_map}
        orders = set(self._byteorders.values())
        if len(orders) > 1:
            raise FormatError(f"the shards mix byte orders ({', '.join(sorted(orders))}); nbckpt reads "
                              f"sharded checkpoints whose shards share one")
        self.byteorder = orders.pop() if orders else "little"

    def _in_shard(self, ref: Any, shard: str, renamed: dict[int, StorageRef]) -> Any:
        """``ref`` with its storage renamed ``shard/key`` (keys are unique within a shard only)."""
        if not isinstance(ref, ArrayRef):
            return ref  # a MetaArray, or a value
        old = ref.storage
        new = renamed.get(id(old))
        if new is None:
            key = f"{shard}/{old.key}"
            new = renamed[id(old)] = StorageRef(key, old.dtype, old.numel, old.location, old.untyped, shard,
                                                old.chunks)
            self._inner[key] = (shard, old.key)
        return ArrayRef(new, ref.dtype, ref.offset, ref.shape, ref.strides, ref.transforms)

    # -- the Reader interface ----------------------------------------------------------------

    def tree(self) -> dict[str, Any]:
        self._ensure_described()
        return dict(self._refs)

    def storages(self, *, mmap_access: int | None = None) -> "_ShardedSource":
        self._ensure_described()
        return _ShardedSource(self, mmap_access)

    def shard(self, shard: str) -> Any:
        """The reader of one shard, opened on first use (FormatError if the file is missing)."""
        reader = self._open_shards.get(shard)
        if reader is None:
            path = self._paths[shard]
            if not os.path.isfile(path):
                raise FormatError(
                    f"shard {escape(shard)} named by {os.path.basename(self.index_path)} is missing from "
                    f"{escape(self._folder)}: download it next to the index (or load the other arrays one by one "
                    f"with nbckpt.open)", record=shard)
            reader = self._open_shards[shard] = _open_shard(shard, path, self._weights_only)
        return reader

    def load(self, device_map: DeviceMap, options: LoadOptions) -> dict[str, Any]:
        self._ensure_described()
        return read_flat(self._refs, self.storages(mmap_access=options.mmap_access), device_map,
                         byteorder=self.byteorder, skip_data=options.skip_data)

    def info(self) -> FormatInfo:
        self._ensure_described()
        present = [s for s in self._shard_names if os.path.isfile(self._paths[s])]
        missing = [s for s in self._shard_names if s not in present]
        refs = [r for r in self._refs.values() if isinstance(r, ArrayRef)]
        storages = {r.storage.key: r.storage.nbytes for r in refs}
        details = [("index", os.path.basename(self.index_path))]
        details += [(f"shard {i + 1}", s + (" (missing)" if s in missing else ""))
                    for i, s in enumerate(self._shard_names)]
        return FormatInfo(
            format=self.format,
            description=f"sharded ({len(self._shard_names)} shards"
                        + (f", {len(missing)} missing" if missing else "") + ")",
            storages=len(storages),
            array_bytes=sum(storages.values()),
            file_bytes=sum(os.path.getsize(self._paths[s]) for s in present),
            metadata={str(k): str(v) for k, v in self.metadata.items()},
            details=tuple(details),
        )

    def verify(self, report: Any, progress: bool | None) -> None:
        from ..verify import Problem, VerifyReport

        try:  # the index must agree with the shards (each names the arrays the index puts there)
            self._ensure_described()
        except CheckpointError as err:
            report.problems.append(Problem(getattr(err, "record", None) or "index", str(err)))
        for shard in self._shard_names:
            try:
                reader = self.shard(shard)
            except CheckpointError as err:
                report.problems.append(Problem(shard, str(err)))
                continue
            sub = VerifyReport(shard, reader.format)
            reader.verify(sub, progress)
            report.records_checked += sub.records_checked
            report.problems += [Problem(f"{shard}: {p.record}", p.message, p.expected, p.found)
                                for p in sub.problems]
            report.notes += [f"{shard}: {n}" for n in sub.notes]

    def pickles(self) -> list[bytes]:
        found: list[bytes] = []
        for shard in self._shard_names:
            if os.path.isfile(self._paths[shard]):
                found += self.shard(shard).pickles()
        return found

    def close(self) -> None:
        for reader in self._open_shards.values():
            reader.close()
        self._open_shards.clear()
        self._target.close()


class _ShardedSource:
    """Storage bytes of a sharded checkpoint: each from its shard, opened when first read."""

    def __init__(self, sharded: ShardedReader, mmap_access: int | None) -> None:
        self._sharded, self._access = sharded, mmap_access
        self._sources: dict[str, Any] = {}

    def _source(self, key: str) -> tuple[Any, str, str]:
        shard, inner = self._sharded._inner[key]
        source = self._sources.get(shard)
        if source is None:
            source = self._sources[shard] = self._sharded.shard(shard).storages(mmap_access=self._access)
        return source, shard, inner

    def size(self, key: str) -> int:
        source, _shard, inner = self._source(key)
        return source.size(inner)

    def host_bytes(self, key: str, nbytes: int, backend: Any, *, mapped_ok: bool) -> np.ndarray:
        source, _shard, inner = self._source(key)
        return source.host_bytes(inner, nbytes, backend, mapped_ok=mapped_ok)


def _parse_index(raw: bytes, path: str) -> tuple[dict, dict[str, str]]:
    if len(raw) > INDEX_LIMIT:
        raise FormatError(f"the index {escape(path)} is larger than {INDEX_LIMIT} bytes: it is not a checkpoint index")
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FormatError(f"the index {escape(path)} is not valid UTF-8 JSON: {err}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        raise FormatError(
            f"{escape(path)} is not a sharded checkpoint's index: expected a JSON object whose 'weight_map' "
            f"maps array names to shard files", record="weight_map")
    metadata = index.get("metadata") or {}
    return (metadata if isinstance(metadata, dict) else {}), weight_map
