"""A fast path for the pickle of a flat ``{name: tensor}`` dict, checked against the VM.

A checkpoint of thousands of small arrays spends most of its load time in the
pickle: :class:`~.unpickler.SafeUnpickler` executes about 30 opcodes per
tensor, one Python step each. ``torch.save`` and :func:`nbckpt.save` write
every tensor of a state dict with the same fixed opcode sequence, so this
module recognises that sequence with one regular expression (one C call per
tensor) and performs the calls the VM would make, in the same order, with the
same arguments.

The accepted grammar (pickle protocol 2; ``PUT`` is an optional
``BINPUT``/``LONG_BINPUT``, ``GET`` a ``BINGET``/``LONG_BINGET``):

    file    := PROTO 2, root, (batch)*, STOP
    root    := EMPTY_DICT PUT | GLOBAL "collections OrderedDict" PUT EMPTY_TUPLE REDUCE PUT
    batch   := MARK (key value)* SETITEMS | key value SETITEM
    key     := BINUNICODE PUT | GET (of a str)
    value   := tensor | GET (of a tensor read before: tied weights)
    tensor  := (GLOBAL fn PUT | GET) MARK
                 MARK ("storage" PUT | GET) (GLOBAL cls PUT | GET) (digits PUT | GET)
                      (location PUT | GET) int TUPLE PUT BINPERSID
                 int tuple PUT tuple PUT (NEWTRUE | NEWFALSE)
                 (GLOBAL od PUT | GET) EMPTY_TUPLE REDUCE PUT [(GLOBAL dtype PUT | GET)]
               TUPLE PUT REDUCE PUT

Anything else, anywhere (another opcode, a memo slot holding something of
another role, a global the unpickler would refuse or that is not one of
nbckpt's own callables, a string that is not valid UTF-8) makes
:func:`load_flat_dict` return ``None`` before any side effect, and the caller
runs the VM, which remains the reference: it gives the result or the error.
When the grammar matches, the calls are the VM's (``find_class`` decides the
globals, ``persistent_load`` then the rebuild function per tensor, items set
batch by batch), and errors raised by them are turned into the VM's error
types. When every tensor is the common form (``_rebuild_tensor_v2`` of a typed
storage, empty hooks), the tensors are built together by
:meth:`Rebuilder.rebuild_many` (the storages asked for in one call, so small
records are read in blocks); if that raises anything, the calls are made one
by one as above, which raises what the VM raises. ``tests/test_fastpath.py``
checks both paths against each other on generated, hostile and near-miss
pickles, reading records one by one and in blocks.

    >>> import io, numpy as np, nbckpt
    >>> from nbckpt.format.checkpoint import open_zip_checkpoint
    >>> from nbckpt.materialize import ZipMaterializer
    >>> from nbckpt.devices import DeviceMap
    >>> from nbckpt.pickling.rebuild import Rebuilder
    >>> buf = io.BytesIO()
    >>> nbckpt.save({"a": np.arange(3.0), "b": np.ones(2, np.float32)}, buf)
    >>> _ = buf.seek(0)
    >>> checkpoint = open_zip_checkpoint(buf)
    >>> rebuilder = Rebuilder(ZipMaterializer(checkpoint.reader, DeviceMap.parse(None)))
    >>> load_flat_dict(checkpoint.data_pkl, rebuilder)
    {'a': array([0., 1., 2.]), 'b': array([1., 1.], dtype=float32)}
    >>> load_flat_dict(b"\\x80\\x02K\\x01.", rebuilder) is None    # not a dict of tensors: the VM's
    True
"""

from __future__ import annotations

import bisect
import collections
import itertools
import operator
import re
import struct
from typing import Any, Callable

import numpy as np

from ..errors import CheckpointError, FormatError, UnpicklingError
from .rebuild import PendingObject, Rebuilder
from .unpickler import SafeUnpickler

__all__ = ["load_flat_dict"]

