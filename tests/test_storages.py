"""Storage planning: which arrays become one storage record, and what survives a load.

Covers ``nbckpt.pickling.storages.StoragePlanner`` directly and through
``nbckpt.save``/``nbckpt.load``: views of one buffer become one record spanning
exactly the bytes they cover and share memory again after loading; arrays torch
cannot describe as views are written as copies; overlapping views of different
dtypes are refused; and torch itself reads the planned offsets, strides and
storage sharing back.
"""

from __future__ import annotations

import io
import itertools
import warnings
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

import nbckpt
from nbckpt.format import dtypes as torch_dtypes
from nbckpt.pickling.storages import DTYPE_CONFLICT_MESSAGE, StoragePlanner

from conftest import SAVEABLE_DTYPES, assert_same_array

CONFLICT = "Cannot save multiple arrays or storages that view the same data as different types"

DTYPES = SAVEABLE_DTYPES  # (NumPy dtype, torch dtype name), from conftest


# -- helpers -------------------------------------------------------------------------------


def save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    return buf.getvalue()


def load_bytes(raw: bytes, **kwargs):
    return nbckpt.load(io.BytesIO(raw), **kwargs)


def torch_load(raw: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 is "experimental" in torch
        return torch.load(io.BytesIO(raw), weights_only=True)


def data_records(raw: bytes) -> dict[str, int]:
    """``{"data/0": size in bytes, ...}`` of a checkpoint's storage records."""
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        records = {}
        for info in zf.infolist():
            name = info.filename.split("/", 1)[1]
            if name.startswith("data/"):
                records[name] = info.file_size
        return records


def owner(array: np.ndarray):
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def sharing(arrays) -> list[tuple[int, int, bool]]:
    return [
        (i, j, bool(np.shares_memory(arrays[i], arrays[j])))
        for i, j in itertools.combinations(range(len(arrays)), 2)
    ]


def assert_same_layout(loaded, originals) -> None:
    """Same values, shapes, strides and byte layout relative to one buffer.

    All loaded arrays must view one buffer, at the same byte distances from
    each other as the originals, with the same strides: aliasing is then
    exactly the original's.
    """
    assert len(loaded) == len(originals)
    for out, arr in zip(loaded, originals):
        assert_same_array(out, arr)
        assert out.strides == arr.strides
    assert sharing(loaded) == sharing(originals)
    owners = {id(owner(out)) for out in loaded}
    assert len(owners) == 1, "the loaded arrays do not view one buffer"
    offsets = [address(out) - address(loaded[0]) for out in loaded]
    assert offsets == [address(arr) - address(originals[0]) for arr in originals]


def assert_write_through(loaded, originals, dtype=np.float32) -> None:
    """Writing through any view changes exactly what it changed before saving."""
    for i, arr in enumerate(originals):
        if not arr.flags.writeable or arr.size == 0:
            continue
        value = np.array(1000 + i).astype(dtype)
        arr[...] = value
        loaded[i][...] = value
        for out, ref in zip(loaded, originals):
            np.testing.assert_array_equal(out, ref)


def view_cases():
    """(id, arrays, marks): arrays that all view one float32 buffer."""

    def base():
        return np.arange(24, dtype=np.float32)

    b = base()
    yield "slices", [b, b[2:7], b[5:20:3], b[::4], b[20:]], ()
    b = base()
    m = b.reshape(4, 6)
    yield "transposes", [m, m.T, m[:, 1:4].T, m[1:3, ::2].T], ()
    b = base()
    yield "reshape_views", [b.reshape(2, 3, 4), b[6:18].reshape(3, 4), b.reshape(4, 6)[1:].reshape(18)], ()
    b = base()
    m = b.reshape(4, 6)
    yield "zero_dim", [b[5:6].reshape(()), m[2, 3, ...], b[1:9], m[3, 5, ...]], ()
    b = base()
    yield "stride_zero", [
        np.broadcast_to(b[4:8], (3, 4)),
        np.ndarray((5, 2), np.float32, buffer=b, offset=8, strides=(0, 4)),
        b[3:9],
        b[:, None][2:5],
    ], ()
    b = base()
    yield "ndarray_with_offset", [
        np.ndarray((3, 3), np.float32, buffer=b, offset=12, strides=(16, 4)),
        np.ndarray((2, 2, 2), np.float32, buffer=b, offset=20, strides=(24, 4, 8)),
        b[10:14],
    ], ()
    b = base()
    yield "disjoint_views", [b[:3], b[10:12], b[20:]], ()
    as_strided = np.lib.stride_tricks.as_strided
    b = base()
    yield "as_strided_with_offset", [
        b,
        as_strided(b[3:], shape=(3, 3), strides=(8, 4)),
        as_strided(b[10:], shape=(4, 2), strides=(0, 4)),
    ], ()
    b = base()
    yield "sliding_window_view", [
        b[4:12],
        np.lib.stride_tricks.sliding_window_view(b[4:12], 3),
    ], ()

VIEW_CASES = [pytest.param(arrays, id=name, marks=marks) for name, arrays, marks in view_cases()]


# -- views of one base ---------------------------------------------------------------------


@pytest.mark.parametrize("arrays", VIEW_CASES)
def test_views_of_one_base_are_one_storage_and_share_after_load(arrays):
    raw = save_bytes(arrays)
    assert len(data_records(raw)) == 1
    loaded = load_bytes(raw)
    assert type(loaded) is list
    assert_same_layout(loaded, arrays)
    assert_write_through(loaded, arrays)


def test_disjoint_views_are_one_storage_but_do_not_share():
    b = np.arange(24, dtype=np.float32)
    loaded = load_bytes(save_bytes([b[:3], b[10:12], b[20:]]))
    assert [np.shares_memory(x, y) for x, y in itertools.combinations(loaded, 2)] == [False] * 3
    assert owner(loaded[0]) is owner(loaded[1]) is owner(loaded[2])
    loaded[0][...] = -1
    np.testing.assert_array_equal(loaded[1], [10, 11])
    np.testing.assert_array_equal(loaded[2], [20, 21, 22, 23])


def test_views_in_a_nested_structure_share_across_containers():
    b = np.arange(12, dtype=np.int64).reshape(3, 4)
    other = np.arange(5, dtype=np.int64)
    obj = {"w": b, "layers": [b.T, {"row": b[1]}], "t": (other, b[:, 2]), "o": other[1:]}
    raw = save_bytes(obj)
    assert len(data_records(raw)) == 2
    out = load_bytes(raw)
    flat = [out["w"], out["layers"][0], out["layers"][1]["row"], out["t"][1]]
    assert_same_layout(flat, [b, b.T, b[1], b[:, 2]])
    assert np.shares_memory(out["t"][0], out["o"])
    assert not np.shares_memory(out["t"][0], out["w"])
    out["layers"][0][2, 1] = 99  # b.T[2, 1] is b[1, 2]
    assert out["w"][1, 2] == 99 and out["layers"][1]["row"][2] == 99 and out["t"][1][1] == 99


def test_loaded_views_can_be_saved_again_with_the_same_layout():
    b = np.arange(30, dtype=np.float64)
    arrays = [b[3:20].reshape(17), b[5:17].reshape(3, 4).T, b[10:11].reshape(())]
    once = load_bytes(save_bytes(arrays))
    raw = save_bytes(once)
    assert len(data_records(raw)) == 1
    assert data_records(raw)["data/0"] == 17 * 8
    assert_same_layout(load_bytes(raw), arrays)


# -- storage size --------------------------------------------------------------------------


def test_a_slice_of_a_big_array_writes_only_the_slice():
    big = np.arange(1_000_000, dtype=np.float64)
    raw = save_bytes(big[:5])
    assert data_records(raw) == {"data/0": 5 * 8}
    assert len(raw) < 2_000
    assert_same_array(load_bytes(raw), big[:5])


@pytest.mark.parametrize(
    "make, elements",
    [
        (lambda big: [big[-5:]], 5),
        (lambda big: [big[10:20:3]], 10),  # elements 10, 13, 16, 19
        (lambda big: [big.reshape(1000, 1000)[:2, :3]], 1003),
        (lambda big: [big.reshape(1000, 1000)[5:7, 10:12].T], 1002),
        (lambda big: [big[:5], big[100:105]], 105),
        (lambda big: [big[7:8].reshape(())], 1),
        (lambda big: [np.broadcast_to(big[42:44], (1000, 2))], 2),
    ],
    ids=["tail", "strided", "2d_corner", "2d_transposed", "two_slices", "0d", "broadcast"],
)
def test_storage_spans_exactly_the_covered_bytes(make, elements):
    big = np.arange(1_000_000, dtype=np.float32)
    arrays = make(big)
    raw = save_bytes(arrays)
    assert data_records(raw) == {"data/0": elements * 4}
    assert_same_layout(load_bytes(raw), arrays)


def test_as_strided_stride_zero_view_writes_one_element():
    x = np.arange(10, dtype=np.float32)
    view = np.lib.stride_tricks.as_strided(x[3:], shape=(1000,), strides=(0,))
    raw = save_bytes(view)
    assert data_records(raw) == {"data/0": 4}
    out = load_bytes(raw)
    assert_same_array(out, view)
    assert out.strides == (0,)


# -- identity ------------------------------------------------------------------------------


def test_the_same_array_twice_loads_as_one_object():
    a = np.arange(5, dtype=np.float32)
    v = a[1:4]
    s = np.float64(2.5)
    raw = save_bytes([a, a, {"again": a}, (v, v), s, s])
    assert len(data_records(raw)) == 2  # a (with v) and the scalar
    out = load_bytes(raw)
    assert out[0] is out[1] is out[2]["again"]
    assert out[3][0] is out[3][1]
    assert out[4] is out[5]
    assert_same_array(out[4], np.array(2.5))
    out[0][2] = -7
    assert out[3][0][1] == -7


def test_equal_but_distinct_arrays_load_distinct_and_not_sharing():
    a = np.arange(5, dtype=np.float32)
    b = a.copy()
    raw = save_bytes([a, b])
    assert data_records(raw) == {"data/0": 20, "data/1": 20}
    out = load_bytes(raw)
    assert out[0] is not out[1]
    assert not np.shares_memory(out[0], out[1])
    assert_same_array(out[0], a)
    assert_same_array(out[1], b)
    out[0][0] = 9
    assert out[1][0] == 0


def test_distinct_view_objects_of_the_same_region_load_distinct_but_sharing():
    base = np.arange(8, dtype=np.int32)
    v1, v2 = base[2:6], base[2:6]
    assert v1 is not v2
    raw = save_bytes([v1, v2])
    assert data_records(raw) == {"data/0": 16}
    out = load_bytes(raw)
    assert out[0] is not out[1]
    assert address(out[0]) == address(out[1])
    out[0][1] = -3
    assert out[1][1] == -3


def test_records_are_numbered_in_the_order_the_pickle_first_uses_them():
    x = np.arange(2, dtype=np.float32)
    y = np.arange(3, dtype=np.float64)
    z = np.arange(4, dtype=np.int16)
    raw = save_bytes({"y": y, "x": x, "x2": x[1:], "z": z, "y2": y[::2]})
    assert data_records(raw) == {"data/0": 24, "data/1": 8, "data/2": 8}


# -- copies --------------------------------------------------------------------------------


def test_negative_strides_are_saved_as_c_ordered_copies():
    base = np.arange(24, dtype=np.float32)
    m = base.reshape(4, 6)
    arrays = [base[2:10], base[::-1], m[::-1, ::2], m[1:3, ::-2].T]
    raw = save_bytes(arrays)
    assert sorted(data_records(raw).values()) == sorted([8 * 4, 24 * 4, 12 * 4, 6 * 4])
    out = load_bytes(raw)
    for loaded, arr in zip(out, arrays):
        assert_same_array(loaded, arr)
    assert out[1].strides == (4,)
    assert out[2].strides == (12, 4)
    assert out[3].strides == (8, 4)
    for x, y in itertools.combinations(out, 2):
        assert not np.shares_memory(x, y)


def test_strides_not_a_multiple_of_the_itemsize_are_copied():
    records = np.zeros(5, dtype=[("flag", "u1"), ("value", "<f4")])  # packed: 5-byte records
    records["value"] = np.arange(5) + 0.5
    records["flag"] = 7
    column = np.ndarray((5,), dtype="<f4", buffer=records, offset=1, strides=(5,))
    raw_bytes = np.arange(40, dtype=np.uint8)
    odd = np.ndarray((4, 3), dtype="<i2", buffer=raw_bytes, offset=1, strides=(9, 3))
    flags = records["flag"]  # stride 5 is a multiple of 1: a view, not a copy
    raw = save_bytes([column, odd, flags])
    assert sorted(data_records(raw).values()) == [5 * 4, 4 * 5 + 1, 12 * 2]
    out = load_bytes(raw)
    assert_same_array(out[0], np.arange(5, dtype=np.float32) + 0.5)
    assert out[0].strides == (4,)
    assert_same_array(out[1], odd)
    assert out[1].strides == (6, 2)
    assert_same_array(out[2], np.full(5, 7, np.uint8))
    assert out[2].strides == (5,)


def test_unaligned_fields_with_itemsize_strides_share_one_storage():
    # 12-byte records: u1, f4 at 1, f4 at 5, 3 x u1 -- both f4 fields have stride 12
    # (a multiple of 4) and the same byte phase: torch can describe them as views.
    dt = np.dtype({"names": ["a", "x", "y", "pad"], "formats": ["u1", "<f4", "<f4", "3u1"],
                   "offsets": [0, 1, 5, 9], "itemsize": 12})
    rec = np.zeros(4, dtype=dt)
    rec["x"] = [1.5, 2.5, 3.5, 4.5]
    rec["y"] = [-1, -2, -3, -4]
    x, y = rec["x"], rec["y"]
    assert x.strides == (12,) and address(x) % 4 == 1
    raw = save_bytes([x, y])
    assert data_records(raw) == {"data/0": (3 * 12 + 8)}
    out = load_bytes(raw)
    assert_same_layout(out, [x, y])
    assert not np.shares_memory(out[0], out[1])


@pytest.mark.parametrize("code", [">f4", ">f8", ">f2", ">i2", ">i4", ">i8", ">u2", ">u4", ">u8", ">c8", ">c16"])
def test_non_native_byte_order_is_copied_in_native_order(code):
    be = (np.arange(12) * 3 - 7).astype(code).reshape(3, 4)
    if be.dtype.kind == "c":
        be = be + 1j * np.arange(12).reshape(3, 4).astype(code)
        be = be.astype(code)
    assert not be.dtype.isnative
    arrays = [be, be[:, 1], be.T]
    raw = save_bytes(arrays)
    assert sorted(data_records(raw).values()) == sorted(
        [12 * be.itemsize, 3 * be.itemsize, 12 * be.itemsize]
    )
    out = load_bytes(raw)
    native = be.dtype.newbyteorder("=")
    for loaded, arr in zip(out, arrays):
        assert loaded.dtype == native and loaded.dtype.isnative
        assert_same_array(loaded, arr.astype(native))
        assert loaded.flags.c_contiguous
    tensors = torch_load(raw)
    np.testing.assert_array_equal(tensors[0].numpy(), be.astype(native))
    np.testing.assert_array_equal(tensors[2].numpy(), be.T.astype(native))


# -- dtype conflicts -----------------------------------------------------------------------


def _conflicts():
    c = np.arange(4, dtype=np.complex128) * (1 + 2j)
    yield "complex_and_imag", [c, c.imag]
    c = np.arange(4, dtype=np.complex128)
    yield "complex_and_real", [c.real, c]
    f = np.arange(8, dtype=np.float32)
    yield "float_and_bytes", [f, f.view(np.uint8)]
    f = np.arange(8, dtype=np.float32)
    yield "bytes_and_float", [f.view(np.uint8), f]
    f = np.arange(8, dtype=np.float32)
    yield "partial_overlap", [f[2:6], f.view(np.uint8)[10:12]]
    f = np.arange(8, dtype=np.float32)
    yield "same_itemsize", [f[:4], f.view(np.int32)[3:]]
    f = np.arange(8, dtype=np.float32)
    yield "nested", {"a": {"w": f.reshape(2, 4)}, "b": [f.view(ml_dtypes.bfloat16)[3:5]]}
    f = np.arange(8, dtype=np.float32)
    as_strided = np.lib.stride_tricks.as_strided
    yield "as_strided", [f, as_strided(f.view(np.int32)[2:], shape=(2, 2), strides=(0, 4))]
    raw = bytes(range(32))
    yield "frombuffer_bytes", [np.frombuffer(raw, np.int64), np.frombuffer(raw, np.int64)[1:].view(np.int16)]


@pytest.mark.parametrize("obj", [pytest.param(o, id=n) for n, o in _conflicts()])
def test_overlapping_views_of_different_dtypes_are_refused(obj):
    buf = io.BytesIO()
    with pytest.raises(ValueError, match=CONFLICT) as info:
        nbckpt.save(obj, buf)
    assert DTYPE_CONFLICT_MESSAGE == CONFLICT
    assert "copy" in str(info.value)
    assert buf.getvalue() == b""  # refused before the first byte


def test_dtype_conflict_leaves_no_file(tmp_path):
    f = np.arange(8, dtype=np.float32)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(ValueError, match=CONFLICT):
        nbckpt.save([f, f.view(np.uint8)], path)
    assert list(tmp_path.iterdir()) == []


def test_dtype_conflict_error_names_both_dtypes():
    c = np.arange(4, dtype=np.complex128)
    with pytest.raises(ValueError, match=r"complex128 and float64"):
        save_bytes([c, c.imag])


def test_non_overlapping_views_of_different_dtypes_are_fine():
    f = np.arange(16, dtype=np.float32)
    a = f[:4]
    b = f.view(np.uint8)[16:32]  # bytes of f[4:8]
    c = f[8:].view(np.int32)
    raw = save_bytes([a, b, c])
    assert sorted(data_records(raw).values()) == [16, 16, 32]
    out = load_bytes(raw)
    for loaded, arr in zip(out, [a, b, c]):
        assert_same_array(loaded, arr)
    for x, y in itertools.combinations(out, 2):
        assert not np.shares_memory(x, y)


def test_interleaved_views_of_different_dtypes_that_share_no_byte_are_fine():
    f = np.arange(16, dtype=np.float32)
    evens = f[::2]
    odds = f.view(np.int32)[1::2]
    assert not np.shares_memory(evens, odds)
    out = load_bytes(save_bytes([evens, odds]))
    assert_same_array(out[0], evens)
    assert_same_array(out[1], odds)


def test_same_dtype_different_byte_phase_is_stored_twice_with_correct_values():
    # float32 views at byte offsets 0 and 2 of one buffer: no element offset
    # expresses both, so each gets a storage of its own (and no conflict).
    raw_bytes = np.arange(24, dtype=np.uint8)
    a = raw_bytes[0:16].view(np.float32)
    b = raw_bytes[2:18].view(np.float32)
    assert np.shares_memory(a, b)
    raw = save_bytes([a, b])
    assert data_records(raw) == {"data/0": 16, "data/1": 16}
    out = load_bytes(raw)
    assert_same_array(out[0], a)
    assert_same_array(out[1], b)


@pytest.mark.parametrize("dtype, name", DTYPES, ids=[n for _, n in DTYPES])
def test_save_different_dtype_unallocated(dtype, name):
    # Port of torch's test_save_different_dtype_unallocated: empty arrays never conflict.
    a = np.empty(0, dtype=dtype)
    for other, other_name in DTYPES:
        b = np.empty(0, dtype=other)
        for pair in ([a, b], [a, a.view(other)], [b, a]):
            raw = save_bytes(pair)
            assert sorted(data_records(raw).values()) == [0, 0]
            out = load_bytes(raw)
            for loaded, arr in zip(out, pair):
                assert_same_array(loaded, arr)
            tensors = torch_load(raw)
            assert [t.dtype for t in tensors] == [
                getattr(torch, torch_dtypes.for_numpy(x.dtype).name) for x in pair
            ]
            assert [tuple(t.shape) for t in tensors] == [(0,), (0,)]
        assert getattr(torch, other_name) == getattr(torch, torch_dtypes.for_numpy(b.dtype).name)


def test_empty_views_of_a_non_empty_buffer_never_conflict():
    f = np.arange(8, dtype=np.float32)
    arrays = [f, f[3:3].view(np.uint8), f.view(np.complex64)[2:2], f[5:5], f.reshape(2, 4)[:, 4:]]
    raw = save_bytes(arrays)
    assert sorted(data_records(raw).values()) == [0, 0, 0, 0, 32]
    out = load_bytes(raw)
    for loaded, arr in zip(out, arrays):
        assert_same_array(loaded, arr)
    assert out[4].shape == (2, 0)


# -- memory owners -------------------------------------------------------------------------


def test_frombuffer_of_bytes_is_saved_and_loads_writable():
    data = bytes(range(64))
    fb = np.frombuffer(data, dtype=np.uint16)
    assert not fb.flags.writeable and owner(fb) is data
    arrays = [fb[2:10], fb[6:20:2], fb.reshape(4, 8).T[1:3]]
    raw = save_bytes(arrays)
    # fb[2:10], fb[6:19:2] and columns 1-2 of the 4 x 8 rows span elements 1..26
    assert data_records(raw) == {"data/0": (26 - 1 + 1) * 2}
    out = load_bytes(raw)
    assert_same_layout(out, arrays)
    assert all(x.flags.writeable for x in out)
    out[0][4] = 60000  # fb[6]
    assert out[1][0] == 60000
    assert data == bytes(range(64))


def test_frombuffer_of_bytes_alone():
    data = bytes(range(1, 33))
    fb = np.frombuffer(data, dtype="<f8")
    out = load_bytes(save_bytes({"x": fb, "y": fb[1:3]}))
    assert_same_array(out["x"], fb)
    assert np.shares_memory(out["x"], out["y"])
    assert address(out["y"]) - address(out["x"]) == 8


def test_memmap_views_are_saved_as_one_storage(tmp_path):
    path = tmp_path / "m.bin"
    m = np.memmap(path, dtype=np.float32, mode="w+", shape=(10,))
    m[:] = np.arange(10)
    m.flush()
    arrays = [m[2:5], m[4:8], m[::3]]
    raw = save_bytes(arrays)
    assert data_records(raw) == {"data/0": 40}
    out = load_bytes(raw)
    assert_same_layout(out, arrays)
    m[:] = -1  # the loaded arrays are independent of the file
    m.flush()
    np.testing.assert_array_equal(out[1], [4, 5, 6, 7])
    del m


def test_read_only_memmap_with_offset(tmp_path):
    path = tmp_path / "m.bin"
    np.arange(16, dtype=np.int32).tofile(path)
    m = np.memmap(path, dtype=np.int32, mode="r", offset=8, shape=(3, 4))
    arrays = [m, m[1:, 1:3], m.T]
    raw = save_bytes(arrays)
    assert data_records(raw) == {"data/0": 48}
    out = load_bytes(raw)
    assert_same_layout(out, arrays)
    np.testing.assert_array_equal(out[0], np.arange(2, 14).reshape(3, 4))
    del m


def test_fortran_ordered_arrays_keep_their_layout():
    f = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    arrays = [f, f[:, 1:3], f.T, f[1]]
    raw = save_bytes(arrays)
    assert data_records(raw) == {"data/0": 96}
    out = load_bytes(raw)
    assert_same_layout(out, arrays)
    assert out[0].flags.f_contiguous and not out[0].flags.c_contiguous
    assert out[0].strides == (8, 24)
    out[2][3, 0] = -1  # f[0, 3]
    assert out[0][0, 3] == -1 and out[1].shape == (3, 2)


def test_fortran_ordered_3d_array_alone_and_a_view_of_it():
    f = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    out = load_bytes(save_bytes(f))
    assert_same_array(out, f)
    assert out.strides == f.strides == (2, 4, 12)
    sub = f[:, 1:, ::2]
    out = load_bytes(save_bytes([sub]))
    assert_same_array(out[0], sub)
    assert out[0].strides == sub.strides


# -- the planner directly ------------------------------------------------------------------


def storage_bytes(storage) -> bytes:
    """The bytes a planned storage writes to its record."""
    data = np.ascontiguousarray(storage.data).reshape(-1).view(np.uint8)
    assert data.size == storage.nbytes
    return data.tobytes()


def test_planner_views_offsets_and_strides():
    base = np.arange(10, dtype=np.float32)
    plan = StoragePlanner()
    a, b = plan.add(base[2:6]), plan.add(base[4:9:2])
    assert a.storage is None  # not before finish()
    plan.finish()
    assert a.storage is b.storage
    assert (a.offset, a.shape, a.strides) == (0, (4,), (1,))
    assert (b.offset, b.shape, b.strides) == (2, (3,), (2,))
    storage = a.storage
    assert (storage.numel, storage.nbytes, storage.location, storage.dtype.name) == (7, 28, "cpu", "float32")
    assert storage_bytes(storage) == np.arange(2, 9, dtype=np.float32).tobytes()
    assert np.shares_memory(storage.data, base)  # a view of the owner, not a copy


def test_planner_same_object_returns_the_same_view_and_finish_is_idempotent():
    base = np.arange(12, dtype=np.int64).reshape(3, 4)
    t = base.T
    plan = StoragePlanner()
    first = plan.add(t)
    assert plan.add(t) is first
    other = plan.add(base[1])
    plan.finish()
    storage = first.storage
    plan.finish()
    assert first.storage is storage is other.storage
    assert (first.offset, first.strides) == (0, (1, 4))
    assert (other.offset, other.strides) == (4, (1,))
    assert storage.numel == 12


def test_planner_single_contiguous_array_uses_its_own_memory():
    base = np.arange(20, dtype=np.float16)
    view = base[5:9]
    plan = StoragePlanner()
    planned = plan.add(view)
    plan.finish()
    assert planned.storage.numel == 4
    assert address(planned.storage.data) == address(view)


def test_planner_copies_with_contiguous_strides():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    plan = StoragePlanner()
    neg = plan.add(base[::-1, 1:])
    swapped = plan.add(base.astype(">f4")[:, ::2])
    plan.finish()
    assert (neg.offset, neg.shape, neg.strides, neg.storage.numel) == (0, (3, 3), (3, 1), 9)
    assert storage_bytes(neg.storage) == base[::-1, 1:].tobytes()
    assert not np.shares_memory(neg.storage.data, base)
    assert (swapped.strides, swapped.storage.numel) == ((2, 1), 6)
    assert storage_bytes(swapped.storage) == base[:, ::2].astype("=f4").tobytes()  # native order
    assert neg.storage is not swapped.storage


@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0, 3), (3, 4, 0), (1, 0)])
def test_planner_empty_arrays_get_an_empty_storage_with_torch_strides(shape):
    base = np.zeros(24, dtype=np.float64)
    plan = StoragePlanner()
    a = plan.add(base[:0].reshape(shape))
    b = plan.add(np.empty(shape, np.float64))
    plan.finish()
    assert a.storage is not b.storage
    assert a.storage.numel == 0 and a.storage.data.size == 0
    assert a.strides == tuple(torch.empty(shape).stride())
    assert a.offset == 0


