"""Bound the work of hashing keys a pickle chooses (dict keys, set and frozenset items).

A pickle picks its dict keys, and hashing is not free:

- CPython hashes a tuple by hashing its items, recursively, in C, with no stack
  check and no cache: 300,000 nested tuples crash the interpreter, and 40
  levels of ``t = (t, t)`` (a "billion laughs" of 40 memo entries) take 2**40
  steps;
- ints (and floats, complex numbers, tuples of them) have hashes anyone can
  collide: ``i * (2**61 - 1)`` all hash to 0, and 80,000 such keys make building
  one dict take minutes (each insertion compares with every earlier key).

A :class:`KeyGuard` (one per load, ``Rebuilder.keys``) is shown every key
before it is hashed: it refuses a key nested deeper than :data:`MAX_DEPTH`, stops
once the tuple items walked over the whole load pass :data:`MAX_WORK`, and
refuses more than :data:`MAX_SAME_HASH` keys sharing one hash value. Strings
and bytes — every key of a state_dict — are hashed with a per-process random
seed and cost nothing here.

    >>> guard = KeyGuard()
    >>> guard.check((1, (2, 3)))
    >>> try:
    ...     for i in range(MAX_SAME_HASH + 1):
    ...         guard.check(i * (2**61 - 1))
    ... except FormatError as err:
    ...     print(str(err)[:57])
    more than 64 keys of this pickle share one hash value (0)
"""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import FormatError

__all__ = ["KeyGuard", "MAX_DEPTH", "MAX_WORK", "MAX_SAME_HASH", "hash_cost"]

#: Deepest nesting of tuples/frozensets that may be hashed.
MAX_DEPTH = 1000
#: Tuple/frozenset items walked to check keys, over one load.
MAX_WORK = 1 << 22
#: Keys of one load that may share one hash value.
MAX_SAME_HASH = 64


def hash_cost(key: Any) -> int:
    """The tuple/frozenset items hashing ``key`` visits (repeats counted), computed in linear time.

    CPython caches no tuple hash: every dict that uses ``key`` (or a path holding it)
    pays this again. ``t = (t, t)`` eighteen times costs 2**19 per hash.

        >>> t = (1, 2)
        >>> for _ in range(18):
        ...     t = (t, t)
        >>> hash_cost(t), hash_cost("any string")
        (1048574, 0)
    """
    if type(key) is not tuple and type(key) is not frozenset:
        return 0
    guard = KeyGuard()
    guard._walk(key, limit=False)
    return guard.work


class KeyGuard:
    """Checks each key before a dict or set hashes it (see the module doc)."""

    __slots__ = ("work", "_hashes")

    def __init__(self) -> None:
        self.work = 0
        self._hashes: dict[int, int] = {}

    def check(self, key: Any) -> None:
        """FormatError if hashing ``key`` would be too deep, too long, or the 65th collision."""
        kind = type(key)
        if kind is str or kind is bytes:
            return
        if kind is tuple or kind is frozenset:
            self._walk(key)
        try:
            value = hash(key)
        except TypeError:
            return  # unhashable: the dict or set refuses it (an error the caller reports)
        seen = self._hashes.get(value, 0) + 1
        self._hashes[value] = seen
        if seen > MAX_SAME_HASH:
            raise FormatError(
                f"more than {MAX_SAME_HASH} keys of this pickle share one hash value ({value}): a "
                f"hash-collision attack, which would make building the dict or set take quadratic time",
                record="data.pkl")

    def check_all(self, keys: Iterable[Any]) -> list:
        """:meth:`check` each of ``keys``; returns them as a list."""
        keys = list(keys)
        for key in keys:
            self.check(key)
        return keys

    def _walk(self, root: Any, limit: bool = True) -> None:
        """Add what hashing ``root`` costs (its items counted with repeats) to the work done.

        The cost is computed on the DAG, each distinct tuple once (memoised by id), so
        ``t = (t, t)`` forty times over costs forty steps to *measure* 2**40 to hash.
        """
        size: dict[int, int] = {}  # id -> items hashing it visits (with repeats)
        stack: list[tuple[Any, bool, int]] = [(root, False, 1)]
        while stack:
            item, done, depth = stack.pop()
            key = id(item)
            if done:
                inner = [c for c in item if type(c) is tuple or type(c) is frozenset]
                size[key] = len(item) + sum(size[id(c)] for c in inner)
                continue
            if key in size:
                continue
            if limit and depth > MAX_DEPTH:  # the path down here is longer than any hash may recurse
                raise FormatError(f"a key nests tuples more than {MAX_DEPTH} levels deep", record="data.pkl")
            stack.append((item, True, depth))
            stack.extend((c, False, depth + 1) for c in item
                         if (type(c) is tuple or type(c) is frozenset) and id(c) not in size)
        self.work += size.get(id(root), 0)
        if limit and self.work > MAX_WORK:
            raise FormatError(
                f"hashing this pickle's keys would visit more than {MAX_WORK} tuple items (a key "
                f"repeats the same tuples many times over): refused", record="data.pkl")
