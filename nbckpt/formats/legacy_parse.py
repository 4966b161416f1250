"""Load torch's legacy formats safely: the pre-1.6 stream and the 0.1–0.3 tar.

Both go through the same unpicklers as the zip format, so ``weights_only=True``
applies the same allowlist (torch refuses ``weights_only`` for tar files; nbckpt
loads them safely).

The stream format stores the storages *after* the pickle that uses them. As in
torch, each storage is allocated on its target device when the pickle names it,
the arrays are built over it, and the bytes are read into it afterwards, in file
order (through pinned host memory for a GPU). Values derived from the data
(torch's conj/neg views) are computed once the data is in.
"""

from __future__ import annotations

import sys
import tarfile
from typing import Any, Callable

import numpy as np

from ..backends import HOST
from ..devices import DeviceMap
from ..errors import CheckpointError, FormatError
from ..format import dtypes as torch_dtypes
from ..format import legacy as spec
from ..format.container import readinto_exact
from ..materialize import StorageMaterializer, check_mapped_storage, swap_to_native
from ..pickling.rebuild import Rebuilder, _ascii
from ..pickling.run import run_unpickler

__all__ = ["load_stream", "load_tar", "stream_pickles", "tar_pickles"]


class _NoSource:
    """Legacy storages have no records to read when the pickle names them."""

    def size(self, key: str) -> int:  # pragma: no cover - never asked
        raise AssertionError(key)


class _FillLaterMaterializer(StorageMaterializer):
    """Allocates storages when the pickle names them; their bytes come afterwards.

    ``storages`` maps each root key to ``(storage, dtype, numel)``; storage views
    (``view_metadata``) are slices of their root, and values computed from the
    data are filled in by :meth:`fill_deferred` once :meth:`fill` has run.
    """

    def __init__(self, device_map: DeviceMap, budget: int) -> None:
        super().__init__(_NoSource(), device_map, byteorder="little")
        self.storages: dict[str, tuple[Any, torch_dtypes.TorchDtype, int]] = {}
        self._deferred: list[Callable[[], None]] = []
        self._sparse: dict[int, tuple[_DeferredSparse, Any]] = {}
        self._budget = budget  # bytes left in the file for storage data

    def storage(self, key: str, dtype: torch_dtypes.TorchDtype, numel: int, location: str,
                untyped: bool = False) -> Any:
        nbytes = numel * dtype.itemsize
        # Storages are allocated before their data is read: refuse sizes the file cannot hold.
        if nbytes > self._budget:
            raise FormatError(
                f"storage {key!r} declares {shown_int(nbytes)} bytes, but only {self._budget} bytes of the "
                f"file are left for storage data: the file is truncated or lies"
            )
        self._budget -= nbytes
        if self._device_map.mode == "callable":
            host = np.empty(nbytes, dtype=np.uint8).view(dtype.numpy)
            result = self._device_map.function(host, location)  # type: ignore[misc]
            if result is None:
                backend = self.backend_for_location(location)
                storage = backend.from_host(host) if backend is not HOST else host
            else:
                storage, backend = result, check_mapped_storage(result, nbytes, f"storage {key}")
        else:
            backend = self.backend_for_location(location)
            storage = backend.from_host(np.empty(nbytes, dtype=np.uint8).view(dtype.numpy))
        self._backends[id(storage)] = backend
        self.storages[key] = (storage, dtype, numel)
        return storage

    def defer_until_filled(self, array: Any, compute: Callable[[Any], Any]) -> Any:
        """An array of ``compute(array)``'s shape now; its values once the data is read."""
        result = compute(array)  # right shape, dtype and device; values come later
        self._deferred.append(lambda: _refill(result, compute(array)))
        return result

    def fill(self, key: str, stream, nbytes: int, skip: bool) -> None:
        storage, _dtype, _numel = self.storages[key]
        if skip:
            stream.seek(nbytes, 1)
            return
        raw = storage.view(np.uint8) if storage.dtype != np.uint8 else storage
        if isinstance(raw, np.ndarray):
            readinto_exact(stream, raw, f"storage {key}")
            host = raw
        else:  # a device storage: read into (pinned) host memory, then copy once
            backend = self.backend_of(storage)
            host = backend.host_buffer(nbytes)
            readinto_exact(stream, host, f"storage {key}")
        if sys.byteorder == "big":  # the format is little-endian
            swap_to_native(host, _dtype.numpy)
        if host is not raw:
            with _device(storage):
                raw.set(host)

    def sparse(self, layout: str, parts: Any) -> "_DeferredSparse":
        """Sparse matrices are checked and built once their arrays hold data."""
        placeholder = _DeferredSparse(layout, parts)
        self._sparse[id(placeholder)] = (placeholder, None)
        return placeholder

    def fill_deferred(self, result: Any) -> Any:
        """Compute what waited for the data; returns ``result`` with sparse matrices in place."""
        for action in self._deferred:
            action()
        self._deferred.clear()
        if not self._sparse:
            return result
        from .. import sparse

        built = {key: sparse.from_torch_parts(p.layout, p.parts) for key, (p, _) in self._sparse.items()}
        done: dict[int, Any] = {}
        result = _replace(result, built, done)
        if not set(built) <= set(done):  # a placeholder _replace cannot reach (an attribute...) would escape
            raise FormatError("a legacy sparse tensor sits where nbckpt cannot put the built matrix (an "
                              "object's attribute, a set, a dict key): the file is corrupt or hostile")
        return result

    def budget_for(self, nbytes_left: int) -> None:
        self._budget = nbytes_left


