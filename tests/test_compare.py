"""nbckpt.diff: two checkpoints compared record by record."""

from __future__ import annotations

import copy
import io

import ml_dtypes
import numpy as np
import pytest
import torch

import nbckpt
from nbckpt import compare
from nbckpt.compare import Difference, array_difference
from nbckpt.format.dtypes import by_torch_name
from gpu_helpers import no_cupy  # noqa: F401 - fixture


def torch_file(obj, folder, name) -> str:
    path = str(folder / name)
    torch.save(obj, path)
    return path


def saved(obj) -> io.BytesIO:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    buf.seek(0)
    return buf


@pytest.fixture
def two_runs(tmp_path):
    """Checkpoints of one small model after 1 and after 3 Adam steps, as torch saves them.

    Between them: the head is replaced by a wider one (shape), a new EMA copy
    appears, the frozen embedding stays equal, one buffer changes dtype and
    the epoch counter moves.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    embedding = torch.randn(10, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def train(steps):
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(16, 4)).pow(2).mean().backward()
            opt.step()

    train(1)
    first = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
             "embedding": embedding, "mask": torch.ones(4, dtype=torch.float32), "epoch": 1, "lr": 0.01}
    a = torch_file(first, tmp_path, "step1.pt")
    train(2)
    state = copy.deepcopy(model.state_dict())
    state["2.weight"] = torch.randn(3, 8)  # a wider head
    second = {"model": state, "opt": opt.state_dict(), "embedding": embedding,
              "mask": torch.ones(4, dtype=torch.float16), "ema": {"0.weight": state["0.weight"] * 0.5},
              "epoch": 3, "lr": 0.01}
    b = torch_file(second, tmp_path, "step3.pt")
    return a, b, first, second


def test_training_checkpoints(two_runs):
    a, b, first, second = two_runs
    report = nbckpt.diff(a, b)
    changes = {d.name: d.change for d in report.records}
    assert report.only_in("A") == []
    assert report.only_in("B") == ["ema.0.weight"]
    assert changes["model.2.weight"] == "shape"
    assert changes["mask"] == "dtype"
    assert "embedding" not in changes and "model.1.weight" in changes
    for name in ("model.0.weight", "model.0.bias", "model.1.weight", "model.2.bias", "opt.state.0.exp_avg",
                 "opt.state.0.exp_avg_sq", "opt.state.0.step"):
        d = next(d for d in report.records if d.name == name)
        old, new = first, second
        for key in d.a.path:
            old, new = old[key], new[key]
        old64, new64 = old.numpy().astype(np.float64), new.numpy().astype(np.float64)
        gap = np.abs(old64 - new64)
        assert d.change == "values"
        assert d.differing == np.count_nonzero(old.numpy() != new.numpy())
        assert d.max_abs == gap.max()  # exact: float64 of the float32 values
        scale = np.maximum(np.abs(old64), np.abs(new64))
        assert d.max_rel == pytest.approx((gap[gap > 0] / scale[gap > 0]).max(), rel=1e-15)
    with nbckpt.open(a) as archive:
        equal = [r.name for r in archive.records if r.name not in changes]
    assert report.equal_records == len(equal) and "embedding" in equal
    assert [(v.name, v.change, v.a, v.b) for v in report.values] == [("epoch", "value", 1, 3)]
    assert report.equal_values > 0 and not report.identical


def test_rows_and_text(two_runs):
    a, b, _, _ = two_runs
    report = nbckpt.diff(a, b)
    rows = {row[0]: row for row in report.rows()}
    assert rows["ema.0.weight"] == ("ema.0.weight", "only in B", "", "(8, 4) float32", "", "")
    assert rows["model.2.weight"][1:4] == ("shape", "(2, 8) float32", "(3, 8) float32")
    assert rows["mask"][1:4] == ("dtype", "(4,) float32", "(4,) float16")
    assert rows["opt.state.0.step"][1:5] == ("values (1 of 1 differ)", "() float32", "() float32", "2")
    assert rows["epoch"] == ("epoch", "value", "1", "3", "", "")
    text = str(report)
    assert report.equal_records == 1  # the frozen embedding
    assert text.splitlines()[0] == (f"{a} vs {b}: 1 array equal, 23 with other values, 1 with another shape, "
                                    f"1 with another dtype, 1 only in B; 2 other values equal, 1 differ")
    assert report.COLUMNS == ("name", "change", "A", "B", "max abs diff", "max rel diff")
    html = report._repr_html_()
    assert "<td style='text-align:left'>only in B</td>" in html


def test_same_file_is_identical(two_runs):
    a, _, _, _ = two_runs
    report = nbckpt.diff(a, a)
    with nbckpt.open(a) as archive:
        assert report.identical and report.rows() == [] and report.equal_records == len(archive.records)
    assert str(report) == f"{a} vs {a}: {report.equal_records} arrays equal; {report.equal_values} other values equal"


def test_open_archives_are_used_and_left_open(two_runs):
    a, b, _, _ = two_runs
    with nbckpt.open(a) as archive_a, nbckpt.open(b) as archive_b:
        report = nbckpt.diff(archive_a, archive_b)
        assert archive_a["embedding"].shape == (10, 4)  # still open
    assert report.only_in("B") == ["ema.0.weight"]


def test_file_objects_and_values_only_on_one_side():
    a = saved({"w": np.ones(3), "name": "a", "cfg": {"depth": 2}})
    b = saved({"w": np.ones(3), "note": "b", "cfg": {"depth": 2}})
    report = nbckpt.diff(a, b)
    assert report.records == [] and report.equal_records == 1 and report.equal_values == 1
    assert [(v.name, v.change) for v in report.values] == [("name", "only in A"), ("note", "only in B")]


# --------------------------------------------------------------------------------------
# array_difference


def test_floats_nan_equal_nan_and_one_sided_nan_counted_apart():
    a = np.array([1.0, np.nan, 3.0, np.inf, 5.0, np.nan], dtype=np.float32)
    b = np.array([1.0, np.nan, 3.5, np.inf, np.nan, 1.0], dtype=np.float32)
    assert array_difference(a, b) == Difference(differing=3, max_abs=0.5, max_rel=0.5 / 3.5, nan_mismatch=2)


def test_inf_against_finite_is_an_infinite_difference():
    found = array_difference(np.array([np.inf, 1.0]), np.array([2.0, 1.0]))
    assert found.differing == 1 and found.max_abs == np.inf and found.max_rel is None


def test_moving_away_from_zero_is_relative_difference_one():
    found = array_difference(np.zeros(3), np.array([0.0, -2.0, 1e-30]))
    assert found == Difference(2, 2.0, 1.0, 0)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64])
def test_integers_exact_even_at_the_extremes(dtype):
    info = np.iinfo(dtype)
    a = np.array([info.min, 5, info.max], dtype=dtype)
    b = np.array([info.max, 5, info.max], dtype=dtype)
    found = array_difference(a, b)
    assert found.differing == 1
    assert found.max_abs == int(info.max) - int(info.min) and type(found.max_abs) is int
    assert found.max_rel == pytest.approx((int(info.max) - int(info.min)) / max(abs(int(info.min)), int(info.max)))


def test_bools():
    assert array_difference(np.array([True, False]), np.array([True, True])) == Difference(1, 1, 1.0, 0)


def test_complex_by_magnitude_of_the_difference():
    found = array_difference(np.array([1 + 1j, 2j], np.complex64), np.array([1 + 1j, 3 + 6j], np.complex64))
    assert found.differing == 1 and found.max_abs == 5.0 and found.max_rel == pytest.approx(5 / abs(3 + 6j))


def test_bfloat16_and_float8_through_float32():
    for dtype in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn):
        a, b = np.array([1.0, 2.0], dtype), np.array([1.0, 1.5], dtype)
        assert array_difference(a, b) == Difference(1, 0.5, 0.25, 0)


def test_complex32():
    a = np.zeros(2, nbckpt.complex32)
    b = a.copy()
    b["imag"][1] = 2
    assert array_difference(a, b) == Difference(1, 2.0, 1.0, 0)


def test_raw_bits_count_differing_elements():
    dtype = by_torch_name("bits16").numpy
    a, b = np.array([1, 2, 3], dtype), np.array([1, 9, 3], dtype)
    assert array_difference(a, b) == Difference(1, None, None, 0)


def test_chunks_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(70, 30))
    b = a + rng.normal(size=a.shape) * (rng.random(a.shape) < 0.1)
    whole = array_difference(a, b)
    monkeypatch.setattr(compare, "CHUNK", 97)
    assert array_difference(a, b) == whole
    assert array_difference(a.T, b.T) == whole  # non-contiguous


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="arrays differ in shape or dtype"):
        array_difference(np.zeros(2), np.zeros(3))


def test_meta_tensors():
    a = saved({"m": nbckpt.MetaArray((2, 2), np.float32), "n": nbckpt.MetaArray((2,), np.float32)})
    b = saved({"m": nbckpt.MetaArray((2, 2), np.float32), "n": np.zeros(2, np.float32)})
    report = nbckpt.diff(a, b)
    assert report.equal_records == 1
    [d] = report.records
    assert (d.name, d.change, d.differing, d.note) == ("n", "values", None,
                                                       "a meta tensor (no data) in A: values not compared")
    assert report.rows()[0][1] == "values: a meta tensor (no data) in A: values not compared"


def test_errors_come_from_opening():
    with pytest.raises(FileNotFoundError):
        nbckpt.diff("/nonexistent/a.pt", saved({}))
    with pytest.raises(nbckpt.FormatError):
        nbckpt.diff(io.BytesIO(b"not a checkpoint at all"), saved({}))


# -- hostile files: names that collide, values and views that repeat --------------------------------


def test_entries_whose_dotted_names_collide_are_compared_apart():
    a = saved({"a.b": np.zeros(2), "a": {"b": np.zeros(2)}})
    b = saved({"a.b": np.zeros(2), "a": {"b": np.ones(2)}})
    report = nbckpt.diff(a, b)
    assert not report.identical
    assert [(d.name, d.change, d.differing) for d in report.records] == [("['a']['b']", "values", 2)]
    assert report.equal_records == 1
    assert compare.path_name(("a.b",)) == "['a.b']"


def torch_saved(obj) -> io.BytesIO:
    """torch.save's pickler memoizes: a value repeated 2**60 times is written once."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def _laughs(depth: int):
    value = ["x"]
    for _ in range(depth):
        value = [value, value]
    return value


