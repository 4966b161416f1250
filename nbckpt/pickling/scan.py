"""List the globals a pickle names, without executing any of it.

A ``weights_only`` load refuses a file the moment it meets a global outside the
allowlist; a scan shows *all* of them at once, each marked allowed or not, so a
user can decide what to allowlist (or not to trust the file).

    >>> import pickle, collections
    >>> [(g.name, g.allowed) for g in scan_pickle(pickle.dumps(collections.OrderedDict(), protocol=2))]
    [('collections.OrderedDict', True)]

Objects built at run time (a class returned by a function) cannot be seen by a
scan; the safe loader still refuses them when they appear.
"""

from __future__ import annotations

import functools
import io
import pickletools
from dataclasses import dataclass

from ..errors import FormatError
from . import allowlist
from .rebuild import Rebuilder, canonical_name

__all__ = ["GlobalRef", "scan_pickle"]


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
    module, _, name = dotted.rpartition(".")
    blocked = allowlist.blocked_reason(module, name)
    if blocked:
        return GlobalRef(dotted, False, f"blocked: {blocked}")
    if dotted in _builtin_names():
        return GlobalRef(dotted, True, "nbckpt allowlist")
    if allowlist.user_global(dotted)[0]:
        return GlobalRef(dotted, True, "user allowlist (add_safe_globals / safe_globals)")
    return GlobalRef(dotted, False, "not allowlisted")


def scan_pickle(data: bytes) -> list[GlobalRef]:
    """The distinct globals ``data`` names, in order of first appearance."""
    seen: dict[str, GlobalRef] = {}
    strings: list[str] = []  # recent string constants, for STACK_GLOBAL
    memo: dict[int, object] = {}
    last: object = None
    try:
        for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                dotted = canonical_name(module, attr)
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                dotted = canonical_name(strings[-2], strings[-1])
            else:
                dotted = None
                if isinstance(arg, str) and name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
                    last = arg
                    strings.append(arg)
                elif name in ("BINPUT", "LONG_BINPUT"):
                    memo[arg] = last
                elif name == "MEMOIZE":
                    memo[len(memo)] = last
                elif name in ("BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
                    last = memo[arg]
                    strings.append(last)  # type: ignore[arg-type]
                else:
                    last = None
                del strings[:-2]
            if dotted is not None and dotted not in seen:
                seen[dotted] = classify(dotted)
            if name == "STOP":
                break
    except ValueError as err:  # pickletools reports malformed input as ValueError
        raise FormatError(f"cannot scan the pickle: {err}", record="data.pkl") from None
    return list(seen.values())
