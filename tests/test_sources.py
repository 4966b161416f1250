"""Where checkpoints come from and go to: file objects, paths, streams, atomic saves.

Most tests port a test of torch's ``test/test_serialization.py`` (named in each
docstring) from tensors to NumPy arrays and from ``torch.save``/``torch.load``
to ``nbckpt.save``/``nbckpt.load``. The rest pin nbckpt's own promises:
atomic saves to paths, exact stream positions after a load, and FormatError
(never another exception) for empty, random or truncated input.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import pathlib
import pickle
import shutil
import stat
import zipfile

import numpy as np
import pytest

import nbckpt
import nbckpt.api
from nbckpt import FormatError

from conftest import FilelikeMock, assert_same_array

NON_ASCII = "\u975eASCII\u30d1\u30b9"  # the suffix torch's tests use for non-ASCII paths
LOAD_METHODS = {"read", "readline", "seek", "tell"}  # what torch may use without readinto


# -- helpers -------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _randn(*shape: int, seed: int = 0) -> np.ndarray:
    return _rng(seed).standard_normal(shape, dtype=np.float32)


def _ckpt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    return buf.getvalue()


def _top_folders(source) -> set[str]:
    """The top folders of all records of a zip (path or bytes)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with zipfile.ZipFile(source) as zf:
        return {name.split("/", 1)[0] for name in zf.namelist()}


def _torch():
    return pytest.importorskip("torch")


class _PathLike:
    """An os.PathLike that is neither str nor pathlib.Path."""

    def __init__(self, path) -> None:
        self._path = os.fspath(path)

    def __fspath__(self) -> str:
        return self._path


class _ChunkedStream:
    """A seekable stream whose read/readinto/write move at most ``chunk`` bytes per call."""

    def __init__(self, data: bytes = b"", chunk: int = 7, *, readinto: bool = False) -> None:
        self.bytesio = io.BytesIO(data)
        self.chunk = chunk
        self.counts = {"read": 0, "readinto": 0, "write": 0}
        if readinto:
            self.readinto = self._readinto

    def read(self, n: int = -1) -> bytes:
        self.counts["read"] += 1
        return self.bytesio.read(self.chunk if n is None or n < 0 else min(n, self.chunk))

    def _readinto(self, view) -> int:
        self.counts["readinto"] += 1
        return self.bytesio.readinto(memoryview(view)[: self.chunk])

    def write(self, data) -> int:
        self.counts["write"] += 1
        return self.bytesio.write(memoryview(data).cast("B")[: self.chunk])

    def seek(self, *args) -> int:
        return self.bytesio.seek(*args)

    def tell(self) -> int:
        return self.bytesio.tell()


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# -- file objects --------------------------------------------------------------


def test_filelike_api_requirements():
    """Port of test_serialization_filelike_api_requirements."""
    mock = FilelikeMock(b"", has_readinto=False)
    array = _randn(3, 5)
    nbckpt.save(array, mock)
    assert mock.calls == {"write", "flush"}

    mock.seek(0)
    mock.calls.clear()
    out = nbckpt.load(mock)
    assert mock.calls <= LOAD_METHODS, mock.calls - LOAD_METHODS
    assert "read" in mock.calls
    assert_same_array(out, array)


@pytest.mark.parametrize(
    "mock_kwargs",
    [{}, {"has_readinto": True}, {"has_fileno": False}],
    ids=["no readinto", "has readinto", "no fileno"],
)
def test_filelike_missing_attrs(mock_kwargs):
    """Port of test_serialization_filelike_missing_attrs."""
    array = _randn(3, 10)
    target = FilelikeMock(b"", **mock_kwargs)
    nbckpt.save(array, target)
    source = FilelikeMock(target.bytesio.getvalue(), **mock_kwargs)
    out = nbckpt.load(source)
    assert_same_array(out, array)
    allowed = LOAD_METHODS | ({"readinto"} if mock_kwargs.get("has_readinto") else set())
    assert source.calls <= allowed, source.calls - allowed
    assert ("readinto" in source.calls) == bool(mock_kwargs.get("has_readinto"))


