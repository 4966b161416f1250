"""Every format nbckpt reads, through every entry point: one matrix.

Formats: torch zip, legacy stream (torch 2.13 with ``_use_new_zipfile_serialization=False``,
also relabelled as saved on cuda:0/cuda:1), legacy tar, safetensors written by
``safetensors.numpy`` and ``safetensors.torch`` (bf16, float8), 3-shard
checkpoints of both index kinds, and ``.npz``. Entry points: ``load``, ``open``
(+ every record), ``verify``, ``scan``, ``diff``, the CLI's ``ls``/``info``.
"""

from __future__ import annotations

import html
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import ml_dtypes
import numpy as np
import pytest
import torch

import nbckpt
from nbckpt.cli import main as cli_main
from nbckpt.formats.sniff import sniff
from legacy_tar import TarCheckpoint
from test_load_options import ReadRecorder, overlaps
from test_magics import ipython  # noqa: F401 - fixture: a real IPython shell

RNG = np.random.default_rng(14)


def arrays() -> dict[str, np.ndarray]:
    """Distinct random values: each array's bytes occur once in a file."""
    return {
        "embed.weight": RNG.standard_normal((4, 3)).astype(np.float32),
        "embed.bias": RNG.standard_normal(5),
        "head.index": RNG.integers(0, 1 << 40, (3,), dtype=np.int64),
    }


def tensors(values: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.copy()) for k, v in values.items()}


@dataclass
class Case:
    """A checkpoint on disk, the arrays it holds, and the format sniff must report."""

    path: str
    expected: dict[str, np.ndarray]
    format: str
    map_location: Any = None
    locations: tuple[str, ...] = ("cpu",)


