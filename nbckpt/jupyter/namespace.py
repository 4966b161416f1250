"""Which notebook variables hold arrays, and which loaded entries can become variables.

Pure functions over a namespace dict (IPython's ``user_ns``), used by
``%ckpt save`` and ``%ckpt load``.

    >>> import numpy as np
    >>> ns = {"w": np.ones(2), "state": {"b": [np.zeros(1)]}, "lr": 0.1, "_": np.ones(1), "np": np}
    >>> array_variables(ns)
    ['w', 'state']
    >>> unbindable_keys({"w": 1, "layer.weight": 2, "class": 3})
    ['layer.weight', 'class']
    >>> plan = plan_binding({"x": 1, "np": 2, "print": 3, "__builtins__": 4}, ns)
    >>> sorted(plan.bound), plan.skipped
    (['x'], {'np': 'already a variable: name it, or pass --overwrite', 'print': 'a builtin: bind it with --as NAME', '__builtins__': 'a dunder name: never bound'})
"""

from __future__ import annotations

import builtins
import keyword
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from ..backends import is_cupy_array
from ..meta import MetaArray

__all__ = ["is_array", "holds_arrays", "array_variables", "unbindable_keys", "IPYTHON_NAMES", "Binding",
           "plan_binding", "protected_reason"]

#: Names IPython itself puts in the user namespace.
IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})

_MAX_DEPTH = 50
_SPARSE_MODULES = ("scipy.sparse", "cupyx.scipy.sparse")


def is_array(value: Any) -> bool:
    """NumPy, CuPy and (scipy / cupyx) sparse arrays, and ``nbckpt.MetaArray``."""
    return (isinstance(value, (np.ndarray, MetaArray)) or is_cupy_array(value)
            or type(value).__module__.startswith(_SPARSE_MODULES))


def holds_arrays(value: Any) -> bool:
    """Whether ``value`` is an array or a dict/list/tuple/set holding one at some depth."""
    seen: set[int] = set()
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if is_array(item):
            return True
        if depth >= _MAX_DEPTH or id(item) in seen:
            continue
        if isinstance(item, dict):
            seen.add(id(item))
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            seen.add(id(item))
            stack.extend((child, depth + 1) for child in item)
    return False


def array_variables(namespace: Mapping[str, Any], hidden: Iterable[str] = ()) -> list[str]:
    """Names in ``namespace`` whose values hold arrays, in namespace order.

    Skipped: names starting with ``_`` (IPython's ``_``, ``_i1``...), the
    ``hidden`` names (IPython's ``user_ns_hidden``) and :data:`IPYTHON_NAMES`,
    modules, functions and classes.
    """
    skip = IPYTHON_NAMES.union(hidden)
    return [
        name for name, value in namespace.items()
        if not name.startswith("_") and name not in skip
        and not isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type))
        and holds_arrays(value)
    ]


def unbindable_keys(entries: Mapping[Any, Any]) -> list[Any]:
    """The keys of ``entries`` that cannot be variable names (not identifiers, keywords)."""
    return [key for key in entries
            if not (isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key))]


@dataclass(frozen=True)
class Binding:
    """Which loaded entries become variables (``bound``) and which do not, and why (``skipped``)."""

    bound: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def protected_reason(name: str, hidden: Iterable[str] = ()) -> str:
    """Why ``name`` is never bound from a file (a dunder, a builtin, IPython's own), or ``""``.

        >>> protected_reason("__builtins__"), protected_reason("len"), protected_reason("w")
        ('a dunder name: never bound', 'a builtin: bind it with --as NAME', '')
    """
    if name.startswith("__") and name.endswith("__"):
        return "a dunder name: never bound"
    if name in vars(builtins):
        return "a builtin: bind it with --as NAME"
    if name in IPYTHON_NAMES or name in set(hidden):
        return "IPython's own: bind it with --as NAME"
    return ""


def plan_binding(entries: Mapping[str, Any], namespace: Mapping[str, Any], hidden: Iterable[str] = (), *,
                 named: Iterable[str] = (), overwrite: bool = False) -> Binding:
    """Which of ``entries`` (a loaded dict, its keys Python names) may become variables.

    Never bound: dunder names, builtins, IPython's names (see :func:`protected_reason`).
    A name that is already a variable is replaced only when it is in ``named`` (the
    user asked for it) or ``overwrite`` is true; otherwise it is skipped. A file
    cannot replace ``__builtins__``, ``print`` or ``np`` behind the user's back.
    """
    hidden = set(hidden)
    named = set(named)
    plan = Binding()
    for name, value in entries.items():
        reason = protected_reason(name, hidden)
        if not reason and name in namespace and name not in named and not overwrite:
            reason = "already a variable: name it, or pass --overwrite"
        if reason:
            plan.skipped[name] = reason
        else:
            plan.bound[name] = value
    return plan
