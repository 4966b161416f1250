"""Which format a checkpoint is in, from its leading bytes (or its folder), and its reader.

:func:`sniff` looks at the first bytes only (and, for folders, at file names):

==============  ===========================================================
format          recognised by
==============  ===========================================================
``zip``         ``PK\\x03\\x04`` whose first record lies in a folder (torch >= 1.6;
                TorchScript archives are refused by the zip reader)
``npz``         ``PK\\x03\\x04`` whose first record is a top-level ``*.npy``
``legacy``      the pickled magic number of torch < 1.6 streams
``tar``         ``ustar`` at offset 257 (torch 0.1–0.3)
``safetensors`` a little-endian u64 header size, then ``{``
``sharded``     a JSON object (an ``*.index.json`` with a ``weight_map``), or
                a folder holding one
``dcp``         a folder holding ``.metadata`` (torch.distributed.checkpoint)
==============  ===========================================================

:func:`open_reader` opens ``f`` (path, folder, URL or file object), sniffs it
and returns the :class:`~nbckpt.formats.base.Reader` of :data:`READERS`.

    >>> import io, numpy as np
    >>> buf = io.BytesIO()
    >>> np.savez(buf, a=np.ones(2))
    >>> _ = buf.seek(0)
    >>> sniff(buf), buf.tell()
    ('npz', 0)
"""

from __future__ import annotations

import importlib
import os
import struct
from dataclasses import dataclass
from typing import IO, Any

from ..errors import FormatError
from ..format import legacy as legacy_spec
from ..format import spec

__all__ = ["READERS", "Target", "sniff", "sniff_stream", "sniff_folder", "open_reader", "reader_class",
           "INDEX_SUFFIX"]

#: Format name -> ``(module, class)`` of its reader, imported when first needed.
#: The ``dcp`` reader lives in :mod:`nbckpt.formats.dcp`.
READERS: dict[str, tuple[str, str]] = {
    "zip": ("nbckpt.formats.torch_zip", "TorchZipReader"),
    "legacy": ("nbckpt.formats.legacy_stream", "LegacyStreamReader"),
    "tar": ("nbckpt.formats.legacy_stream", "LegacyTarReader"),
    "safetensors": ("nbckpt.formats.safetensors", "SafetensorsReader"),
    "sharded": ("nbckpt.formats.sharded", "ShardedReader"),
    "npz": ("nbckpt.formats.npz", "NpzReader"),
    "dcp": ("nbckpt.formats.dcp", "DcpReader"),
}

#: How sharded checkpoints name their index (``model.safetensors.index.json``...).
INDEX_SUFFIX = ".index.json"
#: The file a torch.distributed.checkpoint folder describes itself in.
DCP_METADATA = ".metadata"
#: A safetensors header larger than this is refused (safetensors' own limit is 100 MB).
SAFETENSORS_HEADER_LIMIT = 100_000_000


@dataclass
class Target:
    """A checkpoint to open: a file (``stream``) or a folder (``stream`` is None).

    ``owned``: the reader closes ``stream``. ``path`` is the local path of the
    file or folder when there is one; ``source`` names it in messages.
    """

    stream: IO[bytes] | None
    owned: bool
    path: str | None
    source: str
    storage_options: dict | None = None

    def close(self) -> None:
        if self.owned and self.stream is not None and not self.stream.closed:
            self.stream.close()


def sniff_stream(stream: IO[bytes], *, path: str | None = None) -> str:
    """The format of the checkpoint at ``stream``'s position (which is kept).

    FormatError for an empty stream or bytes of no known format.
    """
    start = stream.tell()
    try:
        head = stream.read(64)
        if len(head) < 64:
            head += stream.read(64 - len(head))  # a file object may return short reads
        if not head:
            raise FormatError("the file is empty (or the stream is at its end): there is no checkpoint to load")
        if head[:4] == spec.LOCAL_MAGIC:
            return _zip_kind(head)
        if head.startswith(legacy_spec.MAGIC_PICKLE):
            return "legacy"
        if len(head) >= 9 and head[8:9] == b"{":
            size = struct.unpack("<Q", head[:8])[0]
            if 2 <= size <= SAFETENSORS_HEADER_LIMIT:
                return "safetensors"
        if head.lstrip()[:1] == b"{":
            return "sharded"
        stream.seek(start + 257)
        if stream.read(5) == b"ustar":
            return "tar"
    finally:
        stream.seek(start)
    raise FormatError(
        f"not a torch checkpoint: the data starts with {head[:8]!r}, which is none of a torch "
        f"zip archive (b'PK\\x03\\x04', torch >= 1.6), a legacy torch file (torch < 1.6), a "
        f"safetensors file, an .npz archive or a sharded *.index.json. A plain pickle is loaded "
        f"with pickle.load, not nbckpt.load."
    )


