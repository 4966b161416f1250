"""ArrayPreview and ArchiveBrowser, without a browser: real ipywidgets, driven through their
traits (``value``, ``options``), ``Button.click()`` and ``get_state()``, as ipywidgets' own
tests do. The rendered widget is tested in a real browser in test_browser_ui.py."""

from __future__ import annotations

import html
import io
import re

import ml_dtypes
import numpy as np
import pytest
import torch

import nbckpt
from checkpoint_tools import retag
from gpu_helpers import fake_cupy, no_cupy  # noqa: F401 - fixtures
from nbckpt.format.dtypes import TORCH_DTYPES
from nbckpt.jupyter import ArchiveBrowser, ArrayPreview, browser as browser_module, listing, stats
from test_load_options import ReadRecorder, overlaps, storage_ranges
from test_stats import PNG_SIGNATURE, device  # noqa: F401 - the CuPy stand-in fixture

def saved(obj) -> bytes:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    return buf.getvalue()


def text_of(html_text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", html_text))).strip()


def image_bytes(image) -> bytes:
    return bytes(image.get_state()["value"])


STATE = {
    "layer1": {"weight": np.arange(12, dtype=np.float32).reshape(3, 4), "bias": np.zeros(4, np.float32)},
    "embed": np.arange(10, dtype=np.int64),
    "flags": np.array([True, False, True]),
    "half": np.array([0.5, -1.5], dtype=ml_dtypes.bfloat16),
    "ghost": nbckpt.MetaArray((2, 3), np.float32),
    "step": 7,
    "config": {"lr": 0.1, "name": "run-1"},
}
NAMES = ["layer1.weight", "layer1.bias", "embed", "flags", "half", "ghost", "step", "config"]


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "state.pt"
    nbckpt.save(STATE, path)
    return path


@pytest.fixture
def make_browser():
    """``make_browser(source, **kwargs)``; every browser made is closed after the test."""
    made = []

    def make(source, **kwargs):
        kwargs.setdefault("namespace", {})
        made.append(ArchiveBrowser(source, **kwargs))
        return made[-1]

    yield make
    for b in made:
        b.close()


# --------------------------------------------------------------------------------------
# Pure functions: labels, filter, names


def test_entry_labels_are_aligned_columns(state_file):
    with nbckpt.open(state_file) as archive:
        labels = listing.entry_labels(archive.records, archive.values)
    assert labels == [
        "layer1.weight  (3, 4)  float32   cpu   48 B",
        "layer1.bias    (4,)    float32   cpu   16 B",
        "embed          (10,)   int64     cpu   80 B",
        "flags          (3,)    bool      cpu   3 B",
        "half           (2,)    bfloat16  cpu   4 B",
        "ghost          (2, 3)  float32   meta  24 B",
        "step           int: 7",
        "config         dict: {'lr': 0.1, 'name': 'run-1'}",
    ]


def test_long_names_do_not_widen_every_line():
    records = [nbckpt.Record("x" * 100, ("x",), (1,), np.dtype("f4"), "cpu", 4, "0", 0, (1,)),
               nbckpt.Record("w", ("w",), (1,), np.dtype("f4"), "cpu", 4, "1", 0, (1,))]
    short = listing.entry_labels(records, {"": 2})[1:]
    assert short == ["w" + " " * (listing.NAME_WIDTH - 1) + "  (1,)  float32  cpu  4 B",
                     "(root)" + " " * (listing.NAME_WIDTH - 6) + "  int: 2"]


def test_value_text_is_short_whatever_the_value():
    assert listing.value_text("x" * 1000) == "str: 'xxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxx'"
    assert listing.value_text({"a": list(range(10**6))}) == "dict: {'a': [0, 1, 2, 3, 4, 5, ...]}"
    assert len(listing.value_text({f"k{i}": "v" * 30 for i in range(100)})) == 70
    assert listing.value_text(None) == "NoneType: None"


def test_filter_substring_and_glob_case_insensitive():
    f = listing.EntryFilter(["Encoder.Weight", "encoder.bias", "decoder.weight", "step", "x[1]"])
    assert f.matching("ENC") == [0, 1]
    assert f.matching("  weight ") == [0, 2]
    assert f.matching("*.WEIGHT") == [0, 2]
    assert f.matching("?ecoder.*") == [2]
    assert f.matching("enc*") == [0, 1]
    assert f.matching("weight*") == []          # a glob matches the whole name
    assert f.matching("[ed]*bias") == [1]
    assert f.matching("nothing") == []
    assert f.matching("") == [0, 1, 2, 3, 4] and len(f) == 5


@pytest.mark.parametrize("name, expected", [
    ("layer1.weight", "layer1_weight"),
    ("state.0.exp_avg", "state_0_exp_avg"),
    ("0.weight", "_0_weight"),
    ("model.blocks.3.attn-proj", "model_blocks_3_attn_proj"),
    ("'key with spaces'.x", "key_with_spaces_x"),
    ("class", "class_"),
    ("größe", "größe"),
    ("", "value"),
    ("...", "value"),
])
def test_variable_names_from_entry_names(name, expected):
    assert listing.variable_name(name) == expected
    assert expected.isidentifier()


def test_name_problems():
    ns = {"w": 1, "b": 2}
    assert listing.name_problem(["x", "y"], 2, ns, overwrite=False) == ""
    assert listing.name_problem(["w"], 1, ns, overwrite=True) == ""
    assert listing.name_problem(["w", "b"], 2, ns, overwrite=False) == (
        'variables named w, b exist already: tick "overwrite" to replace them, or choose another name')
    assert listing.name_problem([], 1, ns, overwrite=False) == (
        "no name given for 1 selected entry: give one variable name")
    assert listing.name_problem(["x"], 2, ns, overwrite=False) == (
        "1 name given for 2 selected entries: give 2 variable names, separated by commas")
    assert listing.name_problem(["for"], 1, ns, overwrite=False) == (
        "'for' is a Python keyword: choose another variable name (such as for_)")
    assert listing.name_problem(["a.b"], 1, ns, overwrite=False) == (
        "'a.b' is not a valid Python variable name: use letters, digits and _, not starting with a digit")
    assert listing.name_problem(["x", "x"], 2, ns, overwrite=True) == (
        "x named twice: give each selected entry its own variable name")


# --------------------------------------------------------------------------------------
# ArrayPreview


def test_preview_of_a_2d_array():
    a = np.array([[0.0, 1.0, 2.0], [np.nan, np.inf, 5.0]], dtype=np.float32)
    p = ArrayPreview(a, name="layer.w")
    assert text_of(p.header.value) == "layer.w (2, 3) float32 on cpu, 6 elements, 24 B"
    assert text_of(p.statistics.value) == ("min 0.0 max 5.0 mean 2.0 std 1.87083 NaN 1 Inf 1 zeros 16.67%")
    assert p.sampled.value == "" and p.sampled.layout.display == "none"
    assert p.pictures_note.layout.display == "none"
    assert image_bytes(p.histogram).startswith(PNG_SIGNATURE) and p.histogram.format == "png"
    assert image_bytes(p.heatmap).startswith(PNG_SIGNATURE)
    assert p.first_values.value == "<code>[ 0.,  1.,  2., nan, inf,  5.]</code>"
    assert repr(p) == "<ArrayPreview layer.w (2, 3) float32>"
    state = p.get_state()
    assert state["_view_name"] == "VBoxView" and len(state["children"]) == 5
    assert "nbckpt-preview" in state["_dom_classes"]


def test_preview_of_higher_rank_draws_the_first_slice_and_1d_no_heatmap():
    assert ArrayPreview(np.arange(24.0).reshape(2, 3, 4)).heatmap is not None
    assert ArrayPreview(np.arange(5.0)).heatmap is None
    zero_d = ArrayPreview(np.array(2.5))
    assert zero_d.heatmap is None and zero_d.first_values.value == "<code>2.5</code>"


def test_preview_of_a_large_array_is_sampled_and_says_so(monkeypatch):
    monkeypatch.setattr(stats, "EXACT_LIMIT", 1000)
    monkeypatch.setattr(stats, "SAMPLE_SIZE", 100)
    p = ArrayPreview(np.arange(5000, dtype=np.float64))
    assert p.array_stats.sampled and p.array_stats.counted == 100
    assert p.sampled.layout.display is None
    assert p.sampled.value == ("sampled: statistics of 100 of 5,000 elements (NaN, Inf and zero counts are "
                               "of the sample)")
    assert p.first_values.value.startswith("<code>[ 0.,  1.,  2.,")
    assert p.first_values.value.endswith("19., …]</code>")


@pytest.mark.parametrize("torch_dtype", TORCH_DTYPES, ids=lambda d: d.name)
def test_preview_of_every_dtype(torch_dtype):
    a = np.zeros((5, 6), dtype=torch_dtype.numpy)
    p = ArrayPreview(a, name="x")
    assert f"(5, 6) {a.dtype} on cpu" in text_of(p.header.value)
    if torch_dtype.numpy.metadata and torch_dtype.name != "complex32":  # raw bits: no numbers
        assert "no statistics" in text_of(p.statistics.value)
        assert p.histogram is None and p.pictures_note.value == "no pictures: no values to draw"
    else:
        assert "NaN 0" in text_of(p.statistics.value)
        assert image_bytes(p.histogram).startswith(PNG_SIGNATURE)
        assert image_bytes(p.heatmap).startswith(PNG_SIGNATURE)
    assert p.first_values.value.endswith(", …]</code>")


def test_preview_of_complex_says_magnitudes():
    p = ArrayPreview(np.array([3 + 4j, 0, 1j], dtype=np.complex64))
    assert text_of(p.statistics.value).endswith("note complex: min, max, mean and std of the magnitudes |z|")
    assert text_of(p.statistics.value).startswith("min 0.0 max 5.0")


def test_preview_of_a_meta_array_says_there_is_no_data():
    p = ArrayPreview(nbckpt.MetaArray((4, 5), np.float32), name="ghost")
    assert text_of(p.header.value) == "ghost (4, 5) float32 on meta, 20 elements, 80 B"
    assert text_of(p.statistics.value) == "note a meta tensor: shape and dtype only, no data"
    assert p.histogram is None and p.heatmap is None
    assert p.pictures_note.value == "no pictures: no values to draw" and p.pictures_note.layout.display is None
    assert p.first_values.value == "<code>no values: a meta tensor has no data</code>"


def test_preview_of_an_empty_array():
    p = ArrayPreview(np.zeros((0, 3), np.float32))
    assert text_of(p.statistics.value) == "min — max — mean — std — NaN 0 Inf 0 zeros —"
    assert image_bytes(p.histogram).startswith(PNG_SIGNATURE)  # a picture that says "empty"
    assert p.heatmap is None


def test_preview_of_a_gpu_array_computes_on_the_device(device):  # noqa: F811 - the fixture
    on_gpu = device(np.arange(12, dtype=np.float32).reshape(3, 4))
    p = ArrayPreview(on_gpu, name="w")
    assert text_of(p.header.value) == "w (3, 4) float32 on cuda:1, 12 elements, 48 B"
    assert text_of(p.statistics.value).startswith("min 0.0 max 11.0 mean 5.5")
    assert p.heatmap is not None
    # Statistics copied scalars; pictures and first values copied at most the array once each.
    assert device.log and max(device.log) <= 12


def test_preview_keeps_no_reference_to_the_array():
    import weakref

    a = np.ones((100, 100))
    ref = weakref.ref(a)
    p = ArrayPreview(a)
    del a
    assert ref() is None and p.array_stats.size == 10_000


# --------------------------------------------------------------------------------------
# ArchiveBrowser: building and the list


def test_header_and_list(state_file, make_browser):
    b = make_browser(str(state_file))
    header = text_of(b.header.value)
    assert header.startswith(f"file {state_file} format zip (torch >= 1.6), version 3 byte order little size ")
    assert header.endswith("entries 6 arrays in 5 storages, 2 other entries")  # the meta tensor has none
    assert [e.name for e in b.entries] == NAMES
    state = b.records.get_state()
    assert list(state["_options_labels"]) == [e.label for e in b.entries]
    assert state["_options_labels"][-2:] == ("step           int: 7",
                                              "config         dict: {'lr': 0.1, 'name': 'run-1'}")
    assert state["index"] == () and "nbckpt-records" in state["_dom_classes"]
    assert b.count.value == "8 entries" and b.more.layout.display == "none"
    assert b.device.get_state()["_options_labels"] == ("cpu",)
    assert b.status.value == "" and not b.load_button.disabled
    assert repr(b) == f"<ArchiveBrowser of {state_file}: 8 entries>"
    assert b._repr_mimebundle_()["text/plain"] == repr(b)


def test_filter_narrows_the_list(state_file, make_browser):
    b = make_browser(state_file)
    b.filter.value = "LAYER1"
    assert b.records.get_state()["_options_labels"] == (b.entries[0].label, b.entries[1].label)
    assert b.count.value == "2 of 8 entries match"
    b.filter.value = "*[gp]"
    assert [b.entries[i].name for _, i in b.records.options] == ["config", "step"][::-1]
    b.filter.value = "nothing here"
    assert b.records.options == () and b.count.value == "0 of 8 entries match"
    b.filter.value = ""
    assert len(b.records.options) == 8 and b.count.value == "8 entries"


def test_selection_survives_filtering_while_visible(state_file, make_browser):
    b = make_browser(state_file)
    b.select("layer1.weight", "embed")
    b.filter.value = "layer"
    assert b.records.value == (0,) and b.variable.value == "layer1_weight"
    assert isinstance(b.preview.children[0], ArrayPreview)
    b.filter.value = "embed"
    assert b.records.value == () and b.variable.value == ""
    assert b.preview.children[0].value == "select an entry to preview it"


def test_selecting_an_array_previews_it(state_file, make_browser):
    b = make_browser(state_file)
    b.records.value = (0,)  # as the list does when clicked
    [preview] = b.preview.children
    assert isinstance(preview, ArrayPreview)
    assert text_of(preview.header.value) == "layer1.weight (3, 4) float32 on cpu, 12 elements, 48 B"
    assert text_of(preview.statistics.value).startswith("min 0.0 max 11.0 mean 5.5")
    assert b.variable.value == "layer1_weight"


def test_selecting_a_value_shows_it(state_file, make_browser):
    b = make_browser(state_file)
    b.select("config")
    [shown] = b.preview.children
    assert text_of(shown.value) == "config dict of 2 entries {'lr': 0.1, 'name': 'run-1'}"
    b.select("ghost")
    assert text_of(b.preview.children[0].statistics.value) == "note a meta tensor: shape and dtype only, no data"


def test_selecting_several_summarises_and_names_each(state_file, make_browser):
    b = make_browser(state_file)
    b.select("layer1.weight", "layer1.bias", "step")
    assert b.variable.value == "layer1_weight, layer1_bias, step"
    assert b.preview.children[0].value == ("3 entries selected (2 arrays, 64 B): Load loads each into its "
                                           "own variable")
    with pytest.raises(KeyError, match="not in the list: nope"):
        b.select("nope")


def test_a_large_archive_lists_a_capped_page_and_filters_on_names(tmp_path, make_browser, monkeypatch):
    state = {f"block{i}.{part}": np.full(2, i, np.float32) for i in range(750) for part in ("weight", "bias")}
    state["epoch"] = 3
    path = tmp_path / "big.pt"
    nbckpt.save(state, path)
    calls = []
    real_labels = listing.entry_labels
    monkeypatch.setattr(listing, "entry_labels", lambda *args: calls.append(1) or real_labels(*args))
    b = make_browser(path)
    assert len(b.entries) == 1501 and b.count.value == "1,501 entries"
    assert len(b.records.options) == browser_module.MAX_SHOWN == 500
    assert b.more.value == "1,001 more… type in the filter to narrow the list" and b.more.layout.display is None
    b.filter.value = "block7"
    names = [b.entries[i].name for _, i in b.records.options]
    assert names == [f"block{i}.{p}" for i in [7] + list(range(70, 80)) + list(range(700, 750))
                     for p in ("weight", "bias")]
    assert b.count.value == "122 of 1,501 entries match" and b.more.layout.display == "none"
    b.filter.value = "*9.BIAS"
    assert len(b.records.options) == 75 and all(b.entries[i].name.endswith("9.bias") for _, i in b.records.options)
    b.filter.value = "block749.weight"
    b.select("block749.weight")
    assert b.variable.value == "block749_weight"
    for text in ("b", "bl", "blo", "bloc", "block", "block1", ""):  # as the user types
        b.filter.value = text
    assert calls == [1]  # labels were made once, when the browser was built
    assert b.records.value == () and b.variable.value == ""  # block749 left the visible page


# --------------------------------------------------------------------------------------
# Reads: nothing until an array is previewed or loaded, then only its storage


def test_building_and_filtering_read_no_storage_and_a_preview_reads_only_its_own(make_browser):
    data = saved(STATE)
    f = ReadRecorder(data)
    ranges = storage_ranges(data)

    def touched() -> set[str]:
        found = {name for name, rng in ranges.items() for r in f.ranges if r[1] > r[0] and overlaps(rng, r)}
        f.ranges.clear()
        return found

    b = make_browser(f)
    b.filter.value = "layer"
    b.filter.value = "*"
    assert touched() == set()
    b.select("step")
    b.select("config")
    assert touched() == set()
    b.select("layer1.bias")
    record = b.archive.record("layer1.bias")
    assert touched() == {f"data/{record.storage}"}
    b.select("layer1.bias", "embed")  # several: summarised, nothing read
    assert touched() == set()
    b.select("embed")
    b.load_button.click()
    assert touched() == {f"data/{b.archive.record('embed').storage}"}
    assert b.status.value == "loaded embed as embed: ndarray (10,) int64, cpu"


# --------------------------------------------------------------------------------------
# Loading


def test_load_one_array_into_the_namespace(state_file, make_browser):
    ns = {"np": np}
    b = make_browser(state_file, namespace=ns)
    b.select("layer1.weight")
    b.load_button.click()
    np.testing.assert_array_equal(ns["layer1_weight"], STATE["layer1"]["weight"])
    assert b.status.value == "loaded layer1.weight as layer1_weight: ndarray (3, 4) float32, cpu"
    assert b.status.style.text_color == "#1b5e20"
    assert b.progress.layout.display == "none"  # small: no progress bar
    assert set(ns) == {"np", "layer1_weight"}


def test_load_under_another_name_and_several_at_once(state_file, make_browser):
    ns = {}
    b = make_browser(state_file, namespace=ns)
    b.select("layer1.weight")
    b.variable.value = "w"
    b.load_button.click()
    assert list(ns) == ["w"] and b.status.value.startswith("loaded layer1.weight as w:")
    b.select("embed", "half", "ghost", "config")
    assert b.variable.value == "embed, half, ghost, config"
    b.load_button.click()
    assert b.status.value == "loaded 4 entries onto cpu: embed, half, ghost, config"
    assert ns["half"].dtype == ml_dtypes.bfloat16 and ns["ghost"] == STATE["ghost"]
    assert ns["config"] == STATE["config"]
    ns["config"]["lr"] = 1.0  # a copy: the archive's value is unchanged
    assert b.archive.values["config"]["lr"] == 0.1


def test_a_large_load_shows_progress(state_file, make_browser, monkeypatch):
    monkeypatch.setattr(browser_module, "PROGRESS_THRESHOLD", 100)
    b = make_browser(state_file)
    steps = []
    b.progress.observe(lambda change: steps.append(round(change["new"], 3)), names="value")
    b.select("layer1.weight", "layer1.bias", "embed")  # 48 + 16 + 80 bytes
    b.load_button.click()
    state = b.progress.get_state()
    assert state["layout"] and b.progress.layout.display is None
    assert (state["value"], state["bar_style"], state["description"]) == (1.0, "success", "144 B / 144 B")
    assert steps == [0.333, 0.444, 1.0]
    real_getitem = nbckpt.Archive.__getitem__

    def fail_on_embed(self, name):
        if name == ("embed",):
            raise MemoryError("out of memory")
        return real_getitem(self, name)

    monkeypatch.setattr(nbckpt.Archive, "__getitem__", fail_on_embed)
    b.overwrite.value = True
    b.load_button.click()
    assert b.status.value == "loading failed: MemoryError: out of memory"
    assert (b.progress.value, b.progress.bar_style) == (pytest.approx(64 / 144), "danger")


def test_load_onto_a_gpu(state_file, make_browser, fake_cupy):  # noqa: F811 - the fixture
    ns = {}
    b = make_browser(state_file, namespace=ns)
    assert b.device.options == ("cpu", "cuda:0", "cuda:1")
    b.select("layer1.weight")
    b.device.value = "cuda:1"
    b.load_button.click()
    w = ns["layer1_weight"]
    assert isinstance(w, fake_cupy.ndarray) and w.device.id == 1
    np.testing.assert_array_equal(w.get(), STATE["layer1"]["weight"])
    assert b.status.value == "loaded layer1.weight as layer1_weight: ndarray (3, 4) float32, cuda:1"


def test_a_record_saved_on_a_gpu_previews_and_loads_on_the_host_without_one(make_browser, no_cupy):  # noqa: F811
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2, 2)}, buf)
    data = retag(buf.getvalue(), {"cpu": "cuda:1"})
    ns = {}
    b = make_browser(io.BytesIO(data), namespace=ns)
    assert b.records.options[0][0] == "w  (2, 2)  float32  cuda:1  16 B"
    b.select("w")
    assert text_of(b.preview.children[0].header.value) == "w (2, 2) float32 on cpu, 4 elements, 16 B"
    b.load_button.click()
    assert b.status.value == "loaded w as w: ndarray (2, 2) float32, cpu"


