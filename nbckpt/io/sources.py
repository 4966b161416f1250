"""Where checkpoints come from and go to: paths, URLs, file objects, atomic writes.

A ``str`` that starts with a protocol (``s3://``, ``https://``...) is a URL,
opened through fsspec (:mod:`nbckpt.io.remote`) with the ``storage_options``
given; every other ``str`` or ``os.PathLike`` is a local path.

Saving to a path is atomic: the bytes go to a temporary file in the same
folder, which is flushed, fsynced and then renamed over the target
(``os.replace``), and the folder is fsynced. A crash or an exception at any
point leaves the previous file as it was and no temporary file behind.

A process killed outright (SIGKILL, power loss) cannot remove its temporary
file, so temporaries are named after their writer —
``.<target>.nbckpt-<host>-<pid>-<start time>-<random>.tmp`` — and every save to a
folder first removes the temporaries there whose writer is gone
(:func:`remove_stale_temporaries`: same host, and that process no longer runs;
a live writer's file is never touched). ``nbckpt verify`` does the same.

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> target = os.path.join(folder, "x.bin")
    >>> with atomic_write(target) as f:
    ...     _ = f.write(b"new")
    >>> open(target, "rb").read(), os.listdir(folder)
    (b'new', ['x.bin'])
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import socket
import tempfile
import threading
from typing import IO, Any, Iterator

from . import remote
from ..progress import progress_bar
from .remote import is_url

__all__ = ["is_path", "is_url", "archive_prefix", "atomic_write", "atomic_path", "open_source", "open_input",
           "check_writable", "check_seekable", "check_storage_options", "remove_stale_temporaries"]

SEEKABLE_HINT = (
    "nbckpt can only load from a file object that is seekable. Read the data into a "
    "buffer first, e.g. nbckpt.load(io.BytesIO(stream.read())), and load from that."
)


def is_path(f: Any) -> bool:
    """Whether ``f`` names a file (a path or a URL) rather than being a file object."""
    return isinstance(f, (str, os.PathLike))


def check_storage_options(f: Any, storage_options: dict | None) -> None:
    """ValueError when ``storage_options`` is given for something that is not a URL."""
    if storage_options is not None and not is_url(f):
        raise ValueError(
            f"storage_options are for URLs (s3://..., https://...), but f is "
            f"{os.fsdecode(f) if is_path(f) else 'a ' + type(f).__qualname__}: leave storage_options out"
        )


def archive_prefix(f: Any) -> str:
    """The top folder torch would use for ``f``: the file's stem, or ``archive``.

    torch names it after the file minus its last extension, and uses ``archive``
    for file objects and for paths that are not ASCII.

        >>> archive_prefix("runs/model.tar.pth"), archive_prefix("ünï.pt"), archive_prefix(".hidden.pt")
        ('model.tar', 'archive', '.hidden')
    """
    if not is_path(f):
        return "archive"
    text = os.fsdecode(f)
    if is_url(text):  # the last part of the URL's path, without a query
        text = text.split("?", 1)[0].split("#", 1)[0]
    if not text.isascii():
        return "archive"
    name = text.replace("\\", "/").rsplit("/", 1)[-1]
    stem = name[: name.rfind(".")] if "." in name else name
    return stem or "archive"


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, storage_options: dict | None = None,
                 progress: bool | None = False, durable: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` only when the block completes.

    A URL is written to a local temporary file that is uploaded when the block
    completes (see :mod:`nbckpt.io.remote`; ``progress`` as in :func:`nbckpt.save`
    for the upload); ``file://`` URLs are local paths. ``durable=False`` skips
    the fsyncs: the replacement is still atomic for a process that crashes, but
    not for a machine that loses power before the OS writes the file out.
    """
    check_storage_options(path, storage_options)
    if is_url(path):
        fs, target = remote.filesystem(path, storage_options)
        if not remote.is_local(fs):
            with remote.upload(fs, target, progress=lambda total: progress_bar(total, "uploading", progress)) as f:
                yield f
            return
        path = target
    # Write through a symlink (a "latest.pt" link keeps pointing at the new data).
    path = os.path.realpath(os.fspath(path)) if os.path.islink(path) else os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    remove_stale_temporaries(folder)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{_writer_tag()}-",
                                   suffix=".tmp")
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"cannot save to {path!r}: the folder {folder!r} does not exist"
        ) from None
    except PermissionError:
        raise PermissionError(
            errno.EACCES,
            f"cannot save to {path!r}: no permission to create a file in {folder!r} (nbckpt writes "
            f"a temporary file next to the target and renames it, so that a failed save never "
            f"destroys the previous checkpoint)",
        ) from None
    try:
        # Unbuffered: the zip writer combines small writes itself, and large ones
        # then go to the kernel without passing through another buffer.
        with os.fdopen(fd, "wb", buffering=0) as f:
            behind = SyncBehind(f, name=tmp, every=SyncBehind.EVERY if durable else None)
            yield behind
            behind.finish()
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_folder(folder)


