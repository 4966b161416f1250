"""Saving never loses the previous checkpoint: kills, write errors, permissions, races."""

from __future__ import annotations

import errno
import io
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import nbckpt

# A child process that saves checkpoints of ~64 MiB over one path, forever. Version n
# holds arrays filled with n, so a torn file would show mixed values (or fail to load).
SAVER = textwrap.dedent("""
    import sys, numpy as np, nbckpt
    path, first = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    version = first
    while True:
        nbckpt.save({"version": version, "a": np.full(4 << 20, version, np.float64),
                     "b": np.full(4 << 20, version, np.int32)}, path)
        version += 1
""")


def load_version(path) -> int:
    """The version of a complete checkpoint; fails on a torn or mixed one."""
    out = nbckpt.load(path, verify=True)
    version = out["version"]
    assert out["a"].shape == (4 << 20,) and (out["a"] == version).all()
    assert out["b"].shape == (4 << 20,) and (out["b"] == version).all()
    return version


def test_sigkill_during_saves_never_destroys_the_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    nbckpt.save({"version": 0, "a": np.full(4 << 20, 0, np.float64), "b": np.full(4 << 20, 0, np.int32)}, path)
    rng = random.Random(1234)
    last = 0
    for kill in range(20):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(path), str(last + 1)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        version = load_version(path)  # complete, CRCs right
        assert version >= last, (kill, version, last)
        last = version
    assert last > 0, "the saver never completed a save: the kills came too early to mean anything"
    # Each save first removes the temporaries of killed savers: only the last one's can be left...
    leftovers = [name for name in os.listdir(tmp_path) if name != "model.pt"]
    assert len(leftovers) <= 1 and all(name.startswith(".model.pt.nbckpt-") and name.endswith(".tmp")
                                       for name in leftovers), leftovers
    # ... and the next save (here, in this process) removes that one too.
    nbckpt.save({"version": last}, path)
    assert os.listdir(tmp_path) == ["model.pt"]


def _temporary(folder, *, host=None, pid, start=0) -> pathlib.Path:
    from nbckpt.io import sources

    path = pathlib.Path(folder) / f".x.pt.nbckpt-{host or sources._host()}-{pid}-{start}-abcd1234.tmp"
    path.write_bytes(b"partial")
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_saves_remove_only_the_temporaries_of_writers_that_are_gone(tmp_path):
    from nbckpt.io import sources

    dead = _temporary(tmp_path, pid=_dead_pid())
    live = _temporary(tmp_path, pid=os.getpid(), start=sources._process_start(os.getpid()))
    reused = _temporary(tmp_path, pid=os.getpid(), start=1)  # this pid, but a process that started earlier
    elsewhere = _temporary(tmp_path, host="otherhost", pid=_dead_pid())
    unrelated = tmp_path / ".x.pt.abcd1234.tmp"  # not nbckpt's naming: never touched
    unrelated.write_bytes(b"?")
    nbckpt.save({"a": np.ones(2)}, tmp_path / "y.pt")
    assert not dead.exists() and not reused.exists()
    assert live.exists() and elsewhere.exists() and unrelated.exists()