def test_planner_reports_dtype_conflicts_in_finish():
    f = np.arange(8, dtype=np.float32)
    plan = StoragePlanner()
    plan.add(f)
    plan.add(f.view(np.uint8))
    with pytest.raises(ValueError, match=CONFLICT):
        plan.finish()


@pytest.mark.parametrize("dtype", ["U3", "S4", "O", [("a", "<f4"), ("b", "<f4")], "datetime64[s]", "m8[ns]", "V4"])
def test_planner_rejects_dtypes_torch_lacks(dtype):
    array = np.zeros(3, dtype=dtype)
    plan = StoragePlanner()
    with pytest.raises(TypeError, match="has no torch equivalent"):
        plan.add(array)
    with pytest.raises(TypeError, match=r"cannot save the array at obj\['x'\]"):
        save_bytes({"x": array})


# -- torch reads the plan ------------------------------------------------------------------


def torch_bits(t: torch.Tensor) -> np.ndarray:
    """The bytes of each element of ``t``, read from its storage with its strides."""
    k = t.element_size()
    storage = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy()
    elements = np.ndarray(tuple(t.shape), dtype=f"V{k}", buffer=storage,
                          offset=t.storage_offset() * k, strides=tuple(s * k for s in t.stride()))
    return np.ascontiguousarray(elements).view(np.uint8).reshape(tuple(t.shape) + (k,))


