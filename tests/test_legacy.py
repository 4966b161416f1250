"""torch's legacy formats: the pre-1.6 stream and the 0.1–0.3 tar archive.

- The byte literals of torch's own tests (py2.7/0.4.1 strings, a ``cuda:0``
  tensor, 0.3.1 storage slices) load as torch's tests expect, in NumPy terms.
- Real torch 2.13 writing ``_use_new_zipfile_serialization=False`` loads with
  equal values, dtypes, shapes, strides and sharing — also for the dtypes torch
  writes there but cannot read back itself.
- ``nbckpt.save(format="legacy")`` loads in real ``torch.load(weights_only=True)``.
- Checkpoints back to back in one stream, through BytesIO, a file and gzip.
- Tar checkpoints built from the format's description (:mod:`legacy_tar`),
  loaded safely (torch refuses ``weights_only`` for them).
- Python 2 strings, corrupt and hostile files, whole pickled modules.
"""

from __future__ import annotations

import collections
import gzip
import io
import pickle
import struct
import tarfile
import tracemalloc
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from torch._utils import _rebuild_tensor

import legacy_tar
import nbckpt
import nbckpt.backends
from legacy_tar import Global, PersistentId, Reduce, TarCheckpoint, dumps, storage_pid, stream_checkpoint

from conftest import assert_same_array

WEIGHTS_ONLY = pytest.mark.parametrize("weights_only", [True, False], ids=["safe", "full"])


