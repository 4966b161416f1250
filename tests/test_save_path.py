"""The fast paths of a save give the bytes of the plain ones, and a save visits each object once.

A save of many small arrays takes three shortcuts (issue 16): the storage
planner plans an array that owns its memory without a group
(``StoragePlanner._add_own``), the pickler writes an array from pieces cached
per dtype once the globals are memoized (``CheckpointPickler._save_array``),
and the zip writer copies a small record with its header and descriptor into
one buffer (the small-record branch of ``ZipWriter.write_record``). Each is checked here against the path
it short-cuts (and, for the pickle, against ``torch.save`` itself) on inputs
large enough to take it: more than 256 memo slots, views that arrive before and
after the array they view, arrays and scalars met twice.
"""

from __future__ import annotations

import collections
import io
import subprocess
import sys
import tracemalloc
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbckpt
from nbckpt.format import container
from nbckpt.format.container import ZipWriter, _serialization_id
from nbckpt.pickling.storages import StoragePlanner
from nbckpt.pickling.writer import CheckpointPickler, SavePlan


def pickle_bytes(obj, *, fast: bool, legacy: bool = False, monkeypatch=None) -> bytes:
    """data.pkl of ``obj``, with the cached-pieces array path on or off."""
    saved = CheckpointPickler.fast_arrays
    CheckpointPickler.fast_arrays = fast
    try:
        return CheckpointPickler(SavePlan.build(obj), legacy=legacy).dumps(obj)
    finally:
        CheckpointPickler.fast_arrays = saved


def zip_bytes(obj) -> bytes:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    return buf.getvalue()


def mixed_arrays(n: int = 150):
    """``n`` arrays of several dtypes (v2 and v3 storages), shapes and sharing, as NumPy
    arrays and as torch tensors over the same memory, in the same order."""
    rng = np.random.default_rng(0)
    arrays, tensors = {}, {}
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    tbase = torch.from_numpy(base)
    for i in range(n):
        kind = i % 6
        if kind == 0:
            a = rng.standard_normal(5).astype(np.float32)
            t = torch.from_numpy(a)
        elif kind == 1:
            a = np.arange(i, dtype=np.int64).reshape(-1, 1) if i else np.zeros((0, 1), np.int64)
            t = torch.from_numpy(a)
        elif kind == 2:
            a = np.full((2, 3), i, np.uint16)  # torch writes uint16 with _rebuild_tensor_v3
            t = torch.from_numpy(a)
        elif kind == 3:
            a = np.full(4, i, np.float32).astype(ml_dtypes.bfloat16)
            t = torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
        elif kind == 4:  # views of one base, some before the base itself
            a, t = (base.T, tbase.t()) if i % 12 == 4 else (base[i % 6], tbase[i % 6])
        else:
            a = np.array(float(i))  # 0-d
            t = torch.from_numpy(a)
        arrays[f"k{i}"], tensors[f"k{i}"] = a, t
    arrays["base"], tensors["base"] = base, tbase
    arrays["again"], tensors["again"] = arrays["k0"], tensors["k0"]  # one object twice
    return arrays, tensors


def test_many_arrays_data_pkl_identical_to_torch():
    """Past the first 256 memo slots (where the cached pieces take over), torch's bytes."""
    arrays, tensors = mixed_arrays()
    buf = io.BytesIO()
    torch.save(tensors, buf)
    tb, nb = buf.getvalue(), zip_bytes(arrays)
    zt, zn = zipfile.ZipFile(io.BytesIO(tb)), zipfile.ZipFile(io.BytesIO(nb))
    assert zt.read("archive/data.pkl") == zn.read("archive/data.pkl")
    assert [(i.filename, i.header_offset, i.file_size, i.CRC) for i in zt.infolist()][:-1] == \
           [(i.filename, i.header_offset, i.file_size, i.CRC) for i in zn.infolist()][:-1]
    out = torch.load(io.BytesIO(nb), weights_only=True)
    assert out["again"] is out["k0"]
    assert out["k4"].untyped_storage().data_ptr() == out["base"].untyped_storage().data_ptr()
    for key, tensor in tensors.items():
        assert torch.equal(out[key], tensor), key


def test_legacy_pickle_fast_and_opcode_by_opcode_agree():
    arrays, _ = mixed_arrays()
    assert pickle_bytes(arrays, fast=True, legacy=True) == pickle_bytes(arrays, fast=False, legacy=True)


