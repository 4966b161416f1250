"""``ArchiveBrowser``: look inside a checkpoint and load what you need, as a widget.

An :class:`ArchiveBrowser` is a ``VBox`` of stock ipywidgets:

- a header: file, format, byte order, size, how many arrays, storages and other entries;
- a filter box (a substring, or a glob such as ``*.weight``; case-insensitive), the
  view (``list`` or ``tree``) and the order (in the file, by name, by size) of
- the entries: arrays (name, shape, dtype, saved device, size), then the other
  values (numbers, strings, configs). The tree view groups them by their dotted
  names into modules (:mod:`nbckpt.jupyter.tree`), each showing its entries,
  parameters, bytes and dtypes; clicking a module opens or closes it; while the
  filter has text, the modules holding matches are open. At most
  :data:`MAX_SHOWN` lines are shown at once, with a note saying how many more match;
- the preview of the selected entry: an :class:`~nbckpt.jupyter.preview.ArrayPreview`
  of an array (read onto the host), or the value itself;
- the reload panel: the device (``nbckpt.devices()``), the variable name (made from
  the entry's name; comma-separated names when several entries are selected), an
  "overwrite" box, the Load button, a progress bar (shown for loads of
  :data:`PROGRESS_THRESHOLD` bytes and more, advancing entry by entry) and a status line.

Nothing is read from the file but its directory and pickle until an array is
previewed or loaded, and then only that array's storage. Mistakes and failures
(an unusable device, a name that is taken or not a name, a refused global, a
corrupt record) are reported in the status line, never as a traceback.

    >>> import io, numpy as np, nbckpt
    >>> buf = io.BytesIO()
    >>> nbckpt.save({"layer1": {"weight": np.eye(2, dtype=np.float32)}, "step": 7}, buf)
    >>> _ = buf.seek(0)
    >>> variables = {}
    >>> browser = ArchiveBrowser(buf, namespace=variables)
    >>> browser.select("layer1.weight")
    >>> browser.variable.value
    'layer1_weight'
    >>> browser.load_button.click()
    >>> browser.status.value
    'loaded layer1.weight as layer1_weight: ndarray (2, 2) float32, cpu'
    >>> variables["layer1_weight"][0]
    array([1., 0.], dtype=float32)
    >>> browser.view.value = "tree"
    >>> for label, _ in browser.records.options:
    ...     print(label)
    ▾ layer1/   1 entry, 4 params, 16 B, float32
        weight  (2, 2)  float32  cpu  16 B
      step      int: 7
"""

from __future__ import annotations

import copy
import html
import os
from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

import ipywidgets as widgets

from ..archive import Archive, Record
from ..archive import open as open_archive
from ..devices import devices
from ..errors import CheckpointError, DeviceError, UnpicklingError
from ..summary import format_bytes
from . import listing, tree
from .preview import STYLE, ArrayPreview
from .views import describe_value, pairs_html

__all__ = ["ArchiveBrowser", "MAX_SHOWN", "PROGRESS_THRESHOLD", "OPEN_ALL_UP_TO", "FILTER_AS_YOU_TYPE_UP_TO"]

#: The list shows at most this many entries; the filter narrows the rest down.
MAX_SHOWN = 500
#: Loads of at least this many bytes show the progress bar.
PROGRESS_THRESHOLD = 64 << 20
#: A value's preview shows at most this many characters of its text.
VALUE_PREVIEW_CHARS = 4000

_ERROR_COLOR = "#b00020"
_OK_COLOR = "#1b5e20"
_HIDDEN = "none"



@dataclass(frozen=True)
class _Entry:  # noqa: D101 - documented below
    """One line of the list: an array (``record``) or another value (``record`` is None)."""

    name: str
    label: str
    record: Record | None = None

    @property
    def nbytes(self) -> int:
        return self.record.nbytes if self.record is not None else 0

    def tree_item(self) -> tree.TreeItem:
        if self.record is None:
            return tree.TreeItem(self.name, 0, 0, "")
        return tree.TreeItem(self.name, self.record.size, self.record.nbytes, str(self.record.dtype))


