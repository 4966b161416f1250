"""Which globals a ``weights_only`` load may use, and how users extend the list.

nbckpt's own allowlist (torch's rebuild functions, storage classes and dtypes,
``collections.OrderedDict``, ``set``, ``complex``, numeric NumPy arrays...) is
fixed and implemented by :mod:`nbckpt.pickling.rebuild`; nothing in it is
imported from torch. Users may allow more of their own classes and functions:

- :func:`add_safe_globals` adds to a process-wide list (as torch does);
- :func:`safe_globals` is a context manager that allows them only inside its
  block and only in the current thread (or asyncio task), and restores exactly
  the previous state on exit.

    >>> import collections, nbckpt
    >>> with nbckpt.safe_globals([collections.defaultdict]):
    ...     "collections.defaultdict" in nbckpt.get_safe_globals_names()
    True
    >>> "collections.defaultdict" in nbckpt.get_safe_globals_names()
    False

Some modules can run code or reach the system whatever is asked of them; their
globals are refused even when a user allowlists them (torch blocks the first
four: ``sys``, ``os``, ``posix``, ``nt``).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Any, Iterable, Iterator

__all__ = [
    "add_safe_globals",
    "safe_globals",
    "get_safe_globals",
    "get_safe_globals_names",
    "clear_safe_globals",
    "user_global",
    "allowed_member",
    "blocked_reason",
    "refusal_message",
]

# Modules whose globals are never loaded with weights_only=True.
BLOCKED_MODULES = frozenset({
    "sys", "os", "posix", "nt", "subprocess", "importlib", "pickle", "_pickle",
    "runpy", "shutil", "socket", "ctypes", "marshal", "code", "codeop", "pty",
    "webbrowser", "multiprocessing", "signal", "threading", "_thread", "io",
    "_io", "pathlib", "tempfile", "nbckpt",
})
# Builtins that execute code or reach objects' internals.
BLOCKED_BUILTINS = frozenset({
    "eval", "exec", "compile", "__import__", "open", "getattr", "setattr",
    "delattr", "globals", "locals", "vars", "breakpoint", "input", "exit", "quit",
    "help", "memoryview", "type", "object", "super", "classmethod", "staticmethod",
    "property",
})

# Single functions that read or run other files, whatever module they sit in.
BLOCKED_NAMES = frozenset({
    "torch.load", "torch.serialization.load", "torch.jit.load", "torch.hub.load",
    "numpy.load", "numpy.save", "numpy.fromfile", "numpy.memmap", "numpy.loadtxt",
    "numpy.genfromtxt", "numpy.lib.npyio.load", "numpy.ctypeslib.load_library",
})

_lock = threading.Lock()
_process_globals: dict[str, Any] = {}
_scoped_globals: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "nbckpt_scoped_safe_globals", default={}
)


def _qualified_name(entry: Any) -> tuple[str, Any]:
    """``(dotted name, object)`` for an allowlist entry, as the file names it.

    An entry is a class or function (named ``module.qualname``), a method
    bound to a class such as ``zoneinfo.ZoneInfo._unpickle`` (named
    ``module.Class.method``, which is how a protocol-2 pickle reaches it:
    ``getattr(Class, "method")``), or a tuple ``(object, "module.name")``
    naming the object as the file does, as torch accepts.

        >>> import zoneinfo
        >>> _qualified_name(zoneinfo.ZoneInfo._unpickle)[0]
        'zoneinfo.ZoneInfo._unpickle'
        >>> _qualified_name((print, "legacy.print"))[0]
        'legacy.print'
    """
    if isinstance(entry, tuple):
        if len(entry) != 2:
            raise ValueError(
                f"expected (object, 'module.name'), a tuple of length 2, got a tuple of length {len(entry)}"
            )
        obj, name = entry
        if not isinstance(name, str):
            raise TypeError(f"expected the second item to be the dotted name as str, got {type(name).__name__}")
        return name, obj
    owner = getattr(entry, "__self__", None)
    if isinstance(owner, type) and isinstance(getattr(entry, "__name__", None), str):
        # A classmethod or a C type's method: its __module__ is often None.
        return f"{_class_name(owner)}.{entry.__name__}", entry
    module = getattr(entry, "__module__", None)
    qualname = getattr(entry, "__qualname__", None) or getattr(entry, "__name__", None)
    if not module or not qualname:
        raise TypeError(
            f"cannot allowlist {entry!r}: it has no __module__/__qualname__; pass (object, 'module.name') instead"
        )
    return f"{module}.{qualname}", entry


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def add_safe_globals(globals_: Iterable[Any]) -> None:
    """Allow these classes or functions in every later ``weights_only`` load.

    Each entry is an object with ``__module__`` and ``__qualname__``, a method
    bound to a class (``zoneinfo.ZoneInfo._unpickle``, allowed as
    ``zoneinfo.ZoneInfo._unpickle``), or a tuple ``(object, "module.name")``
    naming it as the file does, as in torch.

        >>> import collections, nbckpt
        >>> nbckpt.add_safe_globals([collections.defaultdict])
        >>> nbckpt.clear_safe_globals()
    """
    entries = [_qualified_name(e) for e in globals_]
    with _lock:
        _process_globals.update(entries)


@contextlib.contextmanager
def safe_globals(globals_: Iterable[Any]) -> Iterator[None]:
    """Allow these globals inside the ``with`` block, in this thread/task only.

        >>> import collections, io, nbckpt
        >>> buf = io.BytesIO()
        >>> with nbckpt.safe_globals([collections.defaultdict]):
        ...     pass
    """
    entries = dict(_qualified_name(e) for e in globals_)
    token = _scoped_globals.set({**_scoped_globals.get(), **entries})
    try:
        yield
    finally:
        _scoped_globals.reset(token)


def get_safe_globals() -> list[Any]:
    """The user-allowlisted objects in effect here (process-wide and scoped)."""
    return list(_current().values())


def get_safe_globals_names() -> list[str]:
    """The dotted names of the user-allowlisted objects in effect here."""
    return sorted(_current())


def clear_safe_globals() -> None:
    """Forget every global added with :func:`add_safe_globals`."""
    with _lock:
        _process_globals.clear()


def _current() -> dict[str, Any]:
    with _lock:
        merged = dict(_process_globals)
    merged.update(_scoped_globals.get())
    return merged


def user_global(dotted: str) -> tuple[bool, Any]:
    """``(True, obj)`` when the user allowlisted ``dotted``, else ``(False, None)``."""
    scoped = _scoped_globals.get()
    if dotted in scoped:
        return True, scoped[dotted]
    with _lock:
        if dotted in _process_globals:
            return True, _process_globals[dotted]
    return False, None


def allowed_member(owner: type, name: str) -> tuple[bool, Any]:
    """``(True, obj)`` when the user allowlisted ``owner.name`` by its dotted name.

    Protocol 2 pickles a nested class or a method bound to a class as
    ``getattr(Owner, "name")``; this is the decision for that call. The name is
    ``module.Owner.name`` (what :func:`add_safe_globals` records for
    ``Owner.name``, or the name given in an ``(object, "module.Owner.name")``
    entry), so a private member such as ``ZoneInfo._unpickle`` is allowed only
    when it was named itself.

        >>> import zoneinfo
        >>> with safe_globals([zoneinfo.ZoneInfo, zoneinfo.ZoneInfo._unpickle]):
        ...     allowed_member(zoneinfo.ZoneInfo, "_unpickle")[0], allowed_member(zoneinfo.ZoneInfo, "clear_cache")[0]
        (True, False)
    """
    if not isinstance(owner, type) or type(name) is not str:
        return False, None
    return user_global(f"{_class_name(owner)}.{name}")


def blocked_reason(module: str, name: str) -> str | None:
    """Why ``module.name`` is never loaded with weights_only=True, or None."""
    top = module.split(".", 1)[0]
    if top in BLOCKED_MODULES or module in BLOCKED_MODULES:
        return f"module {module!r} can run code or reach the system"
    if module == "builtins" and name in BLOCKED_BUILTINS:
        return f"builtins.{name} can run code or reach the interpreter's internals"
    if f"{module}.{name}" in BLOCKED_NAMES:
        return f"{module}.{name} reads (and may run) other files"
    return None


def refusal_message(dotted: str) -> str:
    """The message for a global that is not allowlisted: what to call to allow it."""
    if dotted.startswith("torch.nn.modules."):
        return (
            f"weights_only=True refused GLOBAL {dotted}: the file pickles a whole torch.nn.Module "
            f"(its class and attributes), not just its weights; nbckpt loads arrays, not modules. "
            f"Load it with torch, save module.state_dict() and load that; or, only for a file from "
            f"a source you trust completely, load it with weights_only=False (which can run "
            f"arbitrary code). Allowing the class with nbckpt.add_safe_globals([{dotted}]) is "
            f"rarely enough: a module pickles many other objects."
        )
    return (
        f"weights_only=True refused GLOBAL {dotted}: it is not among the globals nbckpt "
        f"loads safely. If you trust this file, allow it with "
        f"nbckpt.add_safe_globals([{dotted}]) or, for one load, "
        f"`with nbckpt.safe_globals([{dotted}]): nbckpt.load(...)`; or, only for a file "
        f"from a source you trust completely, load it with weights_only=False, which "
        f"can run arbitrary code."
    )