# --------------------------------------------------------------------------------------
# Mistakes and failures: in the status line, nothing loaded


def refused(b, ns, before) -> str:
    assert ns == before, "nothing may be loaded when a load is refused"
    assert b.status.style.text_color == "#b00020"
    assert not b.load_button.disabled
    return b.status.value


def test_load_with_nothing_selected(state_file, make_browser):
    ns = {}
    b = make_browser(state_file, namespace=ns)
    b.load_button.click()
    assert refused(b, ns, {}) == "select one or more entries in the list first"


def test_name_clash_is_refused_unless_overwrite_is_ticked(state_file, make_browser):
    ns = {"layer1_weight": "mine"}
    b = make_browser(state_file, namespace=ns)
    b.select("layer1.weight")
    b.load_button.click()
    assert refused(b, ns, {"layer1_weight": "mine"}) == (
        'a variable named layer1_weight exists already: tick "overwrite" to replace it, or choose another name')
    b.overwrite.value = True
    b.load_button.click()
    assert isinstance(ns["layer1_weight"], np.ndarray)
    assert b.status.value.startswith("loaded layer1.weight as layer1_weight")


@pytest.mark.parametrize("typed, message", [
    ("2fast", "'2fast' is not a valid Python variable name: use letters, digits and _, not starting with a digit"),
    ("lambda", "'lambda' is a Python keyword: choose another variable name (such as lambda_)"),
    ("", "no name given for 1 selected entry: give one variable name"),
    ("a, b", "2 names given for 1 selected entry: give one variable name"),
])
def test_invalid_names_are_refused(state_file, make_browser, typed, message):
    ns = {}
    b = make_browser(state_file, namespace=ns)
    b.select("embed")
    b.variable.value = typed
    b.load_button.click()
    assert refused(b, ns, {}) == message


