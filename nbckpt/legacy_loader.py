"""Load torch's legacy formats safely: the pre-1.6 stream and the 0.1–0.3 tar.

Both go through the same unpicklers as the zip format, so ``weights_only=True``
applies the same allowlist (torch refuses ``weights_only`` for tar files; nbckpt
loads them safely).

The stream format stores the storages *after* the pickle that uses them, and
their sizes are counted in elements of a dtype only that pickle names. So the
pickle is run twice: once to record which storages it needs (nothing is read,
nothing placed), then — after each storage's bytes were read straight into
host buffers, in file order — once more over the real storages.
"""

from __future__ import annotations

import sys
import tarfile
from typing import Any

import numpy as np

from .devices import DeviceMap
from .errors import FormatError
from .format import dtypes as torch_dtypes
from .format import legacy as spec
from .materialize import ZipMaterializer
from .pickling.rebuild import Rebuilder, _ascii
from .pickling.run import run_unpickler

__all__ = ["load_stream", "load_tar", "stream_pickles", "tar_pickles"]


class _Stub:
    """A storage or array of the first pass: shape only, no data."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int = 0) -> None:
        self.nbytes = nbytes

    def conj(self) -> "_Stub":
        return self

    def __neg__(self) -> "_Stub":
        return self


class _StorageRecorder:
    """First pass: remember each root storage the pickle names (dtype, numel, location)."""

    def __init__(self) -> None:
        self.roots: dict[str, tuple[torch_dtypes.TorchDtype, int, str]] = {}

    def storage(self, key: str, dtype: torch_dtypes.TorchDtype, numel: int, location: str,
                untyped: bool = False) -> _Stub:
        self.roots.setdefault(key, (dtype, numel, location))
        return _Stub(numel * dtype.itemsize)

    def storage_view(self, root: Any, dtype: Any, offset: int, size: int) -> _Stub:
        return _Stub(size * dtype.itemsize)

    def view(self, *args: Any) -> _Stub:
        return _Stub()

    def empty(self, *args: Any) -> _Stub:
        return _Stub()

    def sparse(self, *args: Any) -> _Stub:
        return _Stub()


class _PreloadedSource:
    """Second pass: storage bytes already read from the stream, by key."""

    def __init__(self, buffers: dict[str, np.ndarray]) -> None:
        self._buffers = buffers

    def size(self, key: str) -> int:
        return self._buffers[key].nbytes

    def host_bytes(self, key: str, nbytes: int, backend: Any, *, mapped_ok: bool) -> np.ndarray:
        return self._buffers[key]


class _LegacyMaterializer(ZipMaterializer):
    """Places preloaded storages; storage views are slices of their root."""

    def storage_view(self, root: Any, dtype: Any, offset: int, size: int) -> Any:
        view = root[offset : offset + size]
        self._backends[id(view)] = self.backend_of(root)
        return view


def _stream_end(stream) -> int:
    here = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(here)
    return end if end is not None else stream.tell()


def _small_pickle(stream, end: int, what: str, *, weights_only: bool, encoding: str) -> Any:
    data = spec.read_pickle_bytes(stream, end, what)
    return run_unpickler(data, Rebuilder(_StorageRecorder(), legacy=True), weights_only=weights_only,
                         encoding=encoding)


def load_stream(stream, device_map: DeviceMap, *, weights_only: bool, encoding: str,
                skip_data: bool = False) -> Any:
    """Load one pre-1.6 checkpoint at ``stream``'s position; leave the stream after it."""
    end = _stream_end(stream)
    options = dict(weights_only=weights_only, encoding=encoding)
    start = stream.tell()
    head = stream.read(len(spec.MAGIC_PICKLE))
    stream.seek(start)
    if head != spec.MAGIC_PICKLE:
        raise FormatError(
            f"not a torch checkpoint: the data starts with {head[:8]!r}, which is neither a zip "
            f"archive (b'PK\\x03\\x04', torch >= 1.6) nor a legacy torch file (invalid magic "
            f"number). A plain pickle is loaded with pickle.load, not nbckpt.load."
        )
    _small_pickle(stream, end, "magic number", **options)
    version = _small_pickle(stream, end, "protocol version", **options)
    if version != spec.PROTOCOL_VERSION:
        raise FormatError(f"invalid legacy protocol version {version!r}, expected {spec.PROTOCOL_VERSION}")
    sys_info = _small_pickle(stream, end, "system information", **options)
    if not isinstance(sys_info, dict):
        raise FormatError("the legacy header holds no system information dict")
    main = spec.read_pickle_bytes(stream, end, "object pickle")
    keys = _small_pickle(stream, end, "storage keys", **options)
    if not isinstance(keys, list):
        raise FormatError(f"the legacy storage key list is a {type(keys).__name__}, expected a list")

    recorder = _StorageRecorder()
    run_unpickler(main, Rebuilder(recorder, legacy=True, modules=not weights_only), **options)

    placer = ZipMaterializer(_PreloadedSource({}), device_map, byteorder="little", skip_data=skip_data)
    buffers: dict[str, np.ndarray] = {}
    for raw_key in keys:
        key = _ascii(raw_key)
        if key not in recorder.roots:
            raise FormatError(f"storage {key!r} is listed but no object uses it; the file is corrupt")
        dtype, numel, location = recorder.roots[key]
        stored = spec.read_int64(stream, f"size of storage {key}")
        if stored != numel:
            raise FormatError(
                f"storage {key!r} has the wrong size: the pickle declares {numel} x {dtype.name}, "
                f"the data holds {stored}"
            )
        nbytes = numel * dtype.itemsize
        if nbytes > end - stream.tell():
            raise FormatError(
                f"truncated file: storage {key!r} needs {nbytes} bytes, only {end - stream.tell()} are left"
            )
        if device_map.mode == "callable":
            backend = None
            host = np.empty(nbytes, dtype=np.uint8)
        else:
            backend = placer.backend_for_location(location)
            make = getattr(backend, "host_buffer", None)
            host = make(nbytes) if make else np.empty(nbytes, dtype=np.uint8)
        if skip_data:
            stream.seek(nbytes, 1)
        else:
            _readinto(stream, host, key)
            if sys.byteorder == "big" and dtype.itemsize > 1:  # the format is little-endian
                host.view(f"u{dtype.itemsize}").byteswap(inplace=True)
        buffers[key] = host
    missing = set(recorder.roots) - set(buffers)
    if missing:
        raise FormatError(f"storages {sorted(missing)} are used but their data is missing from the file")

    materializer = _LegacyMaterializer(_PreloadedSource(buffers), device_map, skip_data=skip_data)
    return run_unpickler(main, Rebuilder(materializer, legacy=True, modules=not weights_only),
                         materializer=materializer, **options)


