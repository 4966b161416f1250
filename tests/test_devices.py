"""Devices and ``map_location`` on (fake) GPUs: runs in CI, without a GPU or CuPy.

The GPUs are :mod:`fakecupy`, a test double of CuPy with two devices whose
allocation log shows on which device each byte was allocated. Files saved on
CUDA are written by nbckpt from fake CuPy arrays, or are torch files whose
``cpu`` tags were rewritten (:func:`gpu_helpers.relocate`). The same checks
run on real hardware in ``test_gpu.py``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

import nbckpt
from gpu_helpers import (fake_cupy, load, no_cupy, relocate, rewrite_checkpoint,  # noqa: F401 - fixtures
                         save_bytes, torch_bytes)

W = np.arange(24, dtype=np.float32).reshape(4, 6)
B = np.arange(5, dtype=np.int64) - 2
EXPECTED = {"w": W, "wT": W.T, "row": W[1], "cols": W[:, 1::2], "b": B}


def storage_records(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [n for n in archive.namelist() if "/data/" in n and "/.data/" not in n]


def gpu_file(cupy, w_device: int = 0, b_device: int = 0) -> bytes:
    """``EXPECTED`` saved from fake CuPy arrays: ``w`` and its views on one GPU, ``b`` on another."""
    with cupy.cuda.Device(w_device):
        w = cupy.asarray(W)
    with cupy.cuda.Device(b_device):
        b = cupy.asarray(B)
    data = save_bytes({"w": w, "wT": w.T, "row": w[1], "cols": w[:, 1::2], "b": b, "step": 3})
    cupy.clear_logs()
    return data


def assert_on_gpu(cupy, out: dict, devices: dict[str, int]) -> None:
    """Each array on its device with the expected values; ``w``'s views share its memory."""
    for name, device in devices.items():
        array = out[name]
        assert type(array) is cupy.ndarray, (name, type(array))
        assert array.device.id == device, (name, array.device.id, device)
        assert array.dtype == EXPECTED[name].dtype and array.shape == EXPECTED[name].shape
    for name in ("wT", "row", "cols"):
        assert out[name].data.mem is out["w"].data.mem, name
    for name in devices:  # get() last: it logs transfers (and temporaries of non-contiguous views)
        np.testing.assert_array_equal(out[name].get(), EXPECTED[name])
    assert out["step"] == 3


def allocated(cupy) -> dict[int, int]:
    """Bytes allocated so far on each device."""
    return {device: sum(sizes) for device, sizes in cupy._allocations.items()}


# --------------------------------------------------------------------------------------
# Which devices exist


def test_devices_without_cupy(no_cupy):
    assert nbckpt.devices() == ["cpu"]


def test_devices_with_fake_gpus(fake_cupy):
    assert nbckpt.devices() == ["cpu", "cuda:0", "cuda:1"]
    fake_cupy.reset(1)
    assert nbckpt.devices() == ["cpu", "cuda:0"]
    fake_cupy.reset(0)  # CuPy imports but CUDA finds no device (getDeviceCount raises)
    assert nbckpt.devices() == ["cpu"]


def test_import_and_host_use_never_import_cupy():
    code = """
import io, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cupy", "cupyx"):
            seen.append(name)
        return None
sys.meta_path.insert(0, Spy())
import numpy as np, nbckpt
buf = io.BytesIO()
nbckpt.save({"a": np.arange(3), "b": np.ones((2, 2), np.float32).T}, buf)
for map_location in (None, "cpu", "auto", {"cuda:0": "cpu"}):
    buf.seek(0)
    nbckpt.load(buf, map_location=map_location)
buf.seek(0)
with nbckpt.open(buf) as archive:
    archive["a"]
print(seen, sorted(m for m in sys.modules if m.split(".")[0] in ("cupy", "cupyx")))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] []"


def test_real_cupy_on_a_machine_without_a_gpu(tmp_path):
    """The real CuPy package, installed where CUDA finds no device (CI, laptops).

    ``import cupy`` succeeds there and the failure only comes from the CUDA runtime,
    so this is the path most users without a GPU take; the fake cannot stand in for
    CuPy's own exceptions. Run in a fresh process so the real module stays out of
    the other tests' way. On a GPU machine ``test_gpu.py`` covers the rest.
    """
    pytest.importorskip("cupy")
    path = tmp_path / "gpu.pt"
    path.write_bytes(relocate(save_bytes({"w": np.arange(6, dtype=np.float32)}), "cuda:0"))
    code = f"""
