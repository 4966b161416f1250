"""Compare two checkpoints record by record: ``nbckpt.diff(a, b)``.

Both checkpoints are opened lazily (:func:`nbckpt.open`) and their arrays are
matched by dotted name. The report lists the records only in A, only in B, in
both with another shape or dtype, and in both with other values; equal records
are only counted. Values are compared one array at a time, in chunks of
:data:`CHUNK` elements, so memory stays bounded whatever the checkpoints hold:

- floats (float16/32/64, bfloat16 and float8 through float32) in float64: the
  largest absolute difference and the largest relative difference, relative to
  the larger magnitude of the two values (``|a - b| / max(|a|, |b|)``, so a
  parameter that moved away from 0 has relative difference 1, not infinity).
  NaN equals NaN; a NaN on one side only is counted in ``nan_mismatch`` and
  left out of the maxima;
- complex numbers by the magnitude of the difference (complex32 through complex64);
- integers and booleans exactly (``max_abs`` is an exact ``int``);
- raw torch types (``bits8``...) by their bytes (how many elements differ).

Non-array entries (``archive.values``: numbers, strings, configurations) are
compared too.

    >>> import io, numpy as np, nbckpt
    >>> def saved(obj):
    ...     buf = io.BytesIO(); nbckpt.save(obj, buf); buf.seek(0); return buf
    >>> a = saved({"w": np.array([1.0, 2.0, 4.0]), "b": np.zeros(2), "epoch": 1})
    >>> b = saved({"w": np.array([1.0, 2.5, 4.0]), "c": np.ones(2), "epoch": 2})
    >>> report = nbckpt.diff(a, b)
    >>> [(d.name, d.change) for d in report.records], report.equal_records
    ([('w', 'values'), ('b', 'only in A'), ('c', 'only in B')], 0)
    >>> report.records[0].max_abs, report.records[0].max_rel, report.values[0].change
    (0.5, 0.2, 'value')
"""

from __future__ import annotations

import collections
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .archive import Archive, Record
from .errors import FormatError, typed_errors
from .formats.names import exact_name
from .formats.sharded import MISSING as MISSING_SHARD
from .numeric import array_module, computable, numeric_kind, to_host, to_scalar
from .meta import MetaArray
from .progress import progress_bar
from .io.sources import is_url
from .summary import format_shape, table_html, table_text
from .text import safe_repr

__all__ = ["diff", "DiffReport", "RecordDiff", "ValueDiff", "Difference", "array_difference", "path_name", "CHUNK"]

#: Elements compared at a time (bounds the float64 temporaries to a few MiB).
CHUNK = 1 << 20

#: Arrays up to this many elements are always compared.
COMPARE_ALWAYS = 1 << 24
#: Beyond that, an array is compared only if it has at most this many elements per
#: element its view spans in storage: a view that repeats its data (stride 0, or
#: overlapping strides) could make a file of a few bytes take days to compare.
#: Dimensions with stride 0 on *both* sides are compared once (and counted as often
#: as they repeat), so equal broadcasts are always compared.
REPEAT_LIMIT = 4
#: Containers and items compared at most for one non-array value (a value the memo
#: repeats many times, a "billion laughs", is compared once per distinct pair).
VALUE_ITEM_LIMIT = 1_000_000

#: Stands for "no such entry" in a :class:`ValueDiff`.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


class Difference(NamedTuple):
    """How two arrays of one shape differ: element counts and the largest differences.

    ``max_abs`` is an ``int`` for integer and boolean arrays, a ``float`` otherwise,
    and ``None`` when nothing comparable differs (or for raw types).
    """

    differing: int
    max_abs: float | int | None
    max_rel: float | None
    nan_mismatch: int = 0