def _readinto(stream, host: np.ndarray, key: str) -> None:
    from .format.container import readinto_exact

    readinto_exact(stream, host, f"storage {key}")


# -- tar ---------------------------------------------------------------------------------------


def load_tar(stream, device_map: DeviceMap, *, weights_only: bool, encoding: str) -> Any:
    """Load a torch 0.1–0.3 tar checkpoint (members storages, tensors, pickle)."""
    options = dict(weights_only=weights_only, encoding=encoding)
    try:
        tar = tarfile.open(fileobj=stream, mode="r:", format=tarfile.PAX_FORMAT)
    except tarfile.TarError as err:
        raise FormatError(f"corrupt legacy tar checkpoint: {err}") from None
    with tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        for name in ("storages", "tensors", "pickle"):
            if name not in members:
                raise FormatError(f"legacy tar checkpoint has no {name!r} member")

        placer = _LegacyMaterializer(_PreloadedSource({}), device_map)
        rebuilder = Rebuilder(placer, legacy=True, modules=not weights_only)
        objects: dict[int, Any] = {}

        storages = tar.extractfile(members["storages"])
        end = members["storages"].size
        count = _member_pickle(storages, end, "storage count", **options)
        if not isinstance(count, int) or count < 0:
            raise FormatError(f"legacy tar storage count is {count!r}")
        for _ in range(count):
            entry = _member_pickle(storages, end, "storage header", **options)
            if not (isinstance(entry, tuple) and len(entry) == 3):
                raise FormatError(f"legacy tar storage header is {entry!r}, expected (key, location, type)")
            key, location, storage_class = entry
            dtype = getattr(storage_class, "dtype", None)
            if not isinstance(key, int) or dtype is None:
                raise FormatError(f"legacy tar storage header {entry!r} is not (int key, location, storage type)")
            numel = spec.read_int64(storages, f"size of storage {key}")
            nbytes = numel * dtype.itemsize
            if numel < 0 or nbytes > end - storages.tell():
                raise FormatError(f"legacy tar storage {key} declares {numel} elements; the member is smaller")
            host = np.empty(nbytes, dtype=np.uint8)
            _readinto(storages, host, str(key))
            backend = placer.backend_for_location(_ascii(location))
            storage = backend.from_host(host.view(dtype.numpy))
            placer._backends[id(storage)] = backend
            rebuilder.register_storage(storage, dtype, str(key))
            objects[key] = storage
        views = _member_pickle(storages, end, "storage views", **options)
        for view in views if isinstance(views, list) else ():
            if not (isinstance(view, tuple) and len(view) == 4):
                raise FormatError(f"legacy tar storage view {view!r} is not (key, root, offset, size)")
            view_key, root_key, offset, size = view
            if root_key not in objects:
                raise FormatError(f"legacy tar storage view {view_key} refers to unknown storage {root_key}")
            objects[view_key] = rebuilder.storage_view(objects[root_key], (str(view_key), offset, size))

        tensors = tar.extractfile(members["tensors"])
        end = members["tensors"].size
        count = _member_pickle(tensors, end, "tensor count", **options)
        if not isinstance(count, int) or count < 0:
            raise FormatError(f"legacy tar tensor count is {count!r}")
        for _ in range(count):
            entry = _member_pickle(tensors, end, "tensor header", **options)
            if not (isinstance(entry, tuple) and len(entry) == 3) or entry[1] not in objects:
                raise FormatError(f"legacy tar tensor header {entry!r} does not name a stored storage")
            key, storage_key, _tensor_type = entry
            ndim = spec.read_int64(tensors, "tensor rank") & 0xFFFFFFFF  # an int32 and 4 spare bytes
            if ndim > 64:
                raise FormatError(f"legacy tar tensor {key} has {ndim} dimensions")
            sizes = [spec.read_int64(tensors, "tensor size") for _ in range(ndim)]
            strides = [spec.read_int64(tensors, "tensor stride") for _ in range(ndim)]
            offset = spec.read_int64(tensors, "tensor offset")
            objects[key] = rebuilder.rebuild_tensor(objects[storage_key], offset, tuple(sizes), tuple(strides))

        def persistent_load(pid: Any) -> Any:
            try:
                return objects[int(_ascii(pid))]
            except (KeyError, ValueError, TypeError):
                raise FormatError(f"the pickle refers to {pid!r}, which the tar checkpoint does not hold") from None

        pickle_member = tar.extractfile(members["pickle"])
        data = spec.read_pickle_bytes(pickle_member, members["pickle"].size, "object pickle")
        result = run_unpickler(data, rebuilder, persistent_load=persistent_load, materializer=placer, **options)
    return result


def _member_pickle(member, end: int, what: str, *, weights_only: bool, encoding: str) -> Any:
    data = spec.read_pickle_bytes(member, end, what)
    return run_unpickler(data, Rebuilder(_StorageRecorder(), legacy=True), weights_only=weights_only,
                         encoding=encoding)


def stream_pickles(stream) -> list[bytes]:
    """The pickles of a pre-1.6 checkpoint (header, object, keys), read without running them."""
    end = _stream_end(stream)
    names = ("magic number", "protocol version", "system information", "object pickle", "storage keys")
    return [spec.read_pickle_bytes(stream, end, name) for name in names]


def tar_pickles(stream) -> list[bytes]:
    """The object pickle of a 0.1–0.3 tar checkpoint, read without running it."""
    try:
        with tarfile.open(fileobj=stream, mode="r:") as tar:
            member = tar.getmember("pickle")
            return [spec.read_pickle_bytes(tar.extractfile(member), member.size, "object pickle")]
    except (tarfile.TarError, KeyError) as err:
        raise FormatError(f"corrupt legacy tar checkpoint: {err}") from None
