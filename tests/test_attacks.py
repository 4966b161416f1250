"""The hostile corpus (tests/data/attacks): every file through every entry point, in subprocesses.

Each file of ``tests/data/attacks`` (see its README.md and build.py: torch zip,
legacy stream and tar files, safetensors files, and sharded indexes, each in a
folder of its own with its shards) goes through ``nbckpt.load`` (default ``weights_only=True``; and ``mmap=True`` for
zip files), ``nbckpt.open`` (listing, then reading every array),
``nbckpt.scan``, ``nbckpt.verify``, ``nbckpt.diff`` (the file with itself),
``nbckpt.convert`` (to .npz and .safetensors, ``lossy=True``), every command of
the ``nbckpt`` CLI (``ls``, ``ls --json``, ``info``, ``show`` of an array and of
a value, ``verify``, ``diff``, ``convert``), ``%ckpt load`` in a real IPython
shell, and the notebook previews (``ArrayPreview`` of the arrays, the browser's
value previews). They run in worker subprocesses limited to 1.5 GiB of address
space (``RLIMIT_AS``), many files per worker, in a canary folder of this run's
own; a worker that dies (a crash) or hangs is restarted after the file that
killed it, which is reported.

For every file and entry point the outcome must be what the manifest says: an
nbckpt error (a ``CheckpointError``, of the class named where one is), or —
only where the manifest allows it — a load to the expected value. Anything
else fails: another exception type (``MemoryError`` included), a crash, a
hang, more than 500 MB of peak RSS, a canary file created, the canary module
imported, or nbckpt's safe-globals list widened. The CLI must exit 0, 1 or 2
with a typed failure and print no control character; ``%ckpt load`` must raise
nothing but ``UsageError`` and never rebind ``np``, builtins or dunder names;
``diff`` of a file with itself must say "identical"; ``convert`` must write no
npz entry name that leaves its folder. Allocation bombs are also
loaded in this process under ``tracemalloc`` (when the subprocess showed it is
safe to), to check that nothing big is allocated before nbckpt refuses.

Known nbckpt bugs are strict xfails (``KNOWN_BUGS``): the test asserts the
correct behaviour.

Run this file as a script with ``--worker`` to get the worker (it reads jobs
as JSON on stdin and prints one ``@@RESULT`` line per job).
"""

from __future__ import annotations

import gc
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CORPUS = TESTS / "data" / "attacks"
AS_LIMIT = 1536 << 20  # bytes of address space for a worker
RSS_LIMIT_MB = 500
TRACED_LIMIT_MB = 256  # Python/NumPy allocations traced while loading any one file
BOMB_TRACED_LIMIT_MB = 32  # ... while loading an allocation bomb
JOB_TIMEOUT_S = 20  # one file in one mode
WORKERS = 2
MODES = ("load", "mmap", "open", "scan", "verify", "diff", "convert", "cli", "magic", "preview")
#: The entry points beyond load/open/scan/verify: a typed error or a correct result.
TOOL_MODES = ("diff", "convert", "cli", "magic", "preview")
# What a terminal would act on (tab and newline excepted).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

#: This run's canary folder: workers run in it, and payloads write (relative) canaries there.
CANARY_DIR: list[Path] = []


def canary_dir() -> Path:
    if not CANARY_DIR:
        CANARY_DIR.append(Path(tempfile.mkdtemp(prefix="nbckpt-canaries-")))
    return CANARY_DIR[0]


