"""map_location without a GPU, mmap, skip_data and byte order (issue: devices and lazy loading)."""

from __future__ import annotations

import io
import mmap
import sys
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch

import nbckpt
from checkpoint_tools import retag, to_big_endian
from conftest import assert_same_array

def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture()
def gpu_file() -> tuple[bytes, dict]:
    """A torch state saved 'on' cuda:0 (tags rewritten on this CPU machine)."""
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.arange(6, dtype=torch.int64)
    c = torch.arange(3, dtype=torch.float16)
    data = retag(torch_bytes({"a": a, "a_row": a[1], "b": b, "c": c}), {"cpu": "cuda:0"})
    return data, {"a": a.numpy(), "a_row": a[1].numpy(), "b": b.numpy(), "c": c.numpy()}


def cuda_tags(data: bytes) -> list[str]:
    with nbckpt.open(io.BytesIO(data)) as archive:
        return [r.location for r in archive.records]


def test_retagged_file_is_on_cuda(gpu_file):
    data, _ = gpu_file
    assert set(cuda_tags(data)) == {"cuda:0"}


def test_no_gpu_error_names_device_and_fix(gpu_file):
    data, _ = gpu_file
    with pytest.raises(nbckpt.DeviceError) as info:
        nbckpt.load(io.BytesIO(data))
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "'cuda:0'" in message and "no GPU is usable here" in message
    assert "map_location='cpu'" in message and "'auto'" in message
    assert info.value.location == "cuda:0"


CPU_FORMS = {
    "str": "cpu",
    "bytes": b"cpu",
    "dict": {"cuda:0": "cpu"},
    "torch.device": torch.device("cpu"),
    "callable_identity": lambda storage, location: storage,
}


@pytest.mark.parametrize("form", ["str", "bytes", "dict", "torch.device", "callable_identity"])
@pytest.mark.parametrize("source", ["bytesio", "path"])
def test_map_location_to_cpu(gpu_file, form, source, tmp_path):
    """Port of test_serialization_map_location (cpu part): every form lands on the host."""
    data, expected = gpu_file
    f = io.BytesIO(data)
    if source == "path":
        path = tmp_path / "gpu.pt"
        path.write_bytes(data)
        f = path
    out = nbckpt.load(f, map_location=CPU_FORMS[form])
    for key, value in expected.items():
        assert_same_array(out[key], value)
    assert np.shares_memory(out["a"], out["a_row"])


def test_callable_sees_host_storage_and_tag(gpu_file):
    data, _ = gpu_file
    calls = []

    def fn(storage, location):
        calls.append((type(storage), storage.ndim, storage.dtype, location))
        return None if location == "never" else storage

    nbckpt.load(io.BytesIO(data), map_location=fn)
    assert calls == [
        (np.ndarray, 1, np.dtype(np.float32), "cuda:0"),
        (np.ndarray, 1, np.dtype(np.int64), "cuda:0"),
        (np.ndarray, 1, np.dtype(np.float16), "cuda:0"),
    ]


def test_callable_returning_none_uses_the_default(gpu_file):
    data, _ = gpu_file
    with pytest.raises(nbckpt.DeviceError):  # default for cuda:0 here: no GPU
        nbckpt.load(io.BytesIO(data), map_location=lambda s, loc: None)
    cpu_data = torch_bytes({"x": torch.ones(2)})
    out = nbckpt.load(io.BytesIO(cpu_data), map_location=lambda s, loc: None)
    np.testing.assert_array_equal(out["x"], np.ones(2, np.float32))


def test_callable_returning_wrong_size_is_refused(gpu_file):
    data, _ = gpu_file
    with pytest.raises(nbckpt.DeviceError, match="1-D array of 16 bytes"):
        nbckpt.load(io.BytesIO(data), map_location=lambda s, loc: s[:1])


def test_dict_leaves_unlisted_tags(gpu_file):
    data, _ = gpu_file
    with pytest.raises(nbckpt.DeviceError, match="cuda:0"):
        nbckpt.load(io.BytesIO(data), map_location={"cuda:1": "cpu"})


