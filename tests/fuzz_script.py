"""``scripts/fuzz.py`` as a module, for the tests that share its bases and mutators.

The script is not a package module (it is run as ``python scripts/fuzz.py`` and by
``make fuzz``), so it is loaded from its file, once per test process:

    from fuzz_script import fuzz
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fuzz.py"
NAME = "nbckpt_fuzz_script"


def _load():
    if NAME in sys.modules:
        return sys.modules[NAME]
    spec = importlib.util.spec_from_file_location(NAME, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module  # before running it: its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fuzz = _load()