def _legacy(path: str, values: dict, relabel: dict[str, str] | None = None) -> None:
    buf = io.BytesIO()
    torch.save(tensors(values), buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    for old, new in (relabel or {}).items():
        # the location tag is a BINUNICODE string in the object pickle; pickles are self-delimiting
        data = data.replace(b"X\x03\x00\x00\x00" + old.encode(), b"X" + len(new).to_bytes(4, "little") + new.encode(), 1)
    with open(path, "wb") as f:
        f.write(data)


def _shards(folder: str, kind: str, values: dict) -> str:
    names = list(values)
    weight_map = {}
    for i, name in enumerate(names):
        shard = f"model-0000{i + 1}-of-00003.{kind}"
        if kind == "safetensors":
            from safetensors.numpy import save_file

            save_file({name: values[name]}, os.path.join(folder, shard))
        else:
            torch.save({name: torch.from_numpy(values[name].copy())}, os.path.join(folder, shard))
        weight_map[name] = shard
    index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    with open(os.path.join(folder, index), "w") as f:
        json.dump({"metadata": {"total_size": 1}, "weight_map": weight_map}, f)
    return os.path.join(folder, index)


def make_zip(tmp: str) -> Case:
    values = arrays()
    torch.save(tensors(values), f"{tmp}/m.pt")
    return Case(f"{tmp}/m.pt", values, "zip")


def make_legacy(tmp: str) -> Case:
    values = arrays()
    _legacy(f"{tmp}/m.pt", values)
    return Case(f"{tmp}/m.pt", values, "legacy")


def make_legacy_gpu(tmp: str) -> Case:
    """A legacy file saved on cuda:1: it lists without a GPU, and loads with map_location."""
    values = {"a": RNG.standard_normal(3).astype(np.float32), "b": RNG.standard_normal(2)}
    buf = io.BytesIO()
    torch.save(tensors(values), buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    # torch pickles the tag once and refers back to it (memo): every storage becomes cuda:1
    data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:1", 1)
    with open(f"{tmp}/gpu.pt", "wb") as f:
        f.write(data)
    return Case(f"{tmp}/gpu.pt", values, "legacy", map_location="cpu", locations=("cuda:1",))


def make_tar(tmp: str) -> Case:
    values = {"w": RNG.standard_normal((2, 3)).astype(np.float32), "v": RNG.standard_normal(4).astype(np.float32)}
    ckpt = TarCheckpoint()
    obj = {name: ckpt.tensor(ckpt.storage(v), v.shape, tuple(s // 4 for s in v.strides)) for name, v in values.items()}
    with open(f"{tmp}/old.pt", "wb") as f:
        f.write(ckpt.build(obj))
    return Case(f"{tmp}/old.pt", values, "tar")


def make_safetensors_numpy(tmp: str) -> Case:
    from safetensors.numpy import save_file

    values = arrays()
    save_file(values, f"{tmp}/m.safetensors", metadata={"format": "np"})
    return Case(f"{tmp}/m.safetensors", values, "safetensors")


def make_safetensors_torch(tmp: str) -> Case:
    from safetensors.torch import save_file

    t = {"bf": torch.randn(3, 2, dtype=torch.bfloat16), "f8": torch.randn(5).to(torch.float8_e4m3fn),
         "f8b": torch.randn(4).to(torch.float8_e5m2), "h": torch.randn(3).half()}
    save_file(t, f"{tmp}/t.safetensors", metadata={"format": "pt"})
    expected = {"bf": t["bf"].view(torch.int16).numpy().view(ml_dtypes.bfloat16),
                "f8": t["f8"].view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn),
                "f8b": t["f8b"].view(torch.uint8).numpy().view(ml_dtypes.float8_e5m2),
                "h": t["h"].numpy()}
    return Case(f"{tmp}/t.safetensors", expected, "safetensors")


def make_sharded_safetensors(tmp: str) -> Case:
    values = arrays()
    return Case(_shards(tmp, "safetensors", values), values, "sharded")


def make_sharded_bin(tmp: str) -> Case:
    values = arrays()
    _shards(tmp, "bin", values)
    return Case(tmp, values, "sharded")  # the folder itself


def make_npz(tmp: str) -> Case:
    values = arrays()
    values["fortran"] = np.asfortranarray(RNG.standard_normal((3, 2)))
    values["big"] = RNG.standard_normal(3).astype(">f8")
    np.savez(f"{tmp}/a.npz", **values)
    return Case(f"{tmp}/a.npz", values, "npz")


def make_npz_compressed(tmp: str) -> Case:
    values = arrays()
    np.savez_compressed(f"{tmp}/c.npz", **values)
    return Case(f"{tmp}/c.npz", values, "npz")


def make_dcp(tmp: str) -> Case:
    """A torch.distributed.checkpoint folder (H4's reader, plugged in through sniff's folder hook)."""
    values = {"weight": RNG.standard_normal((4, 3)).astype(np.float32), "steps": RNG.integers(0, 1 << 40, (3,))}
    nbckpt.save(values, f"{tmp}/ckpt", format="dcp")
    return Case(f"{tmp}/ckpt", values, "dcp")


MAKERS: dict[str, Callable[[str], Case]] = {
    "zip": make_zip, "legacy": make_legacy, "legacy-cuda": make_legacy_gpu, "tar": make_tar,
    "safetensors-numpy": make_safetensors_numpy, "safetensors-torch": make_safetensors_torch,
    "sharded-safetensors": make_sharded_safetensors, "sharded-bin": make_sharded_bin,
    "npz": make_npz, "npz-compressed": make_npz_compressed, "dcp": make_dcp,
}


@pytest.fixture(params=list(MAKERS))
def case(request, tmp_path) -> Case:
    return MAKERS[request.param](str(tmp_path))


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype.newbyteorder("=") and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8) if got.dtype.kind == "V" else got, want)


def assert_tree(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        if want.dtype.num >= 256:  # ml_dtypes: compare the bits
            assert got[name].dtype == want.dtype and got[name].shape == want.shape
            assert got[name].tobytes() == want.tobytes()
        else:
            assert_same(got[name], want)


def test_sniff_names_the_format(case):
    assert sniff(case.path) == case.format


def test_load_and_open_agree_on_every_format(case):
    loaded = nbckpt.load(case.path, map_location=case.map_location)
    assert_tree(loaded, case.expected)
    with nbckpt.open(case.path, map_location=case.map_location) as archive:
        assert archive.format == case.format == archive.info.format
        assert sorted(r.name for r in archive.records) == sorted(case.expected)
        assert {r.location for r in archive.records} == set(case.locations)
        assert_tree(archive.load(), case.expected)
        for record in archive.records:
            value = archive[record.name]
            assert record.shape == value.shape and record.nbytes == value.nbytes
            assert_tree({record.name: value}, {record.name: case.expected[record.name]})
        assert archive.info.records == len(case.expected)
        assert archive.info.array_bytes >= sum(v.nbytes for v in case.expected.values())


def test_verify_scan_diff_and_cli(case, capsys):
    report = nbckpt.verify(case.path)
    assert report.ok, str(report)
    assert isinstance(nbckpt.scan(case.path), list)
    # map_location as load and open take it (the GPU-saved legacy file is compared on the host)
    assert nbckpt.diff(case.path, case.path, map_location=case.map_location).identical
    assert cli_main(["ls", case.path]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in case.expected)
    assert cli_main(["info", case.path]) == 0


def test_metadata_and_shards_are_shown(tmp_path):
    with nbckpt.open(make_safetensors_torch(str(tmp_path)).path) as archive:
        assert archive.info.metadata == {"format": "pt"} and archive.info.description == "safetensors"
    case = make_sharded_safetensors(str(tmp_path))
    with nbckpt.open(case.path) as archive:
        shards = {r.name: r.shard for r in archive.records}
        assert shards == {name: f"model-0000{i + 1}-of-00003.safetensors" for i, name in enumerate(case.expected)}
        assert archive.info.description == "sharded (3 shards)"
        assert archive.info.metadata == {"total_size": "1"}


# -- reads: nothing at open, then only the bytes of the array asked for ---------------------------

SINGLE_FILE = ["zip", "legacy", "tar", "safetensors-numpy", "npz"]


@pytest.mark.parametrize("kind", SINGLE_FILE)
def test_open_reads_no_array_byte_and_one_array_reads_only_its_bytes(kind, tmp_path):
    case = MAKERS[kind](str(tmp_path))
    data = open(case.path, "rb").read()
    where = {}
    for name, value in case.expected.items():
        raw = np.asarray(value, order="A").tobytes(order="A")
        start = data.find(raw)
        assert start >= 0 and data.find(raw, start + 1) < 0
        where[name] = (start, start + len(raw))
    f = ReadRecorder(data)
    with nbckpt.open(f) as archive:
        assert not any(overlaps(rng, r) for rng in where.values() for r in f.ranges if r[1] > r[0])
        for name in case.expected:
            f.ranges.clear()
            archive[name]
            touched = {n for n, rng in where.items() for r in f.ranges if r[1] > r[0] and overlaps(rng, r)}
            assert touched == {name}


def test_sharded_open_reads_no_array_byte_and_one_array_opens_one_shard(tmp_path, monkeypatch):
    case = make_sharded_safetensors(str(tmp_path))
    opened: list[str] = []
    real_open = open

    def recording_open(path, mode="r", *args, **kwargs):
        if "b" in mode and str(path).endswith(".safetensors"):
            opened.append(os.path.basename(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", recording_open)
    with nbckpt.open(case.path) as archive:
        headers = list(opened)  # each shard's header is read once, to list it
        assert sorted(headers) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
        opened.clear()
        archive["head.index"]
        assert opened == ["model-00003-of-00003.safetensors"]
        archive["head.index"], archive["embed.weight"]
        assert opened == ["model-00003-of-00003.safetensors", "model-00001-of-00003.safetensors"]


# -- hostile and broken files: typed errors -------------------------------------------------------

def safetensors_bytes(header: Any, data: bytes = b"", *, size: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(raw) if size is None else size).to_bytes(8, "little") + raw + data


F32x2 = np.ones(2, np.float32).tobytes()


@pytest.mark.parametrize("data, message", [
    (safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, F32x2, size=10**6),
     "header claims 1000000 bytes"),
    (safetensors_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, F32x2),
     "needs 12 bytes, but its data_offsets"),
    (safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, F32x2),
     "ends at byte 16 of the data, which holds 8"),
    (safetensors_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, F32x2), "overlap"),
    (safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, F32x2), "0 <= begin <= end"),
    (safetensors_bytes({"w": {"dtype": "OBJ", "shape": [2], "data_offsets": [0, 8]}}, F32x2), "has dtype 'OBJ'"),
    (safetensors_bytes({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, F32x2), "non-negative"),
    (safetensors_bytes(b'{"w": 1, "w": 2}', F32x2), "names 'w' twice"),
    (safetensors_bytes(b'{"w": [1, 2]   }', F32x2), "exactly dtype, shape and data_offsets"),
    (safetensors_bytes({"__metadata__": {"a": 1}}), "map strings to strings"),
    (safetensors_bytes(b'{"\xff": 1}'), "not valid UTF-8 JSON"),
], ids=["size", "shape-vs-offsets", "past-end", "overlap", "reversed", "dtype", "negative", "duplicate",
        "entry", "metadata", "utf8"])
def test_hostile_safetensors_headers_are_refused(data, message):
    for entry in (nbckpt.load, nbckpt.open):
        with pytest.raises(nbckpt.FormatError, match=message):
            entry(io.BytesIO(data))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", "link.safetensors"])
def test_index_naming_paths_outside_its_folder_is_refused(tmp_path, shard):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"")
    os.symlink(tmp_path / "outside.safetensors", folder / "link.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    for entry in (nbckpt.load, nbckpt.open):
        with pytest.raises(nbckpt.FormatError, match="outside its folder"):
            entry(folder)


def test_missing_shard_lists_and_refuses_when_read(tmp_path):
    case = make_sharded_safetensors(str(tmp_path))
    os.remove(tmp_path / "model-00002-of-00003.safetensors")
    with nbckpt.open(case.path) as archive:
        assert archive.record("embed.bias").location == "missing"
        np.testing.assert_array_equal(archive["embed.weight"], case.expected["embed.weight"])
        with pytest.raises(nbckpt.FormatError, match="shard model-00002-of-00003.safetensors named by "
                                                     "model.safetensors.index.json is missing"):
            archive["embed.bias"]
        assert "1 missing" in archive.info.description
    with pytest.raises(nbckpt.FormatError, match="is missing"):
        nbckpt.load(case.path)
    report = nbckpt.verify(case.path)
    assert not report.ok and report.problems[0].record == "model-00002-of-00003.safetensors"


def test_index_given_as_a_file_object_needs_its_path(tmp_path):
    case = make_sharded_safetensors(str(tmp_path))
    with open(case.path, "rb") as f, pytest.raises(nbckpt.FormatError, match="needs its path"):
        nbckpt.load(f)


def test_npz_object_arrays_are_refused_never_unpickled(tmp_path):
    np.savez(tmp_path / "o.npz", o=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(nbckpt.FormatError, match="never runs pickle from .npz files"):
        nbckpt.open(tmp_path / "o.npz")


# -- byte order: one swap, every dtype, both orders ---------------------------------------------

SWAPPABLE = [t for t in nbckpt.format.dtypes.TORCH_DTYPES if t.itemsize > 0]


@pytest.mark.parametrize("tdtype", SWAPPABLE, ids=lambda t: t.name)
def test_swap_reverses_each_scalar_complex_per_component(tdtype):
    from nbckpt.format.dtypes import swap_to_native

    dtype = tdtype.numpy
    raw = RNG.integers(0, 256, dtype.itemsize * 6, dtype=np.uint8)
    unit = dtype.itemsize // 2 if dtype.kind == "c" or dtype.fields else dtype.itemsize
    want = raw.reshape(-1, unit)[:, ::-1].reshape(-1).copy()
    swapped = raw.copy()
    swap_to_native(swapped, dtype)
    assert swapped.tobytes() == want.tobytes()
    swap_to_native(swapped, dtype)  # both directions are the same swap
    assert swapped.tobytes() == raw.tobytes()


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("kind", ["f2", "f4", "f8", "c8", "c16", "i2", "i4", "i8", "u2", "u4", "u8"])
def test_npz_arrays_in_either_byte_order(tmp_path, kind, order):
    values = (RNG.standard_normal(5) * 100).astype(np.dtype(order + kind)) if kind[0] in "fc" else \
        RNG.integers(0, 100, 5).astype(np.dtype(order + kind))
    if kind[0] == "c":
        values = values + 1j * values[::-1]
    np.savez(tmp_path / "a.npz", a=values)
    got = nbckpt.load(tmp_path / "a.npz")["a"]
    assert got.dtype.isnative and got.dtype == values.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, values)


# -- the Jupyter surface: %ckpt ls and the browser widget -------------------------------------

def test_magic_ls_and_browser_on_every_format(case, ipython, capsys):
    from nbckpt.jupyter import ArchiveBrowser

    ipython.run_line_magic("ckpt", f"ls {case.path}")
    shown = capsys.readouterr().out
    assert all(name in shown for name in case.expected)
    browser = ArchiveBrowser(case.path)
    try:
        labels = " ".join(label for label, _ in browser.records.options)
        assert all(name in labels for name in case.expected)
        with nbckpt.open(case.path) as archive:
            assert html.escape(archive.info.description) in browser.header.value
    finally:
        browser.close()


@pytest.mark.parametrize("kind", ["zip", "legacy", "tar", "safetensors-numpy", "npz", "sharded-safetensors",
                                  "sharded-bin", "dcp"])
def test_convert_reads_every_format(kind, tmp_path):
    case = MAKERS[kind](str(tmp_path))
    target = tmp_path / ("out.npz" if kind.startswith("safetensors") else "out.safetensors")
    nbckpt.convert(case.path, target)
    assert_tree(nbckpt.load(target), {k: v.astype(v.dtype.newbyteorder("=")) for k, v in case.expected.items()})


@pytest.mark.parametrize("fmt", ["zip", "legacy", "dcp", "safetensors", "npz"])
@pytest.mark.parametrize("kind", ["legacy", "safetensors-numpy", "sharded-bin", "dcp"])
def test_convert_writes_every_format_given_by_format(kind, fmt, tmp_path):
    """convert(format=...) takes what save(format=...) takes (and the flat formats); the target needs no
    extension, and what it writes is told by its own first bytes."""
    case = MAKERS[kind](str(tmp_path))
    target = tmp_path / f"out-{fmt}"
    if fmt == "npz" and any(v.dtype.num >= 256 for v in case.expected.values()):
        with pytest.raises(nbckpt.LossyConversionError, match="which npz lacks"):  # no bfloat16/float8
            nbckpt.convert(case.path, target, format=fmt)
        assert not target.exists()
        return
    report = nbckpt.convert(case.path, target, format=fmt)
    assert report.written and report.target_format == {"zip": "torch", "legacy": "torch"}.get(fmt, fmt)
    assert sniff(str(target)) == fmt
    assert_tree(nbckpt.load(target), {k: v.astype(v.dtype.newbyteorder("=")) for k, v in case.expected.items()})


# -- the seed's old files: Python 2 pickles, storage slices, storages saved on their own -------------

def assert_open_matches_load(data: bytes) -> None:
    """Every record of ``open`` equals the array at its path in ``load``; ``open().load()`` too."""
    loaded = nbckpt.load(io.BytesIO(data))
    with nbckpt.open(io.BytesIO(data)) as archive:
        again = archive.load()
        assert archive.records
        for record in archive.records:
            want = loaded
            for key in record.path:
                want = want[key]
            for got in (archive[record.name], ):
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want)
            mirror = again
            for key in record.path:
                mirror = mirror[key]
            np.testing.assert_array_equal(mirror, want)


