"""nbckpt.pickling.scan: the scan reports every global Python's unpickler would look up.

The reference is ``pickle._Unpickler`` itself (what ``weights_only=False`` runs),
with a ``find_class`` that records the name and returns a harmless stand-in that
accepts every call, BUILD, APPEND and SETITEM. Whatever the pickle, every name
it looks up must be in the scan's list (or the list must hold a computed /
extension entry, never allowed). Checked on hand-written pickles, on the whole
hostile corpus, and on fuzzed opcode streams.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbckpt
from nbckpt.pickling import decision
from nbckpt.pickling.scan import COMPUTED, scan_pickle

CORPUS = Path(__file__).resolve().parent / "data" / "attacks"


class _Anything:
    """Accepts whatever a pickle does to it."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __setstate__(self, state):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __setitem__(self, key, value):
        pass

    def add(self, item):
        pass


class Recorder(pickle._Unpickler):  # type: ignore[name-defined]
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.names: list[str] = []

    def find_class(self, module, name):
        from nbckpt.pickling.rebuild import canonical_name

        self.names.append(canonical_name(module, name))
        return _Anything

    def persistent_load(self, pid):
        return _Anything()


def looked_up(data: bytes) -> list[str]:
    """The globals Python's unpickler looks up before it finishes or fails."""
    recorder = Recorder(data)
    try:
        recorder.load()
    except Exception:  # noqa: BLE001 - a failing pickle still looked up what it did
        pass
    return recorder.names


def assert_scan_covers(data: bytes) -> None:
    try:
        refs = scan_pickle(data)
    except nbckpt.FormatError:
        return  # the scan refuses the pickle: it claims nothing
    names = {r.name for r in refs}
    wildcard = COMPUTED in names or any(n.startswith("<copyreg extension") for n in names)
    missing = [n for n in looked_up(data) if n not in names]
    assert wildcard or not missing, f"scan missed {missing} (it found {sorted(names)}) in {data!r}"