def _refill(result: Any, fresh: Any) -> None:
    """Copy ``fresh``'s values into ``result``, writing each storage element they cover once.

    Both come from :func:`nbckpt.pickling.rebuild.transform_covered` of one view, so
    they have one layout over a buffer of ``covered`` elements. ``result[...] = fresh``
    would write every *element of the view*: 2**36 writes for a stride-0 view of
    2**36 elements over one value (minutes, from a few hundred bytes of file). The
    buffer is written instead, as the zip path computes it: bounded by the file's
    real content.
    """
    itemsize = result.dtype.itemsize
    strides = result.strides
    if (result.size == 0 or itemsize == 0 or fresh.strides != strides
            or any(s < 0 or s % itemsize for s in strides)):
        result[...] = fresh
        return
    covered = 1 + sum((n - 1) * s for n, s in zip(result.shape, strides)) // itemsize
    if covered >= result.size:  # no element repeats: the view is as small as its buffer
        result[...] = fresh
        return
    import importlib

    stride_tricks = importlib.import_module(type(result).__module__.split(".")[0]).lib.stride_tricks
    target = stride_tricks.as_strided(result, shape=(covered,), strides=(itemsize,))
    target[...] = stride_tricks.as_strided(fresh, shape=(covered,), strides=(itemsize,))


def shown_int(n: int) -> str:
    """An integer from a file, for a message (a hostile one may have thousands of digits)."""
    return str(n) if abs(n) < 10**30 else "more than 10**30"


class _DeferredSparse:
    """Stands for a sparse matrix in a legacy file until its arrays are filled."""

    __slots__ = ("layout", "parts")

    def __init__(self, layout: str, parts: Any) -> None:
        self.layout, self.parts = layout, parts


def _replace(obj: Any, built: dict[int, Any], done: dict[int, Any]) -> Any:
    """``obj`` with every placeholder in ``built`` replaced (containers edited in place)."""
    if id(obj) in built:
        done[id(obj)] = built[id(obj)]  # seen: fill_deferred checks that every placeholder was
        return built[id(obj)]
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, (set, frozenset)) or isinstance(obj, dict) and any(type(k) is _DeferredSparse for k in obj):
        if any(type(item) is _DeferredSparse for item in obj):  # a sparse matrix is unhashable
            raise FormatError("a legacy sparse tensor is used as a set item or a dict key; a sparse "
                              "matrix cannot be one: the file is corrupt or hostile")
    if isinstance(obj, dict):
        done[id(obj)] = obj
        for key, value in obj.items():
            obj[key] = _replace(value, built, done)
    elif isinstance(obj, list):
        done[id(obj)] = obj
        obj[:] = [_replace(v, built, done) for v in obj]
    elif type(obj) is tuple:
        done[id(obj)] = obj
        replaced = tuple(_replace(v, built, done) for v in obj)
        if any(a is not b for a, b in zip(replaced, obj)):
            done[id(obj)] = replaced
            return replaced
    return obj


