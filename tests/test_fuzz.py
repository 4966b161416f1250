"""Bounded, reproducible fuzzing of nbckpt's loaders (the long run is ``scripts/fuzz.py``).

Valid small checkpoints (written by torch, by nbckpt, in the legacy stream and
tar formats, with views and shared storage, with sparse arrays) are mutated by
the mutators of ``scripts/fuzz.py``, their choices drawn by hypothesis
(``derandomize=True``: the same examples on every run): single and multiple
bit flips, byte substitutions, record swaps and duplication inside the zip, and
pickle opcode substitutions inside data.pkl (the zip rebuilt around it with
``ZipWriter``); truncation is tried at every offset of small files
(exhaustively). Every input goes through ``nbckpt.load``, ``nbckpt.open`` (zip)
and ``nbckpt.scan``: the only acceptable outcomes are a value or an nbckpt
error. Other exceptions and hangs fail; so does ``MemoryError`` (each load runs
under an address-space limit, so a bomb fails fast instead of swapping).

nbckpt bugs already known (``fuzz.KNOWN_BUGS``) are tolerated by the oracle so
that new problems stay visible; each has a strict-xfail regression test here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbckpt

ROOT = Path(__file__).resolve().parent.parent


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("nbckpt_fuzz_script", ROOT / "scripts" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()
BASES = fuzz.build_bases()
BASE_NAMES = sorted(BASES)
MEMORY_HEADROOM = 2 << 30  # address space a single load may add


class HypothesisDraw(fuzz.Draw):
    def __init__(self, data) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))


@contextlib.contextmanager
def memory_guard(extra: int = MEMORY_HEADROOM):
    """Limit this process's address space to its current size plus ``extra`` (Linux only)."""
    try:
        import resource

        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


KNOWN_SEEN: list[str] = []


def assert_acceptable(data: bytes, what: str = "") -> None:
    """``data`` loads to a value or raises an nbckpt error, in load, open and scan."""
    with memory_guard():
        findings = fuzz.check(data, timeout_s=10)
    unknown = []
    for finding in findings:
        known = finding.known()
        if known:
            KNOWN_SEEN.append(known)
        else:
            unknown.append(finding)
    assert not unknown, "\n".join(
        f"{what}: {f.entry} -> {f.kind} {f.type}: {f.message}\n{f.trace}" for f in unknown)


# nbckpt.scan reads protocol-0 STRING arguments through pickletools, which warns on bad escapes.
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")

FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _mutated(data, mutator: str) -> tuple[str, bytes]:
    draw = HypothesisDraw(data)
    base = draw.choice(BASE_NAMES)
    return base, fuzz.MUTATORS[mutator](BASES[base], draw)


# -- the bases themselves -----------------------------------------------------------------------


@pytest.mark.parametrize("name", BASE_NAMES)
def test_bases_load(name):
    """Every base is a valid checkpoint (a mutation of a broken base would test nothing)."""
    assert fuzz.check(BASES[name]) == []
    assert nbckpt.load(io.BytesIO(BASES[name])) is not None


def test_bases_cover_every_kind():
    assert {"nbckpt", "nbckpt_legacy", "views", "deflated"} <= set(BASES)
    # scipy and torch are test dependencies: the sparse and torch-written bases must be there.
    assert {"sparse", "torch", "torch_legacy", "handmade_tar"} <= set(BASES)


# -- exhaustive truncation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nbckpt", "nbckpt_legacy", "torch", "torch_legacy", "views", "sparse",
                                  "deflated", "handmade_tar"])
def test_truncation_at_every_offset(name):
    if name not in BASES:
        pytest.skip(f"no {name} base")
    data = BASES[name]
    step = 1 if len(data) <= 4096 else 7  # the tar is 10 kB of mostly padding
    for end in range(0, len(data), step):
        assert_acceptable(data[:end], f"{name} truncated to {end} bytes")


# -- hypothesis ----------------------------------------------------------------------------------


@settings(max_examples=3000, **FUZZ_SETTINGS)
@given(st.data())
def test_single_bit_flips(data):
    base, mutated = _mutated(data, "bitflip")
    assert_acceptable(mutated, f"bit flip of {base}")


@settings(max_examples=2000, **FUZZ_SETTINGS)
@given(st.data())
def test_multiple_bit_flips(data):
    base, mutated = _mutated(data, "multi_bitflip")
    assert_acceptable(mutated, f"bit flips of {base}")


@settings(max_examples=2000, **FUZZ_SETTINGS)
@given(st.data())
def test_byte_substitutions(data):
    base, mutated = _mutated(data, "bytesub")
    assert_acceptable(mutated, f"byte substitutions of {base}")


@settings(max_examples=2500, **FUZZ_SETTINGS)
@given(st.data())
def test_record_swaps_and_duplication(data):
    draw = HypothesisDraw(data)
    base = draw.choice([n for n in BASE_NAMES if BASES[n][:4] == b"PK\x03\x04"])
    assert_acceptable(fuzz.records(BASES[base], draw), f"record mutation of {base}")


