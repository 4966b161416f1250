"""Worker processes and the cache of their answers, on the Jupyter server's side.

:class:`WorkerPool` keeps up to ``size`` worker processes
(:mod:`nbckpt.labextension.worker`) and sends each request to an idle one.
:meth:`WorkerPool.call` blocks (the server calls it from a thread): it raises
:class:`ViewerError` with a message for people when the file could not be read,
when the worker does not answer within ``time_limit`` seconds (it is killed),
or when the worker dies (a crash, or the kernel's out-of-memory killer); the
next request starts a fresh worker.

:class:`AnswerCache` remembers answers (and errors: a hostile file fails the same
way every time) per request and per state of the files read: a file's
identity is ``(real path, mtime_ns, size, inode)``, so a file changed, replaced
or rewritten in place is read again.

    >>> cache = AnswerCache(entries=2)
    >>> import os, tempfile; path = tempfile.mkstemp()[1]
    >>> cache.get("listing", {"path": path}, [path]) is None
    True
    >>> cache.put("listing", {"path": path}, [path], {"ok": True, "result": 1})
    >>> cache.get("listing", {"path": path}, [path])
    {'ok': True, 'result': 1}
    >>> _ = open(path, "w").write("changed")
    >>> cache.get("listing", {"path": path}, [path]) is None
    True
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

__all__ = ["WorkerPool", "AnswerCache", "ViewerError", "file_identity", "MEMORY_LIMIT", "TIME_LIMIT"]

#: Default heap limit of a worker (bytes).
MEMORY_LIMIT = 4 << 30
#: Default seconds a worker may take to answer one request.
TIME_LIMIT = 60.0


class ViewerError(Exception):
    """A request the viewer could not answer; ``kind`` names the error (``FormatError``,
    ``UnpicklingError``, ``Timeout``, ``WorkerDied``...), the message says what happened."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def file_identity(path: str) -> tuple:
    """What changes when the file at ``path`` (or any file in a folder) changes: real path,
    mtime_ns, size and inode of each."""
    real = os.path.realpath(path)
    if os.path.isdir(real):
        parts = []
        for root, dirs, names in os.walk(real):
            dirs.sort()
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                parts.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        return (real, tuple(parts))
    st = os.stat(real)
    return (real, st.st_mtime_ns, st.st_size, st.st_ino)


class AnswerCache:
    """The last ``entries`` answers (at most ``max_bytes`` of them, as sent by the workers), keyed by
    request and by the identity of the files read."""

    def __init__(self, entries: int = 256, max_bytes: int = 256 << 20) -> None:
        self._entries, self._max_bytes = entries, max_bytes
        self._answers: OrderedDict[tuple, tuple[dict[str, Any], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _key(op: str, args: dict[str, Any], files: list[str]) -> tuple | None:
        try:
            identities = tuple(file_identity(path) for path in files)
        except OSError:
            return None  # a missing file is never cached: it may appear
        return (op, json.dumps(args, sort_keys=True), identities)

    def get(self, op: str, args: dict[str, Any], files: list[str]) -> dict[str, Any] | None:
        key = self._key(op, args, files)
        with self._lock:
            if key is None or key not in self._answers:
                return None
            self._answers.move_to_end(key)
            return self._answers[key][0]

    def put(self, op: str, args: dict[str, Any], files: list[str], answer: dict[str, Any], size: int = 0) -> None:
        """Remember ``answer`` (``size`` bytes as sent; one larger than a quarter of the cache is not kept)."""
        key = self._key(op, args, files)
        if key is None or size > self._max_bytes // 4:
            return
        with self._lock:
            if key in self._answers:
                self._bytes -= self._answers.pop(key)[1]
            self._answers[key] = (answer, size)
            self._bytes += size
            while len(self._answers) > self._entries or self._bytes > self._max_bytes:
                self._bytes -= self._answers.popitem(last=False)[1][1]


class _Worker:
    """One worker process and the bytes read from it so far."""

    def __init__(self, memory_limit: int) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([sys.executable, "-m", "nbckpt.labextension.worker", str(memory_limit)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                        start_new_session=True)
        self._pending = b""

    def ask(self, request: dict[str, Any], time_limit: float) -> tuple[dict[str, Any], int]:
        """Send ``request``; the answer and its size in bytes, or ViewerError (the worker is then killed)."""
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            return self._died()
        deadline = time.monotonic() + time_limit
        stdout = self.process.stdout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.kill()
                    raise ViewerError("Timeout", f"reading took longer than the viewer allows ({time_limit:g} s); "
                                                 f"the reading was stopped. Open the file in a notebook with "
                                                 f"nbckpt.open to read it without a time limit.")
                chunk = os.read(stdout.fileno(), 1 << 20)
                if not chunk:
                    return self._died()
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line), len(line)

    def _died(self) -> Any:
        self.kill()
        code = self.process.returncode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        raise ViewerError("WorkerDied", f"the process reading the file ended ({how}: out of memory, or a crash); "
                                        f"the server is fine, and the next request starts a new one")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class WorkerPool:
    """Up to ``size`` worker processes, each limited to ``memory_limit`` bytes of heap and
    ``time_limit`` seconds per request; answers cached in an :class:`AnswerCache`."""

    def __init__(self, size: int = 2, *, memory_limit: int = MEMORY_LIMIT, time_limit: float = TIME_LIMIT,
                 cache: AnswerCache | None = None) -> None:
        self.memory_limit, self.time_limit = memory_limit, time_limit
        self.cache = cache if cache is not None else AnswerCache()
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(None)  # a slot: a worker is started on first use
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False

    def call(self, op: str, args: dict[str, Any], files: list[str]) -> Any:
        """The result of ``op(**args)`` (reading ``files``) from a worker, or from the cache."""
        answer = self.cache.get(op, args, files)
        if answer is None:
            try:
                answer, size = self._ask({"op": op, "args": args, "files": files})
            except ViewerError as err:
                answer, size = {"ok": False, "error": err.kind, "message": str(err)}, 0
            if answer.get("error") != "Closed":
                self.cache.put(op, args, files, answer, size)
        if not answer["ok"]:
            raise ViewerError(answer["error"], answer["message"])
        return answer["result"]

    def _ask(self, request: dict[str, Any]) -> tuple[dict[str, Any], int]:
        worker = self._idle.get()
        try:
            if self._closed:
                raise ViewerError("Closed", "the viewer is shutting down")
            if worker is None or not worker.alive():
                worker = _Worker(self.memory_limit)
                with self._lock:
                    self._workers.add(worker)
            return worker.ask(request, self.time_limit)
        finally:
            if worker is not None and not worker.alive():
                with self._lock:
                    self._workers.discard(worker)
                worker = None
            self._idle.put(worker)

    def pids(self) -> list[int]:
        """The process ids of the running workers (for tests and logs)."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.alive()]

    def close(self) -> None:
        """Stop every worker (the server calls this when it stops)."""
        self._closed = True
        with self._lock:
            workers, self._workers = list(self._workers), set()
        for worker in workers:
            worker.kill()
