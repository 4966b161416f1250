"""Bounded, reproducible fuzzing of nbckpt's loaders (the long run is ``scripts/fuzz.py``).

Valid small checkpoints (written by torch, by nbckpt, in the legacy stream and
tar formats, with views and shared storage, with sparse arrays; a safetensors
file written by ``safetensors.numpy`` with bf16 and f8; an ``.npz``) are mutated
by the mutators of ``scripts/fuzz.py``, their choices drawn by hypothesis
(``derandomize=True``: the same examples on every run): single and multiple
bit flips, byte substitutions, record swaps and duplication inside the zip (and
the npz), pickle opcode substitutions inside data.pkl (the zip rebuilt around
it with ``ZipWriter``), and changes inside a safetensors header (dtypes, shapes,
offsets, its length); truncation is tried at every offset of small files
(exhaustively). Checkpoint folders (sharded safetensors and torch shards behind
an index JSON, a DCP folder) are mutated one file at a time, or lose, rename or
swap a file. Every input goes through ``nbckpt.load``, ``nbckpt.open`` (every
record read), ``nbckpt.scan`` and, for the new readers,
``nbckpt.verify``: the only acceptable outcomes are a value or an nbckpt error.
Other exceptions and hangs fail; so does ``MemoryError`` (each load runs under
an address-space limit, so a bomb fails fast instead of swapping).

nbckpt bugs already known (``fuzz.KNOWN_BUGS``) are tolerated by the oracle so
that new problems stay visible; each has a strict-xfail regression test here.
"""

from __future__ import annotations

import contextlib
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
from fuzz_script import fuzz

ROOT = Path(__file__).resolve().parent.parent


BASES = fuzz.build_bases()
BASE_NAMES = sorted(BASES)
FOLDERS = fuzz.build_folder_bases()
FOLDER_NAMES = sorted(FOLDERS)
#: The entry points the new readers (safetensors, npz, sharded, DCP) are fuzzed through.
READERS = ("load", "open", "scan", "verify")
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


def assert_acceptable(data: bytes | dict[str, bytes], what: str = "",
                      entries: tuple[str, ...] = ("load", "open", "scan")) -> None:
    """``data`` (a file, or a folder as ``{name: bytes}``) loads to a value or raises an nbckpt error,
    in each of ``entries``."""
    with memory_guard():
        findings = fuzz.check(data, timeout_s=10, entries=entries)
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
    assert fuzz.check(BASES[name], entries=READERS) == []
    assert nbckpt.load(io.BytesIO(BASES[name])) is not None


@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_folder_bases_load(name, tmp_path):
    assert fuzz.check(FOLDERS[name], entries=fuzz.ALL_ENTRIES) == []
    fuzz._write_folder(str(tmp_path / "c"), FOLDERS[name])
    with nbckpt.open(tmp_path / "c") as archive:
        assert archive.format == {"sharded_bin": "sharded"}.get(name, name) and len(archive.records) >= 2
        assert [archive[r.path] is not None for r in archive.records]


def test_bases_cover_every_kind():
    assert {"nbckpt", "nbckpt_legacy", "views", "deflated"} <= set(BASES)
    # scipy, torch and safetensors are test dependencies: their bases must be there.
    assert {"sparse", "torch", "torch_legacy", "handmade_tar", "safetensors", "npz"} <= set(BASES)
    assert set(FOLDERS) == {"sharded", "sharded_bin", "dcp"}
    from nbckpt.formats.sniff import sniff_stream

    assert sniff_stream(io.BytesIO(BASES["safetensors"])) == "safetensors"
    assert sniff_stream(io.BytesIO(BASES["npz"])) == "npz"
    with nbckpt.open(io.BytesIO(BASES["safetensors"])) as archive:  # the dtypes the issue names
        assert {r.name: str(r.dtype) for r in archive.records}["bf"] == "bfloat16"
        assert {r.name: str(r.dtype) for r in archive.records}["f8"] == "float8_e4m3fn"


# -- exhaustive truncation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nbckpt", "nbckpt_legacy", "torch", "torch_legacy", "views", "sparse",
                                  "deflated", "handmade_tar", "safetensors", "npz"])
def test_truncation_at_every_offset(name):
    if name not in BASES:
        pytest.skip(f"no {name} base")
    data = BASES[name]
    step = 1 if len(data) <= 4096 else 7  # the tar is 10 kB of mostly padding
    entries = READERS if name in ("safetensors", "npz") else ("load", "open", "scan")
    for end in range(0, len(data), step):
        assert_acceptable(data[:end], f"{name} truncated to {end} bytes", entries)


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


# -- the new readers: safetensors headers, npz records, sharded and DCP folders ------------------------


@settings(max_examples=1000, **FUZZ_SETTINGS)
@given(st.data())
def test_safetensors_header_mutations(data):
    """Headers that lie about dtypes, shapes, offsets and their own length."""
    mutated = fuzz.json_doc(BASES["safetensors"], HypothesisDraw(data))
    assert_acceptable(mutated, "safetensors header mutation", READERS)


@settings(max_examples=500, **FUZZ_SETTINGS)
@given(st.data())
def test_npz_record_mutations(data):
    mutated = fuzz.records(BASES["npz"], HypothesisDraw(data))
    assert_acceptable(mutated, "npz record mutation", READERS)


