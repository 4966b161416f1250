"""The tree model of dotted names (nbckpt/jupyter/tree.py) and its labels (listing.tree_labels)."""

from __future__ import annotations

import json
import time

import pytest

from nbckpt.jupyter import listing, tree
from nbckpt.jupyter.tree import ALL, TreeItem, build_tree, module_paths, visible_rows

ITEMS = [
    TreeItem("model.embed.weight", 1000, 4000, "float32"),
    TreeItem("model.layers.0.attn.weight", 16, 32, "bfloat16"),
    TreeItem("model.layers.0.attn.bias", 4, 8, "bfloat16"),
    TreeItem("model.layers.10.attn.weight", 16, 64, "float32"),
    TreeItem("model.layers.2.attn.weight", 16, 64, "float32"),
    TreeItem("lm_head.weight", 500, 2000, "float32"),
    TreeItem("step", 0, 0, ""),
]


def paths(rows):
    return [("  " * row.depth) + row.node.path + ("/" if row.node.is_module else "") for row in rows]


def test_modules_total_their_entries():
    root = build_tree(ITEMS)
    assert [n.path for n in root.children] == ["model", "lm_head", "step"]
    model = root.child("model")
    assert (model.count, model.params, model.nbytes, model.first) == (5, 1052, 4168, 0)
    assert model.dtypes == {"float32": 1032, "bfloat16": 20}
    layers = model.child("layers")
    assert [c.name for c in layers.children] == ["0", "10", "2"]  # file order
    assert (layers.count, layers.params, layers.nbytes, layers.first) == (4, 52, 168, 1)
    step = root.child("step")
    assert not step.is_module and step.entry == 6 and step.dtypes == {} and step.count == 1
    assert (root.count, root.params, root.nbytes) == (7, 1552, 6168)
    with pytest.raises(KeyError, match="model has no child 'nope' \\(children: embed, layers\\)"):
        model.child("nope")


def test_rows_follow_what_is_expanded():
    root = build_tree(ITEMS)
    assert paths(visible_rows(root)) == ["model/", "lm_head/", "step"]
    assert paths(visible_rows(root, {"model", "model.layers"})) == [
        "model/", "  model.embed/", "  model.layers/", "    model.layers.0/", "    model.layers.10/",
        "    model.layers.2/", "lm_head/", "step"]
    rows = visible_rows(root, {"model"})
    assert [(r.depth, r.expanded) for r in rows] == [(0, True), (1, False), (1, False), (0, False), (0, False)]
    # A closed parent hides an open child.
    assert paths(visible_rows(root, {"model.layers"})) == ["model/", "lm_head/", "step"]
    assert len(visible_rows(root, ALL)) == 7 + 10  # entries + modules
    assert module_paths(root, max_depth=1) == {"model", "lm_head"}
    assert len(module_paths(root)) == 10


def test_sorting_by_order_name_and_size():
    root = build_tree(ITEMS)
    opened = {"model", "model.layers"}
    assert paths(visible_rows(root, opened, "name"))[:6] == [
        "lm_head/", "model/", "  model.embed/", "  model.layers/", "    model.layers.0/", "    model.layers.2/"]
    assert paths(visible_rows(root, opened, "name"))[6:] == ["    model.layers.10/", "step"]
    by_size = paths(visible_rows(root, opened, "size"))
    # Equal sizes keep the file's order (layers.10 comes before layers.2 in the file).
    assert by_size == ["model/", "  model.embed/", "  model.layers/", "    model.layers.10/",
                       "    model.layers.2/", "    model.layers.0/", "lm_head/", "step"]
    with pytest.raises(ValueError, match="sort must be one of order, name, size, not 'big'"):
        visible_rows(root, sort="big")