@pytest.fixture(scope="module")
def stress_checkpoint():
    """A 5633x2560 float32 array (55 MiB) and its checkpoint bytes."""
    array = _randn(11 * 2**9 + 1, 5 * 2**9, seed=1)
    return array, _ckpt_bytes(array)


@pytest.mark.parametrize("has_readinto", [False, True], ids=["read", "readinto"])
def test_filelike_stress(stress_checkpoint, has_readinto):
    """Port of test_serialization_filelike_stress."""
    array, data = stress_checkpoint
    source = FilelikeMock(data, has_readinto=has_readinto)
    out = nbckpt.load(source)
    assert out.shape == (5633, 2560) and out.dtype == np.float32
    assert np.array_equal(out, array)
    assert ("readinto" in source.calls) == has_readinto
    assert source.bytesio.tell() == len(data)


def test_filelike_uses_readinto():
    """Port of test_serialization_filelike_uses_readinto: array bytes go through readinto."""
    array = _randn(5, 4)
    source = FilelikeMock(_ckpt_bytes(array), has_readinto=True)
    filled = []
    plain_readinto = source.readinto

    def counting_readinto(view):
        count = plain_readinto(view)
        filled.append(count)
        return count

    source.readinto = counting_readinto
    out = nbckpt.load(source)
    assert_same_array(out, array)
    assert "readinto" in source.calls
    assert array.nbytes in filled  # the storage record arrived in one readinto call


@pytest.mark.parametrize("readinto", [False, True], ids=["read", "readinto"])
def test_short_reads(readinto):
    """Streams that return fewer bytes than asked (as raw files may) load completely."""
    obj = {"w": _randn(4, 33), "step": 7, "name": "run"}
    data = _ckpt_bytes(obj)
    source = _ChunkedStream(data + b"tail", chunk=7, readinto=readinto)
    out = nbckpt.load(source)
    assert_same_array(out["w"], obj["w"])
    assert (out["step"], out["name"]) == (7, "run")
    assert source.tell() == len(data)
    assert source.counts["readinto" if readinto else "read"] > obj["w"].nbytes // 7


def test_short_writes():
    """``write`` may accept fewer bytes than given: the rest is written again."""
    obj = {"w": _randn(4, 33), "step": 7}
    target = _ChunkedStream(chunk=100)
    nbckpt.save(obj, target)
    assert target.bytesio.getvalue() == _ckpt_bytes(obj)
    assert target.counts["write"] > len(target.bytesio.getvalue()) // 100


def test_write_returning_none_or_zero():
    """``write`` returning None means all written; returning 0 is an OSError, not a hang."""

    class NoneWriter:
        def __init__(self):
            self.parts = []

        def write(self, data):
            self.parts.append(bytes(data))

    obj = [np.arange(5, dtype=np.int16), "x"]
    writer = NoneWriter()
    nbckpt.save(obj, writer)
    assert b"".join(writer.parts) == _ckpt_bytes(obj)

    class ZeroWriter:
        def write(self, data):
            return 0

    with pytest.raises(OSError, match="wrote nothing"):
        nbckpt.save(obj, ZeroWriter())


def test_save_to_open_file_flushes(tmp_path):
    """``save`` flushes a file object: the bytes are in the file before it is closed."""
    array = _randn(16, 16)
    path = tmp_path / "open.pt"
    with open(path, "wb") as f:
        nbckpt.save(array, f)
        on_disk = path.read_bytes()  # through another handle, f still open
    assert on_disk == _ckpt_bytes(array)
    assert_same_array(nbckpt.load(io.BytesIO(on_disk)), array)


def test_filelike_exceptions():
    """Port of test_serialization_filelike_exceptions: bad targets raise, never abort."""
    x = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(AttributeError, match="'write' method, got numpy.ndarray"):
        nbckpt.save(x, x)
    with pytest.raises(AttributeError, match="'write' method, got builtins.bytes"):
        nbckpt.save([1, 2, 3], b"\x01\x02\x03")

    class Target:
        pass

    target = Target()
    target.write = "bar"
    target.flush = "baz"
    with pytest.raises(TypeError, match=r"f\.write of .*\.Target is not callable"):
        nbckpt.save("foo", target)

    target.write = str.__add__
    target.flush = str.__mul__
    with pytest.raises(TypeError, match="__add__"):
        nbckpt.save("foo", target)


