"""The fast path for flat dicts of tensors against the VM: same result or same error type, always.

``load_flat_dict`` either returns None (not recognised: the VM runs) or must
give exactly what :class:`SafeUnpickler` gives on the same pickle: the same
dict (keys, order, type), the same arrays (dtype, shape, strides, bytes, and
which of them are the same object), or an error of the same type. Checked on
files written by torch and by nbckpt, on hypothesis-generated state dicts, on
opcode-level mutations of them (the fuzzer's mutators), on the hostile corpus,
and on hand-made near misses of the grammar.
"""

from __future__ import annotations

import collections
import dataclasses
import io
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbckpt
from fuzz_script import fuzz
from nbckpt.devices import DeviceMap
from nbckpt.errors import CheckpointError, FormatError
from nbckpt.format.checkpoint import open_zip_checkpoint
from nbckpt.materialize import ZipMaterializer, ZipSource
from nbckpt.pickling import run as run_module
from nbckpt.pickling.fastpath import load_flat_dict
from nbckpt.pickling.rebuild import Rebuilder
from nbckpt.pickling.unpickler import SafeUnpickler

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "attacks"
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])




# -- the two readings ----------------------------------------------------------------------------


def _describe(value, ids: dict) -> object:
    """Everything observable about a loaded value; the same object twice is described as such."""
    if id(value) in ids:
        return ("same as", ids[id(value)])
    ids[id(value)] = len(ids)
    if isinstance(value, np.ndarray):
        # The root buffer and where the view sits in it (a view may span terabytes with stride 0).
        root = value
        while isinstance(root.base, np.ndarray):
            root = root.base
        where = value.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        raw = root.reshape(-1).view(np.uint8).tobytes() if root.size and root.flags.c_contiguous else None
        return ("array", value.dtype.str, value.dtype.name, value.shape, value.strides, where, root.nbytes, raw)
    if isinstance(value, dict):
        return (type(value).__name__, [(k, _describe(v, ids)) for k, v in value.items()])
    return ("other", type(value).__name__, repr(value))


def _rebuilder(checkpoint, read_ahead: bool = False) -> Rebuilder:
    source = ZipSource(checkpoint.reader, read_ahead=read_ahead)
    return Rebuilder(ZipMaterializer(source, DeviceMap.parse(None), byteorder=checkpoint.byteorder))


def outcome(checkpoint, pkl: bytes, *, fast: bool, read_ahead: bool = False):
    """("fallback",), ("ok", description) or ("error", exception type).

    ``read_ahead`` lets the materializer read small records in blocks (what a load
    of a path does; the fast path then reads all storages in one batch).
    """
    rebuilder = _rebuilder(checkpoint, read_ahead)
    try:
        if fast:
            result = load_flat_dict(pkl, rebuilder)
            if result is None:
                return ("fallback",)
        else:
            result = SafeUnpickler(pkl, rebuilder).load()
    except Exception as err:  # noqa: BLE001 - the type is what is compared
        return ("error", type(err))
    return ("ok", _describe(result, {}))


def assert_same(checkpoint, pkl: bytes) -> tuple:
    """The fast path falls back, or agrees with the VM; returns the fast path's outcome.

    Both with exact reads per record and with records read in blocks (batched).
    """
    fast = outcome(checkpoint, pkl, fast=True)
    assert outcome(checkpoint, pkl, fast=True, read_ahead=True) == fast
    if fast != ("fallback",):
        assert fast == outcome(checkpoint, pkl, fast=False)
    return fast


def _checkpoint(data: bytes):
    return open_zip_checkpoint(io.BytesIO(data))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _nbckpt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    return buf.getvalue()


def _state() -> dict:
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {"w": w, "wT": w.t(), "row": w[1], "b": torch.ones(2, dtype=torch.bfloat16),
            "u": torch.arange(3).to(torch.uint16), "big": torch.arange(70000, dtype=torch.int32),
            "tied": w, "e": torch.empty(0, 3), "s": torch.tensor(2.5, dtype=torch.float64)}


