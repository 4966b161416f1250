"""Helpers for the device tests: the fake CuPy fixtures and CUDA-tagged checkpoints.

``fake_cupy`` installs :mod:`fakecupy` (a test double of CuPy, 2 devices; call
``fake_cupy.reset(n)`` for another count) as ``cupy``/``cupyx``; ``no_cupy``
makes ``import cupy`` fail. Both clear nbckpt's cached CuPy module and
backends before and after the test, so nothing leaks between tests.

:func:`relocate` turns a checkpoint whose storages are tagged ``cpu`` (what
torch writes without a GPU) into one tagged ``cuda:N``, as if saved on a GPU.
"""

from __future__ import annotations

import io
import pickletools
import struct
import sys
import zipfile
from typing import Callable

import pytest
import torch

import fakecupy
import nbckpt
import nbckpt.backends
import nbckpt.backends.cupy
from nbckpt.format.container import ZipWriter

__all__ = ["fake_cupy", "no_cupy", "install_fake_cupy", "clear_cupy_caches", "relocate",
           "rewrite_checkpoint", "save_bytes", "load", "torch_bytes"]


def clear_cupy_caches() -> None:
    """Forget the CuPy module and the GPU backends nbckpt cached."""
    nbckpt.backends._cupy_module.cache_clear()
    nbckpt.backends.cupy._backend.cache_clear()


def install_fake_cupy(monkeypatch: pytest.MonkeyPatch, n_devices: int = 2):
    """Make ``import cupy`` give the fake with ``n_devices`` GPUs (undone by ``monkeypatch``)."""
    fakecupy.reset(n_devices)
    modules = {"cupy": fakecupy, "cupy.cuda": fakecupy.cuda, "cupy.cuda.runtime": fakecupy.cuda.runtime,
               "cupyx": fakecupy.cupyx}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    clear_cupy_caches()
    return fakecupy


@pytest.fixture
def fake_cupy(monkeypatch):
    """The fake CuPy module, installed with 2 GPUs."""
    clear_cupy_caches()
    yield install_fake_cupy(monkeypatch, 2)
    clear_cupy_caches()


@pytest.fixture
def no_cupy(monkeypatch):
    """``import cupy`` (and ``cupyx``) raise ImportError, as without CuPy installed."""
    clear_cupy_caches()
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setitem(sys.modules, "cupyx", None)
    yield
    clear_cupy_caches()


# --------------------------------------------------------------------------------------
# Checkpoints in memory, and rewriting them


def save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    return buf.getvalue()


def load(data: bytes, **kwargs):
    return nbckpt.load(io.BytesIO(data), **kwargs)


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()




def rewrite_checkpoint(data: bytes, edit: Callable[[str, bytes], bytes]) -> bytes:
    """A zip checkpoint with each record replaced by ``edit(name, content)`` (names
    without the archive prefix: ``data.pkl``, ``byteorder``, ``data/0``...).
    ``version`` and ``.data/serialization_id`` are rewritten by ZipWriter.close()."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    prefix = records[0][0].split("/", 1)[0]
    out = io.BytesIO()
    writer = ZipWriter(out.write, prefix)
    for name, content in records:
        short = name.split("/", 1)[1]
        if short in ("version", ".data/serialization_id"):
            continue
        writer.write_record(short, edit(short, content))
    writer.close()
    return out.getvalue()


def retag_pickle(pkl: bytes, tag: str, old: str = "cpu") -> bytes:
    """``pkl`` with every pickled string ``old`` (the storage locations) replaced by ``tag``."""
    out, last = bytearray(), 0
    for opcode, arg, pos in pickletools.genops(pkl):
        if opcode.name == "FRAME":
            raise ValueError("framed pickles (protocol 4+) are not supported here")
        if opcode.name in ("BINUNICODE", "SHORT_BINUNICODE") and arg == old:
            width = 4 if opcode.name == "BINUNICODE" else 1
            encoded = tag.encode("utf-8")
            out += pkl[last:pos] + b"X" + struct.pack("<I", len(encoded)) + encoded
            last = pos + 1 + width + len(old.encode("utf-8"))
    return bytes(out + pkl[last:])


def relocate(data: bytes, tag: str) -> bytes:
    """A copy of checkpoint ``data`` whose ``cpu`` storages are tagged ``tag`` (``cuda:1``)."""
    return rewrite_checkpoint(data, lambda name, content: retag_pickle(content, tag) if name == "data.pkl" else content)