def test_an_unusable_device_is_reported(state_file, make_browser, no_cupy):  # noqa: F811 - the fixture
    ns = {}
    b = make_browser(state_file, namespace=ns)
    b.device.options = ["cpu", "cuda:0"]  # a GPU listed earlier, gone now
    b.device.value = "cuda:0"
    b.select("embed")
    b.load_button.click()
    message = refused(b, ns, {})
    assert message.startswith("cannot load onto cuda:0: ")
    assert "CuPy is not installed" in message and "\n" not in message


def test_a_refused_global_is_reported_and_nothing_listed(tmp_path, make_browser):
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "opt": torch.optim.SGD}, buf)
    path = tmp_path / "unsafe.pt"
    path.write_bytes(buf.getvalue())
    ns = {}
    b = make_browser(path, namespace=ns)
    assert b.archive is None and b.entries == [] and b.records.options == ()
    assert text_of(b.header.value) == f"file {path}"
    assert b.status.value.startswith("weights_only=True refused GLOBAL torch.optim.sgd.SGD")
    assert b.status.value.endswith("Then make the browser again (or give it nbckpt.open(path, weights_only=False) "
                                   "for a file you trust completely).")
    assert b.load_button.disabled
    b.load_button.click()
    assert b.status.value == "select one or more entries in the list first" and ns == {}


