"""torch dtypes and storage classes <-> NumPy dtypes.

torch names a tensor's element type twice in a checkpoint: by the storage class
of its persistent id (``torch.FloatStorage``; ``torch.storage.UntypedStorage``
for the newer dtypes, whose elements are then counted in bytes) and, for those
newer dtypes, by a dtype global passed to ``_rebuild_tensor_v3``
(``torch.uint16``). This module holds the one table that maps both to NumPy.

NumPy has no bfloat16 or float8: they come from ``ml_dtypes``. Types NumPy
cannot compute with at all (``complex32``, the packed ``float4_e2m1fn_x2``,
``bits*`` and the quantized integers) load as raw dtypes of the right size that
carry the torch name in their ``metadata``, so that saving them again writes the
same torch dtype:

    >>> from nbckpt.format.dtypes import by_torch_name
    >>> dt = by_torch_name("complex32").numpy
    >>> dt.names, dt.metadata
    (('real', 'imag'), mappingproxy({'torch': 'complex32'}))
    >>> by_torch_name("bfloat16").storage_class
    'BFloat16Storage'
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = [
    "TorchDtype",
    "TORCH_DTYPES",
    "by_torch_name",
    "by_storage_class",
    "for_numpy",
    "complex32",
    "UNTYPED_STORAGE",
    "swap_to_native",
    "swap_bytes",
    "swap_unit",
]

#: The storage class torch pickles for dtypes saved through ``_rebuild_tensor_v3``.
UNTYPED_STORAGE = "UntypedStorage"


def _raw(base: str, name: str) -> np.dtype:
    """A NumPy dtype of the right size that remembers the torch dtype it holds."""
    return np.dtype(base, metadata={"torch": name})


#: complex32 (``torch.chalf``): two float16 values. NumPy cannot compute with it,
#: so it loads as a structured dtype; ``a["real"]`` and ``a["imag"]`` are float16.
complex32 = np.dtype([("real", "<f2"), ("imag", "<f2")], metadata={"torch": "complex32"})


@dataclass(frozen=True)
class TorchDtype:
    """One torch dtype: its names in a pickle and its NumPy equivalent.

    ``storage_class`` is the legacy ``torch.<Name>Storage`` class torch pickles
    for this dtype, or ``None`` when torch writes it through
    ``_rebuild_tensor_v3`` with an ``UntypedStorage``.
    """

    name: str
    numpy: np.dtype
    storage_class: str | None

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def uses_v3(self) -> bool:
        return self.storage_class is None

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def _table() -> tuple[TorchDtype, ...]:
    d = np.dtype
    rows = [
        ("float64", d("<f8"), "DoubleStorage"),
        ("float32", d("<f4"), "FloatStorage"),
        ("float16", d("<f2"), "HalfStorage"),
        ("bfloat16", d(ml_dtypes.bfloat16), "BFloat16Storage"),
        ("int64", d("<i8"), "LongStorage"),
        ("int32", d("<i4"), "IntStorage"),
        ("int16", d("<i2"), "ShortStorage"),
        ("int8", d("i1"), "CharStorage"),
        ("uint8", d("u1"), "ByteStorage"),
        ("bool", d("?"), "BoolStorage"),
        ("complex128", d("<c16"), "ComplexDoubleStorage"),
        ("complex64", d("<c8"), "ComplexFloatStorage"),
        ("qint8", _raw("i1", "qint8"), "QInt8Storage"),
        ("qint32", _raw("<i4", "qint32"), "QInt32Storage"),
        ("quint8", _raw("u1", "quint8"), "QUInt8Storage"),
        ("quint4x2", _raw("u1", "quint4x2"), "QUInt4x2Storage"),
        ("quint2x4", _raw("u1", "quint2x4"), "QUInt2x4Storage"),
        # Written with _rebuild_tensor_v3 over an UntypedStorage:
        ("uint16", d("<u2"), None),
        ("uint32", d("<u4"), None),
        ("uint64", d("<u8"), None),
        ("float8_e5m2", d(ml_dtypes.float8_e5m2), None),
        ("float8_e4m3fn", d(ml_dtypes.float8_e4m3fn), None),
        ("float8_e5m2fnuz", d(ml_dtypes.float8_e5m2fnuz), None),
        ("float8_e4m3fnuz", d(ml_dtypes.float8_e4m3fnuz), None),
        ("float8_e8m0fnu", d(ml_dtypes.float8_e8m0fnu), None),
        ("float4_e2m1fn_x2", _raw("u1", "float4_e2m1fn_x2"), None),
        ("complex32", complex32, None),
        ("bits8", _raw("u1", "bits8"), None),
        ("bits16", _raw("<u2", "bits16"), None),
        ("bits1x8", _raw("u1", "bits1x8"), None),
        ("bits2x4", _raw("u1", "bits2x4"), None),
        ("bits4x2", _raw("u1", "bits4x2"), None),
    ]
    # Sub-byte types only appear in files as dtype values of wrapper tensors;
    # torch reports an itemsize of 1 for them.
    rows += [(f"uint{n}", _raw("u1", f"uint{n}"), None) for n in range(1, 8)]
    rows += [(f"int{n}", _raw("i1", f"int{n}"), None) for n in range(1, 8)]
    return tuple(TorchDtype(name, numpy, cls) for name, numpy, cls in rows)


TORCH_DTYPES: tuple[TorchDtype, ...] = _table()

_BY_NAME = {t.name: t for t in TORCH_DTYPES}
# torch's aliases, as they can appear in a GLOBAL (``torch.float`` is float32).
_ALIASES = {
    "float": "float32", "double": "float64", "half": "float16", "long": "int64",
    "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128",
    "chalf": "complex32",
}
_BY_STORAGE = {t.storage_class: t for t in TORCH_DTYPES if t.storage_class}
# Plain NumPy dtypes (no metadata) to torch. A dtype with torch metadata is
# looked up by that name first, so raw uint8 and quint8 stay apart.
_BY_NUMPY = {}
for _t in TORCH_DTYPES:
    if _t.numpy.metadata is None:
        _BY_NUMPY.setdefault(_t.numpy, _t)


def by_torch_name(name: str) -> TorchDtype | None:
    """The dtype for a torch dtype name (``"float32"``, alias ``"float"``), or None."""
    return _BY_NAME.get(_ALIASES.get(name, name))


def by_storage_class(name: str) -> TorchDtype | None:
    """The dtype of a legacy storage class name (``"FloatStorage"``), or None.

    ``UntypedStorage`` (and ``TypedStorage``) count bytes: they map to uint8.
    """
    if name in (UNTYPED_STORAGE, "TypedStorage"):
        return _BY_NAME["uint8"]
    return _BY_STORAGE.get(name)


def for_numpy(dtype: np.dtype) -> TorchDtype | None:
    """The torch dtype a NumPy dtype is saved as, or None when torch has none.

    Byte order is ignored here: the writer stores data in native order.

        >>> for_numpy(np.dtype(np.float32)).name
        'float32'
        >>> for_numpy(np.dtype("U3")) is None
        True
    """
    meta = dtype.metadata
    if meta is None:
        found = _BY_NUMPY.get(dtype)  # the common case: a plain native dtype
        if found is not None and dtype.isnative:
            return found
    elif "torch" in meta:
        return _BY_NAME.get(meta["torch"])
    if dtype.fields is not None or dtype.subdtype is not None:
        return None
    if not dtype.isnative:
        dtype = dtype.newbyteorder("=")
    return _BY_NUMPY.get(dtype)


# -- byte order ---------------------------------------------------------------------------


def swap_to_native(raw: Any, dtype: np.dtype) -> None:
    """Byte-swap a flat uint8 array of ``dtype`` values in place, from the other byte order.

    The one byte-swap of nbckpt (loads of every format, and the legacy writer):
    each scalar is reversed on its own, so a complex number swaps its real and
    imaginary parts separately (complex32 as two float16).

        >>> a = np.array([1 + 2j], np.complex64)
        >>> raw = a.view(np.uint8).copy()
        >>> swap_to_native(raw, a.dtype)
        >>> raw.view(a.dtype.newbyteorder()) == a
        array([ True])
    """
    swap_bytes(raw, swap_unit(dtype))


def swap_bytes(raw: Any, unit: int) -> None:
    """Reverse the bytes of each ``unit``-byte element of a flat uint8 array, in place."""
    if unit <= 1 or raw.size == 0:
        return
    if isinstance(raw, np.ndarray):
        raw.view(f"u{unit}").byteswap(inplace=True)
    else:  # a CuPy array: the same, written with indexing CuPy supports, on its GPU
        from ..backends import device_scope

        with device_scope(raw):
            pairs = raw.reshape(-1, unit)
            pairs[...] = pairs[:, ::-1].copy()


def swap_unit(dtype: np.dtype) -> int:
    """Bytes per swapped scalar: complex numbers swap each half separately.

        >>> swap_unit(np.dtype(np.complex128)), swap_unit(complex32), swap_unit(np.dtype("u8"))
        (8, 2, 8)
    """
    if dtype.fields is not None:  # complex32: two float16
        return dtype.fields[next(iter(dtype.fields))][0].itemsize
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