_u4 = struct.Struct("<I").unpack_from
_i4 = struct.Struct("<i").unpack_from
_NO = object()  # "not recognised" inside the parser


class _Global(tuple):
    """A GLOBAL opcode's (module, name), before the unpickler decides on it."""


class _Tensor(int):
    """The n-th tensor of the file, in a memo slot (GET of it: tied weights).

    An ``int`` subclass, so that thousands are made by one ``map(_Tensor, range(...))``.
    """

    __slots__ = ()

    @property
    def index(self) -> int:
        return int(self)


class _Tensors:
    """The tensors a pickle builds, in order: rows, and runs stored as twelve columns."""

    __slots__ = ("chunks", "count")

    def __init__(self) -> None:
        self.chunks: list[tuple[bool, Any]] = []  # (is_columns, rows or columns)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def append(self, row: tuple) -> None:
        if not self.chunks or self.chunks[-1][0]:
            self.chunks.append((False, []))
        self.chunks[-1][1].append(row)
        self.count += 1

    def add_columns(self, columns: tuple, n: int) -> None:
        self.chunks.append((True, columns))
        self.count += n

    def columns(self) -> tuple:
        """Twelve tuples: each field of every tensor, in order (empty when there is none)."""
        parts = [chunk if is_columns else tuple(zip(*chunk)) for is_columns, chunk in self.chunks]
        if len(parts) == 1:
            return tuple(map(tuple, parts[0]))
        return tuple(tuple(itertools.chain.from_iterable(column)) for column in zip(*parts)) if parts else ((),) * 12

    def __iter__(self) -> Any:
        for is_columns, chunk in self.chunks:
            yield from (zip(*chunk) if is_columns else chunk)


class _Opaque:
    """A memoized value the grammar never reads back (a GET of it is not recognised)."""


_OPAQUE = _Opaque()


class _Memo(dict):
    """The parser's memo: slot -> value, and runs of slots the steady state filled.

    A run of ``n`` tensors from slot ``first`` holds each one's key in slot
    ``first + 8 i``, its storage key in ``first + 8 i + 1`` and the tensor in
    ``first + 8 i + 7`` (the other slots hold values never read back). Runs
    are kept as their three lists, not written slot by slot: a GET is rare.
    An entry of the dict itself comes first; ``_NO`` there means "no value".
    """

    __slots__ = ("runs", "firsts")

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[tuple[int, int, list, list, list]] = []
        self.firsts: list[int] = []  # each run's first slot, ascending (runs take fresh slots)

    def add_run(self, first: int, n: int, keys: list, skeys: list, refs: list) -> None:
        self.runs.append((first, n, keys, skeys, refs))
        self.firsts.append(first)

    def get(self, index: int, default: Any = None) -> Any:  # type: ignore[override]
        value = dict.get(self, index, _NO)
        if value is not _NO:
            return value
        if self.runs and not dict.__contains__(self, index):
            at = bisect.bisect_right(self.firsts, index) - 1
            if at >= 0:
                first, n, keys, skeys, refs = self.runs[at]
                if index < first + 8 * n:
                    i, role = divmod(index - first, 8)
                    return keys[i] if role == 0 else skeys[i] if role == 1 else refs[i] if role == 7 else default
        return default

# -- the expression for one tensor ----------------------------------------------------------

_INT = rb"(?:K.|M..|J....|\x8a(?:\x00|\x01.|\x02..|\x03...|\x04....|\x05.{5}|\x06.{6}|\x07.{7}|\x08.{8}))"
_TUPLE = rb"\)|" + _INT + rb"\x85|" + _INT + rb"{2}\x86|" + _INT + rb"{3}\x87|\(" + _INT + rb"{0,64}t"


def _put(name: str) -> bytes:
    return rb"(?P<p_%s>q.|r....)?" % name.encode()


def _get(name: str) -> bytes:
    return rb"(?P<g_%s>h.|j....)" % name.encode()


