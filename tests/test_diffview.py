"""The visual diff: difftable's rows and order (pure), DiffBrowser (real ipywidgets, no browser),
and ``%ckpt diff A B --widget`` in a real IPython shell."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

import nbckpt
from nbckpt.jupyter import DiffBrowser, difftable
from test_magics import ipython, run, shell  # noqa: F401 - the real shell's fixtures


def text_of(html_text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", html_text))).strip()


BASE = {
    "embed": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8),
    "layers": {str(i): {"weight": np.full((4, 4), 1.0 + i, np.float32), "bias": np.zeros(4, np.float32)}
               for i in range(3)},
    "counts": np.arange(6, dtype=np.int64),
    "old_head": np.ones(3, np.float32),
    "norm": np.ones(4, np.float32),
    "step": 100,
    "config": {"lr": 0.1},
}


def tuned():
    state = {"embed": BASE["embed"].copy(), "layers": {k: dict(v) for k, v in BASE["layers"].items()},
             "counts": BASE["counts"].copy(), "norm": BASE["norm"].astype(np.float16),
             "new_head": np.zeros((2, 3), np.float32), "step": 200, "config": {"lr": 0.1}}
    state["embed"][0, 0] += 1e-3  # a tiny change: max rel 1e-3 / 1
    state["layers"]["1"] = {"weight": BASE["layers"]["1"]["weight"] * 1.5, "bias": BASE["layers"]["1"]["bias"]}
    state["layers"]["2"] = {"weight": BASE["layers"]["2"]["weight"].copy(), "bias": BASE["layers"]["2"]["bias"] + 1}
    state["counts"][2] = 7
    return state


@pytest.fixture
def pair(tmp_path):
    a, b = tmp_path / "base.pt", tmp_path / "tuned.pt"
    nbckpt.save(BASE, a)
    nbckpt.save(tuned(), b)
    return a, b


EXPECTED_ORDER = [
    ("old_head", "only in A"), ("new_head", "only in B"), ("norm", "dtype"),
    ("layers.2.bias", "values"),    # 0 -> 1: relative change 1
    ("counts", "values"),           # 2 -> 7: 5 / 7
    ("layers.1.weight", "values"),  # 2 -> 3: 1 / 3
    ("embed", "values"),            # about 1e-3
]


def test_rows_are_most_changed_first(pair):
    rows = difftable.diff_rows(nbckpt.diff(*pair))
    assert [(row.name, row.change) for row in rows] == EXPECTED_ORDER
    by_name = {row.name: row for row in rows}
    assert by_name["old_head"].a == "(3,) float32, 12 B" and by_name["old_head"].b == ""
    assert by_name["norm"].a == "(4,) float32, 16 B" and by_name["norm"].b == "(4,) float16, 8 B"
    assert [row.bar for row in rows[:3]] == [1.0, 1.0, 1.0]
    assert by_name["layers.2.bias"].relative == 1.0 and by_name["layers.2.bias"].bar == 1.0
    assert by_name["layers.2.bias"].fraction == 1.0
    weight = by_name["layers.1.weight"]
    assert weight.relative == pytest.approx(1 / 3) and weight.absolute == 1.0 and weight.fraction == 1.0
    assert weight.bar == pytest.approx(np.log10(1 / 3 / 1e-6) / 6)
    counts = by_name["counts"]
    assert counts.absolute == 5 and isinstance(counts.absolute, int) and counts.fraction == 1 / 6
    embed = by_name["embed"]
    assert embed.relative == pytest.approx(1e-3 / (1 + 1e-3), rel=1e-3) and embed.fraction == 1 / 64
    assert embed.bar == pytest.approx(0.5, abs=1e-3)
    assert difftable.row_json(counts) == {"name": "counts", "change": "values", "a": "(6,) int64, 48 B",
                                          "b": "(6,) int64, 48 B", "relative": pytest.approx(5 / 7),
                                          "absolute": 5, "fraction": 1 / 6, "bar": counts.bar, "note": ""}


def test_the_table_draws_bars_and_escapes_names(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    nbckpt.save({"<b>x</b>": np.ones(2)}, a)
    nbckpt.save({"<b>x</b>": np.array([1.0, 1.1])}, b)
    table = difftable.rows_html(difftable.diff_rows(nbckpt.diff(a, b)))
    assert "<code>&lt;b&gt;x&lt;/b&gt;</code>" in table and "<b>x</b>" not in table
    assert re.search(r"width:(\d+\.\d)%;background:#1565c0", table).group(1) == "82.6"  # log10(0.0909/1e-6)/6
    assert text_of(table) == ("name change A B relative change (log scale) max rel max abs differing "
                              "<b>x</b> values (2,) float64, 16 B (2,) float64, 16 B 0.0909 0.1 50%")


def test_diff_browser_lists_filters_and_shows_other_entries(pair):
    view = DiffBrowser(*pair)
    try:
        assert [(row.name, row.change) for row in view.rows] == EXPECTED_ORDER
        assert text_of(view.header.value) == (
            f"{pair[0]} vs {pair[1]}: 4 arrays equal, 4 with other values, 1 only in A, 1 with another dtype, "
            f"1 only in B; 1 other value equal, 1 differ")
        assert view.count.value == "7 arrays differ"
        names = re.findall(r"<code>([^<]*)</code>", view.table.value)
        assert names == [name for name, _ in EXPECTED_ORDER]
        assert text_of(view.values.value) == "other entries that differ name change A B step value int: 100 int: 200"
        view.filter.value = "LAYERS"
        assert re.findall(r"<code>([^<]*)</code>", view.table.value) == ["layers.2.bias", "layers.1.weight"]
        assert view.count.value == "2 of 7 differing arrays match"
        view.filter.value = "nothing"
        assert view.table.value == "<i>no differing array matches the filter</i>"
        assert repr(view) == f"<DiffBrowser of {pair[0]} vs {pair[1]}: 7 arrays differ>"
        assert "nbckpt-diff" in view.get_state()["_dom_classes"]
    finally:
        view.close()


def test_diff_browser_of_identical_files_and_of_a_report(pair):
    same = DiffBrowser(pair[0], pair[0])
    assert same.rows == [] and same.count.value == "0 arrays differ"
    assert same.table.value == "<i>no array differs</i>" and same.values.value == ""
    report = nbckpt.diff(*pair)
    assert DiffBrowser(report).report is report
    with pytest.raises(TypeError, match="DiffBrowser takes two checkpoints, or one nbckpt.diff report; got str"):
        DiffBrowser("a.pt")


def test_magic_diff_widget_displays_the_diff_browser(shell, pair):
    captured = run(shell, f"diff {pair[0]} {pair[1]} --widget")
    [output] = captured.outputs
    assert output.data["text/plain"].startswith(f"<DiffBrowser of {str(pair[0])[:40]}")  # ipywidgets cuts it short
    assert "application/vnd.jupyter.widget-view+json" in output.data
    plain = run(shell, f"diff {pair[0]} {pair[1]}")
    assert "application/vnd.jupyter.widget-view+json" not in plain.outputs[0].data
