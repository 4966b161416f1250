"""The archive browser rendered by JupyterLab in a real browser (headless Chromium, Playwright).

A JupyterLab server is started on 127.0.0.1 (a free port, no token, its own config, data,
runtime, settings and workspace folders; the virtual environment's lab extensions, among
them ipywidgets' manager, stay visible), a notebook that saves a checkpoint and displays
``ArchiveBrowser`` on it is opened in Debian's Chromium and run; the test waits until the
widget is rendered, filters and selects a record, waits for the preview's statistics and
pictures, loads the record (a name clash first, then with "overwrite"), and checks the
status line. Screenshots go to ``tests/artifacts/``; with ``NBCKPT_UPDATE_DOCS=1`` the
widget's screenshots are also copied to ``docs/browser.png`` and ``docs/browser-tree.png`` (the
README's pictures). The tree view is switched on and a module closed at the end.

Every process started here (server, kernel, browser) is stopped at the end, also on failure.
Without Chromium the test is skipped, except in CI (``CI`` set), where it must run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DOCS_PICTURE = ROOT / "docs" / "browser.png"
TIMEOUT_MS = 60_000

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


def _requirements() -> None:
    """Skip without the browser or the libraries, except in CI, where all must be there."""
    missing = []
    if not (CHROMIUM.exists() or shutil.which("chromium")):
        missing.append("Debian's chromium (/usr/bin/chromium; `apt-get install chromium`, as .ci/run does)")
    for module in ("playwright", "jupyterlab", "psutil"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the Python package {module} (pip install -e '.[test]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail("the browser test must run in CI but lacks " + "; ".join(missing))
        pytest.skip("needs " + "; ".join(missing))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
        return response.read()


def _write_notebook(path: Path) -> None:
    notebook = {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "language_info": {"name": "python"}},
        "cells": [{"cell_type": "code", "id": "browse", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": NOTEBOOK_CODE.splitlines(keepends=True)}],
    }
    path.write_text(json.dumps(notebook, indent=1))


def _enable_viewer(home: Path) -> None:
    """The checkpoint viewer from this checkout, whether or not the package's data files are installed:
    the prebuilt frontend linked into the server's data folder, the server extension enabled in its config."""
    from nbckpt.labextension import PREBUILT

    extensions = home / "data" / "labextensions"
    extensions.mkdir(parents=True)
    (extensions / "nbckpt").symlink_to(PREBUILT, target_is_directory=True)
    config = home / "config" / "jupyter_server_config.d"
    config.mkdir(parents=True)
    shutil.copyfile(ROOT / "labextension" / "jupyter_server_config.d" / "nbckpt.json", config / "nbckpt.json")


class LabServer:
    """A JupyterLab server of this test's own; :meth:`stop` ends it and every kernel it started."""

    def __init__(self, home: Path) -> None:
        import psutil

        self.root = home / "notebooks"
        self.root.mkdir()
        settings = home / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        # No news and update checks: nothing goes out, and no toast covers the screenshot.
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ,
                   JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
                   JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
                   PYTHONUNBUFFERED="1")
        env.pop("JUPYTER_PATH", None)  # the venv's share/jupyter (lab extensions, kernel) is found from sys.prefix
        _enable_viewer(home)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                   "--IdentityProvider.token=", "--ServerApp.password=",
                   f"--ServerApp.root_dir={self.root}", "--ServerApp.terminals_enabled=False",
                   "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.log_path = ARTIFACTS / "jupyterlab.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=self.root, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._psutil = psutil
        self._children: dict[int, object] = {}

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                json.loads(_get(f"{self.url}/api/status", timeout=2))
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.25)
        raise AssertionError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def remember_children(self) -> None:
        """Note the server's child processes (kernels run in sessions of their own)."""
        try:
            for child in self._psutil.Process(self.process.pid).children(recursive=True):
                self._children[child.pid] = child
        except self._psutil.NoSuchProcess:
            pass

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Shut every kernel down, stop the server, and kill whatever of theirs is left."""
        self.remember_children()
        try:
            for kernel in json.loads(_get(f"{self.url}/api/kernels")):
                request = urllib.request.Request(f"{self.url}/api/kernels/{kernel['id']}", method="DELETE")
                urllib.request.urlopen(request, timeout=10).close()  # noqa: S310 - loopback only
        except (urllib.error.URLError, OSError, ValueError):
            pass  # the server is gone already: the processes are killed below
        if self.process.poll() is None:
            self.process.terminate()  # Jupyter stops on SIGTERM, shutting its kernels down
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for child in self._children.values():
            try:
                child.terminate()
                child.wait(timeout=10)
            except self._psutil.NoSuchProcess:
                pass
            except self._psutil.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
        self._log.close()
        alive = [pid for pid, child in self._children.items() if child.is_running() and
                 child.status() != self._psutil.STATUS_ZOMBIE]
        assert not alive, f"processes left running: {alive}"


@pytest.fixture
def lab(tmp_path):
    _requirements()
    ARTIFACTS.mkdir(exist_ok=True)
    server = LabServer(tmp_path)
    try:
        server.wait_ready()
        _write_notebook(server.root / "demo.ipynb")
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(lab):
    from playwright.sync_api import sync_playwright

    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1500}, device_scale_factor=1)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.console_lines = []
            page.on("console", lambda message: page.console_lines.append(f"{message.type}: {message.text}"))
            yield page
        finally:
            browser.close()
    lab.remember_children()


class Steps:
    """Runs the test's steps; on failure saves a screenshot and says which step failed and why."""

    def __init__(self, page, lab) -> None:
        self.page, self.lab = page, lab

    def __call__(self, what: str, action):
        try:
            return action()
        except Exception as err:
            shot = ARTIFACTS / "failure.png"
            try:
                self.page.screenshot(path=str(shot), full_page=True)
            except Exception:  # noqa: BLE001 - the page may be gone; report the first error
                shot = None
            console = "\n".join(self.page.console_lines[-20:])
            raise AssertionError(f"step failed: {what}: {err}\nscreenshot: {shot}\nbrowser console (last lines):\n"
                                 f"{console}\nJupyterLab log (last lines):\n{self.lab.log_tail()}") from err


def _kernel_idle(page) -> None:
    page.wait_for_function(
        """() => {
            const app = window.jupyterapp;
            const panel = app && app.shell.currentWidget;
            const kernel = panel && panel.sessionContext && panel.sessionContext.session
                && panel.sessionContext.session.kernel;
            return !!kernel && kernel.status === 'idle';
        }""", timeout=TIMEOUT_MS)


def test_archive_browser_in_jupyterlab(lab, page):
    step = Steps(page, lab)
    started = time.monotonic()
    browser_widget = page.locator(".nbckpt-browser")
    status = page.locator(".nbckpt-status")

    step("open the notebook", lambda: page.goto(f"{lab.url}/lab/tree/demo.ipynb"))
    step("wait for the notebook and its kernel", lambda: (
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="visible"), _kernel_idle(page)))
    lab.remember_children()
    # The notebook gets the whole width (the widget's pictures side by side in the screenshot).
    step("close the left sidebar", lambda: page.evaluate(
        "window.jupyterapp.commands.execute('application:toggle-left-area')"))
    step("run all cells", lambda: page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')"))
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