def _device(array: Any) -> Any:
    from ..backends import device_scope

    return device_scope(array)


def _stream_end(stream) -> int:
    here = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(here)
    return end if end is not None else stream.tell()


def _small_pickle(stream, end: int, what: str, *, weights_only: bool, encoding: str) -> Any:
    data = spec.read_pickle_bytes(stream, end, what)
    # Header pickles hold plain data only: no storage may appear in them.
    return run_unpickler(data, Rebuilder(_NoStorages(), legacy=True), weights_only=weights_only,
                         encoding=encoding)


class _NoStorages:
    def storage(self, key: str, *args: Any) -> Any:
        raise FormatError(f"a legacy header pickle refers to storage {key!r}")


def load_stream(stream, device_map: DeviceMap, *, weights_only: bool, encoding: str,
                skip_data: bool = False, recorder: Any = None) -> Any:
    """Load one pre-1.6 checkpoint at ``stream``'s position; leave the stream after it.

    With a ``recorder`` (:class:`nbckpt.formats.recording.RecordingMaterializer`)
    nothing is read: the object comes back with array descriptions, and the
    recorder notes where each storage's bytes are (``nbckpt.open``).
    """
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

    if recorder is not None:
        materializer = recorder
        recorder.budget_for(end - stream.tell())
    else:
        materializer = _FillLaterMaterializer(device_map, budget=end - stream.tell())
    rebuilder = Rebuilder(materializer, legacy=True, modules=not weights_only)
    result = run_unpickler(main, rebuilder, materializer=materializer, **options)

    keys = _small_pickle(stream, end, "storage keys", **options)
    if not isinstance(keys, list):
        raise FormatError(f"the legacy storage key list is a {type(keys).__name__}, expected a list")
    filled = set()
    for raw_key in keys:
        key = _ascii(raw_key) if type(raw_key) in (str, bytes) else None
        if key is None:
            raise FormatError(f"the legacy storage key list holds a {type(raw_key).__name__}, expected strings")
        if key not in materializer.storages or key in filled:
            raise FormatError(f"storage {key!r} is listed but no object uses it (or twice); the file is corrupt")
        _storage, dtype, numel = materializer.storages[key]
        stored = spec.read_int64(stream, f"size of storage {key}")
        if stored != numel:
            raise FormatError(
                f"storage {key!r} has the wrong size: the pickle declares {shown_int(numel)} x {dtype.name}, "
                f"the data holds {stored}"
            )
        nbytes = numel * dtype.itemsize
        if nbytes > end - stream.tell():
            raise FormatError(
                f"truncated file: storage {key!r} needs {nbytes} bytes, only {end - stream.tell()} are left"
            )
        materializer.fill(key, stream, nbytes, skip_data)
        filled.add(key)
    missing = set(materializer.storages) - filled
    if missing:
        raise FormatError(f"storages {sorted(missing)} are used but their data is missing from the file")
    return materializer.fill_deferred(result)


# -- tar ---------------------------------------------------------------------------------------


def load_tar(stream, device_map: DeviceMap, *, weights_only: bool, encoding: str,
             skip_data: bool = False, recorder: Any = None) -> Any:
    """Load a torch 0.1–0.3 tar checkpoint (members ``storages``, ``tensors``, ``pickle``).

    ``recorder``: describe instead of reading, as for :func:`load_stream`.
    """
    try:
        return _load_tar(stream, device_map, weights_only=weights_only, encoding=encoding,
                         skip_data=skip_data, recorder=recorder)
    except (tarfile.TarError, EOFError) as err:
        raise FormatError(f"corrupt legacy tar checkpoint: {err}") from None