@dataclass(frozen=True)
class RecordDiff:
    """One array that is not the same in both checkpoints.

    ``change`` is ``"only in A"``, ``"only in B"``, ``"shape"``, ``"dtype"``,
    ``"shape and dtype"`` or ``"values"``; for ``"values"``, ``differing`` counts
    the elements that differ and ``max_abs``/``max_rel`` are the largest
    absolute and relative differences (see the module doc). ``note`` says why
    values could not be compared, when they could not.
    """

    name: str
    change: str
    a: Record | None
    b: Record | None
    differing: int | None = None
    max_abs: float | int | None = None
    max_rel: float | None = None
    nan_mismatch: int = 0
    note: str = ""


@dataclass(frozen=True)
class ValueDiff:
    """One non-array entry that is not the same: ``change`` is ``"only in A"``,
    ``"only in B"`` or ``"value"``; a missing side is :data:`MISSING`."""

    name: str
    change: str
    a: Any = MISSING
    b: Any = MISSING


_CHANGE_PHRASES = {"values": "with other values", "shape": "with another shape", "dtype": "with another dtype",
                   "shape and dtype": "with another shape and dtype"}


@dataclass
class DiffReport:
    """What :func:`diff` found. Equal records and values are counted, not listed."""

    source_a: str
    source_b: str
    records: list[RecordDiff] = field(default_factory=list)
    values: list[ValueDiff] = field(default_factory=list)
    equal_records: int = 0
    equal_values: int = 0

    COLUMNS = ("name", "change", "A", "B", "max abs diff", "max rel diff")

    @property
    def identical(self) -> bool:
        """True when every array and value is the same in both checkpoints."""
        return not self.records and not self.values

    def only_in(self, side: str) -> list[str]:
        """Names of the arrays only in ``"A"`` or only in ``"B"``."""
        return [d.name for d in self.records if d.change == f"only in {side}"]

    def rows(self) -> list[tuple[str, ...]]:
        """One row of strings per difference, in :attr:`COLUMNS` order."""
        rows = [_record_row(d) for d in self.records]
        rows += [(d.name, d.change, _short(d.a), _short(d.b), "", "") for d in self.values]
        return rows

    def summary(self) -> str:
        """One line: how many arrays and values are equal and how many differ."""
        counts: dict[str, int] = {}
        for d in self.records:
            counts[d.change] = counts.get(d.change, 0) + 1
        parts = [f"{n} {_CHANGE_PHRASES.get(change, change)}" for change, n in counts.items()]
        line = f"{self.source_a} vs {self.source_b}: {_count(self.equal_records, 'array')} equal"
        if parts:
            line += ", " + ", ".join(parts)
        line += f"; {_count(self.equal_values, 'other value')} equal"
        if self.values:
            line += f", {len(self.values)} differ"
        return line

    def __str__(self) -> str:
        rows = self.rows()
        return self.summary() + ("\n\n" + table_text(self.COLUMNS, rows) if rows else "")

    def _repr_html_(self) -> str:
        return table_html(self.COLUMNS, self.rows(), caption=self.summary())


class _NotGiven:
    """The default of :func:`diff`'s ``map_location`` while its old default ("cpu") is deprecated."""

    def __repr__(self) -> str:
        return "None"


_NOT_GIVEN: Any = _NotGiven()

#: Locations whose arrays load without a device: the host, ``meta`` arrays (never read) and
#: the arrays of a sharded checkpoint's missing shards (never read either).
_HOST_LOCATIONS = ("cpu", "meta", MISSING_SHARD)


