"""The restricted unpickler (``weights_only=True``) and the full one.

Two entry points are tested: ``nbckpt.load`` on zip checkpoints (written by real
``torch.save``, or assembled with :class:`ZipWriter` around a hand-made
``data.pkl``), and :class:`SafeUnpickler` on raw pickle bytes.

Hostile payloads call a *canary* (a function that writes a file or flips a
module global). Where it is safe to do so, each payload is first shown to be
live (Python's ``pickle.loads`` or ``weights_only=False`` runs it), so that
"nothing happened" under ``weights_only=True`` proves the refusal.

Ported from torch's ``test/test_serialization.py`` (see
``torch_format.md`` §6 G): test_weights_only_assert,
test_weights_only_safe_globals_newobj, test_weights_only_safe_globals_build,
test_weights_only_safe_globals_build_with_slots, test_weights_only_safe_globals_blocklist,
test_serialization_nested_class, test_sets_are_loadable_with_weights_only,
test_serialization_byte_literal.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import importlib
import io
import os
import pickle
import pickletools
import runpy
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import nbckpt
import nbckpt.api
from nbckpt.format.container import ZipWriter
from nbckpt.pickling.rebuild import Rebuilder
from nbckpt.pickling.unpickler import MAX_NESTING, SafeUnpickler

from required import required

# Only the tests that compare against torch need it: without torch they fail, the rest run.
torch = required("torch")

MODULE = __name__
MODULE_B = MODULE.encode()


# -- canaries ---------------------------------------------------------------------------

CANARY = {"calls": 0}


def set_canary(*args, **kwargs):
    """Flips the module-level canary; a payload that reaches it has run code."""
    CANARY["calls"] += 1
    return "canary ran"


def write_canary(path):
    """Creates ``path``; a payload that reaches it has run code."""
    Path(path).write_text("ran")
    return "canary ran"


class CanaryNew:
    """A class whose ``__new__`` flips the canary (target of OBJ/NEWOBJ_EX payloads)."""

    def __new__(cls, *args, **kwargs):
        set_canary()
        return super().__new__(cls)


class Reduce:
    """Pickles as ``fn(*args)``: the classic code-execution payload."""

    def __init__(self, fn, *args):
        self.fn = fn
        self.args = args

    def __reduce__(self):
        return self.fn, self.args


@pytest.fixture(autouse=True)
def _reset_canary():
    CANARY["calls"] = 0
    yield
    CANARY["calls"] = 0


# -- classes the tests allowlist ---------------------------------------------------------

Point = namedtuple("Point", ["x", "y"])


class ClassThatUsesBuildInstruction:
    def __init__(self, num):
        self.num = num

    def __reduce_ex__(self, proto):
        # The third item makes pickle emit BUILD with a dict state.
        return ClassThatUsesBuildInstruction, (self.num,), {"foo": "bar"}


class UsesSetState:
    def __init__(self, a):
        self.a = a

    def __getstate__(self):
        return {"a": self.a, "extra": [1, 2]}

    def __setstate__(self, state):
        self.restored = state


@dataclass
class ClassThatUsesBuildInstructionAllSlots:
    __slots__ = ["x", "y"]
    x: int
    y: int


@dataclass
class ClassThatUsesBuildInstructionSomeSlots(ClassThatUsesBuildInstructionAllSlots):
    x: int
    y: int
    c: str


class DunderState:
    """Pickles with a BUILD state chosen by the test (e.g. one that sets ``__class__``)."""

    def __init__(self, state):
        self._state = state

    def __reduce_ex__(self, proto):
        return copyreg.__newobj__, (DunderState,), self._state


class ClassAMock:
    class Nested:
        pass


class ClassBMock:
    class Nested:
        pass


class PlainConfig:
    """An ordinary Python object, for the weights_only=False tests."""

    def __init__(self, lr, name):
        self.lr = lr
        self.name = name


# -- helpers --------------------------------------------------------------------------------


def torch_bytes(obj, **kwargs) -> bytes:
    """The file ``torch.save(obj)`` writes.

    For an object that holds no torch object (most safety tests: plain data and hostile
    pickles), the file is built here without torch — torch's ``data.pkl`` is then just
    ``pickle.dumps(obj, protocol)`` in its zip layout (``test_plain_files_are_torchs_files``
    proves it byte for byte) — so those tests run where torch is missing; objects holding
    tensors need torch, and fail without it.
    """
    if _holds_torch_objects(obj):
        buf = io.BytesIO()
        torch.save(obj, buf, **kwargs)
        return buf.getvalue()
    return plain_torch_file(obj, protocol=kwargs.pop("pickle_protocol", 2), **kwargs)


def plain_torch_file(obj, *, protocol: int = 2) -> bytes:
    """The zip that torch.save writes for a tensor-free ``obj`` (records in torch's order)."""
    buf = io.BytesIO()
    writer = ZipWriter(buf.write, "archive")
    writer.write_record("data.pkl", pickle.dumps(obj, protocol=protocol))
    writer.write_record(".format_version", b"1")
    writer.write_record(".storage_alignment", b"64")
    writer.write_record("byteorder", sys.byteorder.encode("ascii"))
    writer.close()
    return buf.getvalue()


class _FindsTorch(pickle.Pickler):
    found = False

    def persistent_id(self, value):
        if type(value).__module__.split(".")[0] == "torch" or (
                isinstance(value, type) and value.__module__.split(".")[0] == "torch"):
            self.found = True
        return None


def _holds_torch_objects(obj) -> bool:
    finder = _FindsTorch(io.BytesIO(), protocol=2)
    try:
        finder.dump(obj)
    except Exception:  # noqa: BLE001 - unpicklable here: let torch.save decide
        return True
    return finder.found


def load_bytes(data: bytes, **kwargs):
    return nbckpt.load(io.BytesIO(data), **kwargs)


def safe_loads(data: bytes):
    """Run raw pickle bytes through the restricted VM (no storages available)."""
    return SafeUnpickler(data, Rebuilder(None)).load()


def data_pkl(checkpoint: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(checkpoint)) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        return zf.read(name)


def records_of(checkpoint: bytes) -> dict[str, bytes]:
    """The records of a checkpoint, less the two that ZipWriter.close writes itself."""
    with zipfile.ZipFile(io.BytesIO(checkpoint)) as zf:
        out = {n.split("/", 1)[1]: zf.read(n) for n in zf.namelist()}
    out.pop("version")
    out.pop(".data/serialization_id", None)
    return out


def make_checkpoint(pkl: bytes, records: dict[str, bytes] | None = None) -> io.BytesIO:
    """A zip checkpoint holding ``pkl`` as data.pkl (ZipWriter adds ``version``)."""
    buf = io.BytesIO()
    writer = ZipWriter(buf.write, "archive")
    writer.write_record("data.pkl", pkl)
    for name, data in (records or {}).items():
        if name != "data.pkl":
            writer.write_record(name, data)
    writer.close()
    buf.seek(0)
    return buf


def global_op(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def assert_identical(actual, expected, path="obj"):
    """Equal values *and* exact types, all the way down (NaN equal to NaN)."""
    assert type(actual) is type(expected), (path, type(actual), type(expected))
    if isinstance(expected, dict):
        assert list(actual) == list(expected), path
        for key in expected:
            assert_identical(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert repr(actual) == repr(expected), path  # -0.0, inf, nan
    elif isinstance(expected, complex):
        assert repr(actual) == repr(expected), path
    else:
        assert actual == expected, path


# ======================================================================================
# test_weights_only_assert: a payload that calls print / writes a file
# ======================================================================================


class TestWeightsOnlyAssert:
    def test_print_payload(self, capsys):
        data = torch_bytes(Reduce(print, "nbckpt: the payload ran"))

        # weights_only=False runs it (as torch.load does).
        assert load_bytes(data, weights_only=False) is None
        assert capsys.readouterr().out == "nbckpt: the payload ran\n"

        # The default (weights_only=True) refuses it and prints nothing.
        with pytest.raises(nbckpt.UnpicklingError) as info:
            load_bytes(data)
        err = info.value
        assert isinstance(err, pickle.UnpicklingError)
        assert isinstance(err, nbckpt.CheckpointError)
        assert err.global_name == "builtins.print"
        message = str(err)
        assert "GLOBAL builtins.print" in message
        assert "nbckpt.add_safe_globals([builtins.print])" in message
        assert "nbckpt.safe_globals([builtins.print])" in message
        assert "weights_only=False" in message
        assert capsys.readouterr().out == ""

        # Allowlisted for one load, it runs.
        with nbckpt.safe_globals([print]):
            assert load_bytes(data) is None
        assert capsys.readouterr().out == "nbckpt: the payload ran\n"

        # ...and only inside the block.
        with pytest.raises(nbckpt.UnpicklingError, match="builtins.print"):
            load_bytes(data, weights_only=True)
        assert capsys.readouterr().out == ""

    def test_file_writing_payload_leaves_no_trace(self, tmp_path):
        canary = tmp_path / "canary"
        # The payload hides among real tensors.
        data = torch_bytes({"w": torch.ones(3), "evil": Reduce(write_canary, str(canary))})

        with pytest.raises(nbckpt.UnpicklingError) as info:
            load_bytes(data, weights_only=True)
        assert info.value.global_name == f"{MODULE}.write_canary"
        assert f"nbckpt.add_safe_globals([{MODULE}.write_canary])" in str(info.value)
        assert not canary.exists()

        # The payload is live: the full unpickler runs it.
        out = load_bytes(data, weights_only=False)
        assert out["evil"] == "canary ran"
        assert canary.read_text() == "ran"
        np.testing.assert_array_equal(out["w"], np.ones(3, np.float32))

    def test_refusal_is_the_same_with_a_path(self, tmp_path):
        canary = tmp_path / "canary"
        path = tmp_path / "evil.pt"
        torch.save(Reduce(write_canary, str(canary)), path)
        with pytest.raises(nbckpt.UnpicklingError, match="write_canary"):
            nbckpt.load(path)
        with pytest.raises(nbckpt.UnpicklingError, match="write_canary"):
            nbckpt.load(str(path), map_location="cpu")
        assert not canary.exists()


# ======================================================================================
# NEWOBJ, BUILD, slots, nested classes
# ======================================================================================


class TestAllowlistedClasses:
    @pytest.mark.parametrize("writer", ["torch", "nbckpt"])
    def test_safe_globals_newobj_namedtuple(self, writer):
        obj = {"p": Point(1, 2.5), "ps": [Point("a", None)]}
        if writer == "torch":
            data = torch_bytes(obj)
        else:
            buf = io.BytesIO()
            nbckpt.save(obj, buf)
            data = buf.getvalue()
        assert b"\x81" in data_pkl(data)  # NEWOBJ

        with pytest.raises(nbckpt.UnpicklingError) as info:
            load_bytes(data)
        assert info.value.global_name == f"{MODULE}.Point"

        with nbckpt.safe_globals([Point]):
            out = load_bytes(data)
        assert type(out["p"]) is Point and out["p"] == Point(1, 2.5)
        assert type(out["ps"][0]) is Point and out["ps"][0] == Point("a", None)

    def test_safe_globals_build_dict_state(self):
        data = torch_bytes([ClassThatUsesBuildInstruction(2), torch.arange(3)])

        with pytest.raises(nbckpt.UnpicklingError) as info:
            load_bytes(data)
        assert info.value.global_name == f"{MODULE}.ClassThatUsesBuildInstruction"

        with nbckpt.safe_globals([ClassThatUsesBuildInstruction]):
            obj, arr = load_bytes(data)
        assert type(obj) is ClassThatUsesBuildInstruction
        assert vars(obj) == {"num": 2, "foo": "bar"}
        np.testing.assert_array_equal(arr, np.arange(3))

    def test_safe_globals_build_with_setstate(self):
        data = torch_bytes(UsesSetState(5))
        with pytest.raises(nbckpt.UnpicklingError, match="UsesSetState"):
            load_bytes(data)
        with nbckpt.safe_globals([UsesSetState]):
            out = load_bytes(data)
        assert type(out) is UsesSetState
        assert vars(out) == {"restored": {"a": 5, "extra": [1, 2]}}  # __setstate__ ran, nothing else

    @pytest.mark.parametrize("cls, args", [
        (ClassThatUsesBuildInstructionAllSlots, (2, 3)),
        (ClassThatUsesBuildInstructionSomeSlots, (2, 3, "c")),
    ], ids=["all_slots", "some_slots"])
    def test_safe_globals_build_with_slots(self, cls, args):
        obj = cls(*args)
        data = torch_bytes([obj, obj])
        with pytest.raises(nbckpt.UnpicklingError) as info:
            load_bytes(data)
        assert info.value.global_name == f"{MODULE}.{cls.__qualname__}"

        with nbckpt.safe_globals([cls]):
            out = load_bytes(data)
        assert type(out[0]) is cls
        assert out[0] == obj
        assert out[1] is out[0]
        if cls is ClassThatUsesBuildInstructionSomeSlots:
            assert out[0].__dict__ == {"c": "c"}
        else:
            assert not hasattr(out[0], "__dict__")

    @pytest.mark.parametrize("state, key", [
        ({"__class__": "x"}, "__class__"),
        ({"ok": 1, "__dict__": {"a": 1}}, "__dict__"),
        ((None, {"__class__": "x"}), "__class__"),
        (({"fine": 1}, {"__setattr__": 1}), "__setattr__"),
    ], ids=["class", "dict", "slotstate_class", "slotstate_setattr"])
    def test_build_dunder_keys_refused_even_when_allowlisted(self, state, key):
        data = torch_bytes(DunderState(state))
        with nbckpt.safe_globals([DunderState]):
            with pytest.raises(nbckpt.UnpicklingError, match=f"refused to set attribute '{key}'"):
                load_bytes(data)

    def test_build_dunder_keys_refused_on_ordered_dict(self):
        pkl = (b"\x80\x02" + global_op("collections", "OrderedDict") + b")R"
               + b"}X\x09\x00\x00\x00__class__K\x01sb.")
        with pytest.raises(nbckpt.UnpicklingError, match="refused to set attribute '__class__'"):
            safe_loads(pkl)

    @pytest.mark.parametrize("cls, args", [(Point, b"K\x01K\x02\x86"),
                                           (ClassThatUsesBuildInstructionAllSlots, b")")],
                             ids=["namedtuple_dict_state", "slots_slotstate"])
    def test_build_unknown_attribute_on_slotted_class(self, cls, args):
        state = b"}X\x01\x00\x00\x00zK\x01s"
        if cls is not Point:
            state = b"N" + state + b"\x86"  # (None, slotstate)
        pkl = b"\x80\x02" + global_op(MODULE, cls.__qualname__) + args + b"\x81" + state + b"b."
        with nbckpt.safe_globals([cls]):
            with pytest.raises(nbckpt.CheckpointError):
                safe_loads(pkl)

    def test_nested_class_qualnames(self):
        # Protocol 4 names nested classes by qualname (STACK_GLOBAL "mod", "Outer.Nested").
        obj = {"a": ClassAMock.Nested(), "b": ClassBMock.Nested()}
        data = torch_bytes(obj, pickle_protocol=4)

        with pytest.raises(nbckpt.UnpicklingError) as info:
            load_bytes(data)
        assert info.value.global_name == f"{MODULE}.ClassAMock.Nested"

        with nbckpt.safe_globals([ClassAMock.Nested]):
            with pytest.raises(nbckpt.UnpicklingError) as info:
                load_bytes(data)
            assert info.value.global_name == f"{MODULE}.ClassBMock.Nested"

        with nbckpt.safe_globals([ClassAMock.Nested, ClassBMock.Nested]):
            out = load_bytes(data)
        assert type(out["a"]) is ClassAMock.Nested
        assert type(out["b"]) is ClassBMock.Nested

    def test_nested_class_by_global_opcode(self):
        pkl = b"\x80\x02" + global_op(MODULE, "ClassAMock.Nested") + b")\x81."
        with nbckpt.safe_globals([ClassAMock.Nested]):
            assert type(safe_loads(pkl)) is ClassAMock.Nested

    def test_nested_class_default_protocol(self):
        data = torch_bytes(ClassAMock.Nested())
        with nbckpt.safe_globals([ClassAMock, ClassAMock.Nested]):
            assert type(load_bytes(data)) is ClassAMock.Nested

    def test_reduce_calls_allowlisted_function_only_when_allowlisted(self):
        pkl = b"\x80\x02" + global_op(MODULE, "set_canary") + b"K\x07\x85R."
        assert pickle.loads(pkl) == "canary ran" and CANARY["calls"] == 1  # the payload is live
        with pytest.raises(nbckpt.UnpicklingError, match="set_canary"):
            safe_loads(pkl)
        assert CANARY["calls"] == 1
        with nbckpt.safe_globals([set_canary]):
            assert safe_loads(pkl) == "canary ran"
        assert CANARY["calls"] == 2

    def test_newobj_refuses_allowlisted_function(self):
        # A function is callable by REDUCE once allowlisted, but NEWOBJ only creates classes.
        pkl = b"\x80\x02" + global_op(MODULE, "set_canary") + b")\x81."
        with nbckpt.safe_globals([set_canary]):
            with pytest.raises(nbckpt.UnpicklingError, match="refused to create an object"):
                safe_loads(pkl)
        assert CANARY["calls"] == 0

    def test_newobj_refuses_nbckpt_callables_that_are_not_classes(self):
        pkl = b"\x80\x02" + global_op("collections", "OrderedDict") + b")\x81."
        with pytest.raises(nbckpt.UnpicklingError, match="NEWOBJ at byte"):
            safe_loads(pkl)

    def test_reduce_refuses_allowlisted_values_that_are_not_callables(self):
        for module, name in [("torch", "FloatStorage"), ("torch", "float32"), ("numpy", "ndarray"),
                             ("torch", "FloatTensor"), ("torch", "sparse_coo")]:
            pkl = b"\x80\x02" + global_op(module, name) + b")R."
            with pytest.raises(nbckpt.UnpicklingError, match="refused to call"):
                safe_loads(pkl)


# ======================================================================================
# The blocklist: refused even when allowlisted
# ======================================================================================


def _blocklist_cases(tmp_path):
    canary = str(tmp_path / "canary")
    script = tmp_path / "script.py"
    script.write_text(f"open({canary!r}, 'w').close()\n")
    evil_pickle = pickle.dumps(Reduce(write_canary, canary), protocol=2)
    code = f"open({canary!r}, 'w').close()"
    return canary, [
        (os.system, (f"touch {canary}",), "posix.system"),
        (subprocess.Popen, (["touch", canary],), "subprocess.Popen"),
        (eval, (code,), "builtins.eval"),
        (exec, (code,), "builtins.exec"),
        (getattr, (Path(canary), "touch"), "builtins.getattr"),
        (__import__, ("colorsys",), "builtins.__import__"),
        (importlib.import_module, ("colorsys",), "importlib.import_module"),
        (pickle.loads, (evil_pickle,), "pickle.loads"),  # written as cPickle.loads
        (runpy.run_path, (str(script),), "runpy.run_path"),
        (nbckpt.api.load, (canary,), "nbckpt.api.load"),
    ]


BLOCKED_NAMES = ["os.system", "subprocess.Popen", "eval", "exec", "getattr", "__import__",
                 "importlib.import_module", "pickle.loads", "runpy.run_path", "nbckpt.api.load"]


class TestRestrictedGetattr:
    def test_getattr_fetches_only_allowlisted_members_of_allowlisted_classes(self):
        pkl = (b"\x80\x02" + global_op("builtins", "getattr") + global_op(MODULE, "UsesSetState")
               + b"X\x08\x00\x00\x00__init__\x86R.")
        with nbckpt.safe_globals([UsesSetState]):
            with pytest.raises(nbckpt.UnpicklingError, match="refused getattr") as info:
                safe_loads(pkl)
        assert info.value.global_name == "builtins.getattr"


class TestBlocklist:
    @pytest.mark.parametrize("index", range(len(BLOCKED_NAMES)), ids=BLOCKED_NAMES)
    @pytest.mark.parametrize("how", ["add_safe_globals", "safe_globals", "tuple"])
    def test_blocked_even_when_allowlisted(self, tmp_path, index, how):
        canary, cases = _blocklist_cases(tmp_path)
        fn, args, dotted = cases[index]
        data = torch_bytes({"w": torch.zeros(2), "x": Reduce(fn, *args)})
        colorsys_loaded = "colorsys" in sys.modules

        if how == "add_safe_globals":
            nbckpt.add_safe_globals([fn])
            assert f"{fn.__module__}.{fn.__qualname__}" in nbckpt.get_safe_globals_names()
        elif how == "tuple":
            nbckpt.add_safe_globals([(fn, dotted)])
        scope = nbckpt.safe_globals([fn] if how == "safe_globals" else [])
        with scope, pytest.raises(nbckpt.UnpicklingError) as info:
            load_bytes(data)

        if fn is getattr:
            # GLOBAL getattr resolves to nbckpt's restricted getattr, which only fetches
            # allowlisted members of allowlisted classes: the Path it would call is refused.
            assert info.value.global_name in (dotted, "pathlib.PosixPath")
        else:
            assert info.value.global_name == dotted
            message = str(info.value)
            assert f"refused GLOBAL {dotted}: it is blocked" in message
            assert "never loads it, even when allowlisted" in message
            assert "can run code" in message
        assert not Path(canary).exists()
        assert ("colorsys" in sys.modules) == colorsys_loaded

    @pytest.mark.parametrize("fn", [eval, exec, pickle.loads, runpy.run_path], ids=lambda f: f.__name__)
    def test_blocklist_payloads_are_live(self, tmp_path, fn):
        """Positive control: the same payloads do run under weights_only=False."""
        canary, cases = _blocklist_cases(tmp_path)
        (args,) = [a for f, a, _ in cases if f is fn]
        data = torch_bytes(Reduce(fn, *args))
        load_bytes(data, weights_only=False)
        assert Path(canary).exists()

    def test_stack_global_os_system_blocked(self):
        pkl = pickle.dumps(os.system, protocol=4)
        assert b"\x93" in pkl  # STACK_GLOBAL
        nbckpt.add_safe_globals([os.system])
        with pytest.raises(nbckpt.UnpicklingError, match="even when allowlisted") as info:
            safe_loads(pkl)
        assert info.value.global_name == "posix.system"

    @pytest.mark.parametrize("module, name, dotted", [
        ("os", "system", "os.system"),
        ("nt", "system", "nt.system"),
        ("sys", "modules", "sys.modules"),
        ("os.path", "join", "os.path.join"),
        ("__builtin__", "eval", "builtins.eval"),    # Python 2 names are translated first
        ("commands", "getoutput", "subprocess.getoutput"),
        ("cPickle", "loads", "pickle.loads"),
        ("builtins", "open", "builtins.open"),
        ("builtins", "type", "builtins.type"),
        ("shutil", "rmtree", "shutil.rmtree"),
        ("nbckpt.pickling.allowlist", "add_safe_globals", "nbckpt.pickling.allowlist.add_safe_globals"),
    ])
    def test_blocked_names(self, module, name, dotted):
        pkl = b"\x80\x02" + global_op(module, name) + b"."
        with pytest.raises(nbckpt.UnpicklingError, match="even when allowlisted") as info:
            safe_loads(pkl)
        assert info.value.global_name == dotted

    def test_tuple_form_cannot_shadow_nbckpt_globals(self):
        # A user entry under a name nbckpt implements itself does not replace nbckpt's.
        nbckpt.add_safe_globals([(set_canary, "collections.OrderedDict")])
        pkl = b"\x80\x02" + global_op("collections", "OrderedDict") + b")R."
        out = safe_loads(pkl)
        assert type(out) is collections.OrderedDict and out == {}
        assert CANARY["calls"] == 0


# ======================================================================================
# Plain data: sets, bytes, complex, OrderedDict._metadata
# ======================================================================================


class TestPlainData:
    def test_sets_are_loadable_with_weights_only(self):
        obj = {"s": {1, "a", (2, 3)}, "f": frozenset({1.5, None}), "e": set(), "ef": frozenset()}
        out = load_bytes(torch_bytes(obj))
        assert_identical(out, obj)

    def test_serialization_byte_literal(self):
        obj = {"b": b"\x00\xffabc\x80", "ba": bytearray(b"\x01\x02\xfe"), "eba": bytearray(),
               "big": bytes(range(256)) * 40}
        out = load_bytes(torch_bytes(obj))
        assert_identical(out, obj)

    def test_empty_bytes(self):
        assert_identical(load_bytes(torch_bytes({"b": b""})), {"b": b""})

    def test_complex_numbers(self):
        obj = {"c": 1 + 2j, "l": [complex(0, -1.5), complex(float("inf"), -0.0)]}
        out = load_bytes(torch_bytes(obj))
        assert_identical(out, obj)

    def test_counter_and_ordered_dict(self):
        obj = {"c": collections.Counter({"a": 3, "b": 1}), "o": collections.OrderedDict([("z", 1), ("a", 2)])}
        out = load_bytes(torch_bytes(obj))
        assert_identical(out, obj)

    def test_state_dict_keeps_metadata(self):
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
        sd = model.state_dict()
        out = load_bytes(torch_bytes(sd))
        assert type(out) is collections.OrderedDict
        assert list(out) == list(sd)
        for key, tensor in sd.items():
            np.testing.assert_array_equal(out[key], tensor.numpy())
        assert out._metadata == sd._metadata
        assert out._metadata["1"] == {"version": 2}

    def test_torch_size_device_and_dtypes(self):
        obj = {"size": torch.Size([2, 3]), "dev": torch.device("cpu"), "dt": torch.float16}
        out = load_bytes(torch_bytes(obj))
        assert out["size"] == (2, 3) and type(out["size"]) is tuple
        assert out["dev"] == "cpu"
        assert out["dt"] == np.dtype(np.float16)


# ======================================================================================
# NumPy objects pickled natively inside a torch checkpoint
# ======================================================================================


class TestNativeNumpy:
    def test_arrays_and_scalars(self):
        obj = {"a": np.arange(3, dtype=np.float32), "s": np.float64(2.5), "i": np.int8(-3),
               "b": np.array([True, False]), "c": np.array([1 + 2j], np.complex64),
               "z": np.array(7, np.int16)}
        out = load_bytes(torch_bytes(obj))
        assert type(out["a"]) is np.ndarray and out["a"].dtype == np.float32
        np.testing.assert_array_equal(out["a"], [0, 1, 2])
        assert type(out["s"]) is np.float64 and out["s"] == 2.5
        assert type(out["i"]) is np.int8 and out["i"] == -3
        for key in ("b", "c", "z"):
            assert type(out[key]) is np.ndarray
            assert out[key].dtype == obj[key].dtype and out[key].shape == obj[key].shape
            np.testing.assert_array_equal(out[key], obj[key])

    def test_fortran_order_and_big_endian(self):
        f = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
        be = np.arange(5, dtype=">i4")
        out = load_bytes(torch_bytes({"f": f, "be": be}))
        assert out["f"].flags.f_contiguous and not out["f"].flags.c_contiguous
        np.testing.assert_array_equal(out["f"], f)
        assert out["be"].dtype == np.dtype("int32")  # native order, as NumPy's own unpickling gives
        np.testing.assert_array_equal(out["be"], np.arange(5))
        out["be"][0] = 9  # writable, owns its memory
        assert out["be"][0] == 9

    def test_shared_array_is_one_object(self):
        a = np.arange(4, dtype=np.float32)
        out = load_bytes(torch_bytes({"x": a, "y": a}))
        assert out["x"] is out["y"]

    def test_empty_array(self):
        out = load_bytes(torch_bytes({"e": np.zeros((0, 3), np.float32)}))
        assert out["e"].shape == (0, 3) and out["e"].dtype == np.float32

    def test_object_array_refused_and_nothing_runs(self, tmp_path):
        canary = tmp_path / "canary"
        data = torch_bytes({"o": np.array([Reduce(write_canary, str(canary)), 1], dtype=object)})
        nbckpt.add_safe_globals([write_canary])  # even the payload's function is allowlisted
        with pytest.raises(nbckpt.UnpicklingError, match="numpy dtype object is not numeric"):
            load_bytes(data, weights_only=True)
        assert not canary.exists()

    @pytest.mark.parametrize("array", [np.array(["a", "bc"]), np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]),
                                       np.array(["2020-01-01"], dtype="datetime64[D]")],
                             ids=["unicode", "structured", "datetime"])
    def test_non_numeric_arrays_refused(self, array):
        with pytest.raises(nbckpt.UnpicklingError, match="is not numeric"):
            load_bytes(torch_bytes({"a": array}))

    def test_setitem_on_array_refused(self):
        pkl = pickle.dumps(np.arange(3, dtype=np.float32), protocol=2)
        assert pkl.endswith(b"b.")
        assert type(safe_loads(pkl)) is np.ndarray
        with pytest.raises(nbckpt.UnpicklingError, match="refused SETITEM on numpy.ndarray"):
            safe_loads(pkl[:-1] + b"K\x00K\x07s.")
        with pytest.raises(nbckpt.UnpicklingError, match="refused BUILD on numpy.ndarray"):
            safe_loads(pkl[:-1] + b"}b.")

    def test_reconstruct_only_builds_ndarray(self):
        # numpy's _reconstruct may only be given numpy.ndarray as its class.
        pkl = (b"\x80\x02" + global_op("numpy._core.multiarray", "_reconstruct")
               + global_op("collections", "OrderedDict") + b"K\x00\x85C\x01b\x87R.")
        with pytest.raises(nbckpt.UnpicklingError, match="may only build numpy.ndarray"):
            safe_loads(pkl)

    def test_unbuilt_array_in_container(self):
        pkl = (b"\x80\x02]" + global_op("numpy._core.multiarray", "_reconstruct") + global_op("numpy", "ndarray")
               + b"K\x00\x85C\x01b\x87Ra.")
        with pytest.raises(nbckpt.FormatError, match="never finished building"):
            safe_loads(pkl)

    def test_huge_zero_size_shape(self):
        pkl = pickle.dumps(np.zeros((1, 3), np.float32), protocol=2)
        data_str = b"X\x0c\x00\x00\x00" + b"\x00" * 12
        assert pkl.count(b"K\x01K\x03\x86") == 1 and pkl.count(data_str) == 1
        huge = b"\x8a\x0f" + (10**35).to_bytes(15, "little")
        evil = pkl.replace(b"K\x01K\x03\x86", b"K\x00" + huge + b"\x86").replace(data_str, b"X\x00\x00\x00\x00")
        with pytest.raises(nbckpt.FormatError):
            safe_loads(evil)


# ======================================================================================
# weights_only=False: the full unpickler
# ======================================================================================


class TestFullUnpickler:
    def test_tensors_and_plain_objects(self):
        obj = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "cfg": PlainConfig(0.1, "run"),
               "wt": None}
        obj["wt"] = obj["w"].t()
        data = torch_bytes(obj)

        with pytest.raises(nbckpt.UnpicklingError) as info:
            load_bytes(data)
        assert info.value.global_name == f"{MODULE}.PlainConfig"

        out = load_bytes(data, weights_only=False)
        assert type(out["w"]) is np.ndarray and out["w"].dtype == np.float32
        np.testing.assert_array_equal(out["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
        np.testing.assert_array_equal(out["wt"], out["w"].T)
        assert np.shares_memory(out["w"], out["wt"])
        assert type(out["cfg"]) is PlainConfig
        assert vars(out["cfg"]) == {"lr": 0.1, "name": "run"}

    def test_native_numpy_and_setstate(self):
        data = torch_bytes({"a": np.arange(3, dtype=">i4"), "s": np.float32(1.5), "u": UsesSetState(3),
                            "e": np.zeros(0, np.float64)})
        out = load_bytes(data, weights_only=False)
        assert out["a"].dtype == np.dtype("int32")  # NumPy's unpickling returns native order
        np.testing.assert_array_equal(out["a"], [0, 1, 2])
        assert type(out["s"]) is np.float32 and out["s"] == 1.5
        assert out["u"].restored == {"a": 3, "extra": [1, 2]}
        assert out["e"].shape == (0,) and out["e"].dtype == np.float64

    def test_non_numeric_numpy_arrays(self):
        data = torch_bytes({"s": np.array(["a", "bc"]), "o": np.array([1, "x"], dtype=object)})
        out = load_bytes(data, weights_only=False)
        np.testing.assert_array_equal(out["s"], ["a", "bc"])
        assert out["o"].dtype == object and list(out["o"]) == [1, "x"]


# ======================================================================================
# Opcodes: refused, malformed, bounded
# ======================================================================================


@contextlib.contextmanager
def _with_extension(code, module, name):
    copyreg.add_extension(module, name, code)
    try:
        yield
    finally:
        copyreg.remove_extension(module, name, code)


class TestRefusedOpcodes:
    def test_inst(self):
        pkl = b"\x80\x02(i" + MODULE_B + b"\nset_canary\n."
        pickle.loads(pkl)
        assert CANARY["calls"] == 1  # live payload
        with nbckpt.safe_globals([set_canary]):
            with pytest.raises(nbckpt.UnpicklingError, match="opcode INST at byte 3"):
                safe_loads(pkl)
        assert CANARY["calls"] == 1

    def test_obj(self):
        pkl = b"\x80\x02(" + global_op(MODULE, "set_canary") + b"o."
        pickle.loads(pkl)
        assert CANARY["calls"] == 1
        with nbckpt.safe_globals([set_canary]):
            with pytest.raises(nbckpt.UnpicklingError, match="opcode OBJ"):
                safe_loads(pkl)
        assert CANARY["calls"] == 1

    def test_newobj_ex(self):
        pkl = b"\x80\x04" + global_op(MODULE, "CanaryNew") + b")}\x92."
        assert type(pickle.loads(pkl)) is CanaryNew
        assert CANARY["calls"] == 1
        with nbckpt.safe_globals([CanaryNew]):
            with pytest.raises(nbckpt.UnpicklingError, match="opcode NEWOBJ_EX"):
                safe_loads(pkl)
        assert CANARY["calls"] == 1

    @pytest.mark.parametrize("code, opcode", [(241, b"\x82\xf1"), (0x1F1, b"\x83\xf1\x01"),
                                              (0x1000001, b"\x84\x01\x00\x00\x01")],
                             ids=["EXT1", "EXT2", "EXT4"])
    def test_ext(self, code, opcode):
        with _with_extension(code, MODULE, "set_canary"):
            pkl = pickle.dumps(set_canary, protocol=2)
            assert opcode in pkl
            call = pkl[:-1] + b")R."
            assert pickle.loads(call) == "canary ran"
            assert CANARY["calls"] == 1
            with nbckpt.safe_globals([set_canary]):
                with pytest.raises(nbckpt.UnpicklingError, match="opcode EXT"):
                    safe_loads(call)
        assert CANARY["calls"] == 1

    def test_protocol_5_buffers(self):
        pkl = pickle.dumps(bytearray(b"abc"), protocol=5)
        with pytest.raises(nbckpt.UnpicklingError, match="opcode BYTEARRAY8.*protocol-5 buffer"):
            safe_loads(pkl)
        buffers = []
        pkl = pickle.dumps(pickle.PickleBuffer(bytearray(b"abc")), protocol=5, buffer_callback=buffers.append)
        assert buffers
        with pytest.raises(nbckpt.UnpicklingError, match="opcode NEXT_BUFFER"):
            safe_loads(pkl)
        with pytest.raises(nbckpt.UnpicklingError, match="opcode READONLY_BUFFER"):
            safe_loads(b"\x80\x05N\x98.")

    def test_text_protocol(self):
        with pytest.raises(nbckpt.UnpicklingError, match="opcode DICT .*protocol 0"):
            safe_loads(pickle.dumps({"a": 1}, protocol=0))
        for raw, name in [(b"I1\n.", "INT"), (b"Vx\n.", "UNICODE"), (b"Pid\n.", "PERSID"), (b"g0\n.", "GET")]:
            with pytest.raises(nbckpt.UnpicklingError, match=f"opcode {name} "):
                safe_loads(raw)

    def test_refused_opcodes_through_load(self):
        pkl = b"\x80\x02(" + global_op(MODULE, "set_canary") + b"o."
        nbckpt.add_safe_globals([set_canary])
        with pytest.raises(nbckpt.UnpicklingError, match="opcode OBJ"):
            nbckpt.load(make_checkpoint(pkl))
        assert CANARY["calls"] == 0


class TestTargetChecks:
    @pytest.mark.parametrize("pkl, match", [
        (b"\x80\x02]K\x00K\x01s.", "refused SETITEM on builtins.list"),
        (b"\x80\x02](K\x00K\x01u.", "refused SETITEMS on builtins.list"),
        (b"\x80\x02)K\x00K\x01s.", "refused SETITEM on builtins.tuple"),
        (b"\x80\x02}K\x01a.", "refused APPEND on builtins.dict"),
        (b"\x80\x02}(K\x01e.", "refused APPENDS on builtins.dict"),
        (b"\x80\x04(K\x01\x91(K\x02\x90.", "refused ADDITEMS on builtins.frozenset"),
        (b"\x80\x04](K\x02\x90.", "refused ADDITEMS on builtins.list"),
        (b"\x80\x02}}b.", "refused BUILD on builtins.dict"),
        (b"\x80\x02]}b.", "refused BUILD on builtins.list"),
        (b"\x80\x02" + global_op("collections", "OrderedDict") + b"}X\x01\x00\x00\x00xK\x01sb.",
         "refused BUILD on builtins.method"),
        (b"\x80\x02" + global_op("torch", "FloatStorage") + b"}b.", "refused BUILD on nbckpt"),
        (b"\x80\x02" + global_op("__builtin__", "set") + b"]\x85R}b.", "refused BUILD on builtins.set"),
    ], ids=["setitem_list", "setitems_list", "setitem_tuple", "append_dict", "appends_dict",
            "additems_frozenset", "additems_list", "build_dict", "build_list", "build_method",
            "build_storage_class", "build_set"])
    def test_refused(self, pkl, match):
        with pytest.raises(nbckpt.UnpicklingError, match=match):
            safe_loads(pkl)

    def test_allowed_targets(self):
        pkl = (b"\x80\x02" + global_op("collections", "OrderedDict") + b")R(K\x01K\x02uK\x03K\x04s"
               + b"\x85.")
        assert safe_loads(pkl) == (collections.OrderedDict([(1, 2), (3, 4)]),)


class TestMalformed:
    @pytest.mark.parametrize("pkl, match", [
        (b"", "ends without a STOP"),
        (b"\x80\x02", "ends without a STOP"),
        (b"\x80\x02.", "STOP with 0 objects"),
        (b".", "STOP with 0 objects"),
        (b"\x80\x02NN.", "STOP with 2 objects"),
        (b"\x80\x02(N.", "STOP with 1 objects and 1 marks"),
        (b"\x80\x02h\x05.", "memo slot 5 is read before it is written"),
        (b"\x80\x02j\xff\xff\xff\xff.", "memo slot 4294967295"),
        (b"\x80\x02X" + struct.pack("<I", 2**31) + b"abc.", "expected 2147483648 bytes"),
        (b"\x80\x04\x8d" + struct.pack("<Q", 2**64 - 1) + b"abc.", "expected 18446744073709551615 bytes"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**63) + b"abc.", "bytes of data"),
        (b"\x80\x03B" + struct.pack("<I", 2**32 - 1) + b"abc.", "bytes of data"),
        (b"\x80\x02\x8b" + struct.pack("<i", -1) + b"abc.", "expected -1 bytes"),
        (b"\x80\x02T" + struct.pack("<i", -5) + b"abc.", "expected -5 bytes"),
        (b"\x80\x02J\x01\x02", "bytes of data"),
        (b"\x80\x02G\x00\x00", "bytes of data"),
        (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "not valid UTF-8"),
        (b"\x80\x02t.", "needs a MARK"),
        (b"\x80\x021.", "needs a MARK"),
        (b"\x80\x02R.", "corrupt or truncated"),
        (b"\x80\x02\x86.", "corrupt or truncated"),
        (b"\x80\x02cos", "not terminated by a newline"),
        (b"\x80\x02c" + b"a" * 2000 + b"\nb\n.", "not terminated by a newline"),
        (b"\x80\x06N.", "unsupported pickle protocol 6"),
        (b"\x80\x02\xff.", "byte 0xff is not a pickle opcode"),
        (b"\x80\x02}]K\x01s.", "invalid pickle"),           # unhashable key
        (b"\x80\x04\x8f(]\x90.", "invalid pickle"),           # unhashable set item
        (b"\x80\x02" + global_op("__builtin__", "set") + b"NR.", "REDUCE arguments must be a tuple"),
        (b"\x80\x02(K\x01u.", "corrupt or truncated"),
        (b"\x80\x02}(K\x01u.", "odd number of items"),
        (b"\x80\x02K\x01K\x02\x93.", "STACK_GLOBAL needs two strings"),
    ])
    def test_format_errors(self, pkl, match):
        with pytest.raises(nbckpt.FormatError, match=match) as info:
            safe_loads(pkl)
        assert isinstance(info.value, ValueError)
        assert not isinstance(info.value, (IndexError, KeyError, struct.error, MemoryError))
        assert info.value.record == "data.pkl"

    def test_truncated_torch_checkpoint(self):
        data = torch_bytes({"sd": torch.nn.Linear(3, 2).state_dict(), "n": np.arange(4, dtype=">i4"),
                            "s": np.float64(2.5), "c": 1 + 2j, "set": {1, 2}, "b": b"abc",
                            "size": torch.Size([2, 3]), "h": torch.ones(4, dtype=torch.float16)[1:]})
        records = records_of(data)
        pkl = records["data.pkl"]
        out = nbckpt.load(make_checkpoint(pkl, records))  # the untruncated control
        np.testing.assert_array_equal(out["h"], np.ones(3, np.float16))
        for n in range(len(pkl)):
            with pytest.raises(nbckpt.FormatError):
                nbckpt.load(make_checkpoint(pkl[:n], records))

    def test_truncated_plain_pickles(self):
        obj = {"a": [1, 2.5, "x" * 300, 10**40, None, True], "t": (1, (2, 3)), "s": {1}, "b": b"xy"}
        for protocol in (2, 4):
            pkl = pickle.dumps(obj, protocol=protocol)
            assert_identical(safe_loads(pkl), obj)
            for n in range(len(pkl)):
                with pytest.raises(nbckpt.FormatError):
                    safe_loads(pkl[:n])

    def test_global_not_utf8(self):
        with pytest.raises(nbckpt.FormatError):
            safe_loads(b"\x80\x02cos\xff\nsystem\n.")

    def test_complex_overflow(self):
        huge = b"\x8b" + struct.pack("<i", 200) + b"\x00" * 199 + b"\x01"
        with pytest.raises(nbckpt.FormatError):
            safe_loads(b"\x80\x02" + global_op("__builtin__", "complex") + huge + b"K\x00\x86R.")

    def test_persistent_id_holding_an_array(self):
        array = pickle.dumps(np.arange(2), protocol=2)[2:-1]
        with pytest.raises(nbckpt.UnpicklingError, match="only storages may be loaded"):
            safe_loads(b"\x80\x02" + array + b"\x85Q.")

    def test_persistent_id_must_be_a_storage(self):
        with pytest.raises(nbckpt.UnpicklingError, match="persistent id must be a tuple"):
            safe_loads(b"\x80\x02K\x01Q.")
        with pytest.raises(nbckpt.UnpicklingError, match="only storages .* 'module'"):
            safe_loads(b"\x80\x02X\x06\x00\x00\x00module\x85Q.")


class TestBounds:
    def test_deep_mark_nesting_is_refused_quickly(self):
        start = time.perf_counter()
        with pytest.raises(nbckpt.FormatError, match=f"nests more than {MAX_NESTING} levels"):
            safe_loads(b"\x80\x02" + b"(" * 100_000 + b".")
        assert time.perf_counter() - start < 1.0
        with pytest.raises(nbckpt.FormatError, match="nests more than"):
            nbckpt.load(make_checkpoint(b"\x80\x02" + b"(" * 100_000 + b"."))

    def test_nesting_limit_is_exact(self):
        ok = b"\x80\x02" + b"(" * MAX_NESTING + b"t" * MAX_NESTING + b"."
        out = safe_loads(ok)
        depth = 0
        while out:
            (out,) = out
            depth += 1
        assert depth == MAX_NESTING - 1 and out == ()
        with pytest.raises(nbckpt.FormatError):
            safe_loads(b"\x80\x02" + b"(" * (MAX_NESTING + 1) + b"t" * (MAX_NESTING + 1) + b".")

    @pytest.mark.parametrize("size", [10**12, 50_000_000])
    def test_bytearray_of_int_refused_without_allocating(self, size):
        n = (size.bit_length() + 8) // 8
        arg = b"\x8a" + bytes([n]) + size.to_bytes(n, "little", signed=True)
        pkl = b"\x80\x02" + global_op("__builtin__", "bytearray") + arg + b"\x85R."
        tracemalloc.start()
        try:
            with pytest.raises(nbckpt.FormatError, match="bytearray\\(\\) accepts bytes"):
                safe_loads(pkl)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1_000_000

    def test_length_fields_do_not_allocate(self):
        tracemalloc.start()
        try:
            for op in (b"X" + struct.pack("<I", 2**31), b"B" + struct.pack("<I", 2**32 - 1),
                       b"\x8e" + struct.pack("<Q", 2**40), b"\x8b" + struct.pack("<i", 2**31 - 1)):
                with pytest.raises(nbckpt.FormatError):
                    safe_loads(b"\x80\x04" + op + b"abc.")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1_000_000


# ======================================================================================
# Python's own pickles of plain data
# ======================================================================================


def _plain_data():
    shared = ["shared"]
    words = [f"word{i}" for i in range(300)]  # > 256 memo entries: LONG_BINPUT/LONG_BINGET
    return {
        "ints": [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1,
                 2**63, -(2**64), 10**100, -(10**300)],
        "floats": [0.0, -0.0, 1.5, -2.25e-300, float("inf"), float("-inf"), float("nan"), 1e308],
        "bools": [True, False, None],
        "str": ["", "a", "é", "\U0001f600", "x" * 70_000, "\ud800".encode("utf-8", "surrogatepass")
                .decode("utf-8", "surrogatepass")],
        "bytes": [b"\x00", b"\xff" * 300],
        "bytearray": bytearray(b"abc"),
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((),)],
        "set": {1, "a", (1, 2)},
        "frozenset": frozenset({2.5, "b"}),
        "empty": [{}, [], set(), frozenset()],
        "complex": complex(1, -2),
        "od": collections.OrderedDict([("b", 1), ("a", 2)]),
        "long_list": list(range(2500)),           # several APPENDS batches
        "long_dict": {i: str(i) for i in range(2500)},
        "words": words + words,
        "shared": [shared, shared],
        1: "int key",
        (1, "t"): "tuple key",
    }


