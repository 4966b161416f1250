"""Text made from a file's contents, safe to show: bounded, total, and inert in a terminal.

Names, keys and values come from the file, so whoever wrote it chooses them.
Three things go wrong when they are printed as they are:

- control characters (ESC, BEL, CR, backspace, C1 codes, bidi overrides) let the
  file rewrite the user's terminal or hide text: :func:`escape` writes each as
  a visible ``\\x1b`` / ``\\u202e`` escape;
- ``repr`` itself can fail or take forever: ints of more than 4300 digits raise
  ``ValueError``, deep nesting ``RecursionError``, an allowlisted class's
  ``__repr__`` anything: :func:`safe_repr` never raises and stops at ``limit``
  characters;
- huge values: :func:`safe_repr` bounds the work, not only the output.

    >>> escape("w\\x1b[2J\\rok")
    'w\\\\x1b[2J\\\\rok'
    >>> safe_repr(10 ** 5000)[:30]
    '<int of 16610 bits: 0x31e20801'
    >>> safe_repr("x" * 100, limit=10)
    "'xxxxxxxx…"
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, TextIO

__all__ = ["escape", "safe_repr", "EscapingWriter"]

# C0 controls except tab and newline, DEL, C1 controls, and the Unicode format
# characters that reorder or hide text (bidi embeddings/overrides/isolates).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_AND_LINES = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    if code == 0x0A:
        return "\\n"
    if code == 0x0D:
        return "\\r"
    if code == 0x09:
        return "\\t"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, *, newlines: bool = True) -> str:
    """``text`` with every control character written as an escape.

    ``newlines=False`` keeps ``\\n`` and ``\\t`` (for whole messages, whose lines
    are nbckpt's); a name or a key should escape them too (the default), so it
    cannot forge a line of output.
    """
    pattern = _CONTROL_AND_LINES if newlines else _CONTROL
    return pattern.sub(_escaped, text)


def safe_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut at ``limit`` characters; never raises, control characters escaped.

    Containers are written piece by piece and the writing stops at ``limit``, so the
    work is bounded too: a list that holds itself 2**40 times over (through the
    memo) costs ``limit`` steps, not 2**40.

        >>> inner = [1, 2]
        >>> for _ in range(40):
        ...     inner = [inner, inner]
        >>> safe_repr(inner, 30)
        '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[…'
    """
    pieces: list[str] = []
    size = 0
    for piece in _pieces(value, 0, limit):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            break
    text = escape("".join(pieces))
    return text if len(text) <= limit else text[: limit - 1] + "…"


_MAX_REPR_DEPTH = 50


def _pieces(value: Any, depth: int, limit: int) -> Iterator[str]:
    if depth > _MAX_REPR_DEPTH:
        yield "…"
        return
    if isinstance(value, dict):
        plain = type(value) is dict
        yield "{" if plain else f"{type(value).__name__}({{"
        for i, (key, item) in enumerate(dict.items(value)):
            yield ", " if i else ""
            yield from _pieces(key, depth + 1, limit)
            yield ": "
            yield from _pieces(item, depth + 1, limit)
        yield "}" if plain else "})"
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        if isinstance(value, (set, frozenset)) and not value:
            yield f"{type(value).__name__}()"
            return
        opening, closing = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}")}.get(
            type(value), (f"{type(value).__name__}({{", "})") if isinstance(value, (set, frozenset))
            else (f"{type(value).__name__}([", "])"))
        yield opening
        for i, item in enumerate(value):
            yield ", " if i else ""
            yield from _pieces(item, depth + 1, limit)
        yield ",)" if type(value) is tuple and len(value) == 1 else closing
        return
    yield _leaf(value, limit)


def _leaf(value: Any, limit: int) -> str:
    if type(value) is int and value.bit_length() > 4096:
        digits = f"{abs(value):x}"[:16]
        sign = "-" if value < 0 else ""
        return f"<int of {value.bit_length()} bits: {sign}0x{digits}…>"
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        return repr(value[: limit + 1])
    try:
        return repr(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to show>"
    except Exception as err:  # noqa: BLE001 - a value from a file may fail to show in any way
        return f"<{type(value).__name__}: repr failed with {type(err).__name__}>"


class EscapingWriter:
    """A text stream that escapes control characters (not newlines) on the way to ``stream``.

    The CLI writes through one, so nothing it prints can drive the terminal.
    Newlines are kept (messages have lines of their own), so each of ``names`` (the
    command line's arguments: file names may hold a newline or a CR) is escaped
    whole, newlines included, wherever it appears in what is written: a file named
    ``"a\\nOK b.pt"`` cannot forge a line of output, in an error message either.

        >>> import io
        >>> out = io.StringIO()
        >>> EscapingWriter(out).write("a\\x07b\\n")
        4
        >>> out.getvalue()
        'a\\\\x07b\\n'
        >>> out = io.StringIO()
        >>> _ = EscapingWriter(out, names=["x\\nOK y.pt"]).write("error: no such file: x\\nOK y.pt\\n")
        >>> out.getvalue()
        'error: no such file: x\\\\nOK y.pt\\n'
    """

    def __init__(self, stream: TextIO, names: Iterable[str] = ()) -> None:
        self._stream = stream
        # Longest first, so that a name containing another is replaced whole.
        self._names = sorted({n for n in names if isinstance(n, str) and n != escape(n)}, key=len, reverse=True)

    def write(self, text: str) -> int:
        shown = text
        for name in self._names:
            if name in shown:
                shown = shown.replace(name, escape(name))
        self._stream.write(escape(shown, newlines=False))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding...
        return getattr(self._stream, name)