def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def u(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


# -- the stack after MARK-consuming opcodes -------------------------------------------------------

HIDDEN = [
    # TUPLE used to pop one item too many, so 'os' was lost and 'system' paired with another string
    ("tuple", b"\x80\x02" + u("os") + u("system") + b"(" + u("a") + b"t0\x93" + u("x") + b"\x85R."),
    ("pop_mark", b"\x80\x02" + u("os") + u("system") + b"(" + u("a") + u("b") + b"1\x93" + u("x") + b"\x85R."),
    ("pop_of_mark", b"\x80\x02" + u("os") + u("system") + b"(0\x93" + u("x") + b"\x85R."),
    ("appends", b"\x80\x02" + u("os") + u("system") + b"](" + u("a") + b"e0\x93" + u("x") + b"\x85R."),
    ("setitems", b"\x80\x02" + u("os") + u("system") + b"}(" + u("a") + u("b") + b"u0\x93" + u("x") + b"\x85R."),
    ("frozenset", b"\x80\x04" + u("os") + u("system") + b"(" + u("a") + b"\x910\x93" + u("x") + b"\x85R."),
    ("memo", b"\x80\x02" + u("os") + b"q\x01" + b"0" + u("system") + b"h\x01" + u("system") + b"\x93" + u("x")
     + b"\x85R."),
    ("dup", b"\x80\x02" + u("os") + u("system") + b"2" + b"0\x93" + u("x") + b"\x85R."),
]


@pytest.mark.parametrize("data", [d for _, d in HIDDEN], ids=[n for n, _ in HIDDEN])
def test_scan_follows_the_stack_as_pickle_does(data):
    assert_scan_covers(data)
    names = {r.name for r in scan_pickle(data)}
    assert "os.system" in names or COMPUTED in names


def test_tuple_after_mark_names_the_real_global():
    data = b"\x80\x02" + u("collections") + u("os") + u("system") + b"(" + u("a") + b"t0\x93" + u("x") + b"\x85R."
    refs = scan_pickle(data)
    assert [(r.name, r.allowed) for r in refs] == [
        ("os.system", False)]
    assert looked_up(data) == ["os.system"]


def test_extension_codes_are_reported_never_allowed():
    refs = scan_pickle(b"\x80\x02\x82\x05.")
    assert [(r.name, r.allowed) for r in refs] == [("<copyreg extension 5>", False)]


# -- one decision for scan and load --------------------------------------------------------------


class Outer:
    class Inner:
        pass


def test_nested_class_scan_and_load_agree():
    # protocol 2 pickles Outer.Inner as getattr(Outer, "Inner")
    data = pickle.dumps(Outer.Inner(), protocol=2)
    with nbckpt.safe_globals([Outer, Outer.Inner]):
        refs = {r.name: r.allowed for r in scan_pickle(data)}
        from nbckpt.pickling.rebuild import Rebuilder
        from nbckpt.pickling.unpickler import SafeUnpickler

        loaded = SafeUnpickler(data, Rebuilder(None)).load()
    assert type(loaded) is Outer.Inner
    assert refs == {"builtins.getattr": True, f"{__name__}.Outer": True, f"{__name__}.Outer.Inner": True}
    # without the nested class allowlisted, scan and load both refuse it
    with nbckpt.safe_globals([Outer]):
        refs = {r.name: r.allowed for r in scan_pickle(data)}
        with pytest.raises(nbckpt.UnpicklingError, match="refused getattr"):
            SafeUnpickler(data, Rebuilder(None)).load()
    assert refs[f"{__name__}.Outer.Inner"] is False


def test_decide_is_the_only_decision():
    ours = {"collections.OrderedDict": collections.OrderedDict}
    assert decision.decide("builtins", "getattr", ours).kind == "restricted"
    assert decision.decide("os", "system", ours).kind == "blocked"
    assert decision.decide("collections", "OrderedDict", ours).kind == "nbckpt"
    assert decision.decide("__builtin__", "set", {"builtins.set": set}).name == "builtins.set"
    with nbckpt.safe_globals([Outer]):
        found = decision.decide(__name__, "Outer", ours)
    assert (found.kind, found.obj) == ("user", Outer)
    assert decision.decide(__name__, "Outer", ours).allowed is False


# -- the hostile corpus and fuzzed pickles ----------------------------------------------------------


def _corpus_pickles():
    import json

    # Python's own unpickler is not safe on the bombs (a 300,000-deep tuple key
    # overflows the C stack when hashed): those are left to test_attacks.py.
    bombs = {e["file"] for e in json.loads((CORPUS / "manifest.json").read_text()) if e["bomb"]}
    for path in sorted(CORPUS.iterdir()):
        if path.name in bombs or not path.is_file():  # sharded cases are folders (no pickle of their own)
            continue
        raw = path.read_bytes()
        if path.suffix == ".pt" and raw[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(io.BytesIO(raw)) as z:
                    for name in z.namelist():
                        if name.endswith(".pkl"):
                            yield f"{path.name}:{name}", z.read(name)
            except Exception:  # noqa: BLE001 - a zip that lies is another test's business
                continue
        elif path.suffix == ".tar":
            try:
                with tarfile.open(fileobj=io.BytesIO(raw)) as t:
                    for m in t.getmembers():
                        f = t.extractfile(m) if m.isfile() and m.size < 1 << 20 else None
                        if f is not None:
                            yield f"{path.name}:{m.name}", f.read()
            except Exception:  # noqa: BLE001
                continue
        elif path.suffix == ".pt":
            yield path.name, raw


def test_scan_covers_the_corpus():
    count = 0
    for _name, data in _corpus_pickles():
        assert_scan_covers(data)
        count += 1
    assert count > 200


_ATOMS = [b"(", b"t", b"0", b"1", b"2", b"\x85", b"\x86", b"\x87", b"\x93", b"R", b"b", b"a", b"e", b"s",
          b"u", b"\x90", b"\x91", b"]", b"}", b")", b"\x8f", b"N", b"\x94", b"q\x00", b"q\x01", b"h\x00", b"h\x01",
          b"l", b"d", b"\x81", b"Q", u("os"), u("system"), u("builtins"), u("eval"), g("os", "system"),
          g("collections", "OrderedDict"), g("builtins", "getattr"), b"K\x01"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_ATOMS), max_size=30))
def test_scan_covers_fuzzed_pickles(atoms):
    assert_scan_covers(b"\x80\x04" + b"".join(atoms) + b".")


# -- the legacy tar format: every pickle load runs (issue 15) --------------------------------------


def _corpus(name: str) -> Path:
    return Path(__file__).parent / "data" / "attacks" / name


@pytest.mark.parametrize("name", ["tar_storage_count_os_system.tar", "tar_storage_header_os_system.tar",
                                  "tar_storage_views_os_system.tar", "tar_tensor_count_os_system.tar",
                                  "tar_tensor_header_os_system.tar"])
def test_scan_reads_the_pickles_of_the_storages_and_tensors_members(name):
    """Each of these tars names os.system only inside its ``storages`` or ``tensors`` member."""
    with tarfile.open(_corpus(name)) as tar:
        object_pickle = tar.extractfile("pickle").read()
    assert "os.system" not in [g.name for g in scan_pickle(object_pickle)]
    found = {g.name: g.allowed for g in nbckpt.scan(str(_corpus(name)))}
    assert found["os.system"] is False
    with pytest.raises(nbckpt.UnpicklingError, match="os.system"):
        nbckpt.load(str(_corpus(name)))


def test_tar_scan_lists_every_pickle_a_clean_load_runs():
    """A valid tar: the storage count, header and views, the tensor count and header, the object."""
    from nbckpt.formats import legacy_parse

    with open(_corpus("ok_handmade_tar.tar"), "rb") as f:
        pickles = legacy_parse.tar_pickles(f)
    assert len(pickles) == 6
    assert {g.name for p in pickles for g in scan_pickle(p)} == {"torch.FloatStorage", "torch.FloatTensor"}