import warnings, nbckpt, cupy
try:
    cupy.cuda.runtime.getDeviceCount()
    print("has a GPU")
    raise SystemExit
except cupy.cuda.runtime.CUDARuntimeError:
    pass
print(nbckpt.devices())
try:
    nbckpt.load({str(path)!r})
except nbckpt.DeviceError as error:
    print(isinstance(error, RuntimeError), error)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = nbckpt.load({str(path)!r}, map_location="auto")
print(type(out["w"]).__module__, [str(w.message) for w in caught])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if lines == ["has a GPU"]:
        pytest.skip("CUDA finds a device here: tests/test_gpu.py covers this machine")
    assert lines[0] == "['cpu']"
    assert lines[1].startswith("True the file holds arrays saved on 'cuda:0', but no GPU is usable here")
    assert "map_location='cpu'" in lines[1]
    module, warned = lines[2].split(" ", 1)
    assert module == "numpy" and "cuda:0 -> cpu" in warned, lines[2]


# --------------------------------------------------------------------------------------
# Saving CuPy arrays


def test_saved_cupy_arrays_are_tagged_with_their_gpu(fake_cupy):
    data = gpu_file(fake_cupy, w_device=0, b_device=1)
    with nbckpt.open(io.BytesIO(data)) as archive:
        locations = {record.name: record.location for record in archive.records}
    assert locations == {"w": "cuda:0", "wT": "cuda:0", "row": "cuda:0", "cols": "cuda:0", "b": "cuda:1"}
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for name, expected in EXPECTED.items():
        np.testing.assert_array_equal(loaded[name].numpy(), expected)
    storage = loaded["w"].untyped_storage().data_ptr()
    assert all(loaded[n].untyped_storage().data_ptr() == storage for n in ("wT", "row", "cols"))


def test_views_of_one_gpu_buffer_are_one_storage_copied_to_the_host_once(fake_cupy):
    cupy = fake_cupy
    with cupy.cuda.Device(1):
        x = cupy.asarray(np.arange(40, dtype=np.float64).reshape(5, 8))
    cupy.clear_logs()
    views = {"x": x, "T": x.T, "row": x[2], "cols": x[:, 1::3], "block": x[1:4, 2:6], "elem": x[3, 3]}
    data = save_bytes(views)
    assert len(storage_records(data)) == 1
    assert cupy._transfers == [("get", 1, x.nbytes)]
    assert allocated(cupy) == {0: 0, 1: 0}  # the storage is a view of x's memory
    host = x.get()
    expected_values = {"x": host, "T": host.T, "row": host[2], "cols": host[:, 1::3], "block": host[1:4, 2:6],
                       "elem": host[3, 3]}
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    out = load(data)
    for name, expected in expected_values.items():
        np.testing.assert_array_equal(loaded[name].numpy(), expected)
        assert out[name].device.id == 1 and out[name].data.mem is out["x"].data.mem
        np.testing.assert_array_equal(out[name].get(), expected)


def test_a_lone_strided_view_stores_only_the_bytes_it_spans(fake_cupy):
    cupy = fake_cupy
    with cupy.cuda.Device(1):
        x = cupy.asarray(np.arange(40, dtype=np.float32).reshape(5, 8))
    cupy.clear_logs()
    data = save_bytes({"cols": x[1:, 1::3]})
    span = (4 * 8 + 7 - (1 * 8 + 1) + 1) * 4  # from x[1, 1] to x[4, 7], not all of x
    assert cupy._transfers == [("get", 1, span)] and allocated(cupy) == {0: 0, 1: 0}
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    np.testing.assert_array_equal(loaded["cols"].numpy(), x.get()[1:, 1::3])


def test_arrays_torch_cannot_view_are_copied_on_their_own_gpu(fake_cupy):
    cupy = fake_cupy
    with cupy.cuda.Device(1):
        x = cupy.asarray(np.arange(6, dtype=np.int32))
    cupy.clear_logs()
    data = save_bytes({"reversed": x[::-1]})
    assert allocated(cupy) == {0: 0, 1: x.nbytes}
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    np.testing.assert_array_equal(loaded["reversed"].numpy(), np.arange(6)[::-1])
    out = load(data)["reversed"]
    assert out.device.id == 1 and out.strides == (4,)


