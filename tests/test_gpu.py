"""The device tests on real GPUs: CuPy on CUDA, and torch's CUDA tensors when it has them.

Every test is marked ``gpu`` and the module skips itself without CuPy or
without a CUDA device, so it is harmless in CI. ``scripts/gpu_check.sh`` runs it
on a GPU machine. It mirrors ``test_devices.py``, which runs the same checks on
a fake CuPy; tests that need two GPUs skip on a machine with one.
"""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pytest
import torch

import nbckpt
from gpu_helpers import clear_cupy_caches, load, relocate, save_bytes, torch_bytes

cupy = pytest.importorskip("cupy")


def _gpu_count() -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no driver or no device: CuPy raises its CUDA errors
        return 0


N_GPUS = _gpu_count()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(N_GPUS == 0, reason="CuPy finds no CUDA device")]
two_gpus = pytest.mark.skipif(N_GPUS < 2, reason="needs two GPUs")
torch_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no CUDA here")
#: Where "to another GPU" goes: cuda:1 when there is one.
OTHER = 1 if N_GPUS >= 2 else 0

W = np.arange(24, dtype=np.float32).reshape(4, 6)
B = np.arange(5, dtype=np.int64) - 2
EXPECTED = {"w": W, "wT": W.T, "row": W[1], "cols": W[:, 1::2], "b": B}


@pytest.fixture(autouse=True)
def _fresh_backends():
    clear_cupy_caches()
    yield
    clear_cupy_caches()


def gpu_file(w_device: int = 0, b_device: int = 0) -> bytes:
    """``EXPECTED`` saved from CuPy arrays: ``w`` and its views on one GPU, ``b`` on another."""
    with cupy.cuda.Device(w_device):
        w = cupy.asarray(W)
    with cupy.cuda.Device(b_device):
        b = cupy.asarray(B)
    return save_bytes({"w": w, "wT": w.T, "row": w[1], "cols": w[:, 1::2], "b": b, "step": 3})


def assert_on_gpu(out: dict, devices: dict[str, int]) -> None:
    for name, device in devices.items():
        array = out[name]
        assert isinstance(array, cupy.ndarray), (name, type(array))
        assert array.device.id == device, (name, array.device.id, device)
        assert array.dtype == EXPECTED[name].dtype and array.shape == EXPECTED[name].shape
        np.testing.assert_array_equal(array.get(), EXPECTED[name])
    for name in ("wT", "row", "cols"):
        if name in devices:
            assert out[name].data.mem is out["w"].data.mem, name
    assert out["step"] == 3


def pool_bytes(device: int) -> int:
    """Bytes CuPy's memory pool holds on ``device`` (in use or cached)."""
    with cupy.cuda.Device(device):
        return cupy.get_default_memory_pool().total_bytes()


def free_pool(device: int) -> None:
    with cupy.cuda.Device(device):
        cupy.get_default_memory_pool().free_all_blocks()


# --------------------------------------------------------------------------------------
# Round trips


def test_devices_lists_every_gpu():
    assert nbckpt.devices() == ["cpu"] + [f"cuda:{i}" for i in range(N_GPUS)]


@pytest.mark.parametrize("device", [0, pytest.param(1, marks=two_gpus)])
def test_cupy_round_trip_on_each_gpu(device):
    data = gpu_file(device, device)
    with nbckpt.open(io.BytesIO(data)) as archive:
        assert {r.location for r in archive.records} == {f"cuda:{device}"}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sum("/data/" in n and "/.data/" not in n for n in archive.namelist()) == 2  # w (+ views), b
    assert_on_gpu(load(data), dict.fromkeys(EXPECTED, device))
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for name, expected in EXPECTED.items():
        np.testing.assert_array_equal(loaded[name].numpy(), expected)


@two_gpus
def test_arrays_on_two_gpus_return_to_their_gpus():
    assert_on_gpu(load(gpu_file(0, 1)), {"w": 0, "wT": 0, "row": 0, "cols": 0, "b": 1})