def copied(a: np.ndarray) -> bool:
    """Whether the planner documents ``a`` as written as a copy of its own."""
    return not a.dtype.isnative or any(s < 0 or s % a.itemsize for s in a.strides)


def numpy_bits(a: np.ndarray) -> np.ndarray:
    k = a.dtype.itemsize
    return np.ascontiguousarray(a).view(np.uint8).reshape(a.shape + (k,))


def torch_cases():
    for name, arrays, marks in view_cases():
        yield pytest.param(arrays, id=name, marks=marks)

    base = np.arange(24, dtype=np.float32)
    yield pytest.param([base[2:10], base[::-1], base[5:9]], id="with_copy")
    fb = np.frombuffer(bytes(range(64)), dtype=np.uint16)
    yield pytest.param([fb[2:10], fb[6:20:2], fb.reshape(4, 8).T], id="frombuffer")
    f = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    yield pytest.param([f, f[:, 1:3], f.T, f[1]], id="fortran")
    u = np.arange(20, dtype=np.uint32)
    yield pytest.param([u[3:9], u[5:17:4], np.arange(3, dtype=np.uint32)], id="uint32_v3")
    c = np.zeros(6, nbckpt.complex32)
    c["real"] = np.arange(6)
    yield pytest.param([c, c[1::2]], id="complex32")
    bf = np.arange(12).astype(ml_dtypes.bfloat16).reshape(3, 4)
    yield pytest.param([bf.T, bf[1:, 2:]], id="bfloat16")
    x = np.arange(10, dtype=np.int8)
    yield pytest.param([x[2:5], np.empty(0, np.int8), x[2:2], x[4:7]], id="with_empty")


