"""The CRC-32 of zip records: ISA-L's and zlib's give the same values; zlib when isal is absent."""

from __future__ import annotations

import io
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbckpt
from nbckpt.format import container, crc

isal_zlib = pytest.importorskip("isal.isal_zlib")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000), start=st.integers(0, 2**32 - 1))
def test_isal_and_zlib_agree_on_random_data(data, start):
    assert isal_zlib.crc32(data) == zlib.crc32(data)
    assert isal_zlib.crc32(data, start) == zlib.crc32(data, start)


def test_isal_and_zlib_agree_on_large_buffers_and_arrays():
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, size=(1 << 22) + 13, dtype=np.uint8)
    assert isal_zlib.crc32(block) == zlib.crc32(block)
    floats = rng.standard_normal(100_003).astype(np.float32)
    assert isal_zlib.crc32(memoryview(floats).cast("B")) == zlib.crc32(memoryview(floats).cast("B"))
    # A running CRC over chunks equals the CRC of the whole, as the writer computes it.
    running = 0
    for start in range(0, block.nbytes, 1 << 20):
        running = isal_zlib.crc32(block[start : start + (1 << 20)], running)
    assert running == zlib.crc32(block)


def test_isal_is_used_when_installed():
    assert crc.IMPLEMENTATION == "isal"
    assert crc.crc32 is isal_zlib.crc32
    assert container._crc32 is isal_zlib.crc32


def test_zlib_is_the_fallback_when_isal_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "isal", None)  # makes "import isal..." raise ImportError
    monkeypatch.delitem(sys.modules, "isal.isal_zlib", raising=False)
    function, name = crc.select()
    assert (function, name) == (zlib.crc32, "zlib")


def test_files_are_identical_with_either_crc(monkeypatch):
    state = {"w": np.arange(300_000, dtype=np.float32), "b": np.ones(7, np.int64), "n": 3}
    with_isal = io.BytesIO()
    nbckpt.save(state, with_isal)
    monkeypatch.setattr(container, "_crc32", zlib.crc32)
    with_zlib = io.BytesIO()
    nbckpt.save(state, with_zlib)
    assert with_isal.getvalue() == with_zlib.getvalue()
    with_zlib.seek(0)
    out = nbckpt.load(with_zlib, verify=True)
    np.testing.assert_array_equal(out["w"], state["w"])
