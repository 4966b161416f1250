"""The JupyterLab checkpoint viewer in a real browser (headless Chromium, Playwright).

The JupyterLab server of tests/lab_browser.py (its own folders, no token; the viewer's
prebuilt frontend and server extension from this checkout) serves a folder with two
checkpoints, a hostile file and an empty notebook. The test double-clicks a checkpoint in
the file browser, opens modules in the viewer's tree, selects a record and waits for its
statistics and pictures, inserts the loading cell with "Load into notebook" and runs it,
opens the hostile file (an error, and the server keeps answering), opens a DCP folder from its
context menu, and compares the two
checkpoints (the changed records, most changed first). Screenshots go to
``tests/artifacts/``; with ``NBCKPT_UPDATE_DOCS=1`` the best are copied to ``docs/``.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

import nbckpt
from lab_browser import ARTIFACTS, ROOT, TIMEOUT_MS, Steps, get, lab, open_notebook, page, write_notebook  # noqa: F401

pytestmark = pytest.mark.browser

DOCS = ROOT / "docs"


def _model(scale: float) -> dict:
    rng = np.random.default_rng(0)
    layers = {str(i): {"attn": {"weight": rng.normal(size=(32, 32)).astype(np.float32),
                                "bias": np.zeros(32, np.float32)},
                       "mlp": {"weight": rng.normal(size=(64, 32)).astype(np.float32)}} for i in range(20)}
    layers["3"]["mlp"]["weight"] *= scale  # what the "fine-tune" changes most
    layers["7"]["attn"]["bias"] += (scale - 1) * 0.01  # and a little
    return {"model": {"embed": {"weight": rng.normal(size=(500, 32)).astype(np.float16)}, "layers": layers,
                      "norm": {"weight": np.ones(32, np.float32)}},
            "step": 1000 if scale == 1 else 2000, "config": {"lr": 3e-4, "layers": 20}}


def test_checkpoint_viewer_in_jupyterlab(lab, page):
    step = Steps(page, lab)
    started = time.monotonic()
    nbckpt.save(_model(1.0), lab.root / "model.pt")
    nbckpt.save(_model(1.5), lab.root / "tuned.pt")
    shutil.copyfile(ROOT / "tests" / "data" / "attacks" / "g_posix_system.pt", lab.root / "hostile.pt")
    write_notebook(lab.root / "work.ipynb", [""])
    nbckpt.save({"enc": {"w": np.ones((4, 4), np.float32)}, "step": 5}, lab.root / "dcp_step5", format="dcp")

    open_notebook(step, page, lab, "work.ipynb")
    listing = page.locator(".jp-DirListing-content")
    step("double-click model.pt in the file browser", lambda: listing.get_by_text("model.pt", exact=True).dblclick())
    viewer = page.locator(".nbckpt-viewer").last
    step("the viewer opens with the header", lambda: viewer.locator(".nbckpt-viewer-header").get_by_text(
        "62 arrays in 62 storages, 2 other entries").wait_for())
    assert viewer.locator(".nbckpt-viewer-header td").first.inner_text() == "model.pt"  # the path the user knows
    rows = viewer.locator(".nbckpt-viewer-row")
    # More than 50 entries: the top-level modules are open, the rest closed.
    step("the top level is listed", lambda: page.wait_for_function(
        "() => document.querySelectorAll('.nbckpt-viewer-row').length === 6"))
    assert rows.locator(".nbckpt-viewer-name").all_inner_texts() == [
        "model/", "embed/", "layers/", "norm/", "step", "config"]
    assert viewer.locator('.nbckpt-viewer-row[data-path="model.layers"] .nbckpt-viewer-summary').inner_text() == (
        "60 entries, 62.1K params, 242.5 KiB, float32")
    step("expand model.layers", lambda: viewer.locator('.nbckpt-viewer-row[data-path="model.layers"]').click())
    step("expand model.layers.3", lambda: viewer.locator('.nbckpt-viewer-row[data-path="model.layers.3"]').click())
    step("expand model.layers.3.mlp", lambda: viewer.locator(
        '.nbckpt-viewer-row[data-path="model.layers.3.mlp"]').click())
    record = viewer.locator('.nbckpt-viewer-row[data-path="model.layers.3.mlp.weight"]')
    step("select model.layers.3.mlp.weight", lambda: record.click())
    details = viewer.locator(".nbckpt-viewer-details")
    step("the statistics appear", lambda: details.get_by_text("(64, 32) float32 on cpu, 2,048 elements, 8.0 KiB")
         .wait_for())
    for row in ("min", "max", "mean", "std", "NaN", "Inf", "zeros"):
        assert details.locator("th", has_text=row).count() >= 1, row
    step("the histogram and the heat map are drawn", lambda: page.wait_for_function(
        """() => { const images = document.querySelectorAll('.nbckpt-viewer-pictures img');
                   return images.length === 2 && [...images].every(i => i.complete && i.naturalWidth > 0); }"""))
    step("filter the tree", lambda: viewer.locator(".nbckpt-viewer-filter").fill("*.7.attn.*"))
    step("the filter keeps the matches and their modules", lambda: page.wait_for_function(
        "() => document.querySelectorAll('.nbckpt-viewer-row').length === 6"))
    assert viewer.locator(".nbckpt-viewer-count").inner_text() == "2 of 64 entries match"
    page.screenshot(path=str(ARTIFACTS / "viewer-filter.png"))
    step("clear the filter", lambda: viewer.locator(".nbckpt-viewer-filter").fill(""))
    page.screenshot(path=str(ARTIFACTS / "viewer.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 1080})

    step("Load into notebook", lambda: details.locator(".nbckpt-viewer-load-button").click())
    # The notebook comes to the front; the viewer's status line (behind it) says where the cell went.
    step("the viewer says where the cell went", lambda: details.get_by_text(
        "Inserted a cell in work.ipynb: run it to load model.layers.3.mlp.weight.").wait_for(state="attached"))
    cell = page.locator(".jp-NotebookPanel .jp-Cell").first
    code = ('import nbckpt\n\nwith nbckpt.open("model.pt", map_location="cpu") as checkpoint:\n'
            '    model_layers_3_mlp_weight = checkpoint["model.layers.3.mlp.weight"]\nmodel_layers_3_mlp_weight')
    step("the notebook holds the loading cell", lambda: page.wait_for_function(
        """(code) => { const panel = window.jupyterapp.shell.currentWidget;
                       return panel && panel.content && panel.content.widgets &&
                              panel.content.widgets[0].model.sharedModel.getSource() === code; }""", arg=code))
    step("run the cell", lambda: page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell')"))
    step("the array is bound and shown", lambda: cell.locator(".jp-OutputArea-output").get_by_text(
        "dtype=float32)").wait_for())
    assert cell.locator(".jp-OutputArea-output").inner_text().startswith("array([[")
    page.screenshot(path=str(ARTIFACTS / "viewer-load.png"))

    step("double-click the hostile file", lambda: listing.get_by_text("hostile.pt", exact=True).dblclick())
    error = page.locator(".nbckpt-viewer-error:visible")
    step("the viewer shows the refusal", lambda: error.get_by_text("UnpicklingError").wait_for())
    assert "posix.system" in error.inner_text()
    assert not os.path.exists("/tmp/nbckpt-canary-g_posix_system")
    assert json.loads(get(f"{lab.url}/api/status"))  # the server keeps answering
    assert len(json.loads(get(f"{lab.url}/nbckpt/listing?path=model.pt"))["entries"]) == 64
    page.screenshot(path=str(ARTIFACTS / "viewer-hostile.png"))

    step("open the context menu of the DCP folder", lambda: listing.get_by_text("dcp_step5", exact=True).click(
        button="right"))
    step("Open in checkpoint viewer", lambda: page.locator(".lm-Menu-item", has_text="Open in checkpoint viewer")
         .click())
    step("the folder's viewer lists its entries", lambda: page.locator(".nbckpt-viewer:visible .nbckpt-viewer-header")
         .get_by_text("dcp_step5", exact=True).wait_for())
    assert page.locator(".nbckpt-viewer:visible .nbckpt-viewer-name").all_inner_texts() == ["enc/", "w", "step"]

    step("select the two checkpoints", lambda: (
        listing.get_by_text("model.pt", exact=True).click(),
        listing.get_by_text("tuned.pt", exact=True).click(modifiers=["Control"])))
    step("open the context menu", lambda: listing.get_by_text("tuned.pt", exact=True).click(button="right"))
    step("Compare checkpoints (diff)", lambda: page.locator(".lm-Menu-item", has_text="Compare checkpoints (diff)")
         .click())
    diff_rows = page.locator(".nbckpt-diff-row")
    step("the diff lists the changed records", lambda: diff_rows.first.wait_for())
    assert [name.strip() for name in page.locator(".nbckpt-diff-row .nbckpt-diff-name").all_inner_texts()] == [
        "model.layers.7.attn.bias", "model.layers.3.mlp.weight"]
    assert page.locator(".nbckpt-diff-summary").inner_text() == (
        "model.pt vs tuned.pt: 60 arrays equal, 2 with other values; 1 other value equal, 1 differ")
    page.screenshot(path=str(ARTIFACTS / "viewer-diff.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 330})
    if os.environ.get("NBCKPT_UPDATE_DOCS"):
        DOCS.mkdir(exist_ok=True)
        for name in ("viewer.png", "viewer-diff.png"):
            shutil.copyfile(ARTIFACTS / name, DOCS / name)
    lab.remember_children()
    assert time.monotonic() - started < 150, "the viewer steps took longer than 150 s"
