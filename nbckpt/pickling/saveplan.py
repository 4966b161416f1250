"""Check an object before a save and plan its arrays: :class:`SavePlan`.

Everything a save can refuse is refused here, before the first byte is
written: unsupported objects (named by their place, ``obj['opt']['fn']``),
dtypes torch lacks, tuples that contain themselves, nesting deeper than
Python's recursion limit. The arrays found go to the storage planner
(:mod:`.storages`); :class:`~.writer.CheckpointPickler` then writes the pickle.

The walk visits each container once, however often the object refers to it:

    >>> v = [0]
    >>> for _ in range(40):
    ...     v = [v, v]            # 2**40 paths to the bottom, 41 lists
    >>> SavePlan.build(v).repeated
    set()
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..backends import is_cupy_array
from ..format import dtypes as torch_dtypes
from ..meta import MetaArray
from ..sparse import SparseParts, is_sparse, to_torch_parts
from ..text import safe_repr
from .storages import StoragePlanner

__all__ = ["SavePlan", "UNSUPPORTED_HINT"]

UNSUPPORTED_HINT = (
    "nbckpt saves NumPy and CuPy arrays, NumPy scalars, scipy.sparse arrays, "
    "nbckpt.MetaArray, dict, OrderedDict, list, tuple, namedtuple, set, str, bytes, "
    "bytearray, int, float, complex, bool and None"
)


def is_namedtuple(obj) -> bool:
    """Whether ``obj`` is an instance of a ``collections.namedtuple`` class."""
    return isinstance(obj, tuple) and type(obj) is not tuple and hasattr(type(obj), "_fields")


@dataclass
class SavePlan:
    """Everything a save needs, worked out before any byte is written.

    ``build`` walks the object once, visiting each container once however many
    times it is referenced (a list that holds the same list twice, thirty levels
    deep, is 30 visits, not 2**30: the pickle writes the repeats as memo
    references). It rejects unsupported objects with a ``TypeError`` naming
    their place (``obj['opt']['fn']``), turns NumPy scalars into 0-d arrays,
    and plans the storages of all arrays.
    """

    root: object
    planner: StoragePlanner
    scalars: dict[int, np.ndarray] = field(default_factory=dict)
    sparse: dict[int, "SparseParts"] = field(default_factory=dict)
    #: ids of the arrays and NumPy scalars met more than once (the pickle refers to them again)
    repeated: set[int] = field(default_factory=set)

    @classmethod
    def build(cls, obj) -> "SavePlan":
        plan = cls(obj, StoragePlanner())
        try:
            plan._walk(obj, set(), set())
        except RecursionError:
            raise ValueError(
                "the object is nested too deeply to save (Python's recursion limit); "
                "flatten it or raise sys.setrecursionlimit"
            ) from None
        except _Refused as refused:
            raise refused.error() from None
        plan.planner.finish()
        plan.repeated |= plan.planner.repeated
        return plan

    def _walk(self, obj, done: set[int], active: set[int]) -> None:
        """Check ``obj`` and plan its arrays; ``done``: containers already walked,
        ``active``: those on the current path (a tuple met again there contains itself).

        The place of an unsupported object is not formatted on the way down
        (that cost a ``repr`` per item): :class:`_Refused` collects it on the way up.
        """
        t = type(obj)
        if t in _ATOMIC:
            return
        if t is np.ndarray or isinstance(obj, np.ndarray) or is_cupy_array(obj):
            self._add_array(obj)
            return
        if t in _CONTAINERS or is_namedtuple(obj):
            key = id(obj)
            if key in done:
                return  # walked already: the pickle memo writes it again as a reference
            if key in active:
                if t is tuple or is_namedtuple(obj):
                    raise _Refused(ValueError, "cannot save the tuple at ", ": it contains itself")
                return  # a recursive list or dict: the pickle memo handles it
            active.add(key)
            if t is dict or t is OrderedDict:
                self._walk_dict(obj, done, active)
                if t is OrderedDict:
                    for name, value in vars(obj).items():
                        try:
                            self._walk(value, done, active)
                        except _Refused as refused:
                            raise refused.inside(f".{name}")
            elif t is set:
                for item in obj:
                    try:
                        self._walk(item, done, active)
                    except _Refused as refused:
                        raise refused.inside(f"{{{safe_repr(item)}}}")  # bounded: a key may be huge
            else:
                walk = self._walk
                add = self._add_array
                for i, item in enumerate(obj):
                    try:
                        if type(item) is np.ndarray:
                            add(item)
                        elif type(item) not in _ATOMIC:
                            walk(item, done, active)
                    except _Refused as refused:
                        raise refused.inside(f"[{i}]")
            active.discard(key)
            done.add(key)
            return
        if isinstance(obj, np.generic):
            if id(obj) in self.scalars:
                self.repeated.add(id(obj))
            else:
                self.scalars[id(obj)] = scalar = np.asarray(obj)
                self._add_array(scalar)
            return
        if isinstance(obj, np.dtype):
            if torch_dtypes.for_numpy(obj) is None:
                raise _Refused(TypeError, f"cannot save the dtype {obj} at ", ": torch has no such dtype")
            return
        if isinstance(obj, MetaArray):
            if torch_dtypes.for_numpy(obj.dtype) is None:
                raise _Refused(TypeError, "cannot save the meta array at ",
                               f": dtype {obj.dtype} has no torch equivalent")
            return
        if is_sparse(obj):
            if id(obj) not in self.sparse:
                self.sparse[id(obj)] = parts = to_torch_parts(obj)
                for i, array in enumerate(parts.arrays):
                    try:
                        self._add_array(array)
                    except _Refused as refused:
                        raise refused.inside(f"<{parts.layout} part {i}>")
            return
        raise _Refused(TypeError, f"cannot save an object of type {t.__module__}.{t.__qualname__} at ",
                       f": {UNSUPPORTED_HINT}")

    def _walk_dict(self, obj: dict, done: set[int], active: set[int]) -> None:
        walk = self._walk
        add = self._add_array
        for key, value in obj.items():
            if type(key) is not str:
                self._check_key(key)
            try:
                if type(value) is np.ndarray:
                    add(value)
                elif type(value) not in _ATOMIC:
                    walk(value, done, active)
            except _Refused as refused:
                raise refused.inside(f"[{safe_repr(key)}]")

    def _check_key(self, key) -> None:
        t = type(key)
        if key is None or t in (bool, int, float, complex, str, bytes):
            return
        if t is tuple or is_namedtuple(key):
            for item in key:
                self._check_key(item)
            return
        raise _Refused(
            TypeError,
            f"cannot save a dict key of type {t.__module__}.{t.__qualname__} in ",
            ": keys must be str, bytes, numbers, None or tuples of them",
        )

    def _add_array(self, array) -> None:
        try:
            self.planner.add(array)
        except TypeError as err:
            raise _Refused(TypeError, "cannot save the array at ", f": {err}") from None


class _Refused(Exception):
    """An unsupported object met by :meth:`SavePlan._walk`; collects its place on the way up."""

    def __init__(self, kind: type[Exception], before: str, after: str) -> None:
        super().__init__(before, after)
        self.kind, self.before, self.after = kind, before, after
        self.steps: list[str] = []  # innermost first

    def inside(self, step: str) -> "_Refused":
        self.steps.append(step)
        return self

    def error(self) -> Exception:
        return self.kind(f"{self.before}obj{''.join(reversed(self.steps))}{self.after}")


_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})
_CONTAINERS = frozenset({dict, OrderedDict, list, tuple, set})