@pytest.mark.parametrize("py2", [False, True], ids=["py3", "py2"])
def test_seed_tar_files_with_storages_saved_alone(py2):
    from test_legacy import backwards_compat_fixture

    data, expected = backwards_compat_fixture(py2=py2)
    assert_open_matches_load(data)
    with nbckpt.open(io.BytesIO(data)) as archive:
        assert [r.name for r in archive.records] == [str(i) for i in range(6)]
        assert archive["4"].shape == (25,)  # a storage saved on its own: 1-D over all of it


@pytest.mark.parametrize("py2", [False, True], ids=["py3", "py2"])
def test_seed_stream_with_storage_slices(py2):
    from legacy_tar import stream_checkpoint
    from test_legacy import float_tensor

    data = stream_checkpoint({"whole": float_tensor("7", 6), "slice": float_tensor("7", 6, size=2, view=("v", 3, 2))},
                             {"7": np.arange(6, dtype=np.float32).tobytes()}, py2=py2)
    assert_open_matches_load(data)
    with nbckpt.open(io.BytesIO(data)) as archive:
        piece = archive.record("slice")
        assert (piece.storage, piece.offset) == ("7", 3)  # a slice is listed on its root storage
        np.testing.assert_array_equal(archive["slice"], [3.0, 4.0])