def _load_tar(stream, device_map: DeviceMap, *, weights_only: bool, encoding: str, skip_data: bool,
              recorder: Any, seen: list[bytes] | None = None) -> Any:
    options: dict[str, Any] = dict(weights_only=weights_only, encoding=encoding, seen=seen)
    with tarfile.open(fileobj=_Bounded(stream), mode="r:", format=tarfile.PAX_FORMAT) as tar:
        if recorder is not None:
            tar.fileobject = _Unbuffered  # listing must not read ahead into the storages' data
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        for name in ("storages", "tensors", "pickle"):
            if name not in members:
                raise FormatError(f"legacy tar checkpoint has no {name!r} member")
        materializer = recorder if recorder is not None else _FillLaterMaterializer(device_map, budget=0)
        rebuilder = Rebuilder(materializer, legacy=True, modules=not weights_only)
        objects: dict[int, Any] = {}
        materializer.base = members["storages"].offset_data  # where fill() offsets start

        # Storages come first, each followed by its data; then the list of views.
        storages = tar.extractfile(members["storages"])
        end = members["storages"].size
        for _ in range(_count(_member_pickle(storages, end, "storage count", **options), "storage")):
            entry = _member_pickle(storages, end, "storage header", **options)
            if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], int)):
                raise FormatError(f"legacy tar storage header is {entry!r}, expected (key, location, type)")
            key, location, storage_class = entry
            numel = spec.read_int64(storages, f"size of storage {key}")
            # The data follows in this member: the storage may not claim more than is left.
            materializer.budget_for(end - storages.tell())
            # load_storage validates the class, location and count, and allocates.
            storage = rebuilder.load_storage(storage_class, str(key), location, numel)
            materializer.fill(str(key), storages, numel * storage_class.dtype.itemsize, skip_data)
            objects[key] = storage
        views = _member_pickle(storages, end, "storage views", **options)
        if not isinstance(views, list):
            raise FormatError(f"legacy tar storage views are a {type(views).__name__}, expected a list")
        for view in views:
            if not (isinstance(view, tuple) and len(view) == 4) or type(view[1]) is not int or view[1] not in objects:
                raise FormatError(f"legacy tar storage view {view!r} is not (key, stored root, offset, size)")
            view_key, root_key, offset, size = view
            if type(view_key) is not int:
                raise FormatError(f"legacy tar storage view key {view_key!r} is not an int")
            objects[view_key] = rebuilder.storage_view(objects[root_key], (str(view_key), offset, size))

        # Tensors: a header pickle each, then rank, sizes, strides and offset as raw ints.
        tensors = tar.extractfile(members["tensors"])
        end = members["tensors"].size
        for _ in range(_count(_member_pickle(tensors, end, "tensor count", **options), "tensor")):
            entry = _member_pickle(tensors, end, "tensor header", **options)
            if not (isinstance(entry, tuple) and len(entry) == 3 and type(entry[0]) is int
                    and type(entry[1]) is int and entry[1] in objects):
                raise FormatError(f"legacy tar tensor header {entry!r} does not name a stored storage")
            key, storage_key, _tensor_type = entry
            ndim = spec.read_int64(tensors, "tensor rank") & 0xFFFFFFFF  # an int32 and 4 spare bytes
            if ndim > 64:
                raise FormatError(f"legacy tar tensor {key} has {ndim} dimensions")
            sizes = tuple(spec.read_int64(tensors, "tensor size") for _ in range(ndim))
            strides = tuple(spec.read_int64(tensors, "tensor stride") for _ in range(ndim))
            offset = spec.read_int64(tensors, "tensor offset")
            objects[key] = rebuilder.rebuild_tensor(objects[storage_key], offset, sizes, strides)

        def persistent_load(pid: Any) -> Any:
            if isinstance(pid, tuple):  # (class, source file, source): a pickled module
                return rebuilder.legacy_module(("module",) + pid)
            try:
                return objects[int(_ascii(pid))]
            except (KeyError, ValueError, TypeError):
                raise FormatError(f"the pickle refers to {pid!r}, which the tar checkpoint does not hold") from None

        pickle_member = tar.extractfile(members["pickle"])
        data = spec.read_pickle_bytes(pickle_member, members["pickle"].size, "object pickle")
        if seen is not None:
            seen.append(data)
        result = run_unpickler(data, rebuilder, persistent_load=persistent_load, materializer=materializer,
                               weights_only=weights_only, encoding=encoding)
        return materializer.fill_deferred(result)


