"""List the globals a pickle names, without executing any of it.

A ``weights_only`` load refuses a file the moment it meets a global outside the
allowlist; a scan shows *all* of them at once, each marked allowed or not (by
:func:`.decision.decide`, the function the safe loader itself calls), so a user
can decide what to allowlist, or not to trust the file.

    >>> import pickle, collections
    >>> [(g.name, g.allowed) for g in scan_pickle(pickle.dumps(collections.OrderedDict(), protocol=2))]
    [('collections.OrderedDict', True)]

``GLOBAL`` and ``INST`` name their global in the opcode. ``STACK_GLOBAL`` takes
it from the stack, so the scan runs the pickle *symbolically*: a stack and a
memo of constants and unknowns, with MARK handled as Python's own unpickler
handles it (a stack of stacks), each opcode written out below with the effect
``pickle._Unpickler`` gives it. The guarantee, tested against Python's
unpickler on the hostile corpus and on fuzzed opcode streams: every global that
``pickle`` would look up (``find_class``) while running ``data`` is in the
scan's list, or the list holds :data:`COMPUTED` / an extension code, never
allowed. Where the real unpickler would stop with an error, the scan goes on
(an empty stack pops as unknown), so it reports more, never less.

``getattr(Outer, "Nested")`` with constant arguments (how protocol 2 names a
nested class) is reported as ``Outer.Nested`` too, decided like any global.
"""

from __future__ import annotations

import functools
import io
import pickletools
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import FormatError
from .decision import RESTRICTED_GETATTR, decide
from .rebuild import Rebuilder, canonical_name

__all__ = ["GlobalRef", "scan_pickle", "classify", "COMPUTED"]

COMPUTED = "<computed STACK_GLOBAL>"


@dataclass(frozen=True)
class GlobalRef:
    """A global a pickle names; ``reason`` says why it is (not) allowed."""

    name: str
    allowed: bool
    reason: str


class _Unknown:
    """A value the scan cannot know (the result of a call, a container...)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()


@dataclass(frozen=True)
class _Global:
    """The symbolic value of a global the pickle looked up."""

    name: str


@functools.lru_cache(maxsize=1)
def _ours() -> dict[str, Any]:
    return dict(Rebuilder(None).globals)


def classify(dotted: str) -> GlobalRef:
    """Whether ``dotted`` would load with ``weights_only=True`` here, and why."""
    if dotted == COMPUTED:
        return GlobalRef(dotted, False, "a global whose name is computed while loading")
    if dotted.startswith("<copyreg extension"):
        return GlobalRef(dotted, False, "a global named through copyreg's extension registry")
    module, _, name = dotted.rpartition(".")
    decision = decide(module, name, _ours())
    return GlobalRef(decision.name, decision.allowed, decision.reason)


def _text(raw: str) -> str:
    """pickletools decodes byte strings as latin-1; pickle decodes GLOBAL names as UTF-8."""
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


class _Machine:
    """The symbolic stack, metastack (marks) and memo of one scan."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.seen: dict[str, GlobalRef] = {}

    # -- stack primitives, as pickle._Unpickler has them --------------------------

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def pop(self) -> Any:
        return self.stack.pop() if self.stack else UNKNOWN

    def top(self) -> Any:
        return self.stack[-1] if self.stack else UNKNOWN

    def pop_mark(self) -> list[Any]:
        items = self.stack
        self.stack = self.metastack.pop() if self.metastack else []
        return items

    def report(self, dotted: str) -> None:
        if dotted not in self.seen:
            self.seen[dotted] = classify(dotted)

    def lookup(self, module: Any, name: Any) -> Any:
        if type(module) is str and type(name) is str:
            dotted = canonical_name(module, name)
            self.report(dotted)
            return _Global(dotted)
        self.report(COMPUTED)
        return UNKNOWN

    def line_pair(self, pos: int) -> tuple[str, str]:
        """GLOBAL/INST's two newline-ended names, read as pickle reads them (UTF-8)."""
        first = self.data.index(b"\n", pos + 1)
        second = self.data.index(b"\n", first + 1)
        return (self.data[pos + 1:first].decode("utf-8", "surrogateescape"),
                self.data[first + 1:second].decode("utf-8", "surrogateescape"))


def _constant(m: _Machine, arg: Any, pos: int) -> None:
    m.push(arg)


def _string(m: _Machine, arg: Any, pos: int) -> None:
    m.push(_text(arg) if isinstance(arg, str) else arg)


def _push_unknown(m: _Machine, arg: Any, pos: int) -> None:
    m.push(UNKNOWN)


def _global(m: _Machine, arg: Any, pos: int) -> None:
    m.push(m.lookup(*m.line_pair(pos)))


def _inst(m: _Machine, arg: Any, pos: int) -> None:
    m.lookup(*m.line_pair(pos))
    m.pop_mark()
    m.push(UNKNOWN)


def _stack_global(m: _Machine, arg: Any, pos: int) -> None:
    name = m.pop()
    module = m.pop()
    m.push(m.lookup(module, name))


def _ext(m: _Machine, arg: Any, pos: int) -> None:
    m.report(f"<copyreg extension {arg}>")
    m.push(UNKNOWN)


