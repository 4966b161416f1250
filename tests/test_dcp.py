"""torch.distributed.checkpoint folders: read without torch, written for torch, hostile ones refused.

Every checkpoint here is made or read by the real ``torch.distributed.checkpoint``
(single process; the 2-process gloo group is in ``test_dcp_distributed.py``).
"""

from __future__ import annotations

import os
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest

import nbckpt
from nbckpt.formats.dcp import DcpReader
from nbckpt.formats.dcp_layout import check_layout
from nbckpt.formats.dcp_metadata import (ChunkStorageMetadata, MetadataIndex, StorageInfo, TensorProperties,
                                         TensorStorageMetadata, dump_metadata, read_metadata)
from tests.required import required

torch = required("torch")
dask_array = required("dask.array")


def _dcp():
    import torch.distributed.checkpoint as dcp

    return dcp


def _torch_save_dcp(state, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming a single process"
        _dcp().save(state, checkpoint_id=str(folder))


def _torch_load_dcp(state, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _dcp().load(state, checkpoint_id=str(folder))
    return state


@pytest.fixture(scope="module")
def torch_made(tmp_path_factory):
    """A module's state dict and an Adam optimizer's state, saved by dcp.save in one process."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 7,
             "extra": [torch.arange(3), {"x": torch.ones(2, dtype=torch.bfloat16)}]}
    folder = tmp_path_factory.mktemp("dcp") / "torch_made"
    _torch_save_dcp(state, folder)
    return folder, state


# -- torch -> nbckpt -----------------------------------------------------------------------------

def test_load_gives_the_nested_state_dict_torch_saved(torch_made):
    folder, state = torch_made
    out = nbckpt.load(folder)
    assert sorted(out) == ["epoch", "extra", "model", "optim"]
    for name, tensor in state["model"].items():
        assert out["model"][name].dtype == np.float32
        np.testing.assert_array_equal(out["model"][name], tensor.numpy())
    for pid, values in state["optim"]["state"].items():
        for key, tensor in values.items():  # DCP stringifies the integer keys of optimizer state
            np.testing.assert_array_equal(out["optim"]["state"][str(pid)][key], tensor.numpy())
    assert out["optim"]["param_groups"] == state["optim"]["param_groups"]
    assert out["epoch"] == 7
    np.testing.assert_array_equal(out["extra"][0], [0, 1, 2])
    assert str(out["extra"][1]["x"].dtype) == "bfloat16" and out["extra"][1]["x"].tolist() == [1.0, 1.0]


def test_open_lists_full_tensors_and_reads_one(torch_made):
    folder, state = torch_made
    with nbckpt.open(folder) as archive:
        names = [r.name for r in archive.records]
        assert names[:4] == ["model.0.weight", "model.0.bias", "model.1.weight", "model.1.bias"]
        record = archive.record("model.0.weight")
        assert (record.shape, str(record.dtype), record.shard) == ((3, 4), "float32", "__0_0.distcp")
        np.testing.assert_array_equal(archive["model.1.bias"], state["model"]["1.bias"].numpy())
        assert archive.info.format == "dcp"


def test_reader_describes_chunks_and_files(torch_made):
    folder, _ = torch_made
    reader = DcpReader.open_folder(folder)
    entry = reader.layout.tensors["model.0.weight"]
    assert (entry.shape, entry.dtype.name, len(entry.chunks), entry.files) == ((3, 4), "float32", 1,
                                                                              ("__0_0.distcp",))
    assert reader.layout.objects["epoch"].path == ("epoch",)
    assert reader.layout.metadata.storage_meta.checkpoint_id == str(folder)  # a pickled PosixPath, as str
    assert reader.layout.tensors["extra.1.x"].path == ("extra", 1, "x")
    assert dict(reader.info().details)["chunks"] == str(sum(len(t.chunks) for t in reader.layout.tensors.values()))


def test_map_location_applies_to_every_tensor(torch_made):
    folder, state = torch_made
    seen = []

    def to_host(storage, location):
        seen.append(location)
        return None

    out = nbckpt.load(folder, map_location=to_host)
    assert set(seen) == {"cpu"} and len(seen) == len(DcpReader.open_folder(folder).layout.tensors)
    np.testing.assert_array_equal(out["model"]["0.weight"], state["model"]["0.weight"].numpy())
    assert nbckpt.load(folder, map_location="cpu")["epoch"] == 7


def test_not_a_checkpoint_folder_is_a_format_error(tmp_path):
    with pytest.raises(nbckpt.FormatError, match="holds no checkpoint nbckpt reads"):
        nbckpt.load(tmp_path)
    with pytest.raises(nbckpt.FormatError, match="holds no checkpoint nbckpt reads"):
        nbckpt.open(tmp_path)


# -- nbckpt -> torch -----------------------------------------------------------------------------

DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool", "complex64"]


def _numpy_state():
    rng = np.random.default_rng(1)
    arrays = {}
    for name in DTYPES:
        values = rng.standard_normal((3, 5)) * 10
        arrays[name] = (values > 0) if name == "bool" else values.astype(nbckpt.formats.dcp_layout.torch_dtypes
                                                                         .by_torch_name(name).numpy)
    return {"arrays": arrays, "nested": [np.arange(4), {"t": np.float32(2.5)}], "step": 11,
            "name": "run-1", "betas": (0.9, 0.999), "view": np.arange(20.0).reshape(4, 5)[:, 1:3]}


def _torch_target(state):
    arrays = {name: torch.zeros(3, 5, dtype=getattr(torch, name)) for name in DTYPES}
    return {"arrays": arrays, "nested": [torch.zeros(4, dtype=torch.int64), {"t": torch.tensor(0.0)}],
            "step": 0, "name": "", "betas": None, "view": torch.zeros(4, 2, dtype=torch.float64)}


def test_numpy_state_saved_by_nbckpt_loads_in_dcp_load(tmp_path):
    state = _numpy_state()
    folder = tmp_path / "ckpt"
    nbckpt.save(state, folder, format="dcp")
    out = _torch_load_dcp(_torch_target(state), folder)
    for name in DTYPES:
        expected = torch.from_numpy(state["arrays"][name].view(np.uint16)).view(torch.bfloat16) \
            if name == "bfloat16" else torch.from_numpy(state["arrays"][name])
        assert torch.equal(out["arrays"][name], expected), name
    assert out["nested"][0].tolist() == [0, 1, 2, 3] and out["nested"][1]["t"].item() == 2.5
    assert (out["step"], out["name"], out["betas"]) == (11, "run-1", (0.9, 0.999))
    assert out["view"].tolist() == state["view"].tolist()


def test_dcp_to_torch_save_converts_an_nbckpt_checkpoint(tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    state = _numpy_state()
    nbckpt.save(state, tmp_path / "ckpt", format="dcp")
    dcp_to_torch_save(tmp_path / "ckpt", tmp_path / "whole.pt")
    out = torch.load(tmp_path / "whole.pt", weights_only=True)
    assert out["arrays"]["int64"].tolist() == state["arrays"]["int64"].tolist()
    assert out["nested"][1]["t"].item() == 2.5 and out["step"] == 11
    # and nbckpt reads its own folder back the same
    back = nbckpt.load(tmp_path / "ckpt")
    assert back["arrays"]["complex64"].tolist() == state["arrays"]["complex64"].tolist()
    assert back["betas"] == (0.9, 0.999) and back["view"].tolist() == state["view"].tolist()


def test_dask_blocks_become_dcp_chunks_that_torch_reassembles(tmp_path):
    x = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    folder = tmp_path / "ckpt"
    nbckpt.save({"x": dask_array.from_array(x, chunks=(3, 4))}, folder, format="dcp")  # Dask's threads
    entry = DcpReader.open_folder(folder).layout.tensors["x"]
    assert sorted(c.offsets for c in entry.chunks) == [(r, c) for r in (0, 3, 6) for c in (0, 4, 8)]
    assert len(entry.files) == 9
    with nbckpt.open(folder) as archive:  # the listing's chunks and files columns
        record = archive.record("x")
        assert (record.chunks, record.shard) == (9, ", ".join(entry.files))
    assert nbckpt.load(folder)["x"].tolist() == x.tolist()
    out = _torch_load_dcp({"x": torch.zeros(7, 9)}, folder)
    assert out["x"].tolist() == x.tolist()


def test_metadata_nbckpt_writes_unpickles_to_torchs_classes(tmp_path):
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex as TorchIndex

    nbckpt.save({"w": np.ones((2, 3), np.float32), "lr": 0.5}, tmp_path / "c", format="dcp")
    md = pickle.loads((tmp_path / "c" / ".metadata").read_bytes())  # torch's own reading
    assert isinstance(md, Metadata) and md.version == "1.0.0"
    assert md.state_dict_metadata["w"].size == torch.Size([2, 3])
    assert md.state_dict_metadata["w"].properties.dtype == torch.float32
    info = md.storage_data[TorchIndex("w", [0, 0])]
    assert isinstance(info, _StorageInfo) and info.relative_path.endswith(".distcp")
    assert md.planner_data == {"w": ("w",), "lr": ("lr",)}


# -- atomic replacement --------------------------------------------------------------------------

def _files(folder):
    return sorted(os.listdir(folder))


def test_a_new_save_replaces_the_old_one_and_its_files(tmp_path):
    folder = tmp_path / "ckpt"
    nbckpt.save({"w": np.zeros(3)}, folder, format="dcp")
    first = _files(folder)
    nbckpt.save({"w": np.ones(3)}, folder, format="dcp")
    second = _files(folder)
    assert len(first) == len(second) == 2 and set(first) & set(second) == {".metadata"}
    assert nbckpt.load(folder)["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_save_over_torchs_checkpoint_keeps_it_until_the_end(tmp_path, torch_made):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(torch_made[0], folder)

    def boom(block):
        raise RuntimeError("block failed")

    bad = dask_array.from_array(np.ones(4), chunks=2).map_blocks(boom, dtype=float)
    with pytest.raises(RuntimeError, match="block failed"):
        nbckpt.save({"w": bad, "v": np.ones(3)}, folder, format="dcp")
    assert _files(folder) == [".metadata", "__0_0.distcp"]  # the failed save's files are gone
    assert nbckpt.load(folder)["epoch"] == 7


def test_an_unsaveable_value_fails_before_any_file_is_written(tmp_path):
    folder = tmp_path / "ckpt"
    nbckpt.save({"w": np.zeros(3)}, folder, format="dcp")
    before = _files(folder)
    with pytest.raises(TypeError):
        nbckpt.save({"w": np.ones(3), "f": print}, folder, format="dcp")
    assert _files(folder) == before


# -- hostile metadata ----------------------------------------------------------------------------

@pytest.fixture
def two_chunks(tmp_path):
    """A real checkpoint whose tensor ``x`` (8 float64) is two chunks of 4, and its metadata."""
    folder = tmp_path / "ckpt"
    nbckpt.save({"x": dask_array.from_array(np.arange(8.0), chunks=4)}, folder, format="dcp")
    md = read_metadata((folder / ".metadata").read_bytes())
    return folder, md


def _rewrite(folder, md):
    (folder / ".metadata").write_bytes(dump_metadata(md))


def _set_chunks(md, boxes):
    tensor = md.state_dict_metadata["x"]
    infos = list(md.storage_data.values())
    tensor.chunks = [ChunkStorageMetadata((o,), (s,)) for o, s in boxes]
    md.storage_data = {MetadataIndex("x", (o,)): infos[i % len(infos)] for i, (o, _s) in enumerate(boxes)}


def test_two_chunks_fixture_is_valid(two_chunks):
    folder, _ = two_chunks
    assert nbckpt.load(folder)["x"].tolist() == list(range(8))


def test_overlapping_chunks_are_refused(two_chunks):
    folder, md = two_chunks
    _set_chunks(md, [(0, 4), (3, 4)])
    md.state_dict_metadata["x"].size = (7,)
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match=r"chunks of x at offsets \(0,\) and \(3,\) overlap"):
        nbckpt.open(folder)


def test_chunks_leaving_a_gap_are_refused(two_chunks):
    folder, md = two_chunks
    md.state_dict_metadata["x"].size = (9,)
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match="cover 8 of its 9 elements: they leave a gap"):
        nbckpt.load(folder)


def test_a_chunk_outside_its_tensor_is_refused(two_chunks):
    folder, md = two_chunks
    _set_chunks(md, [(0, 4), (5, 4)])
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match="spans 5..9 of dimension 0, which has size 8"):
        nbckpt.load(folder)


def test_a_region_past_the_end_of_its_file_is_refused(two_chunks):
    folder, md = two_chunks
    info = next(iter(md.storage_data.values()))
    info.length += 10**6
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match="which has only .* bytes: the file is truncated"):
        nbckpt.open(folder)


@pytest.mark.parametrize("name", ["../outside.distcp", "/etc/passwd", "sub/../../x", "", "a\\b"])
def test_files_outside_the_folder_are_refused(two_chunks, name):
    folder, md = two_chunks
    next(iter(md.storage_data.values())).relative_path = name
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match="outside the checkpoint folder|expected a file name inside"):
        nbckpt.load(folder)


def test_a_symlink_out_of_the_folder_is_refused(two_chunks, tmp_path):
    folder, md = two_chunks
    info = next(iter(md.storage_data.values()))
    outside = tmp_path / "secret.bin"
    outside.write_bytes(bytes(4096))
    os.symlink(outside, folder / "link.distcp")
    info.relative_path = "link.distcp"
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match="links to .*secret.bin, outside the checkpoint folder"):
        nbckpt.load(folder)


def test_two_entries_sharing_bytes_are_refused(two_chunks):
    folder, md = two_chunks
    first, second = md.storage_data.values()
    second.relative_path, second.offset, second.length = first.relative_path, first.offset, first.length
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match="share bytes"):
        nbckpt.load(folder)


def test_stream_extensions_are_refused_by_name(two_chunks):
    folder, md = two_chunks
    next(iter(md.storage_data.values())).transform_descriptors = ["stream.zstd"]
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match=r"DCP stream extensions \['stream.zstd'\]"):
        nbckpt.load(folder)


def test_a_huge_tensor_with_a_gap_is_refused_before_any_allocation(two_chunks):
    folder, md = two_chunks
    md.state_dict_metadata["x"].size = (1 << 40,)  # 8 TiB of float64
    _rewrite(folder, md)
    tracemalloc.start()
    try:
        with pytest.raises(nbckpt.FormatError, match="they leave a gap"):
            nbckpt.load(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_a_chunk_whose_stream_holds_another_shape_is_refused(two_chunks):
    folder, md = two_chunks
    md.state_dict_metadata["x"].properties = TensorProperties("float32")
    md.state_dict_metadata["x"].size = (8,)
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match=r"holds float64 \(4,\); the metadata describes float32 \(4,\)"):
        nbckpt.load(folder)


def _pickle_with_global(module, name):
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x02\x00\x00\x00id\x85R."


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"),
                                         ("torch.distributed.checkpoint.metadata", "STATE_DICT_TYPE"),
                                         ("pathlib", "Path.write_text")])
def test_globals_outside_dcps_classes_are_refused(two_chunks, module, name):
    folder, _ = two_chunks
    (folder / ".metadata").write_bytes(_pickle_with_global(module, name))
    with pytest.raises(nbckpt.UnpicklingError, match=r"^\.metadata: weights_only=True refused"):
        nbckpt.load(folder)


def test_metadata_that_is_not_dcps_is_refused(two_chunks):
    folder, _ = two_chunks
    (folder / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}, protocol=2))
    with pytest.raises(nbckpt.FormatError, match="holds a dict, expected torch.distributed.checkpoint's Metadata"):
        nbckpt.load(folder)


def test_a_missing_chunk_entry_is_refused(two_chunks):
    folder, md = two_chunks
    md.storage_data.pop(MetadataIndex("x", (4,)))
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError, match=r"the chunk of x at \(4,\) has no storage_data entry"):
        nbckpt.load(folder)


def test_check_layout_refuses_a_tensor_of_an_unknown_dtype(two_chunks):
    folder, md = two_chunks
    md.state_dict_metadata["x"] = TensorStorageMetadata(TensorProperties("float128"), (8,),
                                                        md.state_dict_metadata["x"].chunks)
    with pytest.raises(nbckpt.FormatError, match="dtype 'float128', which is not a torch dtype nbckpt knows"):
        check_layout(str(folder), md)


def test_storage_info_round_trips_through_the_writer():
    info = StorageInfo("__0_0.distcp", 5, 7)
    assert repr(info) == "StorageInfo('__0_0.distcp', offset=5, length=7)"


def test_dcps_safetensors_variant_is_refused_by_name(tmp_path):
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _dcp().save({"a": torch.arange(4.0)}, storage_writer=FileSystemWriter(
            str(tmp_path / "c"), serialization_format=SerializationFormat.SAFETENSORS))
    with pytest.raises(nbckpt.FormatError, match=r"is a safetensors file \(DCP's SerializationFormat.SAFETENSORS"):
        nbckpt.load(tmp_path / "c")


def test_a_chunk_of_raw_bytes_is_read_as_c_ordered_data(two_chunks):
    folder, md = two_chunks
    raw = np.arange(8.0).astype("<f8").tobytes()
    (folder / "raw.bin").write_bytes(raw)
    _set_chunks(md, [(0, 4), (4, 4)])
    md.storage_data = {MetadataIndex("x", (0,)): StorageInfo("raw.bin", 0, 32),
                       MetadataIndex("x", (4,)): StorageInfo("raw.bin", 32, 32)}
    _rewrite(folder, md)
    assert nbckpt.load(folder)["x"].tolist() == list(range(8))


def test_reading_one_tensor_touches_only_its_chunks_and_verify_finds_the_bad_one(tmp_path):
    folder = tmp_path / "ckpt"
    nbckpt.save({"a": dask_array.from_array(np.arange(4.0), chunks=2),
                 "b": dask_array.from_array(np.ones(4), chunks=2)}, folder, format="dcp")
    layout = DcpReader.open_folder(folder).layout
    bad = layout.tensors["b"].chunks[1].region.file
    (folder / bad).write_bytes(bytes((folder / bad).stat().st_size))  # same size, no longer a stream
    with nbckpt.open(folder) as archive:
        assert archive["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
        expected = f"the chunk at \\(2,\\) in {bad} is neither a torch.save stream nor 16 raw bytes"
        with pytest.raises(nbckpt.FormatError, match=expected):
            archive["b"]
    report = nbckpt.verify(folder)
    assert not report.ok and [p.record for p in report.problems] == ["b@(2,)"]


@pytest.mark.parametrize("target,kwargs,message", [
    ("s3://bucket/ckpt", {}, "format='dcp' writes a local folder"),
    (None, {"skip_data": True}, "skip_data=True needs format='zip'"),
])
def test_dcp_saves_go_to_local_folders_with_data(tmp_path, target, kwargs, message):
    with pytest.raises(ValueError, match=message):
        nbckpt.save({"w": np.ones(2)}, target or tmp_path / "c", format="dcp", **kwargs)
    assert not (tmp_path / "c").exists()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_an_object_entry_that_runs_code_is_refused(two_chunks, tmp_path):
    import io

    folder, md = two_chunks
    sentinel = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"lr": _Evil(sentinel)}, buf)
    (folder / "evil.distcp").write_bytes(buf.getvalue())
    md.state_dict_metadata["opt"] = nbckpt.formats.dcp_metadata.BytesStorageMetadata()
    md.storage_data[MetadataIndex("opt")] = StorageInfo("evil.distcp", 0, len(buf.getvalue()))
    _rewrite(folder, md)
    with pytest.raises(nbckpt.UnpicklingError, match=r"^opt \(in evil.distcp\): weights_only=True refused GLOBAL "
                                                     r"(posix|os).system"):
        nbckpt.load(folder)
    with pytest.raises(nbckpt.UnpicklingError) as refused:
        nbckpt.open(folder)
    assert refused.value.global_name in ("posix.system", "os.system")
    assert not sentinel.exists()


# -- listings ------------------------------------------------------------------------------------


def test_cli_and_magic_listings_show_chunks_and_files(tmp_path, capsys):
    """A DCP checkpoint lists as one archive, with how many chunks and which files hold each array."""
    import dask.array as da
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from nbckpt.cli import main

    folder = tmp_path / "sharded"
    weight = np.arange(32, dtype=np.float32).reshape(8, 4)
    nbckpt.save({"w": da.from_array(weight, chunks=(4, 4)), "b": np.ones(3, np.float32)}, folder, format="dcp")
    with nbckpt.open(folder) as archive:
        files = {r.name: r.shard for r in archive.records}
    assert len(files["w"].split(", ")) == 2 and len(files["b"].split(", ")) == 1

    assert main(["ls", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["name", "shape", "dtype", "device", "size", "shared", "with", "chunks", "files"]
    rows = {line.split()[0]: line for line in lines[3:]}
    assert rows["w"].split()[-3:] == ["2"] + files["w"].split()
    assert rows["b"].split()[-2:] == ["1", files["b"]]

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbckpt")
    with capture_output() as captured:
        shell.run_line_magic("ckpt", f"ls {folder}")
    (text,) = [o.data["text/plain"] for o in captured.outputs]
    assert text.splitlines()[1].split()[-2:] == ["chunks", "files"]
    assert files["w"] in text and files["b"] in text


def test_each_chunk_is_read_through_its_region_only(two_chunks):
    """A chunk's stream is read through a RangeFile over its region (nbckpt.io.ranges): a region cut
    short of its stream's end records is refused, though the bytes after it are in the file."""
    folder, md = two_chunks
    first = next(info for index, info in md.storage_data.items() if index.offset == (0,))
    first.length -= 22  # the zip's end-of-central-directory record lies outside the region now
    _rewrite(folder, md)
    with pytest.raises(nbckpt.FormatError):
        nbckpt.load(folder)
    report = nbckpt.verify(folder)
    assert not report.ok and [p.record for p in report.problems] == ["x@(0,)"]


# -- scan: every pickle a load runs, .metadata included ------------------------------------------


def test_scan_reports_the_globals_of_metadata_and_object_entries(torch_made):
    folder, _ = torch_made
    names = {ref.name: ref.allowed for ref in nbckpt.scan(folder)}
    # .metadata's own classes, allowed as the loader allows them there
    assert names["torch.distributed.checkpoint.metadata.Metadata"] is True
    assert all(names.values()), names


def test_scan_reports_a_refused_global_in_metadata_instead_of_raising(tmp_path):
    folder = tmp_path / "ckpt"
    nbckpt.save({"w": np.arange(3.0)}, folder, format="dcp")
    (folder / ".metadata").write_bytes(b"cposix\nsystem\n(S'touch /tmp/nbckpt-canary-dcp'\ntR.")
    refs = {ref.name: ref.allowed for ref in nbckpt.scan(folder)}
    assert refs == {"posix.system": False}
    with pytest.raises(nbckpt.UnpicklingError, match="posix.system"):
        nbckpt.load(folder)
    assert not os.path.exists("/tmp/nbckpt-canary-dcp")