@pytest.mark.parametrize("missing", [("seek", "tell"), ("seek",), ("tell",)], ids="+".join)
def test_load_error_msg(missing):
    """Port of test_load_error_msg: no seek/tell -> AttributeError pointing to io.BytesIO."""
    resource = FilelikeMock(data=_ckpt_bytes(np.ones(2)))
    for name in missing:
        delattr(resource, name)
    with pytest.raises(AttributeError, match=r"can only load from a file object that is seekable") as info:
        nbckpt.load(resource)
    assert f"has no '{missing[0]}'" in str(info.value)
    assert "io.BytesIO(" in str(info.value)
    assert resource.calls == set()


def test_load_from_unseekable_pipe():
    """A stream whose seek raises (a pipe) gives io.UnsupportedOperation with the same hint."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, _ckpt_bytes(np.ones(2)))
    os.close(write_fd)
    with open(read_fd, "rb") as f:
        with pytest.raises(io.UnsupportedOperation, match=r"seekable.*io\.BytesIO\("):
            nbckpt.load(f)


def test_load_without_read():
    """An object without ``read`` is not a source: AttributeError naming its type."""
    with pytest.raises(AttributeError, match="'read' method, got builtins.int"):
        nbckpt.load(42)


# -- compressed streams ----------------------------------------------------------


COMPRESSED_OPENERS = [gzip.open, bz2.open, lzma.open]


@pytest.mark.parametrize("opener", COMPRESSED_OPENERS, ids=["gzip", "bz2", "lzma"])
def test_load_gzip(tmp_path, opener):
    """Port of test_serialization_gzip (also bz2 and lzma streams)."""
    obj = {"a": _randn(5, 5), "b": np.arange(7, dtype=np.int64), "n": 3}
    plain = tmp_path / "plain.pt"
    nbckpt.save(obj, plain)
    packed = tmp_path / "packed"
    with open(plain, "rb") as f_in, opener(packed, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    with opener(packed, "rb") as f:
        out = nbckpt.load(f)
        assert f.tell() == plain.stat().st_size
    assert_same_array(out["a"], obj["a"])
    assert_same_array(out["b"], obj["b"])
    assert out["n"] == 3


@pytest.mark.parametrize("opener", COMPRESSED_OPENERS, ids=["gzip", "bz2", "lzma"])
def test_load_offset_gzip(tmp_path, opener):
    """Port of test_serialization_offset_gzip, with a pickle after the checkpoint too."""
    a = _randn(5, 5)
    packed = tmp_path / "packed"
    with opener(packed, "wb") as f:
        pickle.dump(41, f)
        nbckpt.save(a, f)
        pickle.dump(43, f)
    with opener(packed, "rb") as f:
        assert pickle.load(f) == 41
        assert_same_array(nbckpt.load(f), a)
        assert pickle.load(f) == 43
        assert f.read() == b""


# -- several checkpoints in one stream -------------------------------------------


@contextlib.contextmanager
def _stream(kind: str, tmp_path):
    if kind == "bytesio":
        yield io.BytesIO()
    else:
        with open(tmp_path / "stream.bin", "w+b") as f:
            yield f


STREAM_KINDS = ["bytesio", "file"]


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_back_to_back_checkpoints(kind, tmp_path):
    """Port of test_serialization_offset(_filelike): pickles and checkpoints interleaved.

    ``a`` is followed by more than 64 KiB (``b``), ``b`` ends the stream: both
    ways of finding a checkpoint's end are used.
    """
    a = _randn(5, 5)
    b = {"big": _randn(256, 1024, seed=2), "ints": np.arange(10, dtype=np.uint8)}
    with _stream(kind, tmp_path) as f:
        pickle.dump(41, f)
        nbckpt.save(a, f)
        end_a = f.tell()
        pickle.dump(43, f)
        nbckpt.save(b, f)
        end_b = f.tell()
        assert end_b - end_a > 1 << 20

        f.seek(0)
        assert pickle.load(f) == 41
        assert_same_array(nbckpt.load(f), a)
        assert f.tell() == end_a
        assert pickle.load(f) == 43
        b_loaded = nbckpt.load(f)
        assert f.tell() == end_b
    assert_same_array(b_loaded["big"], b["big"])
    assert_same_array(b_loaded["ints"], b["ints"])


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_checkpoint_after_header(kind, tmp_path):
    """A checkpoint written after other bytes loads from its start, in nbckpt and in torch."""
    torch = _torch()
    a = _randn(3, 4)
    with _stream(kind, tmp_path) as f:
        f.write(b"header")
        nbckpt.save(a, f)
        end = f.tell()
        f.write(b"footer")
        f.seek(6)
        assert_same_array(nbckpt.load(f), a)
        assert f.tell() == end
        assert f.read() == b"footer"
        f.seek(6)
        assert np.array_equal(torch.load(f, weights_only=True).numpy(), a)


def test_stream_mixed_with_torch():
    """torch and nbckpt checkpoints in one stream: each library reads the other's at its offset.

    (torch 2.13 itself only finds the end of the last archive in a stream, so
    torch reads only the final checkpoint here.)
    """
    torch = _torch()
    a, b, c = _randn(5, 5, seed=3), _randn(100, 300, seed=4), _randn(2, 2, seed=5)
    f = io.BytesIO()
    pickle.dump(41, f)
    torch.save(torch.from_numpy(a), f)
    pickle.dump(43, f)
    start_b = f.tell()
    nbckpt.save(b, f)
    end_b = f.tell()

    f.seek(start_b)
    assert np.array_equal(torch.load(f, weights_only=True).numpy(), b)

    f.seek(end_b)
    torch.save(torch.from_numpy(c), f)
    f.seek(0)
    assert pickle.load(f) == 41
    assert_same_array(nbckpt.load(f), a)
    assert pickle.load(f) == 43
    assert f.tell() == start_b
    assert_same_array(nbckpt.load(f), b)
    assert f.tell() == end_b
    assert_same_array(nbckpt.load(f), c)
    assert f.read() == b""


def _fake_eocd() -> np.ndarray:
    return np.array([ord("P"), ord("K"), 5, 6] + [0] * 100, dtype=np.uint8)


def _embedded_checkpoint() -> bytes:
    return _ckpt_bytes({"inner": _randn(4, 4, seed=6), "k": 1})


EOCD_CONTENTS = {
    "fake EOCD array": lambda: {"fake": _fake_eocd()},
    "checkpoint as uint8 array": lambda: {"blob": np.frombuffer(_embedded_checkpoint(), np.uint8)},
    "checkpoint as bytes": lambda: {"blob": _embedded_checkpoint()},
}


@pytest.mark.parametrize("trailing_size", [0, 300_000], ids=["small tail", "300 KiB tail"])
@pytest.mark.parametrize("content", list(EOCD_CONTENTS))
def test_data_after_checkpoint_holding_eocd_bytes(content, trailing_size):
    """A checkpoint whose content holds b'PK\\x05\\x06' still ends where it ends."""
    obj = EOCD_CONTENTS[content]()
    trailing = {"n": 43, "pad": b"\x00" * trailing_size}
    f = io.BytesIO()
    nbckpt.save(obj, f)
    end = f.tell()
    pickle.dump(trailing, f)
    f.seek(0)
    out = nbckpt.load(f)
    assert f.tell() == end
    assert pickle.load(f) == trailing
    key = next(iter(obj))
    if isinstance(obj[key], bytes):
        assert out[key] == obj[key]
    else:
        assert_same_array(out[key], obj[key])


def test_fake_zip(tmp_path):
    """Port of test_serialization_fake_zip: EOCD bytes in data do not confuse detection."""
    fake = _fake_eocd()
    path = tmp_path / "fake.pt"
    nbckpt.save(fake, path)
    assert zipfile.is_zipfile(path)
    out = nbckpt.load(path)
    assert_same_array(out, fake)
    assert out.tobytes() == b"PK\x05\x06" + bytes(100)

    # A stream that is not a zip but holds an EOCD: zipfile is fooled, nbckpt
    # looks at the leading bytes and refuses it as not a zip checkpoint.
    not_zip = b"\x80\x02" + fake.tobytes()
    assert zipfile.is_zipfile(io.BytesIO(not_zip))
    with pytest.raises(FormatError, match=r"not a torch checkpoint: the data starts with b'\\x80\\x02PK"):
        nbckpt.load(io.BytesIO(not_zip))


# -- paths -----------------------------------------------------------------------


@pytest.mark.parametrize("make_path", [str, pathlib.Path, _PathLike], ids=["str", "Path", "PathLike"])
def test_save_load_path(tmp_path, make_path):
    """Paths as str, pathlib.Path or any os.PathLike, for save and load."""
    obj = {"w": _randn(3, 3), "step": 2}
    path = make_path(tmp_path / "model.pt")
    nbckpt.save(obj, path)
    assert os.listdir(tmp_path) == ["model.pt"]
    out = nbckpt.load(path)
    assert_same_array(out["w"], obj["w"])
    assert out["step"] == 2
    assert _top_folders((tmp_path / "model.pt").read_bytes()) == {"model"}


def test_non_ascii_folder_and_file(tmp_path):
    """Port of the non-ASCII part of test_serialization_zipfile."""
    folder = tmp_path / ("dir" + NON_ASCII)
    folder.mkdir()
    path = folder / ("ckpt" + NON_ASCII + ".pt")
    obj = {"w": _randn(2, 5), "s": "\u975e"}
    nbckpt.save(obj, str(path))
    assert os.listdir(folder) == [path.name]
    out = nbckpt.load(str(path))
    assert_same_array(out["w"], obj["w"])
    assert out["s"] == "\u975e"
    assert _top_folders(path.read_bytes()) == {"archive"}


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        nbckpt.load(tmp_path / "absent.pt")


# (folder, file name, top folder torch 2.13 writes), checked against torch below.
PREFIX_CASES = [
    ("plain", "model.tar.pth", "model.tar"),
    ("plain", "noext", "noext"),
    ("plain", "a.", "a"),
    ("plain", "x.y.z", "x.y"),
    ("plain", "sp ace.pt", "sp ace"),
    ("plain", "a..pt", "a."),
    ("plain", ".hidden.pt", ".hidden"),
    ("plain", "..pt", "."),
    ("plain", "\u975e.pt", "archive"),
    ("plain", "\u00fc.pt", "archive"),
    ("dir" + NON_ASCII, "model.pt", "archive"),
]


def _prefix_case_path(tmp_path, folder, name):
    target = tmp_path / folder
    target.mkdir(exist_ok=True)
    return str(target / name)


def _prefix_params():
    return [pytest.param(folder, name, expected, id=f"{folder}/{name}")
            for folder, name, expected in PREFIX_CASES]


@pytest.mark.parametrize("folder, name, expected", _prefix_params())
def test_archive_prefix(tmp_path, folder, name, expected):
    """Records go under the file's stem, or 'archive', as torch.save writes them."""
    path = _prefix_case_path(tmp_path, folder, name)
    nbckpt.save(np.ones(2, np.float32), path)
    assert _top_folders(path) == {expected}


