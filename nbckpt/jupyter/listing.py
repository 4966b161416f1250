"""What the archive browser lists and checks: pure functions, no widgets.

:class:`~nbckpt.jupyter.browser.ArchiveBrowser` shows one line per entry of an
archive (arrays, then other values), filters them as the user types, and turns
entry names into variable names. Everything here works on plain data, so it is
tested without widgets and stays fast for archives of thousands of records.

    >>> import numpy as np
    >>> from nbckpt.archive import Record
    >>> r = Record("layer1.weight", ("layer1", "weight"), (3, 4), np.dtype("float32"), "cpu", 48, "0", 0, (4, 1))
    >>> entry_labels([r], {"step": 7})
    ['layer1.weight  (3, 4)  float32  cpu  48 B', 'step           int: 7']
    >>> variable_name("layer1.weight"), variable_name("0.bias"), variable_name("class")
    ('layer1_weight', '_0_bias', 'class_')
    >>> EntryFilter(["layer1.weight", "layer1.bias", "head.weight"]).matching("*.WEIGHT")
    [0, 2]
"""

from __future__ import annotations

import fnmatch
import keyword
import pprint
import re
import reprlib
from typing import Any, Iterable, Mapping, Sequence

from ..archive import ArchiveInfo, Record
from ..summary import format_bytes, format_shape
from ..text import safe_repr
from .tree import Row, TreeNode, format_count

__all__ = ["entry_labels", "value_text", "value_preview", "EntryFilter", "variable_name", "parse_variable_names",
           "name_problem", "header_rows", "entry_columns", "tree_labels", "module_summary", "NAME_WIDTH"]

#: Names longer than this do not widen every line (they push their own line's columns right).
NAME_WIDTH = 60

_GLOB_CHARS = frozenset("*?[")


def _widths(rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []


def entry_labels(records: Iterable[Record], values: Mapping[str, Any]) -> list[str]:
    """One line per entry, arrays first: name, shape, dtype, saved device and size of each
    array, name and :func:`value_text` of each other value; names in one aligned column."""
    array_rows = [(r.name or "(root)", format_shape(r.shape), str(r.dtype), r.location, format_bytes(r.nbytes))
                  for r in records]
    value_rows = [(name or "(root)", value_text(value)) for name, value in values.items()]
    name_width = min(max((len(row[0]) for row in array_rows + value_rows), default=0), NAME_WIDTH)
    widths = [name_width] + _widths(array_rows)[1:]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in array_rows]
    lines += [f"{row[0].ljust(name_width)}  {row[1]}" for row in value_rows]
    return lines


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 3, 4, 6, 6, 6
_SHORT.maxstring, _SHORT.maxother = 40, 40


def value_text(value: Any, limit: int = 70) -> str:
    """``type: value`` in at most ``limit`` characters, however large the value (``reprlib``).

        >>> value_text({"lr": 0.1, "betas": (0.9, 0.999)})
        "dict: {'betas': (0.9, 0.999), 'lr': 0.1}"
        >>> value_text(list(range(100)))
        'list of 100: [0, 1, 2, 3, 4, 5, ...]'
    """
    size = f" of {len(value)}" if isinstance(value, (list, tuple, set, frozenset)) and len(value) > 6 else ""
    try:
        shown = _SHORT.repr(value)
    except ValueError:  # an int past Python's str limit (sys.get_int_max_str_digits)
        shown = safe_repr(value, limit)
    text = f"{type(value).__name__}{size}: {shown}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


_LONG = reprlib.Repr()
_LONG.maxlevel, _LONG.maxdict, _LONG.maxlist, _LONG.maxtuple, _LONG.maxset = 6, 50, 50, 50, 50
_LONG.maxstring, _LONG.maxother = 1000, 200


