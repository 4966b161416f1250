"""Browser tests' shared start-up: a JupyterLab server of their own and headless Chromium.

Used by tests/test_browser_ui.py (the archive browser widget), tests/test_formats_browser.py
(the widget on other formats) and tests/test_viewer_ui.py (the JupyterLab viewer); import the
fixtures from here (``from lab_browser import lab, page``), as gpu_helpers' are imported.

- :class:`LabServer`: JupyterLab on 127.0.0.1 (a free port, no token, its own config, data,
  runtime, settings and workspace folders; the virtual environment's lab extensions, among
  them ipywidgets' manager, stay visible; the checkpoint viewer from this checkout enabled).
  Every process it starts (server, kernels) is stopped by :meth:`LabServer.stop`, also on
  failure.
- the ``lab`` fixture (a server that answers) and the ``page`` fixture (Debian's Chromium
  through Playwright, closed at the end);
- :class:`Steps` runs a test's steps and, when one fails, says which, with a screenshot, the
  browser console and the server log; :func:`kernel_idle` waits for the notebook's kernel;
  :func:`write_notebook` writes a notebook of code cells.

Without Chromium (or Playwright, JupyterLab, psutil) the tests are skipped, except in CI
(``CI`` set), where they must run.
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

__all__ = ["ARTIFACTS", "ROOT", "TIMEOUT_MS", "LabServer", "Steps", "get", "kernel_idle", "lab", "page",
           "requirements", "write_notebook"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT_MS = 60_000


def requirements() -> None:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
        return response.read()


def enable_viewer(home: Path) -> None:
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
        enable_viewer(home)
        self.port = free_port()
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
                json.loads(get(f"{self.url}/api/status", timeout=2))
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
            for kernel in json.loads(get(f"{self.url}/api/kernels")):
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
    """A :class:`LabServer` that answers, serving an empty folder (``lab.root``); stopped at the end."""
    requirements()
    ARTIFACTS.mkdir(exist_ok=True)
    server = LabServer(tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(lab):
    """A page of headless Chromium (Playwright), its console kept in ``page.console_lines``."""
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


def kernel_idle(page) -> None:
    page.wait_for_function(
        """() => {
            const app = window.jupyterapp;
            const panel = app && app.shell.currentWidget;
            const kernel = panel && panel.sessionContext && panel.sessionContext.session
                && panel.sessionContext.session.kernel;
            return !!kernel && kernel.status === 'idle';
        }""", timeout=TIMEOUT_MS)


def open_notebook(step: Steps, page, lab: LabServer, name: str) -> None:
    """Open the notebook ``name`` (in the lab's root) and wait until its kernel is idle."""
    step("open the notebook", lambda: page.goto(f"{lab.url}/lab/tree/{name}"))
    step("wait for the notebook and its kernel", lambda: (
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="visible"), kernel_idle(page)))
    lab.remember_children()


def run_all_cells(step: Steps, page) -> None:
    """Close the left sidebar (the notebook gets the whole width, the widgets' pictures side by
    side in screenshots) and run every cell of the open notebook."""
    step("close the left sidebar", lambda: page.evaluate(
        "window.jupyterapp.commands.execute('application:toggle-left-area')"))
    step("run all cells", lambda: page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')"))


def write_notebook(path: Path, cells: list[str]) -> None:
    """A notebook at ``path`` of one code cell per string of ``cells`` (not run), Python 3 kernel."""
    path.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "language_info": {"name": "python"}},
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": code.splitlines(keepends=True)} for i, code in enumerate(cells)],
    }, indent=1))
