"""List the globals a pickle names, without executing any of it.

A ``weights_only`` load refuses a file the moment it meets a global outside the
allowlist; a scan shows *all* of them at once, each marked allowed or not, so a
user can decide what to allowlist (or not to trust the file).

    >>> import pickle, collections
    >>> [(g.name, g.allowed) for g in scan_pickle(pickle.dumps(collections.OrderedDict(), protocol=2))]
    [('collections.OrderedDict', True)]

``GLOBAL`` and ``INST`` name their global in the opcode. ``STACK_GLOBAL`` takes
it from the stack, so the scan follows the stack symbolically (string
constants, the memo, marks, pops) with each opcode's stack effect from
:mod:`pickletools`; when the names are not constants it reports
``<computed STACK_GLOBAL>``, never allowed. Objects built at run time cannot be
seen by a scan; the safe loader still refuses them when they appear.
"""

from __future__ import annotations

import functools
import io
import pickletools
from dataclasses import dataclass
from typing import Any

from ..errors import FormatError
from . import allowlist
from .rebuild import Rebuilder, canonical_name

__all__ = ["GlobalRef", "scan_pickle", "classify"]

COMPUTED = "<computed STACK_GLOBAL>"
_STRING_OPS = frozenset({"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                         "SHORT_BINSTRING"})
_UNKNOWN = object()
_MARK = object()


@dataclass(frozen=True)
class GlobalRef:
    """A global a pickle names; ``reason`` says why it is (not) allowed."""

    name: str
    allowed: bool
    reason: str


@functools.lru_cache(maxsize=1)
def _builtin_names() -> frozenset[str]:
    return frozenset(Rebuilder(None).globals)


def classify(dotted: str) -> GlobalRef:
    """Whether ``dotted`` would load with ``weights_only=True`` here, and why."""
    if dotted == COMPUTED:
        return GlobalRef(dotted, False, "a global whose name is computed while loading")
    module, _, name = dotted.rpartition(".")
    blocked = allowlist.blocked_reason(module, name)
    if blocked:
        return GlobalRef(dotted, False, f"blocked: {blocked}")
    if dotted in _builtin_names():
        return GlobalRef(dotted, True, "nbckpt allowlist")
    if allowlist.user_global(dotted)[0]:
        return GlobalRef(dotted, True, "user allowlist (add_safe_globals / safe_globals)")
    return GlobalRef(dotted, False, "not allowlisted")


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin1")
    return None


def scan_pickle(data: bytes) -> list[GlobalRef]:
    """The distinct globals ``data`` names, in order of first appearance."""
    seen: dict[str, GlobalRef] = {}
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            dotted = None
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                dotted = canonical_name(module, attr)
            elif name == "STACK_GLOBAL":
                attr = _as_text(stack[-1]) if stack else None
                module = _as_text(stack[-2]) if len(stack) > 1 else None
                dotted = canonical_name(module, attr) if module and attr else COMPUTED
            if dotted is not None and dotted not in seen:
                seen[dotted] = classify(dotted)
            _step(opcode, arg, stack, memo)
            if name == "STOP":
                break
    except ValueError as err:  # pickletools reports malformed input as ValueError
        raise FormatError(f"cannot scan the pickle: {err}", record="data.pkl") from None
    return list(seen.values())


def _step(opcode: Any, arg: Any, stack: list[Any], memo: dict[int, Any]) -> None:
    """Apply one opcode's effect on a symbolic stack of constants and unknowns."""
    name = opcode.name
    if name in _STRING_OPS:
        stack.append(arg)
        return
    if name in ("BINPUT", "LONG_BINPUT", "PUT"):
        memo[arg] = stack[-1] if stack else _UNKNOWN
        return
    if name == "MEMOIZE":
        memo[len(memo)] = stack[-1] if stack else _UNKNOWN
        return
    if name in ("BINGET", "LONG_BINGET", "GET"):
        stack.append(memo.get(arg, _UNKNOWN))
        return
    if name == "MARK":
        stack.append(_MARK)
        return
    if name == "DUP":
        stack.append(stack[-1] if stack else _UNKNOWN)
        return
    # Everything else: pop what the opcode consumes (up to the mark for those that
    # take one), push unknowns for what it produces.
    for item in opcode.stack_before:
        if item is pickletools.markobject:
            while stack and stack.pop() is not _MARK:
                pass
        elif stack:
            stack.pop()
    for item in opcode.stack_after:
        stack.append(_MARK if item is pickletools.markobject else _UNKNOWN)
