"""nbckpt.open: lazy archives that read only what is asked for."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import nbckpt
from checkpoint_tools import retag
from conftest import assert_same_array
from gpu_helpers import fake_cupy  # noqa: F401 - fixture
from test_load_options import ReadRecorder, overlaps, storage_ranges


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture()
def training_state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    emb = torch.randn(10, 4)
    return {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": 5,
            "tied": {"embed": emb, "unembed": emb, "first_rows": emb[:2]}, "name": "run-1"}


def test_records_describe_every_array(training_state):
    data = torch_bytes(training_state)
    with nbckpt.open(io.BytesIO(data)) as archive:
        names = [r.name for r in archive.records]
        assert names[:6] == ["model.0.weight", "model.0.bias", "model.1.weight", "model.1.bias",
                             "model.2.weight", "model.2.bias"]
        assert "opt.state.0.exp_avg" in names and "opt.state.0.step" in names
        w = archive.record("model.0.weight")
        assert (w.shape, w.dtype, w.location, w.nbytes, w.strides, w.offset) == \
               ((8, 4), np.dtype(np.float32), "cpu", 128, (4, 1), 0)
        assert archive.record(("opt", "state", 0, "exp_avg")).name == "opt.state.0.exp_avg"
        row = archive.record("tied.first_rows")
        assert set(row.shares) == {"tied.embed", "tied.unembed"}
        assert archive.record("tied.embed").storage == row.storage
        assert archive.values["epoch"] == 5 and archive.values["name"] == "run-1"
        assert archive.values["opt.param_groups"][0]["betas"] == (0.9, 0.999)
        assert len(archive) == len(names) and "model.0.bias" in archive


def test_open_reads_no_storage_byte_and_one_array_reads_its_storage(training_state):
    data = torch_bytes(training_state)
    f = ReadRecorder(data)
    ranges = storage_ranges(data)
    with nbckpt.open(f) as archive:
        reads = [r for r in f.ranges if r[1] > r[0]]
        assert not any(overlaps(rng, r) for rng in ranges.values() for r in reads)
        # The directory, the small records and the sniffed first bytes: nothing else.
        assert sum(b - a for a, b in reads) < len(data) - sum(b - a for a, b in ranges.values()) + 128
        f.ranges.clear()
        record = archive.record("model.2.weight")
        value = archive["model.2.weight"]
        touched = {name for name, rng in ranges.items() for r in f.ranges if r[1] > r[0] and overlaps(rng, r)}
        assert touched == {f"data/{record.storage}"}
        np.testing.assert_array_equal(value, training_state["model"]["2.weight"].numpy())


def test_views_from_one_archive_share_memory(training_state):
    data = torch_bytes(training_state)
    f = ReadRecorder(data)
    with nbckpt.open(f) as archive:
        embed = archive["tied.embed"]
        f.ranges.clear()
        rows = archive["tied.first_rows"]
        assert np.shares_memory(embed, rows)
        assert f.ranges == []  # the storage was already in memory
        np.testing.assert_array_equal(rows, training_state["tied"]["first_rows"].numpy())
        del embed, rows
        import gc

        gc.collect()
        again = archive["tied.embed"]  # read again once nothing held it
        assert f.ranges != []
        np.testing.assert_array_equal(again, training_state["tied"]["embed"].numpy())


def test_load_equals_nbckpt_load(training_state):
    data = torch_bytes(training_state)
    expected = nbckpt.load(io.BytesIO(data))
    with nbckpt.open(io.BytesIO(data)) as archive:
        out = archive.load()
    assert out.keys() == expected.keys()
    for key, value in expected["model"].items():
        assert_same_array(out["model"][key], value)
    assert out["tied"]["embed"] is out["tied"]["unembed"]


def test_info(training_state, tmp_path):
    path = tmp_path / "state.pt"
    torch.save(training_state, path)
    with nbckpt.open(path) as archive:
        info = archive.info
    assert (info.format, info.prefix, info.version, info.byteorder, info.byteorder_recorded) == \
           ("zip", "state", 3, "little", True)
    assert info.records == len(archive.records)
    assert info.storages == len({r.storage for r in archive.records})
    assert info.file_bytes == path.stat().st_size
    assert info.array_bytes == sum(
        t.untyped_storage().nbytes() for t in
        list(training_state["model"].values()) + [training_state["tied"]["embed"]]
        + [v for s in training_state["opt"]["state"].values() for v in s.values()]
    )
    names = {g.name: g.allowed for g in info.globals}
    assert names == {"collections.OrderedDict": True, "torch._utils._rebuild_tensor_v2": True,
                     "torch.FloatStorage": True}
    assert info.refused_globals == []


def test_info_lists_refused_globals_without_running_them(tmp_path):
    import collections

    path = tmp_path / "dd.pt"
    torch.save({"d": collections.defaultdict(list), "t": torch.ones(1)}, path)
    with pytest.raises(nbckpt.UnpicklingError):
        nbckpt.open(path)
    with nbckpt.open(path, weights_only=False) as archive:
        assert archive.info.refused_globals == ["collections.defaultdict", "builtins.list"]


def test_map_location_and_errors_on_archive():
    data = retag(torch_bytes({"x": torch.arange(3.0)}), {"cpu": "cuda:0"})
    with nbckpt.open(io.BytesIO(data)) as archive:  # listing needs no device
        assert archive.record("x").location == "cuda:0"
        with pytest.raises(nbckpt.DeviceError, match="no GPU is usable"):
            archive["x"]
    with nbckpt.open(io.BytesIO(data), map_location="cpu") as archive:
        np.testing.assert_array_equal(archive["x"], np.arange(3.0, dtype=np.float32))


def test_unknown_name_suggests_similar(training_state):
    with nbckpt.open(io.BytesIO(torch_bytes(training_state))) as archive:
        with pytest.raises(KeyError, match="similar: model.0.weight"):
            archive["0.weight"]


def test_mmap_archive_and_close(tmp_path):
    path = tmp_path / "a.pt"
    nbckpt.save({"a": np.arange(10.0)}, path)
    archive = nbckpt.open(path, mmap=True)
    a = archive["a"]
    assert not a.flags.writeable
    archive.close()
    np.testing.assert_array_equal(a, np.arange(10.0))  # arrays outlive the archive


def test_html_table_lists_records(training_state):
    with nbckpt.open(io.BytesIO(torch_bytes(training_state))) as archive:
        html = archive._repr_html_()
    assert "<table>" in html and "model.0.weight" in html and "(8, 4)" in html
    assert "tied.embed, tied.unembed" in html
    assert f"{len(archive.records)} arrays" in html


def test_open_refuses_corrupt_input():
    with pytest.raises(nbckpt.FormatError):
        nbckpt.open(io.BytesIO(b"PK\x03\x04" + b"\0" * 100))


def test_empty_and_scalar_records():
    with nbckpt.open(io.BytesIO(torch_bytes({"e": torch.zeros(0, 3), "s": torch.tensor(2.5)}))) as archive:
        assert archive.record("e").shape == (0, 3) and archive["e"].shape == (0, 3)
        assert archive.record("s").shape == () and archive["s"] == 2.5


def test_remapped_archive_shares_the_file_and_loads_elsewhere(tmp_path, fake_cupy):
    path = tmp_path / "w.pt"
    nbckpt.save({"w": np.arange(3.0), "step": 1}, path)
    archive = nbckpt.open(path)
    on_gpu = archive.remapped("cuda:1")
    assert on_gpu.records == archive.records and on_gpu.values == archive.values
    w = on_gpu["w"]
    assert isinstance(w, fake_cupy.ndarray) and w.device.id == 1
    np.testing.assert_array_equal(w.get(), np.arange(3.0))
    host = archive["w"]
    assert type(host) is np.ndarray and not np.shares_memory(host, archive.remapped("cpu")["w"])
    on_gpu.close()  # closes nothing: the file belongs to the archive it came from
    np.testing.assert_array_equal(archive["w"], np.arange(3.0))
    archive.close()
    assert archive.closed and not on_gpu.closed


def test_star_import_keeps_the_builtin_open():
    namespace: dict = {}
    exec("from nbckpt import *", namespace)
    assert "open" not in namespace and "load" in namespace and "Archive" in namespace
    assert nbckpt.open is nbckpt.archive.open


def test_arrays_nested_too_deep_are_refused_not_left_out():
    deep: object = np.ones(2)
    for _ in range(205):
        deep = [deep]
    buf = io.BytesIO()
    nbckpt.save({"deep": deep, "x": np.zeros(1)}, buf)
    with pytest.raises(nbckpt.FormatError, match="nested more than 200 containers deep"):
        nbckpt.open(io.BytesIO(buf.getvalue()))
    shallow_config = {"cfg": [[[[1]]]] , "w": np.ones(1)}
    buf = io.BytesIO()
    nbckpt.save(shallow_config, buf)
    with nbckpt.open(io.BytesIO(buf.getvalue())) as archive:
        assert archive.values["cfg"] == [[[[1]]]]


def test_a_checkpoint_without_arrays_lists_its_top_level_entries():
    buf = io.BytesIO()
    nbckpt.save({"epoch": 3, "config": {"lr": 0.1}}, buf)
    with nbckpt.open(io.BytesIO(buf.getvalue())) as archive:
        assert archive.records == [] and archive.values == {"epoch": 3, "config": {"lr": 0.1}}
