"""The exceptions nbckpt raises.

Every error is a :class:`CheckpointError`, and each leaf also subclasses the
builtin exception that calling code already catches, so ``except ValueError``
around a load keeps working when the file is corrupt.

Example:
    >>> import io, nbckpt
    >>> try:
    ...     nbckpt.load(io.BytesIO(b"not a checkpoint"))
    ... except ValueError as err:  # also an nbckpt.FormatError
    ...     print(type(err).__name__)
    FormatError
"""

from __future__ import annotations

import pickle

__all__ = ["CheckpointError", "FormatError", "UnpicklingError", "DeviceError", "LossyConversionError"]


class CheckpointError(Exception):
    """Base class of every error nbckpt raises on purpose."""


class FormatError(CheckpointError, ValueError):
    """The input is corrupt, truncated, hostile or of an unknown format.

    ``record`` names the part of the file being read (a zip record, a pickle
    offset), when one is known.
    """

    def __init__(self, message: str, *, record: str | None = None) -> None:
        super().__init__(message)
        self.record = record


class UnpicklingError(CheckpointError, pickle.UnpicklingError):
    """The safe loader refused something in the file's pickle.

    ``global_name`` is the dotted name of the refused global, when the refusal
    is about one (``"os.system"``).
    """

    def __init__(self, message: str, *, global_name: str | None = None) -> None:
        super().__init__(message)
        self.global_name = global_name


class DeviceError(CheckpointError, RuntimeError):
    """A device tag cannot be used here (no GPU, no CuPy, unknown tag)."""

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class LossyConversionError(CheckpointError, ValueError):
    """A conversion would lose something the target format cannot hold.

    ``lost`` lists what (one sentence each); ``report`` is the
    :class:`nbckpt.convert.ConversionReport` of the conversion that was refused.
    Nothing was written. Pass ``lossy=True`` (``--lossy``) to convert anyway.
    """

    def __init__(self, message: str, *, lost: list[str], report: object = None) -> None:
        super().__init__(message)
        self.lost = lost
        self.report = report