def value_preview(value: Any, limit: int = 4000, pretty_items: int = 2000) -> str:
    """A value as the preview shows it: ``pprint``-ed when it is small (at most
    ``pretty_items`` items, counted without walking more), else a ``reprlib`` summary;
    at most ``limit`` characters either way.

        >>> print(value_preview({"lr": 0.1, "betas": (0.9, 0.999)}))
        {'betas': (0.9, 0.999), 'lr': 0.1}
        >>> value_preview(list(range(10**6)))[-12:]
        '48, 49, ...]'
    """
    try:
        if _items_up_to(value, pretty_items + 1) <= pretty_items:
            text = pprint.pformat(value, width=100, compact=True)
        else:
            text = _LONG.repr(value)
    except ValueError:  # an int past Python's str limit: nbckpt's bounded repr shows its size
        text = safe_repr(value, limit)
    return text if len(text) <= limit else text[:limit] + " …"


def _items_up_to(value: Any, most: int) -> int:
    """How many items ``value`` holds at any depth, counting no further than ``most``."""
    count, stack = 0, [value]
    while stack and count < most:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        if len(stack) > most:  # a huge container: no need to look inside
            return most
    return count


class EntryFilter:
    """Finds the entries whose names match what the user typed, case-insensitively.

    The lowercase names are computed once; each call is one pass over them. A
    pattern with ``*``, ``?`` or ``[`` is a glob matched against the whole name
    (``*.weight``); anything else matches as a substring (``layer1``). An empty
    pattern matches everything.

        >>> f = EntryFilter(["Encoder.W", "decoder.w", "step"])
        >>> f.matching("CODER"), f.matching("d*"), f.matching("")
        ([0, 1], [1], [0, 1, 2])
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._lower = [name.lower() for name in names]

    def __len__(self) -> int:
        return len(self._lower)

    def matching(self, pattern: str) -> list[int]:
        """Indices of the matching names, in order."""
        pattern = pattern.strip().lower()
        if not pattern:
            return list(range(len(self._lower)))
        if _GLOB_CHARS.isdisjoint(pattern):
            return [i for i, name in enumerate(self._lower) if pattern in name]
        match = re.compile(fnmatch.translate(pattern), re.DOTALL).match
        return [i for i, name in enumerate(self._lower) if match(name)]


def variable_name(name: str) -> str:
    """A Python variable name made from an entry's dotted name: every run of characters
    that cannot be in a name becomes ``_``; a leading digit gets a ``_`` before it and
    a keyword one after it. An empty name gives ``value``."""
    text = re.sub(r"\W+", "_", name).strip("_")
    if not text:
        return "value"
    if text[0].isdigit():
        text = "_" + text
    if keyword.iskeyword(text):
        text += "_"
    return text


def parse_variable_names(text: str) -> list[str]:
    """The names typed in the variable-name box: comma-separated, surrounding spaces ignored.

        >>> parse_variable_names(" w, b ,")
        ['w', 'b']
    """
    return [part.strip() for part in text.split(",") if part.strip()]


def name_problem(names: Sequence[str], wanted: int, namespace: Mapping[str, Any], overwrite: bool) -> str:
    """Why ``names`` cannot receive ``wanted`` loaded entries in ``namespace``, or ``""``.

        >>> name_problem(["x"], 1, {"x": 1}, overwrite=False)
        'a variable named x exists already: tick "overwrite" to replace it, or choose another name'
        >>> name_problem(["1x"], 1, {}, overwrite=False)
        "'1x' is not a valid Python variable name: use letters, digits and _, not starting with a digit"
    """
    if len(names) != wanted:
        what = "one variable name" if wanted == 1 else f"{wanted} variable names, separated by commas"
        given = "no name" if not names else f"{len(names)} name{'s' if len(names) > 1 else ''}"
        entries = "1 selected entry" if wanted == 1 else f"{wanted} selected entries"
        return f"{given} given for {entries}: give {what}"
    for name in names:
        if keyword.iskeyword(name):
            return f"{name!r} is a Python keyword: choose another variable name (such as {name}_)"
        if not name.isidentifier():
            return (f"{name!r} is not a valid Python variable name: use letters, digits and _, not starting "
                    f"with a digit")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return f"{', '.join(repeated)} named twice: give each selected entry its own variable name"
    if not overwrite:
        taken = [name for name in names if name in namespace]
        if taken:
            which = "a variable named" if len(taken) == 1 else "variables named"
            verb = "exists" if len(taken) == 1 else "exist"
            it = "it" if len(taken) == 1 else "them"
            return (f"{which} {', '.join(taken)} {verb} already: tick \"overwrite\" to replace {it}, "
                    f"or choose another name")
    return ""


def header_rows(info: ArchiveInfo, values: int = 0) -> list[tuple[str, str]]:
    """What the browser's header says about a file: name, format, byte order, sizes, counts
    (``values``: how many other entries it holds)."""
    order = info.byteorder + ("" if info.byteorder_recorded else " (assumed: not recorded in the file)")
    return [
        ("file", info.source),
        ("format", getattr(info, "description", "") or f"zip (torch >= 1.6), version {info.version}"),
        ("byte order", order),
        ("size", f"{format_bytes(info.file_bytes)} ({format_bytes(info.array_bytes)} of array data)"),
        ("entries", f"{info.records:,} arrays in {info.storages:,} storages, {values:,} other "
                    f"{'entry' if values == 1 else 'entries'}"),
    ]


def entry_columns(records: Iterable[Record], values: Mapping[str, Any]) -> list[str]:
    """What a tree view shows after each entry's name, arrays first (as :func:`entry_labels`):
    shape, dtype, saved device and size, aligned; :func:`value_text` of other values.

        >>> import numpy as np
        >>> r = Record("w", ("w",), (3, 4), np.dtype("float32"), "cpu", 48, "0", 0, (4, 1))
        >>> entry_columns([r], {"step": 7})
        ['(3, 4)  float32  cpu  48 B', 'int: 7']
    """
    rows = [(format_shape(r.shape), str(r.dtype), r.location, format_bytes(r.nbytes)) for r in records]
    widths = _widths(rows)
    columns = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return columns + [value_text(value) for value in values.values()]


def module_summary(node: TreeNode) -> str:
    """One line about a module: entries, parameters, bytes and dtypes (most parameters first).

        >>> from nbckpt.jupyter.tree import TreeItem, build_tree
        >>> root = build_tree([TreeItem("enc.w", 12_000, 48_000, "float32"), TreeItem("enc.b", 40, 80, "float16")])
        >>> module_summary(root.child("enc"))
        '2 entries, 12K params, 47.0 KiB, float32 float16'
    """
    dtypes = " ".join(sorted(node.dtypes, key=lambda dtype: -node.dtypes[dtype]))
    parts = [f"{node.count:,} {'entry' if node.count == 1 else 'entries'}", f"{format_count(node.params)} params",
             format_bytes(node.nbytes)]
    return ", ".join(parts) + (f", {dtypes}" if dtypes else "")


#: Marks of a collapsed and an expanded module in a tree view.
CLOSED, OPENED = "▸", "▾"


def tree_labels(rows: Sequence[Row], columns: Sequence[str]) -> list[str]:
    """One line per row of a tree view: indented by depth, a module as ``▸ name/  summary``
    (``▾`` when expanded), an entry as its name and ``columns[entry]``; names aligned
    (up to :data:`NAME_WIDTH`) within the rows given.

        >>> from nbckpt.jupyter.tree import TreeItem, build_tree, visible_rows
        >>> root = build_tree([TreeItem("enc.w", 6, 24, "float32"), TreeItem("step", 0, 0, "")])
        >>> for line in tree_labels(visible_rows(root, {"enc"}), ["(2, 3)  float32  cpu  24 B", "int: 7"]):
        ...     print(line)
        ▾ enc/  1 entry, 6 params, 24 B, float32
            w   (2, 3)  float32  cpu  24 B
          step  int: 7
    """
    heads = [("  " * row.depth + (f"{OPENED if row.expanded else CLOSED} {row.node.name}/" if row.node.is_module
                                   else f"  {row.node.name}")) for row in rows]
    width = min(max((len(head) for head in heads), default=0), NAME_WIDTH)
    return [f"{head.ljust(width)}  {module_summary(row.node) if row.node.is_module else columns[row.node.entry]}"
            for head, row in zip(heads, rows)]
