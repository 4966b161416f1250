"""Checkpoints at URLs (``s3://``, ``gs://``, ``https://``, ``memory://``, ``file://`` ...) via fsspec.

Any ``f`` that is a string starting with a protocol (``s3://bucket/model.pt``;
chained URLs such as ``simplecache::s3://...`` too) is opened through
`fsspec <https://filesystem-spec.readthedocs.io>`_, an optional dependency
(``pip install fsspec``, nbckpt's ``remote`` extra, plus the protocol's own package: ``s3fs``
for S3, ``gcsfs`` for Google Cloud Storage, ``adlfs`` for Azure, ``aiohttp``
for HTTP). ``storage_options`` (a dict) is passed to the filesystem:
credentials, endpoints, ``anon=True``... Single-letter "protocols" are Windows
drive letters and never URLs.

Reading uses ranged requests, so :func:`nbckpt.open` fetches the zip directory
and ``data.pkl`` and nothing else, and each array's bytes only when it is read.
:class:`RangeFile` keeps a few small blocks: a read of less than
:data:`BLOCK` bytes fetches the block around it (the last :data:`BLOCK` bytes
of the file when it lies there: the end records, the central directory and
the small records at the end of an archive come in one request), and larger
reads go straight to the store, :data:`CHUNK` bytes per request at most, into
the caller's buffer. fsspec's own caches do not fit this pattern: ``readahead``
and ``bytes`` keep (and copy) the last large read, ``blockcache`` fetches a
large read one block per request.

Writing (:func:`upload`) goes to a local temporary file first, which is
uploaded in one operation (``fs.put_file``) only once it is complete: a save
that fails never reaches the store. What readers see while the upload runs
depends on the store: S3, Google Cloud Storage and Azure Blob Storage make an
object visible only when its upload completes (a single PUT, or a multipart
upload that is completed, or aborted on failure), so the old object stays
intact until the new one replaces it whole. ``file://`` URLs are saved like
local paths (temporary file and atomic rename). Other filesystems (SFTP, FTP,
HDFS, ``memory://``, HTTP uploads) write to the final name as the upload goes.

    >>> is_url("s3://bucket/model.pt"), is_url("C:\\\\runs\\\\model.pt"), is_url("runs/model.pt")
    (True, False, False)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections import OrderedDict
from typing import IO, Any, Iterator

__all__ = ["is_url", "protocol_of", "filesystem", "open_url", "open_range_file", "is_local", "upload", "RangeFile", "BLOCK",
           "CHUNK", "INSTALL_HINT"]

#: Reads smaller than this fetch the whole block around them (64 KiB).
BLOCK = 1 << 16
#: Larger reads fetch at most this much per request (64 MiB), into the caller's buffer.
CHUNK = 1 << 26
#: Blocks kept per open file.
_BLOCKS_KEPT = 4

INSTALL_HINT = "pip install fsspec (part of nbckpt's remote extra)"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+(://|::)")

#: The package fsspec needs for a protocol, where it is not fsspec itself.
_PROTOCOL_PACKAGES = {
    "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
    "abfss": "adlfs", "adl": "adlfs", "http": "aiohttp", "https": "aiohttp", "hf": "huggingface_hub",
    "sftp": "paramiko", "ssh": "paramiko", "hdfs": "pyarrow", "webdav": "webdav4", "oci": "ocifs",
}


def is_url(f: Any) -> bool:
    """Whether ``f`` is a URL fsspec opens: a ``str`` that starts with ``protocol://``
    (or ``protocol::`` for chained URLs). Paths and drive letters (``C:\\\\``) are not."""
    if not isinstance(f, str):
        return False
    match = _URL.match(f)
    if match is None:
        return False
    # "a::b" is a chained URL only when a protocol follows ("simplecache::s3://...")
    return match.group(1) == "://" or is_url(f[match.end():])


def protocol_of(url: str) -> str:
    """``"s3"`` for ``s3://bucket/key`` (the outermost protocol of a chained URL)."""
    match = _URL.match(url)
    return url[: match.start(1)] if match else ""


def _import_fsspec(url: str) -> Any:
    try:
        import fsspec.core  # noqa: PLC0415 - an optional dependency, only for URLs
    except ImportError as err:
        package = _PROTOCOL_PACKAGES.get(protocol_of(url))
        extra = f" and {package} for {protocol_of(url)}:// URLs" if package else ""
        raise ImportError(
            f"{url} is a URL: nbckpt reads and writes URLs through fsspec, which is not installed "
            f"({err}). Install it with: {INSTALL_HINT}{extra}"
        ) from err
    return fsspec