@pytest.mark.parametrize("folder, name, expected", [c[:3] for c in PREFIX_CASES],
                         ids=[f"{c[0]}/{c[1]}" for c in PREFIX_CASES])
def test_archive_prefix_table_is_torchs(tmp_path, folder, name, expected):
    """The table above is what torch.save writes."""
    torch = _torch()
    path = _prefix_case_path(tmp_path, folder, name)
    torch.save(torch.ones(2), path)
    assert _top_folders(path) == {expected}


@pytest.mark.parametrize("target", ["BytesIO", "FilelikeMock", "open file"])
def test_archive_prefix_file_objects(tmp_path, target):
    """File objects get 'archive', even a file opened from a path with a stem."""
    if target == "BytesIO":
        f = io.BytesIO()
    elif target == "FilelikeMock":
        f = FilelikeMock()
    else:
        f = open(tmp_path / "named.pt", "w+b")
    with contextlib.closing(f) if hasattr(f, "close") else contextlib.nullcontext():
        nbckpt.save(np.ones(2), f)
        f.seek(0)
        assert _top_folders(f.read()) == {"archive"}


def test_existing_file_replaced(tmp_path):
    """Saving over a file (here a longer one) leaves exactly the new checkpoint."""
    obj = {"w": _randn(8, 8)}
    (tmp_path / "ref").mkdir()
    (tmp_path / "out").mkdir()
    reference = tmp_path / "ref" / "m.pt"
    target = tmp_path / "out" / "m.pt"
    nbckpt.save(obj, reference)
    target.write_bytes(b"x" * (1 << 20))
    nbckpt.save(obj, target)
    assert target.read_bytes() == reference.read_bytes()
    assert os.listdir(tmp_path / "out") == ["m.pt"]
    assert_same_array(nbckpt.load(target)["w"], obj["w"])


