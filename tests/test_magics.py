"""%ckpt and %%ckpt, driven through a real IPython InteractiveShell."""

from __future__ import annotations

import atexit
import builtins
import dataclasses
import io
import os
import re
import subprocess
import sys
import warnings

import matplotlib.image
import numpy as np
import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

import nbckpt
import nbckpt.progress
from checkpoint_tools import retag
from gpu_helpers import fake_cupy, no_cupy  # noqa: F401 - fixtures
from nbckpt.jupyter import cache, magics, stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass
class RunConfig:
    """A class the safe loader refuses (it is no allowlisted global)."""

    depth: int = 2


# --------------------------------------------------------------------------------------
# The shell


@pytest.fixture(scope="module")
def ipython(tmp_path_factory):
    """One InteractiveShell for the module, with nbckpt loaded; everything it changed
    outside itself (``__main__``, builtins, warning filters, atexit) is put back after."""
    main, filters = sys.modules["__main__"], warnings.filters[:]
    added_builtins = [name for name in ("display", "__IPYTHON__") if not hasattr(builtins, name)]
    patch = pytest.MonkeyPatch()
    patch.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
    created = not InteractiveShell.initialized()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "nbckpt")
    yield shell
    if created:
        atexit.unregister(shell.atexit_operations)
        InteractiveShell.clear_instance()
        sys.modules["__main__"] = main
        for name in added_builtins:
            if hasattr(builtins, name):
                delattr(builtins, name)
    warnings.filters[:] = filters
    patch.undo()