def filesystem(url: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """``(fs, path)``: the fsspec filesystem for ``url`` (with ``storage_options``) and the path in it.

        >>> fs, path = filesystem("memory://runs/model.pt")
        >>> type(fs).__name__, path
        ('MemoryFileSystem', '/runs/model.pt')
    """
    fsspec = _import_fsspec(url)
    protocol = protocol_of(url)
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(f"storage_options must be a dict, got {type(storage_options).__qualname__}")
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as err:
        package = _PROTOCOL_PACKAGES.get(protocol)
        hint = f"pip install {package}" if package else "install the package fsspec names above"
        raise ImportError(
            f"{url}: fsspec cannot open {protocol}:// URLs here: {err}. Install what it needs: {hint}"
        ) from err
    except ValueError as err:
        if "protocol" in str(err).lower():
            raise ValueError(
                f"{url}: fsspec knows no protocol {protocol!r} ({err}). Check the URL; fsspec's known "
                f"protocols are listed by fsspec.available_protocols()."
            ) from err
        raise


class RangeFile(io.RawIOBase):
    """A read-only, seekable binary file over ranged reads of an fsspec file.

    ``requests`` and ``bytes_fetched`` count what was fetched from the store.
    See the module doc for which reads fetch what.
    """

    def __init__(self, raw: Any, size: int, name: str) -> None:
        super().__init__()
        self._raw = raw
        self.size = size
        self.name = name
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self.requests = 0
        self.bytes_fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset} in {self.name}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(view.nbytes, self.size - self._pos))
        if n == 0:
            return 0
        if n < BLOCK:
            start, block = self._block_for(self._pos, n)
            at = self._pos - start
            view[:n] = block[at : at + n]
        else:
            # The start may be in a block already fetched (an array's first bytes come with the
            # block read for its local header): copy those, fetch only the rest.
            done = self._from_blocks(self._pos, view[:n])
            while done < n:
                step = min(CHUNK, n - done)
                data = self._fetch(self._pos + done, step)
                view[done : done + step] = data
                done += step
        self._pos += n
        return n

    def _from_blocks(self, pos: int, view: memoryview) -> int:
        """Copy the bytes at ``pos`` that a kept block holds into ``view``; how many."""
        for start, block in self._blocks.items():
            if start <= pos < start + len(block):
                n = min(view.nbytes, start + len(block) - pos)
                view[:n] = block[pos - start : pos - start + n]
                return n
        return 0

    def _block_for(self, pos: int, n: int) -> tuple[int, bytes]:
        for start, block in self._blocks.items():
            if start <= pos and pos + n <= start + len(block):
                self._blocks.move_to_end(start)
                return start, block
        # Near the end of the file, fetch the whole tail: the zip end records, the central
        # directory and the last small records are read backwards from there.
        start = max(0, self.size - BLOCK) if pos + n > self.size - BLOCK else pos
        block = self._fetch(start, min(BLOCK, self.size - start))
        self._blocks[start] = block
        while len(self._blocks) > _BLOCKS_KEPT:
            self._blocks.popitem(last=False)
        return start, block

    def _fetch(self, start: int, n: int) -> bytes:
        self._raw.seek(start)
        data = self._raw.read(n)
        self.requests += 1
        self.bytes_fetched += len(data)
        if len(data) != n:
            raise OSError(f"{self.name}: expected {n} bytes at offset {start}, the store returned {len(data)}")
        return data

    def close(self) -> None:
        if not self.closed:
            self._blocks.clear()
            self._raw.close()
        super().close()


@contextlib.contextmanager
def open_url(url: str, storage_options: dict | None = None) -> Iterator[RangeFile]:
    """The checkpoint at ``url`` as a :class:`RangeFile` (closed after the block)."""
    stream = open_range_file(url, storage_options)
    try:
        yield stream
    finally:
        stream.close()


def open_range_file(url: str, storage_options: dict | None = None) -> RangeFile:
    """The checkpoint at ``url`` as a :class:`RangeFile`; the caller closes it."""
    fs, path = filesystem(url, storage_options)
    # No fsspec cache: RangeFile decides what to fetch (see the module doc).
    raw = fs.open(path, "rb", cache_type="none")
    try:
        size = raw.size if getattr(raw, "size", None) is not None else fs.size(path)
    except BaseException:
        raw.close()
        raise
    return RangeFile(raw, int(size), url)


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is fsspec's local filesystem (``file://`` URLs)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


@contextlib.contextmanager
def upload(fs: Any, path: str, *, progress: Any = None) -> Iterator[IO[bytes]]:
    """A local temporary file that is uploaded to ``path`` on ``fs`` in one operation
    when the block completes.

    Nothing reaches the store when the block raises; the temporary file is
    removed either way. ``progress(total)`` makes a bar (``update(n)``,
    ``close()``) advanced as the upload goes. See the module doc for what each
    store guarantees.
    """
    fd, tmp = tempfile.mkstemp(prefix="nbckpt-upload-", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:  # f.name is the path, for writers that want one
            yield f
        bar = progress(os.path.getsize(tmp)) if progress is not None else None
        try:
            if bar is None:
                fs.put_file(tmp, path)
            else:
                fs.put_file(tmp, path, callback=_callback(bar))
        finally:
            if bar is not None:
                bar.close()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _callback(bar: Any) -> Any:
    from fsspec.callbacks import Callback  # noqa: PLC0415

    class _Progress(Callback):
        def call(self, *args: Any, **kwargs: Any) -> None:
            pass

        def relative_update(self, inc: int = 1) -> None:
            bar.update(inc)

    return _Progress()