def _global_or_get(name: str) -> bytes:
    n = name.encode()
    return (rb"(?:c(?P<m_%s>[A-Za-z_][\w.]{0,200})\n(?P<n_%s>[A-Za-z_]\w{0,200})\n" % (n, n)
            + _put(name) + rb"|" + _get(name) + rb")")


def _string_or_get(name: str, text: bytes) -> bytes:
    n = name.encode()
    return rb"(?:X(?P<l_%s>.)\x00\x00\x00(?P<s_%s>%s)" % (n, n, text) + _put(name) + rb"|" + _get(name) + rb")"


_TENSOR = re.compile(
    _global_or_get("fn") + rb"\(\("
    + _string_or_get("kind", rb"storage")
    + _global_or_get("cls")
    + _string_or_get("key", rb"[0-9]{1,20}")
    + _string_or_get("loc", rb"[a-z][a-z0-9:_]{0,30}")
    + rb"(?P<numel>" + _INT + rb")t" + _put("pid") + rb"Q"
    + rb"(?P<offset>" + _INT + rb")"
    + rb"(?P<size>" + _TUPLE + rb")" + _put("size")
    + rb"(?P<stride>" + _TUPLE + rb")" + _put("stride")
    + rb"(?P<grad>[\x88\x89])"
    + _global_or_get("od") + rb"\)R" + _put("hooks")
    + rb"(?:" + _global_or_get("dt") + rb")?"
    + rb"t" + _put("args") + rb"R" + _put("tensor"),
    re.S,
)
_G = {name: index - 1 for name, index in _TENSOR.groupindex.items()}  # into match.groups()
_ROOT_DICT = re.compile(rb"\x80\x02\}" + _put("root"), re.S)
_ROOT_ORDERED = re.compile(rb"\x80\x02ccollections\nOrderedDict\n" + _put("cls") + rb"\)R" + _put("root"), re.S)
_DICT_TYPES = (dict, collections.OrderedDict)


def _int(raw: bytes) -> int:
    """The value of one integer opcode, as the VM reads it."""
    op = raw[0]
    if op == 0x4B:  # BININT1
        return raw[1]
    if op == 0x4D:  # BININT2
        return raw[1] | raw[2] << 8
    if op == 0x4A:  # BININT
        return _i4(raw, 1)[0]
    return int.from_bytes(raw[2:], "little", signed=True)  # LONG1


def _ints(raw: bytes) -> tuple:
    """The tuple a run of integer opcodes and its closing TUPLE* opcode build."""
    values = []
    pos = 1 if raw[0] == 0x28 else 0  # MARK ... TUPLE
    end = len(raw) - 1
    while pos < end:
        op = raw[pos]
        if op == 0x4B:
            values.append(raw[pos + 1])
            pos += 2
        elif op == 0x4D:
            values.append(raw[pos + 1] | raw[pos + 2] << 8)
            pos += 3
        elif op == 0x4A:
            values.append(_i4(raw, pos + 1)[0])
            pos += 5
        else:  # LONG1
            n = raw[pos + 1]
            values.append(int.from_bytes(raw[pos + 2 : pos + 2 + n], "little", signed=True))
            pos += 2 + n
    return tuple(values)


_PUT1 = rb"(q.|r....)"
_PUT_SPANS = [b"", b""]  # BINPUT opcodes of slots 0-255, LONG_BINPUT ones of slots 256 on, back to back


