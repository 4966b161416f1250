"""The ``nbckpt`` command: look inside, check, compare and convert checkpoints from a shell.

::

    nbckpt ls FILE [GLOB]        the arrays: name, shape, dtype, device, size, sharing
    nbckpt info FILE             format, byte order, counts, sizes, sharing, globals
    nbckpt show FILE NAME        one array's statistics and first values (or one value)
    nbckpt verify FILE           check every CRC-32, size, the pickle and every view
    nbckpt diff A B              arrays and values that differ
    nbckpt convert SRC DST       between torch files, DCP, safetensors and .npz (--format or extension)

FILE may be a path or a URL (``s3://...``, ``https://...``; ``-o KEY=VALUE`` passes
fsspec storage options). Every sub-command takes ``--json`` (one JSON document on
stdout) and ``--debug`` (tracebacks). Exit status: 0 ok; 1 a problem found
(``verify`` found problems, ``diff`` found differences, ``info`` found globals the
safe loader refuses); 2 a usage error or a command that failed (the reason on
stderr, one line). Long work shows a progress bar on stderr when it is a terminal.

Each sub-command is one small function that calls the library.

    >>> parse_storage_options(["anon=true", "client_kwargs.endpoint_url=http://127.0.0.1:9000"])
    {'anon': True, 'client_kwargs': {'endpoint_url': 'http://127.0.0.1:9000'}}
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import json
import math
import os
import sys
import traceback
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .api import scan
from .archive import Archive
from .compare import DiffReport, diff
from .convert import FORMATS, TARGETS, convert
from .devices import MAP_TEXT_CHOICES, parse_map_text
from .errors import DeviceError, LossyConversionError, UnpicklingError, typed_errors
from .jupyter import stats, views
from .meta import MetaArray
from .io.remote import is_url
from .io.sources import remove_stale_temporaries
from .summary import record_columns, record_rows, table_text
from .text import EscapingWriter, escape, safe_repr
from .verify import verify

__all__ = ["main", "build_parser", "parse_storage_options", "EXIT_OK", "EXIT_FOUND", "EXIT_FAILED"]

EXIT_OK = 0
#: A problem was found: verify found problems, diff found differences.
EXIT_FOUND = 1
#: A usage error, or the command failed.
EXIT_FAILED = 2

_UNSAFE_WARNING = ("--unsafe: loading with weights_only=False. The file's pickle can run ANY code on this machine; "
                   "use it only for files you trust.")


class CommandError(Exception):
    """A failure worth one line on stderr (no traceback)."""


# -- arguments ------------------------------------------------------------------------------------


def parse_storage_options(pairs: Sequence[str] | None) -> dict | None:
    """``-o KEY=VALUE`` options as a dict: values are JSON when they parse (``true``,
    ``3``, ``{"a": 1}``), else strings; dotted keys nest (``client_kwargs.endpoint_url``)."""
    if not pairs:
        return None
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--storage-option {pair!r}: expected KEY=VALUE, e.g. anon=true or "
                               f"client_kwargs.endpoint_url=http://127.0.0.1:9000")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        *parents, last = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise CommandError(f"--storage-option {pair!r}: {parent} is given a value and nested keys")
        target[last] = value
    return options


def _map_location(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return parse_map_text(text)
    except ValueError as err:
        raise CommandError(f"--map-location {err}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nbckpt`` (one sub-parser per sub-command)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")
    common.add_argument("--debug", action="store_true", help="print a traceback when the command fails")
    common.add_argument("-o", "--storage-option", dest="storage_options", metavar="KEY=VALUE", action="append",
                        help="fsspec storage option for URLs (repeatable); VALUE is JSON or text, dotted KEYs "
                             "nest: -o anon=true -o client_kwargs.endpoint_url=http://127.0.0.1:9000")
    unsafe = argparse.ArgumentParser(add_help=False)
    unsafe.add_argument("--unsafe", action="store_true",
                        help="weights_only=False: lets the file's pickle run code. Only for files you trust")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("-m", "--map-location", dest="map_location", metavar="LOC", default="cpu",
                        help=f"where arrays are loaded (default: cpu): {MAP_TEXT_CHOICES}")

    parser = argparse.ArgumentParser(
        prog="nbckpt",
        description="Look inside, check, compare and convert torch checkpoints (no torch needed). FILE may be a "
                    "path or a URL (s3://, gs://, https://... through fsspec).",
        epilog="Exit status: 0 ok; 1 a problem found (verify: problems, diff: differences, info: refused "
               "globals); 2 usage error or failure.")
    parser.add_argument("--version", action="version", version=f"nbckpt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, function: Callable, help: str, parents: list) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, parents=parents)
        sub.set_defaults(function=function)
        return sub

    sub = command("ls", cmd_ls, "list the arrays (name, shape, dtype, device, size, shared with); reads no array "
                  "data", [common, unsafe])
    sub.add_argument("file", metavar="FILE")
    sub.add_argument("pattern", metavar="GLOB", nargs="?", help="only names that match, e.g. 'model.*.weight'")
    sub = command("info", cmd_info, "format, byte order, array and storage counts, sizes, sharing, and every "
                  "global the pickle names", [common, unsafe])
    sub.add_argument("file", metavar="FILE")
    sub = command("show", cmd_show, "one array: shape, dtype, statistics and first values (or one other value)",
                  [common, unsafe, device])
    sub.add_argument("file", metavar="FILE")
    sub.add_argument("name", metavar="NAME", help="the dotted name, as ls lists it")
    sub = command("verify", cmd_verify, "check the file: CRC-32s, sizes, the pickle, every view (exit 1 when a "
                  "problem is found)", [common])
    sub.add_argument("file", metavar="FILE")
    sub = command("diff", cmd_diff, "compare two checkpoints array by array (exit 1 when they differ)",
                  [common, unsafe, device])
    sub.add_argument("a", metavar="A")
    sub.add_argument("b", metavar="B")
    sub = command("convert", cmd_convert, f"convert between torch files, DCP folders, safetensors and .npz, the "
                  f"target's format by --format or its extension ({', '.join(FORMATS)}); refuses what would lose "
                  f"something unless --lossy", [common, unsafe])
    sub.add_argument("src", metavar="SRC")
    sub.add_argument("dst", metavar="DST")
    sub.add_argument("--lossy", action="store_true",
                     help="convert even when the target cannot hold everything (what is lost goes to stderr)")
    sub.add_argument("-f", "--format", choices=tuple(TARGETS), default=None,
                     help="the target's format, as nbckpt.save(format=...) takes it, or safetensors or npz "
                          "(default: by the extension of DST)")
    sub.add_argument("--legacy", action="store_true", help="write a torch target in torch's pre-1.6 format "
                     "(the same as --format legacy)")
    return parser


# -- output ------------------------------------------------------------------------------------------


#: Items one JSON document holds at most: a value repeated through the memo (a
#: "billion laughs") or a huge array is cut there, with a marker saying so.
JSON_ITEM_LIMIT = 100_000


class _Budget:
    """Items left for one JSON document (see :data:`JSON_ITEM_LIMIT`)."""

    def __init__(self, items: int = JSON_ITEM_LIMIT) -> None:
        self.left = items

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


_CUT = f"<cut: the output holds at most {JSON_ITEM_LIMIT} items>"


def _jsonable(value: Any, depth: int = 0, budget: _Budget | None = None) -> Any:
    """``value`` as JSON data: NumPy scalars and arrays as numbers and lists, non-finite
    floats as ``"nan"``/``"inf"``/``"-inf"``, complex as ``[real, imag]``, ints too long
    for JSON readers and anything else as a (bounded) repr; at most ``budget`` items."""
    budget = budget or _Budget()
    if not budget.take():
        return _CUT
    if depth > 50:
        return safe_repr(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.generic, np.ndarray)) and not isinstance(value, np.bool_):
        if value.size > budget.left:
            return f"<array of {value.size} elements: more than the output may hold>"
        if value.dtype.kind == "V" and value.dtype.fields is None:  # bfloat16, float8: as floats
            with contextlib.suppress(TypeError, ValueError):
                value = value.astype(np.float64)
        try:
            return _jsonable(value.tolist(), depth + 1, budget)
        except (TypeError, ValueError):
            return safe_repr(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else safe_repr(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else ("nan" if math.isnan(value) else "inf" if value > 0 else "-inf")
    if isinstance(value, complex):
        return [_jsonable(value.real, depth + 1, budget), _jsonable(value.imag, depth + 1, budget)]
    if isinstance(value, dict):
        out = {}
        for k, v in dict.items(value):
            if budget.left <= 0:
                out[_CUT] = None
                break
            out[k if isinstance(k, str) else safe_repr(k)] = _jsonable(v, depth + 1, budget)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        out_list = []
        for v in value:
            if budget.left <= 0:
                out_list.append(_CUT)
                break
            out_list.append(_jsonable(v, depth + 1, budget))
        return out_list
    return safe_repr(value)


def _print_json(data: Any) -> None:
    print(json.dumps(_jsonable(data, budget=_Budget()), indent=2, allow_nan=False))


def _cells(rows: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Rows with every cell escaped: names and values come from the file (see :mod:`nbckpt.text`)."""
    return [tuple(escape(str(cell)) for cell in row) for row in rows]


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return table_text(columns, _cells(rows))