# -- atomic saves ----------------------------------------------------------------


@pytest.fixture
def old_checkpoint(tmp_path):
    """A folder holding one checkpoint m.pt; yields (path, its bytes)."""
    path = tmp_path / "m.pt"
    nbckpt.save({"old": np.zeros(3)}, path)
    return path, path.read_bytes()


def _assert_untouched(path, old_bytes):
    assert os.listdir(path.parent) == [path.name]
    assert path.read_bytes() == old_bytes
    assert_same_array(nbckpt.load(path)["old"], np.zeros(3))


def test_unsupported_object_leaves_old_file(old_checkpoint):
    """A TypeError deep in the object names its place; nothing is written."""
    path, old_bytes = old_checkpoint
    obj = {"a": np.ones(3), "opt": {"fn": lambda x: x}}
    with pytest.raises(TypeError, match=r"of type builtins\.function at obj\['opt'\]\['fn'\]"):
        nbckpt.save(obj, path)
    _assert_untouched(path, old_bytes)

    buf = io.BytesIO()
    with pytest.raises(TypeError, match=r"obj\['opt'\]\['fn'\]"):
        nbckpt.save(obj, buf)
    assert buf.getvalue() == b""


class _FailingWriter:
    """Passes the first ``limit`` bytes on to ``inner``, then raises ``error``."""

    def __init__(self, inner, limit: int, error: BaseException, on_fail) -> None:
        self.inner = inner
        self.limit = limit
        self.error = error
        self.on_fail = on_fail
        self.written = 0

    def write(self, data):
        view = memoryview(data).cast("B")
        room = self.limit - self.written
        if view.nbytes > room:
            if room:
                self.inner.write(view[:room])
                self.written += room
            self.on_fail()
            raise self.error
        self.written += view.nbytes
        return self.inner.write(view)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["ENOSPC", "KeyboardInterrupt"])
