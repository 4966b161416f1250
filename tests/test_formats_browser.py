"""The browser widget on a sharded checkpoint, a safetensors file and a legacy GPU-saved file,
rendered by JupyterLab in headless Chromium (the fixtures of ``lab_browser.py``).

With ``NBCKPT_UPDATE_DOCS=1`` the sharded checkpoint's widget is saved to
``docs/browser-sharded.png`` (the README's picture).
"""

from __future__ import annotations

import os
import shutil

import pytest

from lab_browser import ARTIFACTS, ROOT, Steps, lab, open_notebook, page, run_all_cells, write_notebook  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

CELLS = [
    """\
import io, json, numpy as np, torch, nbckpt
from safetensors.numpy import save_file
from nbckpt.jupyter import ArchiveBrowser

rng = np.random.default_rng(0)
weight_map = {}
for i in range(3):
    shard = f"model-0000{i + 1}-of-00003.safetensors"
    layer = {f"model.layers.{i}.mlp.weight": rng.normal(size=(48, 32)).astype(np.float32),
             f"model.layers.{i}.mlp.bias": rng.normal(size=48).astype(np.float32)}
    save_file(layer, shard)
    weight_map.update(dict.fromkeys(layer, shard))
json.dump({"metadata": {"total_size": 19_200}, "weight_map": weight_map}, open("model.safetensors.index.json", "w"))
ArchiveBrowser("model.safetensors.index.json")
""",
    """\
save_file({"embed": rng.normal(size=(100, 16)).astype(np.float16)}, "embed.safetensors", metadata={"source": "demo"})
ArchiveBrowser("embed.safetensors")
""",
    """\
buf = io.BytesIO()
torch.save({"w": torch.ones(4, 4)}, buf, _use_new_zipfile_serialization=False)
open("gpu_legacy.pt", "wb").write(buf.getvalue().replace(b"X\\x03\\x00\\x00\\x00cpu", b"X\\x06\\x00\\x00\\x00cuda:1", 1))
ArchiveBrowser("gpu_legacy.pt")
""",
]


def test_browser_shows_sharded_safetensors_and_legacy_gpu_files(lab, page):
    step = Steps(page, lab)
    write_notebook(lab.root / "formats.ipynb", CELLS)
    open_notebook(step, page, lab, "formats.ipynb")
    run_all_cells(step, page)
    step("three browsers are rendered", lambda: page.wait_for_function(
        "() => document.querySelectorAll('.nbckpt-browser .nbckpt-records select').length === 3"))
    browsers = page.locator(".nbckpt-browser")
    sharded, single, legacy = browsers.nth(0), browsers.nth(1), browsers.nth(2)
    step("the sharded header", lambda: sharded.locator(".nbckpt-header").get_by_text("sharded (3 shards)").wait_for())
    step("the safetensors header", lambda: single.locator(".nbckpt-header").get_by_text("safetensors").first.wait_for())
    step("the legacy header", lambda: legacy.locator(".nbckpt-header").get_by_text(
        "legacy stream (torch < 1.6)").wait_for())
    assert "cuda:1" in legacy.locator(".nbckpt-records select").inner_text()
    assert sharded.locator(".nbckpt-records option").count() == 6
    label = step("find a record", lambda: sharded.locator(
        '.nbckpt-records option[data-value^="model.layers.1.mlp.weight%20"]').get_attribute("value"))
    step("select it", lambda: sharded.locator(".nbckpt-records select").select_option(value=label))
    step("its preview", lambda: sharded.locator(".nbckpt-preview").get_by_text(
        "(48, 32) float32 on cpu, 1,536 elements, 6.0 KiB").wait_for())
    step("the pictures are drawn", lambda: page.wait_for_function(
        """() => { const images = document.querySelectorAll('.nbckpt-browser:first-of-type .nbckpt-preview img');
                   return images.length >= 1 && [...images].every(i => i.complete && i.naturalWidth > 0); }"""))
    ARTIFACTS.mkdir(exist_ok=True)
    sharded.screenshot(path=str(ARTIFACTS / "browser-sharded.png"))
    if os.environ.get("NBCKPT_UPDATE_DOCS"):
        shutil.copy(ARTIFACTS / "browser-sharded.png", ROOT / "docs" / "browser-sharded.png")