@settings(max_examples=600, **FUZZ_SETTINGS)
@given(st.data())
def test_folder_mutations(data):
    """Sharded and DCP folders: one file mutated (the index or .metadata most often), or a file lost,
    renamed or copied over another; opened through the folder's path."""
    draw = HypothesisDraw(data)
    base = draw.choice(FOLDER_NAMES)
    mutated = fuzz.mutate_folder(FOLDERS[base], draw)
    assert_acceptable(mutated, f"mutation of the {base} folder {sorted(mutated)}", READERS)


def test_index_naming_paths_outside_its_folder_is_refused():
    import json

    for escape in ("../escape.safetensors", "/etc/passwd"):
        files = dict(FOLDERS["sharded"])
        index = json.loads(files["model.safetensors.index.json"])
        index["weight_map"]["w"] = escape
        files["model.safetensors.index.json"] = json.dumps(index).encode()
        assert fuzz.check(files, entries=READERS) == []
        with pytest.raises(nbckpt.FormatError, match="outside|absolute|folder"):
            _load_folder(files)


def _load_folder(files: dict[str, bytes]):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        fuzz._write_folder(tmp, files)
        return nbckpt.load(tmp)


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
    for name, data in {**BASES, **FOLDERS}.items():
        assert fuzz.check(data, entries=TOOLS) == [], name


@settings(max_examples=40, **FUZZ_SETTINGS)
@given(st.data())
def test_tools_on_mutated_folders(data):
    """verify, diff, convert and the CLI on mutated sharded and DCP folders."""
    draw = HypothesisDraw(data)
    base = draw.choice(FOLDER_NAMES)
    mutated = fuzz.mutate_folder(FOLDERS[base], draw)
    assert_acceptable(mutated, f"mutation of the {base} folder", TOOLS)


def test_folder_inputs_survive_the_findings_file():
    """A folder finding is written as one file (--replay reads it back)."""
    encoded = fuzz.encode_input(FOLDERS["dcp"])
    assert encoded.startswith(fuzz.FOLDER_MAGIC) and fuzz.decode_input(encoded) == FOLDERS["dcp"]
    assert fuzz.decode_input(BASES["npz"]) == BASES["npz"]


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


# -- found by fuzzing the new readers: regression tests ------------------------------------------------


def _npz_member_header(header: bytes) -> bytes:
    """An npz whose one member is a .npy with ``header`` as its header dict."""
    import zipfile

    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("x.npy", npy)
    return out.getvalue()


def _patched(data: bytes, magic: bytes, at: int, value: int, size: int = 2) -> bytes:
    """``data`` with the field at ``at`` of every zip header starting with ``magic`` set to ``value``."""
    out = bytearray(data)
    start = 0
    while (start := out.find(magic, start)) >= 0:
        struct.pack_into("<H" if size == 2 else "<I", out, start + at, value)
        start += 4
    return bytes(out)


@pytest.mark.parametrize("data, message", [
    # a .npy header that is not a complete Python literal: NumPy's tokenizer raised TokenError
    (_npz_member_header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (3,\n"), "corrupt .npz member x.npy"),
    # a bytes key in the header dict: NumPy's sorted() of the keys raised TypeError
    (_npz_member_header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (0,), b'x': 1}   \n"),
     "corrupt .npz member x.npy"),
    # compression method 99: zipfile raised NotImplementedError
    (_patched(_patched(_npz_member_header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (0,), }   \n"),
                       b"PK\x03\x04", 8, 99), b"PK\x01\x02", 10, 99), "corrupt .npz member x.npy"),
    # a zip version nobody wrote: zipfile raised NotImplementedError while listing
    (_patched(_patched(_npz_member_header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (0,), }   \n"),
                       b"PK\x01\x02", 6, 99), b"PK\x01\x02", 4, 99), "corrupt .npz archive"),
    # the encrypted flag: zipfile raised RuntimeError (asking for a password) in verify
    (_patched(_patched(_npz_member_header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (0,), }   \n"),
                       b"PK\x01\x02", 8, 1), b"PK\x03\x04", 6, 1), "is marked encrypted"),
])
def test_corrupt_npz_members_are_format_errors(data, message):
    assert fuzz.check(data, entries=READERS) == []
    with pytest.raises(nbckpt.FormatError, match=message):
        nbckpt.load(io.BytesIO(data))


def test_a_shard_that_is_an_index_is_refused():
    """An index naming itself (or another index) as a shard was opened again and again (RecursionError)."""
    import json

    files = dict(FOLDERS["sharded"])
    index = json.loads(files["model.safetensors.index.json"])
    index["weight_map"]["w"] = "model.safetensors.index.json"
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    assert fuzz.check(files, entries=READERS) == []
    with pytest.raises(nbckpt.FormatError) as info:
        _load_folder(files)
    assert str(info.value) == ("shard model.safetensors.index.json is a sharded checkpoint's index (JSON), not a "
                               "checkpoint file: a shard holds arrays (safetensors, torch or npz). The index is "
                               "corrupt or hostile.")


def test_dcp_metadata_made_without_build_is_a_format_error():
    """A Metadata made by NEWOBJ and never built lacked its fields (AttributeError)."""
    files = dict(FOLDERS["dcp"])
    files[".metadata"] = b"\x80\x02ctorch.distributed.checkpoint.metadata\nMetadata\n)\x81."
    assert fuzz.check(files, entries=READERS) == []
    with pytest.raises(nbckpt.FormatError, match=r"^\.metadata: state_dict_metadata and storage_data must be "
                                                 r"dicts$"):
        _load_folder(files)
