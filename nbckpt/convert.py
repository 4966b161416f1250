"""Convert checkpoints between torch files, DCP folders, safetensors and NumPy ``.npz``: :func:`convert`.

The target's format is ``format=`` (the values :func:`nbckpt.save` takes, plus
``"safetensors"`` and ``"npz"``), or by default the one its extension names:

- **torch** (``.pt``, ``.pth``, ``.ckpt``, ``.bin``; ``format="zip"``, or
  ``"legacy"`` for torch's pre-1.6 format): any structure nbckpt saves, shared
  storages kept;
- **dcp** (``format="dcp"`` only: a folder): a torch.distributed.checkpoint
  folder, as ``nbckpt.save(..., format="dcp")`` writes it (a dict at the top);
- **safetensors** (``.safetensors``, read and written with the ``safetensors``
  package): a flat map of names to arrays, no sharing, string metadata. bfloat16
  and the float8 family are kept (through ``ml_dtypes``); complex128, complex32
  and torch's raw types are not in the format.
- **npz** (``.npz``, NumPy's own ``numpy.lib.format`` and ``np.load``): a flat
  map of names to arrays, no sharing, NumPy dtypes only (no bfloat16 or float8).

A conversion that would lose something says exactly what, and is refused
(:class:`nbckpt.LossyConversionError`, nothing written) unless ``lossy=True``:

- *nesting*: flat formats hold ``name -> array``; nested dicts, lists and
  tuples become dotted names (``model.layers.0.weight``);
- *non-array values* (numbers, strings, configs): npz drops them; safetensors
  keeps the JSON-exact ones (``None``, ``bool``, ``int``, ``float``, ``str``, and
  lists and string-keyed dicts of those) as JSON in its ``__metadata__`` under
  :data:`METADATA_KEY`, from where converting back restores them; the others
  are dropped;
- *sharing*: arrays that share memory are written as separate copies
  (safetensors refuses shared tensors; npz has no sharing);
- *dtypes* the target lacks are written as their raw bits (unsigned integers of
  the same size; an extra last axis of bytes for 16-byte items).

Metadata of a safetensors file other than nbckpt's own has no place in a torch
checkpoint or an npz and counts as lost too, except ``format`` (the framework
tag writers put there), which only describes the file.

    >>> import os, tempfile, numpy as np, nbckpt
    >>> folder = tempfile.mkdtemp()
    >>> nbckpt.save({"w": np.eye(2, dtype=np.float32), "step": 3}, os.path.join(folder, "a.pt"))
    >>> try:
    ...     nbckpt.convert(os.path.join(folder, "a.pt"), os.path.join(folder, "a.npz"))
    ... except nbckpt.LossyConversionError as err:
    ...     print(err.lost)
    ['non-array values: step (int) are not written']
    >>> report = nbckpt.convert(os.path.join(folder, "a.pt"), os.path.join(folder, "a.npz"), lossy=True)
    >>> report.lost, sorted(np.load(os.path.join(folder, "a.npz")).files)
    (['non-array values: step (int) are not written'], ['w'])
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import ml_dtypes
import numpy as np

from .io import remote
from .api import load, save
from .errors import FormatError, LossyConversionError, typed_errors
from .format import dtypes as torch_dtypes
from .meta import MetaArray
from .formats.names import dotted_name
from .io.sources import atomic_path, atomic_write, check_storage_options, is_url
from .summary import format_bytes

__all__ = ["convert", "ConversionReport", "format_of", "target_format", "FORMATS", "TARGETS", "METADATA_KEY"]

#: File extension -> format.
FORMATS = {".pt": "torch", ".pth": "torch", ".ckpt": "torch", ".bin": "torch", ".safetensors": "safetensors",
           ".npz": "npz"}

#: The safetensors ``__metadata__`` entry holding a checkpoint's non-array values, as JSON.
METADATA_KEY = "nbckpt.values"

#: safetensors metadata that only describes the file (not lost when it is left out).
_DESCRIPTIVE_METADATA = ("format",)

# safetensors dtype codes <-> NumPy dtypes (safetensors.numpy knows only the plain ones).
_SAFETENSORS_DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8), "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16), "U32": np.dtype(np.uint32), "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64), "I64": np.dtype(np.int64), "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32), "F64": np.dtype(np.float64), "C64": np.dtype(np.complex64),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz), "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
}
_SAFETENSORS_WRITES = frozenset(_SAFETENSORS_DTYPES.values())
_NPZ_WRITES = frozenset(np.dtype(c) for c in "?bBhHiIlLqQefdFD")

_EXAMPLES = 5

#: A flat target may hold at most this many times the bytes of the distinct arrays the
#: source holds (plus :data:`EXPANSION_FLOOR`): views that repeat their data (stride 0)
#: or containers the pickle repeats through its memo would otherwise turn a file of a
#: few kB into terabytes.
EXPANSION_LIMIT = 16
#: ... and this many bytes whatever the source (expanded broadcasts of small arrays).
EXPANSION_FLOOR = 1 << 28
#: Entries (arrays and values, counted with repeats) a source may flatten to.
MAX_ENTRIES = 200_000


@dataclass
class ConversionReport:
    """What :func:`convert` did (or, refused, would have done).

    ``lost`` lists what the target cannot hold, one sentence each (empty for a
    lossless conversion); ``notes`` what was changed without losing anything.
    ``written`` is False when the conversion was refused.
    """

    source: str
    target: str
    source_format: str
    target_format: str
    arrays: int = 0
    array_bytes: int = 0
    lost: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: bool = False

    @property
    def lossless(self) -> bool:
        return not self.lost

    def summary(self) -> str:
        """One line: what was converted into what."""
        verb = "converted" if self.written else "not converted"
        return (f"{verb}: {self.source} ({self.source_format}) -> {self.target} ({self.target_format}): "
                f"{self.arrays} arrays, {format_bytes(self.array_bytes)}")

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  lost: {item}" for item in self.lost]
        lines += [f"  note: {item}" for item in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {"source": self.source, "target": self.target, "source_format": self.source_format,
                "target_format": self.target_format, "arrays": self.arrays, "array_bytes": self.array_bytes,
                "lost": list(self.lost), "notes": list(self.notes), "written": self.written}


def format_of(f: Any) -> str:
    """The format a file's extension names (see :data:`FORMATS`); ValueError if none.

        >>> format_of("runs/model.pth"), format_of("s3://b/m.safetensors?x=1"), format_of("w.npz")
        ('torch', 'safetensors', 'npz')
    """
    name = os.fsdecode(f) if isinstance(f, (str, os.PathLike)) else ""
    if is_url(name):
        name = name.split("?", 1)[0].split("#", 1)[0]
    suffix = os.path.splitext(name)[1].lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    known = ", ".join(FORMATS)
    raise ValueError(f"cannot tell the format of {name or repr(f)} from its extension {suffix or '(none)'!r}: "
                     f"use one of {known}")


#: ``format=`` values :func:`convert` takes (those of :func:`nbckpt.save`, then the flat formats) -> family.
TARGETS = {"zip": "torch", "legacy": "torch", "dcp": "dcp", "safetensors": "safetensors", "npz": "npz"}


def target_format(dst: Any, format: str | None = None) -> str:
    """The ``format=`` :func:`convert` writes ``dst`` in: ``format`` checked against the extension
    of ``dst``, or told by that extension (``"zip"`` for torch files) when ``format`` is None.

        >>> target_format("m.pt"), target_format("m.pt", "legacy"), target_format("ckpt", "dcp")
        ('zip', 'legacy', 'dcp')
    """
    if format is None:
        try:
            family = format_of(dst)
        except ValueError as err:
            raise ValueError(f"{err}; or pass format= (--format): {', '.join(map(repr, TARGETS))}") from None
        return "zip" if family == "torch" else family
    if format not in TARGETS:
        raise ValueError(f"format must be one of {', '.join(map(repr, TARGETS))} ('zip' and 'legacy' are "
                         f"torch files, as in nbckpt.save; 'dcp' a torch.distributed.checkpoint folder), "
                         f"got {format!r}")
    try:
        named = format_of(dst)
    except ValueError:  # no extension nbckpt knows: format= decides
        return format
    if named != TARGETS[format]:
        raise ValueError(f"format={format!r} writes {_WRITES[format]}, but the target {os.fsdecode(dst)} has "
                         f"the extension of {_FAMILY_NAMES[named]}: rename the target, or leave out format= "
                         f"(--format) to write what its extension says")
    return format


_FAMILY_NAMES = {"torch": "a torch file", "safetensors": "a safetensors file", "npz": "an npz file"}
_WRITES = {"zip": "a torch file", "legacy": "a torch file in torch's pre-1.6 format",
           "dcp": "a torch.distributed.checkpoint folder", "safetensors": "a safetensors file", "npz": "an npz file"}


def convert(src: Any, dst: Any, *, format: str | None = None, lossy: bool = False,
            weights_only: bool = True, storage_options: dict | None = None, progress: bool | None = None,
            legacy: bool | None = None) -> ConversionReport:
    """Convert the checkpoint ``src`` (any format nbckpt reads, told by its first bytes) to ``dst``.

    ``format`` is what to write, as in :func:`nbckpt.save`: ``"zip"`` (torch's
    format since 1.6), ``"legacy"`` (torch's pre-1.6 format), ``"dcp"`` (a
    torch.distributed.checkpoint folder), or one of the flat formats
    ``"safetensors"`` and ``"npz"``. ``None`` (the default) takes it from the
    extension of ``dst`` (see the module doc); a ``format`` that the extension
    contradicts (``format="npz"`` for ``model.pt``) raises ValueError.

    ``src`` and ``dst`` are paths or URLs (``storage_options`` go to fsspec for
    URLs). The conversion is checked before anything is written: if it would
    lose something, :class:`nbckpt.LossyConversionError` says what, unless
    ``lossy=True``. ``dst`` is written atomically (or uploaded whole).
    ``weights_only=False`` loads a torch source with the full unpickler
    (trusted files only). ``progress`` shows progress bars (``None``: only for
    large files). ``legacy=True`` is the deprecated spelling of
    ``format="legacy"``. Returns a :class:`ConversionReport`.

        >>> import os, tempfile, numpy as np, nbckpt
        >>> folder = tempfile.mkdtemp()
        >>> nbckpt.save({"w": np.ones(2)}, os.path.join(folder, "a.pt"))
        >>> nbckpt.convert(os.path.join(folder, "a.pt"), os.path.join(folder, "old.pt"), format="legacy").written
        True
    """
    if legacy is not None:
        format = _deprecated_legacy(legacy, format, dst)
    fmt = target_format(dst, format)
    if storage_options is not None and not (is_url(src) or is_url(dst)):
        check_storage_options(src, storage_options)  # raises: neither is a URL
    source_format = _source_format(src, storage_options if is_url(src) else None)
    src_options = storage_options if is_url(src) else None
    dst_options = storage_options if is_url(dst) else None
    report = ConversionReport(os.fsdecode(src), os.fsdecode(dst), source_format, TARGETS[fmt])
    with typed_errors(f"converting {report.source}"):
        return _convert(src, dst, report, fmt, lossy=lossy, weights_only=weights_only,
                        progress=progress, src_options=src_options, dst_options=dst_options)


def _deprecated_legacy(legacy: Any, format: str | None, dst: Any) -> str | None:
    """``format`` for a call that passed the deprecated ``legacy=`` (with the warning)."""
    new = "format='legacy'" if legacy else "format='zip' (or leave format out)"
    warnings.warn(f"nbckpt.convert(legacy={legacy!r}) is deprecated: pass {new}, as nbckpt.save takes it",
                  DeprecationWarning, stacklevel=3)
    if not legacy:
        return format
    if format not in (None, "legacy"):
        raise ValueError(f"legacy=True asks for format='legacy', but format={format!r} was passed: pass only "
                         f"format='legacy'")
    try:
        named = format_of(dst)
    except ValueError:
        named = "torch"
    if named != "torch":
        raise ValueError(f"legacy=True writes torch's pre-1.6 format; the target {os.fsdecode(dst)} is {named}")
    return "legacy"


def _convert(src: Any, dst: Any, report: ConversionReport, fmt: str, *, lossy: bool, weights_only: bool,
             progress: bool | None, src_options: dict | None, dst_options: dict | None) -> ConversionReport:
    family = report.target_format  # torch, dcp, safetensors or npz
    tree, metadata = _read(src, report.source_format, weights_only=weights_only, progress=progress,
                           options=src_options)
    foreign = {k: v for k, v in metadata.items() if k not in _DESCRIPTIVE_METADATA}
    if foreign and family != "safetensors":
        report.lost.append(f"safetensors metadata: {_names(list(foreign))} (a {family} file has no "
                           f"place for it)")
    if family == "dcp" and not isinstance(tree, dict):
        raise FormatError(f"{report.source} holds a {type(tree).__name__}; format='dcp' writes a state dict (a "
                          f"dict at the top, as torch.distributed.checkpoint does): convert it to a torch file "
                          f"(format='zip') instead")
    if family in ("torch", "dcp"):
        arrays = _arrays_in(tree)
        report.arrays, report.array_bytes = len(arrays), sum(a.nbytes for a in arrays)
        _refuse_if_lossy(report, lossy)
        save(tree, dst, format=fmt, progress=progress, storage_options=dst_options)
    else:
        flat = _flatten(tree, family, report)
        _refuse_if_lossy(report, lossy)
        if family == "safetensors":
            _write_safetensors(dst, flat.arrays, {**metadata, **flat.metadata}, dst_options)
        else:
            _write_npz(dst, flat.arrays, dst_options)
    report.written = True
    return report


def _refuse_if_lossy(report: ConversionReport, lossy: bool) -> None:
    if report.lost and not lossy:
        raise LossyConversionError(
            f"converting {report.source} to {report.target_format} would lose: {'; '.join(report.lost)}. "
            f"Pass lossy=True (--lossy) to convert anyway.",
            lost=list(report.lost), report=report,
        )


# -- reading ------------------------------------------------------------------------------------


def _source_format(src: Any, options: dict | None) -> str:
    """The source's format from its first bytes (any format nbckpt reads), in this module's names."""
    from .formats.sniff import sniff

    fmt = sniff(src, storage_options=options)
    return "torch" if fmt in ("zip", "legacy", "tar") else fmt


def _read(src: Any, fmt: str, *, weights_only: bool, progress: bool | None,
          options: dict | None) -> tuple[Any, dict[str, str]]:
    """``(tree, safetensors metadata other than nbckpt's)`` of the source."""
    if fmt != "safetensors":  # nbckpt.load reads every other format (npz in native byte order, never pickle)
        return load(src, "cpu", weights_only=weights_only, progress=progress, storage_options=options), {}
    with _local_copy(src, options) as path:
        return _read_safetensors(path)


@contextlib.contextmanager
def _local_copy(src: Any, options: dict | None) -> Iterator[str]:
    """A local path holding ``src`` (a temporary download for URLs: safetensors reads paths)."""
    if not is_url(src):
        yield os.fspath(src)
        return
    fs, path = remote.filesystem(src, options)
    if remote.is_local(fs):
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix="nbckpt-download-", suffix=".safetensors")
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _safetensors() -> Any:
    try:
        import safetensors  # noqa: PLC0415 - optional: only conversions need it
        import safetensors.numpy  # noqa: F401, PLC0415
    except ImportError as err:
        raise ImportError(f"safetensors files are read and written with the safetensors package ({err}): "
                          f"pip install safetensors") from err
    return safetensors