BASES = {
    "torch": _torch_bytes(_state()),
    "torch_ordered": _torch_bytes(collections.OrderedDict(_state())),
    "torch_grad": _torch_bytes({"p": torch.ones(2, requires_grad=True).detach().requires_grad_()}),
    "nbckpt": _nbckpt_bytes({"a": np.arange(6.0).reshape(2, 3), "h": np.ones(4, ml_dtypes.bfloat16),
                             "v": np.arange(10, dtype=np.int16)[::3], "u": np.arange(3, dtype=np.uint32)}),
    "many": _nbckpt_bytes({f"k{i}": np.full(2, i, np.float32) for i in range(1100)}),  # two batches
    "single": _torch_bytes({"only": torch.zeros(1)}),  # SETITEM, not SETITEMS
    "empty": _torch_bytes({}),
}


# -- recognised files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BASES))
def test_torch_and_nbckpt_files_take_the_fast_path_and_agree_with_the_vm(name):
    checkpoint = _checkpoint(BASES[name])
    fast = assert_same(checkpoint, checkpoint.data_pkl)
    assert fast[0] == "ok"


def test_fast_path_result_is_what_load_returns():
    out = nbckpt.load(io.BytesIO(BASES["torch"]))
    state = _state()
    assert list(out) == list(state)
    for key, tensor in state.items():
        expected = tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        got = out[key].view(np.int16) if out[key].dtype == ml_dtypes.bfloat16 else out[key]
        np.testing.assert_array_equal(got, expected)
        assert got.strides == expected.strides
    assert out["tied"] is out["w"]  # one tensor under two names: one array
    assert np.shares_memory(out["w"], out["wT"]) and np.shares_memory(out["w"], out["row"])


def test_load_uses_the_fast_path_for_flat_dicts_and_the_vm_otherwise(monkeypatch):
    calls = []
    original = run_module.load_flat_dict

    def spy(data, rebuilder, **kwargs):
        result = original(data, rebuilder, **kwargs)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(run_module, "load_flat_dict", spy)
    nbckpt.load(io.BytesIO(BASES["nbckpt"]))
    # A state dict with module metadata (BUILD), and a nested structure: the VM's.
    linear = torch.nn.Linear(2, 2).state_dict()
    out = nbckpt.load(io.BytesIO(_torch_bytes(linear)))
    assert list(out) == ["weight", "bias"] and out._metadata == {"": {"version": 1}}
    assert nbckpt.load(io.BytesIO(_nbckpt_bytes({"a": [np.ones(1)], "n": 3}))) == {"a": [np.ones(1)], "n": 3}
    assert calls == [True, False, False]
    # weights_only=False never takes it (the file's own globals are used there).
    nbckpt.load(io.BytesIO(BASES["nbckpt"]), weights_only=False)
    assert len(calls) == 3


# -- generated state dicts ----------------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int8, np.uint8, np.bool_, np.uint16,
          np.complex64, ml_dtypes.bfloat16]


@st.composite
def state_dicts(draw):
    n = draw(st.integers(0, 12))
    state: dict = {}
    arrays: list = []
    for i in range(n):
        key = draw(st.text(min_size=0, max_size=6))
        if arrays and draw(st.integers(0, 4)) == 0:
            base = draw(st.sampled_from(arrays))  # a tied or strided view of an earlier array
            value = base if draw(st.booleans()) else base.reshape(-1)[:: draw(st.integers(1, 3))]
        else:
            dtype = draw(st.sampled_from(DTYPES))
            shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
            value = np.arange(int(np.prod(shape)), dtype=np.float64).astype(dtype).reshape(shape)
            if value.ndim == 2 and draw(st.booleans()):
                value = value.T
        arrays.append(value)
        state[key] = value
    if draw(st.booleans()):
        state = collections.OrderedDict(state)
    return state


@settings(max_examples=60, **SETTINGS)
@given(state=state_dicts())
def test_generated_state_dicts_agree(state):
    data = _nbckpt_bytes(state)
    checkpoint = _checkpoint(data)
    assert assert_same(checkpoint, checkpoint.data_pkl)[0] == "ok"


# -- mutations, corpus, near misses ---------------------------------------------------------------


class _HypothesisDraw(fuzz.Draw):
    def __init__(self, data) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))