def test_auto_moves_to_host_with_one_warning(gpu_file):
    data, expected = gpu_file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = nbckpt.load(io.BytesIO(data), map_location="auto")
    moved = [w for w in caught if "auto" in str(w.message)]
    assert len(moved) == 1 and "cuda:0 -> cpu" in str(moved[0].message)
    for key, value in expected.items():
        assert_same_array(out[key], value)


def test_auto_on_host_file_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = nbckpt.load(io.BytesIO(torch_bytes([torch.ones(1)])), map_location="auto")
    assert out[0].dtype == np.float32


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "xpu:0", object()])
def test_unknown_target_tags_are_refused_before_reading(bad):
    with pytest.raises(nbckpt.DeviceError, match="map_location='cpu'"):
        nbckpt.load(io.BytesIO(b""), map_location=bad)


def test_unknown_saved_tag_is_refused(gpu_file):
    data = retag(torch_bytes({"x": torch.ones(2)}), {"cpu": "mps"})
    with pytest.raises(nbckpt.DeviceError, match="'mps'"):
        nbckpt.load(io.BytesIO(data))
    out = nbckpt.load(io.BytesIO(data), map_location="cpu")
    np.testing.assert_array_equal(out["x"], np.ones(2, np.float32))


# -- mmap ---------------------------------------------------------------------------------


@pytest.fixture()
def saved_path(tmp_path):
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    obj = {"base": base, "view": base[1:3, ::2], "ints": np.arange(5, dtype=np.int32),
           "bf16": np.ones(3, ml_dtypes.bfloat16), "empty": np.zeros((0, 3))}
    path = tmp_path / "m.pt"
    nbckpt.save(obj, path)
    return path, obj


@pytest.mark.parametrize("mode", [True, "r", "c"])
def test_mmap_equals_normal_load(saved_path, mode):
    """Port of test_serialization_mmap_loading_options."""
    path, obj = saved_path
    out = nbckpt.load(path, mmap=mode)
    for key, value in obj.items():
        assert_same_array(out[key], value)
    assert np.shares_memory(out["base"], out["view"])
    # Both arrays view the one map of the file, not a copy read from it.
    assert mapped_file(out["base"]) is mapped_file(out["view"])
    assert isinstance(mapped_file(out["base"]), mmap.mmap)


def mapped_file(array: np.ndarray):
    """The object at the root of ``array``'s chain of bases (an ``mmap`` for a mapped load)."""
    root = array
    while isinstance(root, np.ndarray):
        root = root.base
    return root.obj if isinstance(root, memoryview) else root


def test_mmap_arrays_are_backed_by_the_file(saved_path):
    path, _ = saved_path
    out = nbckpt.load(path, mmap=True)
    root = out["base"]
    while isinstance(root, np.ndarray):
        root = root.base
    assert isinstance(root, memoryview) and isinstance(root.obj, mmap.mmap)


def test_mmap_read_only_and_copy_on_write(saved_path):
    """Port of test_serialization_mmap_loading: private writes never reach the file."""
    path, obj = saved_path
    before = path.read_bytes()
    ro = nbckpt.load(path, mmap=True)
    assert not ro["base"].flags.writeable
    with pytest.raises(ValueError):
        ro["base"][0, 0] = 1
    cow = nbckpt.load(path, mmap="c")
    cow["base"][0, 0] = 99.0
    assert cow["view"].base is not None and cow["base"][0, 0] == 99.0
    assert path.read_bytes() == before
    assert nbckpt.load(path)["base"][0, 0] == 0.0


def test_mmap_needs_a_path(saved_path):
    path, _ = saved_path
    with pytest.raises(ValueError, match="mmap needs a path"):
        nbckpt.load(io.BytesIO(path.read_bytes()), mmap=True)
    with pytest.raises(ValueError, match="'r' .* 'c'"):
        nbckpt.load(path, mmap="w")


def test_mmap_of_torch_file_with_map_location(tmp_path):
    path = tmp_path / "t.pt"
    path.write_bytes(retag(torch_bytes({"w": torch.arange(4.0)}), {"cpu": "cuda:0"}))
    out = nbckpt.load(path, mmap=True, map_location="cpu")
    np.testing.assert_array_equal(out["w"], np.arange(4.0, dtype=np.float32))