def _reduce(m: _Machine, arg: Any, pos: int) -> None:
    args = m.pop()
    func = m.pop()
    result: Any = UNKNOWN
    if (func == _Global(RESTRICTED_GETATTR) and type(args) is tuple and len(args) == 2
            and isinstance(args[0], _Global) and type(args[1]) is str):
        result = _Global(f"{args[0].name}.{args[1]}")
        m.report(result.name)
    m.push(result)


def _pop_n(n: int, push: bool) -> Callable[[_Machine, Any, int], None]:
    def step(m: _Machine, arg: Any, pos: int) -> None:
        for _ in range(n):
            m.pop()
        if push:
            m.push(UNKNOWN)
    return step


def _mark(m: _Machine, arg: Any, pos: int) -> None:
    m.metastack.append(m.stack)
    m.stack = []


def _pop_mark_then(push: bool, pop_after: int = 0) -> Callable[[_Machine, Any, int], None]:
    def step(m: _Machine, arg: Any, pos: int) -> None:
        m.pop_mark()
        for _ in range(pop_after):
            m.pop()
        if push:
            m.push(UNKNOWN)
    return step


def _obj(m: _Machine, arg: Any, pos: int) -> None:
    m.pop_mark()  # the class is the first item after the mark
    m.push(UNKNOWN)


def _tuple(m: _Machine, arg: Any, pos: int) -> None:
    m.push(tuple(m.pop_mark()))


def _tuple_n(n: int) -> Callable[[_Machine, Any, int], None]:
    def step(m: _Machine, arg: Any, pos: int) -> None:
        items = [m.pop() for _ in range(n)]
        m.push(tuple(reversed(items)))
    return step


def _pop(m: _Machine, arg: Any, pos: int) -> None:
    if m.stack:
        m.stack.pop()
    else:
        m.pop_mark()


def _dup(m: _Machine, arg: Any, pos: int) -> None:
    m.push(m.top())


def _put(m: _Machine, arg: Any, pos: int) -> None:
    m.memo[arg] = m.top()


def _memoize(m: _Machine, arg: Any, pos: int) -> None:
    m.memo[len(m.memo)] = m.top()


def _get(m: _Machine, arg: Any, pos: int) -> None:
    m.push(m.memo.get(arg, UNKNOWN))


def _persid(m: _Machine, arg: Any, pos: int) -> None:
    m.push(UNKNOWN)


def _nothing(m: _Machine, arg: Any, pos: int) -> None:
    pass


_STEPS: dict[str, Callable[[_Machine, Any, int], None]] = {
    # constants
    **{name: _constant for name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
                                    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BINFLOAT", "FLOAT",
                                    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8")},
    **{name: _string for name in ("STRING", "BINSTRING", "SHORT_BINSTRING")},
    "NONE": lambda m, a, p: m.push(None),
    "NEWTRUE": lambda m, a, p: m.push(True),
    "NEWFALSE": lambda m, a, p: m.push(False),
    "EMPTY_TUPLE": lambda m, a, p: m.push(()),
    **{name: _push_unknown for name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "BYTEARRAY8",
                                        "NEXT_BUFFER")},
    "READONLY_BUFFER": _nothing,  # replaces the top with a read-only view of it
    # globals and calls
    "GLOBAL": _global,
    "INST": _inst,
    "STACK_GLOBAL": _stack_global,
    "EXT1": _ext, "EXT2": _ext, "EXT4": _ext,
    "REDUCE": _reduce,
    "NEWOBJ": _pop_n(2, True),
    "NEWOBJ_EX": _pop_n(3, True),
    "OBJ": _obj,
    "BUILD": _pop_n(1, False),
    "PERSID": _persid,
    "BINPERSID": _pop_n(1, True),
    # marks and containers
    "MARK": _mark,
    "TUPLE": _tuple,
    "TUPLE1": _tuple_n(1), "TUPLE2": _tuple_n(2), "TUPLE3": _tuple_n(3),
    "LIST": _pop_mark_then(True),
    "DICT": _pop_mark_then(True),
    "FROZENSET": _pop_mark_then(True),
    "APPEND": _pop_n(1, False),
    "APPENDS": _pop_mark_then(False),
    "SETITEM": _pop_n(2, False),
    "SETITEMS": _pop_mark_then(False),
    "ADDITEMS": _pop_mark_then(False),
    "POP": _pop,
    "POP_MARK": _pop_mark_then(False),
    "DUP": _dup,
    # memo
    "PUT": _put, "BINPUT": _put, "LONG_BINPUT": _put,
    "MEMOIZE": _memoize,
    "GET": _get, "BINGET": _get, "LONG_BINGET": _get,
    # framing
    "PROTO": _nothing, "FRAME": _nothing, "STOP": _nothing,
}


def scan_pickle(data: bytes) -> list[GlobalRef]:
    """The distinct globals ``data`` names, in order of first appearance."""
    machine = _Machine(bytes(data))
    try:
        for opcode, arg, pos in pickletools.genops(io.BytesIO(machine.data)):
            _STEPS[opcode.name](machine, arg, pos)
            if opcode.name == "STOP":
                break
    except (ValueError, UnicodeDecodeError, OverflowError) as err:
        # pickletools reports malformed input as ValueError; a scan that cannot read
        # the whole pickle says so rather than list part of it.
        raise FormatError(f"cannot scan the pickle: {err}", record="data.pkl") from None
    return list(machine.seen.values())