MUTATED = sorted(set(BASES) - {"many"})  # small pickles: every mutation is cheap to check


@settings(max_examples=800, **SETTINGS)
@given(data=st.data())
def test_pickle_mutations_agree(data):
    name = data.draw(st.sampled_from(MUTATED))
    checkpoint = _checkpoint(BASES[name])
    draw = _HypothesisDraw(data)
    mutated = fuzz.mutate_pickle(checkpoint.data_pkl, draw)
    if data.draw(st.booleans()):
        mutated = fuzz.bytesub(mutated, draw)
    assert_same(checkpoint, mutated)


def test_hostile_corpus_agrees():
    """Every zip file of tests/data/attacks: the fast path falls back or agrees with the VM.

    The VM runs only where the fast path accepted a file (the corpus as a whole
    runs through nbckpt.load, with the fast path on, in tests/test_attacks.py).
    """
    seen = accepted = 0
    for path in sorted(CORPUS.glob("*.pt")):
        try:
            checkpoint = _checkpoint(path.read_bytes())
        except (CheckpointError, OSError):
            continue  # refused before the pickle
        seen += 1
        fast = assert_same(checkpoint, checkpoint.data_pkl)
        accepted += fast != ("fallback",)
    assert seen > 50 and accepted > 0


def _put(i: int) -> bytes:
    return b"q" + bytes([i])


def _with(pkl: bytes, old: bytes, new: bytes, count: int = 1) -> bytes:
    assert old in pkl, old
    return pkl.replace(old, new, count)