@pytest.mark.parametrize("where", ["first byte", "half way", "last byte"])
def test_write_error_leaves_old_file(old_checkpoint, tmp_path_factory, monkeypatch, error, where):
    """A failure while writing leaves the old file intact and no temporary file."""
    path, old_bytes = old_checkpoint
    obj = {"new": _randn(64, 64)}
    full = tmp_path_factory.mktemp("full") / path.name  # same name: same size as the real save
    nbckpt.save(obj, full)
    total = full.stat().st_size
    limit = {"first byte": 0, "half way": total // 2, "last byte": total - 1}[where]
    seen = {}
    real_atomic_write = nbckpt.api.atomic_write

    def on_fail():
        seen["listing"] = sorted(os.listdir(path.parent))
        seen["target"] = path.read_bytes()

    @contextlib.contextmanager
    def failing_atomic_write(target, **options):
        with real_atomic_write(target, **options) as handle:
            yield _FailingWriter(handle, limit, error, on_fail)

    monkeypatch.setattr(nbckpt.api, "atomic_write", failing_atomic_write)
    with pytest.raises(type(error)):
        nbckpt.save(obj, path)

    # While writing, the bytes went to a hidden temporary file in the same folder.
    assert seen["target"] == old_bytes
    assert len(seen["listing"]) == 2 and path.name in seen["listing"]
    (temporary,) = set(seen["listing"]) - {path.name}
    assert temporary.startswith(f".{path.name}.") and temporary.endswith(".tmp")
    _assert_untouched(path, old_bytes)


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_commit_error_leaves_old_file(old_checkpoint, monkeypatch, step):
    """A failing fsync or rename leaves the old file intact and no temporary file."""
    path, old_bytes = old_checkpoint

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, f"{step} failed")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OSError, match=f"{step} failed"):
        nbckpt.save({"new": np.ones(5)}, path)
    monkeypatch.undo()
    _assert_untouched(path, old_bytes)