_TEMPORARY = re.compile(r"^\..*\.nbckpt-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<start>\d+)-[A-Za-z0-9_]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _writer_tag() -> str:
    pid = os.getpid()
    return f"nbckpt-{_host()}-{pid}-{_process_start(pid) or 0}"


def _writer_gone(pid: int, start: int) -> bool:
    if pid <= 0 or pid >= 1 << 31:
        return False  # not a process id a writer could have had: not ours to judge
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by someone else
        pass
    now = _process_start(pid)
    return bool(start) and now is not None and now != start  # the pid was reused by another process


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files of nbckpt saves in ``folder`` whose writer is gone; returns their paths.

    Only files named as :func:`atomic_write` names them, written on this host, by a
    process that no longer runs (or whose process id now belongs to a process that
    started later) are removed. Errors (a folder that cannot be listed) remove nothing.

        >>> import tempfile
        >>> remove_stale_temporaries(tempfile.mkdtemp())
        []
    """
    removed: list[str] = []
    host = _host()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        found = _TEMPORARY.match(name)
        if found is None or found["host"] != host:
            continue
        if _writer_gone(int(found["pid"]), int(found["start"])):
            path = os.path.join(os.fspath(folder), name)
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, storage_options: dict | None = None,
                progress: bool | None = False) -> Iterator[str]:
    """The path of a temporary file to write (for writers that want a name, not a file
    object); like :func:`atomic_write`, it replaces ``path`` (or is uploaded to the
    URL) only when the block completes, and is removed otherwise."""
    check_storage_options(path, storage_options)
    if is_url(path):
        fs, target = remote.filesystem(path, storage_options)
        if not remote.is_local(fs):
            with remote.upload(fs, target, progress=lambda total: progress_bar(total, "uploading", progress)) as f:
                yield f.name
            return
        path = target
    # The same steps as atomic_write, for a file someone else writes by name.
    with atomic_write(path) as handle:
        # Written by name (the same file); atomic_write then fsyncs and renames it.
        yield handle.name


class SyncBehind:
    """Writes to ``f``, asking the OS to push what was written to disk as it goes.

    The final ``fsync`` of an atomic save would otherwise wait for the whole file
    to reach the disk after the last write; syncing every few hundred MiB in a
    background thread overlaps that with the writing (``fdatasync`` releases the
    GIL), so durability costs little beyond the write itself.
    """

    EVERY = 1 << 28  # bytes between background syncs

    def __init__(self, f, every: int | None = EVERY, *, name: str = "") -> None:
        self._f = f
        self.name = name  # the file's path
        self._every = every if every is not None else float("inf")  # None: never sync
        self._since = 0
        self._thread: threading.Thread | None = None
        self._sync = getattr(os, "fdatasync", os.fsync)

    def write(self, data) -> int:
        # The file is unbuffered: a raw write may take only part of the data (Linux
        # writes at most 2 GiB at a time), so write until everything is out.
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        written = 0
        while written < view.nbytes:
            count = self._f.write(view[written:])
            if not count:
                raise OSError(f"write() wrote nothing with {view.nbytes - written} bytes left")
            written += count
        self._since += written
        if self._since >= self._every and (self._thread is None or not self._thread.is_alive()):
            self._since = 0
            self._f.flush()
            self._thread = threading.Thread(target=self._background_sync, args=(self._f.fileno(),),
                                            name="nbckpt-sync", daemon=True)
            self._thread.start()
        return written

    def _background_sync(self, fd: int) -> None:
        try:
            self._sync(fd)
        except OSError:  # the final fsync reports any real problem
            pass

    def flush(self) -> None:
        self._f.flush()

    def finish(self) -> None:
        if self._thread is not None:
            self._thread.join()


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some systems cannot open folders; the rename is still done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(f: Any) -> Any:
    """``f.write``, after checking it exists and is callable (as torch does)."""
    write = getattr(f, "write", None)
    if write is None:
        raise AttributeError(
            f"expected f to be a path (str or os.PathLike) or a file object with a 'write' "
            f"method, got {type(f).__module__}.{type(f).__qualname__}"
        )
    if not callable(write):
        raise TypeError(f"f.write of {type(f).__qualname__} is not callable")
    return write


@contextlib.contextmanager
def open_source(f: Any, storage_options: dict | None = None) -> Iterator[tuple[IO[bytes], str | None]]:
    """``(stream, name)`` for a path, a URL or a seekable binary file object (name None);
    what :func:`open_input` opens is closed after the block."""
    stream, owned = open_input(f, storage_options)
    try:
        yield stream, (f if is_url(f) else os.fsdecode(os.fspath(f)) if is_path(f) else None)
    finally:
        if owned:
            stream.close()


def open_input(f: Any, storage_options: dict | None = None) -> tuple[IO[bytes], bool]:
    """``(stream, owned)``: a path or URL opened for reading (``owned``: the caller closes
    it), or the seekable file object ``f`` itself."""
    check_storage_options(f, storage_options)
    if is_url(f):
        return remote.open_range_file(f, storage_options), True
    if is_path(f):
        return open(f, "rb"), True
    if not callable(getattr(f, "read", None)):
        raise AttributeError(
            f"expected f to be a path, a URL or a binary file object with a 'read' method, got "
            f"{type(f).__module__}.{type(f).__qualname__}"
        )
    check_seekable(f)
    return f, False


def check_seekable(f: Any) -> None:
    """Raise, with advice, when ``f`` cannot seek (a pipe, a socket, a stream)."""
    for name in ("seek", "tell"):
        if not callable(getattr(f, name, None)):
            raise AttributeError(f"{type(f).__qualname__} has no '{name}'. {SEEKABLE_HINT}")
    try:
        f.seek(f.tell())
    except (io.UnsupportedOperation, OSError) as err:
        raise io.UnsupportedOperation(f"{err}. {SEEKABLE_HINT}") from err