def _read_safetensors(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    safetensors = _safetensors()
    try:
        with safetensors.safe_open(path, framework="np") as opened:
            metadata = dict(opened.metadata() or {})
        with open(path, "rb") as f:
            tensors = safetensors.deserialize(f.read())
    except safetensors.SafetensorError as err:
        raise FormatError(f"{path} is not a valid safetensors file: {err}") from None
    tree: dict[str, Any] = {}
    for name, tensor in tensors:
        dtype = _SAFETENSORS_DTYPES.get(tensor["dtype"])
        if dtype is None:
            raise FormatError(f"{path}: tensor {name!r} has safetensors dtype {tensor['dtype']}, which nbckpt "
                             f"cannot represent in NumPy (known: {', '.join(_SAFETENSORS_DTYPES)})")
        tree[name] = np.frombuffer(tensor["data"], dtype=dtype).reshape(tensor["shape"])
    values = metadata.pop(METADATA_KEY, None)
    if values is not None:
        try:
            restored = json.loads(values)
        except ValueError as err:
            raise FormatError(f"{path}: the metadata entry {METADATA_KEY!r} is not JSON ({err})") from err
        if not isinstance(restored, dict):
            raise FormatError(f"{path}: the metadata entry {METADATA_KEY!r} is not a JSON object")
        for name, value in restored.items():
            tree.setdefault(name, value)
    return tree, metadata


# -- flattening ------------------------------------------------------------------------------------


@dataclass
class _Flat:
    arrays: dict[str, np.ndarray]
    metadata: dict[str, str]


def _walk(tree: Any) -> Iterator[tuple[tuple, Any]]:
    """``(path, leaf)`` for every leaf: arrays, and values that hold no arrays (as a whole).

    A container the source repeats is walked each time it appears (each path is an
    entry of a flat file), but at most :data:`MAX_ENTRIES` entries in all.
    """
    holders = _holders_of_arrays(tree)
    paths = _count_paths(tree, holders)
    if paths > MAX_ENTRIES:
        raise FormatError(f"the source flattens to {paths} entries, more than {MAX_ENTRIES} (it repeats "
                          f"containers through the pickle's memo?): refused")
    stack: list[tuple[tuple, Any]] = [((), tree)]
    count = 0
    while stack:
        path, obj = stack.pop()
        count += 1
        if count > MAX_ENTRIES:
            raise FormatError(f"the source flattens to more than {MAX_ENTRIES} entries (it repeats containers "
                              f"through the pickle's memo?): refused")
        if isinstance(obj, (dict, list, tuple)) and id(obj) in holders:
            items = list(dict.items(obj)) if isinstance(obj, dict) else list(enumerate(obj))
            stack.extend((path + (k,), v) for k, v in reversed(items))
        else:
            yield path, obj


def _count_paths(tree: Any, holders: set[int]) -> int:
    """How many entries :func:`_walk` would yield, counted on the DAG (each container once)."""
    counts: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(tree, False)]
    while stack:
        obj, expanded = stack.pop()
        if not isinstance(obj, (dict, list, tuple)) or id(obj) not in holders:
            continue
        children = list(dict.values(obj)) if isinstance(obj, dict) else list(obj)
        if expanded:
            counts[id(obj)] = sum(counts.get(id(c), 1) for c in children)
        elif id(obj) not in counts:
            counts[id(obj)] = 0  # being counted (a container cannot hold itself here: it holds arrays)
            stack.append((obj, True))
            stack.extend((c, False) for c in children if id(c) not in counts)
    return counts.get(id(tree), 1)


