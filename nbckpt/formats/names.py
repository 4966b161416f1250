"""The one way nbckpt names an entry of a checkpoint: dotted paths.

Every place that shows or looks up an array by name (``nbckpt.open``,
``convert``, ``diff``, the CLI, the widgets) builds the name here, so a name
means the same everywhere. Keys are joined with dots; integer keys (list
items) are written as numbers; other non-string keys by their ``repr``. The
object itself, when it is a single array, is named :data:`ROOT_NAME`.

    >>> dotted_name(("layer1", "weight")), dotted_name(("state", 0, "exp_avg")), dotted_name(())
    ('layer1.weight', 'state.0.exp_avg', '')
    >>> dotted_name((("a", 1),))
    "('a', 1)"

Dotted names are not unique: ``{"a.b": x}`` and ``{"a": {"b": y}}`` both give
``a.b``. A listing must still name every entry apart (a tool that looks entries
up by name would otherwise see one of the two and silently miss the other), so
:func:`unique_names` names the entries whose dotted names collide by their
:func:`exact_name` instead, and refuses the file when even those collide.

    >>> unique_names([("a.b",), ("a", "b"), ("c",)])
    ["['a.b']", "['a']['b']", 'c']
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import FormatError

__all__ = ["dotted_name", "exact_name", "format_key", "unique_names", "ROOT_NAME"]

#: The name of a checkpoint's object when it is one array (not a container).
ROOT_NAME = ""

# str() of an int past this many bits raises ValueError (sys.int_info.str_digits_check_threshold
# digits); such keys are named by a digest.
_DECIMAL_BITS = 4096


def _int_text(key: int) -> str:
    if key.bit_length() <= _DECIMAL_BITS:
        return str(key)
    digest = hashlib.sha256(key.to_bytes((key.bit_length() + 8) // 8, "little", signed=True)).hexdigest()[:24]
    return f"<int key of {key.bit_length()} bits sha256:{digest}>"


#: A tuple or frozenset key whose text would be longer than this is named by a digest instead.
KEY_TEXT_LIMIT = 200
#: A string key longer than this is named by a digest instead (real keys are far shorter).
KEY_STR_LIMIT = 1024
#: A tuple key that costs more than this many items to hash is refused by a listing (real
#: tuple keys hold a handful of items; see :func:`nbckpt.pickling.keys.hash_cost`).
KEY_HASH_LIMIT = 10_000
#: The names of one listing may hold this many characters in all (a file whose paths repeat
#: long keys over many entries is refused rather than listed in gigabytes).
NAMES_LIMIT = 64 << 20
_cache: dict[int, tuple[Any, str]] = {}  # id -> (key, text): the same key names every entry under it


def _leaf_text(key: Any) -> str:
    if type(key) is int:
        return _int_text(key)
    try:
        return repr(key)
    except Exception:  # noqa: BLE001 - an allowlisted class's __repr__ may fail in any way
        return f"<{type(key).__name__} key that cannot be written>"


def _key_repr(key: Any) -> str:
    """``repr(key)``, total and bounded: huge ints in hex; big or deep tuples by a digest.

    A pickle chooses its keys: a tuple nested 900 deep (``repr`` recurses), or forty
    levels of ``t = (t, t)`` through the memo (a repr of 2**40 items) cost nothing to
    write and would cost the listing everything, once per entry under the key. Tuples
    and frozensets are walked iteratively, each distinct one once; one whose text would
    pass :data:`KEY_TEXT_LIMIT` characters is named ``<tuple key sha256:…>`` by a digest
    of its contents (equal keys get equal names).
    """
    if type(key) not in (tuple, frozenset):
        return _leaf_text(key)
    cached = _cache.get(id(key))
    if cached is not None and cached[0] is key:
        return cached[1]
    done: dict[int, tuple[str | None, bytes]] = {}  # id -> (text or None when too long, digest)
    stack: list[tuple[Any, bool]] = [(key, False)]
    while stack:
        item, expanded = stack.pop()
        if id(item) in done:
            continue
        if type(item) not in (tuple, frozenset):
            text = _leaf_text(item)
            done[id(item)] = (text if len(text) <= KEY_TEXT_LIMIT else None,
                              hashlib.sha256(f"{type(item).__name__}:{text}".encode("utf-8", "replace")).digest())
            continue
        if not expanded:
            stack.append((item, True))
            stack.extend((child, False) for child in item if id(child) not in done)
            continue
        parts = [done[id(child)] for child in item]
        if type(item) is frozenset:  # the same set, whatever order its items iterate in
            parts.sort(key=lambda part: part[1])
        digest = hashlib.sha256(type(item).__name__.encode() + b"".join(d for _, d in parts)).digest()
        texts = [t for t, _ in parts]
        text = None
        if None not in texts and sum(len(t) + 2 for t in texts) <= KEY_TEXT_LIMIT:  # type: ignore[arg-type]
            inner = ", ".join(texts)  # type: ignore[arg-type]
            if type(item) is frozenset:
                text = f"frozenset({{{inner}}})" if texts else "frozenset()"
            else:
                text = f"({inner},)" if len(texts) == 1 else f"({inner})"
        done[id(item)] = (text, digest)
    text, digest = done[id(key)]
    result = text if text is not None else f"<{type(key).__name__} key sha256:{digest.hex()[:24]}>"
    if len(_cache) > 256:
        _cache.clear()
    _cache[id(key)] = (key, result)
    return result


def _long_str(key: str) -> str:
    """A key of more than :data:`KEY_STR_LIMIT` characters, named by its length and a digest."""
    cached = _cache.get(id(key))
    if cached is not None and cached[0] is key:
        return cached[1]
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    text = f"<str key of {len(key)} characters sha256:{digest}>"
    if len(_cache) > 256:
        _cache.clear()
    _cache[id(key)] = (key, text)
    return text


def format_key(key: Any) -> str:
    """One key of a path, as it appears in a dotted name (never raises; bounded in length).

    A key longer than :data:`KEY_STR_LIMIT` characters is named by a digest: every entry
    under it repeats its name, so a 4 MB key over 300 arrays would make 1.2 GB of names.
    """
    if isinstance(key, str):
        return key if len(key) <= KEY_STR_LIMIT else _long_str(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return _int_text(int(key))
    return _key_repr(key)


def dotted_name(path: tuple) -> str:
    """The dotted name of the entry at ``path`` (a tuple of keys); ``""`` for the root."""
    return ".".join(format_key(k) for k in path) if path else ROOT_NAME


def exact_name(path: tuple) -> str:
    """A name for ``path`` that no other path shares: each key as Python writes it.

        >>> exact_name(("a.b",)), exact_name(("a", "b")), exact_name(("layers", 0))
        ("['a.b']", "['a']['b']", "['layers'][0]")
    """
    return "".join(f"[{_key_repr(key)}]" for key in path)


def unique_names(paths: list[tuple]) -> list[str]:
    """One name per path: its dotted name, or its :func:`exact_name` where dotted names collide.

    FormatError when two different paths still share a name (keys whose ``repr`` is the
    same, such as two NaN keys of one dict): a listing cannot name them apart.
    """
    from ..pickling.keys import hash_cost

    costs: dict[int, int] = {}
    for path in paths:
        for key in path:
            if (type(key) is tuple or type(key) is frozenset) and id(key) not in costs:
                costs[id(key)] = cost = hash_cost(key)
                if cost > KEY_HASH_LIMIT:
                    raise FormatError(
                        f"a key of this checkpoint ({_key_repr(key)}) costs {cost} steps to hash, and a listing "
                        f"hashes it once per entry under it (paths are looked up by their keys): nbckpt.open "
                        f"refuses keys costing more than {KEY_HASH_LIMIT}. Load it with nbckpt.load instead.")
    dotted = []
    total = 0
    for path in paths:
        name = dotted_name(path)
        total += len(name)
        if total > NAMES_LIMIT:
            raise FormatError(
                f"the names of this checkpoint's entries would take more than {NAMES_LIMIT} characters (its "
                f"paths repeat long keys over many entries): nbckpt.open refuses to list it. Load it with "
                f"nbckpt.load instead.")
        dotted.append(name)
    count: dict[str, int] = {}
    for name in dotted:
        count[name] = count.get(name, 0) + 1
    names = [name if count[name] == 1 else exact_name(path) for name, path in zip(dotted, paths)]
    if len(set(names)) != len(names):
        seen: set[str] = set()
        twice = next(name for name in names if name in seen or seen.add(name))  # type: ignore[func-returns-value]
        shown = twice if len(twice) <= 200 else twice[:200] + "…"
        raise FormatError(
            f"two entries of the checkpoint have the same name, {shown!r} (keys that print alike, such as "
            f"NaN keys): nbckpt.open cannot list them apart. Load the file with nbckpt.load instead.")
    return names

