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

import contextlib
import pickle
import struct
import tarfile
import zipfile
from typing import Iterator

__all__ = ["CheckpointError", "FormatError", "EncodingError", "UnpicklingError", "DeviceError",
           "LossyConversionError", "STRAY_ERRORS", "typed_errors"]


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


class EncodingError(FormatError, UnicodeDecodeError):
    """A Python 2 string in the pickle that the ``encoding`` asked for cannot decode.

    torch (and :mod:`pickle`) raise :class:`UnicodeDecodeError` here, so this is
    one too — code written for torch keeps working — and it is also a
    :class:`FormatError`, so every nbckpt entry point reports a typed error.
    The arguments are :class:`UnicodeDecodeError`'s own.

        >>> err = EncodingError("ascii", b"\\xe2", 0, 1, "ordinal not in range(128)")
        >>> isinstance(err, UnicodeDecodeError) and isinstance(err, FormatError)
        True
    """

    def __init__(self, encoding: str, obj: bytes, start: int, end: int, reason: str) -> None:
        UnicodeDecodeError.__init__(self, encoding, obj, start, end, reason)
        self.record = None

    # UnicodeDecodeError.__str__ reads its own fields; keep it (FormatError adds none).
    __str__ = UnicodeDecodeError.__str__


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


#: What reading untrusted data can raise from Python, NumPy, ``tarfile`` or ``zipfile``
#: when no check of nbckpt's caught it first. Entry points turn these into
#: :class:`FormatError` with :func:`typed_errors` (``OSError`` — a missing file,
#: a full disk — and ``KeyboardInterrupt`` pass through unchanged).
STRAY_ERRORS = (ValueError, TypeError, AttributeError, LookupError, RecursionError, ImportError,
                MemoryError, ArithmeticError, EOFError, struct.error, tarfile.TarError, zipfile.BadZipFile,
                pickle.UnpicklingError)


@contextlib.contextmanager
def typed_errors(what: str) -> Iterator[None]:
    """Inside the block, a stray exception (:data:`STRAY_ERRORS`) becomes a :class:`FormatError`.

    nbckpt's own errors pass unchanged; the message names ``what`` was being done.

        >>> try:
        ...     with typed_errors("reading x.pt"):
        ...         int("9" * 5000)
        ... except FormatError as err:
        ...     print(str(err)[:60])
        reading x.pt: unexpected ValueError from the file's data: Ex
    """
    try:
        yield
    except CheckpointError:
        raise
    except MemoryError:
        raise FormatError(f"{what}: the file asks for more memory than this machine has; it is corrupt "
                          f"or hostile (or needs a larger machine)") from None
    except RecursionError:
        raise FormatError(f"{what}: the file's data is nested too deeply to process") from None
    except STRAY_ERRORS as err:
        detail = str(err)
        detail = detail if len(detail) <= 300 else detail[:299] + "…"
        raise FormatError(f"{what}: unexpected {type(err).__name__} from the file's data: {detail}") from err