def _holders_of_arrays(tree: Any) -> set[int]:
    """ids of the containers in ``tree`` that hold an array at some depth (each visited once)."""
    holders: set[int] = set()
    visited: set[int] = set()
    stack: list[tuple[Any, bool]] = [(tree, False)]
    while stack:
        obj, expanded = stack.pop()
        if not isinstance(obj, (dict, list, tuple)):
            continue
        children = list(dict.values(obj)) if isinstance(obj, dict) else list(obj)
        if expanded:
            if any(isinstance(c, np.ndarray) or id(c) in holders for c in children):
                holders.add(id(obj))
            continue
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        stack.append((obj, True))
        stack.extend((c, False) for c in children)
    return holders


def _arrays_in(tree: Any) -> list[np.ndarray]:
    """Each distinct array of ``tree`` once (a torch target keeps repeats as references)."""
    found: dict[int, np.ndarray] = {}
    stack = [tree]
    visited: set[int] = set()
    while stack:
        obj = stack.pop()
        if isinstance(obj, np.ndarray):
            found.setdefault(id(obj), obj)
        elif isinstance(obj, (dict, list, tuple)) and id(obj) not in visited:
            visited.add(id(obj))
            stack.extend(dict.values(obj) if isinstance(obj, dict) else obj)
    return list(found.values())