def _load_build():
    spec = importlib.util.spec_from_file_location("nbckpt_attack_corpus", CORPUS / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


build = _load_build()
MANIFEST: list[dict] = json.loads((CORPUS / "manifest.json").read_text())


def _has_verify() -> bool:
    import nbckpt

    return hasattr(nbckpt, "verify")


HAS_VERIFY = _has_verify()


def _modes(entry: dict) -> tuple[str, ...]:
    modes = MODES if entry["kind"] == "zip" else tuple(m for m in MODES if m != "mmap")
    if not _tools_run(entry):
        modes = tuple(m for m in modes if m not in TOOL_MODES)
    return modes if HAS_VERIFY else tuple(m for m in modes if m != "verify")


def _tools_run(entry: dict) -> bool:
    """Whether the tools (diff, convert, CLI, magic, previews) get this file.

    Every file that loads (their code runs only on what was read), every file of the
    round-two group (written against the tools), and every tenth other file (which
    the tools must refuse as load does); all of them would take minutes more.
    """
    return (entry["load"] != "error" or entry["group"].startswith("Round two")
            or MANIFEST.index(entry) % 10 == 0)


def _stem(file: str) -> str:
    """The case's name: the file's without its suffix, or the folder of a sharded case."""
    return file.split("/", 1)[0] if "/" in file else file.rsplit(".", 1)[0]


# ---------------------------------------------------------------------------------------
# Known nbckpt bugs: each test asserts the correct behaviour and is expected to fail.
# Keyed by (file, mode); mode "*" means every mode.
# ---------------------------------------------------------------------------------------

KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _bug(files: list[str], modes: tuple[str, ...] | str, reason: str) -> None:
    for file in files:
        for mode in ((modes,) if isinstance(modes, str) else modes):
            KNOWN_BUGS[(file, mode)] = "BUG: " + reason


def _known_bug(file: str, mode: str) -> str | None:
    return KNOWN_BUGS.get((file, mode)) or KNOWN_BUGS.get((file, "*"))


# ---------------------------------------------------------------------------------------
# The worker (runs in a subprocess)
# ---------------------------------------------------------------------------------------


class _Timeout(BaseException):
    pass


STACK_LIMIT = 8 << 20


def _worker() -> int:
    import resource
    import signal

    # A fixed 8 MiB C stack, so that stack overflows reproduce on any machine; it
    # applies to the main thread from exec on, hence the re-exec. No core files.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != STACK_LIMIT and (hard == resource.RLIM_INFINITY or hard >= STACK_LIMIT):
        resource.setrlimit(resource.RLIMIT_STACK, (STACK_LIMIT, hard))
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), "--worker"])
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    import numpy  # noqa: F401  (imported before timing the first job)

    import nbckpt

    jobs = json.loads(sys.stdin.read())
    if any(mode == "preview" for _, mode in jobs):  # matplotlib's first import is no job's time
        import matplotlib.pyplot  # noqa: F401

    def on_alarm(signum, frame):
        raise _Timeout(f"more than {JOB_TIMEOUT_S} s")

    signal.signal(signal.SIGALRM, on_alarm)
    out = sys.__stdout__
    for file, mode in jobs:
        print("@@START " + json.dumps([file, mode]), file=out, flush=True)
        result = _run_job(nbckpt, CORPUS / file, mode, signal)
        result["maxrss_mb"] = _peak_rss_mb()
        print("@@RESULT " + json.dumps([file, mode, result]), file=out, flush=True)
        if result["maxrss_mb"] >= RSS_LIMIT_MB:
            # The peak cannot be reset: stop, so that the next job gets a fresh worker
            # and its own peak is measured.
            return 3
    return 0