def torch_legacy(obj) -> io.BytesIO:
    """``obj`` as real torch writes it with ``_use_new_zipfile_serialization=False``."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
    buf.seek(0)
    return buf


def load(data: bytes, **kwargs):
    return nbckpt.load(io.BytesIO(data), **kwargs)


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    from nbckpt.format import dtypes as torch_dtypes

    return torch_dtypes.by_torch_name(str(dtype).removeprefix("torch.")).numpy


def bits(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ComplexHalf support is experimental"
            flat = a.detach().contiguous().reshape(-1)
        return flat.view(torch.uint8).numpy().copy() if flat.numel() else np.empty(0, np.uint8)
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def assert_matches_tensor(array, tensor: torch.Tensor) -> None:
    """Same bits, dtype, shape and (element) strides."""
    assert type(array) is np.ndarray, type(array)
    assert array.dtype == numpy_dtype(tensor.dtype)
    assert array.shape == tuple(tensor.shape)
    np.testing.assert_array_equal(bits(array), bits(tensor))
    if array.size > 1:
        assert tuple(s // array.itemsize for s in array.strides) == tuple(tensor.stride())


def sample_tensor(dtype: torch.dtype, shape=(3, 4)) -> torch.Tensor:
    """Deterministic varied values of any dtype, made from raw bits (no NaN encodings)."""
    itemsize = dtype.itemsize
    n = int(np.prod(shape))
    raw = (np.arange(n * itemsize, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
    if dtype == torch.bool:
        raw %= 2
    elif dtype.is_floating_point and itemsize == 1:
        raw %= 100
    return torch.from_numpy(raw.copy()).view(dtype).reshape(shape)


# --------------------------------------------------------------------------------------
# 1. The byte literals of torch's test_serialization.py


# [b'\xc5\xbc\xc4\x85\xc4\x85\xc3\xb3\xc5\xbc\xc4\x85\xc5\xbc', torch.zeros(1), 2]
# saved by Python 2.7.12 and PyTorch 0.4.1 (_test_serialization).
PY2_UTF8_VECTOR = (
    b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.'
    b'\x80\x02}q\x01(U\x10protocol_versionq\x02M\xe9\x03U\n'
    b'type_sizesq\x03}q\x04(U\x03intq\x05K\x04U\x05shortq\x06K\x02U'
    b'\x04longq\x07K\x04uU\rlittle_endianq\x08\x88u.\x80\x02]q'
    b'\x01(U\x0e\xc5\xbc\xc4\x85\xc4\x85\xc3\xb3\xc5\xbc\xc4\x85'
    b'\xc5\xbcq\x02ctorch._utils\n_rebuild_tensor_v2\nq\x03((U'
    b'\x07storageq\x04ctorch\nFloatStorage\nq\x05U\x0845640624q'
    b'\x06U\x03cpuq\x07\x8a\x01\x01NtQK\x00K\x01\x85K\x01\x85'
    b'\x89NtRq\x08K\x02e.\x80\x02]q\x01U\x0845640624q\x02a.\x01\x00'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
)
UTF8_BYTES = b'\xc5\xbc\xc4\x85\xc4\x85\xc3\xb3\xc5\xbc\xc4\x85\xc5\xbc'

# torch.randn(2, device='cuda') (test_load_nonexistent_device).
CUDA_VECTOR = (
    b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9'
    b'\x03.\x80\x02}q\x00(X\x10\x00\x00\x00protocol_versionq'
    b'\x01M\xe9\x03X\r\x00\x00\x00little_endianq\x02\x88X\n'
    b'\x00\x00\x00type_sizesq\x03}q\x04(X\x05\x00\x00\x00shortq'
    b'\x05K\x02X\x03\x00\x00\x00intq\x06K\x04X\x04\x00\x00\x00'
    b'longq\x07K\x04uu.\x80\x02ctorch._utils\n_rebuild_tensor_v2'
    b'\nq\x00((X\x07\x00\x00\x00storageq\x01ctorch\nFloatStorage'
    b'\nq\x02X\x0e\x00\x00\x0094919395964320q\x03X\x06\x00\x00'
    b'\x00cuda:0q\x04K\x02Ntq\x05QK\x00K\x02\x85q\x06K\x01\x85q'
    b'\x07\x89Ntq\x08Rq\t.\x80\x02]q\x00X\x0e\x00\x00\x00'
    b'94919395964320q\x01a.\x02\x00\x00\x00\x00\x00\x00\x00\xbb'
    b'\x1f\x82\xbe\xea\x81\xd1>'
)

# t = torch.zeros(2); torch.save((t.storage()[:1], t.storage()[1:])) with PyTorch 0.3.1
# (test_serialization_storage_slice): two views of one root storage.
STORAGE_SLICE_VECTOR = (
    b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03'
    b'.\x80\x02}q\x00(X\n\x00\x00\x00type_sizesq\x01}q\x02(X\x03'
    b'\x00\x00\x00intq\x03K\x04X\x05\x00\x00\x00shortq\x04K\x02X'
    b'\x04\x00\x00\x00longq\x05K\x04uX\x10\x00\x00\x00protocol_versionq'
    b'\x06M\xe9\x03X\r\x00\x00\x00little_endianq\x07\x88u.\x80\x02'
    b'(X\x07\x00\x00\x00storageq\x00ctorch\nFloatStorage\nq\x01X\x0e'
    b'\x00\x00\x0094279043900432q\x02X\x03\x00\x00\x00cpuq\x03K\x02'
    b'X\x0e\x00\x00\x0094279029750368q\x04K\x00K\x01\x87q\x05tq\x06'
    b'Q(h\x00h\x01X\x0e\x00\x00\x0094279043900432q\x07h\x03K\x02X'
    b'\x0e\x00\x00\x0094279029750432q\x08K\x01K\x01\x87q\ttq\nQ'
    b'\x86q\x0b.\x80\x02]q\x00X\x0e\x00\x00\x0094279043900432q'
    b'\x01a.\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
    b'\x00\x00\x00\x00'
)


@WEIGHTS_ONLY
def test_py2_vector_utf8_decodes_to_str(weights_only):
    out = load(PY2_UTF8_VECTOR, weights_only=weights_only, encoding="utf-8")
    assert len(out) == 3 and out[2] == 2
    assert type(out[0]) is str and out[0] == UTF8_BYTES.decode("utf-8")
    assert_same_array(out[1], np.zeros(1, np.float32))


@WEIGHTS_ONLY
def test_py2_vector_bytes_keeps_bytes(weights_only):
    out = load(PY2_UTF8_VECTOR, weights_only=weights_only, encoding="bytes")
    assert type(out[0]) is bytes and out[0] == UTF8_BYTES
    assert_same_array(out[1], np.zeros(1, np.float32))
    assert out[2] == 2


@WEIGHTS_ONLY
def test_py2_vector_ascii_raises_unicode_decode_error(weights_only):
    with pytest.raises(UnicodeDecodeError):
        load(PY2_UTF8_VECTOR, weights_only=weights_only, encoding="ascii")


CUDA_VALUES = np.frombuffer(bytes.fromhex("bb1f82be ea81d13e"), dtype="<f4")


@pytest.mark.skipif(nbckpt.backends.gpu_count() > 0, reason="tests loading on a machine without a GPU")
@WEIGHTS_ONLY
def test_cuda_vector_without_gpu_raises_device_error(weights_only):
    with pytest.raises(nbckpt.DeviceError, match="map_location") as info:
        load(CUDA_VECTOR, weights_only=weights_only)
    assert isinstance(info.value, RuntimeError)
    assert "cuda:0" in str(info.value)


@pytest.mark.parametrize("map_location", ["cpu", {"cuda:0": "cpu"}], ids=["str", "dict"])
@WEIGHTS_ONLY
def test_cuda_vector_with_map_location_cpu(weights_only, map_location):
    out = load(CUDA_VECTOR, weights_only=weights_only, map_location=map_location)
    assert_same_array(out, CUDA_VALUES.astype(np.float32))


@WEIGHTS_ONLY
def test_storage_slice_vector_views_one_buffer(weights_only):
    s1, s2 = load(STORAGE_SLICE_VECTOR, weights_only=weights_only)
    for s in (s1, s2):
        assert_same_array(s, np.zeros(1, np.float32))
    assert s2.ctypes.data == s1.ctypes.data + 4
    assert np.shares_memory(s1.base, s2) and s1.base.nbytes == 8
    s1[0] = 3.0  # a view, not a copy: the root sees it
    assert s1.base.view(np.float32)[0] == 3.0 and s2[0] == 0.0


# --------------------------------------------------------------------------------------
# 2. torch -> nbckpt


CLASSIC_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
]
# torch writes these in the legacy format (through _rebuild_tensor_v3 and an
# UntypedStorage) but torch 2.13 cannot read them back; nbckpt can.
NEW_DTYPES = [
    torch.uint16, torch.uint32, torch.uint64, torch.float8_e5m2, torch.float8_e4m3fn,
    torch.float8_e5m2fnuz, torch.float8_e4m3fnuz, torch.float8_e8m0fnu, torch.complex32,
]


@WEIGHTS_ONLY
def test_module_state_dict_from_torch(weights_only):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4 * 4, 5), torch.nn.LayerNorm(5))
    for _ in range(3):
        model(torch.randn(2, 2, 6, 6))  # moves running stats and the int64 counter
    state = model.state_dict()
    out = nbckpt.load(torch_legacy(state), weights_only=weights_only)
    assert type(out) is collections.OrderedDict
    assert list(out) == list(state)
    for key, tensor in state.items():
        assert_matches_tensor(out[key], tensor)
    assert out["1.num_batches_tracked"].dtype == np.int64
    assert out["1.num_batches_tracked"].shape == () and int(out["1.num_batches_tracked"]) == 3
    assert out._metadata == state._metadata


@pytest.mark.parametrize("dtype", CLASSIC_DTYPES + NEW_DTYPES, ids=str)
@WEIGHTS_ONLY
def test_every_dtype_from_torch(dtype, weights_only):
    t = sample_tensor(dtype, (3, 4))
    obj = {"t": t, "scalar": t[1, 2], "column": t[:, 1], "empty": t[:0]}
    out = nbckpt.load(torch_legacy(obj), weights_only=weights_only)
    for key, tensor in obj.items():
        assert_matches_tensor(out[key], tensor)
    assert np.shares_memory(out["t"], out["column"]) and np.shares_memory(out["t"], out["scalar"])


@pytest.mark.parametrize("dtype", NEW_DTYPES, ids=str)
def test_new_dtypes_torch_cannot_read_but_nbckpt_can(dtype):
    """Port of test_serialization_dtype on the legacy format: x[0::2] and x[1::2] stay views."""
    x = sample_tensor(dtype, (8,))
    buf = torch_legacy([x, x[0::2], x[1::2]])
    with pytest.raises(AttributeError, match="UntypedStorage' has no attribute 'dtype'"):  # torch 2.13
        torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    out = nbckpt.load(buf)
    for array, tensor in zip(out, [x, x[0::2], x[1::2]]):
        assert_matches_tensor(array, tensor)
    assert np.shares_memory(out[0], out[1]) and np.shares_memory(out[0], out[2])
    out[0][...] = out[0][::-1].copy()
    np.testing.assert_array_equal(bits(out[1]), bits(out[0][0::2]))


@WEIGHTS_ONLY
def test_views_share_memory_as_in_torch(weights_only):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    other = torch.ones(4)
    views = {
        "base": base, "slice": base[1:4, 2:7], "transpose": base.t(),
        "strided": base.as_strided((3, 4), (7, 2), 5), "row": base[2], "scalar": base[3, 4],
        "flat": base.view(-1)[10:], "other": other, "other_rev": other.flip(0),
    }
    out = nbckpt.load(torch_legacy(views), weights_only=weights_only)
    for name, tensor in views.items():
        assert_matches_tensor(out[name], tensor)
    for name in ("slice", "transpose", "strided", "row", "scalar", "flat"):
        assert np.shares_memory(out["base"], out[name]), name
    assert not np.shares_memory(out["base"], out["other"])
    assert not np.shares_memory(out["other"], out["other_rev"])  # flip() copies in torch
    out["base"][3, 4] = -1.0
    assert out["scalar"] == -1.0 and out["transpose"][4, 3] == -1.0


@WEIGHTS_ONLY
def test_same_tensor_twice_is_one_array(weights_only):
    t = torch.randn(3)
    out = nbckpt.load(torch_legacy({"a": t, "b": [t, (t,)]}), weights_only=weights_only)
    assert out["a"] is out["b"][0] is out["b"][1][0]


@WEIGHTS_ONLY
def test_storages_saved_on_their_own(weights_only):
    t = torch.arange(10, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        typed = t.storage()
        obj = [typed, typed, t[2:5].storage(), t[2:5], t]
    out = nbckpt.load(torch_legacy(obj), weights_only=weights_only)
    # A typed storage loads as the 1-D array of its elements; the same storage once.
    assert_same_array(out[0], t.numpy())
    assert out[0] is out[1] and out[2] is out[0]
    assert np.shares_memory(out[0], out[3]) and np.shares_memory(out[0], out[4])
    assert out[3].ctypes.data == out[0].ctypes.data + 8


@WEIGHTS_ONLY
def test_untyped_storages_and_their_slices(weights_only):
    """torch writes them (as bytes) but cannot read them back from the legacy format."""
    t = torch.arange(10, dtype=torch.float32)
    untyped = t.untyped_storage()
    piece = untyped[8:20]  # a new storage over bytes 8..20: saved under its own key
    out = nbckpt.load(torch_legacy([untyped, piece, untyped]), weights_only=weights_only)
    assert_same_array(out[0], t.numpy().view(np.uint8))
    assert_same_array(out[1], t.numpy().view(np.uint8)[8:20])
    assert out[2] is out[0]
    assert out[1].view(np.float32).tolist() == [2.0, 3.0, 4.0]


@WEIGHTS_ONLY
def test_nested_containers_from_torch(weights_only):
    t = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    obj = {
        "list": [1, 2.5, "x", None, True, b"raw"],
        "tuple": (t, (t[1], {"deep": [t.t()]})),
        "od": collections.OrderedDict([("b", 1), ("a", t[0])]),
        "set": {1, 2, 3},
        "big": 2**80,
        "complex": 1 + 2j,
        "empty": {},
    }
    out = nbckpt.load(torch_legacy(obj), weights_only=weights_only)
    assert out["list"] == obj["list"] and out["set"] == {1, 2, 3}
    assert out["big"] == 2**80 and out["complex"] == 1 + 2j and out["empty"] == {}
    assert_matches_tensor(out["tuple"][0], t)
    assert_matches_tensor(out["tuple"][1][0], t[1])
    assert_matches_tensor(out["tuple"][1][1]["deep"][0], t.t())
    assert type(out["od"]) is collections.OrderedDict and list(out["od"]) == ["b", "a"]
    assert np.shares_memory(out["od"]["a"], out["tuple"][0])


class OldTensorBase:
    """torch's test_serialization_backwards_compat: tensors pickled as old torch did."""

    def __init__(self, new_tensor):
        self.new_tensor = new_tensor

    def __getstate__(self):
        t = self.new_tensor
        return (t.storage(), t.storage_offset(), tuple(t.size()), t.stride())


