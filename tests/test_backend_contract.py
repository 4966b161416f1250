"""One contract for every backend: NumPy, the CuPy test double, and real CuPy on a GPU.

The same assertions run on each (the double must behave as CuPy does where
nbckpt relies on it), including the one :class:`nbckpt.Archive`'s storage
cache depends on: a storage's ``root`` can be held by a weak reference that
dies when the last array over the storage goes, so an open archive never
keeps (GPU) memory alive. Real CuPy's memory objects take no weak references
(``cdef`` classes, checked below without a GPU), which is why the CuPy
backend hands out its own weakly referenceable owner.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import nbckpt.backends
from nbckpt.backends import HOST, Backend
from gpu_helpers import clear_cupy_caches, install_fake_cupy


def _real_gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


@pytest.fixture(params=["numpy", "fakecupy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request, monkeypatch):
    if request.param == "numpy":
        yield HOST
        return
    if request.param == "fakecupy":
        install_fake_cupy(monkeypatch, 2)
        yield nbckpt.backends.backend_for("cuda:1")
        clear_cupy_caches()
        return
    if _real_gpu_count() == 0:
        pytest.skip("real CuPy needs a CUDA device")
    clear_cupy_caches()
    yield nbckpt.backends.backend_for("cuda:0")
    clear_cupy_caches()


def to_host(backend, array) -> np.ndarray:
    return backend.to_host(backend.contiguous(array, array.dtype)).reshape(array.shape)


def test_is_a_backend(backend):
    assert isinstance(backend, Backend)


def test_from_host_view_and_empty(backend):
    values = np.arange(12, dtype=np.float32)
    host = backend.host_buffer(values.nbytes)
    assert host.dtype == np.uint8 and host.shape == (values.nbytes,)
    host[...] = values.view(np.uint8)
    storage = backend.from_host(host.view(np.float32))
    view = backend.view(storage, np.dtype(np.float32), 8, (2, 3), (12, 4))
    np.testing.assert_array_equal(to_host(backend, view), np.array([[2, 3, 4], [5, 6, 7]], np.float32))
    assert backend.empty(np.dtype(np.int16), (0, 4)).shape == (0, 4)


def test_root_is_held_weakly_and_dies_with_the_last_array(backend):
    storage = backend.from_host(np.arange(8, dtype=np.float64))
    view = backend.view(storage, np.dtype(np.float64), 16, (3,), (8,))
    reference = weakref.ref(backend.root(storage))  # TypeError here: the archive would keep memory alive
    del storage
    gc.collect()
    assert reference() is not None  # the view keeps the storage's memory alive
    rebuilt = backend.storage_from_root(reference(), np.dtype(np.float64), 64)
    np.testing.assert_array_equal(to_host(backend, rebuilt), np.arange(8.0))
    np.testing.assert_array_equal(to_host(backend, view), [2.0, 3.0, 4.0])
    del view, rebuilt
    gc.collect()
    assert reference() is None


def test_real_cupy_memory_objects_take_no_weak_references():
    """Why the CuPy backend needs its own owner object (this check needs no GPU)."""
    memory = pytest.importorskip("cupy").cuda.memory
    for cls in (memory.Memory, memory.PooledMemory, memory.UnownedMemory):
        assert cls.__weakrefoffset__ == 0, cls


def test_the_double_refuses_weak_references_as_cupy_does(monkeypatch):
    fake = install_fake_cupy(monkeypatch, 1)
    try:
        array = fake.empty(4, dtype=np.uint8)
        with pytest.raises(TypeError):
            weakref.ref(array.data.mem)
    finally:
        clear_cupy_caches()
