"""``%ckpt`` and ``%%ckpt``: checkpoints from a notebook. ``%load_ext nbckpt`` registers them.

One line magic with sub-commands (``%ckpt save``, ``load``, ``ls``, ``info``,
``show``, ``browse``, ``diff``, ``devices``) and one cell magic
(``%%ckpt cache``). Each sub-command is one method of :class:`CheckpointMagics`
whose arguments ``magic_arguments`` parses (so ``%ckpt?`` lists them all), and
which calls the library: the magics hold no I/O of their own. User mistakes
(a missing file, an unknown variable, a bad device, a refused global, a corrupt
file) raise IPython's ``UsageError``: a one-line message that says how to fix
it, no traceback.

    >>> parse_map_location("cuda:0=cpu, cuda:1=cuda:0")
    {'cuda:0': 'cpu', 'cuda:1': 'cuda:0'}
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import html
import os
import shlex
from typing import Any, Iterator

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split
from IPython.display import display

from ..api import load, save, scan
from ..archive import open as open_archive
from ..compare import diff
from ..devices import MAP_TEXT_CHOICES, devices, parse_map_text
from ..errors import STRAY_ERRORS, DeviceError, FormatError, UnpicklingError
from ..io.remote import is_url
from ..summary import format_bytes, record_columns, record_rows, table_html, table_text
from ..text import escape, safe_repr
from . import cache, namespace, pictures, stats, views

__all__ = ["CheckpointMagics", "parse_map_location", "SUBCOMMANDS"]

#: Sub-command -> method; ``cache`` is the one cell magic.
SUBCOMMANDS = {
    "save": "ckpt_save",
    "load": "ckpt_load",
    "ls": "ckpt_ls",
    "info": "ckpt_info",
    "show": "ckpt_show",
    "browse": "ckpt_browse",
    "diff": "ckpt_diff",
    "devices": "ckpt_devices",
    "cache": "ckpt_cache",
}

_PATH_HELP = ("checkpoint file (a leading ~ is expanded; quote paths that contain spaces), or a URL such as "
              "s3://bucket/model.pt or https://host/model.pt (through fsspec)")
_MAP_CHOICES = MAP_TEXT_CHOICES
_MAP_HELP = "where arrays go: " + _MAP_CHOICES


def parse_map_location(text: str) -> str | dict[str, str]:
    """The ``-m`` argument as a ``map_location``: a tag, ``"auto"``, or a dict from
    ``SOURCE=TARGET,SOURCE=TARGET``. Raises UsageError for anything else."""
    try:
        return parse_map_text(text)
    except ValueError:
        raise UsageError(f"-m {text}: not a device or device map. Give {_MAP_CHOICES}.") from None


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _expand(path: str) -> str:
    """A leading ``~`` expanded; URLs stay as they are."""
    return path if is_url(path) else os.path.expanduser(path)


def _quote(path: str) -> str:
    return shlex.quote(path)


@contextlib.contextmanager
def _user_errors(*, subject: str = "the file", unpickling: str = "", device: str = "") -> Iterator[None]:
    """Turn the library's errors about the user's input into UsageErrors that say how to fix it."""
    try:
        yield
    except UsageError:
        raise
    except IsADirectoryError as err:  # when saving, filename is the temporary file, filename2 the target
        raise UsageError(f"{err.filename2 or err.filename} is a folder: give the path of a checkpoint "
                         f"file.") from err
    except FileNotFoundError as err:
        if err.filename is None and err.strerror:  # nbckpt's own message (a folder that does not exist)
            raise UsageError(f"{err.strerror}.") from err
        missing = err.filename or (err.args[0] if err.args else "the file")  # fsspec: the URL alone
        raise UsageError(f"no such file: {missing}. Check the path (a leading ~ is expanded; "
                         f"put paths that contain spaces in quotes).") from err
    except PermissionError as err:
        raise UsageError(f"permission denied: {err.filename or err}. Check the file's permissions, or "
                         f"use another path.") from err
    except UnpicklingError as err:
        raise UsageError(f"{err}{unpickling}") from err
    except DeviceError as err:
        raise UsageError(f"{err}{device}") from err
    except FormatError as err:
        raise UsageError(f"{subject} is not a checkpoint nbckpt can read: {err}") from err
    except OSError as err:
        raise UsageError(f"{err}") from err
    except ImportError as err:  # a URL without fsspec or the protocol's package: the message says what to install
        raise UsageError(f"{err}") from err
    except STRAY_ERRORS as err:  # what no check of nbckpt's caught: still one line, never a traceback
        raise UsageError(f"{subject} is not a checkpoint nbckpt can read: unexpected {type(err).__name__}: "
                         f"{safe_repr(str(err), 300)}") from err


@magics_class
class CheckpointMagics(Magics):
    """The ``%ckpt`` line magic and the ``%%ckpt`` cell magic (see the module doc)."""

    # -- dispatch ---------------------------------------------------------------------------

    @line_magic("ckpt")
    def ckpt(self, line: str) -> None:
        command, rest = self._split(line)
        if command == "cache":
            raise UsageError("cache is a cell magic: put %%ckpt cache PATH VAR [VAR ...] on the first line "
                             "of a cell, above the code whose variables it caches.")
        method = getattr(self, SUBCOMMANDS[command])
        method(self._parse(method, rest))

    @cell_magic("ckpt")
    def ckpt_cell(self, line: str, cell: str) -> None:
        command, rest = self._split(line)
        if command != "cache":
            raise UsageError(f"%%ckpt has one sub-command, cache (%%ckpt cache PATH VAR [VAR ...]); "
                             f"{command} is a line magic: %ckpt {command} ...")
        self.ckpt_cache(self._parse(self.ckpt_cache, rest), cell)

    @staticmethod
    def _split(line: str) -> tuple[str, str]:
        parts = line.split(maxsplit=1)
        command, rest = (parts + ["", ""])[:2]
        if not command:
            raise UsageError(f"%ckpt needs a sub-command: {', '.join(SUBCOMMANDS)} (%ckpt? explains each).")
        if command not in SUBCOMMANDS:
            close = difflib.get_close_matches(command, SUBCOMMANDS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"%ckpt has no sub-command {command!r}: {hint}use one of "
                             f"{', '.join(SUBCOMMANDS)} (%ckpt? explains each).")
        return command, rest

    @staticmethod
    def _parse(method: Any, rest: str) -> Any:
        """``method``'s arguments from ``rest``, split as a shell would: quotes removed
        (IPython's own ``parse_argstring`` keeps them, which breaks quoted paths)."""
        try:
            argv = arg_split(rest, posix=os.name != "nt", strict=True)
        except ValueError as err:  # unbalanced quotes
            raise UsageError(f"%{method.parser.prog}: cannot split the arguments ({err}); close every quote.") from None
        try:
            return method.parser.parse_args(argv)
        except UsageError as err:  # argparse's message alone does not say which sub-command
            usage = method.parser.format_usage().removeprefix("::").strip()
            raise UsageError(f"{err}. Usage: {usage}") from None

    # -- sub-commands ---------------------------------------------------------------------------

    @magic_arguments(name="ckpt save")
    @argument("path", metavar="PATH", help=_PATH_HELP)
    @argument("names", metavar="VAR", nargs="*",
              help="variables to save (none: every variable that holds arrays, or containers of them)")
    def ckpt_save(self, args: Any) -> None:
        """Save {name: value} of the named variables to PATH, in the format torch.load reads.

        With no VAR, every notebook variable that holds arrays (or dicts, lists and
        tuples of them) is saved; the output lists them.
        """
        path = _expand(args.path)
        user_ns = self.shell.user_ns
        names = args.names
        if not names:
            names = namespace.array_variables(user_ns, self.shell.user_ns_hidden)
            if not names:
                raise UsageError(f"no variable holds arrays: name the variables to save, "
                                 f"e.g. %ckpt save {_quote(path)} x y")
        unknown = [name for name in names if name not in user_ns]
        if unknown:
            raise UsageError(f"no variable named {', '.join(unknown)}: define it first, or check the spelling "
                             f"(%who lists the variables).")
        variables = {name: user_ns[name] for name in names}
        with _user_errors():
            try:
                save(variables, path, progress=None)
            except TypeError as err:
                raise UsageError(f"cannot save: {err}. Save only arrays, numbers, strings and containers of "
                                 f"them; name the variables to save.") from err
            with open_archive(path) as saved:
                info = saved.info
        what = "every variable that holds arrays" if not args.names else _count(len(variables), "variable")
        print(f"saved {what} to {path} ({_count(info.records, 'array')}, {format_bytes(info.array_bytes)}):")
        print(views.variables_text(variables))

    @magic_arguments(name="ckpt load")
    @argument("path", metavar="PATH", help=_PATH_HELP)
    @argument("names", metavar="VAR", nargs="*", help="entries to load as variables (none: every entry)")
    @argument("-m", "--map-location", dest="map_location", metavar="LOC", help=_MAP_HELP)
    @argument("--unsafe", action="store_true",
              help="weights_only=False: lets the file's pickle run code. Only for files you trust")
    @argument("--as", dest="as_name", metavar="NAME", help="bind the whole loaded object to NAME instead")
    @argument("--overwrite", action="store_true",
              help="replace variables that already exist (without it, only the named VARs replace them)")
    def ckpt_load(self, args: Any) -> None:
        """Load PATH: the entries of the dict it holds become variables (or only the named VARs),
        or the whole object is bound to NAME with --as.

        A file never binds dunder names (``__builtins__``), builtins (``print``) or
        IPython's names, and replaces an existing variable only when you named it or
        passed --overwrite; what was skipped, and why, is printed.
        """
        path = _expand(args.path)
        map_location = parse_map_location(args.map_location) if args.map_location else None
        if args.as_name is not None and args.names:
            raise UsageError("give either VAR names (entries become variables) or --as NAME (the whole object), "
                             "not both.")
        if args.as_name is not None and namespace.unbindable_keys([args.as_name]):
            raise UsageError(f"--as {args.as_name}: not a Python variable name.")
        hidden = self.shell.user_ns_hidden
        for name in ([args.as_name] if args.as_name is not None else args.names):
            reason = namespace.protected_reason(name, hidden)
            if reason.startswith("a dunder") or (reason and args.as_name is None):
                raise UsageError(f"{name} is {reason.split(':')[0]}: %ckpt load never binds it; choose another "
                                 f"name with --as NAME.")
        if args.unsafe:
            print("--unsafe: loading with weights_only=False; the file's pickle can run any code. "
                  "Use it only for files you trust.")
        with _user_errors(unpickling=f" If you trust this file, load it with --unsafe: "
                                     f"%ckpt load {_quote(path)} --unsafe",
                          device=" With %ckpt load that is -m cpu (or -m auto)."):
            loaded = load(path, map_location, weights_only=not args.unsafe, progress=None)
        if args.as_name is not None:
            self.shell.push({args.as_name: loaded})
            print(f"loaded {path} as {args.as_name}: {views.describe_value(loaded)}")
            return
        plan = namespace.plan_binding(self._entries(loaded, args.names, path), self.shell.user_ns, hidden,
                                      named=args.names, overwrite=args.overwrite)
        self.shell.push(plan.bound)
        print(f"loaded {_count(len(plan.bound), 'variable')} from {path}" + (":" if plan.bound else "."))
        if plan.bound:
            print(views.variables_text(plan.bound))
        if plan.skipped:
            print(f"skipped {_count(len(plan.skipped), 'entry', 'entries')}:")
            width = max(len(escape(name)) for name in plan.skipped)
            print("\n".join(f"  {escape(name).ljust(width)}  {why}" for name, why in plan.skipped.items()))

    @staticmethod
    def _entries(loaded: Any, names: list[str], path: str) -> dict[str, Any]:
        """The entries of a loaded dict that become variables; UsageError when they cannot."""
        if not isinstance(loaded, dict):
            raise UsageError(f"{path} holds a {type(loaded).__name__}, not a dict of variables: bind it to "
                             f"one name with --as NAME, e.g. %ckpt load {_quote(path)} --as state")
        missing = [name for name in names if name not in loaded]
        if missing:
            keys = ", ".join(str(k) for k in list(loaded)[:20]) + (", …" if len(loaded) > 20 else "")
            raise UsageError(f"{path} has no entry {', '.join(missing)}; its entries are: {keys}")
        if names:
            chosen = {name: loaded[name] for name in names}
        else:  # a %%ckpt cache file's fingerprint is no variable of the user's
            chosen = {key: value for key, value in loaded.items() if key != cache.CACHE_KEY}
        bad = namespace.unbindable_keys(chosen)
        if bad:
            shown = ", ".join(repr(k) for k in bad[:5]) + (", …" if len(bad) > 5 else "")
            raise UsageError(f"{path} has entries that are not Python names ({shown}): bind the whole dict to "
                             f"one name with --as NAME, e.g. %ckpt load {_quote(path)} --as state")
        return chosen

    @magic_arguments(name="ckpt ls")
    @argument("path", metavar="PATH", help=_PATH_HELP)
    @argument("pattern", metavar="GLOB", nargs="?", help="only the arrays whose names match, e.g. 'model.*.weight'")
    def ckpt_ls(self, args: Any) -> None:
        """List the arrays in PATH: name, shape, dtype, device, size, shared with. Reads no array data."""
        path = _expand(args.path)
        with _user_errors(subject=path, unpickling=f" %ckpt info {_quote(path)} lists every global the file names."):
            with open_archive(path) as opened:
                records, values = opened.records, list(opened.values)
        caption = f"{path}: {_count(len(records), 'array')}"
        if args.pattern:
            records = [r for r in records if fnmatch.fnmatchcase(r.name, args.pattern)]
            caption += f", {len(records)} matching {args.pattern}"
        columns = record_columns(records)  # plus chunks and files for sharded checkpoints
        rows = record_rows(records, columns)
        footer = ""
        if values:
            shown = ", ".join(name or "(root)" for name in values[:10]) + (", …" if len(values) > 10 else "")
            footer = f"{_count(len(values), 'other entry', 'other entries')}: {shown}"
        text = "\n".join(part for part in (caption, table_text(columns, rows) if rows else "", footer) if part)
        html_text = table_html(columns, rows, caption) + (f"<p>{html.escape(footer)}</p>" if footer else "")
        display(views.bundle(text, html_text), raw=True)

    @magic_arguments(name="ckpt info")
    @argument("path", metavar="PATH", help=_PATH_HELP)
    def ckpt_info(self, args: Any) -> None:
        """Describe PATH: format, byte order, array and storage counts, sizes, sharing, and every
        global its pickle names (allowed by the safe loader or not)."""
        path = _expand(args.path)
        with _user_errors(subject=path):
            try:
                with open_archive(path) as opened:
                    rows = views.info_rows(opened.info, opened.records)
            except UnpicklingError as err:  # still worth showing what the file names
                rows = [("file", path), ("refused", str(err))] + views.globals_rows(scan(path))
        display(views.bundle(views.pairs_text(rows), views.pairs_html(rows)), raw=True)

    @magic_arguments(name="ckpt show")
    @argument("path", metavar="PATH", help=_PATH_HELP)
    @argument("name", metavar="NAME", help="the array's dotted name, as %%ckpt ls lists it")
    @argument("-m", "--map-location", dest="map_location", metavar="LOC", default="cpu",
              help="where to load the array for its statistics (default: cpu)")
    def ckpt_show(self, args: Any) -> None:
        """Show one array of PATH: shape, dtype, statistics (min, max, mean, std, NaN/Inf counts,
        zero fraction), its first values, a histogram and, for 2-D and more, a heat map."""
        path = _expand(args.path)
        map_location = parse_map_location(args.map_location)
        with _user_errors(subject=path, device=" Show it with -m cpu."):
            with open_archive(path, map_location=map_location) as opened:
                try:
                    opened.record(args.name)
                except KeyError as err:
                    raise UsageError(f"{err.args[0]}. List the arrays with %ckpt ls {_quote(path)}") from err
                array = opened[args.name]
        summary = stats.array_stats(array)
        first = stats.first_values(array)
        heading = f"{args.name} in {path}"
        rows = summary.rows() + [("first values", first)]
        text = f"{heading}\n{views.pairs_text(rows)}"
        html_text = views.pairs_html(rows, caption=heading)
        display(views.bundle(text, html_text), raw=True)
        try:
            histogram, heatmap = pictures.histogram_png(array), pictures.heatmap_png(array)
        except ImportError as err:
            raise UsageError(f"pictures need matplotlib ({err}): pip install matplotlib (part of nbckpt's jupyter extra)") from err
        display({"image/png": histogram, "text/plain": f"[histogram of {args.name}]"}, raw=True)
        if heatmap is not None:
            display({"image/png": heatmap, "text/plain": f"[heat map of {args.name}]"}, raw=True)

    @magic_arguments(name="ckpt browse")
    @argument("path", metavar="PATH", help=_PATH_HELP)
    def ckpt_browse(self, args: Any) -> None:
        """Browse PATH in the archive browser widget: filter the entries, preview arrays, load them
        onto a device as variables."""
        path = _expand(args.path)
        try:
            from .browser import ArchiveBrowser  # noqa: PLC0415 - the widget layer, only when asked for
        except ImportError as err:
            raise UsageError(f"the archive browser needs ipywidgets ({err}): pip install ipywidgets (part of nbckpt's jupyter extra). "
                             f"Meanwhile, %ckpt ls {_quote(path)} lists the arrays.") from err
        with _user_errors(subject=path):
            browser = ArchiveBrowser(path)
        display(browser)

    @magic_arguments(name="ckpt diff")
    @argument("a", metavar="A", help="the first checkpoint (" + _PATH_HELP + ")")
    @argument("b", metavar="B", help="the second checkpoint")
    @argument("-m", "--map-location", dest="map_location", metavar="LOC", default="cpu",
              help="where arrays are compared (default: cpu)")
    @argument("--widget", action="store_true",
              help="show the visual diff (DiffBrowser: bars of the relative change, most changed first)")
    def ckpt_diff(self, args: Any) -> None:
        """Compare A and B: arrays only in A, only in B, with another shape or dtype, or other values
        (largest absolute and relative difference), and other entries that differ."""
        a, b = _expand(args.a), _expand(args.b)
        map_location = parse_map_location(args.map_location)
        with _user_errors(subject=f"{a} or {b}", device=" Compare with -m cpu."):
            report = diff(a, b, map_location=map_location)
        if args.widget:
            from .diffview import DiffBrowser  # noqa: PLC0415 - the widget layer, only when asked for

            display(DiffBrowser(report))
            return
        display(views.bundle(str(report), report._repr_html_()), raw=True)

    @magic_arguments(name="ckpt devices")
    def ckpt_devices(self, args: Any) -> None:
        """List the devices arrays can be loaded onto here (cpu, and cuda:N for each usable GPU)."""
        found = devices()
        print(f"usable devices: {', '.join(found)}")
        if len(found) == 1:
            print("no usable GPU (it needs CuPy and a CUDA device): arrays saved on a GPU load with -m cpu or -m auto")

    @magic_arguments(name="%ckpt cache")
    @argument("path", metavar="PATH", help=_PATH_HELP)
    @argument("names", metavar="VAR", nargs="+", help="variables the cell defines, to cache")
    @argument("--force", action="store_true", help="run the cell and overwrite PATH even if it is up to date")
    def ckpt_cache(self, args: Any, cell: str) -> None:
        """Cell magic: run the cell once and save the VARs to PATH with a fingerprint (SHA-256) of the
        cell's source. While PATH holds them from the same source, later runs load the VARs instead of
        running the cell; a changed cell or --force runs it again and overwrites PATH."""
        path = _expand(args.path)
        fingerprint = cache.cell_fingerprint(cell)
        if args.force:
            reason = "--force"
        else:
            with _user_errors():
                state = cache.cache_state(path, fingerprint, args.names)
            if state.status == "foreign":
                raise UsageError(f"{path} exists and was not written by %%ckpt cache ({state.detail}): choose "
                                 f"another PATH, or pass --force to overwrite it.")
            if state.status == "fresh":
                with _user_errors(device=" Pass --force to run the cell here instead."):
                    variables = cache.load_cache(path, args.names, progress=None)
                self.shell.push(variables)
                print(f"loaded {', '.join(variables)} from {path}: the cell did not run (its source has not "
                      f"changed since it was cached; --force runs it again).")
                return
            reason = {"missing": f"{path} did not exist",
                      "stale": f"the cell changed since {path} was written",
                      "incomplete": f"{path} lacks {', '.join(state.missing)}"}[state.status]
        result = self.shell.run_cell(cell)
        if not result.success:
            raise UsageError(f"the cell raised an error (above): nothing was saved to {path}.")
        undefined = [name for name in args.names if name not in self.shell.user_ns]
        if undefined:
            raise UsageError(f"the cell did not define {', '.join(undefined)}: nothing was saved to {path}. "
                             f"Name the variables the cell assigns after %%ckpt cache PATH.")
        variables = {name: self.shell.user_ns[name] for name in args.names}
        with _user_errors():
            try:
                cache.save_cache(path, variables, fingerprint, progress=None)
            except (TypeError, ValueError) as err:
                raise UsageError(f"cannot cache: {err}. Cache only arrays, numbers, strings and containers "
                                 f"of them.") from err
        print(f"ran the cell ({reason}) and saved {', '.join(variables)} to {path}.")


def _overview() -> str:
    """``%ckpt?``: what the magics are for, then every sub-command's generated help."""
    intro = [
        "Checkpoints from the notebook: save and load variables in torch's format, look inside",
        "checkpoint files, compare them, and cache a cell's results. Sub-commands:",
        "",
    ]
    helps = [getattr(CheckpointMagics, method).parser.format_help().strip() for method in SUBCOMMANDS.values()]
    return "\n".join(intro) + "\n\n".join(helps) + "\n"


CheckpointMagics.ckpt.__doc__ = _overview()
CheckpointMagics.ckpt_cell.__doc__ = CheckpointMagics.ckpt_cache.parser.format_help()
