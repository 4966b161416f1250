"""Checkpoints at URLs (``s3://``, ``gs://``, ``https://``, ``memory://``, ``file://`` ...) via fsspec.

Any ``f`` that is a string starting with a protocol (``s3://bucket/model.pt``;
chained URLs such as ``simplecache::s3://...`` too) is opened through
`fsspec <https://filesystem-spec.readthedocs.io>`_, an optional dependency
(``pip install fsspec``, nbckpt's ``remote`` extra, plus the protocol's own package: ``s3fs``
for S3, ``gcsfs`` for Google Cloud Storage, ``adlfs`` for Azure, ``aiohttp``
for HTTP). ``storage_options`` (a dict) is passed to the filesystem:
credentials, endpoints, ``anon=True``... Single-letter "protocols" are Windows
drive letters and never URLs.

Reading uses ranged requests (a :class:`~nbckpt.io.ranges.RangeFile` over the
object, with fsspec's own caches off), so :func:`nbckpt.open` fetches the zip
directory and ``data.pkl`` and nothing else, and each array's bytes only when
it is read; :mod:`nbckpt.io.ranges` says which reads fetch what.

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
import os
import re
import tempfile
from typing import IO, Any, Iterator

from .ranges import BLOCK, CHUNK, RangeFile

__all__ = ["is_url", "protocol_of", "filesystem", "open_range_file", "is_local", "upload", "RangeFile", "BLOCK",
           "CHUNK", "INSTALL_HINT"]

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
    # The store is the range: RangeFile fetches each block and large read with one ranged request.
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
