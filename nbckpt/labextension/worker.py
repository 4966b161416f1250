"""The viewer's worker process: reads checkpoints under memory limits, one request at a time.

Started by :class:`nbckpt.labextension.pool.WorkerPool` as
``python -m nbckpt.labextension.worker MEMORY_LIMIT``; it never runs inside the
Jupyter server, so whatever a file does to it (exhaust memory, take forever,
crash the interpreter) costs the server nothing but this process.

Protocol: one JSON object per line each way on stdin/stdout (the worker's own
``print``\\ s go to stderr). A request is ``{"op": NAME, "args": {...}, "files":
[PATH, ...]}`` with ``NAME`` one of :data:`nbckpt.labextension.reading.OPERATIONS`;
the answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
TYPE, "message": TEXT}``.

Limits, set with ``setrlimit`` before each request:

- ``RLIMIT_DATA`` (the heap and private writable memory, the interpreter's
  own included: Python, NumPy and matplotlib take about 140 MiB) to the memory
  limit: an allocation past it raises ``MemoryError``, answered as an error;
- ``RLIMIT_AS`` (all address space) to the memory limit plus the sizes of the
  request's files plus :data:`ADDRESS_SLACK` (libraries, thread stacks): files
  are mapped read-only, and mapping one must not count as using memory.

Time is bounded by the parent, which kills a worker that does not answer in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import traceback
from typing import Any, BinaryIO

__all__ = ["main", "serve", "set_limits", "ADDRESS_SLACK"]

#: Address space for the interpreter, NumPy, matplotlib and their threads, over the memory limit.
ADDRESS_SLACK = 2 << 30


def set_limits(memory_limit: int, files: list[str]) -> None:
    """Limit this process's heap to ``memory_limit`` bytes and its address space to that plus the
    sizes of ``files`` (which it may map) plus :data:`ADDRESS_SLACK`."""
    mapped = 0
    for path in files:
        try:
            mapped += _size(path)
        except OSError:
            pass  # the request itself reports a missing file
    _set(resource.RLIMIT_DATA, memory_limit)
    _set(resource.RLIMIT_AS, memory_limit + mapped + ADDRESS_SLACK)


def _size(path: str) -> int:
    if os.path.isdir(path):  # a DCP folder: its files
        return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)


def _set(which: int, soft: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def _answer(request: dict[str, Any], memory_limit: int) -> dict[str, Any]:
    from .reading import OPERATIONS  # noqa: PLC0415 - imported under the limits' process, after startup

    op = request.get("op")
    if op not in OPERATIONS:
        return {"ok": False, "error": "ValueError", "message": f"unknown request {op!r}"}
    set_limits(memory_limit, list(request.get("files", [])))
    try:
        return {"ok": True, "result": OPERATIONS[op](**request.get("args", {}))}
    except MemoryError:
        return {"ok": False, "error": "MemoryError",
                "message": f"reading this needs more memory than the viewer allows ({memory_limit >> 20} MiB)"}
    except Exception as err:  # noqa: BLE001 - every failure becomes an answer, the worker lives on
        if not isinstance(err, (ValueError, KeyError, OSError, TypeError, IndexError)):
            traceback.print_exc(file=sys.stderr)
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return {"ok": False, "error": type(err).__name__, "message": str(message)}


def serve(requests: BinaryIO, answers: BinaryIO, memory_limit: int) -> None:
    """Answer the requests read from ``requests`` (one JSON per line) on ``answers`` until end of input."""
    for line in requests:
        try:
            request = json.loads(line)
        except ValueError as err:
            answer: dict[str, Any] = {"ok": False, "error": "ValueError", "message": f"not a JSON request: {err}"}
        else:
            answer = _answer(request, memory_limit)
        try:
            data = json.dumps(answer, allow_nan=False).encode()
        except (TypeError, ValueError) as err:
            data = json.dumps({"ok": False, "error": type(err).__name__,
                               "message": f"the answer could not be sent as JSON: {err}"}).encode()
        answers.write(data + b"\n")
        answers.flush()


def main(argv: list[str] | None = None) -> None:
    """``python -m nbckpt.labextension.worker MEMORY_LIMIT``: serve stdin/stdout."""
    args = sys.argv[1:] if argv is None else argv
    memory_limit = int(args[0])
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # only answers go to the real stdout
    # Loaded before the limits tighten. Without matplotlib only the pictures fail (with their own message).
    with contextlib.suppress(ImportError):
        import matplotlib.figure  # noqa: F401, PLC0415
    from . import reading  # noqa: F401, PLC0415

    serve(sys.stdin.buffer, answers, memory_limit)


if __name__ == "__main__":
    main()