def test_a_failing_read_is_reported_not_raised(state_file, make_browser, monkeypatch):
    ns = {}
    b = make_browser(state_file, namespace=ns)

    def broken(self, name):
        raise nbckpt.FormatError("truncated file while reading record data/0: expected 48 bytes, got 3")

    monkeypatch.setattr(nbckpt.Archive, "__getitem__", broken)
    b.select("layer1.weight")
    assert b.preview.children[0].value == ("no preview: truncated file while reading record data/0: expected 48 "
                                           "bytes, got 3")
    assert b.status.value.startswith("cannot preview layer1.weight: truncated file")
    b.load_button.click()
    assert refused(b, ns, {}) == ("loading failed: FormatError: truncated file while reading record data/0: "
                                  "expected 48 bytes, got 3")
    assert b.progress.bar_style == ""  # small: no bar shown, none marked
    monkeypatch.setattr(nbckpt.Archive, "__getitem__", lambda self, name: (_ for _ in ()).throw(MemoryError("no")))
    b.load_button.click()
    assert refused(b, ns, {}) == "loading failed: MemoryError: no"


def test_without_ipython_and_namespace_the_status_says_what_to_do(state_file, monkeypatch):
    monkeypatch.setattr(browser_module, "_ipython", lambda: None)
    b = ArchiveBrowser(state_file)
    try:
        b.select("embed")
        b.load_button.click()
        assert b.status.value == ("no IPython session to load into: give the browser a dict, "
                                  "ArchiveBrowser(path, namespace=variables)")
    finally:
        b.close()


