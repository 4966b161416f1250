"""What the checkpoint viewer's server reads from a file: one function per request, JSON-able results.

These run in the viewer's worker process (:mod:`nbckpt.labextension.worker`),
never in the Jupyter server, and open files with :func:`nbckpt.open` and its
defaults: ``weights_only=True``, so a hostile file can only raise an error.
Arrays are mapped read-only (``mmap``) where the format allows, so the
statistics and pictures of a huge record (computed on bounded samples, see
:mod:`nbckpt.jupyter.stats`) read only the pages they need.

Each function takes a file's absolute path and returns plain data:

- :func:`listing`: header rows, the entries (arrays, then other values) and the
  tree of modules (:meth:`nbckpt.jupyter.tree.TreeNode.to_json`);
- :func:`record`: one array's header, statistics, first values and which pictures it has;
- :func:`picture`: a PNG histogram or heat map, base64-encoded;
- :func:`value`: the text of a value that is not an array;
- :func:`diff`: the visual diff of two files (:mod:`nbckpt.jupyter.difftable`).

    >>> import os, tempfile, numpy as np, nbckpt
    >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
    >>> nbckpt.save({"enc": {"w": np.eye(2, dtype=np.float32)}, "step": 3}, path)
    >>> found = listing(path)
    >>> [(e["name"], e["kind"]) for e in found["entries"]], found["tree"]["children"][0]["path"]
    ([('enc.w', 'array'), ('step', 'value')], 'enc')
    >>> record(path, "enc.w")["statistics"][:2]
    [['min', '0.0'], ['max', '1.0']]
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any, Callable, Iterator

from ..archive import Archive
from ..archive import open as open_archive
from ..compare import MISSING
from ..compare import diff as compare
from ..jupyter import difftable, listing as lines, pictures, stats, tree
from ..jupyter.preview import header_text, sampled_text, statistics_rows
from ..summary import format_bytes, format_shape

__all__ = ["listing", "record", "picture", "value", "diff", "OPERATIONS", "FIRST_VALUES", "VALUE_CHARS"]

#: How many of an array's first values a record shows.
FIRST_VALUES = 20
#: A value's text is cut to this many characters.
VALUE_CHARS = 20_000


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Archive]:
    """``path`` opened safely onto the host, mapped read-only where its format allows."""
    try:
        archive = open_archive(path, map_location="cpu", mmap=True)
    except ValueError as err:
        if "mmap" not in str(err):
            raise
        archive = open_archive(path, map_location="cpu")  # a format or record that cannot be mapped
    with archive:
        yield archive


def listing(path: str, label: str = "") -> dict[str, Any]:
    """The header rows, entries and tree of the checkpoint at ``path`` (called ``label`` in the header,
    when given: the path the user knows, not the server's)."""
    with _opened(path) as archive:
        values = archive.values
        entries = [{"name": r.name, "kind": "array", "shape": list(r.shape), "dtype": str(r.dtype),
                    "location": r.location, "bytes": r.nbytes, "params": r.size,
                    "label": f"{format_shape(r.shape)} {r.dtype} {format_bytes(r.nbytes)}"}
                   for r in archive.records]
        entries += [{"name": name, "kind": "value", "label": lines.value_text(value)} for name, value in values.items()]
        items = [tree.TreeItem(e["name"], e.get("params", 0), e.get("bytes", 0), e.get("dtype", "")) for e in entries]
        header = [list(row) for row in lines.header_rows(archive.info, len(values))]
        if label:
            header[0][1] = label
        return {"header": header,
                "entries": entries, "tree": tree.build_tree(items).to_json()}


def record(path: str, name: str) -> dict[str, Any]:
    """One array's header, statistics rows, first values and which pictures it has."""
    with _opened(path) as archive:
        array = archive[name]
        found = stats.array_stats(array)
        has_values = found.has_values
        return {"name": name, "header": header_text(found), "statistics": [list(row) for row in statistics_rows(found)],
                "sampled": sampled_text(found), "first_values": stats.first_values(array, FIRST_VALUES),
                "histogram": has_values, "heatmap": has_values and len(found.shape) >= 2}


def picture(path: str, name: str, kind: str) -> dict[str, Any]:
    """A PNG (``kind`` ``"histogram"`` or ``"heatmap"``) of one array, base64-encoded."""
    if kind not in ("histogram", "heatmap"):
        raise ValueError(f"picture kind must be 'histogram' or 'heatmap', not {kind!r}")
    with _opened(path) as archive:
        array = archive[name]
        png = pictures.histogram_png(array) if kind == "histogram" else pictures.heatmap_png(array)
        if png is None:
            raise ValueError(f"{name} has no heat map: it has fewer than 2 dimensions or no values to draw")
        return {"png": base64.b64encode(png).decode("ascii")}


def value(path: str, name: str) -> dict[str, Any]:
    """The text of the entry ``name`` that is not an array (at most :data:`VALUE_CHARS` characters)."""
    with _opened(path) as archive:
        if name not in archive.values:
            raise KeyError(f"no value named {name!r} in {path} (arrays are read with the record request)")
        found = archive.values[name]
        return {"name": name, "type": type(found).__name__, "text": lines.value_preview(found, VALUE_CHARS)}


def diff(a: str, b: str, label_a: str = "", label_b: str = "") -> dict[str, Any]:
    """The arrays that differ between ``a`` and ``b``, most changed first, and the other entries that
    differ; the summary calls the files ``label_a`` and ``label_b`` when given."""
    report = compare(a, b, map_location="cpu")
    report.source_a, report.source_b = label_a or report.source_a, label_b or report.source_b
    return {"summary": report.summary(), "equal": report.equal_records,
            "rows": [difftable.row_json(row) for row in difftable.diff_rows(report)],
            "values": [{"name": d.name, "change": d.change, "a": _text(d.a), "b": _text(d.b)} for d in report.values]}


def _text(found: Any) -> str:
    return "" if found is MISSING else lines.value_text(found)


#: Request name -> function (the worker runs only these).
OPERATIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "listing": listing, "record": record, "picture": picture, "value": value, "diff": diff,
}