def _flatten(tree: Any, target: str, report: ConversionReport) -> _Flat:
    arrays: dict[str, np.ndarray] = {}
    origin: dict[str, tuple] = {}
    values: dict[str, Any] = {}
    nested: list[tuple[str, tuple]] = []
    flat_root = isinstance(tree, dict)
    for path, leaf in _walk(tree):
        name = dotted_name(path)  # the names nbckpt.open shows ("" for a checkpoint that is one array)
        if not path or len(path) > 1 or not isinstance(path[0], str):
            if isinstance(leaf, np.ndarray):
                nested.append((name, path))
        if name in arrays or name in values:
            raise ValueError(f"two entries of {report.source} would both be named {name!r} in {target} "
                             f"({origin.get(name, ())!r} and {path!r}); rename one before converting")
        origin[name] = path
        if isinstance(leaf, np.ndarray):
            arrays[name] = leaf
        else:
            values[name] = leaf
    if nested:
        name, path = nested[0]
        where = "".join(f"[{k!r}]" for k in path) if path else "the whole checkpoint"
        kind = "nested containers" if flat_root or path else "a single array"
        report.lost.append(f"nesting: {len(nested)} arrays in {kind} get dotted names "
                           f"(e.g. {name or repr(name)} from {where})")
    if target == "npz":
        arrays = _safe_entry_names(arrays, report)
    metadata = _values(values, target, report)
    _check_expansion(arrays, report)
    _check_sharing(arrays, target, report)
    written = {name: _writable(name, array, target, report) for name, array in arrays.items()}
    report.arrays, report.array_bytes = len(written), sum(a.nbytes for a in written.values())
    return _Flat(written, metadata)