def test_magic_load_reads_a_safetensors_file(tmp_path, ipython):
    case = make_safetensors_numpy(str(tmp_path))
    ipython.run_line_magic("ckpt", f"load {case.path} --as weights")
    assert_tree(ipython.user_ns.pop("weights"), case.expected)


# -- sniff: what is refused, and the folder hook --------------------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_is_refused_by_every_entry_point(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    assert sniff(path) == "zip"
    for entry in (nbckpt.load, nbckpt.open, nbckpt.scan):
        with pytest.raises(nbckpt.FormatError, match="TorchScript archive"):
            entry(path)


def test_empty_and_unknown_inputs(tmp_path):
    with pytest.raises(nbckpt.FormatError, match="the file is empty"):
        nbckpt.open(io.BytesIO(b""))
    with pytest.raises(nbckpt.FormatError, match="not a torch checkpoint: the data starts with b'GIF89a"):
        nbckpt.load(io.BytesIO(b"GIF89a" + bytes(300)))
    with pytest.raises(nbckpt.FormatError, match="holds no checkpoint nbckpt reads"):
        nbckpt.open(tmp_path)


def test_a_folder_with_dcp_metadata_goes_to_the_dcp_reader(tmp_path):
    (tmp_path / ".metadata").write_bytes(b"")
    assert sniff(tmp_path) == "dcp"


# -- mutated files: nothing but nbckpt errors ---------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _valid_safetensors() -> bytes:
    from safetensors.numpy import save

    return save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int16)},
                metadata={"k": "v"})


SAFETENSORS_BYTES = _valid_safetensors()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(SAFETENSORS_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, len(SAFETENSORS_BYTES)))
def test_mutated_safetensors_give_nbckpt_errors_only(edits, cut):
    data = bytearray(SAFETENSORS_BYTES)
    for where, value in edits:
        data[where] = value
    data = bytes(data[:cut] if cut < len(data) // 2 else data)
    try:
        with nbckpt.open(io.BytesIO(data)) as archive:
            for record in archive.records:
                archive[record.name]
        nbckpt.load(io.BytesIO(data))
    except nbckpt.CheckpointError:
        pass