def _peak_rss_mb() -> float:
    """This process's own peak resident set (``VmHWM``), in MiB.

    Not ``ru_maxrss``: Linux carries that over exec from the process that forked us,
    so a worker started by a 1 GB pytest would report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _run_job(nbckpt, path: Path, mode: str, signal) -> dict:
    canary_module = build.CANARY_MODULE
    had_module = canary_module in sys.modules
    result: dict = {}
    value = None
    sys.stdout = io.StringIO()  # a payload that prints must not corrupt the protocol
    tracemalloc.start()
    start = time.perf_counter()
    signal.alarm(JOB_TIMEOUT_S * (3 if mode in ("cli", "preview") else 1))  # cli: seven commands
    try:
        if path.name == "__segfault__":  # the harness's self-test
            import ctypes

            ctypes.string_at(0)
        if mode == "load":
            value = nbckpt.load(str(path))
        elif mode == "mmap":
            value = nbckpt.load(str(path), mmap=True)
        elif mode == "open":
            with nbckpt.open(str(path)) as archive:
                value = [archive[r.path] for r in archive.records]
                result["records"] = len(value)
        elif mode == "scan":
            value = [[g.name, g.allowed] for g in nbckpt.scan(str(path))]
            result["globals"] = value
        elif mode == "verify":
            value = nbckpt.verify(str(path))
            result["verify_ok"] = bool(value.ok)
            result["problems"] = [str(p)[:200] for p in value.problems[:5]]
        elif mode == "diff":
            result["identical"] = nbckpt.diff(str(path), str(path)).identical
        elif mode == "convert":
            result.update(_convert_job(nbckpt, path))
        elif mode == "cli":
            result.update(_cli_job(path))
        elif mode == "magic":
            result.update(_magic_job(path))
        elif mode == "preview":
            result.update(_preview_job(nbckpt, path))
        result["outcome"] = "ok"
    except _Timeout as err:
        result.update(outcome="timeout", message=str(err))
    except BaseException as err:  # noqa: BLE001 - everything is reported, nothing escapes
        result.update(
            outcome="error",
            type=f"{type(err).__module__}.{type(err).__qualname__}",
            mro=[c.__name__ for c in type(err).__mro__],
            checkpoint_error=isinstance(err, nbckpt.CheckpointError),
            message=str(err)[:400],
        )
    finally:
        signal.alarm(0)
        result["seconds"] = round(time.perf_counter() - start, 3)
        result["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        sys.stdout = sys.__stdout__
    if result["outcome"] == "ok" and mode in ("load", "mmap"):
        try:
            result["summary"] = json.loads(json.dumps(build.summarize(value)))
        except BaseException as err:  # noqa: BLE001
            result["summary_error"] = f"{type(err).__name__}: {err}"[:300]
    del value
    if result["seconds"] > 0.2:
        gc.collect()
    result["canary_file"] = os.path.exists(build.canary(_stem(os.path.relpath(path, CORPUS))))
    result["canary_module"] = (not had_module) and canary_module in sys.modules
    result["safe_globals"] = nbckpt.get_safe_globals_names()
    if result["safe_globals"]:
        nbckpt.clear_safe_globals()
    return result


def _convert_job(nbckpt, path: Path) -> dict:
    with tempfile.TemporaryDirectory(dir=".") as out:
        npz = Path(out) / "x.npz"
        nbckpt.convert(str(path), str(npz), lossy=True)
        with zipfile.ZipFile(npz) as z:
            names = z.namelist()
        nbckpt.convert(str(path), str(Path(out) / "x.safetensors"), lossy=True)
    unsafe = [n for n in names if n.startswith("/") or "\\" in n or ".." in n.split("/")]
    return {"unsafe_entries": unsafe}


def _cli_job(path: Path) -> dict:
    """Every CLI command on the file, in process; what failed untyped, and any control character printed."""
    from nbckpt import CheckpointError, cli

    untyped: list[str] = []
    original = cli._message

    def recording(err, args):  # every failure of a command passes here
        if not isinstance(err, (cli.CommandError, CheckpointError)):
            untyped.append(f"{type(err).__name__}: {str(err)[:200]}")
        return original(err, args)

    cli._message = recording
    printed: list[str] = []
    codes: dict[str, int] = {}

    def run(*argv: str) -> int:
        saved = sys.stdout, sys.stderr
        out = sys.stdout = io.StringIO()
        err = sys.stderr = io.StringIO()
        try:
            codes[" ".join(argv[:2])] = code = cli.main(list(argv))
        finally:
            sys.stdout, sys.stderr = saved
        printed.append(out.getvalue() + err.getvalue())
        return code

    try:
        file = str(path)
        names: list[str] = []
        if run("ls", file, "--json") == 0:
            listing = json.loads(printed[-1])
            names = [a["name"] for a in listing["arrays"][:1]] + list(listing["values"])[:1]
        run("ls", file)
        run("info", file)
        for name in names:
            run("show", file, name)
        run("verify", file)
        run("diff", file, file)
        with tempfile.TemporaryDirectory(dir=".") as out:
            run("convert", file, str(Path(out) / "x.npz"), "--lossy")
    finally:
        cli._message = original
    bad = sorted({repr(c) for text in printed for c in _CONTROL.findall(text)})
    # Names in the corpus that try to forge a line hold "\nOK": no printed line may start with it.
    forged = sorted({line for text in printed for line in text.splitlines() if line.startswith("OK")})
    return {"untyped": untyped, "control_chars": bad, "codes": codes, "forged": forged}


_SHELL: list = []


def _shell():
    if not _SHELL:
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        shell = InteractiveShell.instance(config=config)
        shell.run_line_magic("load_ext", "nbckpt")
        _SHELL.append(shell)
    return _SHELL[0]


def _magic_job(path: Path) -> dict:
    """``%ckpt load FILE`` in a real shell: only UsageError may escape; nothing protected is rebound."""
    import builtins

    from IPython.core.error import UsageError

    shell = _shell()
    shell.reset(new_session=False)
    marker = object()
    shell.push({"np": marker})
    before = shell.user_ns.get("__builtins__")
    result: dict = {}
    try:
        shell.run_line_magic("ckpt", f"load {path}")
        result["magic"] = "loaded"
    except UsageError as err:
        result["magic"] = f"UsageError: {str(err)[:200]}"
    ns = shell.user_ns
    result["rebound"] = [name for name, ok in (
        ("np", ns.get("np") is marker), ("__builtins__", ns.get("__builtins__") is before),
        ("print", ns.get("print", builtins.print) is builtins.print),
        ("get_ipython", "get_ipython" not in ns or callable(ns["get_ipython"]))) if not ok]
    shell.reset(new_session=False)
    return result


def _preview_job(nbckpt, path: Path) -> dict:
    """The notebook's previews: ArrayPreview of the first arrays, the browser's value previews."""
    from nbckpt.jupyter import listing
    from nbckpt.jupyter.preview import ArrayPreview

    shown = 0
    with nbckpt.open(str(path)) as archive:
        for record in archive.records[:2]:
            ArrayPreview(archive[record.path], name=record.name)
            shown += 1
        for value in list(archive.values.values())[:8]:
            listing.value_preview(value, 2000)
            listing.value_text(value)
            shown += 1
    return {"shown": shown}


# ---------------------------------------------------------------------------------------
# Running the workers (from the test process)
# ---------------------------------------------------------------------------------------


def _worker_env() -> dict:
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"  # BLAS threads reserve address space
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("PYTHONSTARTUP", None)
    env["IPYTHONDIR"] = str(canary_dir() / ".ipython")
    env["MPLBACKEND"] = "Agg"
    return env


def run_jobs(jobs: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """Run ``jobs`` in worker subprocesses; a crash or hang is the result of the job it hit."""
    results: dict[tuple[str, str], dict] = {}
    remaining = list(jobs)
    while remaining:
        started, done, returncode, stderr = _run_worker(remaining)
        results.update(done)
        if len(done) == len(remaining):
            break
        if started is None:
            raise RuntimeError(f"worker failed before its first job (rc {returncode}): {stderr[-2000:]}")
        if started in done:  # the worker stopped after a job that used too much memory
            remaining = [job for job in remaining if job not in results]
            continue
        outcome = "hang" if returncode is None else "crash"
        results[started] = {"outcome": outcome, "returncode": returncode, "stderr": stderr[-1500:],
                            "maxrss_mb": 0.0, "traced_peak_mb": 0.0}
        index = remaining.index(started)
        remaining = [job for job in remaining[index + 1:] if job not in results]
    return results


def _run_worker(jobs):
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_worker_env(), cwd=str(canary_dir()), text=True,
    )
    done: dict = {}
    state = {"started": None, "last": time.monotonic()}
    err_chunks: list[str] = []
    err_reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    err_reader.start()
    proc.stdin.write(json.dumps(jobs))
    proc.stdin.close()

    def watchdog():
        # A hang in C code is not interrupted by the worker's alarm: kill it, 30 s after the
        # alarm of the job that runs would have fired (the CLI and previews get three times as long).
        while proc.poll() is None:
            started = state["started"]
            limit = JOB_TIMEOUT_S * (3 if started and started[1] in ("cli", "preview") else 1) + 30
            if time.monotonic() - state["last"] > limit:
                proc.kill()
                state["killed"] = True
                return
            time.sleep(0.5)

    threading.Thread(target=watchdog, daemon=True).start()
    for line in proc.stdout:
        state["last"] = time.monotonic()
        if line.startswith("@@START "):
            state["started"] = tuple(json.loads(line[8:]))
        elif line.startswith("@@RESULT "):
            file, mode, result = json.loads(line[9:])
            done[(file, mode)] = result
    returncode = proc.wait()
    err_reader.join(timeout=5)
    if state.get("killed"):
        returncode = None
    return state["started"], done, returncode, "".join(err_chunks)


def run_parallel(jobs: list[tuple[str, str]], workers: int = WORKERS) -> dict:
    # Interleave so that each worker gets a share of the slow files.
    shares = [jobs[i::workers] for i in range(workers)]
    results: dict = {}
    errors: list[BaseException] = []

    def run(share):
        try:
            results.update(run_jobs(share))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run, args=(share,)) for share in shares if share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


ALL_JOBS = [(e["file"], mode) for e in MANIFEST for mode in _modes(e)]


@pytest.fixture(scope="module", autouse=True)
def fresh_canary_dir():
    """This run's own canary folder, created here and removed after the module's tests."""
    CANARY_DIR.clear()
    folder = canary_dir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    CANARY_DIR.clear()


def _selected_jobs(session) -> list[tuple[str, str]]:
    """The jobs of the corpus tests pytest selected (all of them, unless -k narrowed the run)."""
    wanted = set()
    for item in session.items:
        if getattr(item, "module", None) is not sys.modules[__name__]:
            continue  # other modules have parameters named "entry" too
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "entry" in params and "mode" in params:
            wanted.add((params["entry"]["file"], params["mode"]))
        elif "entry" in params:
            wanted.add((params["entry"]["file"], "load"))
    return [job for job in ALL_JOBS if job in wanted] or ALL_JOBS


@pytest.fixture(scope="module")
def results(request, fresh_canary_dir):
    start = time.perf_counter()
    jobs = _selected_jobs(request.session)
    found = run_parallel(jobs)
    found["__all__"] = len(jobs) == len(ALL_JOBS)
    found["__seconds__"] = time.perf_counter() - start
    found["__canaries__"] = sorted(p.name for p in fresh_canary_dir.iterdir() if p.name != ".ipython")
    return found


# ---------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------


def check_result(entry: dict, mode: str, r: dict) -> None:
    """Assert that ``r`` (a worker result) is what ``entry`` (the manifest) allows."""
    file = entry["file"]
    where = f"{file} [{mode}]: {entry['attack']}"
    assert r["outcome"] not in ("crash", "hang", "timeout"), (
        f"{where}: the worker {r['outcome']}ed (rc {r.get('returncode')}): {r.get('stderr', r.get('message', ''))}")
    assert not r["canary_file"], f"{where}: the payload ran: {build.canary(_stem(file))} exists"
    assert not r["canary_module"], f"{where}: the payload imported {build.CANARY_MODULE!r}"
    assert not r["safe_globals"], f"{where}: the file widened the safe-globals list: {r['safe_globals']}"
    assert r["maxrss_mb"] < RSS_LIMIT_MB, f"{where}: peak RSS {r['maxrss_mb']:.0f} MB"
    limit = BOMB_TRACED_LIMIT_MB if entry["bomb"] and mode not in TOOL_MODES else TRACED_LIMIT_MB
    assert r["traced_peak_mb"] < limit, f"{where}: allocated {r['traced_peak_mb']:.0f} MB (traced peak)"
    if mode in TOOL_MODES:
        _check_tool(entry, mode, r, where)
        return
    expect = {"load": entry["load"], "mmap": entry["load"], "open": entry["open"], "scan": entry["scan"],
              "verify": entry.get("verify")}[mode]
    if mode == "verify":
        # verify reports problems (or raises an nbckpt error); it never loads anything.
        if r["outcome"] == "error":
            assert r["checkpoint_error"], f"{where}: raised {r['type']} (not an nbckpt error): {r['message']}"
            assert expect in ("problems", "either"), f"{where}: verify raised {r['type']}: {r['message']}"
            return
        assert r["outcome"] == "ok", r
        if expect == "ok":
            assert r["verify_ok"], f"{where}: verify reported problems in a good file: {r['problems']}"
        elif expect == "problems":
            assert not r["verify_ok"], f"{where}: verify found no problem"
        return
    if r["outcome"] == "error":
        assert r["checkpoint_error"], (
            f"{where}: raised {r['type']} (not an nbckpt error): {r['message']}")
        assert expect in ("error", "ok_or_error"), f"{where}: must load, raised {r['type']}: {r['message']}"
        if mode in ("load", "mmap") and expect == "error" and entry["error"] != "CheckpointError":
            assert entry["error"] in r["mro"], (
                f"{where}: expected {entry['error']}, got {r['type']}: {r['message']}")
        return
    assert r["outcome"] == "ok", r
    assert expect in ("ok", "ok_or_error"), f"{where}: must be refused, but {mode} succeeded"
    if mode in ("load", "mmap") and entry["value"] is not None:
        assert "summary_error" not in r, f"{where}: the loaded value cannot be described: {r['summary_error']}"
        assert r["summary"] == entry["value"], f"{where}: loaded a wrong value"
    if mode == "scan":
        refused = {name for name, allowed in r["globals"] if not allowed}
        missing = [g for g in entry["scan_flags"] if g not in refused]
        assert not missing, f"{where}: scan did not report {missing} as refused (it found {r['globals']})"


def _check_tool(entry: dict, mode: str, r: dict, where: str) -> None:
    """diff, convert, the CLI, %ckpt load, the previews: a typed error or a correct result."""
    if r["outcome"] == "error":
        assert r["checkpoint_error"], f"{where}: raised {r['type']} (not an nbckpt error): {r['message']}"
        assert not entry["group"].startswith("Controls"), f"{where}: failed on a good file: {r['message']}"
        return
    assert r["outcome"] == "ok", r
    if mode == "diff":
        assert r["identical"], f"{where}: diff of the file with itself found differences"
    elif mode == "convert":
        assert not r["unsafe_entries"], f"{where}: wrote npz entries outside the folder: {r['unsafe_entries']}"
    elif mode == "cli":
        assert not r["untyped"], f"{where}: a command failed with an untyped error: {r['untyped']}"
        assert not r["control_chars"], f"{where}: printed control characters {r['control_chars']}"
        assert not r.get("forged"), f"{where}: a name from the file printed a line of its own: {r['forged']}"
        assert set(r["codes"].values()) <= {0, 1, 2}, r["codes"]
    elif mode == "magic":
        assert not r["rebound"], f"{where}: %ckpt load rebound {r['rebound']}"
        if entry["load"] == "ok":
            assert r["magic"] == "loaded" or "not Python names" in r["magic"] or "not a dict" in r["magic"], (
                f"{where}: %ckpt load failed on a file that loads: {r['magic']}")


def _params():
    params = []
    for entry in MANIFEST:
        for mode in _modes(entry):
            reason = _known_bug(entry["file"], mode)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(entry, mode, marks=marks, id=f"{_stem(entry['file'])}-{mode}"))
    return params


@pytest.mark.parametrize("entry, mode", _params())
def test_corpus_file(results, entry, mode):
    check_result(entry, mode, results[(entry["file"], mode)])


def test_no_canary_anywhere(results):
    """Nothing appeared in this run's canary folder (only this run's workers ran there)."""
    leftovers = [name for name in results["__canaries__"] if not name.startswith("tmp")]
    assert not leftovers, f"payloads ran: {leftovers}"


def test_corpus_is_complete_and_reproducible(tmp_path):
    """build.py regenerates exactly the committed files, and the README lists each one.

    The files torch writes (``ok_torch*``) are compared by name only: another torch
    version may write other bytes.
    """
    assert len(MANIFEST) >= 45
    entries = build.main(tmp_path)

    def comparable(items):
        return [e for e in items if not e["file"].startswith("ok_torch")]

    assert comparable(json.loads((tmp_path / "manifest.json").read_text())) == comparable(MANIFEST)
    readme = (CORPUS / "README.md").read_text()
    for entry in comparable(entries):
        assert (tmp_path / entry["file"]).read_bytes() == (CORPUS / entry["file"]).read_bytes(), entry["file"]
    for entry in MANIFEST:
        assert f"| `{entry['file']}` |" in readme, entry["file"]
    committed = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*")
                 if p.is_file() and p.name not in ("build.py", "README.md", "manifest.json")
                 and "__pycache__" not in p.parts}
    folders = {e["file"].rpartition("/")[0] for e in MANIFEST}
    assert committed == {e["file"] for e in MANIFEST} | {f"{folder}/{name}" for e in MANIFEST
                                                         for folder in [e["file"].rpartition("/")[0]]
                                                         for name in e.get("shards", ())}, folders
    for entry in comparable(entries):
        for name in entry.get("shards", ()):
            shard = f"{entry['file'].rpartition('/')[0]}/{name}"
            assert (tmp_path / shard).read_bytes() == (CORPUS / shard).read_bytes(), shard
    assert {e["file"] for e in comparable(entries)} == {e["file"] for e in comparable(MANIFEST)}


def test_worker_reports_foreign_errors_and_crashes():
    """The harness itself: a crash and a non-nbckpt error are caught, not hidden."""
    entry = {"file": "x.pt", "attack": "self-test", "load": "error", "open": "error", "scan": "error",
             "error": "CheckpointError", "bomb": False, "value": None, "scan_flags": []}
    base = {"canary_file": False, "canary_module": False, "safe_globals": [], "maxrss_mb": 1.0,
            "traced_peak_mb": 0.0}
    with pytest.raises(AssertionError, match="crash"):
        check_result(entry, "load", {**base, "outcome": "crash", "returncode": -11, "stderr": ""})
    with pytest.raises(AssertionError, match="not an nbckpt error"):
        check_result(entry, "load", {**base, "outcome": "error", "type": "builtins.MemoryError",
                                     "mro": ["MemoryError"], "checkpoint_error": False, "message": ""})
    with pytest.raises(AssertionError, match="payload ran"):
        check_result(entry, "load", {**base, "canary_file": True, "outcome": "error",
                                     "checkpoint_error": True, "mro": [], "type": "", "message": ""})
    crashed = run_jobs([("__segfault__", "load"), ("ok_handmade.pt", "load")])
    assert crashed[("__segfault__", "load")]["outcome"] == "crash"
    assert crashed[("ok_handmade.pt", "load")]["outcome"] == "ok"


def test_time_budget(results):
    if not results["__all__"]:
        pytest.skip("only part of the corpus ran (-k)")
    assert results["__seconds__"] < 180, f"the corpus took {results['__seconds__']:.0f} s"


# -- allocation bombs, in this process, under tracemalloc ----------------------------------------

BOMBS = [e for e in MANIFEST if e["bomb"]]


@pytest.mark.parametrize("entry", BOMBS, ids=[_stem(e["file"]) for e in BOMBS])
def test_bomb_allocates_nothing_in_process(results, entry, monkeypatch):
    """Load each allocation bomb here, under tracemalloc: nothing big may be allocated first.

    Only files whose subprocess run ended cleanly are loaded in this process (the
    others fail, or are known bugs, in test_corpus_file).
    """
    import nbckpt

    r = results[(entry["file"], "load")]
    if r["outcome"] != "ok" and not (r["outcome"] == "error" and r["checkpoint_error"]):
        pytest.skip(f"unsafe to load in process: the subprocess load ended with {r.get('type', r['outcome'])}")
    if r["traced_peak_mb"] >= BOMB_TRACED_LIMIT_MB or r["maxrss_mb"] >= RSS_LIMIT_MB:
        pytest.skip("unsafe to load in process: the subprocess load allocated too much")
    monkeypatch.chdir(CANARY_DIR[0])  # a payload that ran would write its canary there
    tracemalloc.start()
    try:
        try:
            value = nbckpt.load(str(CORPUS / entry["file"]))
        except nbckpt.CheckpointError:
            value = None
            assert entry["load"] in ("error", "ok_or_error")
        else:
            assert entry["load"] in ("ok", "ok_or_error")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del value
    assert peak < BOMB_TRACED_LIMIT_MB << 20, f"{entry['file']}: {peak / 2**20:.0f} MB allocated"


# -- a listing lists everything or refuses; names cannot forge output (issue 15) ---------------------


def _saved(obj) -> bytes:
    import nbckpt

    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    return buf.getvalue()


def test_open_names_colliding_entries_apart_and_diff_sees_each():
    """{"a.b": v} and {"a": {"b": v}} flatten to one dotted name: values and arrays alike."""
    import numpy as np

    import nbckpt

    a = _saved({"a.b": 1, "a": {"b": 2, "w": np.zeros(2)}, "x.y": np.zeros(2), "x": {"y": np.ones(2)}})
    b = _saved({"a.b": 1, "a": {"b": 3, "w": np.zeros(2)}, "x.y": np.zeros(2), "x": {"y": np.ones(2)}})
    with nbckpt.open(io.BytesIO(a)) as archive:
        assert archive.values == {"['a.b']": 1, "['a']['b']": 2}
        assert [r.name for r in archive.records] == ["a.w", "['x.y']", "['x']['y']"]
        assert archive["['x']['y']"].tolist() == [1.0, 1.0] and archive["['x.y']"].tolist() == [0.0, 0.0]
    report = nbckpt.diff(io.BytesIO(a), io.BytesIO(b))
    assert not report.identical
    assert [(v.name, v.change) for v in report.values] == [("['a']['b']", "value")]


def test_open_refuses_arrays_it_would_not_list():
    """Arrays deeper than the listing walks, or in a mapping's attribute: refused, never left out."""
    import nbckpt

    deep = build.ckpt(build.Raw(b"}" * 1 + b"".join(build.emit(f"k{i}", proto=False, stop=False) + b"}"
                                                   for i in range(250))
                                + build.emit("w", proto=False, stop=False)
                                + build.emit(build.tensor(), proto=False, stop=False) + b"s" * 251))
    assert isinstance(nbckpt.load(io.BytesIO(deep)), dict)
    with pytest.raises(nbckpt.FormatError, match="nested more than 200 containers"):
        nbckpt.open(io.BytesIO(deep))
    attribute = build.ckpt(build.B(build.od(("w", build.tensor())), {"_metadata": build.od(("", build.tensor()))}))
    assert nbckpt.load(io.BytesIO(attribute))._metadata[""].shape == (2, 3)
    with pytest.raises(nbckpt.FormatError, match="left out of the listing"):
        nbckpt.open(io.BytesIO(attribute))
    with pytest.raises(nbckpt.FormatError, match="left out of the listing"):
        nbckpt.diff(io.BytesIO(attribute), io.BytesIO(attribute))