class TestPythonPickles:
    @pytest.mark.parametrize("protocol", [2, 3, 4, 5])
    def test_plain_data_loads_identically(self, protocol):
        obj = _plain_data()
        if protocol == 5:
            obj.pop("bytearray")  # protocol 5 writes bytearrays with BYTEARRAY8
        pkl = pickle.dumps(obj, protocol=protocol)
        out = safe_loads(pkl)
        assert_identical(out, pickle.loads(pkl))
        assert_identical(out, obj)
        assert out["shared"][0] is out["shared"][1]
        assert out["words"][0] is out["words"][300]

    @pytest.mark.parametrize("protocol", [2, 4])
    def test_recursive_structures(self, protocol):
        a = []
        a.append(a)
        out = safe_loads(pickle.dumps(a, protocol=protocol))
        assert out[0] is out

        # A tuple that contains itself through a list: pickled with POP / POP_MARK.
        for n in (1, 4):
            lst = []
            t = (lst,) + tuple(range(1, n))
            lst.append(t)
            pkl = pickle.dumps(t, protocol=protocol)
            assert ("POP" if n == 1 else "POP_MARK") in {op.name for op, _, _ in pickletools.genops(pkl)}
            out = safe_loads(pkl)
            assert type(out) is tuple and len(out) == n
            assert out[0][0] is out

        d = {}
        d["self"] = d
        out = safe_loads(pickle.dumps(d, protocol=protocol))
        assert out["self"] is out

    def test_dup(self):
        out = safe_loads(b"\x80\x02]2\x86.")
        assert out == ([], []) and out[0] is out[1]

    def test_python2_strings(self):
        # SHORT_BINSTRING / BINSTRING: decoded with the encoding, or kept as bytes.
        pkl = b"\x80\x02U\x03abcT\x04\x00\x00\x00d\xe9fg\x86."
        assert SafeUnpickler(pkl, Rebuilder(None), encoding="latin1").load() == ("abc", "d\xe9fg")
        assert SafeUnpickler(pkl, Rebuilder(None), encoding="bytes").load() == (b"abc", b"d\xe9fg")

    def test_position_after_stop(self):
        pkl = pickle.dumps([1, 2], protocol=2)
        unpickler = SafeUnpickler(pkl + b"trailing", Rebuilder(None))
        assert unpickler.load() == [1, 2]
        assert unpickler.position == len(pkl)
        second = SafeUnpickler(pkl + pkl, Rebuilder(None), start=len(pkl))
        assert second.load() == [1, 2]