def test_a_filtered_tree_holds_only_the_matches_and_their_totals():
    matching = listing.EntryFilter(item.name for item in ITEMS).matching("*.weight")
    root = build_tree(ITEMS, only=matching)
    assert paths(visible_rows(root, module_paths(root))) == [
        "model/", "  model.embed/", "    model.embed.weight", "  model.layers/", "    model.layers.0/",
        "      model.layers.0.attn/", "        model.layers.0.attn.weight", "    model.layers.10/",
        "      model.layers.10.attn/", "        model.layers.10.attn.weight", "    model.layers.2/",
        "      model.layers.2.attn/", "        model.layers.2.attn.weight", "lm_head/", "  lm_head.weight"]
    assert root.child("model").child("layers").child("0").params == 16  # the bias is left out


def test_a_name_that_is_also_a_module_and_odd_names():
    root = build_tree([TreeItem("a.b", 1, 4, "int32"), TreeItem("a", 2, 8, "int32"), TreeItem("", 3, 12, "int8"),
                       TreeItem("x..y", 1, 1, "uint8")])
    assert [(n.name, n.path, n.is_module) for n in root.children] == [
        ("a", "a", True), ("a", "a", False), ("(root)", "", False), ("x", "x", True)]
    assert paths(visible_rows(root, ALL)) == ["a/", "  a.b", "a", "", "x/", "  x./", "    x..y"]
    assert root.child("a").is_module and root.child("a").count == 1


def test_deep_names_need_no_recursion():
    name = ".".join(f"m{i}" for i in range(3000))
    root = build_tree([TreeItem(name, 1, 1, "uint8")])
    assert len(visible_rows(root, ALL)) == 3000
    assert json.loads(json.dumps(build_tree([TreeItem("a.b", 1, 4, "int32")]).to_json())) == {
        "name": "", "path": "", "count": 1, "params": 1, "bytes": 4, "dtypes": {"int32": 1}, "first": 0,
        "children": [{"name": "a", "path": "a", "count": 1, "params": 1, "bytes": 4, "dtypes": {"int32": 1},
                      "first": 0, "children": [{"name": "b", "path": "a.b", "entry": 0, "params": 1, "bytes": 4,
                                                "dtype": "int32"}]}]}


def test_labels_of_a_tree_view():
    root = build_tree(ITEMS)
    columns = [f"col{i}" for i in range(len(ITEMS))]
    labels = listing.tree_labels(visible_rows(root, {"model", "model.embed"}), columns)
    assert labels == [
        "▾ model/      5 entries, 1.05K params, 4.1 KiB, float32 bfloat16",
        "  ▾ embed/    1 entry, 1K params, 3.9 KiB, float32",
        "      weight  col0",
        "  ▸ layers/   4 entries, 52 params, 168 B, float32 bfloat16",
        "▸ lm_head/    1 entry, 500 params, 2.0 KiB, float32",
        "  step        col6",
    ]


def test_100k_records_build_and_filter(capsys):
    """100,000 records: the tree is built, opened, sorted and filtered (times printed, not asserted)."""
    items = [TreeItem(f"model.layers.{i // 100}.mlp{i % 100 // 10}.w{i % 10}", 4096, 16384, "float32")
             for i in range(100_000)]
    started = time.perf_counter()
    root = build_tree(items)
    built = time.perf_counter()
    rows = visible_rows(root, module_paths(root, max_depth=2), "name")
    shown = time.perf_counter()
    matching = listing.EntryFilter(item.name for item in items).matching("*.layers.99*")
    filtered = build_tree(items, only=matching)
    filtered_rows = visible_rows(filtered, module_paths(filtered))
    done = time.perf_counter()
    assert root.count == 100_000 and root.params == 409_600_000
    assert len(rows) == 2 + 1000 and rows[-1].node.path == "model.layers.999"
    assert len(matching) == 1100 and filtered.count == 1100
    assert len(filtered_rows) == 1100 + 11 * 10 + 11 + 2
    with capsys.disabled():
        print(f"\n100k records: build {built - started:.2f} s, rows {shown - built:.2f} s, "
              f"filter + subtree {done - shown:.2f} s")