def diff(a: Any, b: Any, *, map_location: Any = _NOT_GIVEN, storage_options: dict | None = None,
         progress: bool | None = None) -> DiffReport:
    """Compare checkpoints ``a`` and ``b`` (paths, URLs, file objects or open :class:`Archive`\\ s).

    Arrays are read one at a time with the safe loader, placed by
    ``map_location`` as :func:`nbckpt.load` and :func:`nbckpt.open` place them:
    ``None`` (the default) on the device each was saved on, ``"cpu"`` on the
    host, ``"cuda:0"`` on a GPU (the comparison then runs there). Open
    archives are compared where they load unless ``map_location`` is given.
    ``storage_options`` go to fsspec for whichever of ``a`` and ``b`` is a URL.
    ``progress`` shows a progress bar over the bytes compared (``None``, the
    default: only when there are many; ``True`` always; ``False`` never).
    See the module doc for how values are compared.

    Until nbckpt 0.2 the default was ``"cpu"``: a call that does not pass
    ``map_location`` on a checkpoint holding arrays saved on a GPU still
    compares them on the host, with a :class:`DeprecationWarning`; pass
    ``map_location="cpu"`` to keep that, or ``None`` for the new default.

        >>> import io, numpy as np, nbckpt
        >>> buf = io.BytesIO(); nbckpt.save({"w": np.arange(3)}, buf)
        >>> nbckpt.diff(io.BytesIO(buf.getvalue()), io.BytesIO(buf.getvalue())).identical
        True
    """
    given = map_location is not _NOT_GIVEN
    opened: list[Archive] = []
    try:
        archive_a = _as_archive(a, map_location if given else None, given, storage_options, opened)
        archive_b = _as_archive(b, map_location if given else None, given, storage_options, opened)
        if not given:
            archive_a, archive_b = _on_host_for_now(archive_a, archive_b, opened)
        with typed_errors(f"comparing {archive_a.source} with {archive_b.source}"):
            return _diff_archives(archive_a, archive_b, progress)
    finally:
        for archive in reversed(opened):
            archive.close()


def _as_archive(f: Any, map_location: Any, given: bool, storage_options: dict | None,
                opened: list[Archive]) -> Archive:
    """``f`` as an archive placing arrays by ``map_location`` (an open one only when ``given``)."""
    if isinstance(f, Archive):
        return f.remapped(map_location) if given else f
    with typed_errors(f"opening {f!r} to compare it"):
        archive = Archive(f, map_location=map_location, storage_options=storage_options if is_url(f) else None)
    opened.append(archive)
    return archive


def _on_host_for_now(a: Archive, b: Archive, opened: list[Archive]) -> tuple[Archive, Archive]:
    """The old default (``"cpu"``) for the archives :func:`diff` opened that hold arrays saved on a
    device, with a DeprecationWarning: loading them where they were saved needs that device."""
    devices = sorted({r.location for archive in (a, b) if any(archive is o for o in opened)
                      for r in archive.records if r.location.split(":")[0] not in _HOST_LOCATIONS})
    if not devices:
        return a, b
    warnings.warn(
        f"nbckpt.diff compares arrays saved on {', '.join(devices)} on the host because map_location was not "
        f"given. map_location now defaults to None, as in nbckpt.load and nbckpt.open (each array on the "
        f"device it was saved on); this old behaviour goes away in nbckpt 0.2. Pass map_location='cpu' to "
        f"keep comparing on the host, or map_location=None.", DeprecationWarning, stacklevel=3)
    return tuple(archive.remapped("cpu") if any(archive is o for o in opened) else archive
                 for archive in (a, b))  # type: ignore[return-value]


def _diff_archives(a: Archive, b: Archive, progress: bool | None = None) -> DiffReport:
    report = DiffReport(a.source, b.source)
    # Records are matched by their path (the exact keys), never by the dotted
    # name alone: {"a.b": x} and {"a": {"b": y}} both flatten to "a.b".
    paths_b = {r.path: r for r in b.records}
    names = _display_names(a.records, b.records)
    bar = progress_bar(sum(r.nbytes for r in a.records if r.path in paths_b), "comparing", progress)
    try:
        _diff_records(a, b, paths_b, names, report, bar)
    finally:
        bar.close()
    for name, value in a.values.items():
        if name not in b.values:
            report.values.append(ValueDiff(name, "only in A", a=value))
        elif _same_value(value, b.values[name]):
            report.equal_values += 1
        else:
            report.values.append(ValueDiff(name, "value", a=value, b=b.values[name]))
    report.values += [ValueDiff(name, "only in B", b=value) for name, value in b.values.items()
                      if name not in a.values]
    return report