class TestPlainFilesWithoutTorch:
    """The safety tests build tensor-free files without torch; they are torch's files."""

    @pytest.mark.parametrize("obj", [{"b": b"", "n": None}, [1.5, "x", (2, 3)], Reduce(print, "x"),
                                     {"a": np.arange(3, dtype=">i4")}])
    def test_plain_files_are_torchs_files(self, obj):
        ours, theirs = zipfile.ZipFile(io.BytesIO(plain_torch_file(obj))), None
        buf = io.BytesIO()
        torch.save(obj, buf)
        theirs = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
        names = [n for n in theirs.namelist() if not n.endswith("serialization_id")]
        assert [n for n in ours.namelist() if not n.endswith("serialization_id")] == names
        for name in names:
            assert ours.read(name) == theirs.read(name), name


# -- issue 15: placeholders, hashing ----------------------------------------------------------------------


def test_memoize_into_a_memo_with_a_gap_never_leaks_a_placeholder():
    # memo {1: 7}; MEMOIZE then writes slot 1 (len(memo) is 1) with an array BUILD completes later
    corpus = Path(__file__).parent / "data" / "attacks" / "memo_gap_placeholder.pt"
    with zipfile.ZipFile(corpus) as z:
        pkl = z.read("archive/data.pkl")
    assert b"K\x07q\x010" in pkl and b"\x94" in pkl
    loaded = safe_loads(pkl)
    assert [type(x) for x in loaded] == [np.ndarray, np.ndarray] and loaded[0] is loaded[1]
    np.testing.assert_array_equal(loaded[0], [0, 1])


def test_colliding_hash_keys_are_refused_after_64():
    keys = {i * (2**61 - 1): None for i in range(1, 66)}
    with pytest.raises(nbckpt.FormatError, match=r"^more than 64 keys of this pickle share one hash value \(0\)"):
        safe_loads(pickle.dumps(keys, protocol=2))
    assert len(safe_loads(pickle.dumps({i: None for i in range(10_000)}, protocol=2))) == 10_000


def test_a_key_the_memo_repeats_2_40_times_is_refused_in_linear_time():
    pkl = b"\x80\x02}K\x01K\x02\x86q\x000" + b"h\x00h\x00\x86q\x000" * 40 + b"h\x00K\x00s."
    with pytest.raises(nbckpt.FormatError, match="would visit more than 4194304 tuple items"):
        safe_loads(pkl)
    small = b"\x80\x02}K\x01K\x02\x86q\x000" + b"h\x00h\x00\x86q\x000" * 10 + b"h\x00K\x00s."
    assert len(safe_loads(small)) == 1  # 2**10 leaves: hashed as Python would
