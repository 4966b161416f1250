"""nbckpt: torch-compatible checkpoints for NumPy and CuPy, safe by default.

    >>> import io, numpy as np, nbckpt
    >>> buf = io.BytesIO()
    >>> nbckpt.save({"weight": np.eye(2, dtype=np.float32)}, buf)
    >>> _ = buf.seek(0)
    >>> nbckpt.load(buf)["weight"].shape
    (2, 2)
"""

from .api import load, save, scan
from .archive import Archive, ArchiveInfo, Record, open
from .compare import DiffReport, diff
from .convert import ConversionReport, convert
from .config import LoadEndianness, get_default_load_endianness, set_default_load_endianness
from .devices import devices
from .errors import CheckpointError, DeviceError, EncodingError, FormatError, LossyConversionError, UnpicklingError
from .format.dtypes import complex32
from .jupyter import load_ipython_extension
from .meta import MetaArray
from .verify import Problem, VerifyReport, verify
from .pickling.allowlist import (
    add_safe_globals,
    clear_safe_globals,
    get_safe_globals,
    get_safe_globals_names,
    safe_globals,
)

# ``open`` is nbckpt.open but stays out of __all__: ``from nbckpt import *`` must not
# shadow the builtin open.
__all__ = [
    "save",
    "load",
    "scan",
    "verify",
    "diff",
    "DiffReport",
    "convert",
    "ConversionReport",
    "VerifyReport",
    "Problem",
    "Archive",
    "ArchiveInfo",
    "Record",
    "devices",
    "LoadEndianness",
    "set_default_load_endianness",
    "get_default_load_endianness",
    "add_safe_globals",
    "safe_globals",
    "get_safe_globals",
    "get_safe_globals_names",
    "clear_safe_globals",
    "complex32",
    "MetaArray",
    "CheckpointError",
    "FormatError",
    "EncodingError",
    "UnpicklingError",
    "DeviceError",
    "LossyConversionError",
    "load_ipython_extension",
]

__version__ = "0.1.0"
