"""Unpicklers: the restricted one used by default, and the full one (opt-in).

:class:`SafeUnpickler` is a small pickle virtual machine written for hostile
input. It executes the binary opcodes of protocols 2 to 4 that hold data,
resolves GLOBALs only through nbckpt's allowlist (see :mod:`.rebuild`) and the
user's safe globals (see :mod:`.allowlist`), imports nothing, and checks every
operation's target: REDUCE only calls allowed callables, BUILD only completes
objects it knows, SETITEM only touches dicts, APPEND only lists. Reads are
bounded by the data, so a length field cannot make it allocate more than the
pickle's own size. Opcodes that import or call by other means (INST, OBJ,
NEWOBJ_EX, EXT*), text-protocol opcodes and out-of-band buffers are refused.

:class:`FullUnpickler` (``weights_only=False``) is Python's own unpickler with
torch's rebuild functions mapped to nbckpt's: it can run arbitrary code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import types
from typing import Any

from ..errors import CheckpointError, EncodingError, FormatError, UnpicklingError
from . import allowlist
from .decision import RESTRICTED_GETATTR, decide
from .rebuild import PendingObject, Rebuilder

__all__ = ["SafeUnpickler", "FullUnpickler", "MAX_NESTING"]

#: Deepest MARK nesting accepted (torch files need a handful).
MAX_NESTING = 1000

_unpack_i4 = struct.Struct("<i").unpack_from
_unpack_u4 = struct.Struct("<I").unpack_from
_unpack_u8 = struct.Struct("<Q").unpack_from
_unpack_u2 = struct.Struct("<H").unpack_from
_unpack_f8 = struct.Struct(">d").unpack_from

# Opcode bytes, named as in the pickle module.
_MARK, _STOP, _POP, _POP_MARK, _DUP = 0x28, 0x2E, 0x30, 0x31, 0x32
_BININT, _BININT1, _BININT2, _NONE = 0x4A, 0x4B, 0x4D, 0x4E
_BINPERSID, _REDUCE, _BINSTRING, _SHORT_BINSTRING = 0x51, 0x52, 0x54, 0x55
_BINUNICODE, _EMPTY_LIST, _APPEND, _BUILD, _GLOBAL = 0x58, 0x5D, 0x61, 0x62, 0x63
_APPENDS, _BINGET, _LONG_BINGET, _BINPUT, _LONG_BINPUT = 0x65, 0x68, 0x6A, 0x71, 0x72
_SETITEM, _TUPLE, _SETITEMS, _EMPTY_DICT, _EMPTY_TUPLE = 0x73, 0x74, 0x75, 0x7D, 0x29
_BINFLOAT = 0x47
_PROTO, _NEWOBJ, _TUPLE1, _TUPLE2, _TUPLE3 = 0x80, 0x81, 0x85, 0x86, 0x87
_NEWTRUE, _NEWFALSE, _LONG1, _LONG4 = 0x88, 0x89, 0x8A, 0x8B
_BINBYTES, _SHORT_BINBYTES = 0x42, 0x43
_SHORT_BINUNICODE, _BINUNICODE8, _BINBYTES8 = 0x8C, 0x8D, 0x8E
_EMPTY_SET, _ADDITEMS, _FROZENSET, _STACK_GLOBAL, _MEMOIZE, _FRAME = 0x8F, 0x90, 0x91, 0x93, 0x94, 0x95

# Opcodes that exist but are never executed with weights_only=True, and why.
_REFUSED = {
    b"i"[0]: ("INST", "imports and calls a class"),
    b"o"[0]: ("OBJ", "calls a class"),
    0x92: ("NEWOBJ_EX", "calls a class with keyword arguments"),
    0x82: ("EXT1", "imports through the copyreg extension registry"),
    0x83: ("EXT2", "imports through the copyreg extension registry"),
    0x84: ("EXT4", "imports through the copyreg extension registry"),
    b"P"[0]: ("PERSID", "is a text-protocol persistent id"),
    0x96: ("BYTEARRAY8", "is a protocol-5 buffer"),
    0x97: ("NEXT_BUFFER", "reads an out-of-band buffer"),
    0x98: ("READONLY_BUFFER", "reads an out-of-band buffer"),
}
for _code, _name in ((b"I", "INT"), (b"L", "LONG"), (b"F", "FLOAT"), (b"S", "STRING"),
                     (b"V", "UNICODE"), (b"g", "GET"), (b"p", "PUT"), (b"l", "LIST"),
                     (b"d", "DICT")):
    _REFUSED[_code[0]] = (_name, "belongs to the text pickle protocol 0, which torch never writes")

_DICT_TYPES = (dict, collections.OrderedDict, collections.Counter)
# Every key the machine makes a dict or set hash goes through Rebuilder.keys
# (nbckpt.pickling.keys): nesting depth, walking work and hash collisions are bounded.


class SafeUnpickler:
    """Load one pickle from ``data`` (bytes) without running code.

    ``rebuilder`` supplies the allowlisted globals and the storages;
    ``encoding`` decodes Python 2 byte strings (``"bytes"`` keeps them as
    bytes). After :meth:`load`, ``position`` is the offset just past STOP.

        >>> import pickle
        >>> from nbckpt.pickling.rebuild import Rebuilder
        >>> SafeUnpickler(pickle.dumps({"a": [1, 2.5]}, protocol=2), Rebuilder(None)).load()
        {'a': [1, 2.5]}
    """

    def __init__(self, data: bytes, rebuilder: Rebuilder, *, encoding: str = "utf-8",
                 start: int = 0, persistent_load: Any = None) -> None:
        self._data = data
        self._rebuilder = rebuilder
        self._persistent_load = persistent_load or rebuilder.persistent_load
        self._encoding = encoding
        self.position = start
        self.globals_seen: list[str] = []
        self._user_callables: set[int] = set()
        self._user_classes: dict[int, str] = {}  # id -> the dotted name it was allowed as
        self._unfinished: dict[int, PendingObject] = {}
        # ``getattr(Outer, "Nested")`` is how protocol 2 names nested classes.
        self._getattr = self.restricted_getattr  # one bound method, so its id is stable
        self._user_callables.add(id(self._getattr))

    # -- globals ------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        """The object for GLOBAL ``module.name``: allowlisted, or refused (see :func:`.decision.decide`)."""
        decision = decide(module, name, self._rebuilder.globals)
        dotted = decision.name
        self.globals_seen.append(dotted)
        if decision.kind == "restricted":
            return self._getattr
        if decision.kind == "blocked":
            raise UnpicklingError(
                f"weights_only=True refused GLOBAL {dotted}: it is {decision.reason}; "
                f"nbckpt never loads it, even when allowlisted. Load this file with weights_only=False "
                f"only if you trust its source completely: it would run that code.",
                global_name=dotted,
            )
        if not decision.allowed:
            raise UnpicklingError(allowlist.refusal_message(dotted), global_name=dotted)
        obj = decision.obj
        if decision.kind == "user":
            self._trust_user_object(obj, dotted)
        return obj

    def _trust_user_object(self, obj: Any, dotted: str) -> None:
        if callable(obj):
            self._user_callables.add(id(obj))
        if isinstance(obj, type):
            self._user_classes[id(obj)] = dotted

    def restricted_getattr(self, obj: Any, name: Any) -> Any:
        """``getattr`` as protocol 2 uses it for nested classes and class-bound methods, nothing more.

        Only ``getattr(Outer, "Nested")`` (or ``getattr(ZoneInfo, "_unpickle")``) where
        ``Outer`` is a user-allowlisted class and ``Outer.Nested`` is itself allowed by
        :func:`.decision.decide` (under that dotted name) may be fetched; anything else
        (``getattr(x, "__globals__")``...) is refused.
        """
        dunder = type(name) is str and name.startswith("__") and name.endswith("__")
        outer = self._user_classes.get(id(obj)) if type(name) is str and not dunder else None
        if outer is not None:
            module, _, qualname = outer.rpartition(".")
            decision = decide(module, f"{qualname}.{name}", self._rebuilder.globals)
            value = getattr(obj, name, None)
            # A method bound to a class (ZoneInfo._unpickle) is a new object on every access.
            same = value is decision.obj or (
                isinstance(value, (types.MethodType, types.BuiltinMethodType)) and value == decision.obj)
            if decision.kind == "user" and same:
                self._trust_user_object(decision.obj, decision.name)
                return decision.obj
        member = f"{outer}.{name}" if outer is not None else f"{getattr(obj, '__qualname__', type(obj).__qualname__)}.{name}"
        raise UnpicklingError(
            f"weights_only=True refused getattr({obj!r}, {name!r}): only an allowlisted member of an "
            f"allowlisted class may be fetched. If you trust this file, allow it with "
            f"nbckpt.safe_globals([{member}])",
            global_name=RESTRICTED_GETATTR,
        )

    # -- helpers -----------------------------------------------------------------------

    def _fail(self, pos: int, message: str) -> FormatError:
        return FormatError(f"corrupt pickle at byte {pos}: {message}", record="data.pkl")

    def _unfinished_use(self, value: Any, pos: int) -> FormatError:
        return self._fail(pos, f"{value!r} is used before the pickle finished building it")

    def _short(self, pos: int, n: int, end: int) -> FormatError:
        return self._fail(pos, f"expected {n} bytes of data, only {max(end - pos, 0)} left")

    def _string(self, raw: bytes) -> Any:
        """Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), decoded as asked."""
        if self._encoding == "bytes":
            return raw
        return raw.decode(self._encoding)  # UnicodeDecodeError is the caller's to see

    def _reduce(self, func: Any, args: Any, pos: int) -> Any:
        if type(args) is not tuple:
            raise self._fail(pos, f"REDUCE arguments must be a tuple, got {type(args).__name__}")
        if id(func) in self._rebuilder.callables or id(func) in self._user_callables:
            result = func(*args)
            if isinstance(result, PendingObject):
                self._unfinished[id(result)] = result
            return result
        raise UnpicklingError(
            f"weights_only=True refused to call {func!r} (REDUCE at byte {pos}): only "
            f"allowlisted functions and classes may be called"
        )

    def _newobj(self, cls: Any, args: Any, pos: int) -> Any:
        if type(args) is not tuple:
            raise self._fail(pos, f"NEWOBJ arguments must be a tuple, got {type(args).__name__}")
        if id(cls) in self._rebuilder.classes:
            return cls(*args)
        if id(cls) in self._user_classes:
            return cls.__new__(cls, *args)
        raise UnpicklingError(
            f"weights_only=True refused to create an object of {cls!r} (NEWOBJ at byte {pos}): "
            f"only classes allowlisted with nbckpt.add_safe_globals may be created"
        )

    def _build(self, inst: Any, state: Any, pos: int) -> Any:
        """Apply BUILD; returns the object that replaces ``inst`` (usually itself)."""
        if isinstance(inst, PendingObject):
            self._unfinished.pop(id(inst), None)
            return inst.finish(state)
        if type(inst) is collections.OrderedDict:
            # A state_dict's ``_metadata`` (module versions) arrives this way;
            # names of the mapping's own methods (``items``...) may not be shadowed.
            if isinstance(state, dict):
                for key in state:
                    if isinstance(key, str) and not key.startswith("__") and hasattr(collections.OrderedDict, key):
                        raise UnpicklingError(
                            f"weights_only=True refused BUILD setting {key!r} on an OrderedDict (byte {pos}): "
                            f"it would hide the mapping's own attribute"
                        )
            _set_attributes(inst, state, pos)
            return inst
        if id(type(inst)) in self._user_classes:
            if "__setstate__" in _class_attributes(type(inst)):
                inst.__setstate__(state)
                return inst
            slotstate = None
            if isinstance(state, tuple) and len(state) == 2:
                state, slotstate = state
            if state:
                _set_attributes(inst, state, pos, use_dict=True)
            if slotstate:
                _set_attributes(inst, slotstate, pos)
            return inst
        raise UnpicklingError(
            f"weights_only=True refused BUILD on {type(inst).__module__}.{type(inst).__qualname__} "
            f"(byte {pos}): only OrderedDict, NumPy arrays and allowlisted classes may be built"
        )

    # -- the machine ---------------------------------------------------------------------

    def load(self) -> Any:
        """Run the pickle up to STOP and return its object."""
        return self._run()

    def _run(self) -> Any:  # noqa: C901 - one loop over opcodes is the clearest (and fastest) form
        # Hot loop: locals only, no helper calls for the common opcodes, bounds
        # checked inline. Reading past the data raises IndexError/struct.error,
        # turned into FormatError below with the position it happened at.
        data = self._data
        end = len(data)
        pos = self.position
        stack: list[Any] = []
        append = stack.append
        marks: list[int] = []
        memo: dict[int, Any] = {}
        pending_slots: dict[int, list[int]] = {}
        unfinished = self._unfinished
        callables = self._rebuilder.callables
        user_callables = self._user_callables
        persistent_load = self._persistent_load
        check_key = self._rebuilder.keys.check
        try:
            while True:
                op = data[pos]
                pos += 1
                # Ordered by how often torch checkpoints use them (LONG_BINPUT first:
                # any file of more than a few arrays memoizes past slot 255).
                if op == _LONG_BINPUT:
                    index = _unpack_u4(data, pos)[0]
                    pos += 4
                    value = memo[index] = stack[-1]
                    if unfinished and id(value) in unfinished:
                        pending_slots.setdefault(id(value), []).append(index)
                elif op == _BINGET:
                    value = memo[data[pos]]
                    if unfinished and id(value) in unfinished:
                        raise self._unfinished_use(value, pos)
                    append(value)
                    pos += 1
                elif op == _BININT1:
                    append(data[pos])
                    pos += 1
                elif op == _MARK:
                    if len(marks) >= MAX_NESTING:
                        raise FormatError(f"pickle nests more than {MAX_NESTING} levels deep", record="data.pkl")
                    marks.append(len(stack))
                elif op == _BINPUT:
                    value = memo[data[pos]] = stack[-1]
                    if unfinished and id(value) in unfinished:
                        pending_slots.setdefault(id(value), []).append(data[pos])
                    pos += 1
                elif op == _BINUNICODE:
                    n = _unpack_u4(data, pos)[0]
                    pos += 4
                    if pos + n > end:
                        raise self._short(pos, n, end)
                    append(data[pos : pos + n].decode("utf-8", "surrogatepass"))
                    pos += n
                elif op == _TUPLE:
                    if not marks:
                        raise self._fail(pos, "TUPLE needs a MARK but there is none")
                    k = marks.pop()
                    items = tuple(stack[k:])
                    del stack[k:]
                    append(items)
                elif op == _TUPLE1:
                    stack[-1] = (stack[-1],)
                elif op == _TUPLE2:
                    b = stack.pop()
                    stack[-1] = (stack[-1], b)
                elif op == _REDUCE:
                    args = stack.pop()
                    func = stack[-1]
                    if type(args) is tuple and (id(func) in callables or id(func) in user_callables):
                        result = func(*args)
                        if isinstance(result, PendingObject):
                            unfinished[id(result)] = result
                        stack[-1] = result
                    else:
                        stack[-1] = self._reduce(func, args, pos - 1)  # raises the right error
                elif op == _BINPERSID:
                    stack[-1] = persistent_load(stack[-1])
                elif op == _NEWFALSE:
                    append(False)
                elif op == _EMPTY_TUPLE:
                    append(())
                elif op == _BININT2:
                    append(_unpack_u2(data, pos)[0])
                    pos += 2
                elif op == _SETITEMS:
                    if not marks:
                        raise self._fail(pos, "SETITEMS needs a MARK but there is none")
                    k = marks.pop()
                    items = stack[k:]
                    del stack[k:]
                    target = stack[-1]
                    if type(target) not in _DICT_TYPES:
                        raise _refuse_target("SETITEMS", target, "dict, OrderedDict or Counter", pos - 1)
                    if len(items) % 2:
                        raise self._fail(pos, "SETITEMS needs key/value pairs, got an odd number of items")
                    for i in range(0, len(items), 2):
                        key = items[i]
                        if type(key) is not str:
                            check_key(key)
                        target[key] = items[i + 1]
                elif op == _LONG_BINGET:
                    value = memo[_unpack_u4(data, pos)[0]]
                    if unfinished and id(value) in unfinished:
                        raise self._unfinished_use(value, pos)
                    append(value)
                    pos += 4
                elif op == _BININT:
                    append(_unpack_i4(data, pos)[0])
                    pos += 4
                elif op == _TUPLE3:
                    c = stack.pop()
                    b = stack.pop()
                    stack[-1] = (stack[-1], b, c)
                elif op == _GLOBAL:
                    module = self._line(data, pos, end)
                    pos += len(module) + 1
                    name = self._line(data, pos, end)
                    pos += len(name) + 1
                    try:
                        module_name, attr_name = module.decode("utf-8"), name.decode("utf-8")
                    except UnicodeDecodeError:
                        raise self._fail(pos, "a GLOBAL name is not valid UTF-8") from None
                    append(self.find_class(module_name, attr_name))
                elif op == _NEWTRUE:
                    append(True)
                elif op == _NONE:
                    append(None)
                elif op == _BINFLOAT:
                    append(_unpack_f8(data, pos)[0])
                    pos += 8
                elif op == _EMPTY_DICT:
                    append({})
                elif op == _EMPTY_LIST:
                    append([])
                elif op == _SETITEM:
                    value = stack.pop()
                    key = stack.pop()
                    target = stack[-1]
                    if type(target) not in _DICT_TYPES:
                        raise _refuse_target("SETITEM", target, "dict, OrderedDict or Counter", pos - 1)
                    if type(key) is not str:
                        check_key(key)
                    target[key] = value
                elif op == _APPEND:
                    value = stack.pop()
                    target = stack[-1]
                    if type(target) is not list:
                        raise _refuse_target("APPEND", target, "list", pos - 1)
                    target.append(value)
                elif op == _APPENDS:
                    if not marks:
                        raise self._fail(pos, "APPENDS needs a MARK but there is none")
                    k = marks.pop()
                    items = stack[k:]
                    del stack[k:]
                    target = stack[-1]
                    if type(target) is not list:
                        raise _refuse_target("APPENDS", target, "list", pos - 1)
                    target.extend(items)
                elif op == _BUILD:
                    state = stack.pop()
                    inst = stack[-1]
                    built = self._build(inst, state, pos - 1)
                    if built is not inst:
                        stack[-1] = built
                        for index in pending_slots.pop(id(inst), ()):
                            if memo.get(index) is inst:
                                memo[index] = built
                elif op == _MEMOIZE:
                    # The slot is len(memo) *before* the write: a memo with a gap
                    # (BINPUT 5 first) overwrites an existing slot and keeps its length.
                    index = len(memo)
                    value = memo[index] = stack[-1]
                    if unfinished and id(value) in unfinished:
                        pending_slots.setdefault(id(value), []).append(index)
                elif op == _SHORT_BINUNICODE or op == _BINUNICODE8:
                    if op == _SHORT_BINUNICODE:
                        n = data[pos]
                        pos += 1
                    else:
                        n = _unpack_u8(data, pos)[0]
                        pos += 8
                    if pos + n > end:
                        raise self._short(pos, n, end)
                    append(data[pos : pos + n].decode("utf-8", "surrogatepass"))
                    pos += n
                elif op == _LONG1 or op == _LONG4:
                    if op == _LONG1:
                        n = data[pos]
                        pos += 1
                    else:
                        n = _unpack_i4(data, pos)[0]
                        pos += 4
                    if n < 0 or pos + n > end:
                        raise self._short(pos, n, end)
                    append(int.from_bytes(data[pos : pos + n], "little", signed=True))
                    pos += n
                elif op == _NEWOBJ:
                    args = stack.pop()
                    stack[-1] = self._newobj(stack[-1], args, pos - 1)
                elif op == _SHORT_BINSTRING or op == _BINSTRING:
                    if op == _SHORT_BINSTRING:
                        n = data[pos]
                        pos += 1
                    else:
                        n = _unpack_i4(data, pos)[0]
                        pos += 4
                    if n < 0 or pos + n > end:
                        raise self._short(pos, n, end)
                    append(self._string(data[pos : pos + n]))
                    pos += n
                elif op == _BINBYTES or op == _SHORT_BINBYTES or op == _BINBYTES8:
                    if op == _BINBYTES:
                        n = _unpack_u4(data, pos)[0]
                        pos += 4
                    elif op == _SHORT_BINBYTES:
                        n = data[pos]
                        pos += 1
                    else:
                        n = _unpack_u8(data, pos)[0]
                        pos += 8
                    if pos + n > end:
                        raise self._short(pos, n, end)
                    append(data[pos : pos + n])
                    pos += n
                elif op == _EMPTY_SET:
                    append(set())
                elif op == _ADDITEMS:
                    if not marks:
                        raise self._fail(pos, "ADDITEMS needs a MARK but there is none")
                    k = marks.pop()
                    items = stack[k:]
                    del stack[k:]
                    target = stack[-1]
                    if type(target) is not set:
                        raise _refuse_target("ADDITEMS", target, "set", pos - 1)
                    for item in items:
                        check_key(item)
                    target.update(items)
                elif op == _FROZENSET:
                    if not marks:
                        raise self._fail(pos, "FROZENSET needs a MARK but there is none")
                    k = marks.pop()
                    items = stack[k:]
                    del stack[k:]
                    for item in items:
                        check_key(item)
                    append(frozenset(items))
                elif op == _STACK_GLOBAL:
                    name = stack.pop()
                    module = stack.pop()
                    if type(module) is not str or type(name) is not str:
                        raise self._fail(pos, "STACK_GLOBAL needs two strings")
                    append(self.find_class(module, name))
                elif op == _FRAME:
                    if pos + 8 > end:
                        raise self._fail(pos, "a FRAME header is cut short")
                    pos += 8  # a length hint only; the data follows inline
                elif op == _PROTO:
                    if data[pos] > 5:
                        raise self._fail(pos, f"unsupported pickle protocol {data[pos]}")
                    pos += 1
                elif op == _POP:
                    if marks and marks[-1] == len(stack):
                        marks.pop()
                    else:
                        stack.pop()
                elif op == _POP_MARK:
                    if not marks:
                        raise self._fail(pos, "POP_MARK needs a MARK but there is none")
                    del stack[marks.pop():]
                elif op == _DUP:
                    if unfinished and id(stack[-1]) in unfinished:
                        raise self._unfinished_use(stack[-1], pos)
                    append(stack[-1])
                elif op == _STOP:
                    self.position = pos
                    if len(stack) != 1 or marks:
                        raise self._fail(pos, f"STOP with {len(stack)} objects and {len(marks)} marks left")
                    result = stack[0]
                    if isinstance(result, PendingObject):
                        unfinished.pop(id(result), None)
                        result = result.resolve()
                    if unfinished:
                        listed = ", ".join(sorted({repr(o) for o in unfinished.values()}))
                        raise FormatError(
                            f"the pickle ends with objects it never finished building: {listed}",
                            record="data.pkl",
                        )
                    return result
                elif op in _REFUSED:
                    name, why = _REFUSED[op]
                    raise UnpicklingError(
                        f"weights_only=True refused pickle opcode {name} at byte {pos - 1}: it {why}. "
                        f"torch.save never writes it; load the file with weights_only=False only "
                        f"if you trust its source completely"
                    )
                else:
                    raise self._fail(pos - 1, f"byte 0x{op:02x} is not a pickle opcode")
        except CheckpointError:
            raise
        except UnicodeDecodeError as err:
            if err.encoding.replace("-", "").lower() == "utf8" and self._encoding.replace("-", "").lower() != "utf8":
                raise self._fail(pos, "a unicode string is not valid UTF-8") from None
            if op in (_SHORT_BINSTRING, _BINSTRING):
                # A Python 2 string the requested ``encoding`` cannot decode: torch raises
                # UnicodeDecodeError, so do we — typed, so every entry point reports it as bad input.
                raise EncodingError(err.encoding, err.object, err.start, err.end,
                                    f"{err.reason} (a Python 2 string at pickle offset {pos}; "
                                    "encoding='latin1' or 'bytes' reads any)") from None
            raise self._fail(pos, "a unicode string is not valid UTF-8") from None
        except KeyError as err:
            raise self._fail(pos, f"memo slot {err.args[0]} is read before it is written") from None
        except struct.error:
            raise self._fail(pos, f"expected more bytes of data than the {end - pos} left") from None
        except IndexError as err:
            if pos >= end:
                raise self._fail(pos, "the pickle ends without a STOP opcode (truncated)") from None
            raise FormatError(f"corrupt or truncated pickle near byte {pos}: {err}", record="data.pkl") from None
        except OverflowError as err:
            raise FormatError(f"corrupt or truncated pickle near byte {pos}: {err}", record="data.pkl") from None
        except RecursionError:
            raise FormatError("pickle is nested too deeply", record="data.pkl") from None
        except (TypeError, ValueError, AttributeError) as err:
            # Unhashable keys, wrong argument counts, NumPy refusing a shape:
            # all of them come from the file.
            raise FormatError(f"invalid pickle near byte {pos}: {err}", record="data.pkl") from None

    def _line(self, data: bytes, pos: int, end: int) -> bytes:
        newline = data.find(b"\n", pos, min(end, pos + 1024))
        if newline < 0:
            raise self._fail(pos, "a GLOBAL name is not terminated by a newline within 1024 bytes")
        return data[pos:newline]


def _class_attributes(cls: type) -> set[str]:
    """Names defined by ``cls`` or its bases, except ``object`` itself."""
    return {name for klass in cls.__mro__ if klass is not object for name in vars(klass)}


def _set_attributes(inst: Any, state: Any, pos: int, *, use_dict: bool = False) -> None:
    if not isinstance(state, dict):
        raise FormatError(f"BUILD state must be a dict of attributes, got {type(state).__name__}", record="data.pkl")
    for key, value in state.items():
        if type(key) is not str or (key.startswith("__") and key.endswith("__")):
            raise UnpicklingError(f"weights_only=True refused to set attribute {key!r} (BUILD at byte {pos})")
        try:
            if use_dict and hasattr(inst, "__dict__"):
                inst.__dict__[key] = value
            else:
                setattr(inst, key, value)
        except (AttributeError, TypeError) as err:
            raise FormatError(
                f"BUILD at byte {pos} sets attribute {key!r}, which a "
                f"{type(inst).__qualname__} cannot hold: {err}",
                record="data.pkl",
            ) from None


def _refuse_target(opcode: str, target: Any, allowed: str, pos: int) -> UnpicklingError:
    return UnpicklingError(
        f"weights_only=True refused {opcode} on {type(target).__module__}.{type(target).__qualname__} "
        f"(byte {pos}): it may only modify a {allowed} the pickle created"
    )


class FullUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Python's unpickler with torch's globals mapped to nbckpt (``weights_only=False``).

    Everything else is imported and called as the pickle says: only for files
    from a source you trust. Python's pure-Python unpickler is used because its
    BUILD can be taught to complete NumPy placeholders.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes, rebuilder: Rebuilder, *, encoding: str = "utf-8",
                 start: int = 0, persistent_load: Any = None) -> None:
        self._buffer = io.BytesIO(data)
        self._buffer.seek(start)
        super().__init__(self._buffer, encoding=encoding)
        self._rebuilder = rebuilder
        self._persistent_load_hook = persistent_load or rebuilder.persistent_load

    @property
    def position(self) -> int:
        return self._buffer.tell()

    def find_class(self, module: str, name: str) -> Any:
        # torch's names become nbckpt's (tensors load as arrays, torch need not be
        # installed); everything else is what the pickle says, as Python loads it.
        if module.split(".", 1)[0] == "torch":
            found = self._rebuilder.resolve(module, name)
            if found is not None:
                return found[1]
        try:
            return super().find_class(module, name)
        except ImportError as err:
            hint = " (pip install torch)" if module.split(".")[0] == "torch" else ""
            raise UnpicklingError(
                f"the file needs {module}.{name}, which cannot be imported here: {err}{hint}",
                global_name=f"{module}.{name}",
            ) from err

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent_load_hook(pid)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PendingObject):
            built = inst.finish(state)
            self.stack[-1] = built
            for key, value in list(self.memo.items()):
                if value is inst:
                    self.memo[key] = built
            return
        self.stack.append(state)
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build