@settings(max_examples=5000, **FUZZ_SETTINGS)
@given(st.data())
def test_pickle_opcode_substitutions(data):
    draw = HypothesisDraw(data)
    base = draw.choice([n for n in BASE_NAMES if n != "handmade_tar"])
    assert_acceptable(fuzz.pickle_ops(BASES[base], draw), f"pickle mutation of {base}")


# -- the mutators do what they say ----------------------------------------------------------------


TOOLS = tuple(e for e in fuzz.ALL_ENTRIES if e not in ("load", "open", "scan"))


@settings(max_examples=60, **FUZZ_SETTINGS)
@given(st.data(), st.sampled_from(["bitflip", "bytesub", "truncate", "records", "pickle_ops"]))
def test_tools_on_mutated_files(data, mutator):
    """verify, diff, convert and every CLI command: a value or an nbckpt error, like load."""
    base, mutated = _mutated(data, mutator)
    with memory_guard():
        findings = fuzz.check(mutated, timeout_s=20, entries=TOOLS)
    unknown = [f for f in findings if not f.known()]
    assert not unknown, "\n".join(f"{mutator} of {base}: {f.entry} -> {f.kind} {f.type}: {f.message}\n{f.trace}"
                                  for f in unknown)


def test_tools_run_on_the_bases():
    for name, data in BASES.items():
        assert fuzz.check(data, entries=TOOLS) == [], name


def test_pickle_mutations_reach_the_unpickler():
    """A rebuilt zip around a mutated data.pkl is a valid zip: the error comes from the pickle."""
    class Fixed(fuzz.Draw):
        def __init__(self, values):
            self.values = list(values)

        def int(self, lo, hi):
            return max(lo, min(hi, self.values.pop(0))) if self.values else lo

    # one mutation: opcode substitution (choice 0) of the first opcode (PROTO) into INST ('i')
    mutated = fuzz.pickle_ops(BASES["nbckpt"], Fixed([1, 0, 0, fuzz.OPCODE_BYTES.index(ord("i"))]))
    with pytest.raises(nbckpt.CheckpointError) as info:
        nbckpt.load(io.BytesIO(mutated))
    assert "data.pkl" in str(info.value) or "INST" in str(info.value) or "pickle" in str(info.value)
    fuzz._zip_records(mutated)  # still a readable zip


def test_oracle_reports_foreign_exceptions():
    """The oracle itself: anything but a value or an nbckpt error is a finding."""
    real_load = nbckpt.load
    try:
        nbckpt.load = lambda f: (_ for _ in ()).throw(TypeError("boom"))
        findings = fuzz.check(BASES["nbckpt"], entries=("load",))
    finally:
        nbckpt.load = real_load
    assert [(f.entry, f.type) for f in findings] == [("load", "TypeError")]


def test_fuzz_script_runs_and_writes_findings(tmp_path):
    """scripts/fuzz.py: a short run in worker subprocesses, and --replay of a known-bug input."""
    out = tmp_path / "findings"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--minutes", "0.01",
                          "--workers", "1", "--batch", "30", "--seed", "5", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    assert run.returncode in (0, 1), run.stderr
    rounds = re.search(r"(\d+) inputs; next seed (\d+)", run.stdout)
    assert rounds, run.stdout
    inputs, next_seed = int(rounds.group(1)), int(rounds.group(2))
    assert inputs >= 30 and inputs % 30 == 0 and next_seed == 5 + inputs // 30, run.stdout
    assert (run.returncode == 1) == ("NEW" in run.stdout), run.stdout
    bug = tmp_path / "bug.bin"
    bug.write_bytes(_corrupt_deflate_input())
    replay = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--replay", str(bug)],
                            capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT))
    assert replay.returncode in (0, 1)
    assert ("no finding" in replay.stdout) == (replay.returncode == 0), replay.stdout


# -- known bugs found by fuzzing: regression tests ------------------------------------------------


def _corrupt_deflate_input() -> bytes:
    """nbckpt's small base with data/0 marked DEFLATED (method 8) in both headers: invalid deflate data."""
    data = bytearray(BASES["nbckpt"])
    for magic, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (start := data.find(magic, start)) >= 0:
            name_len_at = 26 if magic == b"PK\x03\x04" else 28
            header = 30 if magic == b"PK\x03\x04" else 46
            (name_len,) = struct.unpack_from("<H", data, start + name_len_at)
            if data[start + header: start + header + name_len].endswith(b"/data/0"):
                struct.pack_into("<H", data, start + method_at, 8)
            start += 4
    return bytes(data)


def test_known_bug_invalid_deflate_data_is_a_format_error():
    data = _corrupt_deflate_input()
    with memory_guard():
        findings = fuzz.check(data)
    assert findings == [], [(f.entry, f.type, f.message) for f in findings]


def test_known_bug_unhashable_legacy_key_is_a_format_error():
    data = (ROOT / "tests" / "data" / "attacks" / "legacy_key_unhashable.pt").read_bytes()
    with memory_guard():
        findings = fuzz.check(data)
    assert findings == [], [(f.entry, f.type, f.message) for f in findings]