@pytest.mark.parametrize("arrays", list(torch_cases()))
def test_torch_reads_the_planned_offsets_strides_and_storages(arrays):
    plan = StoragePlanner()
    planned = [plan.add(a) for a in arrays]
    plan.finish()
    raw = save_bytes(arrays)
    tensors = torch_load(raw)
    assert len(tensors) == len(arrays)
    for t, a, p in zip(tensors, arrays, planned):
        assert tuple(t.shape) == a.shape
        assert t.dtype == getattr(torch, p.storage.dtype.name)
        assert t.stride() == p.strides
        assert t.storage_offset() == p.offset
        assert t.untyped_storage().nbytes() == p.storage.nbytes
        np.testing.assert_array_equal(torch_bits(t), numpy_bits(a))
    nonempty = [i for i, a in enumerate(arrays) if a.size]
    for i, j in itertools.combinations(nonempty, 2):
        same_ptr = tensors[i].untyped_storage().data_ptr() == tensors[j].untyped_storage().data_ptr()
        assert same_ptr == (planned[i].storage is planned[j].storage), (i, j)
        if np.shares_memory(arrays[i], arrays[j]) and not (copied(arrays[i]) or copied(arrays[j])):
            assert same_ptr, (i, j)

    # Writes through torch tensors land where writes through nbckpt's arrays do.
    loaded = load_bytes(raw)
    for i, (t, out) in enumerate(zip(tensors, loaded)):
        if out.size == 0 or out.dtype != np.float32 or any(
            s == 0 and n > 1 for s, n in zip(t.stride(), t.shape)
        ):
            continue
        t.fill_(500 + i)
        out[...] = 500 + i
        for t2, out2 in zip(tensors, loaded):
            np.testing.assert_array_equal(t2.numpy(), out2)


@pytest.mark.parametrize("arrays", [pytest.param(a, id=n, marks=m) for n, a, m in view_cases()])
def test_torch_sees_one_storage_where_numpy_viewed_one_base(arrays):
    tensors = torch_load(save_bytes(arrays))
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    for t, a in zip(tensors, arrays):
        assert t.stride() == tuple(s // a.itemsize for s in a.strides)


def test_views_through_a_memoryview_share_memory_and_conflict():
    """np.asarray(memoryview(x)) views x's memory: sharing and the dtype check both see it."""
    x = np.arange(6, dtype=np.float32)
    y = np.asarray(memoryview(x))[2:]
    out = load_bytes(save_bytes([x, y]))
    assert np.shares_memory(out[0], out[1])
    with pytest.raises(ValueError, match="Cannot save multiple arrays or storages"):
        save_bytes([x, np.asarray(memoryview(x)).view(np.uint8)])
