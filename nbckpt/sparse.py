"""Sparse tensors: torch's layouts <-> ``scipy.sparse`` (and ``cupyx.scipy.sparse`` on GPUs).

torch pickles a sparse tensor as ``_rebuild_sparse_tensor(layout, parts)``:

==========  ==============================================================
layout      parts
==========  ==============================================================
sparse_coo  (indices[2, nnz] int64, values[nnz], size, is_coalesced)
sparse_csr  (crow_indices[rows+1], col_indices[nnz], values[nnz], size)
sparse_csc  (ccol_indices[cols+1], row_indices[nnz], values[nnz], size)
sparse_bsr  (crow_indices[rows/bh+1], col_indices[nnzb], values[nnzb, bh, bw], size)
sparse_bsc  (ccol_indices[cols/bw+1], row_indices[nnzb], values[nnzb, bh, bw], size)
==========  ==============================================================

They load as ``scipy.sparse`` arrays of the same format (BSC, which scipy does
not have, as the equivalent ``bsr_array``), after the invariants torch checks:
indices in range, compressed indices starting at 0, never decreasing and ending
at nnz, plain indices sorted and distinct within each row (column), consistent
sizes. scipy holds 2-D matrices only: batched or hybrid tensors are refused.
Saving a scipy sparse array writes torch's layout of the same name (``dia``,
``dok`` and ``lil`` are written as CSR).

scipy is imported only when a sparse tensor is met.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DeviceError, FormatError

__all__ = ["is_sparse", "SparseParts", "to_torch_parts", "from_torch_parts", "LAYOUT_NAMES"]

LAYOUT_NAMES = ("sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc")


def is_sparse(obj: Any) -> bool:
    """A ``scipy.sparse`` or ``cupyx.scipy.sparse`` array/matrix (checked without importing scipy)."""
    module = type(obj).__module__
    return module.startswith(("scipy.sparse", "cupyx.scipy.sparse")) and hasattr(obj, "format")


@dataclass
class SparseParts:
    """A sparse matrix as torch stores it: a layout name, index and value arrays, a size."""

    layout: str  # "sparse_csr", ...
    arrays: tuple  # compressed/plain indices and values (or indices and values for COO)
    size: tuple[int, int]
    is_coalesced: bool | None = None  # COO only


def _scipy_sparse(device: bool):
    name = "cupyx.scipy.sparse" if device else "scipy.sparse"
    try:
        return importlib.import_module(name)
    except ImportError as err:
        package = "cupy-cuda12x" if device else "scipy"
        raise ImportError(
            f"the checkpoint holds sparse tensors, which load as {name} arrays: install "
            f"{package} (pip install {package})"
        ) from err


def to_torch_parts(obj: Any) -> SparseParts:
    """The parts torch stores for a scipy (or cupyx) sparse matrix."""
    fmt = obj.format
    if fmt not in ("coo", "csr", "csc", "bsr"):
        obj, fmt = obj.tocsr(), "csr"
    shape = tuple(int(n) for n in obj.shape)
    if fmt == "coo":
        xp = np if isinstance(obj.data, np.ndarray) else importlib.import_module("cupy")
        indices = xp.stack([xp.asarray(obj.row), xp.asarray(obj.col)]).astype(np.int64)
        return SparseParts("sparse_coo", (indices, obj.data), shape, bool(obj.has_canonical_format))
    compressed, plain = obj.indptr, obj.indices
    if plain.dtype != compressed.dtype:
        plain = plain.astype(compressed.dtype)
    return SparseParts(f"sparse_{fmt}", (compressed, plain, obj.data), shape)


def _host(a: Any) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.get()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise FormatError(message)


def _check_index_dtype(*arrays: Any, names: tuple[str, ...]) -> None:
    for array, name in zip(arrays, names):
        _require(array.dtype in (np.int32, np.int64), f"{name} must be int32 or int64, got {array.dtype}")
    if len(arrays) == 2:
        _require(arrays[0].dtype == arrays[1].dtype,
                 f"{names[0]} and {names[1]} must have the same dtype, got {arrays[0].dtype} and {arrays[1].dtype}")


def _check_size(size: Any) -> tuple[int, int]:
    _require(isinstance(size, tuple) and all(isinstance(n, int) and n >= 0 for n in size),
             f"sparse size must be a tuple of non-negative ints, got {size!r}")
    _require(len(size) == 2, f"scipy holds 2-D sparse matrices; this tensor has size {size}")
    return size


def _check_coo(indices: Any, values: Any, size: tuple[int, int], coalesced: Any) -> None:
    _check_index_dtype(indices, names=("indices",))
    _require(indices.ndim == 2 and indices.shape[0] == 2,
             f"indices must have shape (2, nnz) for a 2-D sparse tensor, got {indices.shape}")
    nnz = indices.shape[1]
    _require(values.ndim == 1, f"values with extra dense dimensions (shape {values.shape}) cannot be held by scipy")
    _require(values.shape[0] == nnz, f"indices hold {nnz} entries but values hold {values.shape[0]}")
    host = _host(indices)
    for dim in range(2):
        if nnz:
            low, high = int(host[dim].min()), int(host[dim].max())
            _require(low >= 0, f"found negative index {low} for dim {dim}")
            _require(high < size[dim], f"size is inconsistent with indices: for dim {dim}, size is "
                                       f"{size[dim]} but found index {high}")
    if coalesced and nnz > 1:
        linear = host[0].astype(np.int64) * max(size[1], 1) + host[1]
        _require(bool(np.all(np.diff(linear) > 0)),
                 "the tensor claims to be coalesced but its indices are not sorted and distinct")


def _check_compressed(layout: str, compressed: Any, plain: Any, values: Any, size: tuple[int, int]) -> None:
    by_row = layout in ("sparse_csr", "sparse_bsr")
    cname, pname = ("crow_indices", "col_indices") if by_row else ("ccol_indices", "row_indices")
    _check_index_dtype(compressed, plain, names=(cname, pname))
    _require(compressed.ndim == 1 and plain.ndim == 1,
             f"{cname} and {pname} must be 1-D (batched sparse tensors cannot be held by scipy)")
    blocked = layout in ("sparse_bsr", "sparse_bsc")
    if blocked:
        _require(values.ndim == 3, f"block sparse values must have shape (nnzb, bh, bw), got {values.shape}")
        bh, bw = values.shape[1:]
        _require(bh > 0 and bw > 0 and size[0] % bh == 0 and size[1] % bw == 0,
                 f"size {size} must be divisible by the blocksize ({bh}, {bw})")
        rows, cols = size[0] // bh, size[1] // bw
    else:
        _require(values.ndim == 1, f"values with extra dense dimensions (shape {values.shape}) cannot be held by scipy")
        rows, cols = size
    n_compressed, n_plain = (rows, cols) if by_row else (cols, rows)
    nnz = plain.shape[0]
    _require(compressed.shape[0] == n_compressed + 1,
             f"{cname}.shape[-1] must be equal to the number of {'rows' if by_row else 'columns'} + 1 "
             f"(={n_compressed + 1}), but got {compressed.shape[0]}")
    _require(values.shape[0] == nnz, f"{pname} holds {nnz} entries but values hold {values.shape[0]}")
    c, p = _host(compressed).astype(np.int64), _host(plain).astype(np.int64)
    _require(int(c[0]) == 0, f"`{cname}[..., 0] == 0` is not satisfied.")
    _require(int(c[-1]) == nnz, f"`{cname}[..., -1] == nnz` is not satisfied.")
    steps = np.diff(c)
    _require(bool(np.all((steps >= 0) & (steps <= n_plain))),
             f"`0 <= {cname}[..., 1:] - {cname}[..., :-1] <= {'ncols' if by_row else 'nrows'}` is not satisfied.")
    if nnz:
        _require(int(p.min()) >= 0 and int(p.max()) < n_plain,
                 f"`0 <= {pname} < {'ncols' if by_row else 'nrows'}` is not satisfied.")
        owner = np.repeat(np.arange(n_compressed), steps)
        same = owner[1:] == owner[:-1]
        _require(bool(np.all(np.diff(p)[same] > 0)),
                 f"`{pname}[..., {cname}[..., i - 1]:{cname}[..., i]] for all i = 1, ..., "
                 f"{'nrows' if by_row else 'ncols'} are sorted and distinct along the last dimension "
                 f"values` is not satisfied.")


def from_torch_parts(layout: str, parts: Any, size: Any = None) -> Any:
    """Validate torch's parts of a sparse tensor and build the scipy (or cupyx) matrix."""
    _require(layout in LAYOUT_NAMES, f"unknown sparse layout {layout!r}")
    _require(isinstance(parts, tuple), f"sparse tensor data must be a tuple, got {type(parts).__name__}")
    on_device = not all(isinstance(a, np.ndarray) for a in parts if hasattr(a, "dtype"))
    if layout == "sparse_coo":
        _require(len(parts) in (3, 4), f"COO data must be (indices, values, size[, is_coalesced]), got {len(parts)} items")
        indices, values, size = parts[:3]
        coalesced = parts[3] if len(parts) == 4 else None
        _require(getattr(values, "ndim", 1) == 1,
                 f"values with extra dense dimensions (shape {values.shape}) cannot be held by scipy")
        size = _check_size(size)
        _check_coo(indices, values, size, coalesced)
        module = _scipy_sparse(on_device)
        cls = getattr(module, "coo_array", None) or module.coo_matrix
        result = cls((values, (indices[0], indices[1])), shape=size)
        if coalesced:
            result.has_canonical_format = True
        return result
    _require(len(parts) == 4, f"compressed sparse data must be (compressed, plain, values, size), got {len(parts)} items")
    compressed, plain, values, size = parts
    size = _check_size(size)
    _check_compressed(layout, compressed, plain, values, size)
    module = _scipy_sparse(on_device)
    fmt = layout.removeprefix("sparse_")
    if fmt in ("csr", "csc"):
        cls = getattr(module, f"{fmt}_array", None) or getattr(module, f"{fmt}_matrix")
        return cls((values, plain, compressed), shape=size)
    if on_device:
        raise DeviceError(f"cupyx.scipy.sparse has no block sparse ({fmt.upper()}) format; load with map_location='cpu'")
    if fmt == "bsr":
        return module.bsr_array((values, plain, compressed), shape=size)
    # BSC of A is BSR of A.T with each block transposed; scipy has no BSC.
    transposed = module.bsr_array((values.transpose(0, 2, 1), plain, compressed), shape=(size[1], size[0]))
    return transposed.T.tobsr()