# --------------------------------------------------------------------------------------
# Files and lifetime


def test_close_closes_a_file_it_opened_only(state_file):
    b = ArchiveBrowser(state_file, namespace={})
    opened = b.archive
    assert not opened.closed
    b.close()
    assert opened.closed
    with nbckpt.open(state_file) as archive:
        b = ArchiveBrowser(archive, namespace={})
        b.select("embed")
        b.close()
        assert not archive.closed
        np.testing.assert_array_equal(archive["embed"], STATE["embed"])


def test_missing_and_foreign_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        ArchiveBrowser(tmp_path / "missing.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(nbckpt.FormatError, match="not a (torch )?checkpoint|not one"):
        ArchiveBrowser(tmp_path / "notes.txt")


def test_widgets_import_lazily_and_stock_widgets_only():
    import subprocess
    import sys

    script = ("import sys, nbckpt, nbckpt.jupyter\n"
              "assert 'ipywidgets' not in sys.modules\n"
              "from nbckpt.jupyter import ArchiveBrowser, ArrayPreview\n"
              "assert 'ipywidgets' in sys.modules\n"
              "assert sorted(nbckpt.jupyter.__all__) == ['ArchiveBrowser', 'ArrayPreview', 'DiffBrowser', "
              "'load_ipython_extension']\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_value_preview_is_bounded():
    nested = {"model": {"layers": [{"width": 64, "act": "relu"}] * 3}, "lr": 1e-3}
    assert listing.value_preview(nested) == (
        "{'lr': 0.001,\n 'model': {'layers': [{'act': 'relu', 'width': 64}, {'act': 'relu', 'width': 64},\n"
        "                      {'act': 'relu', 'width': 64}]}}")
    huge = {"ids": list(range(10**6))}
    assert listing.value_preview(huge) == "{'ids': [" + ", ".join(map(str, range(50))) + ", ...]}"
    assert len(listing.value_preview("x" * 10**6)) == 4000 + len(" …")
    assert listing.value_preview(list(range(3000)), limit=20) == "[0, 1, 2, 3, 4, 5, 6 …"


# --------------------------------------------------------------------------------------
# ArchiveBrowser: the tree view and the order


def labels_of(b):
    return list(b.records.get_state()["_options_labels"])


def heads_of(b):
    """The names (with a module's mark) of the lines listed."""
    return [re.split(r"\s{2,}", label.strip())[0] for label in labels_of(b)]


def test_tree_view_groups_entries_into_modules(state_file, make_browser):
    b = make_browser(state_file, view="tree")
    assert b.view.value == "tree" and "nbckpt-view" in b.view.get_state()["_dom_classes"]
    # A small archive opens fully: every module and entry is listed, the names indented.
    assert labels_of(b) == [
        "▾ layer1/   2 entries, 16 params, 64 B, float32",
        "    weight  (3, 4)  float32   cpu   48 B",
        "    bias    (4,)    float32   cpu   16 B",
        "  embed     (10,)   int64     cpu   80 B",
        "  flags     (3,)    bool      cpu   3 B",
        "  half      (2,)    bfloat16  cpu   4 B",
        "  ghost     (2, 3)  float32   meta  24 B",
        "  step      int: 7",
        "  config    dict: {'lr': 0.1, 'name': 'run-1'}",
    ]
    assert [value for _, value in b.records.options] == [("module", "layer1"), 0, 1, 2, 3, 4, 5, 6, 7]
    assert b.count.value == "8 entries"


def test_clicking_a_module_closes_and_opens_it_and_summarises_it(state_file, make_browser):
    b = make_browser(state_file, view="tree")
    b.records.value = (("module", "layer1"),)  # as a click on the module's line does
    assert labels_of(b)[0] == "▸ layer1/  2 entries, 16 params, 64 B, float32"
    assert len(b.records.options) == 7 and b.records.value == ()
    assert text_of(b.preview.children[0].value) == "layer1/ 2 entries, 16 params, 64 B, float32"
    assert b.module.path == "layer1"
    b.records.value = (("module", "layer1"),)
    assert len(b.records.options) == 9 and labels_of(b)[0].startswith("▾ layer1/")
    b.select("layer1.bias")
    assert b.records.value == (1,) and isinstance(b.preview.children[0], ArrayPreview) and b.module is None
    assert b.variable.value == "layer1_bias"
    # Closing the module hides the selected entry: it leaves the selection.
    b.toggle("layer1")
    assert b.records.value == () and b.variable.value == ""


def test_the_filter_works_on_the_tree_and_opens_what_matches(tmp_path, make_browser):
    state = {f"model.layers.{i}.{part}.weight": np.full(2, i, np.float32) for i in range(60) for part in ("q", "k")}
    state["model.norm"] = np.ones(4, np.float32)
    path = tmp_path / "layers.pt"
    nbckpt.save(state, path)
    b = make_browser(path, view="tree")
    # More than OPEN_ALL_UP_TO entries: only the top-level modules are open.
    assert labels_of(b) == ["▾ model/     121 entries, 244 params, 976 B, float32",
                            "  ▸ layers/  120 entries, 240 params, 960 B, float32",
                            "    norm     (4,)  float32  cpu  16 B"]
    assert browser_module.OPEN_ALL_UP_TO == 50
    b.toggle("model")
    assert labels_of(b) == ["▸ model/  121 entries, 244 params, 976 B, float32"]
    b.filter.value = "*.1?.q.*"
    lines = labels_of(b)
    assert heads_of(b) == (
        ["▾ model/", "▾ layers/"] + [x for i in range(10, 20) for x in (f"▾ {i}/", "▾ q/", "weight")])
    assert b.count.value == "10 of 121 entries match"
    assert lines[:2] == ["▾ model/          10 entries, 20 params, 80 B, float32",
                         "  ▾ layers/       10 entries, 20 params, 80 B, float32"]
    assert lines[4] == "          weight  (2,)  float32  cpu  8 B"
    b.toggle("model.layers.10")  # closes it while filtering
    assert len(labels_of(b)) == 2 + 30 - 2
    b.sort.value = "name"
    b.filter.value = "norm"
    assert heads_of(b) == ["▾ model/", "norm"]
    b.filter.value = ""
    assert labels_of(b) == ["▸ model/  121 entries, 244 params, 976 B, float32"]  # as the user left it


def test_sorting_the_list_and_the_tree(state_file, make_browser):
    b = make_browser(state_file)
    b.sort.value = "size"
    assert [b.entries[i].name for _, i in b.records.options] == [
        "embed", "layer1.weight", "ghost", "layer1.bias", "half", "flags", "step", "config"]
    b.sort.value = "name"
    assert [b.entries[i].name for _, i in b.records.options] == [
        "config", "embed", "flags", "ghost", "half", "layer1.bias", "layer1.weight", "step"]
    b.view.value = "tree"
    assert heads_of(b) == [
        "config", "embed", "flags", "ghost", "half", "▾ layer1/", "bias", "weight", "step"]
    b.sort.value = "size"
    assert heads_of(b)[:4] == ["embed", "▾ layer1/", "weight", "bias"]
    with pytest.raises(ValueError, match="view must be 'list' or 'tree', not 'grid'"):
        ArchiveBrowser(state_file, view="grid")


def test_value_texts_of_ints_past_pythons_str_limit():
    """A 5000-digit int (Python refuses str() past 4300 digits) previews as its size, never raises."""
    from nbckpt.jupyter.listing import value_preview, value_text

    huge = 10 ** 5000
    assert value_text(huge) == "int: <int of 16610 bits: 0x31e20801036510f3…>"
    assert value_preview({"n": huge, "lr": 0.1}) == "{'n': <int of 16610 bits: 0x31e20801036510f3…>, 'lr': 0.1}"