#: Items a value may hold to be kept as JSON (a value the memo repeats 2**40 times is not).
JSON_ITEM_LIMIT = 100_000


def _json_exact(value: Any) -> bool:
    """Whether JSON gives back exactly ``value`` (type included), in at most
    :data:`JSON_ITEM_LIMIT` items and 50 levels (each repeat counted: JSON repeats too)."""
    stack = [(value, 0)]
    items = 0
    while stack:
        item, depth = stack.pop()
        items += 1
        if items > JSON_ITEM_LIMIT or depth > 50:
            return False
        if item is None or type(item) in (bool, str, float) or (type(item) is int and item.bit_length() < 64):
            continue
        if type(item) is list:
            stack.extend((v, depth + 1) for v in item)
        elif type(item) is dict and all(type(k) is str for k in item):
            stack.extend((v, depth + 1) for v in item.values())
        else:
            return False
    return True


def _describe(value: Any) -> str:
    if isinstance(value, MetaArray):
        return "meta tensor"
    return type(value).__module__ + "." + type(value).__qualname__ if type(value).__module__ not in (
        "builtins", "collections") else type(value).__qualname__


def _values(values: dict[str, Any], target: str, report: ConversionReport) -> dict[str, str]:
    if target == "safetensors":
        kept = {name: value for name, value in values.items() if _json_exact(value)}
        dropped = [name for name in values if name not in kept]
        if kept:
            report.notes.append(f"non-array values {_names(list(kept))} kept as JSON in the safetensors "
                                f"metadata entry {METADATA_KEY!r}")
    else:
        kept, dropped = {}, list(values)
    if dropped:
        shown = _names([f"{name or '(root)'} ({_describe(values[name])})" for name in dropped])
        report.lost.append(f"non-array values: {shown} are not written")
    return {METADATA_KEY: json.dumps(kept)} if kept else {}


