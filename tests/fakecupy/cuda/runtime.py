"""Fake ``cupy.cuda.runtime``: how many devices there are and which one is current."""

from __future__ import annotations

_count = 0  # set by fakecupy.reset()
_current = 0


class CUDARuntimeError(RuntimeError):
    """What CuPy raises for a failed CUDA runtime call."""


def getDeviceCount() -> int:
    if _count == 0:  # as CUDA: no device is an error, not a count of 0
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    return _count


def getDevice() -> int:
    return _current


def setDevice(device: int) -> None:
    global _current
    if not 0 <= device < _count:
        raise CUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal ({device})")
    _current = device