@pytest.fixture
def shell(ipython, tmp_path, monkeypatch):
    """The shell with an empty namespace, in a fresh working folder that is also ``~``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    ipython.reset(new_session=False)
    ipython.push({"np": np})
    yield ipython
    ipython.reset(new_session=False)


def run(shell, line: str):
    """Run ``%ckpt line``; returns the captured output (stdout, stderr, displayed outputs)."""
    with capture_output() as captured:
        shell.run_line_magic("ckpt", line)
    return captured


def run_cell(shell, line: str, cell: str):
    with capture_output() as captured:
        shell.run_cell_magic("ckpt", line, cell)
    return captured


def usage_error(shell, line: str) -> str:
    with pytest.raises(UsageError) as info:
        run(shell, line)
    return str(info.value)


def texts(captured) -> list[str]:
    return [output.data.get("text/plain", "") for output in captured.outputs]


def write(obj, path) -> str:
    nbckpt.save(obj, str(path))
    return str(path)


# --------------------------------------------------------------------------------------
# Registration and help


def test_import_registers_nothing_and_imports_no_jupyter_library():
    script = ("import sys, nbckpt\n"
              "heavy = [m for m in ('IPython', 'ipywidgets', 'matplotlib', 'tqdm', 'cupy') if m in sys.modules]\n"
              "assert not heavy, heavy\n"
              "from nbckpt.jupyter import stats\n"
              "assert 'IPython' not in sys.modules and 'matplotlib' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_load_ext_registers_both_magics(ipython):
    assert type(ipython.find_line_magic("ckpt").__self__) is magics.CheckpointMagics
    assert type(ipython.find_cell_magic("ckpt").__self__) is magics.CheckpointMagics


def test_help_lists_every_sub_command(shell):
    with capture_output() as captured:
        shell.run_cell("%ckpt?")
    usages = ["%ckpt save PATH [VAR ...]", "%ckpt load [-m LOC] [--unsafe] [--as NAME] [--overwrite] PATH [VAR ...]",
              "%ckpt ls PATH [GLOB]", "%ckpt info PATH", "%ckpt show [-m LOC] PATH NAME", "%ckpt browse PATH",
              "%ckpt diff [-m LOC] [--widget] A B", "%ckpt devices", "%%ckpt cache [--force] PATH VAR [VAR ...]"]
    for usage in usages:
        assert usage in captured.stdout, usage
    assert "--unsafe              weights_only=False" in captured.stdout
    with capture_output() as captured:
        shell.run_cell("%%ckpt?")
    assert "%%ckpt cache [--force] PATH VAR [VAR ...]" in captured.stdout
    assert "%ckpt load" not in captured.stdout


@pytest.mark.parametrize("line, message", [
    ("", "%ckpt needs a sub-command: save, load, ls, info, show, browse, diff, devices, cache "
         "(%ckpt? explains each)."),
    ("sav x.pt", "%ckpt has no sub-command 'sav': did you mean save? use one of save, load, ls, info, show, "
                 "browse, diff, devices, cache (%ckpt? explains each)."),
    ("frobnicate", "%ckpt has no sub-command 'frobnicate': use one of save, load, ls, info, show, browse, diff, "
                   "devices, cache (%ckpt? explains each)."),
    ("load 'x.pt", "%ckpt load: cannot split the arguments (No closing quotation); close every quote."),
    ("info", "the following arguments are required: PATH. Usage: %ckpt info PATH"),
    ("info a.pt b.pt", "unrecognized arguments: b.pt. Usage: %ckpt info PATH"),
    ("load x.pt --unsafe=yes", "argument --unsafe: ignored explicit argument 'yes'. "
                               "Usage: %ckpt load [-m LOC] [--unsafe] [--as NAME] [--overwrite] PATH [VAR ...]"),
    ("cache c.pt x", "cache is a cell magic: put %%ckpt cache PATH VAR [VAR ...] on the first line of a cell, "
                     "above the code whose variables it caches."),
])
def test_dispatch_mistakes(shell, line, message):
    assert usage_error(shell, line) == message


def test_sub_command_separated_by_any_whitespace(shell):
    assert run(shell, "\tdevices  ").stdout.startswith("usable devices: cpu")


def test_usage_errors_show_no_traceback(shell):
    with capture_output() as captured:
        shell.run_cell("%ckpt load missing.pt")
    assert "UsageError: no such file: missing.pt." in captured.stderr
    assert "Traceback" not in captured.stdout + captured.stderr


# --------------------------------------------------------------------------------------
# save


def test_save_named_variables(shell, tmp_path):
    shell.push({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "lr": 0.1})
    out = run(shell, "save run.pt w lr")
    assert out.stdout == ("saved 2 variables to run.pt (1 array, 24 B):\n"
                          "  w   ndarray (2, 3) float32, cpu\n"
                          "  lr  float: 0.1\n")
    loaded = nbckpt.load(tmp_path / "run.pt")
    assert loaded.keys() == {"w", "lr"} and np.array_equal(loaded["w"], shell.user_ns["w"])
    assert torch.load(tmp_path / "run.pt", weights_only=True)["lr"] == 0.1


def test_save_without_names_takes_every_variable_holding_arrays(shell, tmp_path):
    shell.run_cell("import os\n"
                   "w = np.ones(3)\n"
                   "state = {'layers': [np.zeros(2), np.ones(1)], 'step': 4}\n"
                   "lr = 0.1\n"
                   "names = ['a', 'b']\n"
                   "def helper(): pass\n"
                   "w")  # sets _ and Out to arrays too
    out = run(shell, "save all.pt")
    assert out.stdout == ("saved every variable that holds arrays to all.pt (3 arrays, 48 B):\n"
                          "  w      ndarray (3,) float64, cpu\n"
                          "  state  dict of 2 entries\n")
    assert set(nbckpt.load(tmp_path / "all.pt")) == {"w", "state"}


def test_save_mistakes(shell, tmp_path):
    assert usage_error(shell, "save x.pt") == "no variable holds arrays: name the variables to save, e.g. " \
                                              "%ckpt save x.pt x y"
    assert usage_error(shell, "save x.pt nope np2") == ("no variable named nope, np2: define it first, or check "
                                                        "the spelling (%who lists the variables).")
    shell.push({"bad": {"w": np.ones(2), "f": print}})
    assert usage_error(shell, "save x.pt bad") == (
        "cannot save: cannot save an object of type builtins.builtin_function_or_method at obj['bad']['f']: "
        "nbckpt saves NumPy and CuPy arrays, NumPy scalars, scipy.sparse arrays, nbckpt.MetaArray, dict, "
        "OrderedDict, list, tuple, namedtuple, set, str, bytes, bytearray, int, float, complex, bool and None. "
        "Save only arrays, numbers, strings and containers of them; name the variables to save.")
    assert not (tmp_path / "x.pt").exists()
    shell.push({"w": np.ones(2)})
    message = usage_error(shell, "save nowhere/x.pt w")
    assert message == f"cannot save to 'nowhere/x.pt': the folder '{tmp_path / 'nowhere'}' does not exist."
    (tmp_path / "folder").mkdir()
    assert usage_error(shell, "save folder w") == "folder is a folder: give the path of a checkpoint file."
    assert sorted(os.listdir(tmp_path)) == ["folder"]  # no temporary file left behind


def test_paths_with_spaces_and_home(shell, tmp_path):
    (tmp_path / "my runs").mkdir()
    shell.push({"w": np.ones(2)})
    run(shell, 'save "~/my runs/a b.pt" w')
    assert (tmp_path / "my runs" / "a b.pt").is_file()
    shell.user_ns.pop("w")
    out = run(shell, "load '~/my runs/a b.pt'")
    assert out.stdout.startswith(f"loaded 1 variable from {tmp_path}/my runs/a b.pt:")
    assert np.array_equal(shell.user_ns["w"], np.ones(2))


def test_progress_bar_for_long_saves_and_loads(shell, monkeypatch):
    monkeypatch.setattr(nbckpt.progress, "AUTO_THRESHOLD", 0)  # every save is "long" now
    shell.push({"w": np.ones(1000)})
    assert "saving" in run(shell, "save big.pt w").stderr
    assert "loading" in run(shell, "load big.pt").stderr
    monkeypatch.setattr(nbckpt.progress, "AUTO_THRESHOLD", 1 << 40)
    assert run(shell, "save big.pt w").stderr == ""


# --------------------------------------------------------------------------------------
# load


def test_load_makes_variables_of_a_dicts_entries(shell, tmp_path):
    write({"w": np.arange(3), "step": 7, "name": "run-1"}, tmp_path / "a.pt")
    out = run(shell, "load a.pt")
    assert out.stdout == ("loaded 3 variables from a.pt:\n"
                          "  w     ndarray (3,) int64, cpu\n"
                          "  step  int: 7\n"
                          "  name  str: 'run-1'\n")
    assert shell.user_ns["step"] == 7 and np.array_equal(shell.user_ns["w"], np.arange(3))
    shell.run_cell("%who_ls")  # the variables are the user's, not hidden
    assert {"w", "step", "name"} <= set(shell.run_line_magic("who_ls", ""))


def test_load_named_entries_only(shell, tmp_path):
    write({"w": np.arange(3), "step": 7}, tmp_path / "a.pt")
    run(shell, "load a.pt step")
    assert shell.user_ns["step"] == 7 and "w" not in shell.user_ns


def test_load_as_binds_the_whole_object(shell, tmp_path):
    write([np.ones(2), {"layer.weight": np.zeros(1)}], tmp_path / "list.pt")
    out = run(shell, "load list.pt --as everything")
    assert out.stdout == "loaded list.pt as everything: list of 2 entries\n"
    assert shell.user_ns["everything"][1]["layer.weight"].shape == (1,)


def test_load_never_binds_dunders_builtins_or_ipython_names_and_keeps_existing_variables(shell, tmp_path):
    write({"w": np.arange(2), "__builtins__": 1, "print": 2, "np": 3, "In": 4, "step": 5}, tmp_path / "t.pt")
    shell.push({"step": 0})
    out = run(shell, "load t.pt")
    assert out.stdout == ("loaded 1 variable from t.pt:\n"
                          "  w  ndarray (2,) int64, cpu\n"
                          "skipped 5 entries:\n"
                          "  __builtins__  a dunder name: never bound\n"
                          "  print         a builtin: bind it with --as NAME\n"
                          "  np            already a variable: name it, or pass --overwrite\n"
                          "  In            IPython's own: bind it with --as NAME\n"
                          "  step          already a variable: name it, or pass --overwrite\n")
    assert shell.user_ns["np"] is np and shell.user_ns["step"] == 0 and "print" not in shell.user_ns
    assert shell.user_ns["__builtins__"] is not 1  # noqa: F632 - identity is the point
    run(shell, "load t.pt step")  # named: replaced
    assert shell.user_ns["step"] == 5
    shell.push({"step": 0})
    run(shell, "load t.pt --overwrite")  # the flag replaces existing variables, never protected names
    assert shell.user_ns["step"] == 5 and shell.user_ns["np"] == 3 and "print" not in shell.user_ns
    assert usage_error(shell, "load t.pt print") == (
        "print is a builtin: %ckpt load never binds it; choose another name with --as NAME.")
    assert usage_error(shell, "load t.pt --as __builtins__") == (
        "__builtins__ is a dunder name: %ckpt load never binds it; choose another name with --as NAME.")


def test_load_mistakes(shell, tmp_path):
    write([np.ones(2)], tmp_path / "list.pt")
    write({"layer.weight": np.ones(2), "class": 1, "ok": 2}, tmp_path / "state.pt")
    write({"w": np.ones(2), "step": 1}, tmp_path / "a.pt")
    assert usage_error(shell, "load list.pt") == (
        "list.pt holds a list, not a dict of variables: bind it to one name with --as NAME, "
        "e.g. %ckpt load list.pt --as state")
    assert usage_error(shell, "load state.pt") == (
        "state.pt has entries that are not Python names ('layer.weight', 'class'): bind the whole dict to one "
        "name with --as NAME, e.g. %ckpt load state.pt --as state")
    run(shell, "load state.pt ok")  # a valid name among invalid ones can still be picked
    assert shell.user_ns["ok"] == 2
    assert usage_error(shell, "load a.pt w nope") == "a.pt has no entry nope; its entries are: w, step"
    assert usage_error(shell, "load a.pt w --as s") == (
        "give either VAR names (entries become variables) or --as NAME (the whole object), not both.")
    assert usage_error(shell, "load a.pt --as 2x") == "--as 2x: not a Python variable name."
    assert usage_error(shell, "load missing.pt") == (
        "no such file: missing.pt. Check the path (a leading ~ is expanded; put paths that contain spaces "
        "in quotes).")
    # a folder is read as a sharded or torch.distributed checkpoint (nbckpt.formats); this one is neither
    assert "the folder . holds no checkpoint nbckpt reads" in usage_error(shell, "load .")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    assert usage_error(shell, "load junk.pt").startswith("the file is not a checkpoint nbckpt can read: ")


@pytest.fixture
def gpu_file(tmp_path):
    """A checkpoint whose arrays were saved on cuda:0."""
    buf = io.BytesIO()
    nbckpt.save({"w": np.arange(4.0)}, buf)
    path = tmp_path / "gpu.pt"
    path.write_bytes(retag(buf.getvalue(), {"cpu": "cuda:0"}))
    return path


@pytest.mark.parametrize("option", ["-m cpu", "--map-location cpu", "-m auto", "-m cuda:0=cpu",
                                    "-m 'cuda:1=cuda:0, cuda:0=cpu'"])
def test_load_map_location_forms(shell, gpu_file, no_cupy, option):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto says what it moved
        run(shell, f"load gpu.pt {option}")
    assert type(shell.user_ns["w"]) is np.ndarray and shell.user_ns["w"][3] == 3.0


def test_load_onto_a_gpu(shell, gpu_file, fake_cupy):
    run(shell, "load gpu.pt -m cuda:1")
    assert type(shell.user_ns["w"]).__module__.startswith("cupy") and shell.user_ns["w"].device.id == 1


def test_load_device_mistakes(shell, gpu_file, no_cupy):
    message = usage_error(shell, "load gpu.pt")
    assert message.startswith("the file holds arrays saved on 'cuda:0', but no GPU is usable here: CuPy is not "
                              "installed or does not import (")
    assert message.endswith("; install it with `pip install cupy-cuda12x`; or pass map_location='cpu' (or 'auto') "
                            "to load them on the host. With %ckpt load that is -m cpu (or -m auto).")
    choices = ("Give cpu, cuda, cuda:N, auto (the saved device when usable, else cpu), or SOURCE=TARGET pairs "
               "such as cuda:1=cuda:0,cuda:0=cpu.")
    assert usage_error(shell, "load gpu.pt -m gpu0") == f"-m gpu0: not a device or device map. {choices}"
    assert usage_error(shell, "load gpu.pt -m cuda:0=") == f"-m cuda:0=: not a device or device map. {choices}"
    assert usage_error(shell, "load gpu.pt -m tpu=cpu") == f"-m tpu=cpu: not a device or device map. {choices}"


@pytest.fixture
def refused_file(tmp_path):
    path = tmp_path / "config.pt"
    torch.save({"w": torch.ones(2), "config": RunConfig(3)}, path)
    return path


def test_refused_global_and_unsafe(shell, refused_file):
    message = usage_error(shell, "load config.pt")
    assert message.startswith("weights_only=True refused GLOBAL test_magics.RunConfig: ")
    assert message.endswith(" If you trust this file, load it with --unsafe: %ckpt load config.pt --unsafe")
    out = run(shell, "load config.pt --unsafe")
    assert out.stdout.startswith("--unsafe: loading with weights_only=False; the file's pickle can run any code. "
                                 "Use it only for files you trust.\nloaded 2 variables from config.pt:")
    assert shell.user_ns["config"] == RunConfig(3)


# --------------------------------------------------------------------------------------
# ls and info


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    embed = torch.randn(10, 4)
    state = {"model": torch.nn.Linear(4, 2).state_dict(), "tied": {"embed": embed, "first": embed[:2]},
             "epoch": 5, "name": "run-1"}
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return path


def test_ls_lists_records_as_html_and_text(shell, model_file, monkeypatch):
    def no_data(*args):
        raise AssertionError("ls read array data")

    monkeypatch.setattr(nbckpt.Archive, "_materialize", no_data)
    out = run(shell, "ls model.pt")
    [shown] = out.outputs
    assert shown.data["text/plain"] == (
        "model.pt: 4 arrays\n"
        "name          shape    dtype    device  size   shared with\n"
        "------------  -------  -------  ------  -----  -----------\n"
        "model.weight  (2, 4)   float32  cpu     32 B\n"
        "model.bias    (2,)     float32  cpu     8 B\n"
        "tied.embed    (10, 4)  float32  cpu     160 B  tied.first\n"
        "tied.first    (2, 4)   float32  cpu     32 B   tied.embed\n"
        "2 other entries: epoch, name")
    html = shown.data["text/html"]
    assert html.startswith("<table><caption style='text-align:left'>model.pt: 4 arrays</caption>")
    assert "<td style='text-align:left'>tied.first</td>" in html and html.endswith("<p>2 other entries: epoch, name</p>")
    assert out.stdout == ""


def test_ls_glob(shell, model_file):
    [shown] = run(shell, "ls model.pt 'model.*'").outputs
    lines = shown.data["text/plain"].splitlines()
    assert lines[0] == "model.pt: 4 arrays, 2 matching model.*"
    assert [line.split()[0] for line in lines[3:5]] == ["model.weight", "model.bias"]
    [shown] = run(shell, "ls model.pt nothing*").outputs
    assert shown.data["text/plain"].splitlines()[0] == "model.pt: 4 arrays, 0 matching nothing*"


def test_ls_mistakes(shell, tmp_path, refused_file):
    assert usage_error(shell, "ls missing.pt").startswith("no such file: missing.pt.")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 but not really")
    # the reader's own reason, and no hint that ls reads zip files only (it reads every format load reads)
    assert usage_error(shell, "ls junk.pt") == (
        "junk.pt is not a checkpoint nbckpt can read: zip archive too short: 19 bytes from the start position")
    message = usage_error(shell, "ls config.pt")
    assert "test_magics.RunConfig" in message and message.endswith(
        " %ckpt info config.pt lists every global the file names.")


def test_info(shell, model_file):
    [shown] = run(shell, "info model.pt").outputs
    text = shown.data["text/plain"]
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines())
    assert rows["file"] == "model.pt"
    assert rows["format"] == "zip (torch >= 1.6), version 3, records under model/"
    assert rows["byte order"] == "little (recorded in the file)"
    assert (rows["arrays"], rows["storages"]) == ("4", "3")
    assert rows["sharing"] == "2 arrays view 1 shared storages"
    assert rows["array data"] == "200 B"
    assert rows["globals"] == "3 referenced, all allowed"
    assert rows["torch._utils._rebuild_tensor_v2"] == "allowed (nbckpt allowlist)"
    assert "<th style='text-align:left'>byte order</th>" in shown.data["text/html"]


def test_info_lists_refused_globals(shell, refused_file):
    [shown] = run(shell, "info config.pt").outputs
    text = shown.data["text/plain"]
    assert "globals" in text and "refused by the safe loader" in text
    assert "test_magics.RunConfig" in text and "REFUSED (not allowlisted)" in text


# --------------------------------------------------------------------------------------
# show


def decode(png: bytes):
    assert png.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_show_2d_array(shell, model_file):
    out = run(shell, "show model.pt tied.embed")
    summary, histogram, heatmap = out.outputs
    text = summary.data["text/plain"]
    embed = nbckpt.load(model_file)["tied"]["embed"]
    assert text.startswith("tied.embed in model.pt\nshape         (10, 4)\ndtype         float32\ndevice        cpu\n")
    assert f"min           {float(embed.min()):.6g}" in text and "NaN           0" in text
    assert "first values  [" in text and "computed on" not in text
    assert "<caption style='text-align:left'>tied.embed in model.pt</caption>" in summary.data["text/html"]
    assert histogram.data["text/plain"] == "[histogram of tied.embed]"
    assert heatmap.data["text/plain"] == "[heat map of tied.embed]"
    decode(histogram.data["image/png"])
    decode(heatmap.data["image/png"])


def test_show_1d_array_has_no_heatmap_and_big_arrays_say_sampled(shell, tmp_path, monkeypatch):
    write({"v": np.arange(10_000, dtype=np.float32)}, tmp_path / "v.pt")
    monkeypatch.setattr(stats, "EXACT_LIMIT", 100)
    summary, histogram = run(shell, "show v.pt v").outputs
    assert "computed on   a sample of 100 of 10,000 elements (counts are of the sample)" in summary.data["text/plain"]


def test_show_meta_tensor(shell, tmp_path):
    write({"m": nbckpt.MetaArray((2, 3), np.float32)}, tmp_path / "meta.pt")
    summary, histogram = run(shell, "show meta.pt m").outputs
    text = summary.data["text/plain"]
    assert "device        meta" in text and "note          a meta tensor: shape and dtype only, no data" in text
    assert text.endswith("first values  no values: a meta tensor has no data")
    decode(histogram.data["image/png"])


def test_show_mistakes(shell, model_file):
    assert usage_error(shell, "show model.pt embed") == (
        "no array named 'embed' in model.pt; similar: tied.embed. List the arrays with %ckpt ls model.pt")
    assert usage_error(shell, "show model.pt") == ("the following arguments are required: NAME. "
                                                   "Usage: %ckpt show [-m LOC] PATH NAME")


# --------------------------------------------------------------------------------------
# browse, diff, devices


def test_browse_displays_the_archive_browser(shell, model_file):
    from ipywidgets.widgets.widget import _instances as widget_instances

    from nbckpt.jupyter import ArchiveBrowser

    out = run(shell, "browse model.pt")
    [shown] = out.outputs
    assert out.stdout == ""
    assert "application/vnd.jupyter.widget-view+json" in shown.data
    model_id = shown.data["application/vnd.jupyter.widget-view+json"]["model_id"]
    browser = widget_instances[model_id]  # the widget the notebook would render
    try:
        assert isinstance(browser, ArchiveBrowser)
        assert browser.archive.source == "model.pt"
        assert [entry.name for entry in browser.entries] == [
            "model.weight", "model.bias", "tied.embed", "tied.first", "epoch", "name"]
        browser.select("epoch")
        browser.load_button.click()  # into the shell's namespace
        assert shell.user_ns["epoch"] == 5
        assert browser.status.value == "loaded epoch as epoch: int: 5"
    finally:
        browser.close()
    assert usage_error(shell, "browse missing.pt").startswith("no such file: missing.pt.")
    (model_file.parent / "notes.txt").write_text("not a checkpoint")
    assert usage_error(shell, "browse notes.txt").startswith("notes.txt is not a checkpoint nbckpt can read")


def test_diff(shell, tmp_path):
    write({"w": np.array([1.0, 2.0]), "b": np.zeros(2), "epoch": 1}, tmp_path / "a.pt")
    write({"w": np.array([1.0, 2.5]), "c": np.zeros(2), "epoch": 2}, tmp_path / "b.pt")
    [shown] = run(shell, "diff a.pt b.pt").outputs
    assert shown.data["text/plain"] == (
        "a.pt vs b.pt: 0 arrays equal, 1 with other values, 1 only in A, 1 only in B; 0 other values equal, "
        "1 differ\n\n"
        "name   change                  A             B             max abs diff  max rel diff\n"
        "-----  ----------------------  ------------  ------------  ------------  ------------\n"
        "w      values (1 of 2 differ)  (2,) float64  (2,) float64  0.5           0.2\n"
        "b      only in A               (2,) float64\n"
        "c      only in B                             (2,) float64\n"
        "epoch  value                   1             2")
    assert "<td style='text-align:left'>only in B</td>" in shown.data["text/html"]
    assert usage_error(shell, "diff a.pt missing.pt").startswith("no such file: missing.pt.")
    assert usage_error(shell, "diff a.pt") == ("the following arguments are required: B. "
                                               "Usage: %ckpt diff [-m LOC] [--widget] A B")


def test_devices(shell, no_cupy):
    assert run(shell, "devices").stdout == (
        "usable devices: cpu\n"
        "no usable GPU (it needs CuPy and a CUDA device): arrays saved on a GPU load with -m cpu or -m auto\n")


def test_devices_with_gpus(shell, fake_cupy):
    assert run(shell, "devices").stdout == "usable devices: cpu, cuda:0, cuda:1\n"


# --------------------------------------------------------------------------------------
# %%ckpt cache

CELL = "runs += 1\nx = np.arange(3) * runs\nlabel = f'run {runs}'\n"


def test_cache_runs_once_then_loads(shell, tmp_path):
    shell.push({"runs": 0})
    out = run_cell(shell, "cache cell.pt x label", CELL)
    assert out.stdout == "ran the cell (cell.pt did not exist) and saved x, label to cell.pt.\n"
    assert shell.user_ns["runs"] == 1
    shell.user_ns.pop("x"), shell.user_ns.pop("label")
    out = run_cell(shell, "cache cell.pt x label", CELL)
    assert out.stdout == ("loaded x, label from cell.pt: the cell did not run (its source has not changed since "
                          "it was cached; --force runs it again).\n")
    assert shell.user_ns["runs"] == 1  # not run again
    assert np.array_equal(shell.user_ns["x"], [0, 1, 2]) and shell.user_ns["label"] == "run 1"
    saved = nbckpt.load(tmp_path / "cell.pt")  # an ordinary checkpoint
    assert saved[cache.CACHE_KEY] == {"cell_sha256": cache.cell_fingerprint(CELL), "variables": ["x", "label"]}
    shell.user_ns.pop("x")
    out = run(shell, "load cell.pt").stdout  # label exists: not replaced unless named
    assert out.startswith("loaded 1 variable from cell.pt:")
    assert out.endswith("skipped 1 entry:\n  label  already a variable: name it, or pass --overwrite\n")
    assert cache.CACHE_KEY not in shell.user_ns and shell.user_ns["x"][2] == 2


def test_cache_reruns_when_the_cell_changes_or_is_forced(shell):
    shell.push({"runs": 0})
    run_cell(shell, "cache cell.pt x", CELL)
    out = run_cell(shell, "cache cell.pt x", CELL + "# tweaked\n")
    assert out.stdout == "ran the cell (the cell changed since cell.pt was written) and saved x to cell.pt.\n"
    assert shell.user_ns["runs"] == 2
    out = run_cell(shell, "cache cell.pt x", CELL + "# tweaked\n")
    assert shell.user_ns["runs"] == 2 and out.stdout.startswith("loaded x from cell.pt")
    out = run_cell(shell, "cache cell.pt x --force", CELL + "# tweaked\n")
    assert out.stdout == "ran the cell (--force) and saved x to cell.pt.\n"
    assert shell.user_ns["runs"] == 3 and np.array_equal(shell.user_ns["x"], [0, 3, 6])
    out = run_cell(shell, "cache cell.pt x label", CELL + "# tweaked\n")  # asks for more than is cached
    assert out.stdout == "ran the cell (cell.pt lacks label) and saved x, label to cell.pt.\n"
    assert shell.user_ns["runs"] == 4


def test_cache_refuses_to_overwrite_other_files(shell, tmp_path):
    write({"w": np.ones(2)}, tmp_path / "weights.pt")
    shell.push({"runs": 0})
    with pytest.raises(UsageError) as info:
        run_cell(shell, "cache weights.pt x", CELL)
    assert str(info.value) == ("weights.pt exists and was not written by %%ckpt cache (a checkpoint without a cell "
                               "fingerprint): choose another PATH, or pass --force to overwrite it.")
    assert shell.user_ns["runs"] == 0
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UsageError, match=r"^junk.pt exists and was not written by %%ckpt cache \(nbckpt cannot "):
        run_cell(shell, "cache junk.pt x", CELL)
    run_cell(shell, "cache weights.pt x --force", CELL)
    assert shell.user_ns["runs"] == 1 and set(nbckpt.load(tmp_path / "weights.pt")) == {"x", cache.CACHE_KEY}


def test_cache_mistakes(shell, tmp_path):
    with pytest.raises(UsageError) as info:
        run_cell(shell, "cache cell.pt y", "x = 1\n")
    assert str(info.value) == ("the cell did not define y: nothing was saved to cell.pt. Name the variables the "
                               "cell assigns after %%ckpt cache PATH.")
    with pytest.raises(UsageError) as info:
        run_cell(shell, "cache cell.pt x", "x = 1\n1 / 0\n")
    assert str(info.value) == "the cell raised an error (above): nothing was saved to cell.pt."
    with pytest.raises(UsageError) as info:
        run_cell(shell, "cache cell.pt f", "f = print\n")
    assert str(info.value).startswith("cannot cache: cannot save an object of type builtins.builtin_function")
    assert not (tmp_path / "cell.pt").exists()
    with pytest.raises(UsageError) as info:
        run_cell(shell, "cache cell.pt", "x = 1\n")
    assert str(info.value) == ("the following arguments are required: VAR. "
                               "Usage: %%ckpt cache [--force] PATH VAR [VAR ...]")
    with pytest.raises(UsageError) as info:
        run_cell(shell, "ls cell.pt", "x = 1\n")
    assert str(info.value) == ("%%ckpt has one sub-command, cache (%%ckpt cache PATH VAR [VAR ...]); ls is a line "
                               "magic: %ckpt ls ...")


def test_cache_through_run_cell(shell):
    """As in a notebook: the magic on the cell's first line."""
    shell.push({"runs": 0})
    for _ in range(3):
        result = shell.run_cell("%%ckpt cache cell.pt x\n" + CELL)
        assert result.success
    assert shell.user_ns["runs"] == 1


def test_parse_map_location():
    assert magics.parse_map_location("cpu") == "cpu"
    assert magics.parse_map_location("cuda:1") == "cuda:1"
    assert magics.parse_map_location("auto") == "auto"
    assert magics.parse_map_location("cuda:0=cpu,cuda:1=cuda:0") == {"cuda:0": "cpu", "cuda:1": "cuda:0"}
    with pytest.raises(UsageError):
        magics.parse_map_location("cuda:0=cpu,")


def test_working_folder_is_restored(tmp_path):
    assert os.getcwd() != str(tmp_path)  # the shell fixture's chdir is undone