def test_empty_gpu_array_keeps_its_tag(fake_cupy):
    with fake_cupy.cuda.Device(1):
        empty = fake_cupy.empty((0, 3), np.float32)
    data = save_bytes({"e": empty})
    assert nbckpt.open(io.BytesIO(data)).records[0].location == "cuda:1"
    out = load(data)["e"]
    assert out.device.id == 1 and out.shape == (0, 3) and out.dtype == np.float32


# --------------------------------------------------------------------------------------
# Loading onto GPUs: every map_location form


def test_none_returns_each_storage_to_its_saved_gpu(fake_cupy):
    data = gpu_file(fake_cupy, w_device=0, b_device=1)
    out = load(data)
    assert allocated(fake_cupy) == {0: W.nbytes, 1: B.nbytes}
    assert_on_gpu(fake_cupy, out, {"w": 0, "wT": 0, "row": 0, "cols": 0, "b": 1})
    # Each storage went through one pinned host buffer of its size.
    assert sorted(shape for shape, _ in fake_cupy.cupyx._pinned) == sorted([(B.nbytes,), (W.nbytes,)])


def _function_to_gpu1(cupy, seen):
    def to_gpu1(storage, location):
        seen.append((type(storage), storage.dtype, location))
        with cupy.cuda.Device(1):
            return cupy.asarray(storage)

    return to_gpu1


TO_GPU1 = {
    "str": lambda cupy, seen: "cuda:1",
    "dict": lambda cupy, seen: {"cuda:0": "cuda:1"},
    "dict of torch.device": lambda cupy, seen: {torch.device("cuda", 0): torch.device("cuda", 1)},
    "torch.device": lambda cupy, seen: torch.device("cuda", 1),
    "callable": _function_to_gpu1,
}


@pytest.mark.parametrize("form", TO_GPU1)
def test_map_location_to_gpu1_allocates_nothing_on_gpu0(fake_cupy, form):
    data = gpu_file(fake_cupy)
    seen: list = []
    out = load(data, map_location=TO_GPU1[form](fake_cupy, seen))
    assert allocated(fake_cupy) == {0: 0, 1: W.nbytes + B.nbytes}
    assert fake_cupy._allocations[0] == []
    assert_on_gpu(fake_cupy, out, {"w": 1, "wT": 1, "row": 1, "cols": 1, "b": 1})
    if form == "callable":
        assert sorted(seen, key=str) == sorted([(np.ndarray, B.dtype, "cuda:0"), (np.ndarray, W.dtype, "cuda:0")],
                                               key=str)
    else:
        assert len(fake_cupy.cupyx._pinned) == 2  # host buffers are pinned


def test_dict_remaps_only_the_listed_gpu(fake_cupy):
    out = load(gpu_file(fake_cupy, w_device=0, b_device=1), map_location={"cuda:1": "cuda:0"})
    assert allocated(fake_cupy) == {0: W.nbytes + B.nbytes, 1: 0}
    assert_on_gpu(fake_cupy, out, {"w": 0, "wT": 0, "row": 0, "cols": 0, "b": 0})


@pytest.mark.parametrize("cuda", ["cuda", torch.device("cuda")], ids=["str", "torch.device"])
def test_cuda_means_the_current_gpu(fake_cupy, cuda):
    data = gpu_file(fake_cupy, w_device=1, b_device=1)
    assert_on_gpu(fake_cupy, load(data, map_location=cuda), dict.fromkeys(EXPECTED, 0))
    fake_cupy.clear_logs()
    with fake_cupy.cuda.Device(1):
        out = load(data, map_location=cuda)
    assert allocated(fake_cupy) == {0: 0, 1: W.nbytes + B.nbytes}
    assert_on_gpu(fake_cupy, out, dict.fromkeys(EXPECTED, 1))


def test_callable_returning_none_keeps_the_saved_gpu(fake_cupy):
    seen = []
    out = load(gpu_file(fake_cupy, w_device=1, b_device=0), map_location=lambda s, loc: seen.append(loc))
    assert sorted(seen) == ["cuda:0", "cuda:1"]
    assert_on_gpu(fake_cupy, out, {"w": 1, "wT": 1, "row": 1, "cols": 1, "b": 0})


