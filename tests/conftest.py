"""Shared helpers for nbckpt's tests."""

from __future__ import annotations

import io

import numpy as np
import pytest

import nbckpt
from nbckpt.format import dtypes as torch_dtypes

# (NumPy dtype, torch dtype name) of every dtype nbckpt saves from NumPy arrays: the
# torch dtypes whose NumPy form is a plain (or ml_dtypes) dtype, plus complex32.
SAVEABLE_DTYPES = [
    (t.numpy, t.name) for t in torch_dtypes.TORCH_DTYPES if t.numpy.metadata is None or t.name == "complex32"
]


class FilelikeMock:
    """A file object that records which of its methods were called.

    Port of the torch test-suite's helper: ``read``, ``readline``, ``seek``,
    ``tell``, ``write`` and ``flush`` are traced; ``readinto`` and ``fileno``
    exist only when asked for (``fileno`` then raises, as for a non-file).
    """

    def __init__(self, data: bytes = b"", *, has_fileno: bool = True, has_readinto: bool = False) -> None:
        self.calls: set[str] = set()
        self.bytesio = io.BytesIO(data)
        if has_readinto:
            self.readinto = self._readinto
        if has_fileno:
            self.fileno = self._fileno
        for name in ("read", "readline", "seek", "tell", "write", "flush"):
            setattr(self, name, self._trace(getattr(self.bytesio, name), name))

    def _trace(self, fn, name):
        def traced(*args, **kwargs):
            self.calls.add(name)
            return fn(*args, **kwargs)

        return traced

    def _fileno(self):
        raise io.UnsupportedOperation("Not a real file")

    def _readinto(self, view):
        self.calls.add("readinto")
        return self.bytesio.readinto(view)


def roundtrip(obj, **load_kwargs):
    """Save ``obj`` to memory with nbckpt and load it back."""
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    buf.seek(0)
    return nbckpt.load(buf, **load_kwargs)


def assert_same_array(actual, expected) -> None:
    """Equal values (NaN equal to NaN), dtype and shape."""
    assert type(actual) is np.ndarray, type(actual)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape
    # Compare the bits: covers NaN payloads and dtypes NumPy cannot order (float8).
    np.testing.assert_array_equal(_bits(actual), _bits(expected))


def _bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(np.uint8).reshape(array.shape + (array.dtype.itemsize,))


@pytest.fixture(autouse=True)
def _no_leftover_safe_globals():
    """Each test starts and ends with an empty user allowlist."""
    nbckpt.clear_safe_globals()
    yield
    nbckpt.clear_safe_globals()