def test_missing_parent_folder(tmp_path):
    target = tmp_path / "absent" / "m.pt"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        nbckpt.save(np.ones(2), target)
    assert str(tmp_path / "absent") in str(info.value)
    assert os.listdir(tmp_path) == []


def test_target_is_folder(tmp_path):
    """Saving onto a folder fails like open() would, leaving no temporary file."""
    (tmp_path / "m.pt").mkdir()
    with pytest.raises(IsADirectoryError):
        nbckpt.save(np.ones(2), tmp_path / "m.pt")
    assert os.listdir(tmp_path) == ["m.pt"]
    assert os.listdir(tmp_path / "m.pt") == []


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_new_file_mode(tmp_path, mask):
    """New files get the mode open() gives them (0o666 & ~umask), not mkstemp's 0o600."""
    with _umask(mask):
        nbckpt.save(np.ones(2), tmp_path / "m.pt")
        with open(tmp_path / "plain", "wb"):
            pass
    mode = stat.S_IMODE(os.stat(tmp_path / "m.pt").st_mode)
    assert mode == 0o666 & ~mask
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755])
def test_replaced_file_keeps_mode(old_checkpoint, mode):
    path, _ = old_checkpoint
    os.chmod(path, mode)
    with _umask(0o022):
        nbckpt.save({"new": np.ones(2)}, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert_same_array(nbckpt.load(path)["new"], np.ones(2))


# -- loading errors --------------------------------------------------------------


def test_load_empty(tmp_path):
    """Empty input, or a stream already at its end, is a FormatError (a ValueError)."""
    (tmp_path / "empty.pt").write_bytes(b"")
    at_end = io.BytesIO(_ckpt_bytes(np.ones(2)))
    nbckpt.load(at_end)
    for source in (io.BytesIO(), tmp_path / "empty.pt", at_end):
        with pytest.raises(FormatError, match="empty") as info:
            nbckpt.load(source)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("prefix", [b"", b"PK\x03\x04"], ids=["random", "zip magic + random"])
def test_load_random_bytes(prefix):
    """Random bytes (also behind the zip magic) raise FormatError and nothing else."""
    rng = _rng(42)
    for size in [1, 3, 4, 21, 22, 100, 1000, 70_000]:
        for _ in range(5):
            data = prefix + rng.bytes(size)
            with pytest.raises(FormatError):
                nbckpt.load(io.BytesIO(data))


def test_load_truncated():
    """A checkpoint cut at any offset raises FormatError, never another exception."""
    obj = {"a": np.arange(10, dtype=np.int64), "b": _randn(3, 7), "s": "text"}
    data = _ckpt_bytes(obj)
    assert_same_array(nbckpt.load(io.BytesIO(data))["b"], obj["b"])
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            nbckpt.load(io.BytesIO(data[:cut]))


@pytest.mark.parametrize("cut", [10, 1000, -100, -1])
def test_load_truncated_file(tmp_path, cut):
    """The same for files on disk, with a larger storage."""
    path = tmp_path / "m.pt"
    nbckpt.save({"w": _randn(100, 100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(FormatError) as info:
        nbckpt.load(path)
    assert isinstance(info.value, ValueError)


# -- basic types -----------------------------------------------------------------


def test_safe_load_basic_types(tmp_path):
    """Port of test_safe_load_basic_types (and torch reads the same file)."""
    data = {"int": 123, "str": "world", "float": 3.14, "bool": False}
    with open(tmp_path / "basic.pt", "w+b") as f:
        nbckpt.save(data, f)
        f.seek(0)
        loaded = nbckpt.load(f, weights_only=True)
    assert loaded == data
    assert [type(v) for v in loaded.values()] == [int, str, float, bool]
    torch = _torch()
    assert torch.load(tmp_path / "basic.pt", weights_only=True) == data


def test_save_writes_through_symlink(tmp_path):
    """A 'latest.pt' link keeps pointing at its target, which gets the new data."""
    target = tmp_path / "run-1.pt"
    nbckpt.save(np.zeros(2, np.float32), target)
    link = tmp_path / "latest.pt"
    link.symlink_to(target)
    nbckpt.save(np.ones(3, np.float32), link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(nbckpt.load(target), np.ones(3, np.float32))