def test_auto_keeps_storages_on_usable_gpus(fake_cupy):
    data = gpu_file(fake_cupy, w_device=1, b_device=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load(data, map_location="auto")
    assert_on_gpu(fake_cupy, out, {"w": 1, "wT": 1, "row": 1, "cols": 1, "b": 0})


@pytest.mark.parametrize("cpu", ["cpu", torch.device("cpu"), {"cuda:0": "cpu", "cuda:1": "cpu"}],
                         ids=["str", "torch.device", "dict"])
def test_gpu_files_load_on_the_host(fake_cupy, cpu):
    out = load(gpu_file(fake_cupy, w_device=0, b_device=1), map_location=cpu)
    assert allocated(fake_cupy) == {0: 0, 1: 0}
    for name, expected in EXPECTED.items():
        assert type(out[name]) is np.ndarray
        np.testing.assert_array_equal(out[name], expected)
    assert all(np.shares_memory(out[n], out["w"]) for n in ("wT", "row", "cols"))


def test_torch_file_saved_on_cuda_loads_on_fake_gpus(fake_cupy):
    torch.manual_seed(0)
    state = torch.nn.Linear(5, 3).state_dict()
    data = relocate(torch_bytes(state), "cuda:0")
    with nbckpt.open(io.BytesIO(data)) as archive:
        assert {r.location for r in archive.records} == {"cuda:0"}
    out = load(data, map_location={"cuda:0": "cuda:1"})
    assert allocated(fake_cupy)[0] == 0
    for name, tensor in state.items():
        assert out[name].device.id == 1
        np.testing.assert_array_equal(out[name].get(), tensor.numpy())


def test_archive_reads_single_arrays_onto_gpu1(fake_cupy):
    data = gpu_file(fake_cupy)
    with nbckpt.open(io.BytesIO(data), map_location="cuda:1") as archive:
        row = archive["row"]
        assert allocated(fake_cupy) == {0: 0, 1: W.nbytes}  # only row's storage was read
        assert row.device.id == 1
        np.testing.assert_array_equal(row.get(), W[1])
        whole = archive.load()
    assert allocated(fake_cupy)[0] == 0
    assert_on_gpu(fake_cupy, whole, dict.fromkeys(EXPECTED, 1))


def test_archive_arrays_of_one_storage_share_gpu_memory(fake_cupy):
    data = gpu_file(fake_cupy)
    with nbckpt.open(io.BytesIO(data), map_location="cuda:1") as archive:
        row, w = archive["row"], archive["w"]
        # one allocation: row views w's memory (W[1] starts one row in)
        assert row.data.ptr == w.data.ptr + W[0].nbytes
        assert allocated(fake_cupy) == {0: 0, 1: W.nbytes}


def test_mmap_and_skip_data_onto_gpu1(fake_cupy, tmp_path):
    path = tmp_path / "gpu.pt"
    path.write_bytes(gpu_file(fake_cupy))
    out = nbckpt.load(path, map_location="cuda:1", mmap=True)
    assert allocated(fake_cupy)[0] == 0
    assert_on_gpu(fake_cupy, out, dict.fromkeys(EXPECTED, 1))
    fake_cupy.clear_logs()
    out = nbckpt.load(path, map_location="cuda:1", skip_data=True)
    assert allocated(fake_cupy) == {0: 0, 1: W.nbytes + B.nbytes}
    assert all(out[n].device.id == 1 and out[n].shape == EXPECTED[n].shape for n in EXPECTED)


def test_big_endian_typed_storages_are_swapped_before_the_copy(fake_cupy):
    data = rewrite_checkpoint(gpu_file(fake_cupy, w_device=0, b_device=0), big_endian(W.dtype, B.dtype))
    out = load(data, map_location="cuda:1")
    assert allocated(fake_cupy)[0] == 0
    assert_on_gpu(fake_cupy, out, dict.fromkeys(EXPECTED, 1))


def big_endian(*dtypes):
    """An edit for rewrite_checkpoint: the file as a big-endian machine writes it, where
    storage ``data/i`` holds elements of ``dtypes[i]``."""
    def edit(name: str, content: bytes) -> bytes:
        if name == "byteorder":
            return b"big"
        if name.startswith("data/"):
            return np.frombuffer(content, dtypes[int(name[5:])]).byteswap().tobytes()
        return content

    return edit


def test_big_endian_untyped_storage_is_swapped_on_its_gpu(fake_cupy):
    values = np.arange(6, dtype=np.uint16) * 257 + 1
    with fake_cupy.cuda.Device(1):
        x = fake_cupy.asarray(values)
    data = rewrite_checkpoint(save_bytes({"x": x}), big_endian(np.uint16))
    np.testing.assert_array_equal(load(data, map_location="cpu")["x"], values)
    fake_cupy.clear_logs()
    out = load(data)["x"]
    np.testing.assert_array_equal(out.get(), values)
    assert out.device.id == 1
    assert fake_cupy._allocations[0] == []


# --------------------------------------------------------------------------------------
# Device errors


def test_missing_gpu_raises_device_error(fake_cupy):
    data = gpu_file(fake_cupy, w_device=1, b_device=1)
    fake_cupy.reset(1)
    with pytest.raises(nbckpt.DeviceError) as info:
        load(data)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "cuda:1" in message and "map_location" in message, message
    assert info.value.location == "cuda:1"
    assert_on_gpu(fake_cupy, load(data, map_location={"cuda:1": "cuda:0"}), dict.fromkeys(EXPECTED, 0))


def test_gpu_file_without_cupy_raises_device_error(no_cupy):
    data = relocate(save_bytes(EXPECTED), "cuda:0")
    for map_location in (None, "cuda:0", "cuda"):
        with pytest.raises(nbckpt.DeviceError) as info:
            load(data, map_location=map_location)
        message = str(info.value)
        assert isinstance(info.value, RuntimeError)
        assert "CuPy" in message and "map_location='cpu'" in message and "'auto'" in message, message
    assert "cuda:0" in str(pytest.raises(nbckpt.DeviceError, load, data).value)


def test_gpu_file_without_any_device_raises_device_error(fake_cupy):
    data = gpu_file(fake_cupy)
    fake_cupy.reset(0)
    with pytest.raises(nbckpt.DeviceError, match="no GPU is usable"):
        load(data)


def test_auto_without_cupy_loads_on_the_host_with_one_warning(no_cupy):
    data = relocate(save_bytes(EXPECTED), "cuda:0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load(data, map_location="auto")
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "cuda:0 -> cpu" in str(caught[0].message)
    for name, expected in EXPECTED.items():
        assert type(out[name]) is np.ndarray
        np.testing.assert_array_equal(out[name], expected)


def test_auto_moves_only_the_gpus_that_are_missing(fake_cupy):
    data = gpu_file(fake_cupy, w_device=0, b_device=1)
    fake_cupy.reset(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load(data, map_location="auto")
    assert [str(w.message).count("->") for w in caught] == [1]
    assert "cuda:1 -> cpu" in str(caught[0].message)
    assert_on_gpu(fake_cupy, out, {"w": 0, "wT": 0, "row": 0, "cols": 0})
    assert type(out["b"]) is np.ndarray
    np.testing.assert_array_equal(out["b"], B)


def test_unknown_device_raises_device_error(fake_cupy):
    with pytest.raises(nbckpt.DeviceError, match="map_location='cpu'"):
        load(gpu_file(fake_cupy), map_location="mps")


# --------------------------------------------------------------------------------------
# dtypes CuPy does not have


EXOTIC = [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.complex32]


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_bfloat16_and_float8_arrays_hold_raw_bits_on_gpus(fake_cupy):
    raw = (np.arange(48, dtype=np.uint8) * 37 % 100).astype(np.uint8)  # clear of NaN encodings
    tensors = {str(dt): torch.from_numpy(raw[: 12 * torch.empty((), dtype=dt).element_size()].copy())
               .view(dt).reshape(3, 4) for dt in EXOTIC}
    tensors["bf16_T"] = tensors["torch.bfloat16"].T
    tensors["float32"] = torch.arange(4.0)
    data = relocate(torch_bytes(tensors), "cuda:0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load(data, map_location="cuda:1")
    raw_warnings = [str(w.message) for w in caught if "CuPy has no" in str(w.message)]
    assert len(raw_warnings) == 1 and "bfloat16" in raw_warnings[0], raw_warnings
    assert "map_location='cpu'" in raw_warnings[0]
    assert fake_cupy._allocations[0] == []
    for dt in EXOTIC:
        array, tensor = out[str(dt)], tensors[str(dt)]
        assert type(array) is fake_cupy.ndarray and array.device.id == 1
        assert array.dtype == np.dtype(f"u{tensor.element_size()}") and array.shape == (3, 4)
        np.testing.assert_array_equal(array.get().reshape(-1).view(np.uint8), _bits(tensor))
    assert out["bf16_T"].data.mem is out["torch.bfloat16"].data.mem
    np.testing.assert_array_equal(out["bf16_T"].get(), out["torch.bfloat16"].get().T)
    assert out["float32"].dtype == np.float32
    host = load(data, map_location="cpu")
    assert host["torch.bfloat16"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(host["torch.bfloat16"].view(np.uint16), out["torch.bfloat16"].get())


# --------------------------------------------------------------------------------------
# torch's conj/neg views


@pytest.mark.parametrize("how", ["load", "archive"])
def test_conj_and_neg_views_stay_on_the_target_gpu(fake_cupy, how):
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    data = relocate(torch_bytes({"conj": z.conj(), "neg": z._neg_view(), "both": z.conj()._neg_view()}), "cuda:0")
    expected = {"conj": np.conj(z.numpy()), "neg": -z.numpy(), "both": -np.conj(z.numpy())}
    if how == "load":
        out = load(data, map_location="cuda:1")
    else:
        with nbckpt.open(io.BytesIO(data), map_location="cuda:1") as archive:
            out = {name: archive[name] for name in expected}
    for name, values in expected.items():
        np.testing.assert_array_equal(out[name].get(), values)
    assert {name: out[name].device.id for name in expected} == dict.fromkeys(expected, 1)
    assert fake_cupy._allocations[0] == []


def test_every_dtype_left_as_raw_bits_is_named_in_the_warning(fake_cupy):
    tensors = {"f8": torch.zeros(4, dtype=torch.float8_e4m3fn), "c32": torch.zeros(4, dtype=torch.float16).view(torch.complex32)[:2]}
    data = relocate(torch_bytes(tensors), "cuda:0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load(data, map_location="cuda:1")
    assert out["f8"].dtype == np.uint8 and out["c32"].dtype == np.uint32  # raw bits, as documented
    raw_warnings = [str(w.message) for w in caught if "CuPy has no" in str(w.message)]
    assert len(raw_warnings) == 1, raw_warnings
    assert "float8_e4m3fn" in raw_warnings[0] and "complex32" in raw_warnings[0], raw_warnings


def test_float8_e5m2_holds_raw_bits_on_gpus(fake_cupy):
    tensor = torch.tensor([0.5, -2.0, 3.0]).to(torch.float8_e5m2)
    data = relocate(torch_bytes({"x": tensor}), "cuda:0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load(data, map_location="cuda:1")["x"]
    assert out.dtype == np.uint8 and out.device.id == 1
    np.testing.assert_array_equal(out.get(), _bits(tensor))
    assert any("float8_e5m2" in str(w.message) for w in caught)


def test_open_archive_keeps_no_gpu_memory_alive(fake_cupy):
    """The archive's storage cache holds GPU storages weakly (CuPy memory takes no weak references)."""
    import gc

    data = gpu_file(fake_cupy)
    with nbckpt.open(io.BytesIO(data), map_location="cuda:1") as archive:
        w = archive["w"]
        address = w.data.ptr
        assert address in fake_cupy.cuda._buffers
        assert archive["row"].data.ptr == address + W[0].nbytes  # while w lives, the cache is used
        del w
        gc.collect()
        assert address not in fake_cupy.cuda._buffers  # freed although the archive is open


@pytest.mark.parametrize("kind", ["legacy", "safetensors"])
def test_other_formats_read_onto_gpus_through_open(fake_cupy, tmp_path, kind):
    """Every reader hands its bytes to the same materializer: map_location works for all formats."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "w.bin"
    if kind == "legacy":
        buf = io.BytesIO()
        torch.save({"w": torch.from_numpy(w)}, buf, _use_new_zipfile_serialization=False)
        path.write_bytes(buf.getvalue().replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:1", 1))
        where = None  # back to the saved GPU
    else:
        from safetensors.numpy import save_file

        save_file({"w": w}, str(path))
        where = "cuda:1"
    with nbckpt.open(path, map_location=where) as archive:
        assert archive.record("w").location == ("cuda:1" if kind == "legacy" else "cpu")
        got = archive["w"]
        assert isinstance(got, fake_cupy.ndarray) and got.device.id == 1
        np.testing.assert_array_equal(got.get(), w)
    loaded = nbckpt.load(path, map_location=where)["w"]
    assert loaded.device.id == 1 and allocated(fake_cupy)[0] == 0