class OldTensorV1(OldTensorBase):
    def __reduce__(self):
        return (torch.Tensor, (), self.__getstate__())  # torch.Tensor() then BUILD


class OldTensorV2(OldTensorBase):
    def __reduce__(self):
        return (_rebuild_tensor, self.__getstate__())


@pytest.mark.parametrize("old_cls", [OldTensorV1, OldTensorV2], ids=["build", "rebuild_tensor"])
@WEIGHTS_ONLY
def test_old_tensor_pickles(old_cls, weights_only):
    x = torch.randn(30).as_strided([2, 3], [9, 3], 2)
    out = nbckpt.load(torch_legacy(old_cls(x)), weights_only=weights_only)
    assert_matches_tensor(out, x)
    assert out.base is not None and out.ctypes.data == out.base.ctypes.data + 2 * 4
    np.testing.assert_array_equal(out.base.view(np.float32), x.storage().tolist())


# --------------------------------------------------------------------------------------
# 3. nbckpt.save(format="legacy") -> torch


def numpy_sample(dtype: np.dtype, shape=(3, 4)) -> np.ndarray:
    n = int(np.prod(shape))
    raw = (np.arange(n * dtype.itemsize, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
    if dtype == np.bool_:
        raw %= 2
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", CLASSIC_DTYPES, ids=str)
def test_nbckpt_legacy_loads_in_torch(dtype):
    a = numpy_sample(numpy_dtype(dtype))
    obj = {"a": a, "aT": a.T, "row": a[1], "step": 3}
    buf = io.BytesIO()
    nbckpt.save(obj, buf, format="legacy")
    assert buf.getvalue().startswith(dumps(legacy_tar.MAGIC_NUMBER))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert out["step"] == 3
    for key in ("a", "aT", "row"):
        assert out[key].dtype == dtype
        assert_matches_tensor(obj[key], out[key])
    ptr = out["a"].untyped_storage().data_ptr()
    assert out["aT"].untyped_storage().data_ptr() == ptr == out["row"].untyped_storage().data_ptr()
    # nbckpt reads its own legacy files back, sharing included.
    buf.seek(0)
    again = nbckpt.load(buf)
    for key in ("a", "aT", "row"):
        assert_same_array(again[key], obj[key])
    assert np.shares_memory(again["a"], again["aT"]) and np.shares_memory(again["a"], again["row"])


def test_nbckpt_legacy_bfloat16_and_sharing_across_keys():
    w = np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)
    buf = io.BytesIO()
    nbckpt.save([w, w[:, 1:3], np.ones(2, np.float64), w], buf, format="legacy")
    out = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert out[0].dtype == torch.bfloat16 and out[0].float().tolist() == w.astype(np.float32).tolist()
    assert out[1].untyped_storage().data_ptr() == out[0].untyped_storage().data_ptr()
    assert out[1].storage_offset() == 1 and out[1].stride() == (4, 1)
    assert out[3] is out[0]
    assert out[2].dtype == torch.float64


@WEIGHTS_ONLY
def test_new_format_old_format_compat(tmp_path, weights_only):
    """Port of test_serialization_new_format_old_format_compat, both writers, both readers."""
    x = [np.ones((200, 200), np.float32) for _ in range(30)]
    xt = [torch.ones(200, 200) for _ in range(30)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nbckpt.save(x, tmp_path / "new.pt")
        nbckpt.save(x, tmp_path / "old.pt", format="legacy")
        torch.save(xt, tmp_path / "torch_new.pt", _use_new_zipfile_serialization=True)
        torch.save(xt, tmp_path / "torch_old.pt", _use_new_zipfile_serialization=False)
        loaded = {name: nbckpt.load(tmp_path / f"{name}.pt", weights_only=weights_only)
                  for name in ("new", "old", "torch_new", "torch_old")}
        by_torch = {name: torch.load(tmp_path / f"{name}.pt", weights_only=weights_only)
                    for name in ("new", "old")}
    assert [str(w.message) for w in caught] == []
    for name, arrays in loaded.items():
        assert len(arrays) == 30, name
        for array in arrays:
            assert_same_array(array, x[0])
    for name, tensors in by_torch.items():
        assert len(tensors) == 30 and all(torch.equal(t, xt[0]) for t in tensors), name
    assert len({a.ctypes.data for a in loaded["old"]}) == 30  # 30 arrays, not one


# --------------------------------------------------------------------------------------
# 4. Several checkpoints back to back in one stream


def write_sequence(f) -> tuple[list, list[int]]:
    """41, a torch checkpoint, 43, another, an nbckpt one; returns objects and end offsets."""
    torch.manual_seed(0)
    a, b = torch.randn(5, 5), {"w": torch.arange(7), "h": torch.ones(2, dtype=torch.float16)}
    c = {"n": np.arange(4, dtype=np.int16)}
    ends = []
    pickle.dump(41, f)
    ends.append(f.tell())
    torch.save(a, f, _use_new_zipfile_serialization=False)
    ends.append(f.tell())
    pickle.dump(43, f)
    ends.append(f.tell())
    torch.save(b, f, _use_new_zipfile_serialization=False)
    ends.append(f.tell())
    nbckpt.save(c, f, format="legacy")
    ends.append(f.tell())
    return [41, a, 43, b, c], ends


def check_sequence(f, expected, ends, weights_only) -> None:
    assert pickle.load(f) == 41 and f.tell() == ends[0]
    out = nbckpt.load(f, weights_only=weights_only)
    assert_matches_tensor(out, expected[1])
    assert f.tell() == ends[1]
    assert pickle.load(f) == 43 and f.tell() == ends[2]
    out = nbckpt.load(f, weights_only=weights_only)
    assert_matches_tensor(out["w"], expected[3]["w"])
    assert_matches_tensor(out["h"], expected[3]["h"])
    assert f.tell() == ends[3]
    out = nbckpt.load(f, weights_only=weights_only)
    assert_same_array(out["n"], expected[4]["n"])
    assert f.tell() == ends[4]
    assert f.read() == b""


@WEIGHTS_ONLY
def test_back_to_back_bytesio(weights_only):
    f = io.BytesIO()
    expected, ends = write_sequence(f)
    f.seek(0)
    check_sequence(f, expected, ends, weights_only)


@WEIGHTS_ONLY
def test_back_to_back_real_file(tmp_path, weights_only):
    with open(tmp_path / "seq.bin", "wb") as f:
        expected, ends = write_sequence(f)
    with open(tmp_path / "seq.bin", "rb") as f:
        check_sequence(f, expected, ends, weights_only)


@WEIGHTS_ONLY
def test_back_to_back_gzip(tmp_path, weights_only):
    with gzip.open(tmp_path / "seq.gz", "wb") as f:
        expected, ends = write_sequence(f)
    with gzip.open(tmp_path / "seq.gz", "rb") as f:
        check_sequence(f, expected, ends, weights_only)


def test_back_to_back_skip_data_keeps_the_position():
    f = io.BytesIO()
    expected, ends = write_sequence(f)
    f.seek(ends[0])
    out = nbckpt.load(f, skip_data=True)
    assert out.shape == (5, 5) and out.dtype == np.float32 and f.tell() == ends[1]
    assert pickle.load(f) == 43


# --------------------------------------------------------------------------------------
# 5. The tar format (torch 0.1 to 0.3)


def backwards_compat_fixture(*, py2: bool = False) -> tuple[bytes, list]:
    """The equivalent of torch's legacy_serialized.pt, and the values it holds.

    ``a = [arange(1+i, 26+i).view(5,5).float() for i in range(2)]``,
    ``b = [a[i % 2] for i in range(4)] + [a[0].storage(), a[0].reshape(-1)[1:4].clone().storage()]``.
    """
    a = [np.arange(1 + i, 26 + i, dtype=np.float32).reshape(5, 5) for i in range(2)]
    expected = [a[i % 2] for i in range(4)] + [a[0].reshape(-1), a[0].reshape(-1)[1:4].copy()]
    ckpt = TarCheckpoint(py2=py2)
    roots = [ckpt.storage(a[0]), ckpt.storage(a[1])]
    clone = ckpt.storage(expected[5])
    tensors = [ckpt.tensor(root, (5, 5), (5, 1)) for root in roots]
    obj = [tensors[i % 2] for i in range(4)] + [roots[0], clone]
    return ckpt.build(obj), expected


@pytest.mark.parametrize("source", ["path", "bytesio"])
@pytest.mark.parametrize("py2", [False, True], ids=["py3", "py2"])
@WEIGHTS_ONLY
def test_backwards_compat_tar(tmp_path, source, py2, weights_only):
    """Port of test_serialization_backwards_compat: nbckpt also loads it with weights_only=True."""
    data, expected = backwards_compat_fixture(py2=py2)
    path = tmp_path / "legacy_serialized.pt"
    path.write_bytes(data)
    c = nbckpt.load(path if source == "path" else io.BytesIO(data), weights_only=weights_only)
    assert len(c) == 6
    for got, want in zip(c, expected):
        assert_same_array(got, want)
    assert c[0] is c[2] and c[1] is c[3]
    assert np.shares_memory(c[4], c[0]) and not np.shares_memory(c[5], c[0])
    c[0].fill(10)
    assert (c[2] == 10).all() and (c[4] == 10).all()
    c[1].fill(20)
    assert (c[3] == 20).all() and (c[0] == 10).all()


def test_backwards_compat_tar_agrees_with_torch(tmp_path):
    data, expected = backwards_compat_fixture()
    path = tmp_path / "legacy_serialized.pt"
    path.write_bytes(data)
    with pytest.raises(RuntimeError, match="legacy .tar format"):
        torch.load(path, weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.load(path, weights_only=False)
    ours = nbckpt.load(path)
    assert [type(t).__name__ for t in theirs] == ["Tensor"] * 4 + ["TypedStorage"] * 2
    for got, want in zip(ours[:4], theirs[:4]):
        assert_matches_tensor(got, want)
    for got, want in zip(ours[4:], theirs[4:]):
        assert got.tolist() == want.tolist()


@WEIGHTS_ONLY
def test_tar_storage_views(weights_only):
    ckpt = TarCheckpoint()
    root = ckpt.storage(np.arange(8, dtype=np.int64))
    view = ckpt.view(root, 2, 3)
    on_view = ckpt.tensor(view, (2,), (1,), offset=1, tensor_type=Global("torch", "LongTensor"))
    out = load(ckpt.build([root, view, view, on_view]), weights_only=weights_only)
    assert_same_array(out[1], np.array([2, 3, 4], np.int64))
    assert out[1] is out[2]
    assert out[1].ctypes.data == out[0].ctypes.data + 2 * 8
    assert_same_array(out[3], np.array([3, 4], np.int64))
    out[0][3] = -1  # a view of the root, not a copy
    assert out[1][1] == -1 and out[3][0] == -1


@WEIGHTS_ONLY
def test_tar_every_storage_type(weights_only):
    ckpt = TarCheckpoint()
    arrays = [numpy_sample(np.dtype(d), (5,)) for d in legacy_tar.STORAGE_TYPES]
    out = load(ckpt.build([ckpt.storage(a) for a in arrays]), weights_only=weights_only)
    for got, want in zip(out, arrays):
        assert_same_array(got, want)


@pytest.mark.skipif(nbckpt.backends.gpu_count() > 0, reason="tests loading on a machine without a GPU")
def test_tar_cuda_storage_needs_map_location():
    ckpt = TarCheckpoint()
    root = ckpt.storage(np.arange(3, dtype=np.float32), location="cuda:0")
    data = ckpt.build([ckpt.tensor(root, (3,), (1,))])
    with pytest.raises(nbckpt.DeviceError, match="map_location"):
        load(data)
    assert_same_array(load(data, map_location="cpu")[0], np.arange(3, dtype=np.float32))


def hostile_tar(member: str) -> bytes:
    """A tar checkpoint naming ``legacy_tar.canary`` in one of its members."""
    ckpt = TarCheckpoint()
    evil = Reduce(Global("legacy_tar", "canary"), (member,))
    root = ckpt.storage(np.arange(3, dtype=np.float32))
    tensor_type = evil if member == "tensors" else Global("torch", "FloatTensor")
    tensor = ckpt.tensor(root, (3,), (1,), tensor_type=tensor_type)
    obj = [tensor, evil] if member == "pickle" else [tensor]
    members = ckpt.members(obj)
    if member == "storages":
        storages = bytearray(dumps(1))
        storages += dumps((TarCheckpoint.key_of(root), "cpu", evil))
        storages += struct.pack("<q", 3) + np.arange(3, dtype=np.float32).tobytes() + dumps([])
        members["storages"] = bytes(storages)
    return legacy_tar.tar_bytes(members)


@pytest.mark.parametrize("member", ["pickle", "tensors", "storages"])
def test_tar_hostile_global_is_refused_and_nothing_runs(member):
    legacy_tar.CANARY_CALLS.clear()
    data = hostile_tar(member)
    with pytest.raises(nbckpt.UnpicklingError) as info:
        load(data, weights_only=True)
    assert info.value.global_name == "legacy_tar.canary"
    assert legacy_tar.CANARY_CALLS == []


def test_tar_hostile_global_runs_with_weights_only_false():
    """The canary is live: weights_only=False runs the file's pickle (once)."""
    legacy_tar.CANARY_CALLS.clear()
    out = load(hostile_tar("pickle"), weights_only=False)
    assert out[1] == "canary ran" and legacy_tar.CANARY_CALLS == [("pickle",)]
    legacy_tar.CANARY_CALLS.clear()


def test_tar_module_class_with_weights_only_false():
    ckpt = TarCheckpoint()
    pid = PersistentId((Global("torch.nn.modules.linear", "Linear"), "linear.py", "class Linear: ..."))
    out = load(ckpt.build([pid]), weights_only=False)
    assert out == [torch.nn.Linear]


def test_tar_module_class_with_weights_only_true_is_refused():
    ckpt = TarCheckpoint()
    pid = PersistentId((Global("torch.nn.modules.linear", "Linear"), "linear.py", "class Linear: ..."))
    with pytest.raises(nbckpt.UnpicklingError):
        load(ckpt.build([pid]), weights_only=True)


# --------------------------------------------------------------------------------------
# 6. Python 2 strings


def py2_stream() -> bytes:
    """A py2-style stream checkpoint: every str a SHORT_BINSTRING, some not ASCII."""
    data = np.arange(3, dtype=np.float32).tobytes()
    tensor = Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                    (storage_pid("FloatStorage", b"140", 3, location=b"cpu"), 0, (3,), (1,), False,
                     Reduce(Global("collections", "OrderedDict"), ())))
    obj = {b"name": UTF8_BYTES, b"weight": tensor, b"ascii": b"plain"}
    return stream_checkpoint(obj, {"140": data}, py2=True)


@pytest.mark.parametrize("encoding", ["latin1", "utf-8", "bytes"])
@WEIGHTS_ONLY
def test_py2_strings(encoding, weights_only):
    out = load(py2_stream(), encoding=encoding, weights_only=weights_only)
    key = (lambda s: s.encode()) if encoding == "bytes" else (lambda s: s)
    expected_name = UTF8_BYTES if encoding == "bytes" else UTF8_BYTES.decode(encoding)
    assert out[key("name")] == expected_name and type(out[key("name")]) is type(expected_name)
    assert out[key("ascii")] == key("plain")
    assert_same_array(out[key("weight")], np.arange(3, dtype=np.float32))


@WEIGHTS_ONLY
def test_py2_strings_ascii_raises(weights_only):
    with pytest.raises(UnicodeDecodeError):
        load(py2_stream(), encoding="ascii", weights_only=weights_only)


@WEIGHTS_ONLY
def test_py2_tar_with_bytes_encoding(weights_only):
    data, expected = backwards_compat_fixture(py2=True)
    out = load(data, encoding="bytes", weights_only=weights_only)
    for got, want in zip(out, expected):
        assert_same_array(got, want)


# --------------------------------------------------------------------------------------
# 7. Corrupt files


def small_legacy() -> bytes:
    return torch_legacy({"w": torch.arange(3, dtype=torch.float32)}).getvalue()


@WEIGHTS_ONLY
def test_truncated_stream_at_every_offset(weights_only):
    data = small_legacy()
    assert_same_array(load(data)["w"], np.arange(3, dtype=np.float32))
    for k in range(len(data)):
        with pytest.raises(nbckpt.FormatError):
            load(data[:k], weights_only=weights_only)


def _tar_regions():
    data, _ = backwards_compat_fixture()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    headers = [k for m in members for k in range(m.offset, m.offset_data, 7)]
    datas = [k for m in members for k in range(m.offset_data, m.offset_data + 512, 5)]
    return data, headers, datas, members[-1].offset_data + 512


def test_truncated_tar_inside_a_header():
    data, headers, _, _ = _tar_regions()
    for k in headers:
        with pytest.raises(nbckpt.FormatError):
            load(data[:k])


def test_truncated_tar_inside_member_data():
    data, _, datas, complete = _tar_regions()
    for k in datas:
        try:
            out = load(data[:k])
        except nbckpt.FormatError:
            continue
        assert k >= complete and len(out) == 6  # only the end-of-archive padding was cut


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, (old, data.count(old))
    return data.replace(old, new)


def test_wrong_protocol_version():
    data = replace_once(small_legacy(), b"\x80\x02M\xe9\x03.", b"\x80\x02M\xea\x03.")
    with pytest.raises(nbckpt.FormatError, match="protocol version 1002"):
        load(data)


def test_not_a_checkpoint():
    with pytest.raises(nbckpt.FormatError, match="not a torch checkpoint"):
        load(pickle.dumps([1, 2, 3], protocol=2))


def float_tensor(key: str, numel: int, size: int | None = None, view=None):
    size = numel if size is None else size
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                  (storage_pid("FloatStorage", key, numel, view=view), 0, (size,), (1,), False,
                   Reduce(Global("collections", "OrderedDict"), ())))


FOUR_FLOATS = np.arange(4, dtype=np.float32).tobytes()


def test_hand_built_stream_loads():
    """The builder writes what the loader reads (the corrupt variants below change one thing)."""
    data = stream_checkpoint([float_tensor("7", 4)], {"7": FOUR_FLOATS})
    assert_same_array(load(data)[0], np.arange(4, dtype=np.float32))
    assert torch.load(io.BytesIO(data), weights_only=True)[0].tolist() == [0, 1, 2, 3]


def test_storage_size_disagrees_with_the_pickle():
    data = stream_checkpoint([float_tensor("7", 4)], {"7": FOUR_FLOATS}, numels={"7": 3})
    with pytest.raises(nbckpt.FormatError, match="wrong size"):
        load(data)


def test_storage_listed_but_unused():
    data = stream_checkpoint([float_tensor("7", 4)], {"7": FOUR_FLOATS, "8": FOUR_FLOATS})
    with pytest.raises(nbckpt.FormatError, match="listed but no object uses it"):
        load(data)


def test_storage_used_but_missing():
    data = stream_checkpoint([float_tensor("7", 4), float_tensor("8", 4)], {"7": FOUR_FLOATS}, keys=["7"])
    with pytest.raises(nbckpt.FormatError, match="missing"):
        load(data)


def test_array_larger_than_its_storage():
    data = stream_checkpoint([float_tensor("7", 4, size=5)], {"7": FOUR_FLOATS})
    with pytest.raises(nbckpt.FormatError, match="needs 20 bytes"):
        load(data)


def test_storage_view_metadata():
    view = ("v", 1, 2)  # (view key, offset, size) in elements of the root storage
    obj = [float_tensor("7", 4, size=2, view=view), storage_pid("FloatStorage", "7", 4, view=view)]
    data = stream_checkpoint(obj, {"7": FOUR_FLOATS})
    out = load(data)
    assert_same_array(out[1], np.array([1, 2], np.float32))
    assert np.shares_memory(out[0], out[1]) and out[0].ctypes.data == out[1].ctypes.data
    bad = stream_checkpoint([float_tensor("7", 4, size=1, view=("v", 3, 2))], {"7": FOUR_FLOATS})
    with pytest.raises(nbckpt.FormatError, match="covers elements 3 to 5"):
        load(bad)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


HUGE = 2**26  # 256 MiB of float32: allocatable, so an eager allocation would show


def test_stream_data_claiming_more_than_the_file_holds():
    data = stream_checkpoint([float_tensor("7", HUGE, size=4)], {"7": FOUR_FLOATS}, numels={"7": HUGE})

    def run():
        with pytest.raises(nbckpt.FormatError, match="declares 268435456 bytes.*truncated or lies"):
            load(data)

    assert _peak_bytes(run) < 16 * 2**20


def test_tar_data_claiming_more_than_the_file_holds():
    ckpt = TarCheckpoint()
    root = ckpt.storage(np.arange(4, dtype=np.float32), numel=HUGE)
    data = ckpt.build([ckpt.tensor(root, (4,), (1,))])

    def run():
        with pytest.raises(nbckpt.FormatError, match="declares 268435456 bytes.*truncated or lies"):
            load(data)

    assert _peak_bytes(run) < 16 * 2**20


def test_tar_without_a_member():
    ckpt = TarCheckpoint()
    members = ckpt.members([])
    del members["tensors"]
    with pytest.raises(nbckpt.FormatError, match="no 'tensors' member"):
        load(legacy_tar.tar_bytes(members))


def test_tar_pickle_naming_an_unknown_object():
    ckpt = TarCheckpoint()
    with pytest.raises(nbckpt.FormatError, match="does not hold"):
        load(ckpt.build([ckpt.pid(12345)]))


@pytest.mark.parametrize("mmap", [True, "r", "c"])
def test_mmap_on_a_legacy_file_needs_the_zip_format(tmp_path, mmap):
    (tmp_path / "stream.pt").write_bytes(small_legacy())
    (tmp_path / "tar.pt").write_bytes(backwards_compat_fixture()[0])
    for name in ("stream.pt", "tar.pt"):
        with pytest.raises(ValueError, match="mmap can only be used with zip checkpoints"):
            nbckpt.load(tmp_path / name, mmap=mmap)


# --------------------------------------------------------------------------------------
# 8. Files that pickle a whole module


def module_file() -> tuple[torch.nn.Module, bytes]:
    torch.manual_seed(0)
    module = torch.nn.Conv2d(1, 1, (1, 3))
    return module, torch_legacy(module).getvalue()


def test_whole_module_refused_with_weights_only_true():
    _, data = module_file()
    with pytest.raises(nbckpt.UnpicklingError) as info:
        load(data)
    assert info.value.global_name == "torch.nn.modules.conv.Conv2d"


def test_whole_module_explained_once_its_class_is_allowed():
    _, data = module_file()
    with nbckpt.safe_globals([torch.nn.Conv2d]):
        with pytest.raises(nbckpt.UnpicklingError, match="pickles a whole torch.nn.Module"):
            load(data)


def test_whole_module_first_error_says_so():
    _, data = module_file()
    with pytest.raises(nbckpt.UnpicklingError, match="whole torch.nn.Module"):
        load(data)


def test_hand_built_module_persistent_id():
    pid = PersistentId(("module", Global("torch.nn.modules.linear", "Linear"), "linear.py", "source"))
    data = stream_checkpoint([pid], {})
    with nbckpt.safe_globals([torch.nn.Linear]):
        with pytest.raises(nbckpt.UnpicklingError, match="pickles a whole torch.nn.Module"):
            load(data)
    assert load(data, weights_only=False) == [torch.nn.Linear]


def test_whole_module_with_weights_only_false():
    module, data = module_file()
    out = load(data, weights_only=False)
    assert type(out) is torch.nn.Conv2d and out.kernel_size == (1, 3)
    # nbckpt's arrays take the place of torch's parameters.
    np.testing.assert_array_equal(np.asarray(out._parameters["weight"]), module.weight.detach().numpy())
    np.testing.assert_array_equal(np.asarray(out._parameters["bias"]), module.bias.detach().numpy())


class Scaled:
    """A user class whose ``__setstate__`` looks at its array (as torch code does)."""

    def __init__(self, weight):
        self.weight = weight
        self.rows = weight.shape[0]

    def __getstate__(self):
        return {"weight": self.weight}

    def __setstate__(self, state):
        self.weight = state["weight"]
        self.rows = state["weight"].shape[0]


def test_weights_only_false_runs_the_pickle_once_on_real_arrays():
    out = nbckpt.load(torch_legacy(Scaled(torch.ones(3, 2))), weights_only=False)
    assert out.rows == 3 and isinstance(out.weight, np.ndarray)


def test_weights_only_false_side_effects_run_once():
    legacy_tar.CANARY_CALLS.clear()
    data = stream_checkpoint([Reduce(Global("legacy_tar", "canary"), ("stream",)), float_tensor("7", 4)],
                             {"7": FOUR_FLOATS})
    try:
        out = load(data, weights_only=False)
        assert out[0] == "canary ran"
        assert legacy_tar.CANARY_CALLS == [("stream",)]
    finally:
        legacy_tar.CANARY_CALLS.clear()