# -- skip_data ------------------------------------------------------------------------------


class ReadRecorder(io.BytesIO):
    """A BytesIO that remembers the byte ranges read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.ranges: list[tuple[int, int]] = []

    def read(self, n=-1):
        start = self.tell()
        data = super().read(n)
        self.ranges.append((start, start + len(data)))
        return data

    def readinto(self, buffer):
        start = self.tell()
        n = super().readinto(buffer)
        self.ranges.append((start, start + n))
        return n


def storage_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    from nbckpt.format.container import ZipReader

    reader = ZipReader(io.BytesIO(data))
    out = {}
    for name in reader.names():
        if name.startswith("data/"):
            start = reader.data_offset(name)
            out[name] = (start, start + reader.entry(name).size)
    return out


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_skip_data_reads_no_storage_byte():
    """Port of test_skip_data_load: shapes and dtypes right, no data read, views kept."""
    base = torch.randn(2, 3)
    data = torch_bytes({"t": base, "t_row": base[1], "u": torch.ones(4, dtype=torch.uint16)})
    f = ReadRecorder(data)
    out = nbckpt.load(f, skip_data=True)
    assert out["t"].shape == (2, 3) and out["t"].dtype == np.float32
    assert out["u"].shape == (4,) and out["u"].dtype == np.uint16
    assert np.shares_memory(out["t"], out["t_row"])
    for rng in storage_ranges(data).values():
        assert not any(overlaps(rng, r) for r in f.ranges if r[1] > r[0])
    for value in out.values():
        value[...] = 0
    assert not out["t"].any() and not out["u"].any()


# -- byte order -------------------------------------------------------------------------------

BOM_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex128, torch.complex64,
              torch.uint16, torch.uint32, torch.uint64, torch.complex32]


def sample(dtype) -> torch.Tensor:
    raw = (np.arange(48, dtype=np.uint64) * 37 % 101).astype(np.uint8)
    if dtype == torch.bool:
        raw %= 2
    t = torch.from_numpy(raw.copy()).view(dtype)
    return t


@pytest.mark.parametrize("dtype", BOM_DTYPES, ids=str)
def test_big_endian_archive_loads_native(dtype):
    """Port of test_serialization_load_bom_data_*: values come back right, in native order."""
    t = sample(dtype)
    little = torch_bytes({"t": t, "view": t[1::2]})
    big = to_big_endian(little)
    expected = nbckpt.load(io.BytesIO(little))
    out = nbckpt.load(io.BytesIO(big))
    for key in ("t", "view"):
        assert out[key].dtype.isnative
        assert_same_array(out[key], expected[key])
    assert np.shares_memory(out["t"], out["view"])


@pytest.mark.parametrize("setting, expect_swap", [
    (None, False), (nbckpt.LoadEndianness.LITTLE, False), (nbckpt.LoadEndianness.BIG, True),
    (nbckpt.LoadEndianness.NATIVE, sys.byteorder == "big"),
])
def test_files_without_byteorder_follow_the_default(setting, expect_swap):
    t = torch.arange(6, dtype=torch.int32)
    no_record = to_big_endian(torch_bytes(t), record=False)  # big-endian bytes, no record
    previous = nbckpt.get_default_load_endianness()
    nbckpt.set_default_load_endianness(setting)
    try:
        out = nbckpt.load(io.BytesIO(no_record))
    finally:
        nbckpt.set_default_load_endianness(previous)
    if expect_swap:
        np.testing.assert_array_equal(out, np.arange(6, dtype=np.int32))
    else:
        np.testing.assert_array_equal(out, np.arange(6, dtype=np.int32).byteswap())


def test_set_default_load_endianness_type_check():
    with pytest.raises(TypeError, match="LoadEndianness"):
        nbckpt.set_default_load_endianness("big")


def test_big_endian_with_mmap_and_skip_data(tmp_path):
    path = tmp_path / "big.pt"
    path.write_bytes(to_big_endian(torch_bytes({"x": torch.arange(5.0)})))
    np.testing.assert_array_equal(nbckpt.load(path, mmap=True)["x"], np.arange(5.0, dtype=np.float32))
    assert nbckpt.load(path, skip_data=True)["x"].shape == (5,)
