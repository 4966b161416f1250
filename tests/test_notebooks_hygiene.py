"""The tutorials' stored outputs stay reproducible across library releases.

nbval (part of ``make test``) re-runs each notebook and compares its outputs with the stored
ones. An output that prints a library's ``repr`` (``array([...], dtype=bfloat16)``,
``np.float64(1.0)``, ``tensor([...])``) breaks whenever that library changes how it prints,
though nothing in nbckpt changed; the notebooks print ``tolist()``, ``str(dtype)``,
formatted numbers and nbckpt's own tables instead. The sanitizers in
``notebooks/sanitize.cfg`` may hide only what is volatile (kernel paths, addresses,
timings), never a value a reader should see checked, such as a CRC-32.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Reprs whose text belongs to NumPy, ml_dtypes or torch, not to nbckpt or Python.
LIBRARY_REPRS = {
    "NumPy array": r"\barray\(\[",
    "NumPy dtype": r"\bdtype\(",
    "NumPy scalar": r"\bnp\.(float|int|uint|bool|complex|str)\w*\(",
    "torch tensor": r"\btensor\(",
    "Python object without a repr": r"<[\w.]+ object at 0x",
}


def stored_texts(path: Path):
    """(cell index, text) of every stored output a reader sees as text."""
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                yield index, output.text
            elif output.output_type in ("execute_result", "display_data"):
                yield index, output.data.get("text/plain", "")


def load_notebook_script():
    spec = importlib.util.spec_from_file_location("notebook_script", ROOT / "scripts" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sanitizers() -> dict[str, re.Pattern]:
    config = configparser.ConfigParser()
    config.read(ROOT / "notebooks" / "sanitize.cfg")
    return {section: re.compile(config[section]["regex"]) for section in config.sections()}


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_print_no_library_repr(path):
    found = [(index, kind, match.group(0), text[max(0, match.start() - 30):match.end() + 30])
             for index, text in stored_texts(path)
             for kind, pattern in LIBRARY_REPRS.items()
             for match in re.finditer(pattern, text)]
    assert not found, f"{path.name}: outputs that depend on a library's repr (cell, kind, text): {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_what_the_script_writes(path):
    """The .ipynb files are written by scripts/notebooks.py; nobody edits them by hand."""
    script = load_notebook_script()
    cells = script.NOTEBOOK_CELLS[path.name]
    stored = nbformat.read(path, as_version=4).cells
    assert [(c.cell_type, c.source) for c in stored] == [(c.cell_type, c.source) for c in cells]


def test_every_code_cell_has_run(tmp_path):
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        assert all(c.execution_count is not None for c in cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("text", [
    "CRC-32 mismatch: expected 0xc029abf5, found 0xb509b66b",   # notebook 2 prints these
    "array data                         64 B",
    "file size                          2.0 KiB",
    "model.layers.0.mlp.up.weight    (2048, 512)  bfloat16  cpu  2.0 MiB",
    "7 records checked, 1 problem(s)",
    "w     values (16 of 16 differ)  (16, 1) float32  1.106  1.922",
    "28",
])
def test_sanitizers_leave_deterministic_values_alone(text):
    for name, pattern in sanitizers().items():
        assert not pattern.search(text), f"[{name}] would hide {text!r}"


@pytest.mark.parametrize("name, volatile", [
    ("kernel_paths", 'File /tmp/ipykernel_4123/2750433716.py:3'),
    ("addresses", "<nbckpt.archive.Archive object at 0x7f3a2b4c5d60>"),
    ("durations", "cached in 1.25 s"),
])
def test_sanitizers_catch_what_is_volatile(name, volatile):
    assert sanitizers()[name].search(volatile)