def path_name(path: tuple) -> str:
    """A name for ``path`` that no other path shares: each key as Python writes it.

        >>> path_name(("a.b",)), path_name(("a", "b")), path_name(("layers", 0))
        ("['a.b']", "['a']['b']", "['layers'][0]")
    """
    return exact_name(path)  # one spelling for nbckpt.open's listing and the diff


def _display_names(*listings: list[Record]) -> dict[tuple, str]:
    """Each record's dotted name, or its :func:`path_name` where two paths share a dotted name."""
    paths_by_name: dict[str, set[tuple]] = {}
    for records in listings:
        for record in records:
            paths_by_name.setdefault(record.name, set()).add(record.path)
    return {record.path: record.name if len(paths_by_name[record.name]) == 1 else path_name(record.path)
            for records in listings for record in records}


def _diff_records(a: Archive, b: Archive, paths_b: dict[tuple, Record], names: dict[tuple, str],
                  report: DiffReport, bar: Any) -> None:
    seen: set[tuple] = set()
    for record_a in a.records:
        if record_a.path in seen:
            continue
        seen.add(record_a.path)
        name = names[record_a.path]
        record_b = paths_b.get(record_a.path)
        if record_b is None:
            report.records.append(RecordDiff(name, "only in A", record_a, None))
            continue
        found = _diff_record(a, b, record_a, record_b, name)
        bar.update(record_a.nbytes)
        if found is None:
            report.equal_records += 1
        else:
            report.records.append(found)
    for record_b in b.records:
        if record_b.path not in seen:
            seen.add(record_b.path)
            report.records.append(RecordDiff(names[record_b.path], "only in B", None, record_b))


def _diff_record(a: Archive, b: Archive, ra: Record, rb: Record, name: str) -> RecordDiff | None:
    shape_changed, dtype_changed = ra.shape != rb.shape, ra.dtype != rb.dtype
    if shape_changed or dtype_changed:
        change = "shape and dtype" if shape_changed and dtype_changed else "shape" if shape_changed else "dtype"
        return RecordDiff(name, change, ra, rb)
    # By dotted name where it is unique (a dict lookup); by path where it is not.
    unique = name == ra.name
    array_a, array_b = a[ra.name if unique else ra.path], b[rb.name if unique else rb.path]
    meta_a, meta_b = isinstance(array_a, MetaArray), isinstance(array_b, MetaArray)
    if meta_a and meta_b:
        return None
    if meta_a or meta_b:
        side = "A" if meta_a else "B"
        return RecordDiff(name, "values", ra, rb, note=f"a meta tensor (no data) in {side}: values not compared")
    refused = _too_repetitive(array_a, array_b)
    if refused:
        return RecordDiff(name, "values", ra, rb, note=refused)
    found = array_difference(array_a, array_b)
    if not found.differing:
        return None
    return RecordDiff(name, "values", ra, rb, found.differing, found.max_abs, found.max_rel, found.nan_mismatch)