def test_lone_strided_and_reversed_views():
    with cupy.cuda.Device(OTHER):
        x = cupy.asarray(np.arange(40, dtype=np.float64).reshape(5, 8))
    data = save_bytes({"cols": x[1:, 1::3], "rev": x[::-1], "empty": x[:0]})
    out = load(data)
    host = x.get()
    for name, expected in {"cols": host[1:, 1::3], "rev": host[::-1], "empty": host[:0]}.items():
        assert out[name].device.id == OTHER and out[name].shape == expected.shape
        np.testing.assert_array_equal(out[name].get(), expected)


# --------------------------------------------------------------------------------------
# map_location, both ways


def _to_other(storage, location):
    with cupy.cuda.Device(OTHER):
        return cupy.asarray(storage)


FORMS = {
    "str": lambda: f"cuda:{OTHER}",
    "dict": lambda: {"cuda:0": f"cuda:{OTHER}"},
    "torch.device": lambda: torch.device("cuda", OTHER),
    "callable": lambda: _to_other,
}


@pytest.mark.parametrize("form", FORMS)
def test_map_location_to_another_gpu(form):
    data = gpu_file(0, 0)
    free_pool(0)
    before = pool_bytes(0)
    out = load(data, map_location=FORMS[form]())
    if OTHER != 0:
        assert pool_bytes(0) == before, "memory was allocated on cuda:0"
    assert_on_gpu(out, dict.fromkeys(EXPECTED, OTHER))


@two_gpus
def test_map_location_from_gpu1_back_to_gpu0():
    data = gpu_file(1, 1)
    for map_location in ("cuda:0", {"cuda:1": "cuda:0"}, torch.device("cuda", 0)):
        assert_on_gpu(load(data, map_location=map_location), dict.fromkeys(EXPECTED, 0))


def test_cuda_means_the_current_gpu():
    data = gpu_file(0, 0)
    with cupy.cuda.Device(OTHER):
        out = load(data, map_location="cuda")
    assert_on_gpu(out, dict.fromkeys(EXPECTED, OTHER))


def test_callable_returning_none_keeps_the_saved_gpu():
    seen = []
    out = load(gpu_file(OTHER, 0), map_location=lambda storage, location: seen.append(location))
    assert sorted(seen) == sorted([f"cuda:{OTHER}", "cuda:0"])
    assert_on_gpu(out, {"w": OTHER, "wT": OTHER, "row": OTHER, "cols": OTHER, "b": 0})


def test_auto_keeps_storages_on_the_gpu():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load(gpu_file(OTHER, 0), map_location="auto")
    assert_on_gpu(out, {"w": OTHER, "wT": OTHER, "row": OTHER, "cols": OTHER, "b": 0})


def test_gpu_file_to_host_and_host_file_to_gpu():
    out = load(gpu_file(OTHER, 0), map_location="cpu")
    for name, expected in EXPECTED.items():
        assert type(out[name]) is np.ndarray
        np.testing.assert_array_equal(out[name], expected)
    host_file = save_bytes({"w": W, "wT": W.T, "row": W[1], "cols": W[:, 1::2], "b": B, "step": 3})
    assert_on_gpu(load(host_file, map_location=f"cuda:{OTHER}"), dict.fromkeys(EXPECTED, OTHER))


def test_archive_and_mmap_onto_the_gpu(tmp_path):
    path = tmp_path / "gpu.pt"
    path.write_bytes(gpu_file(0, 0))
    with nbckpt.open(path, map_location=f"cuda:{OTHER}") as archive:
        row = archive["row"]
        assert row.device.id == OTHER
        np.testing.assert_array_equal(row.get(), W[1])
    assert_on_gpu(nbckpt.load(path, map_location=f"cuda:{OTHER}", mmap=True), dict.fromkeys(EXPECTED, OTHER))


