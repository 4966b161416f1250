"""Test dependencies imported on first use, which fail (never skip) the tests that need them.

``pytest.importorskip`` at the top of a module skips every test in it when the package is
missing — silently, even the tests that never touch the package. Here the module imports
without it, the tests that do not need it run, and the ones that do fail with a message
that says how to get a complete test environment::

    torch = required("torch")          # module level: nothing is imported yet
    def test_x():
        torch.save(...)                # imports torch now, or fails this test
"""

from __future__ import annotations

import importlib
import types

import pytest

__all__ = ["required"]


class _Required(types.ModuleType):
    """Stands for a module until an attribute is asked for, then forwards to it."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        try:
            module = importlib.import_module(self.__name__)
        except ImportError as err:
            pytest.fail(f"this test needs {self.__name__!r}, which is not installed ({err}); the test "
                        "environment is incomplete: run `make test`, which installs it from the lock",
                        pytrace=False)
        return getattr(module, attribute)


def required(name: str) -> types.ModuleType:
    """A stand-in for module ``name`` that imports it on first use (see the module docstring)."""
    return _Required(name)