def _owner(array: np.ndarray) -> int:
    base = array
    while isinstance(base.base, np.ndarray):
        base = base.base
    return id(base.base) if base.base is not None else id(base)


def _check_sharing(arrays: dict[str, np.ndarray], target: str, report: ConversionReport) -> None:
    """Report the groups of arrays whose bytes overlap (one sort and one sweep per buffer).

    Overlap is decided by byte bounds, as ``np.may_share_memory`` decides it.
    """
    by_owner: dict[int, list[tuple[int, int, str]]] = {}
    for name, array in arrays.items():
        if array.size:
            low, high = np.lib.array_utils.byte_bounds(array)
            by_owner.setdefault(_owner(array), []).append((low, high, name))
    groups = []
    for spans in by_owner.values():
        if len(spans) < 2:
            continue
        spans.sort()
        group, reach = [spans[0][2]], spans[0][1]
        for low, high, name in spans[1:]:
            if low < reach:
                group.append(name)
                reach = max(reach, high)
            else:
                if len(group) > 1:
                    groups.append(group)
                group, reach = [name], high
        if len(group) > 1:
            groups.append(group)
    if groups:
        order = {name: i for i, name in enumerate(arrays)}
        groups = sorted((sorted(g, key=order.__getitem__) for g in groups), key=lambda g: order[g[0]])
        why = "safetensors refuses shared tensors" if target == "safetensors" else "npz has no sharing"
        shown = _names([" and ".join(group) for group in groups])
        report.lost.append(f"sharing: {shown} share memory; written as separate copies ({why})")


