"""The archive browser rendered by JupyterLab in a real browser (headless Chromium, Playwright).

A JupyterLab server of the test's own and Debian's Chromium are started by the fixtures of
``tests/lab_browser.py``; a notebook that saves a checkpoint and displays ``ArchiveBrowser``
on it is opened and run; the test waits until the
widget is rendered, filters and selects a record, waits for the preview's statistics and
pictures, loads the record (a name clash first, then with "overwrite"), and checks the
status line. Screenshots go to ``tests/artifacts/``; with ``NBCKPT_UPDATE_DOCS=1`` the
widget's screenshots are also copied to ``docs/browser.png`` and ``docs/browser-tree.png`` (the
README's pictures). The tree view is switched on and a module closed at the end.

Every process started (server, kernel, browser) is stopped at the end, also on failure.
Without Chromium the test is skipped, except in CI (``CI`` set), where it must run.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from lab_browser import ARTIFACTS, ROOT, Steps, lab, open_notebook, page, run_all_cells, write_notebook  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

DOCS_PICTURE = ROOT / "docs" / "browser.png"

NOTEBOOK_CODE = """\
import numpy as np
import nbckpt
from nbckpt.jupyter import ArchiveBrowser

rng = np.random.default_rng(0)
state = {
    "encoder": {f"{i}.{part}": (rng.normal(size=(64, 32)) if part == "weight" else rng.normal(size=32) * 0.1)
                .astype(np.float32) for i in range(3) for part in ("weight", "bias")},
    "embedding": rng.normal(size=(1000, 32)).astype(np.float16),
    "mask": rng.random((16, 16)) > 0.3,
    "step": 1200,
    "config": {"lr": 3e-4, "betas": (0.9, 0.999), "run": "demo"},
}
nbckpt.save(state, "demo.pt")
ArchiveBrowser("demo.pt")
"""


def test_archive_browser_in_jupyterlab(lab, page):
    step = Steps(page, lab)
    started = time.monotonic()
    browser_widget = page.locator(".nbckpt-browser")
    status = page.locator(".nbckpt-status")

    write_notebook(lab.root / "demo.ipynb", [NOTEBOOK_CODE])
    open_notebook(step, page, lab, "demo.ipynb")
    run_all_cells(step, page)
    step("wait until the widget is rendered", lambda: page.wait_for_selector(".nbckpt-browser .nbckpt-records select"))
    header = browser_widget.locator(".nbckpt-header")
    step("the header names the file and counts the entries", lambda: (
        header.get_by_text("demo.pt").wait_for(),
        header.get_by_text("8 arrays in 8 storages, 2 other entries").wait_for()))
    options = page.locator(".nbckpt-records option")
    assert options.count() == 10
    page.screenshot(path=str(ARTIFACTS / "01-rendered.png"))

    step("filter the list", lambda: page.locator(".nbckpt-filter input").fill("ENCODER.1"))
    step("the list shows the matching records", lambda: page.wait_for_function(
        "() => document.querySelectorAll('.nbckpt-records option').length === 2"))
    label = step("find the record", lambda: page.locator(
        '.nbckpt-records option[data-value^="encoder.1.weight%20"]').get_attribute("value"))
    step("select the record", lambda: page.locator(".nbckpt-records select").select_option(value=label))
    preview = browser_widget.locator(".nbckpt-preview")
    step("the preview shows the record", lambda: preview.get_by_text(
        "(64, 32) float32 on cpu, 2,048 elements, 8.0 KiB").wait_for())
    for row in ("min", "max", "mean", "std", "NaN", "Inf", "zeros"):
        step(f"the statistics show {row}", lambda row=row: preview.locator("th", has_text=row).first.wait_for())
    step("the histogram and the heat map are drawn", lambda: page.wait_for_function(
        """() => { const images = document.querySelectorAll('.nbckpt-preview img');
                   return images.length === 2 && [...images].every(i => i.complete && i.naturalWidth > 0); }"""))
    assert preview.locator("code").inner_text().startswith("[")
    page.screenshot(path=str(ARTIFACTS / "02-preview.png"))

    step("choose the device", lambda: page.locator(".nbckpt-device select").select_option(label="cpu"))
    step("name the variable", lambda: page.locator(".nbckpt-variable input").fill("w_enc"))
    step("click Load", lambda: page.locator(".nbckpt-load").click())
    loaded = "loaded encoder.1.weight as w_enc: ndarray (64, 32) float32, cpu"
    step("the status line says what was loaded", lambda: status.get_by_text(loaded).wait_for())

    step("click Load again", lambda: page.locator(".nbckpt-load").click())
    clash = 'a variable named w_enc exists already: tick "overwrite" to replace it, or choose another name'
    step("the status line refuses the name clash", lambda: status.get_by_text(clash).wait_for())
    page.screenshot(path=str(ARTIFACTS / "03-name-clash.png"))
    step("tick overwrite", lambda: page.locator(".nbckpt-overwrite input").check())
    step("click Load with overwrite", lambda: page.locator(".nbckpt-load").click())
    step("the status line says it loaded again", lambda: status.get_by_text(loaded).wait_for())
    step("clear the filter", lambda: page.locator(".nbckpt-filter input").fill(""))
    step("the whole list is back, the record still selected", lambda: page.wait_for_function(
        """() => { const select = document.querySelector('.nbckpt-records select');
                   return select.options.length === 10 && select.selectedOptions.length === 1
                       && select.selectedOptions[0].value.startsWith('encoder.1.weight '); }"""))
    page.screenshot(path=str(ARTIFACTS / "04-loaded.png"), full_page=True)
    browser_widget.screenshot(path=str(ARTIFACTS / "browser.png"))

    step("switch to the tree view", lambda: page.locator(".nbckpt-view button", has_text="tree").click())
    step("the tree groups the entries into modules", lambda: page.wait_for_function(
        """() => { const labels = [...document.querySelectorAll('.nbckpt-records option')]
                       .map(o => o.textContent.replace(/\u00a0/g, ' '));  // the list keeps spaces as nbsp
                   return labels.length === 14 && labels[0].startsWith('▾ encoder/')
                       && labels[1].trim().startsWith('▾ 0/'); }"""))
    browser_widget.screenshot(path=str(ARTIFACTS / "browser-tree.png"))
    step("close the encoder module", lambda: page.locator(".nbckpt-records select").select_option(index=0))
    step("the module closes", lambda: page.wait_for_function(
        "() => document.querySelectorAll('.nbckpt-records option').length === 5"))
    if os.environ.get("NBCKPT_UPDATE_DOCS"):
        DOCS_PICTURE.parent.mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / "browser.png", DOCS_PICTURE)
        shutil.copyfile(ARTIFACTS / "browser-tree.png", DOCS_PICTURE.with_name("browser-tree.png"))
    lab.remember_children()
    assert time.monotonic() - started < 90, "the browser steps took longer than 90 s"