def _put_span(start: int, n: int) -> bytes:
    """The PUT opcodes pickle writes for slots ``start`` to ``start + n - 1``, back to back.

        >>> _put_span(254, 3)
        b'q\\xfeq\\xffr\\x00\\x01\\x00\\x00'
    """
    if not _PUT_SPANS[0]:
        _PUT_SPANS[0] = bytes(np.stack([np.full(256, ord("q"), np.uint8), np.arange(256, dtype=np.uint8)], 1))
    stop = start + n
    if stop > 256 + len(_PUT_SPANS[1]) // 5:
        count = max(stop - 256, 2 * (len(_PUT_SPANS[1]) // 5), 4096)
        codes = np.empty((count, 5), np.uint8)
        codes[:, 0] = ord("r")
        codes[:, 1:] = np.arange(256, 256 + count, dtype="<u4").view(np.uint8).reshape(count, 4)
        _PUT_SPANS[1] = codes.tobytes()
    if start >= 256:
        return _PUT_SPANS[1][(start - 256) * 5 : (stop - 256) * 5]
    return _PUT_SPANS[0][start * 2 : min(stop, 256) * 2] + (_PUT_SPANS[1][: (stop - 256) * 5] if stop > 256 else b"")


def _slot(raw: bytes) -> int:
    """The memo index of a PUT or GET opcode."""
    return raw[1] if len(raw) == 2 else _u4(raw, 1)[0]


class _Parser:
    """Reads the whole pickle into a list of tensor calls; no side effects."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.memo = _Memo()
        self.fresh = 0  # every memo slot from here on is unwritten
        self.templates: dict[tuple, re.Pattern] = {}  # see _template
        self.template: tuple[tuple, re.Pattern] | None = None
        self.globals: list[_Global] = []  # in order of first appearance
        # The tensors, in order: rows (fn, kind, cls, key, loc, numel, offset, size, stride, grad, od,
        # dt) read one by one, and the same twelve fields as columns for runs of the steady state.
        self.tensors: _Tensors = _Tensors()
        self.batches: list[list[tuple[str, Any]]] = []  # items set by each SETITEM(S)
        self.root: _Global | None = None  # None: a plain dict
        self.numbers: dict[bytes, Any] = {}  # integer opcodes (and tuples of them) read so far

    def _global(self, groups: tuple, name: str) -> Any:
        module = groups[_G["m_" + name]]
        if module is not None:
            found = _Global((module.decode("ascii"), groups[_G["n_" + name]].decode("ascii")))
            if found not in self.globals:
                self.globals.append(found)
            put = groups[_G["p_" + name]]
            if put is not None:
                self._put(put, found)
            return found
        found = self.memo.get(_slot(groups[_G["g_" + name]]), _NO)
        return found if type(found) is _Global else _NO

    def _string(self, groups: tuple, name: str) -> Any:
        text = groups[_G["s_" + name]]
        if text is not None:
            if groups[_G["l_" + name]][0] != len(text):
                return _NO
            value = text.decode("ascii")
            put = groups[_G["p_" + name]]
            if put is not None:
                self._put(put, value)
            return value
        found = self.memo.get(_slot(groups[_G["g_" + name]]), _NO)
        return found if type(found) is str else _NO

    def parse(self) -> bool:
        data = self.data
        if not self._parse_root():
            return False
        pos = self.pos
        while True:
            op = data[pos] if pos < len(data) else -1
            if op == 0x2E:  # STOP (bytes after it are not read, as by the VM)
                return True
            if op == 0x28:  # MARK: pairs until SETITEMS
                pos += 1
                batch: list[tuple[str, Any]] = []
                while pos < len(data) and data[pos] != 0x75:
                    if self.template is not None:
                        pos = self._templated(pos, batch)  # the steady state, as far as it goes
                        if pos >= len(data) or data[pos] == 0x75:
                            break
                    pos = self._pair(pos, batch)
                    if pos < 0:
                        return False
                if pos >= len(data):
                    return False
                pos += 1
            else:  # one pair, then SETITEM
                batch = []
                pos = self._pair(pos, batch)
                if pos < 0 or pos >= len(data) or data[pos] != 0x73:
                    return False
                pos += 1
            self.batches.append(batch)

    def _parse_root(self) -> bool:
        match = _ROOT_DICT.match(self.data)
        if match is None:
            match = _ROOT_ORDERED.match(self.data)
            if match is None:
                return False
            self.root = _Global(("collections", "OrderedDict"))
            self.globals.append(self.root)
            if match.group("p_cls") is not None:
                self._put(match.group("p_cls"), self.root)
        if match.group("p_root") is not None:
            self._put(match.group("p_root"), _OPAQUE)
        self.pos = match.end()
        return True

    def _pair(self, pos: int, batch: list) -> int:
        data = self.data
        # The key: a fresh string, or one memoized before.
        op = data[pos]
        if op == 0x58:  # BINUNICODE
            if pos + 5 > len(data):
                return -1
            n = _u4(data, pos + 1)[0]
            start = pos + 5
            if start + n > len(data):
                return -1
            try:
                key = data[start : start + n].decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                return -1
            pos = start + n
            put = self._put_at(pos)
            if put:
                self._put(data[pos : pos + put], key)
                pos += put
        elif op in (0x68, 0x6A):  # BINGET, LONG_BINGET
            key, pos = self._get_at(pos)
            if type(key) is not str:
                return -1
        else:
            return -1
        # The value: a tensor, or a tensor met before.
        match = _TENSOR.match(data, pos)
        if match is None:
            if pos >= len(data) or data[pos] not in (0x68, 0x6A):
                return -1
            value, pos = self._get_at(pos)
            if type(value) is not _Tensor:
                return -1
            batch.append((key, value))
            return pos
        value = self._tensor(match.groups())
        if value is _NO:
            return -1
        batch.append((key, value))
        return match.end()

    def _put_at(self, pos: int) -> int:
        """Length of the PUT opcode at ``pos`` (0 when there is none)."""
        op = self.data[pos] if pos < len(self.data) else -1
        if op == 0x71:
            return 2 if pos + 2 <= len(self.data) else 0
        if op == 0x72:
            return 5 if pos + 5 <= len(self.data) else 0
        return 0

    def _get_at(self, pos: int) -> tuple[Any, int]:
        data = self.data
        n = 2 if data[pos] == 0x68 else 5
        if pos + n > len(data):
            return _NO, pos
        return self.memo.get(_slot(data[pos : pos + n]), _NO), pos + n

    def _tensor(self, g: tuple) -> Any:
        # Memo slots are written and read in the order of the bytes, as the VM does.
        fn = self._global(g, "fn")
        kind = self._string(g, "kind")
        cls = self._global(g, "cls")
        key = self._string(g, "key")
        loc = self._string(g, "loc")
        self._opaque(g, "pid", "size", "stride")
        od = self._global(g, "od")
        self._opaque(g, "hooks")
        dt = self._global(g, "dt") if (g[_G["m_dt"]] is not None or g[_G["g_dt"]] is not None) else None
        self._opaque(g, "args")
        if _NO in (fn, kind, cls, key, loc, od, dt):
            return _NO
        tensor = _Tensor(len(self.tensors))
        self.tensors.append((fn, kind, cls, key, loc, _int(g[_G["numel"]]), _int(g[_G["offset"]]),
                             _ints(g[_G["size"]]), _ints(g[_G["stride"]]), g[_G["grad"]] == b"\x88", od, dt))
        if g[_G["p_tensor"]] is not None:
            self._put(g[_G["p_tensor"]], tensor)
        if all(g[_G["g_" + name]] is not None for name in ("fn", "kind", "cls", "loc", "od")):
            self._template(tuple(g[_G["g_" + name]] for name in ("fn", "kind", "cls", "loc", "od", "dt")),
                           (fn, kind, cls, loc, od, dt))
        return tensor

    def _opaque(self, g: tuple, *names: str) -> None:
        for name in names:
            put = g[_G["p_" + name]]
            if put is not None:
                self._put(put, _OPAQUE)

    def _put(self, raw: bytes, value: Any) -> None:
        """PUT ``value``; values never read back are dropped (a GET of them is not recognised)."""
        index = _slot(raw)
        if index < self.fresh:  # a slot written again: the template's GETs may name it
            self.template = None
        if value is _OPAQUE:
            if index < self.fresh:  # it may lie in a run: hide the run's value
                self.memo[index] = _NO
            else:
                self.memo.pop(index, None)
        else:
            self.memo[index] = value
        if index >= self.fresh:
            self.fresh = index + 1

    # -- the steady state --------------------------------------------------------------------
    # After the first tensors, each one reads the same memo slots (the rebuild
    # function, "storage", the storage class, the location, OrderedDict) and puts
    # eight values into the next eight fresh slots. One expression with those GETs
    # spelled out then matches a whole tensor, its key's PUT included; any other
    # form (a different slot, a reused slot) falls back to the general reading.

    def _template(self, gets: tuple, values: tuple) -> None:
        pattern = self.templates.get(gets)
        if pattern is None:
            if len(self.templates) >= 16:
                return
            fn, kind, cls, loc, od, dt = (re.escape(raw) if raw else b"" for raw in gets)
            pattern = self.templates[gets] = re.compile(
                _PUT1 + fn + rb"\(\(" + kind + cls + rb"X(.)\x00\x00\x00([0-9]{1,20})" + _PUT1 + loc
                + rb"(" + _INT + rb")t" + _PUT1 + rb"Q(" + _INT + rb")(" + _TUPLE + rb")" + _PUT1
                + rb"(" + _TUPLE + rb")" + _PUT1 + rb"([\x88\x89])" + od + rb"\)R" + _PUT1 + dt
                + rb"t" + _PUT1 + rb"R" + _PUT1,
                re.S,
            )
        self.template = (values, pattern)

    def _templated(self, pos: int, batch: list) -> int:
        """What :meth:`_templated_one_by_one` reads from ``pos``, its checks made on all pairs at once.

        The loop only matches (the key's length from its BINUNICODE, then the
        template after the key); the checks of each pair (PUT slots, lengths,
        UTF-8) and the values then come from C-level passes over the columns of
        the matches. If any pair fails a check, nothing is kept and the pairs
        are read one by one, which stops at the first that fails.
        """
        (fn, kind, cls, loc, od, dt), pattern = self.template  # type: ignore[misc]
        match = pattern.match
        data = self.data
        end_of_data = len(data)
        rows, starts, ends = [], [], []
        start = pos
        while pos + 5 <= end_of_data and data[pos] == 0x58:  # BINUNICODE
            end = pos + 5 + _u4(data, pos + 1)[0]
            found = match(data, end)
            if found is None:
                break
            rows.append(found.groups())
            starts.append(pos + 5)
            ends.append(end)
            pos = found.end()
        n = len(rows)
        if n < 8:
            return self._templated_one_by_one(start, batch)
        (kput, klen, skeys, sput, numel, pput, offset, size, zput, stride, tput, grad, hput, aput,
         rput) = zip(*rows)
        fresh = self.fresh
        if (b"".join(map(b"".join, zip(kput, sput, pput, zput, tput, hput, aput, rput))) != _put_span(fresh, 8 * n)
                or b"".join(klen) != bytes(map(len, skeys)) or fresh + 8 * n > 2**32):
            return self._templated_one_by_one(start, batch)
        try:
            keys = list(map(_DECODE_KEY, map(data.__getitem__, map(slice, starts, ends))))
        except UnicodeDecodeError:
            return self._templated_one_by_one(start, batch)
        skeys = list(map(bytes.decode, skeys))  # digits
        numbers = self.numbers
        for column, read in ((numel, _int), (offset, _int), (size, _ints), (stride, _ints)):
            for raw in set(column).difference(numbers):  # each distinct opcode run read once per file
                numbers[raw] = read(raw)
        get = numbers.__getitem__
        first = len(self.tensors)
        refs = list(map(_Tensor, range(first, first + n)))
        self.tensors.add_columns(((fn,) * n, (kind,) * n, (cls,) * n, skeys, (loc,) * n, list(map(get, numel)),
                                  list(map(get, offset)), list(map(get, size)), list(map(get, stride)),
                                  list(map(b"\x88".__eq__, grad)), (od,) * n, (dt,) * n), n)
        self.memo.add_run(fresh, n, keys, skeys, refs)
        self.fresh = fresh + 8 * n
        batch.extend(zip(keys, refs))
        return pos

    def _templated_one_by_one(self, pos: int, batch: list) -> int:
        """Read the pairs from ``pos`` that match the current template exactly; the position after them.

        Each pair is a fresh key (BINUNICODE and its PUT) and a tensor the
        template matches with the next eight fresh memo slots, its PUTs
        written as pickle writes them. At the first pair that is not, this
        returns its position and the general reading takes over there.
        """
        (fn, kind, cls, loc, od, dt), pattern = self.template  # type: ignore[misc]
        match = pattern.match
        data = self.data
        end_of_data = len(data)
        memo, tensors, append = self.memo, self.tensors, batch.append
        numbers = self.numbers
        fresh = self.fresh
        long_puts = _PUT_SPANS[1]
        while pos + 5 <= end_of_data and data[pos] == 0x58:  # BINUNICODE
            start = pos + 5
            end = start + _u4(data, pos + 1)[0]
            found = match(data, end)
            if found is None:
                break
            (kput, klen, skey, sput, numel, pput, offset, size, zput, stride, tput, grad, hput, aput,
             rput) = found.groups()
            puts = b"".join((kput, sput, pput, zput, tput, hput, aput, rput))
            if fresh >= 256 and (fresh - 248) * 5 <= len(long_puts):  # LONG_BINPUT opcodes, known
                if puts != long_puts[(fresh - 256) * 5 : (fresh - 248) * 5]:
                    break
            elif puts != _put_span(fresh, 8):
                break
            elif fresh >= 256:
                long_puts = _PUT_SPANS[1]
            if klen[0] != len(skey):
                break
            try:
                key = data[start:end].decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                break
            # Integer opcodes and tuples of them, each read once per file (never alike: a
            # tuple's bytes are an integer opcode's followed by more).
            v_numel = numbers.get(numel)
            if v_numel is None:
                v_numel = numbers[numel] = _int(numel)
            v_offset = numbers.get(offset)
            if v_offset is None:
                v_offset = numbers[offset] = _int(offset)
            v_size = numbers.get(size)
            if v_size is None:
                v_size = numbers[size] = _ints(size)
            v_stride = numbers.get(stride)
            if v_stride is None:
                v_stride = numbers[stride] = _ints(stride)
            skey = skey.decode("ascii")
            tensor = _Tensor(len(tensors))
            tensors.append((fn, kind, cls, skey, loc, v_numel, v_offset, v_size, v_stride, grad == b"\x88", od, dt))
            memo[fresh] = key
            memo[fresh + 1] = skey
            memo[fresh + 7] = tensor
            fresh += 8
            append((key, tensor))
            pos = found.end()
        self.fresh = fresh
        return pos



_DECODE_KEY = operator.methodcaller("decode", "utf-8", "surrogatepass")  # as the VM's BINUNICODE


def load_flat_dict(data: bytes, rebuilder: Rebuilder, *,
                   persistent_load: Callable[[Any], Any] | None = None) -> dict | None:
    """The dict the pickle ``data`` builds, or None when it is not in the grammar above.

    Equivalent to ``SafeUnpickler(data, rebuilder, persistent_load=...).load()``
    whenever it returns a dict; it raises the error type the VM would raise.
    """
    parser = _Parser(data)
    try:
        recognised = parser.parse()
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    if not recognised:
        return None
    # The globals, decided exactly as the VM decides them; anything it would refuse
    # (or allow only as a user's callable) is left to the VM to report.
    decider = SafeUnpickler(data, rebuilder)
    resolved: dict[_Global, Any] = {}
    for glob in parser.globals:
        try:
            resolved[glob] = decider.find_class(*glob)
        except Exception:
            return None
    callables = rebuilder.callables
    if parser.root is not None and id(resolved[parser.root]) not in callables:
        return None
    columns = parser.tensors.columns()
    for glob in set(columns[0]) | set(columns[10]):  # each rebuild function and hooks class
        if id(resolved[glob]) not in callables:
            return None
    try:
        built = _build_many(columns, resolved, rebuilder) if persistent_load is None else None
        return _build(parser, resolved, persistent_load or rebuilder.persistent_load, built)
    except CheckpointError:
        raise
    except RecursionError:
        raise FormatError("pickle is nested too deeply", record="data.pkl") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as err:
        # As the VM reports errors of the rebuild calls: they come from the file.
        raise FormatError(f"invalid pickle: {err}", record="data.pkl") from None


def _build_many(columns: tuple, resolved: dict, rebuilder: Rebuilder) -> list[Any] | None:
    """Every tensor of the file built in one :meth:`Rebuilder.rebuild_many` call, or None.

    None when a tensor is not of the form that call covers, or when it raises:
    :func:`_build` then makes the calls one by one, and reports the problem as
    the VM does. The root and the items are set by :func:`_build` either way.
    """
    if not columns[0]:
        return None
    fns, _kinds, classes, keys, locations, numels, offsets, sizes, strides, _grads, ods, dts = columns
    if set(dts) != {None}:
        return None
    for fn, od in set(zip(fns, ods)):
        if not rebuilder.batches(resolved[fn], resolved[od]):
            return None
    columns = (tuple(map(resolved.__getitem__, classes)), keys, locations, numels, offsets, sizes, strides)
    try:
        return rebuilder.rebuild_many(None, columns=columns)
    except Exception:  # noqa: BLE001 - the one-by-one path reports it
        return None


def _build(parser: _Parser, resolved: dict, persistent_load: Callable[[Any], Any],
           prebuilt: list[Any] | None = None) -> dict:
    """Make the VM's calls, in its order: per tensor, the storage, the hooks, the rebuild.

    ``prebuilt`` holds the tensors already built by :func:`_build_many`, in order.
    """
    root: Any = {} if parser.root is None else resolved[parser.root]()
    built: list[Any] = []
    unfinished: list[Any] = []
    calls = iter(parser.tensors)
    for batch in parser.batches:
        values = []
        if prebuilt is not None:  # every ref a _Tensor: an int, its index in prebuilt
            values = list(zip([key for key, _ in batch], map(prebuilt.__getitem__, [ref for _, ref in batch])))
            batch = ()
        for key, ref in batch:
            if ref.index == len(built):  # a new tensor (a GET names one built before)
                fn, kind, cls, skey, loc, numel, offset, size, stride, grad, od, dt = next(calls)
                storage = persistent_load((kind, resolved[cls], skey, loc, numel))
                hooks = resolved[od]()
                args = (storage, offset, size, stride, grad, hooks)
                if dt is not None:
                    args += (resolved[dt],)
                tensor = resolved[fn](*args)
                if isinstance(tensor, PendingObject):
                    unfinished.append(tensor)
                built.append(tensor)
            elif isinstance(built[ref.index], PendingObject):
                raise FormatError(f"corrupt pickle: {built[ref.index]!r} is used before the pickle "
                                  f"finished building it", record="data.pkl")
            values.append((key, built[ref.index]))
        if type(root) not in _DICT_TYPES:
            raise UnpicklingError(f"weights_only=True refused SETITEMS on {type(root).__qualname__}: "
                                  f"it may only modify a dict the pickle created")
        if type(root) is dict:
            root.update(values)  # what root[key] = value does for each, in order
        else:
            for key, value in values:
                root[key] = value
    if unfinished:
        listed = ", ".join(sorted({repr(o) for o in unfinished}))
        raise FormatError(f"the pickle ends with objects it never finished building: {listed}",
                          record="data.pkl")
    return root