class _Unbuffered:
    """A tar member read in place, without a buffer in front (``TarFile.fileobject`` hook)."""

    def __init__(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        self._f, self._start, self._size, self._pos = tar.fileobj, info.offset_data, info.size, 0

    def read(self, n: int = -1) -> bytes:
        n = self._size - self._pos if n is None or n < 0 else min(n, self._size - self._pos)
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        # Small steps: a line (a GLOBAL's name) must not read into the data after it.
        left = self._size - self._pos
        left = left if limit is None or limit < 0 else min(limit, left)
        line = b""
        while left > 0 and not line.endswith(b"\n"):
            self._f.seek(self._start + self._pos)
            chunk = self._f.read(min(16, left))
            if not chunk:
                break
            end = chunk.find(b"\n")
            chunk = chunk if end < 0 else chunk[: end + 1]
            line += chunk
            self._pos += len(chunk)
            left -= len(chunk)
        return line

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class _Bounded:
    """A read-only stream that refuses reads past its end *before* allocating.

    tarfile reads a PAX header's declared size in one ``read(n)``: a 1.5 kB file
    declaring 8 GiB would otherwise allocate 8 GiB.
    """

    def __init__(self, stream) -> None:
        self._stream = stream
        self._end = _stream_end(stream)

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._stream.tell()
        if n is not None and n > left:
            raise FormatError(f"the tar archive asks for {n} bytes, only {left} are left: it is corrupt or lies")
        return self._stream.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def seekable(self) -> bool:
        return True


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise FormatError(f"legacy tar {what} count is {value!r}")
    return value


def _member_pickle(member, end: int, what: str, *, weights_only: bool, encoding: str,
                   seen: list[bytes] | None = None) -> Any:
    data = spec.read_pickle_bytes(member, end, what)
    if seen is not None:  # tar_pickles: what the scan reads is what runs, kept before it runs
        seen.append(data)
    return run_unpickler(data, Rebuilder(_NoStorages(), legacy=True), weights_only=weights_only,
                         encoding=encoding)


def stream_pickles(stream) -> list[bytes]:
    """The pickles of a pre-1.6 checkpoint (header, object, keys), read without running them."""
    end = _stream_end(stream)
    names = ("magic number", "protocol version", "system information", "object pickle", "storage keys")
    return [spec.read_pickle_bytes(stream, end, name) for name in names]


def tar_pickles(stream) -> list[bytes]:
    """Every pickle a load of this 0.1–0.3 tar checkpoint runs, read without running the hostile ones.

    The ``storages`` and ``tensors`` members are sequences of pickles too (counts,
    headers, views), and a load runs each of them: ``scan`` must read every one, from
    the very members and offsets the load reads. So this *is* the load's own walk
    (:func:`_load_tar` over a recorder, which reads no array data) with each pickle's
    bytes kept before it runs, every pickle run with ``weights_only=True``: the walk
    stops at the first pickle the loader refuses (a load stops there too), and that
    pickle is already in the list. The object pickle is added when the walk stopped
    before it, so that a scan still shows what it names.
    """
    from .recording import RecordingMaterializer

    seen: list[bytes] = []
    start = stream.tell()
    try:
        _load_tar(stream, DeviceMap.parse("cpu"), weights_only=True, encoding="utf-8", skip_data=True,
                  recorder=RecordingMaterializer(), seen=seen)
        return seen
    except (CheckpointError, tarfile.TarError, EOFError):
        pass  # the walk stopped where a load would: what it read so far is scanned
    stream.seek(start)
    try:
        with tarfile.open(fileobj=_Bounded(stream), mode="r:") as tar:
            # The member load runs: the last *regular file* named pickle (as _load_tar picks it).
            member = {m.name: m for m in tar.getmembers() if m.isfile()}.get("pickle")
            if member is not None:
                data = spec.read_pickle_bytes(tar.extractfile(member), member.size, "object pickle")
                if data not in seen:
                    seen.append(data)
    except (CheckpointError, tarfile.TarError, EOFError) as err:
        if not seen:
            raise FormatError(f"corrupt legacy tar checkpoint: {err}") from None
    return seen