def test_verify_removes_the_temporaries_of_writers_that_are_gone(tmp_path):
    nbckpt.save({"a": np.ones(2)}, tmp_path / "x.pt")
    dead = _temporary(tmp_path, pid=_dead_pid())
    out = subprocess.run([sys.executable, "-m", "nbckpt.cli", "verify", str(tmp_path / "x.pt")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not dead.exists()
    assert out.stderr == (f"nbckpt: warning: removed {dead}: the temporary file of a save whose process "
                          f"is gone\n")


class FailingWriter(io.RawIOBase):
    """A file object whose disk fills up after ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.written = 0
        self.limit = limit

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if self.written + n > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += n
        return n


@pytest.mark.parametrize("limit", [0, 100, 5000, 200_000])
def test_file_object_running_out_of_space_raises_clearly(limit):
    with pytest.raises(OSError) as info:
        nbckpt.save({"a": np.ones(100_000)}, FailingWriter(limit))
    assert info.value.errno == errno.ENOSPC


def test_disk_full_on_a_path_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    nbckpt.save({"old": np.arange(10)}, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    def fdopen(fd, mode, *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        real_write = f.write
        budget = {"left": 3000}

        def write(data):
            n = memoryview(data).nbytes
            if n > budget["left"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            budget["left"] -= n
            return real_write(data)

        f.write = write
        return f

    monkeypatch.setattr("nbckpt.io.sources.os.fdopen", fdopen)
    with pytest.raises(OSError, match="No space left"):
        nbckpt.save({"new": np.ones(100_000)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


READ_ONLY_SAVE = textwrap.dedent("""
    import os, sys, numpy as np, nbckpt
    if os.getuid() == 0:
        os.setgid(65534); os.setuid(65534)  # root ignores permissions: drop to nobody
    try:
        nbckpt.save({"new": np.ones(3)}, sys.argv[1])
    except PermissionError as err:
        print("PermissionError", err)
""")


def test_read_only_folder_gives_a_clear_error_and_keeps_the_file():
    # Under /tmp directly: pytest's own temporary folders are private to root.
    base = pathlib.Path(tempfile.mkdtemp(prefix="nbckpt-ro-"))
    os.chmod(base, 0o755)
    folder = base / "ro"
    folder.mkdir()
    path = folder / "m.pt"
    nbckpt.save({"old": np.arange(5)}, path)
    os.chmod(path, 0o644)
    os.chmod(folder, 0o555)
    try:
        result = subprocess.run([sys.executable, "-c", READ_ONLY_SAVE, str(path)],
                                capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(folder, 0o755)
    try:
        assert result.stdout.startswith("PermissionError"), result.stdout + result.stderr
        assert str(folder) in result.stdout and "no permission to create a file" in result.stdout
        np.testing.assert_array_equal(nbckpt.load(path)["old"], np.arange(5))
        assert os.listdir(folder) == ["m.pt"]
    finally:
        shutil.rmtree(base)


RACER = textwrap.dedent("""
    import sys, numpy as np, nbckpt
    path, value = sys.argv[1], int(sys.argv[2])
    for _ in range(15):
        nbckpt.save({"who": value, "data": np.full(1 << 20, value, np.int64)}, path)
""")


def test_two_processes_saving_one_path_leave_one_complete_checkpoint(tmp_path):
    path = tmp_path / "shared.pt"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(path), str(v)]) for v in (1, 2)]
    seen = set()
    while any(r.poll() is None for r in racers):
        if path.exists():
            out = nbckpt.load(path, verify=True)  # any moment: one complete checkpoint
            assert (out["data"] == out["who"]).all()
            seen.add(out["who"])
        time.sleep(0.01)
    assert [r.returncode for r in racers] == [0, 0]
    out = nbckpt.load(path, verify=True)
    assert out["who"] in (1, 2) and (out["data"] == out["who"]).all()
    assert os.listdir(tmp_path) == ["shared.pt"]


def test_durable_saves_fsync_and_scratch_saves_do_not(tmp_path, monkeypatch):
    synced = []
    real = {name: getattr(os, name) for name in ("fsync", "fdatasync")}
    for name, fn in real.items():
        monkeypatch.setattr(os, name, lambda fd, fn=fn, name=name: (synced.append(name), fn(fd))[1])
    nbckpt.save({"a": np.ones(4)}, tmp_path / "durable.pt")
    assert "fsync" in synced  # the file, then its folder
    synced.clear()
    nbckpt.save({"a": np.ones(4)}, tmp_path / "scratch.pt", durable=False)
    assert synced == []
    np.testing.assert_array_equal(nbckpt.load(tmp_path / "scratch.pt")["a"], np.ones(4))
    assert sorted(os.listdir(tmp_path)) == ["durable.pt", "scratch.pt"]