#: Trees of at most this many entries open fully when shown; larger ones open their top-level modules only.
OPEN_ALL_UP_TO = 50
#: Archives of more entries filter when Enter is pressed (the tree of the matches is rebuilt each time).
FILTER_AS_YOU_TYPE_UP_TO = 20_000
#: The list's options for a module of the tree view (the other options are entry indices).
_MODULE = "module"


class ArchiveBrowser(widgets.VBox):
    """Browse ``path_or_archive`` (a path, a seekable binary file object, or an open
    :class:`nbckpt.Archive`), preview its arrays and load them into ``namespace``.

    ``namespace`` is the dict that Load puts variables in; by default the
    notebook's (IPython's ``user_ns``). A browser given a path or file object opens
    it with ``nbckpt.open`` (``weights_only=True``) and keeps it open until
    :meth:`close`; an archive given open stays the caller's to close. A file whose
    pickle names a global the safe loader refuses gives a browser whose status
    line says so and how to allow it.

    ``view`` is ``"list"`` (one line per entry) or ``"tree"`` (entries grouped into
    modules by their dotted names); both can be switched in the widget.

    Parts, for tests and for arranging them otherwise: ``header``, ``filter``, ``view``,
    ``sort``, ``records`` (a ``SelectMultiple`` whose values index :attr:`entries`; in
    the tree view a module's value is ``("module", path)``), ``count``,
    ``more``, ``preview``, ``device``, ``variable``, ``overwrite``, ``load_button``,
    ``progress``, ``status``.
    """

    def __init__(self, path_or_archive: Any, *, namespace: MutableMapping[str, Any] | None = None,
                 view: str = "list") -> None:
        self._namespace = namespace
        self._owns_archive = not isinstance(path_or_archive, Archive)
        self._archives: dict[str, Archive] = {}
        self._selected: tuple[int, ...] = ()
        self._syncing = False
        self.archive: Archive | None = None
        if view not in ("list", "tree"):
            raise ValueError(f"view must be 'list' or 'tree', not {view!r}")

        self.header = widgets.HTML()
        self.filter = widgets.Text(placeholder="substring or glob, e.g. layer1 or *.weight", description="filter",
                                   continuous_update=True, layout={"width": "60%"})
        self.view = widgets.ToggleButtons(options=[("list", "list"), ("tree", "tree")], value=view,
                                          style={"button_width": "5em"}, layout={"width": "auto"})
        self.sort = widgets.Dropdown(options=[("in file order", "order"), ("by name", "name"), ("by size", "size")],
                                     value="order", description="sort", layout={"width": "16em"})
        self.count = widgets.Label()
        # Labels are padded into columns (the list's view keeps runs of spaces); STYLE sets a monospace font.
        self.records = widgets.SelectMultiple(options=[], rows=12, layout={"width": "98%"})
        self.more = widgets.Label(layout={"display": _HIDDEN})
        self.preview = widgets.VBox([widgets.Label("select an entry to preview it")])
        self.device = widgets.Dropdown(options=devices(), description="device", layout={"width": "16em"})
        self.variable = widgets.Text(description="name", placeholder="variable name(s)", layout={"width": "40%"})
        self.overwrite = widgets.Checkbox(value=False, description="overwrite", indent=False,
                                          layout={"width": "auto"})
        self.load_button = widgets.Button(description="Load", button_style="primary", icon="download",
                                          tooltip="load the selected entries into the notebook's variables")
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="",
                                              layout={"display": _HIDDEN})
        self.status = widgets.Label()
        # Classes name the parts for styles and for the browser test (tests/test_browser_ui.py).
        for part, name in ((self.header, "header"), (self.filter, "filter"), (self.view, "view"),
                           (self.sort, "sort"), (self.records, "records"),
                           (self.preview, "preview-area"), (self.device, "device"), (self.variable, "variable"),
                           (self.overwrite, "overwrite"), (self.load_button, "load"), (self.progress, "progress"),
                           (self.status, "status")):
            part.add_class(f"nbckpt-{name}")

        self.archive: Archive | None = None
        #: Every entry the list can show, in order: arrays, then other values.
        self.entries: list[_Entry] = []
        try:
            self.archive = path_or_archive if not self._owns_archive else open_archive(path_or_archive)
        except UnpicklingError as err:
            self._refused(path_or_archive, err)
        else:
            self._index(self.archive)
        self._filter = listing.EntryFilter(entry.name for entry in self.entries)
        self._items = [entry.tree_item() for entry in self.entries]
        self._columns: list[str] | None = None  # what the tree view shows after each name, made on first use
        self._whole_tree: tree.TreeNode | None = None
        self._expanded: set[str] | None = None  # modules opened (no filter); None: not yet decided
        self._closed_while_filtering: set[str] = set()
        #: The module clicked last in the tree view (its summary is the preview), or None.
        self.module: tree.TreeNode | None = None
        self.records.rows = min(max(len(self.entries), 3), 12)
        # Very large archives filter when the user presses Enter, not at every keystroke.
        self.filter.continuous_update = len(self.entries) <= FILTER_AS_YOU_TYPE_UP_TO

        self.filter.observe(self._on_filter, names="value")
        self.view.observe(self._on_filter, names="value")
        self.sort.observe(self._on_filter, names="value")
        self.records.observe(self._on_select, names="value")
        self.load_button.on_click(self._on_load)
        self._refresh()

        panel = widgets.HBox([self.device, self.variable, self.overwrite, self.load_button],
                             layout={"flex_flow": "row wrap", "align_items": "center"})
        controls = widgets.HBox([self.filter, self.view, self.sort, self.count],
                                layout={"flex_flow": "row wrap", "align_items": "center"})
        super().__init__([widgets.HTML(STYLE), self.header, controls, self.records,
                          self.more, self.preview, panel, self.progress, self.status])
        self.add_class("nbckpt-browser")

    # -- building --------------------------------------------------------------------------

    def _index(self, archive: Archive) -> None:
        records, values = archive.records, archive.values
        labels = listing.entry_labels(records, values)
        self.entries = ([_Entry(r.name, label, r) for r, label in zip(records, labels)]
                        + [_Entry(name, label) for name, label in zip(values, labels[len(records):])])
        self.header.value = pairs_html(listing.header_rows(archive.info, len(values)))

    def _refused(self, source: Any, err: UnpicklingError) -> None:
        """A file the safe loader refuses: say what is known, and how to go on."""
        rows = [("file", os.fsdecode(source) if isinstance(source, (str, bytes, os.PathLike)) else repr(source))]
        self.header.value = pairs_html(rows)
        self._report(f"{err} Then make the browser again (or give it nbckpt.open(path, weights_only=False) "
                     f"for a file you trust completely).", ok=False)
        self.load_button.disabled = True

    # -- the list ----------------------------------------------------------------------------

    def _on_filter(self, change: Mapping[str, Any]) -> None:
        if change["owner"] is self.filter:
            self._closed_while_filtering.clear()
        self._refresh()

    def _refresh(self) -> None:
        """Show the entries matching the filter in the chosen view and order (the first
        MAX_SHOWN lines), keeping those selected that stay."""
        indices = self._filter.matching(self.filter.value)
        if self.view.value == "tree":
            options, lines = self._tree_options(indices)
        else:
            options, lines = self._list_options(indices)
        visible = {value for _, value in options}
        keep = tuple(i for i in self._selected if i in visible)
        self._syncing = True
        try:
            self.records.options = options
            self.records.value = keep
        finally:
            self._syncing = False
        total = len(self.entries)
        self.count.value = (f"{total:,} entries" if len(indices) == total
                            else f"{len(indices):,} of {total:,} entries match")
        hidden = lines - len(options)
        self.more.value = f"{hidden:,} more… type in the filter to narrow the list" if hidden else ""
        self.more.layout.display = None if hidden else _HIDDEN
        if keep != self._selected:
            self._selection_changed(keep)

    def _list_options(self, indices: list[int]) -> tuple[list[tuple[str, Any]], int]:
        if self.sort.value == "name":
            indices = sorted(indices, key=lambda i: tree.natural_key(self.entries[i].name))
        elif self.sort.value == "size":
            indices = sorted(indices, key=lambda i: -self.entries[i].nbytes)
        return [(self.entries[i].label, i) for i in indices[:MAX_SHOWN]], len(indices)

    def _tree_options(self, indices: list[int]) -> tuple[list[tuple[str, Any]], int]:
        filtering = len(indices) != len(self.entries)
        if self._whole_tree is None:
            self._whole_tree = tree.build_tree(self._items)
            self._columns = listing.entry_columns([e.record for e in self.entries if e.record is not None],
                                                  {e.name: self.archive.values[e.name] for e in self.entries
                                                   if e.record is None})
        if self._expanded is None:
            self._expanded = tree.module_paths(self._whole_tree,
                                               None if len(self.entries) <= OPEN_ALL_UP_TO else 1)
        if filtering:
            root = tree.build_tree(self._items, only=indices)
            expanded = tree.module_paths(root) - self._closed_while_filtering
        else:
            root, expanded = self._whole_tree, self._expanded
        rows = tree.visible_rows(root, expanded, self.sort.value)
        shown = rows[:MAX_SHOWN]
        labels = listing.tree_labels(shown, self._columns)
        return [(label, (_MODULE, row.node.path) if row.node.is_module else row.node.entry)
                for label, row in zip(labels, shown)], len(rows)

    def _on_select(self, change: Mapping[str, Any]) -> None:
        if self._syncing:
            return
        chosen = tuple(change["new"])
        modules = [value[1] for value in chosen if isinstance(value, tuple)]
        if modules:
            # A click on a module opens or closes it; the module leaves the selection, so a second click
            # on it is a change again.
            self._selected = tuple(value for value in chosen if not isinstance(value, tuple))
            self.toggle(*modules)
            return
        self.module = None
        self._selection_changed(chosen)

    def toggle(self, *paths: str) -> None:
        """Open the closed modules among ``paths`` of the tree view and close the open ones
        (as clicking them does); the preview shows the last one's summary."""
        filtering = bool(self.filter.value.strip())
        opened = self._expanded if not filtering else None
        for path in paths:
            if filtering:
                self._closed_while_filtering ^= {path}
            else:
                opened ^= {path}
        self._refresh()
        self.module = self._module_node(paths[-1])
        if self.module is not None and not self._selected:
            self.preview.children = [widgets.HTML(f"<b>{html.escape(self.module.path)}/</b>&nbsp; "
                                                  f"{html.escape(listing.module_summary(self.module))}")]

    def _module_node(self, path: str) -> tree.TreeNode | None:
        node = self._whole_tree
        for part in path.split("."):
            node = next((child for child in node.children if child.is_module and child.name == part), None)
            if node is None:
                return None
        return node

    def select(self, *names: str) -> None:
        """Select the entries named ``names`` (as the user would in the list; they must be listed)."""
        by_name = {self.entries[i].name: i for _, i in self.records.options if not isinstance(i, tuple)}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise KeyError(f"not in the list: {', '.join(missing)} (check the name and the filter)")
        self.records.value = tuple(by_name[name] for name in names)

    def _selection_changed(self, selected: tuple[int, ...]) -> None:
        self._selected = selected
        chosen = [self.entries[i] for i in selected]
        self.variable.value = ", ".join(listing.variable_name(entry.name) for entry in chosen)
        if not chosen:
            self.preview.children = [widgets.Label("select an entry to preview it")]
        elif len(chosen) > 1:
            arrays = sum(entry.record is not None for entry in chosen)
            size = format_bytes(sum(entry.nbytes for entry in chosen))
            self.preview.children = [widgets.Label(
                f"{len(chosen)} entries selected ({arrays} array{'' if arrays == 1 else 's'}, {size}): Load loads "
                f"each into its own variable")]
        else:
            self.preview.children = [self._preview(chosen[0])]

    def _preview(self, entry: _Entry) -> widgets.Widget:
        if entry.record is None:
            text = listing.value_preview(self.archive.values[entry.name], VALUE_PREVIEW_CHARS)
            heading = f"<b>{html.escape(entry.name or '(root)')}</b>&nbsp; "
            return widgets.HTML(f"{heading}{html.escape(describe_value(self.archive.values[entry.name]))}"
                                f"<pre>{html.escape(text)}</pre>")
        try:
            array = self._archive_on("cpu")[entry.record.path]
            return ArrayPreview(array, name=entry.name)
        except (CheckpointError, OSError, MemoryError) as err:
            self._report(f"cannot preview {entry.name}: {err}", ok=False)
            return widgets.Label(f"no preview: {err}")

    def _archive_on(self, device: str) -> Archive:
        """The archive whose arrays load onto ``device`` (made once per device)."""
        if device not in self._archives:
            self._archives[device] = self.archive.remapped(device)
        return self._archives[device]

    # -- loading -----------------------------------------------------------------------------

    def _on_load(self, _button: Any = None) -> None:
        try:
            self._load()
        except _Refusal as refusal:
            self._report(str(refusal), ok=False)
        except DeviceError as err:
            self._report(f"cannot load onto {self.device.value}: {err}", ok=False)
        except Exception as err:  # noqa: BLE001 - a widget's failures go to its status line, not a log
            self._report(f"loading failed: {type(err).__name__}: {err}", ok=False)
        finally:
            self.load_button.disabled = self.archive is None

    def _load(self) -> None:
        chosen = [self.entries[i] for i in self._selected]
        if not chosen:
            raise _Refusal("select one or more entries in the list first")
        namespace = self._target_namespace()
        names = listing.parse_variable_names(self.variable.value)
        problem = listing.name_problem(names, len(chosen), namespace, self.overwrite.value)
        if problem:
            raise _Refusal(problem)
        device = self.device.value
        total = sum(entry.nbytes for entry in chosen)
        self._start_progress(total)
        self.load_button.disabled = True
        archive = self._archive_on(device)
        loaded: dict[str, Any] = {}
        done = 0
        for name, entry in zip(names, chosen):
            if entry.record is None:
                loaded[name] = copy.deepcopy(self.archive.values[entry.name])
                continue
            self._report(f"loading {entry.name} ({format_bytes(entry.nbytes)}) onto {device}…", ok=True)
            loaded[name] = archive[entry.record.path]
            done += entry.nbytes
            self._advance(done, total)
        self._bind(namespace, loaded)
        if len(loaded) == 1:
            [(name, value)] = loaded.items()
            self._report(f"loaded {chosen[0].name} as {name}: {describe_value(value)}", ok=True)
        else:
            self._report(f"loaded {len(loaded)} entries onto {device}: {', '.join(loaded)}", ok=True)

    def _target_namespace(self) -> MutableMapping[str, Any]:
        if self._namespace is not None:
            return self._namespace
        shell = _ipython()
        if shell is None:
            raise _Refusal("no IPython session to load into: give the browser a dict, "
                           "ArchiveBrowser(path, namespace=variables)")
        return shell.user_ns

    def _bind(self, namespace: MutableMapping[str, Any], loaded: dict[str, Any]) -> None:
        shell = _ipython() if self._namespace is None else None
        if shell is not None:
            shell.push(loaded)  # also shows them to %who
        else:
            namespace.update(loaded)

    def _start_progress(self, total: int) -> None:
        self.progress.value = 0.0
        self.progress.bar_style = ""
        self.progress.description = f"0 B / {format_bytes(total)}"
        self.progress.layout.display = None if total >= PROGRESS_THRESHOLD else _HIDDEN

    def _advance(self, done: int, total: int) -> None:
        self.progress.value = done / total if total else 1.0
        self.progress.description = f"{format_bytes(done)} / {format_bytes(total)}"
        if done >= total:
            self.progress.bar_style = "success"

    def _report(self, text: str, *, ok: bool) -> None:
        self.status.value = text
        self.status.style.text_color = _OK_COLOR if ok else _ERROR_COLOR
        if not ok and self.progress.layout.display != _HIDDEN and self.progress.value < 1:
            self.progress.bar_style = "danger"  # a load that stopped part way

    # -- lifetime -------------------------------------------------------------------------------

    def __repr__(self) -> str:
        # Short and stable: notebooks store it as the output's text (the default lists every option).
        source = self.archive.source if self.archive is not None else "a refused file"
        return f"<ArchiveBrowser of {source}: {len(self.entries)} entries>"

    def close(self) -> None:
        """Close the widgets, and the file if the browser opened it."""
        if self._owns_archive and self.archive is not None:
            self.archive.close()
        self._archives.clear()
        stack = list(self.children)
        while stack:
            child = stack.pop()
            stack.extend(getattr(child, "children", ()))
            child.close()
        super().close()


class _Refusal(Exception):
    """A Load the browser refuses before reading anything; the message says why."""


def _ipython() -> Any:
    try:
        from IPython import get_ipython  # noqa: PLC0415 - only a notebook needs it
    except ImportError:
        return None
    return get_ipython()

