"""Records grouped into a tree of modules by their dotted names: a pure model, no widgets.

A checkpoint of a large model holds hundreds of names such as
``model.layers.17.self_attn.q_proj.weight``; its user thinks of them as a tree
of modules. :func:`build_tree` splits every name at its dots and groups the
entries under one :class:`TreeNode` per module; each module knows how many
entries, parameters (elements) and bytes it holds and which dtypes.
:func:`visible_rows` lists the rows a tree view shows, given which modules are
expanded and how siblings are sorted (order in the file, name, or size).

Used by :class:`~nbckpt.jupyter.browser.ArchiveBrowser` (its tree view) and by
the JupyterLab viewer's server (:mod:`nbckpt.labextension`), which sends
:meth:`TreeNode.to_json` to the frontend. Building is one pass over the names
and filtering builds the tree of the matching entries only, so 100,000 records
take well under a second (``benchmarks/`` has no timing for it; see
``tests/test_tree.py`` for the size exercised).

    >>> items = [TreeItem("enc.0.weight", 6, 24, "float32"), TreeItem("enc.0.bias", 3, 12, "float32"),
    ...          TreeItem("enc.1.weight", 6, 12, "float16"), TreeItem("step", 0, 0, "")]
    >>> root = build_tree(items)
    >>> [(row.depth, row.node.path) for row in visible_rows(root, expanded={"enc"})]
    [(0, 'enc'), (1, 'enc.0'), (1, 'enc.1'), (0, 'step')]
    >>> enc = root.child("enc")
    >>> enc.count, enc.params, enc.nbytes, enc.dtypes
    (3, 15, 48, {'float32': 9, 'float16': 6})
    >>> [row.node.path for row in visible_rows(root, expanded=ALL, sort="size")][:3]
    ['enc', 'enc.0', 'enc.0.weight']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence

__all__ = ["TreeItem", "TreeNode", "Row", "build_tree", "visible_rows", "module_paths", "natural_key",
           "format_count", "SORTS", "ALL", "ROOT_NAME"]

#: How siblings can be sorted: by their first entry's position in the file, by name
#: (numbers in names compare as numbers: ``layers.2`` before ``layers.10``), or by
#: bytes, largest first.
SORTS = ("order", "name", "size")
#: Pass as ``expanded`` to expand every module.
ALL: frozenset = frozenset({"\0all"})
#: How an entry with the empty name (an array saved on its own) is shown.
ROOT_NAME = "(root)"


class TreeItem(NamedTuple):
    """One entry to place in the tree: its dotted ``name``, ``params`` (elements),
    ``nbytes`` and ``dtype`` (``""`` for a value that is not an array)."""

    name: str
    params: int
    nbytes: int
    dtype: str


@dataclass(eq=False, slots=True)
class TreeNode:
    """A module (``entry is None``: it has ``children``) or an entry (a leaf: ``entry``
    is its index in the items given to :func:`build_tree`).

    ``path`` is the dotted name (a module's prefix, an entry's whole name), ``name``
    its last part. ``count``, ``params``, ``nbytes`` and ``dtypes`` (parameters per
    dtype, in the order first met) total the entries below; ``first`` is the smallest
    entry index below, the module's place in the file.
    """

    name: str
    path: str
    entry: int | None = None
    children: list["TreeNode"] = field(default_factory=list)
    count: int = 0
    params: int = 0
    nbytes: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)
    first: int = 0

    @property
    def is_module(self) -> bool:
        return self.entry is None

    def child(self, name: str) -> "TreeNode":
        """The child module called ``name`` (else the child entry); ``KeyError`` if none."""
        for node in sorted(self.children, key=lambda n: not n.is_module):
            if node.name == name:
                return node
        raise KeyError(f"{self.path or 'the root'} has no child {name!r} (children: "
                       f"{', '.join(n.name for n in self.children[:10])})")

    def to_json(self) -> dict[str, Any]:
        """The subtree as plain JSON-able dicts (what the viewer's server sends):
        ``{"name", "path", "count", "params", "bytes", "dtypes", "first", "children"}``
        for modules, ``{"name", "path", "entry", "params", "bytes", "dtype"}`` for entries."""
        if not self.is_module:
            return {"name": self.name, "path": self.path, "entry": self.entry, "params": self.params,
                    "bytes": self.nbytes, "dtype": next(iter(self.dtypes), "")}
        return {"name": self.name, "path": self.path, "count": self.count, "params": self.params,
                "bytes": self.nbytes, "dtypes": dict(self.dtypes), "first": self.first,
                "children": [child.to_json() for child in self.children]}


class Row(NamedTuple):
    """One line of a tree view: a node at an indentation ``depth`` (0 for the top level)
    and, for a module, whether it is ``expanded``."""

    depth: int
    node: TreeNode
    expanded: bool = False


def build_tree(items: Sequence[TreeItem], only: Iterable[int] | None = None) -> TreeNode:
    """The tree of ``items`` (of those at the indices ``only``, when given), children in
    the order their first entry comes in ``items``.

    A name is split at every dot; a name that is also a module's prefix (``a`` and
    ``a.b``) gives a module and an entry side by side.

        >>> root = build_tree([TreeItem("a.b", 1, 4, "int32"), TreeItem("a", 2, 8, "int32")])
        >>> [(n.path, n.is_module) for n in root.children]
        [('a', True), ('a', False)]
    """
    root = TreeNode("", "")
    modules: dict[str, TreeNode] = {"": root}
    indices = range(len(items)) if only is None else sorted(only)
    for index in indices:
        name = items[index].name
        prefix, _, leaf_name = name.rpartition(".")
        parent = modules.get(prefix)
        if parent is None:  # the first entry of a module: make it, and any ancestors missing
            parent = _module(prefix, modules, index)
        parent.children.append(TreeNode(leaf_name if name else ROOT_NAME, name, entry=index, first=index))
    _total(root, items)
    return root


def _module(path: str, modules: dict[str, TreeNode], first: int) -> TreeNode:
    """The module at ``path``, made (with its missing ancestors) if not in ``modules``."""
    missing = []
    while path not in modules:
        missing.append(path)
        path = path.rpartition(".")[0]
    parent = modules[path]
    for path in reversed(missing):
        node = modules[path] = TreeNode(path.rpartition(".")[2], path, first=first)
        parent.children.append(node)
        parent = node
    return parent


def _total(root: TreeNode, items: Sequence[TreeItem]) -> None:
    """Fill in every module's totals, children before parents (no recursion: deep names are fine)."""
    order: list[TreeNode] = []
    stack = [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(child for child in node.children if child.is_module)
    for node in reversed(order):
        count = params = nbytes = 0
        dtypes: dict[str, int] = {}
        for child in node.children:
            if child.is_module:
                count += child.count
                params += child.params
                nbytes += child.nbytes
                for dtype, n in child.dtypes.items():
                    dtypes[dtype] = dtypes.get(dtype, 0) + n
            else:
                item = items[child.entry]
                child.count, child.params, child.nbytes = 1, item.params, item.nbytes
                if item.dtype:
                    child.dtypes = {item.dtype: item.params}
                    dtypes[item.dtype] = dtypes.get(item.dtype, 0) + item.params
                count += 1
                params += item.params
                nbytes += item.nbytes
        node.count, node.params, node.nbytes, node.dtypes = count, params, nbytes, dtypes


_NUMBER = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sorts names as people do: numbers by value, text case-insensitively.

        >>> sorted(["layer10", "layer2", "Layer1", "bias"], key=natural_key)
        ['bias', 'Layer1', 'layer2', 'layer10']
    """
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower())
                 for part in _NUMBER.split(name) if part)


_SORT_KEYS = {
    "order": lambda node: node.first,
    "name": lambda node: (natural_key(node.name), not node.is_module),
    "size": lambda node: (-node.nbytes, node.first),
}


def visible_rows(root: TreeNode, expanded: Iterable[str] = (), sort: str = "order") -> list[Row]:
    """The rows a tree view shows: the root's children, and the children of every
    module whose path is in ``expanded`` (:data:`ALL` expands every module), siblings
    sorted by ``sort`` (one of :data:`SORTS`)."""
    if sort not in _SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    key = _SORT_KEYS[sort]
    opened = ALL if expanded is ALL else frozenset(expanded)
    rows: list[Row] = []
    stack: list[tuple[int, TreeNode]] = [(0, node) for node in reversed(sorted(root.children, key=key))]
    while stack:
        depth, node = stack.pop()
        is_open = node.is_module and (opened is ALL or node.path in opened)
        rows.append(Row(depth, node, is_open))
        if is_open:
            stack.extend((depth + 1, child) for child in reversed(sorted(node.children, key=key)))
    return rows


def module_paths(root: TreeNode, max_depth: int | None = None) -> set[str]:
    """The paths of the modules of ``root`` (those less than ``max_depth`` levels down, when given):
    what ``expanded`` holds to open the tree that far.

        >>> sorted(module_paths(build_tree([TreeItem("a.b.c", 1, 1, "f")]), max_depth=1))
        ['a']
    """
    paths: set[str] = set()
    stack = [(0, child) for child in root.children]
    while stack:
        depth, node = stack.pop()
        if node.is_module and (max_depth is None or depth < max_depth):
            paths.add(node.path)
            stack.extend((depth + 1, child) for child in node.children)
    return paths


def format_count(n: int) -> str:
    """A parameter count as people write it: ``980``, ``12.3K``, ``7.24M``, ``6.74B``.

        >>> format_count(980), format_count(12_345), format_count(7_240_000), format_count(6_738_415_616)
        ('980', '12.3K', '7.24M', '6.74B')
    """
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            value = n / size
            return f"{value:.3g}{unit}" if value < 1000 else f"{value:.0f}{unit}"
    return str(n)