def test_values_repeated_through_the_memo_compare_in_linear_time():
    # 2**60 leaves, 60 distinct lists: each distinct pair is compared once
    a, b = torch_saved({"v": _laughs(60), "w": torch.ones(1)}), torch_saved({"v": _laughs(60), "w": torch.ones(1)})
    report = nbckpt.diff(a, b)
    assert report.identical and report.equal_values == 1
    c = _laughs(60)
    c[0][0][0] = ["y"]  # the change shows through every path that shares it
    report = nbckpt.diff(torch_saved({"v": _laughs(60), "w": torch.ones(1)}), torch_saved({"v": c, "w": torch.ones(1)}))
    assert [(d.name, d.change) for d in report.values] == [("v", "value")]
    assert report.rows()[0][2].startswith("[[[[[[[") and len(report.rows()[0][2]) == 40


def test_stride0_views_are_compared_once_and_counted_as_often_as_they_repeat():
    a = np.broadcast_to(np.float32(1), (1 << 40,))
    b = np.broadcast_to(np.float32(2), (1 << 40,))
    assert array_difference(a, b) == Difference(1 << 40, 1.0, 0.5, 0)
    assert compare.span(a) == 1


def test_views_that_repeat_their_data_on_one_side_only_are_not_expanded(monkeypatch):
    monkeypatch.setattr(compare, "COMPARE_ALWAYS", 16)
    repeated, dense = np.broadcast_to(np.float32(0), (64,)), np.arange(64, dtype=np.float32)
    assert compare._too_repetitive(repeated, repeated) == ""  # both repeat along one axis: compared once
    assert compare._too_repetitive(dense, dense) == ""
    assert compare._too_repetitive(repeated, dense) == (
        "values not compared: the array in A repeats its 1 stored elements to make 64 (a stride-0 or "
        "overlapping view); nbckpt compares at most 4x the elements a view holds")
    report = nbckpt.diff(saved({"w": repeated}), saved({"w": dense}))
    assert [(d.name, d.change, d.differing, d.note) for d in report.records] == [
        ("w", "values", None, compare._too_repetitive(repeated, dense))]