def array_difference(a: Any, b: Any) -> Difference:
    """How arrays ``a`` and ``b`` (same shape and dtype) differ, chunk by chunk.

        >>> array_difference(np.array([1, 5, -3]), np.array([1, 2, 3]))
        Difference(differing=2, max_abs=6, max_rel=2.0, nan_mismatch=0)
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"arrays differ in shape or dtype: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
    if array_module(a) is not array_module(b):  # one on the host, one on a GPU
        a, b = to_host(a), to_host(b)
    a, b, repeats = _compare_once(a, b)
    xp = array_module(a)
    kind = numeric_kind(a.dtype)
    if kind is None:  # raw bits: compare them as plain unsigned integers
        if a.dtype.fields is None:
            plain = np.dtype(f"u{a.dtype.itemsize}")
            a, b = a.view(plain), b.view(plain)
        else:
            a, b = xp.ascontiguousarray(a).view(np.uint8), xp.ascontiguousarray(b).view(np.uint8)
        kind = "bytes"
    else:
        a, b = computable(a), computable(b)
    flat_a, flat_b = xp.ravel(a), xp.ravel(b)
    total = _Totals()
    for start in range(0, int(flat_a.size), CHUNK):
        _compare_chunk(xp, kind, flat_a[start:start + CHUNK], flat_b[start:start + CHUNK], total)
    return Difference(total.differing * repeats, total.max_abs, total.max_rel, total.nan_mismatch * repeats)


def _compare_once(a: Any, b: Any) -> tuple[Any, Any, int]:
    """``a`` and ``b`` with the dimensions both repeat (stride 0) cut to one; how often they repeat."""
    repeats = 1
    index: list[Any] = []
    for n, sa, sb in zip(a.shape, a.strides, b.strides):
        if n > 1 and sa == 0 and sb == 0:
            repeats *= int(n)
            index.append(slice(0, 1))
        else:
            index.append(slice(None))
    if repeats == 1:
        return a, b, 1
    return a[tuple(index)], b[tuple(index)], repeats


def span(array: Any) -> int:
    """How many elements the view ``array`` spans in its storage (its size, unless it repeats data).

        >>> span(np.zeros((3, 4))), span(np.broadcast_to(np.zeros(4), (1000, 4)))
        (12, 4)
    """
    if 0 in array.shape:
        return 0
    itemsize = array.dtype.itemsize or 1
    return 1 + sum((int(n) - 1) * abs(int(s)) // itemsize for n, s in zip(array.shape, array.strides))


def _too_repetitive(a: Any, b: Any) -> str:
    """Why comparing ``a`` and ``b`` element by element is refused, or ``""``."""
    a, b, _ = _compare_once(a, b)
    size = math.prod(a.shape)
    if size <= COMPARE_ALWAYS:
        return ""
    for side, array in (("A", a), ("B", b)):
        spanned = span(array)
        if size > REPEAT_LIMIT * spanned:
            return (f"values not compared: the array in {side} repeats its {spanned} stored elements to make "
                    f"{size} (a stride-0 or overlapping view); nbckpt compares at most {REPEAT_LIMIT}x the "
                    f"elements a view holds")
    return ""


@dataclass
class _Totals:
    differing: int = 0
    max_abs: Any = None
    max_rel: float | None = None
    nan_mismatch: int = 0

    def add(self, max_abs: Any, max_rel: float | None) -> None:
        if max_abs is not None and (self.max_abs is None or max_abs > self.max_abs):
            self.max_abs = max_abs
        if max_rel is not None and (self.max_rel is None or max_rel > self.max_rel):
            self.max_rel = max_rel


def _compare_chunk(xp: Any, kind: str, a: Any, b: Any, total: _Totals) -> None:
    if kind in ("float", "complex"):
        wide = xp.complex128 if kind == "complex" else xp.float64
        a, b = a.astype(wide), b.astype(wide)
        nan_a, nan_b = xp.isnan(a), xp.isnan(b)
        differs = ~((a == b) | (nan_a & nan_b))
        count = int(to_scalar(xp.count_nonzero(differs)))
        if not count:
            return
        total.differing += count
        one_nan = nan_a ^ nan_b
        total.nan_mismatch += int(to_scalar(xp.count_nonzero(one_nan)))
        compared = differs & ~one_nan
        if not bool(to_scalar(xp.any(compared))):
            return
        a, b = a[compared], b[compared]
        gap = xp.abs(a - b)
        scale = xp.maximum(xp.abs(a), xp.abs(b))
        total.add(float(to_scalar(xp.max(gap))), _max_ratio(xp, gap, scale))
        return
    differs = a != b
    count = int(to_scalar(xp.count_nonzero(differs)))
    if not count:
        return
    total.differing += count
    if kind == "bytes":
        return
    if kind == "bool":
        total.add(1, 1.0)
        return
    a, b = a[differs], b[differs]
    # |a - b| exactly, for every integer type: the larger minus the smaller, in
    # uint64, where the true difference (< 2**64) is what the wrapped subtraction gives.
    high, low = xp.maximum(a, b), xp.minimum(a, b)
    gap = high.astype(xp.uint64) - low.astype(xp.uint64)
    scale = xp.maximum(xp.abs(a.astype(xp.float64)), xp.abs(b.astype(xp.float64)))
    total.add(int(to_scalar(xp.max(gap))), _max_ratio(xp, gap.astype(xp.float64), scale))


def _max_ratio(xp: Any, gap: Any, scale: Any) -> float | None:
    """max(gap / scale) where both are finite and scale > 0 (None when nowhere)."""
    usable = xp.isfinite(gap) & xp.isfinite(scale) & (scale > 0)
    if not bool(to_scalar(xp.any(usable))):
        return None
    return float(to_scalar(xp.max(gap[usable] / scale[usable])))


def _same_value(a: Any, b: Any) -> bool:
    """Whether two values from the files are equal, NaN equal to NaN, types exact.

    Iterative, and each distinct pair of containers is compared once: a value
    the memo repeats 2**40 times takes 40 steps, not 2**40 (at most
    :data:`VALUE_ITEM_LIMIT` steps, then FormatError).
    """
    stack = [(a, b)]
    compared: set[tuple[int, int]] = set()
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        if type(x) is not type(y):
            return False
        if isinstance(x, (dict, list, tuple)):
            pair = (id(x), id(y))
            if pair in compared:
                continue
            compared.add(pair)
            if len(compared) > VALUE_ITEM_LIMIT:
                raise FormatError(f"a value holds more than {VALUE_ITEM_LIMIT} containers: too large to compare")
            if len(x) != len(y):
                return False
            if isinstance(x, dict):
                keys = list(dict.keys(x))
                if isinstance(x, collections.OrderedDict) and keys != list(dict.keys(y)):
                    return False
                if any(k not in y for k in keys):
                    return False
                stack.extend((dict.__getitem__(x, k), dict.__getitem__(y, k)) for k in keys)
            else:
                stack.extend(zip(x, y))
            continue
        if not _same_leaf(x, y):
            return False
    return True


def _same_leaf(a: Any, b: Any) -> bool:
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    if isinstance(a, complex):
        return _same_leaf(a.real, b.real) and _same_leaf(a.imag, b.imag)
    try:
        equal = a == b
        if isinstance(equal, (bool, np.bool_)):
            if equal:
                return True
        elif isinstance(equal, np.ndarray) and equal.shape == () and bool(equal):
            return True
    except Exception:  # noqa: BLE001 - values of arbitrary types may refuse to compare
        pass
    # NaN inside NumPy scalars or sets, objects without __eq__: by their (bounded) text
    return safe_repr(a, 10_000) == safe_repr(b, 10_000)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _describe(record: Record | None) -> str:
    return "" if record is None else f"{format_shape(record.shape)} {record.dtype}"


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.4g}"


def _record_row(d: RecordDiff) -> tuple[str, ...]:
    change = d.change
    if d.change == "values":
        if d.differing is not None:
            size = d.a.size if d.a is not None else 0
            change = f"values ({d.differing} of {size} differ"
            change += f", {d.nan_mismatch} NaN on one side)" if d.nan_mismatch else ")"
        if d.note:
            change += f": {d.note}"
    return (d.name, change, _describe(d.a), _describe(d.b), _number(d.max_abs), _number(d.max_rel))


def _short(value: Any, limit: int = 40) -> str:
    return "" if value is MISSING else safe_repr(value, limit)