NEAR_MISSES = {
    # A GET of a slot that holds something of another role.
    "fn slot holds a string": (b"h\x02((h\x03", b"h\x03((h\x03"),
    "storage slot holds the class": (b"((h\x03h\x04", b"((h\x04h\x04"),
    "class slot holds a string": (b"h\x03h\x04X", b"h\x03h\x03X"),
    "location slot holds the class": (b"h\x06K", b"h\x04K"),
    "OrderedDict slot holds a tuple": (b"h\n)R", b"h\x07)R"),
    "slot never written": (b"h\x02((", b"h\xf0(("),
    # PUT over a slot that is read later.
    "fn slot overwritten by a key": (b"X\x01\x00\x00\x00bq\x0e", b"X\x01\x00\x00\x00bq\x02"),
    "OrderedDict slot overwritten": (b"\x89ccollections\nOrderedDict\nq\n)Rq\x0b", b"\x89ccollections\nOrderedDict\nq\n)Rq\n"),
    "LONG_BINPUT for a small slot": (b"X\x01\x00\x00\x00bq\x0e", b"X\x01\x00\x00\x00br\x0e\x00\x00\x00"),
    # Globals the unpickler refuses, or allows but never calls.
    "refused storage class": (b"ctorch\nFloatStorage\n", b"cos\nsystem\n"),
    "refused rebuild function": (b"ctorch._utils\n_rebuild_tensor_v2\n", b"cbuiltins\neval\n"),
    "a value as the rebuild function": (b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch\nfloat32\n"),
    "another allowed callable": (b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_tensor\n"),
    "hooks from set()": (b"ccollections\nOrderedDict\nq\n", b"cbuiltins\nset\nq\n"),
    # Values the rebuild refuses (same calls, so the same errors).
    "storage missing": (b"X\x01\x00\x00\x000q\x05", b"X\x01\x00\x00\x009q\x05"),
    "numel too large": (b"X\x03\x00\x00\x00cpuq\x06K\x03t", b"X\x03\x00\x00\x00cpuq\x06K\x09t"),
    "negative offset": (b"QK\x00K\x03\x85", b"QJ\xff\xff\xff\xffK\x03\x85"),
    "stride past the storage": (b"K\x03\x85q\x08K\x01\x85", b"K\x03\x85q\x08K\x05\x85"),
    "shape and stride lengths differ": (b"K\x03\x85q\x08K\x01\x85", b"K\x03\x85q\x08K\x01K\x01\x86"),
    "location not a device": (b"X\x03\x00\x00\x00cpu", b"X\x03\x00\x00\x00zzz"),
    "key length byte lies": (b"X\x01\x00\x00\x000q\x05", b"X\x02\x00\x00\x000q\x05"),
    "key not UTF-8": (b"X\x01\x00\x00\x00a", b"X\x01\x00\x00\x00\xff"),
    "requires_grad True": (b"\x89ccollections", b"\x88ccollections"),
    "an int key": (b"X\x01\x00\x00\x00bq\x0e", b"K\x07q\x0e"),
    "a None value": (b"X\x01\x00\x00\x00cq\x16h\r", b"X\x01\x00\x00\x00cq\x16N"),
    "SETITEMS without MARK": (b"}q\x00(", b"}q\x00"),
    "MARK never closed": (b"u.", b"."),
    "SETITEM with a batch open": (b"u.", b"s."),
    "trailing bytes after STOP": (b"u.", b"u.garbage"),
    "truncated before STOP": (b"u.", b"u"),
    "protocol 4": (b"\x80\x02", b"\x80\x04"),
    "list root": (b"\x80\x02}", b"\x80\x02]"),
    "BUILD after the items": (b"u.", b"u}b."),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_fall_back_or_agree(case):
    state = {"a": torch.ones(3), "b": torch.zeros(2, 2), "c": torch.ones(3)}
    state["c"] = state["a"]
    checkpoint = _checkpoint(_torch_bytes(state))
    pkl = checkpoint.data_pkl
    old, new = NEAR_MISSES[case]
    assert_same(checkpoint, _with(pkl, old, new))


def test_near_misses_that_stay_in_the_grammar_are_still_accepted():
    """The fast path is not merely falling back: these read as the VM reads them."""
    checkpoint = _checkpoint(_torch_bytes({"a": torch.ones(3), "b": torch.zeros(2, 2)}))
    pkl = checkpoint.data_pkl
    for old, new in (NEAR_MISSES["LONG_BINPUT for a small slot"], NEAR_MISSES["requires_grad True"],
                     NEAR_MISSES["trailing bytes after STOP"]):
        assert assert_same(checkpoint, _with(pkl, old, new))[0] == "ok"
    for case in ("storage missing", "numel too large", "negative offset", "stride past the storage"):
        old, new = NEAR_MISSES[case]
        fast = assert_same(checkpoint, _with(pkl, old, new))
        assert fast[0] == "error" and issubclass(fast[1], FormatError), case


def test_big_indices_and_long_ints():
    """LONG_BINPUT/LONG_BINGET beyond slot 255, BININT2/BININT/LONG1 integers."""
    state = {f"t{i}": torch.zeros(300 + i) for i in range(120)}
    state["wide"] = torch.zeros(70000)
    checkpoint = _checkpoint(_torch_bytes(state))
    pkl = checkpoint.data_pkl
    assert b"j" in pkl and b"r" in pkl and b"J\x70\x11\x01\x00" in pkl
    assert assert_same(checkpoint, pkl)[0] == "ok"
    long1 = _with(pkl, b"J\x70\x11\x01\x00", b"\x8a\x03\x70\x11\x01", 2)
    assert assert_same(checkpoint, long1)[0] == "ok"
    negative_len = _with(pkl, b"J\x70\x11\x01\x00", b"\x8a\x03\x70\x11\xff", 1)
    assert_same(checkpoint, negative_len)


# -- the batched build: all storages asked for at once, small records read in blocks ----------------


def test_flat_dicts_are_built_in_one_batch_with_one_read_per_block(monkeypatch):
    from nbckpt.format.container import ZipReader

    reads, batches = [], []
    original_read, original_many = ZipReader.read_records, Rebuilder.rebuild_many

    def spy_read(self, names, **kwargs):
        reads.append(list(names))
        return original_read(self, names, **kwargs)

    def spy_many(self, calls, *, columns=None):
        batches.append(len(calls) if columns is None else len(columns[1]))
        return original_many(self, calls, columns=columns)

    monkeypatch.setattr(ZipReader, "read_records", spy_read)
    monkeypatch.setattr(Rebuilder, "rebuild_many", spy_many)
    checkpoint = _checkpoint(BASES["many"])
    assert assert_same(checkpoint, checkpoint.data_pkl)[0] == "ok"
    assert batches and set(batches) == {1100}
    # The reads ahead ask for every record at once, in the pickle's order.
    assert [len(r) for r in reads] == [1100] and reads[0][:2] == ["data/0", "data/1"]
    out = nbckpt.load(io.BytesIO(BASES["many"]))
    assert list(out) == [f"k{i}" for i in range(1100)] and out["k7"].tolist() == [7.0, 7.0]
    # Every array owns its memory (a block read ahead is not kept alive by the arrays).
    reader_out = _rebuilder(checkpoint, read_ahead=True)
    arrays = load_flat_dict(checkpoint.data_pkl, reader_out)
    assert all(a.base is not None and a.base.base is None and a.base.nbytes == 8 for a in arrays.values())


def _corrupt_local_header(data: bytes, record: str, old: bytes, new: bytes, at: int = 0) -> bytes:
    """``data`` with bytes ``at`` on of record ``record``'s local header replaced (``old`` -> ``new``)."""
    from nbckpt.format.container import ZipReader

    reader = ZipReader(io.BytesIO(data))
    start = reader.entry(record).header_offset + at
    assert data[start : start + len(old)] == old
    return data[:start] + new + data[start + len(new):]


@pytest.mark.parametrize("case", ["signature", "method", "extra runs into the next record",
                                  "extra runs past the directory"])
def test_batched_reads_report_a_bad_local_header_as_the_vm_does(case):
    data = BASES["many"]
    if case == "signature":
        data = _corrupt_local_header(data, "data/5", b"PK\x03\x04", b"PK\x03\x05")
    elif case == "method":
        data = _corrupt_local_header(data, "data/5", b"\x00\x00", b"\x08\x00", at=8)
    else:
        from nbckpt.format.container import ZipReader

        reader = ZipReader(io.BytesIO(data))
        record = "data/1099" if case == "extra runs past the directory" else "data/5"
        raw = data[reader.entry(record).header_offset + 28 : reader.entry(record).header_offset + 30]
        data = _corrupt_local_header(data, record, raw, (0xFFF0).to_bytes(2, "little"), at=28)
    checkpoint = _checkpoint(data)
    fast = assert_same(checkpoint, checkpoint.data_pkl)
    if case == "extra runs into the next record":
        # Inside the file, before the directory: both read those bytes (the zip reader
        # bounds every record by the file and the directory, not by its neighbours).
        assert fast[0] == "ok"
        return
    assert fast[0] == "error" and issubclass(fast[1], FormatError), fast
    with pytest.raises(FormatError):
        nbckpt.load(io.BytesIO(data))


def test_a_load_frees_its_storages_without_the_cyclic_collector(tmp_path):
    """The rebuilder (a reference cycle: its globals are its bound methods) lets go of the
    storages once the pickle is read: an array deleted after a load frees its memory at once."""
    import gc
    import weakref

    path = tmp_path / "many.pt"
    path.write_bytes(BASES["many"])
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        out = nbckpt.load(str(path))
        storage = weakref.ref(out["k5"].base)
        del out
        assert storage() is None
    finally:
        if was_enabled:
            gc.enable()


# -- the listing (nbckpt.open): the fast path and the batched describing against the VM ----------------


def _listing(data: bytes) -> tuple:
    with nbckpt.open(io.BytesIO(data)) as archive:
        return archive.records, archive.values, [archive[r.name].tobytes() for r in archive.records[:3]]


@pytest.mark.parametrize("name", ["torch", "torch_ordered", "nbckpt", "many"])
def test_open_lists_the_same_records_with_the_fast_path_and_the_vm(name, monkeypatch):
    from nbckpt import archive as archive_module

    fast = _listing(BASES[name])
    with monkeypatch.context() as m:
        m.setattr(run_module, "load_flat_dict", lambda *args, **kwargs: None)  # the VM only
        assert _listing(BASES[name]) == fast
    with monkeypatch.context() as m:
        m.setattr(archive_module, "_flat_index", lambda tree: None)  # record by record
        assert _listing(BASES[name]) == fast
    with monkeypatch.context() as m:
        m.setattr(archive_module, "_flat_index", lambda tree: None)
        m.setattr(archive_module, "_flat_arrays", lambda tree: None)  # the walk only
        assert _listing(BASES[name]) == fast
    records = fast[0]
    assert records and all(isinstance(r, nbckpt.Record) for r in records)
    if name == "torch":
        by_name = {r.name: r for r in records}
        assert by_name["wT"].strides == (1, 4) and by_name["row"].offset == 4
        assert set(by_name["w"].shares) == {"wT", "row", "tied"} and by_name["b"].shares == ()
        # Records built without the dataclass __init__ are what the constructor builds.
        rebuilt = dataclasses.replace(by_name["w"])
        assert rebuilt == by_name["w"] and hash(rebuilt) == hash(by_name["w"]) and vars(rebuilt) == vars(by_name["w"])


def test_the_batch_stands_only_for_the_rebuilders_own_unchanged_calls():
    ours = Rebuilder(None)
    assert ours.batches(ours.rebuild_tensor_v2, ours.ordered_dict)
    other = Rebuilder(None)
    assert not ours.batches(other.rebuild_tensor_v2, ours.ordered_dict)  # another rebuilder's
    assert not ours.batches(ours.rebuild_tensor, ours.ordered_dict)  # another rebuild function
    assert not ours.batches(ours.rebuild_tensor_v2, ours.counter)  # hooks that are not an OrderedDict
    assert not Rebuilder(None, legacy=True).batches(ours.rebuild_tensor_v2, ours.ordered_dict)

    class Overridden(Rebuilder):
        def rebuild_tensor_v2(self, *args, **kwargs):  # a subclass's own rebuild: never bypassed
            return super().rebuild_tensor_v2(*args, **kwargs)

    sub = Overridden(None)
    assert not sub.batches(sub.rebuild_tensor_v2, sub.ordered_dict)


# -- the column-by-column forms (listing, rebuild, describing) against the one-by-one ones ------------


def _three_listings(data: bytes, monkeypatch) -> list:
    """The listing with the column path, record by record, and by the walk and the VM only."""
    from nbckpt import archive as archive_module

    def listing():
        try:
            with nbckpt.open(io.BytesIO(data)) as archive:
                return ("ok", archive.records, archive.values, {r.name: archive[r.name].tobytes() for r in archive})
        except Exception as err:  # noqa: BLE001 - compared
            return ("error", type(err), str(err))

    out = [listing()]
    with monkeypatch.context() as m:
        m.setattr(archive_module, "_flat_index", lambda tree: None)
        out.append(listing())
        m.setattr(archive_module, "_flat_arrays", lambda tree: None)
        m.setattr(run_module, "load_flat_dict", lambda *args, **kwargs: None)
        out.append(listing())
    return out


LISTING_CASES = {
    "plain": {f"layer{i}.weight": np.arange(i + 1, dtype=np.float32) for i in range(300)},
    "dtypes": {"i8": np.arange(5, dtype=np.int8), "c": np.ones(3, np.complex64), "b": np.array([True, False]),
               "h": np.ones((2, 3), ml_dtypes.bfloat16), "s": np.float64(2.5) * np.ones(()),
               "t": np.arange(12.0).reshape(3, 4).T.copy(order="K")},
    "empty": {"e": np.empty((0, 3), np.float32), "f": np.empty(0, np.int64), "x": np.ones(2)},
    "long_key": {"k" * 2000: np.ones(2), "short": np.zeros(3)},  # named by digest: the loop decides
    "dotted_keys": {"a.b": np.ones(1), "a": np.zeros(2), "": np.ones(3)},
    "unicode": {"\u00e9t\u00e9": np.ones(2), "\U0001f600": np.zeros(1)},
}


@pytest.mark.parametrize("case", sorted(LISTING_CASES))
def test_listing_column_by_column_is_the_record_by_record_listing(case, monkeypatch):
    results = _three_listings(_nbckpt_bytes(LISTING_CASES[case]), monkeypatch)
    assert results[0] == results[1] == results[2]
    assert results[0][0] == "ok"


def test_listing_columns_of_torch_views_and_offsets(monkeypatch):
    base = torch.arange(20, dtype=torch.float32)
    state = {"slice": base[5:9].clone(), "w": torch.ones(2, 3).t().contiguous(), "x": torch.zeros(4)}
    data = _torch_bytes(state)
    results = _three_listings(data, monkeypatch)
    assert results[0] == results[1] == results[2] and results[0][0] == "ok"
    # A storage shared by two arrays, with an offset: the loop names who shares what.
    shared = _torch_bytes({"a": base, "b": base[3:7], "c": torch.ones(1)})
    results = _three_listings(shared, monkeypatch)
    assert results[0] == results[1] == results[2]
    by_name = {r.name: r for r in results[0][1]}
    assert by_name["b"].offset == 3 and by_name["b"].shares == ("a",) and by_name["c"].shares == ()


def _recording_calls(rebuilder_calls, *, columns: bool):
    """rebuild_many over a RecordingMaterializer whose records hold what each call declares."""
    from nbckpt.formats.recording import RecordingMaterializer
    from nbckpt.pickling import rebuild as rebuild_module

    sizes = {call[1]: call[3] * call[0].dtype.itemsize for call in rebuilder_calls
             if type(call[1]) is str and type(call[3]) is int and hasattr(call[0], "dtype")}
    rebuilder = Rebuilder(RecordingMaterializer(lambda key: sizes[key]))
    original = rebuild_module._columns
    rebuild_module._columns = original if columns else (lambda cols: None)
    try:
        arrays = rebuilder.rebuild_many(list(rebuilder_calls))
    except Exception as err:  # noqa: BLE001 - compared
        return ("error", type(err))
    finally:
        rebuild_module._columns = original
    return ("ok", [(a.storage.key, a.dtype, a.offset, a.shape, a.strides) for a in arrays],
            sorted(rebuilder._storages))


def test_rebuild_many_column_checks_are_the_loops():
    f32 = Rebuilder(None).globals["torch.FloatStorage"]
    i8 = Rebuilder(None).globals["torch.CharStorage"]
    untyped = Rebuilder(None).globals["torch.UntypedStorage"]
    ok = [(f32, str(i), "cpu", 6, 0, (2, 3), (3, 1)) for i in range(50)]
    cases = {
        "ok": ok,
        "offset": ok[:-1] + [(f32, "x", "cpu", 10, 4, (2, 3), (3, 1))],
        "past_the_storage": ok[:-1] + [(f32, "x", "cpu", 6, 1, (2, 3), (3, 1))],
        "last_element_exactly": ok[:-1] + [(f32, "x", "cpu", 7, 1, (2, 3), (3, 1))],
        "empty_array": ok[:-1] + [(f32, "x", "cpu", 6, 0, (0, 3), (3, 1))],
        "negative_offset": ok[:-1] + [(f32, "x", "cpu", 6, -1, (2, 3), (3, 1))],
        "huge_offset": ok[:-1] + [(f32, "x", "cpu", 6, 2**70, (2, 3), (3, 1))],
        "huge_size": ok[:-1] + [(f32, "x", "cpu", 2**62, 0, (2**61, 2), (2, 1))],
        "bool_offset": ok[:-1] + [(f32, "x", "cpu", 6, True, (2, 3), (3, 1))],
        "str_numel": ok[:-1] + [(f32, "x", "cpu", "6", 0, (2, 3), (3, 1))],
        "shared_key": ok + [(f32, "0", "cpu", 6, 0, (6,), (1,))],
        "two_classes": ok + [(i8, "y", "cpu", 4, 0, (4,), (1,))],
        "untyped": ok + [(untyped, "y", "cpu", 4, 0, (4,), (1,))],
        "bad_stride": ok[:-1] + [(f32, "x", "cpu", 6, 0, (2, 3), (3, -1))],
        "ragged": ok[:-1] + [(f32, "x", "cpu", 6, 0, (2, 3), (3,))],
        "list_size": ok[:-1] + [(f32, "x", "cpu", 6, 0, [2, 3], (3, 1))],
        "int_key": ok[:-1] + [(f32, 7, "cpu", 6, 0, (2, 3), (3, 1))],
    }
    for name, calls in cases.items():
        assert _recording_calls(calls, columns=True) == _recording_calls(calls, columns=False), name
    assert _recording_calls(cases["ok"], columns=True)[0] == "ok"
    assert _recording_calls(cases["past_the_storage"], columns=True)[0] == "error"


def test_described_storages_in_one_go_report_what_one_by_one_reports():
    from nbckpt.format import dtypes
    from nbckpt.formats.recording import RecordingMaterializer

    class Sizes:
        def __init__(self, sizes):
            self.sizes = sizes

        def __call__(self, key):
            if key not in self.sizes:
                raise FormatError(f"record data/{key} is missing", record=f"data/{key}")
            return self.sizes[key]

        def many(self, keys):
            return [self.sizes[k] for k in keys] if all(k in self.sizes for k in keys) else None

    f32 = dtypes.by_torch_name("float32")
    requests = [(str(i), f32, 3, "cpu", False) for i in range(10)]

    def described(sizes, reqs):
        try:
            recorder = RecordingMaterializer(Sizes(sizes))
            refs = RecordingMaterializer.storages(recorder, reqs)  # the instance's .storages is its dict
            assert set(recorder.storages) == {r.key for r in refs}
            return [(r.key, r.numel, r.location, r.untyped) for r in refs]
        except Exception as err:  # noqa: BLE001 - compared
            return (type(err), str(err))

    def one_by_one(sizes, reqs):
        try:
            recorder = RecordingMaterializer(Sizes(sizes))
            refs = [recorder.storage(*r) for r in reqs]
            return [(r.key, r.numel, r.location, r.untyped) for r in refs]
        except Exception as err:  # noqa: BLE001 - compared
            return (type(err), str(err))

    good = {str(i): 12 for i in range(10)}
    for sizes, reqs in [(good, requests), ({**good, "4": 8}, requests), ({k: v for k, v in good.items() if k != "7"}, requests),
                        (good, requests[:5] + [("5", f32, 3, "bogus:device", False)] + requests[6:])]:
        assert described(sizes, reqs) == one_by_one(sizes, reqs)


def test_a_memo_slot_written_again_retires_the_template():
    from nbckpt.pickling import fastpath

    parser = fastpath._Parser(BASES["many"][:0] + _checkpoint(BASES["many"]).data_pkl)
    assert parser.parse() and parser.template is not None
    parser._put(b"q\x01", "a key")  # slot 1, read by the template's GETs, now holds something else
    assert parser.template is None
    parser.template = ("x", None)
    parser._put(fastpath._put_span(parser.fresh, 1), "fresh")  # a fresh slot: the template stays
    assert parser.template == ("x", None)


def test_gets_of_slots_filled_in_one_go_agree_with_the_vm():
    # 40 tensors read by the steady state, then tied weights and views naming them by GET.
    tensors = [torch.full((3,), float(i)) for i in range(40)]
    state = {f"k{i}": t for i, t in enumerate(tensors)}
    state.update({"tied3": tensors[3], "tied39": tensors[39], "view": tensors[5][1:], "late": torch.ones(2)})
    for data in (_torch_bytes(state), _torch_bytes(collections.OrderedDict(state))):
        checkpoint = _checkpoint(data)
        fast = assert_same(checkpoint, checkpoint.data_pkl)
        assert fast[0] == "ok"
        out = load_flat_dict(checkpoint.data_pkl, _rebuilder(checkpoint))
        assert out["tied3"] is out["k3"] and out["tied39"] is out["k39"] and out["view"].tolist() == [5.0, 5.0]


def test_the_memo_reads_runs_and_hides_what_is_written_over_them():
    from nbckpt.pickling import fastpath

    memo = fastpath._Memo()
    refs = [fastpath._Tensor(i) for i in range(3)]
    memo.add_run(10, 3, ["a", "b", "c"], ["0", "1", "2"], refs)
    assert [memo.get(i, "none") for i in (10, 11, 12, 17, 18, 26, 27, 33, 34, 9)] == \
        ["a", "0", "none", refs[0], "b", "c", "2", refs[2], "none", "none"]
    memo[18] = "other"
    memo[25] = fastpath._NO  # an opaque PUT over a run's slot
    assert memo.get(18) == "other" and memo.get(25, "none") == "none" and memo.get(27) == "2"