def test_missing_gpu_raises_device_error():
    data = relocate(save_bytes({"w": W}), f"cuda:{N_GPUS}")
    with pytest.raises(nbckpt.DeviceError, match=f"cuda:{N_GPUS}") as info:
        load(data)
    assert isinstance(info.value, RuntimeError) and "map_location" in str(info.value)
    with pytest.warns(UserWarning, match=f"cuda:{N_GPUS} -> cpu"):
        assert type(load(data, map_location="auto")["w"]) is np.ndarray


# --------------------------------------------------------------------------------------
# dtypes CuPy does not have


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def test_bfloat16_and_float8_hold_raw_bits_on_the_gpu():
    tensors = {"bf16": torch.linspace(-2, 2, 12).to(torch.bfloat16).reshape(3, 4),
               "f8": torch.linspace(-2, 2, 12).to(torch.float8_e4m3fn).reshape(3, 4)}
    tensors["bf16_T"] = tensors["bf16"].T
    data = relocate(torch_bytes(tensors), "cuda:0")
    with pytest.warns(UserWarning, match="CuPy has no bfloat16"):
        out = load(data, map_location=f"cuda:{OTHER}")
    assert out["bf16"].dtype == np.uint16 and out["f8"].dtype == np.uint8
    for name in ("bf16", "f8", "bf16_T"):
        assert out[name].device.id == OTHER
        np.testing.assert_array_equal(out[name].get().reshape(-1).view(np.uint8), _bits(tensors[name]))
    assert out["bf16_T"].data.mem is out["bf16"].data.mem


def test_float8_e5m2_holds_raw_bits_on_the_gpu():
    tensor = torch.tensor([0.5, -2.0, 3.0]).to(torch.float8_e5m2)
    out = load(relocate(torch_bytes({"x": tensor}), "cuda:0"))["x"]
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.get(), _bits(tensor))


@two_gpus
def test_conj_and_neg_views_stay_on_the_target_gpu():
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    data = relocate(torch_bytes({"conj": z.conj(), "neg": z._neg_view()}), "cuda:0")
    out = load(data, map_location="cuda:1")
    np.testing.assert_array_equal(out["conj"].get(), np.conj(z.numpy()))
    np.testing.assert_array_equal(out["neg"].get(), -z.numpy())
    assert out["conj"].device.id == out["neg"].device.id == 1


# --------------------------------------------------------------------------------------
# torch on CUDA


@torch_cuda
def test_nbckpt_gpu_file_in_torch_on_cuda():
    data = gpu_file(0, 0)
    loaded = torch.load(io.BytesIO(data), map_location="cuda:0", weights_only=True)
    for name, expected in EXPECTED.items():
        assert loaded[name].device == torch.device("cuda", 0)
        np.testing.assert_array_equal(loaded[name].cpu().numpy(), expected)
    ptr = loaded["w"].untyped_storage().data_ptr()
    assert all(loaded[n].untyped_storage().data_ptr() == ptr for n in ("wT", "row", "cols"))


@torch_cuda
def test_torch_cuda_file_in_nbckpt():
    w = torch.from_numpy(W).to("cuda:0")
    data = torch_bytes({"w": w, "wT": w.T, "row": w[1], "cols": w[:, 1::2], "b": torch.from_numpy(B).cuda(),
                        "step": 3})
    with nbckpt.open(io.BytesIO(data)) as archive:
        assert {r.location for r in archive.records} == {"cuda:0"}
    assert_on_gpu(load(data), dict.fromkeys(EXPECTED, 0))
    assert_on_gpu(load(data, map_location={"cuda:0": f"cuda:{OTHER}"}), dict.fromkeys(EXPECTED, OTHER))
    host = load(data, map_location="cpu")
    np.testing.assert_array_equal(host["cols"], W[:, 1::2])


@torch_cuda
@two_gpus
def test_torch_file_saved_on_cuda1_returns_to_cuda1():
    t = torch.arange(6.0, device="cuda:1")
    out = load(torch_bytes({"t": t, "tail": t[3:]}))
    assert out["t"].device.id == out["tail"].device.id == 1
    assert out["tail"].data.mem is out["t"].data.mem
    np.testing.assert_array_equal(out["tail"].get(), [3.0, 4.0, 5.0])