def _check_expansion(arrays: dict[str, np.ndarray], report: ConversionReport) -> None:
    """FormatError if the flat target would hold far more bytes than the source's arrays span.

    What a source holds is measured by byte bounds (per buffer, the span its views
    cover), not ``nbytes``: a stride-0 view's ``nbytes`` counts every repeat.
    """
    spans: dict[int, tuple[int, int]] = {}
    for array in arrays.values():
        if array.size:
            low, high = np.lib.array_utils.byte_bounds(array)
            owner = _owner(array)
            old = spans.get(owner, (low, high))
            spans[owner] = (min(old[0], low), max(old[1], high))
    source_bytes = sum(high - low for low, high in spans.values())
    written = sum(int(a.nbytes) for a in arrays.values())
    allowed = EXPANSION_LIMIT * source_bytes + EXPANSION_FLOOR
    if written > allowed:
        raise FormatError(
            f"converting {report.source} would write {format_bytes(written)} of arrays from "
            f"{format_bytes(source_bytes)} of stored data: its views repeat data (stride 0 or overlapping) "
            f"or its pickle repeats containers. nbckpt writes at most {EXPANSION_LIMIT}x the stored data "
            f"plus {format_bytes(EXPANSION_FLOOR)}; load it with nbckpt.load and save what you need.")


def safe_entry_name(name: str) -> str:
    """``name`` as a zip entry that cannot point outside the folder it is extracted to.

    Backslashes become ``/``; empty, ``.`` and ``..`` parts (a leading ``/``, ``../``)
    become ``_``-escaped parts; control characters are escaped.

        >>> safe_entry_name("../../etc/passwd"), safe_entry_name("/abs"), safe_entry_name("a/b.c")
        ('_../_../etc/passwd', '_/abs', 'a/b.c')
    """
    from .text import escape

    parts = escape(name).replace("\\", "/").split("/")
    return "/".join("_" + part if part in ("", ".", "..") or part.startswith("_") and part.strip("_.") == ""
                    else part for part in parts)


def _safe_entry_names(arrays: dict[str, np.ndarray], report: ConversionReport) -> dict[str, np.ndarray]:
    renamed = {name: safe_entry_name(name) for name in arrays}
    changed = [f"{name!r} as {new!r}" for name, new in renamed.items() if new != name]
    if not changed:
        return arrays
    if len(set(renamed.values())) != len(renamed):
        raise FormatError(f"the entry names of {report.source} cannot be made safe for a zip without two of "
                          f"them colliding: {_names(changed)}")
    report.lost.append(f"entry names: {_names(changed)} renamed (as they are, they would point outside the "
                       f"folder the npz is extracted to)")
    return {renamed[name]: array for name, array in arrays.items()}


def _writable(name: str, array: np.ndarray, target: str, report: ConversionReport) -> np.ndarray:
    dtype = array.dtype
    supported = _SAFETENSORS_WRITES if target == "safetensors" else _NPZ_WRITES
    if dtype.metadata is None and dtype.isnative and dtype in supported:
        return np.ascontiguousarray(array)
    torch = torch_dtypes.for_numpy(dtype)
    label = torch.name if torch is not None else str(dtype)
    raw = _raw_bits(np.ascontiguousarray(array))
    extra = f", with an extra last axis of {dtype.itemsize} bytes" if raw.ndim != array.ndim else ""
    report.lost.append(f"dtype: {name} is {label}, which {target} lacks; written as its raw bits ({raw.dtype}{extra})")
    return raw


def _raw_bits(array: np.ndarray) -> np.ndarray:
    size = array.dtype.itemsize
    if size in (1, 2, 4, 8):
        return array.view(np.dtype(f"<u{size}") if size > 1 else np.uint8)
    return array.view(np.uint8).reshape(array.shape + (size,))


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_EXAMPLES])
    return shown + (f" and {len(names) - _EXAMPLES} more" if len(names) > _EXAMPLES else "")


# -- writing ------------------------------------------------------------------------------------------


def _write_safetensors(dst: Any, arrays: dict[str, np.ndarray], metadata: dict[str, str],
                       options: dict | None) -> None:
    safetensors = _safetensors()
    with atomic_path(dst, storage_options=options) as path:
        safetensors.numpy.save_file(arrays, path, metadata=metadata or None)


def _write_npz(dst: Any, arrays: dict[str, np.ndarray], options: dict | None) -> None:
    # What np.savez writes (one .npy record per array, stored, zip64 allowed), without its
    # keyword-argument names: entries may be called "file" or "allow_pickle".
    with atomic_write(dst, storage_options=options) as handle:
        with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                with archive.open(name + ".npy", mode="w", force_zip64=array.nbytes >= (1 << 31)) as record:
                    np.lib.format.write_array(record, array, allow_pickle=False)

