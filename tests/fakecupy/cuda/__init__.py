"""Fake ``cupy.cuda``: devices, device allocations and pointers into them."""

from __future__ import annotations

import weakref

import numpy as np

from . import runtime

#: Every allocation, per device: its size in bytes (reset by fakecupy.reset()).
_allocations: dict[int, list[int]] = {}
_next_address: dict[int, int] = {}
#: The bytes behind each live allocation, by address (for UnownedMemory).
_buffers: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


class Device:
    """``with Device(i):`` makes GPU i current, and restores the previous one after."""

    def __init__(self, device: int | None = None) -> None:
        self.id = runtime.getDevice() if device is None else int(device)
        self._previous: list[int] = []

    def __enter__(self) -> "Device":
        self._previous.append(runtime.getDevice())
        runtime.setDevice(self.id)
        return self

    def __exit__(self, *exc) -> None:
        runtime.setDevice(self._previous.pop())

    def use(self) -> None:
        runtime.setDevice(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class Memory:
    """One allocation on the current device: fake address ``ptr``, NumPy bytes behind it.

    Like CuPy's memory classes (``cdef`` classes), it takes no weak references.
    """

    __slots__ = ("device_id", "size", "ptr", "_buffer")

    def __init__(self, size: int) -> None:
        device = runtime.getDevice()
        if not 0 <= device < runtime._count:
            raise runtime.CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        self.device_id, self.size = device, int(size)
        # Device N's memory lives at N * 2**40 + k, 512-byte aligned as CuPy's pool.
        self.ptr = _next_address.setdefault(device, device * 2**40 + 2**20)
        _next_address[device] += max(512, -(-self.size // 512) * 512)
        self._buffer = np.zeros(self.size, dtype=np.uint8)
        _buffers[self.ptr] = self._buffer
        _allocations.setdefault(device, []).append(self.size)


class UnownedMemory:
    """``cupy.cuda.UnownedMemory(ptr, size, owner, device_id)``: memory kept alive by ``owner``.

    Here ``ptr`` must be the start of a live allocation (what nbckpt passes).
    No weak references, as in CuPy.
    """

    __slots__ = ("device_id", "size", "ptr", "_buffer", "_owner")

    def __init__(self, ptr: int, size: int, owner: object, device_id: int = -1) -> None:
        buffer = _buffers.get(int(ptr))
        if buffer is None or int(size) > buffer.size:
            raise ValueError("fakecupy: UnownedMemory must start at a live allocation and fit in it")
        self.ptr, self.size, self._owner, self._buffer = int(ptr), int(size), owner, buffer
        self.device_id = int(device_id) if device_id >= 0 else int(ptr) >> 40


class MemoryPointer:
    """The address ``mem.ptr + offset`` inside ``mem``."""

    __slots__ = ("mem", "ptr", "device_id")

    def __init__(self, mem: Memory, offset: int) -> None:
        self.mem, self.ptr, self.device_id = mem, mem.ptr + int(offset), mem.device_id

    @property
    def device(self) -> Device:
        return Device(self.device_id)

    def __add__(self, offset: int) -> "MemoryPointer":
        return MemoryPointer(self.mem, self.ptr - self.mem.ptr + offset)

    def __int__(self) -> int:
        return self.ptr