_leaf_arrays = st.sampled_from([np.float32, np.int64, np.uint16, np.float16, np.bool_]).flatmap(
    lambda dtype: st.lists(st.integers(0, 5), min_size=0, max_size=3).map(
        lambda shape: np.ones(shape, dtype)))


@st.composite
def save_trees(draw):
    """Nested lists/dicts/tuples of arrays, scalars and strings, with repeats, views of one
    base in any order, and enough arrays to pass the first 256 memo slots."""
    pool = draw(st.lists(_leaf_arrays, min_size=1, max_size=8))
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    pool += [base, base.T, base[1], base[2:4, ::3], np.float32(2.5), np.int64(3), "shared"]
    leaves = st.sampled_from(pool) | st.integers(-300, 70000) | st.none() | st.text(max_size=3)
    tree = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=5),
        max_leaves=20,
    )
    order = draw(st.permutations(range(len(pool))))
    filler = [np.full(3, i, np.float32) for i in range(60)]  # 60 arrays: about 400 memo slots
    return {"filler": filler, "mixed": draw(tree), "pool": [pool[i] for i in order]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(save_trees(), st.booleans())
def test_fast_pickle_equals_opcode_by_opcode(obj, legacy):
    assert pickle_bytes(obj, fast=True, legacy=legacy) == pickle_bytes(obj, fast=False, legacy=legacy)


def test_views_before_and_after_the_array_they_view_share_one_storage():
    """An array planned on its own (it owns its memory) joins the group of a later view."""
    for make in (lambda w: [w, w.T, w[1]], lambda w: [w.T, w, w[1]], lambda w: [w[1], w]):
        w = np.arange(12, dtype=np.float32).reshape(3, 4)
        arrays = make(w)
        plan = StoragePlanner()
        views = [plan.add(a) for a in arrays]
        plan.finish()
        assert len({id(v.storage) for v in views}) == 1
        assert views[0].storage.numel == 12 and views[0].storage.shared
        out = nbckpt.load(io.BytesIO(zip_bytes(arrays)))
        for a, b in zip(arrays, out):
            np.testing.assert_array_equal(a, b)
            assert np.shares_memory(b, out[0])


def test_an_array_alone_is_its_own_storage_without_a_copy():
    w = np.arange(6, dtype=np.int16).reshape(2, 3)
    plan = StoragePlanner()
    view = plan.add(w)
    plan.finish()
    assert (view.offset, view.shape, view.strides) == (0, (2, 3), (3, 1))
    assert np.shares_memory(view.storage.data, w) and not view.storage.shared
    assert view.storage.host_bytes().tobytes() == w.tobytes()


def test_a_dtype_conflict_with_an_array_planned_alone_is_still_refused():
    f = np.arange(8, dtype=np.float32)
    with pytest.raises(ValueError, match="view the same data as different types"):
        SavePlan.build([f, f[2:].view(np.int32)])


# -- each object visited once ----------------------------------------------------------------


def laughs(kind: str, depth: int):
    """``depth`` levels, each holding the level below twice: 2**depth paths to the bottom."""
    v: object = [np.zeros(1, np.float32), 0]
    for _ in range(depth):
        v = {"l": v, "r": v} if kind == "dict" else (v, v) if kind == "tuple" else [v, v]
    return v


@pytest.mark.parametrize("kind", ["list", "dict", "tuple"])
def test_shared_subtrees_are_walked_and_pickled_once(kind, monkeypatch):
    calls = collections.Counter()
    for cls, name in ((SavePlan, "_walk"), (CheckpointPickler, "_save")):
        original = getattr(cls, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)
    obj = laughs(kind, 18)  # 262,144 paths: the old walk made a call for each
    data = zip_bytes(obj)
    assert calls["_walk"] < 200 and calls["_save"] < 200, calls
    assert len(data) < 20_000
    out = nbckpt.load(io.BytesIO(data))
    for _ in range(18):
        left, right = (out["l"], out["r"]) if kind == "dict" else (out[0], out[1])
        assert left is right
        out = left


def test_billion_laughs_saves_at_once():
    """The issue's case, in a child process with a time limit (it hung before)."""
    code = (
        "import io, nbckpt\n"
        "v = [0]\n"
        "for _ in range(30):\n"
        "    v = [v, v]\n"
        "buf = io.BytesIO()\n"
        "nbckpt.save(v, buf)\n"
        "out = nbckpt.load(io.BytesIO(buf.getvalue()))\n"
        "assert out[0] is out[1]\n"
        "print(len(buf.getvalue()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 10_000


def test_nesting_deeper_than_the_recursion_limit_is_a_value_error():
    v: object = np.zeros(1)
    for _ in range(100_000):
        v = [v]
    with pytest.raises(ValueError, match="nested too deeply to save"):
        nbckpt.save(v, io.BytesIO())


def test_a_tuple_that_contains_itself_is_refused_with_its_place():
    inner: list = []
    t = (1, inner)
    inner.append(t)
    with pytest.raises(ValueError, match=r"cannot save the tuple at obj\['x'\]\[1\]\[0\]: it contains itself"):
        SavePlan.build({"x": t})


def test_the_place_of_an_unsupported_object_is_named_through_every_kind_of_container():
    od = collections.OrderedDict(a=1)
    od.extra = [object()]
    with pytest.raises(TypeError, match=r"of type builtins\.object at obj\[2\]\['k'\]\.extra\[0\]: "):
        SavePlan.build([1, 2, {"k": od}])
    with pytest.raises(TypeError, match=r"cannot save a dict key of type builtins\.object in obj\[0\]: keys"):
        SavePlan.build([{object(): 1}])
    with pytest.raises(TypeError, match=r"cannot save the array at obj\['s'\]\[1\]: dtype <U1"):
        SavePlan.build({"s": (np.zeros(1), np.array(["x"]))})


# -- the zip writer ------------------------------------------------------------------------------


def write_archive(records, write=None) -> bytes:
    out = io.BytesIO()
    writer = ZipWriter(write or out.write, "archive")
    for name, data in records:
        writer.write_record(name, data)
    writer.close()
    return out.getvalue()


def some_records():
    rng = np.random.default_rng(1)
    records = [(f"data/{i}", rng.integers(0, 255, size=int(n), dtype=np.uint8))
               for i, n in enumerate(rng.integers(1, 3000, size=800))]
    records.insert(5, ("empty", b""))
    records.insert(400, ("big", np.arange(300_000, dtype=np.float32)))  # 1.2 MB: the other path
    records.insert(9, ("f32", np.arange(50, dtype=np.float32).reshape(5, 10)))
    return records


def test_small_records_written_like_the_general_path(monkeypatch):
    records = some_records()
    fast = write_archive(records)
    monkeypatch.setattr(container, "_SMALL_RECORD", 0)  # every record through the general path
    assert write_archive(records) == fast
    z = zipfile.ZipFile(io.BytesIO(fast))
    assert z.testzip() is None
    for name, data in records:
        assert z.read(f"archive/{name}") == memoryview(data).cast("B").tobytes()
    infos = z.infolist()
    expected = _serialization_id([i.filename.encode() for i in infos[:-1]], [i.CRC for i in infos[:-1]])
    assert z.read("archive/.data/serialization_id") == expected


def test_a_write_target_may_keep_the_buffers_it_is_given():
    records = some_records()
    kept: list = []
    assert write_archive(records, write=kept.append) == b""  # everything went to ``kept``
    assert b"".join(bytes(chunk) for chunk in kept) == write_archive(records)


# -- memory ------------------------------------------------------------------------------------


def test_the_plan_and_pickle_of_many_small_arrays_take_little_memory():
    """Python objects per array: about 5 kB before issue 16, now a few hundred bytes."""
    arrays = {f"layer{i}.weight": np.ones(100, np.float32) for i in range(5000)}
    tracemalloc.start()
    try:
        plan = SavePlan.build(arrays)
        pickler = CheckpointPickler(plan)
        data = pickler.dumps(arrays)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) < 5000 * 120
    assert peak / len(arrays) < 800, peak / len(arrays)


def test_the_place_of_an_unsaveable_value_names_a_huge_key_without_failing():
    import io

    with pytest.raises(TypeError, match=r"at obj\[<int of 16610 bits: 0x[0-9a-f]+…>\]") as info:
        nbckpt.save({10**5000: object()}, io.BytesIO())
    assert len(str(info.value)) < 1000
    with pytest.raises(TypeError, match=r"at obj\['ab'\]"):
        nbckpt.save({"ab": object()}, io.BytesIO())