def test_cli_escapes_control_characters_of_file_names(tmp_path, monkeypatch, capsys):
    """A file named $'a\\nOK b.pt' prints as one line, in results and in error lines alike."""
    from nbckpt import cli

    monkeypatch.chdir(tmp_path)
    name = "a\nOK b.pt"
    shutil.copy(CORPUS / "ok_handmade.pt", tmp_path / name)
    (tmp_path / "d\nOK").mkdir()  # messages quote the folder of an index, not the argument itself
    index = "d\nOK/" + build.SHARDED_INDEX
    shutil.copy(CORPUS / "sharded_dotdot" / build.SHARDED_INDEX, tmp_path / index)
    for argv in (["verify", name], ["ls", name], ["info", name], ["diff", name, name],
                 ["verify", "gone\nOK.pt"], ["ls", name, "x\r\x1b[2J"], ["convert", name, "c\nOK.npz"],
                 ["ls", index], ["ls", str(tmp_path / index)]):
        code = cli.main(argv)
        out = capsys.readouterr()
        printed = out.out + out.err
        assert code in (0, 1, 2), (argv, printed)
        assert not any(line.startswith("OK") for line in printed.splitlines()), (argv, printed)
        assert "\r" not in printed and "\x1b" not in printed, (argv, printed)
        assert "a\\nOK b.pt" in printed or "gone\\nOK.pt" in printed or "d\\nOK" in printed, (argv, printed)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    sys.exit(_worker())
