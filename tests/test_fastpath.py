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
import importlib.util
import io
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbckpt
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


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("nbckpt_fuzz_script_fastpath", ROOT / "scripts" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()


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


def _rebuilder(checkpoint) -> Rebuilder:
    source = ZipSource(checkpoint.reader, read_ahead=False)
    return Rebuilder(ZipMaterializer(source, DeviceMap.parse(None), byteorder=checkpoint.byteorder))


def outcome(checkpoint, pkl: bytes, *, fast: bool):
    """("fallback",), ("ok", description) or ("error", exception type)."""
    rebuilder = _rebuilder(checkpoint)
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
    """The fast path falls back, or agrees with the VM; returns the fast path's outcome."""
    fast = outcome(checkpoint, pkl, fast=True)
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