def _zip_kind(head: bytes) -> str:
    """``npz`` when the first local record is a top-level ``.npy`` file, else ``zip``."""
    if len(head) >= 30:
        name_len = struct.unpack("<H", head[26:28])[0]
        name = head[30 : 30 + name_len]
        if name.endswith(b".npy") and b"/" not in name:
            return "npz"
    return "zip"


def sniff_folder(path: str) -> str:
    """The format of a checkpoint folder: ``sharded`` (an index JSON) or ``dcp``.

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     sniff_folder(folder)
        Traceback (most recent call last):
        ...
        nbckpt.errors.FormatError: ... holds no checkpoint nbckpt reads: ...
    """
    if find_index(path) is not None:
        return "sharded"
    if os.path.isfile(os.path.join(path, DCP_METADATA)):
        return "dcp"
    raise FormatError(
        f"the folder {path} holds no checkpoint nbckpt reads: expected a sharded checkpoint's "
        f"index (model.safetensors.index.json, pytorch_model.bin.index.json or another "
        f"*{INDEX_SUFFIX}) or a torch.distributed.checkpoint folder ({DCP_METADATA}). Pass the "
        f"path of a checkpoint file instead."
    )


def find_index(folder: str) -> str | None:
    """The index JSON of a sharded checkpoint folder (safetensors' first), or None."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(INDEX_SUFFIX))
    except OSError:
        return None
    if not names:
        return None
    names.sort(key=lambda n: (".safetensors" not in n, n))
    return os.path.join(folder, names[0])


def sniff(f: Any, *, storage_options: dict | None = None) -> str:
    """The format of the checkpoint ``f`` (path, folder, URL or seekable file object).

    A file object's position is kept.
    """
    from ..io.sources import open_source

    if _is_folder(f):
        return sniff_folder(os.fsdecode(f))
    with open_source(f, storage_options) as (stream, name):
        return sniff_stream(stream, path=name)


def reader_class(fmt: str) -> type:
    """The reader class of format ``fmt`` (imported on first use)."""
    module_name, class_name = READERS[fmt]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise FormatError(
            f"this is a {fmt} checkpoint, which this version of nbckpt cannot read yet "
            f"({module_name} is missing). Convert it with torch first."
        ) from None
    return getattr(module, class_name)


def sniff_folder_format(f: Any) -> str | None:
    """The format of ``f`` if it is a checkpoint folder (``sharded`` or ``dcp``), else None."""
    return sniff_folder(os.fsdecode(f)) if _is_folder(f) else None


def _is_folder(f: Any) -> bool:
    from ..io.sources import is_path

    return is_path(f) and os.path.isdir(f)


def open_reader(f: Any, *, weights_only: bool = True, storage_options: dict | None = None) -> Any:
    """The reader of checkpoint ``f``: see :class:`nbckpt.formats.base.Reader`.

    ``f`` is a path (a file, or a folder of a sharded or DCP checkpoint), a URL
    (with fsspec ``storage_options``) or a seekable binary file object, used
    from its current position.
    """
    from ..io.sources import is_path, open_input

    if _is_folder(f):
        path = os.fsdecode(f)
        target = Target(None, False, path, path, storage_options)
        return reader_class(sniff_folder(path))(target, weights_only=weights_only)
    stream, owned = open_input(f, storage_options)
    path = os.fsdecode(f) if is_path(f) else None
    source = path if path is not None else (str(f) if isinstance(f, str) else f"<{type(f).__qualname__}>")
    target = Target(stream, owned, path, source, storage_options)
    try:
        fmt = sniff_stream(stream, path=path)
        return reader_class(fmt)(target, weights_only=weights_only)
    except BaseException:
        target.close()
        raise