def _pairs(rows: Sequence[tuple[str, str]]) -> str:
    return views.pairs_text(_cells(rows))


def _progress() -> bool | None:
    """Progress bars only on a terminal (``None``: when the work is large)."""
    return None if sys.stderr.isatty() else False


def _warn(message: str) -> None:
    print(f"nbckpt: warning: {message}", file=sys.stderr)


def _open(args: argparse.Namespace, f: str, *, map_location: Any = "cpu") -> Archive:
    with typed_errors(f"opening {f}"):
        return Archive(f, map_location=map_location, weights_only=not getattr(args, "unsafe", False),
                       storage_options=args.options if is_url(f) else None)


def _record_json(record: Any) -> dict[str, Any]:
    return {"name": record.name, "shape": list(record.shape), "dtype": str(record.dtype),
            "device": record.location, "nbytes": record.nbytes, "storage": record.storage,
            "offset": record.offset, "strides": list(record.strides), "shares": list(record.shares)}


# -- sub-commands -------------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    """``nbckpt ls FILE [GLOB]``."""
    with _open(args, args.file) as archive:
        records, values = archive.records, archive.values
    if args.pattern:
        records = [r for r in records if fnmatch.fnmatchcase(r.name, args.pattern)]
    if args.json:
        _print_json({"file": args.file, "pattern": args.pattern, "arrays": [_record_json(r) for r in records],
                     "values": values})
        return EXIT_OK
    caption = f"{escape(args.file)}: {len(records)} array{'' if len(records) == 1 else 's'}"
    if args.pattern:
        caption += f" matching {escape(args.pattern)}"
    print(caption)
    if records:
        columns = record_columns(records)  # plus chunks and files for sharded checkpoints
        print(_table(columns, record_rows(records, columns)))
    if values:
        names = [escape(name) or "(root)" for name in values]
        shown = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
        print(f"{len(names)} other entr{'y' if len(names) == 1 else 'ies'}: {shown}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    """``nbckpt info FILE``; exit 1 when the safe loader refuses globals the file names."""
    try:
        with _open(args, args.file) as archive:
            info, records = archive.info, archive.records
    except UnpicklingError as err:  # still worth showing what the file names
        found = scan(args.file, storage_options=args.options if is_url(args.file) else None)
        if args.json:
            _print_json({"file": args.file, "refused": str(err),
                         "globals": [dataclasses.asdict(g) for g in found]})
        else:
            print(_pairs([("file", args.file), ("refused", str(err))] + views.globals_rows(found)))
        return EXIT_FOUND
    if args.json:
        data = dataclasses.asdict(info)
        data["globals"] = [dataclasses.asdict(g) for g in info.globals]
        data["arrays"] = data.pop("records")
        data["shared_arrays"] = sum(1 for r in records if r.shares)
        _print_json(data)
    else:
        print(_pairs(views.info_rows(info, records)))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """``nbckpt show FILE NAME``: an array's statistics, or a value."""
    with _open(args, args.file, map_location=_map_location(args.map_location)) as archive:
        if args.name not in archive and args.name in archive.values:
            value = archive.values[args.name]
            if args.json:
                _print_json({"file": args.file, "name": args.name, "value": value})
            else:
                print(f"{escape(args.name)} in {escape(args.file)}: {safe_repr(value, 2000)}")
            return EXIT_OK
        try:
            archive.record(args.name)
        except KeyError as err:
            raise CommandError(f"{err.args[0]}. List the arrays with: nbckpt ls {args.file}") from None
        with typed_errors(f"reading {args.name!r} from {args.file}"):
            array = archive[args.name]
    with typed_errors(f"summarising {args.name!r}"):
        summary = stats.array_stats(array)
    if args.json:
        data = dataclasses.asdict(summary)
        data["first_values"] = [] if isinstance(array, MetaArray) else _first(array)
        _print_json({"file": args.file, "name": args.name, **data})
        return EXIT_OK
    print(f"{escape(args.name)} in {escape(args.file)}")
    print(_pairs(summary.rows() + [("first values", stats.first_values(array))]))
    return EXIT_OK


def _first(array: Any, n: int = 10) -> list:
    values = stats.leading_values(array, n)
    if values.dtype.kind not in "biufc":  # bfloat16, float8: through float32; raw types: their integers
        try:
            values = values.astype(np.float32)
        except (TypeError, ValueError):
            values = values.view(np.dtype(f"u{values.dtype.itemsize}")) if values.dtype.itemsize in (1, 2, 4, 8) \
                else values.view(np.uint8)
    return _jsonable(values)


def cmd_verify(args: argparse.Namespace) -> int:
    """``nbckpt verify FILE``; exit 1 when a problem is found."""
    report = verify(args.file, storage_options=args.options if is_url(args.file) else None, progress=_progress())
    if not is_url(args.file):  # what saves killed mid-way (SIGKILL) left next to the file
        for path in remove_stale_temporaries(os.path.dirname(os.path.abspath(args.file))):
            _warn(f"removed {escape(str(path))}: the temporary file of a save whose process is gone")
    if args.json:
        _print_json({"file": args.file, "format": report.format, "ok": report.ok,
                     "records_checked": report.records_checked,
                     "problems": [dataclasses.asdict(p) for p in report.problems], "notes": report.notes})
    else:
        print(report)
    return EXIT_OK if report.ok else EXIT_FOUND


def cmd_diff(args: argparse.Namespace) -> int:
    """``nbckpt diff A B``; exit 1 when they differ."""
    with _open(args, args.a, map_location=_map_location(args.map_location)) as a, \
            _open(args, args.b, map_location=_map_location(args.map_location)) as b:
        report = diff(a, b, progress=_progress())
    if args.json:
        _print_json(_diff_json(report))
    else:
        rows = report.rows()
        print(escape(report.summary(), newlines=False) + ("\n\n" + _table(report.COLUMNS, rows) if rows else ""))
    return EXIT_OK if report.identical else EXIT_FOUND


def _diff_json(report: DiffReport) -> dict[str, Any]:
    def side(record: Any) -> Any:
        return None if record is None else {"shape": list(record.shape), "dtype": str(record.dtype)}

    return {
        "a": report.source_a, "b": report.source_b, "identical": report.identical,
        "equal_arrays": report.equal_records, "equal_values": report.equal_values,
        "arrays": [{"name": d.name, "change": d.change, "a": side(d.a), "b": side(d.b), "differing": d.differing,
                    "max_abs": d.max_abs, "max_rel": d.max_rel, "nan_mismatch": d.nan_mismatch, "note": d.note}
                   for d in report.records],
        "values": [{"name": d.name, "change": d.change, "a": None if d.change == "only in B" else d.a,
                    "b": None if d.change == "only in A" else d.b} for d in report.values],
    }


def cmd_convert(args: argparse.Namespace) -> int:
    """``nbckpt convert SRC DST [--lossy] [--format FORMAT | --legacy]``."""
    fmt = args.format
    if args.legacy:
        if fmt not in (None, "legacy"):
            raise CommandError(f"--legacy is --format legacy; it cannot go with --format {fmt}")
        fmt = "legacy"
    try:
        report = convert(args.src, args.dst, format=fmt, lossy=args.lossy, weights_only=not args.unsafe,
                         storage_options=args.options, progress=_progress())
    except LossyConversionError as err:
        if args.json:
            _print_json(err.report.to_dict())
        lines = "".join(f"\n  - {escape(item)}" for item in err.lost)  # one line each: names are the file's
        raise CommandError(f"refused: converting {args.src} to {args.dst} would lose:{lines}\n"
                           f"Pass --lossy to convert anyway.") from None
    for item in report.lost:
        _warn(f"lost: {escape(item)}")
    if args.json:
        _print_json(report.to_dict())
    else:
        print("\n".join([escape(report.summary())] + [f"  note: {escape(note)}" for note in report.notes]))
    return EXIT_OK


# -- main -------------------------------------------------------------------------------------------------


def _message(err: BaseException, args: argparse.Namespace) -> str:
    """One line about a failure: what went wrong and, where nbckpt knows, how to fix it."""
    if isinstance(err, CommandError):
        return str(err)
    if isinstance(err, FileNotFoundError):
        missing = err.filename or (err.args[0] if err.args and not err.strerror else None)
        return f"no such file: {missing}" if missing else str(err.strerror or err)
    if isinstance(err, UnpicklingError):
        return f"{err} If you trust this file, pass --unsafe."
    if isinstance(err, DeviceError):
        return f"{err} Pass --map-location cpu (or auto)."
    if isinstance(err, (OSError, ValueError, TypeError, KeyError, ImportError)) or hasattr(err, "record"):
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return str(text) or type(err).__name__
    return f"{type(err).__name__}: {err}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nbckpt`` with ``argv`` (default: the command line); returns the exit status."""
    # Everything printed goes through an escaping writer: names, values, file names
    # and messages can come from the file, whose author must not drive the terminal.
    # File names are the user's, but may hold a newline or CR too ($'a\nOK b.pt'): each
    # argument is escaped whole wherever it is printed, so no line of output is forged.
    names = list(sys.argv[1:] if argv is None else argv)
    # ...and so are the forms of them messages quote (the folder of a file, its absolute path).
    names += [form for arg in names if isinstance(arg, str)
              for form in (os.path.dirname(arg), os.path.abspath(arg), os.path.dirname(os.path.abspath(arg)))
              if form]
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EscapingWriter(sys.stdout, names), EscapingWriter(sys.stderr, names)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = saved


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"nbckpt {args.command}"
    try:
        args.options = parse_storage_options(args.storage_options)
        files = [getattr(args, name) for name in ("file", "a", "b", "src", "dst") if hasattr(args, name)]
        if args.options is not None and not any(is_url(f) for f in files):
            raise CommandError(f"--storage-option is for URLs (s3://..., https://...); {', '.join(files)} "
                               f"{'is a local path' if len(files) == 1 else 'are local paths'}")
        if getattr(args, "unsafe", False):
            _warn(_UNSAFE_WARNING)
        return args.function(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (nbckpt ls big.pt | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # as when killed by SIGPIPE
    except Exception as err:  # every failure: one line on stderr, a traceback only with --debug
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {_message(err, args)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # python -m nbckpt.cli
    sys.exit(main())
