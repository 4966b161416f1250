"""Byte compatibility with the real torch package, in both directions.

torch → nbckpt: files written by ``torch.save`` (torch 2.13) at test time load
with equal values, dtypes, shapes, strides and storage sharing.
nbckpt → torch: files written by ``nbckpt.save`` load in
``torch.load(weights_only=True)`` with the same properties.
"""

from __future__ import annotations

import collections
import io
import itertools
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

import nbckpt
from nbckpt.format import dtypes as torch_dtypes

from conftest import assert_same_array

# Every dtype torch can save that nbckpt maps to a NumPy dtype.
TORCH_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bfloat16,
    torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.float8_e5m2, torch.float8_e4m3fn, torch.float8_e5m2fnuz,
    torch.float8_e4m3fnuz, torch.float8_e8m0fnu, torch.complex32,
]


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch_dtypes.by_torch_name(str(dtype).removeprefix("torch.")).numpy


def torch_bits(t: torch.Tensor) -> np.ndarray:
    """The bytes of a tensor's elements in C order (works for every dtype)."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().copy() if flat.numel() else np.empty(0, np.uint8)


def numpy_bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def sample_tensor(dtype: torch.dtype, shape=(3, 4)) -> torch.Tensor:
    """Deterministic, varied values of any dtype (raw bits for the exotic ones)."""
    n = int(np.prod(shape))
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = (np.arange(n * itemsize, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
    if dtype == torch.bool:
        raw = (raw % 2).astype(np.uint8)
    if dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu):
        raw = raw % 100  # stay clear of NaN encodings, which differ between the formats
    return torch.from_numpy(raw.copy()).view(dtype).reshape(shape)


def assert_tensor_matches(array, tensor: torch.Tensor) -> None:
    """An nbckpt array equals a torch tensor in bits, dtype, shape and strides."""
    assert isinstance(array, np.ndarray), type(array)
    assert array.dtype == numpy_dtype(tensor.dtype)
    assert array.shape == tuple(tensor.shape)
    np.testing.assert_array_equal(numpy_bits(array), torch_bits(tensor))
    if array.size:
        assert tuple(s // array.itemsize for s in array.strides) == tuple(tensor.stride())


def torch_save_bytes(obj, **kwargs) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    buf.seek(0)
    return buf


def nbckpt_save_bytes(obj) -> io.BytesIO:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    buf.seek(0)
    return buf


def shares(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    return np.shares_memory(a, b)


# --------------------------------------------------------------------------------------
# torch -> nbckpt


MODULES = {
    "linear": lambda: torch.nn.Linear(5, 3),
    "conv2d": lambda: torch.nn.Conv2d(3, 4, kernel_size=3),
    "batchnorm": lambda: torch.nn.BatchNorm2d(4),
    "layernorm": lambda: torch.nn.LayerNorm(6),
    "embedding": lambda: torch.nn.Embedding(10, 4),
}


@pytest.mark.parametrize("name", MODULES)
def test_module_state_dict_from_torch(name):
    torch.manual_seed(0)
    module = MODULES[name]()
    if name == "batchnorm":
        module(torch.randn(2, 4, 5, 5))  # moves running stats and num_batches_tracked
    state = module.state_dict()
    out = nbckpt.load(torch_save_bytes(state))
    assert type(out) is collections.OrderedDict
    assert list(out) == list(state)
    for key, tensor in state.items():
        assert_tensor_matches(out[key], tensor)
    # The module versions torch keeps on the OrderedDict survive (they steer load_state_dict).
    assert out._metadata == state._metadata
    if name == "batchnorm":
        assert out["num_batches_tracked"].dtype == np.int64
        assert int(out["num_batches_tracked"]) == 1


def test_adam_state_dict_from_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        opt.step()
    state = opt.state_dict()
    out = nbckpt.load(torch_save_bytes(state))
    assert out["param_groups"] == state["param_groups"]
    assert set(out["state"]) == set(state["state"])
    for index, entry in state["state"].items():
        for key, value in entry.items():
            assert_tensor_matches(out["state"][index][key], value)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7,), (3, 4)])
def test_every_dtype_from_torch(dtype, shape):
    t = sample_tensor(dtype, shape)
    out = nbckpt.load(torch_save_bytes({"t": t}))
    assert_tensor_matches(out["t"], t)


def test_v3_dtype_views_stay_views():
    """Port of test_serialization_dtype: x[0::2] and x[1::2] view x after load."""
    for dtype in (torch.float8_e5m2, torch.float8_e4m3fn, torch.complex32, torch.uint16,
                  torch.uint32, torch.uint64):
        x = sample_tensor(dtype, (8,))
        out = nbckpt.load(torch_save_bytes([x, x[0::2], x[1::2]]))
        for array, tensor in zip(out, [x, x[0::2], x[1::2]]):
            assert_tensor_matches(array, tensor)
        assert np.shares_memory(out[0], out[1]) and np.shares_memory(out[0], out[2])
        out[0][...] = out[0][::-1].copy()
        np.testing.assert_array_equal(numpy_bits(out[1]), numpy_bits(out[0][0::2]))


def test_views_from_torch_share_memory():
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    views = {
        "base": base,
        "slice": base[1:4, 2:7],
        "transpose": base.t(),
        "strided": base.as_strided((3, 4), (7, 2), 5),
        "row": base[2],
        "scalar": base[3, 4],
        "empty": base[2:2],
        "flat": base.view(-1)[10:],
    }
    out = nbckpt.load(torch_save_bytes(views))
    for name, tensor in views.items():
        assert_tensor_matches(out[name], tensor)
    for a, b in itertools.combinations([k for k in views if k != "empty"], 2):
        assert np.shares_memory(out[a], out[b]) == bool(
            np.intersect1d(_touched(views[a]), _touched(views[b])).size
        ), (a, b)
    out["base"][3, 4] = -1.0
    assert out["scalar"] == -1.0 and out["transpose"][4, 3] == -1.0


def _touched(t: torch.Tensor) -> np.ndarray:
    """Storage indices a view touches."""
    index = torch.arange(t.untyped_storage().nbytes() // t.element_size())
    return index.as_strided(t.shape, t.stride(), t.storage_offset()).reshape(-1).numpy()


def test_same_tensor_in_several_places_loads_as_one_object():
    t = torch.randn(3)
    out = nbckpt.load(torch_save_bytes({"a": t, "b": [t, {"c": t}]}))
    assert out["a"] is out["b"][0] is out["b"][1]["c"]


def test_nested_containers_and_scalars_from_torch():
    obj = {
        "int": 7, "big": 2**80, "neg": -(2**40), "float": 1.5, "nan": float("nan"),
        "complex": 1 - 2j, "str": "naïve ☃", "bytes": b"\x00\xff", "bytearray": bytearray(b"ab"),
        "none": None, "bool": True, "tuple": (1, (2, 3)), "list": [1, [2, [3]]],
        "set": {1, 2}, "frozen": frozenset({3}), "od": collections.OrderedDict(b=1, a=2),
        "size": torch.Size([2, 3]), "dtype": torch.bfloat16, "device": torch.device("cuda", 1),
        "tensor": torch.ones(2),
    }
    out = nbckpt.load(torch_save_bytes(obj))
    for key in ("int", "big", "neg", "float", "complex", "str", "bytes", "bytearray", "none",
                "bool", "tuple", "list", "set", "frozen", "od"):
        assert out[key] == obj[key] and type(out[key]) is type(obj[key]), key
    assert np.isnan(out["nan"])
    assert out["size"] == (2, 3) and type(out["size"]) is tuple
    assert out["dtype"] == np.dtype(ml_dtypes.bfloat16)
    assert out["device"] == "cuda:1"


def test_numpy_array_inside_torch_checkpoint():
    obj = {"np": np.arange(6, dtype=np.int32).reshape(2, 3), "scalar": np.float64(2.5), "t": torch.zeros(2)}
    out = nbckpt.load(torch_save_bytes(obj))
    assert_same_array(out["np"], obj["np"])
    assert out["scalar"] == 2.5 and type(out["scalar"]) is np.float64


def test_parameter_and_tensor_attributes_load_as_arrays():
    p = torch.nn.Parameter(torch.arange(4.0))
    t = torch.arange(3.0)
    t.note = "dropped"  # saved through _rebuild_from_type_v2
    out = nbckpt.load(torch_save_bytes({"p": p, "t": t}))
    assert_tensor_matches(out["p"], p)
    assert_tensor_matches(out["t"], t)


def test_math_bits_are_materialized():
    """Port of test_serialization_math_bits: conj/neg views hold un-conjugated data."""
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    out = nbckpt.load(torch_save_bytes({"conj": z.conj(), "neg": z._neg_view(), "both": z.conj()._neg_view()}))
    np.testing.assert_array_equal(out["conj"], np.conj(z.numpy()))
    np.testing.assert_array_equal(out["neg"], -z.numpy())
    np.testing.assert_array_equal(out["both"], -np.conj(z.numpy()))


def test_storages_saved_on_their_own():
    """Port of _test_serialization_data/_assert: storages load as 1-D arrays sharing memory."""
    a = [torch.randn(5, 5).float() for _ in range(2)]
    b = [a[i % 2] for i in range(4)]
    b += [a[0].storage()]
    b += [a[0].reshape(-1)[1:4].storage()]
    b += [torch.arange(1, 11).int()]
    b += [a[0].reshape(-1)[0:2].storage()]
    c = nbckpt.load(torch_save_bytes(b))
    for i in range(4):
        assert_tensor_matches(c[i], b[i])
    assert c[0] is c[2] and c[1] is c[3]
    assert c[4].shape == (25,) and c[4].dtype == np.float32
    c[0].fill(10)
    np.testing.assert_array_equal(c[4], np.full(25, 10, np.float32))
    assert np.shares_memory(c[4], c[5]) and np.shares_memory(c[4], c[7])
    assert_tensor_matches(c[6], b[6])


def test_crc_off_files_load():
    t = torch.arange(10.0)
    torch.serialization.set_crc32_options(False)
    try:
        buf = torch_save_bytes(t)
    finally:
        torch.serialization.set_crc32_options(True)
    assert_tensor_matches(nbckpt.load(buf), t)


# --------------------------------------------------------------------------------------
# nbckpt -> torch


def test_every_dtype_to_torch():
    for dtype in TORCH_DTYPES:
        nd = numpy_dtype(dtype)
        array = np.frombuffer(bytes((np.arange(12 * nd.itemsize) * 7 % 100).astype(np.uint8)), dtype=nd).reshape(3, 4)
        if dtype == torch.bool:
            array = np.arange(12).reshape(3, 4) % 3 == 0
        out = torch.load(nbckpt_save_bytes({"a": array, "row": array[1]}), weights_only=True)
        assert out["a"].dtype == dtype, dtype
        np.testing.assert_array_equal(torch_bits(out["a"]), numpy_bits(array))
        assert tuple(out["row"].shape) == (4,) and out["row"].storage_offset() == 4
        assert shares(out["a"], out["row"])


def test_views_to_torch_share_storage():
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    views = {
        "base": base, "slice": base[1:4, 2:7], "transpose": base.T, "row": base[2],
        "scalar": base[3, 4, ...], "empty": base[2:2], "strided": base[::2, ::3],
        "as_strided": np.lib.stride_tricks.as_strided(base[0, 5:], (3, 4), (56, 16)),
    }
    out = torch.load(nbckpt_save_bytes(views), weights_only=True)
    for name, array in views.items():
        np.testing.assert_array_equal(out[name].numpy(), array)
        assert tuple(out[name].shape) == array.shape
        if array.size:
            assert tuple(out[name].stride()) == tuple(s // 8 for s in array.strides), name
    for a, b in itertools.combinations([k for k in views if k != "empty"], 2):
        assert shares(out[a], out[b]), (a, b)
    out["base"][3, 4] = -1
    assert out["scalar"].item() == -1 and out["transpose"][4, 3].item() == -1


def test_state_dict_to_torch_module():
    """A state dict read from torch and written back by nbckpt loads into the module."""
    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 6 * 6, 2))
    state = nbckpt.load(torch_save_bytes(module.state_dict()))
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2))
    loaded = torch.load(nbckpt_save_bytes(state), weights_only=True)
    fresh.load_state_dict(loaded)
    for key, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    assert loaded._metadata == module.state_dict()._metadata


def test_nested_containers_and_scalars_to_torch():
    obj = {
        "int": 7, "big": 2**80, "neg": -(2**40), "float": 1.5, "complex": 1 - 2j,
        "str": "naïve ☃", "bytes": b"\x00\xff", "empty_bytes": b"", "bytearray": bytearray(b"ab"),
        "none": None, "bool": False, "tuple": (1, (2, 3)), "list": [1, [2, [3]]], "set": {1, 2},
        "od": collections.OrderedDict(b=1, a=2), "dtype": np.dtype(np.float16),
        "scalar": np.int64(5), "array": np.ones(3, np.float32),
    }
    out = torch.load(nbckpt_save_bytes(obj), weights_only=True)
    for key in ("int", "big", "neg", "float", "complex", "str", "bytes", "empty_bytes",
                "bytearray", "none", "bool", "tuple", "list", "set", "od"):
        assert out[key] == obj[key] and type(out[key]) is type(obj[key]), key
    assert out["dtype"] is torch.float16
    assert out["scalar"].dtype == torch.int64 and out["scalar"].item() == 5 and out["scalar"].dim() == 0
    assert torch.equal(out["array"], torch.ones(3))


def test_same_array_twice_is_one_tensor_in_torch():
    a = np.arange(4.0)
    out = torch.load(nbckpt_save_bytes([a, {"again": a}]), weights_only=True)
    assert out[0] is out[1]["again"]


# --------------------------------------------------------------------------------------
# Byte-level layout


def test_data_pkl_and_layout_identical_to_torch():
    """For the same data nbckpt writes the bytes torch writes (but the opaque id)."""
    t = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.int64),
         "u": torch.ones(2, dtype=torch.uint16), "x": 1.5, "s": "hi", "l": [1, (2, None)],
         "od": collections.OrderedDict(k=b"v")}
    t["at"] = t["a"].t()
    n = {"a": np.arange(6.0, dtype=np.float32).reshape(2, 3), "b": np.ones(3, dtype=np.int64),
         "u": np.ones(2, dtype=np.uint16), "x": 1.5, "s": "hi", "l": [1, (2, None)],
         "od": collections.OrderedDict(k=b"v")}
    n["at"] = n["a"].T
    tb, nb = torch_save_bytes(t).getvalue(), nbckpt_save_bytes(n).getvalue()
    zt, zn = zipfile.ZipFile(io.BytesIO(tb)), zipfile.ZipFile(io.BytesIO(nb))
    assert [(i.filename, i.header_offset, i.file_size, i.flag_bits, i.extra) for i in zt.infolist()] == \
           [(i.filename, i.header_offset, i.file_size, i.flag_bits, i.extra) for i in zn.infolist()]
    for name in zt.namelist():
        if name != "archive/.data/serialization_id":
            assert zt.read(name) == zn.read(name), name
    start = data_offset(nb, zn.getinfo("archive/.data/serialization_id"))
    assert tb[:start] == nb[:start]
    assert zn.testzip() is None  # every CRC is right


def data_offset(archive: bytes, info: zipfile.ZipInfo) -> int:
    """Where a record's data starts: after its local header, name and extra field."""
    name_len, extra_len = struct.unpack_from("<HH", archive, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def test_storage_alignment_offsets_match_torch():
    """Port of test_storage_alignment: nn.Linear(10,10) data at 832 and 1344."""
    state = torch.nn.Linear(10, 10).state_dict()
    nb = nbckpt_save_bytes(nbckpt.load(torch_save_bytes(state))).getvalue()
    z = zipfile.ZipFile(io.BytesIO(nb))
    offsets = {info.filename: data_offset(nb, info) for info in z.infolist()}
    assert offsets["archive/data/0"] == 832 and offsets["archive/data/1"] == 1344
    assert all(off % 64 == 0 for off in offsets.values())
    assert z.read("archive/.format_version") == b"1"
    assert z.read("archive/.storage_alignment") == b"64"
    assert z.read("archive/byteorder") == b"little"
    assert z.read("archive/version") == b"3\n"


@pytest.mark.slow
def test_zip64_file_over_4gib(tmp_path):
    """Port of test_serialization_4gb_file: a >4 GiB record followed by small ones."""
    big = np.zeros(2**32 + 100, dtype=np.uint8)  # calloc'ed: pages are touched only when written
    big[-1] = 7
    small = np.arange(16, dtype=np.float32)
    fp8 = np.ones(2, dtype=ml_dtypes.float8_e4m3fn)
    path = tmp_path / "big.pt"
    nbckpt.save({"big": big, "small": small, "fp8": fp8}, path)
    del big
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("big/data/0")
        assert info.file_size == 2**32 + 100
        assert z.getinfo("big/data/1").header_offset > 2**32
        assert z.read("big/data/1") == small.tobytes()
    out = torch.load(path, weights_only=True, mmap=True)
    assert out["big"].shape == (2**32 + 100,) and out["big"][-1].item() == 7
    assert torch.equal(out["small"], torch.arange(16.0))
    assert out["fp8"].dtype == torch.float8_e4m3fn
    del out
    back = nbckpt.load(path)
    assert back["big"][-1] == 7 and back["big"][:10].sum() == 0
    np.testing.assert_array_equal(back["small"], small)