def test_untyped_failures_become_format_errors(monkeypatch):
    def broken(*args):
        raise RecursionError("deep")

    monkeypatch.setattr(compare, "_same_value", broken)
    with pytest.raises(nbckpt.FormatError, match=r"^comparing <BytesIO> with <BytesIO>: the file's data is "
                                                 r"nested too deeply to process$"):
        nbckpt.diff(saved({"v": 1}), saved({"v": 1}))


# -- one API: map_location and progress as in load and open (issue 14) ----------------------------------


def _gpu_saved(folder) -> str:
    """A checkpoint whose arrays were saved on cuda:0 (listing it needs no GPU)."""
    from checkpoint_tools import retag

    path = folder / "gpu.pt"
    path.write_bytes(retag(saved({"w": np.arange(4.0)}).getvalue(), {"cpu": "cuda:0"}))
    return str(path)


def test_map_location_and_progress_have_one_default_everywhere():
    import inspect

    params = {name: inspect.signature(fn).parameters for name, fn in
              (("load", nbckpt.load), ("open", nbckpt.open), ("diff", nbckpt.diff))}
    assert list(params["load"])[:2] == ["f", "map_location"]  # torch's positional order
    assert params["load"]["map_location"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for name in ("open", "diff"):
        assert params[name]["map_location"].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert [repr(p["map_location"].default) for p in params.values()] == ["None"] * 3
    from nbckpt.formats.dcp_write import save_dcp

    for fn in (nbckpt.load, nbckpt.save, nbckpt.diff, nbckpt.convert, nbckpt.verify, nbckpt.Archive.verify,
               nbckpt.Archive.load, save_dcp):
        assert inspect.signature(fn).parameters["progress"].default is None, fn.__qualname__


def test_map_location_places_the_compared_arrays(monkeypatch):
    placed = []

    def keep(storage, location):
        placed.append(location)
        return storage

    a, b = saved({"w": np.ones(3)}), saved({"w": np.zeros(3)})
    report = nbckpt.diff(a, b, map_location=keep)
    assert placed == ["cpu", "cpu"] and report.records[0].max_abs == 1.0


def test_map_location_none_keeps_saved_devices(tmp_path, no_cupy):
    gpu = _gpu_saved(tmp_path)
    with pytest.raises(nbckpt.DeviceError, match="cuda:0"):
        nbckpt.diff(gpu, gpu, map_location=None)  # on the device it was saved on: none here
    assert nbckpt.diff(gpu, gpu, map_location="cpu").identical


def test_old_host_default_is_deprecated_for_gpu_saved_files(tmp_path, no_cupy):
    gpu = _gpu_saved(tmp_path)
    with pytest.warns(DeprecationWarning) as caught:
        report = nbckpt.diff(gpu, gpu)
    assert report.identical and report.equal_records == 1  # compared on the host, as before
    assert [str(w.message) for w in caught] == [
        "nbckpt.diff compares arrays saved on cuda:0 on the host because map_location was not given. "
        "map_location now defaults to None, as in nbckpt.load and nbckpt.open (each array on the device it "
        "was saved on); this old behaviour goes away in nbckpt 0.2. Pass map_location='cpu' to keep comparing "
        "on the host, or map_location=None."]
    assert caught[0].filename == __file__  # points at the caller


def test_host_files_need_no_map_location_and_warn_nothing():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nbckpt.diff(saved({"w": np.ones(2)}), saved({"w": np.ones(2)})).identical


def test_map_location_remaps_open_archives(tmp_path, no_cupy):
    gpu = _gpu_saved(tmp_path)
    with nbckpt.open(gpu) as archive:
        assert nbckpt.diff(archive, archive, map_location="cpu").identical
        with pytest.raises(nbckpt.DeviceError):
            nbckpt.diff(archive, archive)  # an open archive loads where it was opened to load
        assert not archive.closed


def test_progress_default_shows_a_bar_only_for_big_comparisons(monkeypatch, capsys):
    import nbckpt.progress as progress

    a, b = saved({"w": np.ones(1000)}), saved({"w": np.ones(1000)})
    monkeypatch.setattr(progress, "AUTO_THRESHOLD", 1 << 40)
    nbckpt.diff(a, b)
    assert "comparing" not in capsys.readouterr().err
    monkeypatch.setattr(progress, "AUTO_THRESHOLD", 0)
    a.seek(0), b.seek(0)
    nbckpt.diff(a, b)
    assert "comparing" in capsys.readouterr().err


def test_open_load_takes_progress_as_load_does(monkeypatch, capsys):
    import nbckpt.progress as progress

    buf = saved({"w": np.ones(1000)})
    monkeypatch.setattr(progress, "AUTO_THRESHOLD", 0)
    with nbckpt.open(buf) as archive:
        archive.load(progress=False)
        assert "loading" not in capsys.readouterr().err
        np.testing.assert_array_equal(archive.load()["w"], np.ones(1000))  # None: big enough here
        assert "loading" in capsys.readouterr().err
