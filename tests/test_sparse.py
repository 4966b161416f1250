"""Sparse tensors <-> scipy.sparse, with torch's invariants checked on load; meta tensors."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import nbckpt

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")


def torch_bytes(obj) -> io.BytesIO:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, buf)
    buf.seek(0)
    return buf


def nbckpt_bytes(obj) -> io.BytesIO:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    buf.seek(0)
    return buf


DENSE = torch.tensor([[0.0, 1.5, 0.0, 0.0], [2.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 5.0, 0.0]])


@pytest.mark.parametrize("layout, scipy_format", [
    ("coo", "coo"), ("csr", "csr"), ("csc", "csc"), ("bsr", "bsr"), ("bsc", "bsr"),
])
@pytest.mark.parametrize("weights_only", [True, False])
def test_torch_sparse_loads_as_scipy(layout, scipy_format, weights_only):
    make = {
        "coo": lambda d: d.to_sparse().coalesce(),
        "csr": lambda d: d.to_sparse_csr(),
        "csc": lambda d: d.to_sparse_csc(),
        "bsr": lambda d: d.to_sparse_bsr((2, 2)),
        "bsc": lambda d: d.to_sparse_bsc((2, 2)),
    }[layout]
    out = nbckpt.load(torch_bytes({"s": make(DENSE)}), weights_only=weights_only)["s"]
    assert sp.issparse(out) and out.format == scipy_format
    np.testing.assert_array_equal(out.toarray(), DENSE.numpy())


@pytest.mark.parametrize("matrix", [
    sp.coo_array(DENSE.numpy()), sp.csr_array(DENSE.numpy()), sp.csc_array(DENSE.numpy()),
    sp.bsr_array(DENSE.numpy(), blocksize=(2, 2)), sp.csr_matrix(DENSE.numpy()),
    sp.dia_array(DENSE.numpy()), sp.lil_array(DENSE.numpy()),
], ids=["coo", "csr", "csc", "bsr", "csr_matrix", "dia", "lil"])
def test_scipy_sparse_saves_in_torch_layout(matrix):
    expected_layout = {"coo": torch.sparse_coo, "csc": torch.sparse_csc, "bsr": torch.sparse_bsr}.get(
        matrix.format, torch.sparse_csr)
    out = torch.load(nbckpt_bytes({"m": matrix}), weights_only=True)["m"]
    assert out.layout == expected_layout
    np.testing.assert_array_equal(out.to_dense().numpy(), DENSE.numpy())
    back = nbckpt.load(nbckpt_bytes({"m": matrix}))["m"]
    np.testing.assert_array_equal(back.toarray(), DENSE.numpy())


def test_coo_coalesced_flag_round_trips():
    canonical = sp.coo_array(DENSE.numpy())
    assert canonical.has_canonical_format
    assert torch.load(nbckpt_bytes(canonical), weights_only=True).is_coalesced()
    duplicates = sp.coo_array((np.array([1.0, 2.0]), (np.array([0, 0]), np.array([1, 1]))), shape=(2, 2))
    t = torch.load(nbckpt_bytes(duplicates), weights_only=True)
    assert not t.is_coalesced() and t.to_dense()[0, 1].item() == 3.0


def invalid_compressed(layout, compressed, plain, values, size):
    make = {"csr": torch.sparse_csr_tensor, "csc": torch.sparse_csc_tensor,
            "bsr": torch.sparse_bsr_tensor, "bsc": torch.sparse_bsc_tensor}[layout]
    return make(torch.tensor(compressed), torch.tensor(plain), torch.tensor(values), size,
                check_invariants=False)


@pytest.mark.parametrize("layout, parts, message", [
    ("csr", ([1, 1, 2], [0, 1], [1.0, 2.0], (2, 2)), "`crow_indices[..., 0] == 0` is not satisfied."),
    ("csr", ([0, 1, 3], [0, 1], [1.0, 2.0], (2, 2)), "`crow_indices[..., -1] == nnz` is not satisfied."),
    ("csr", ([0, 3, 2], [0, 1], [1.0, 2.0], (2, 2)), "`0 <= crow_indices[..., 1:] - crow_indices[..., :-1] <= ncols`"),
    ("csr", ([0, 1, 2], [0, 5], [1.0, 2.0], (2, 2)), "`0 <= col_indices < ncols` is not satisfied."),
    ("csr", ([0, 2, 2], [1, 0], [1.0, 2.0], (2, 2)), "are sorted and distinct"),
    ("csr", ([0, 1], [0], [1.0], (2, 2)), "crow_indices.shape[-1] must be equal to the number of rows + 1"),
    ("csc", ([1, 1, 2], [0, 1], [1.0, 2.0], (2, 2)), "`ccol_indices[..., 0] == 0` is not satisfied."),
    ("csc", ([0, 1, 2], [0, -1], [1.0, 2.0], (2, 2)), "`0 <= row_indices < nrows` is not satisfied."),
    ("bsr", ([0, 1], [3], [[[1.0]]], (1, 2)), "`0 <= col_indices < ncols` is not satisfied."),
])
def test_invalid_compressed_tensors_are_refused(layout, parts, message):
    """Port of test_serialization_sparse_{csr,csc,bsr,bsc}_invalid."""
    buf = torch_bytes({"s": invalid_compressed(layout, *parts)})
    with pytest.raises(nbckpt.FormatError) as info:
        nbckpt.load(buf)
    assert message in str(info.value)
    with nbckpt.open(torch_bytes({"s": invalid_compressed(layout, *parts)})) as archive:  # listing is fine
        assert "s.values" in archive


@pytest.mark.parametrize("indices, message", [
    ([[0, 5], [1, 0]], "size is inconsistent with indices: for dim 0, size is 2 but found index 5"),
    ([[0, -1], [1, 0]], "found negative index -1 for dim 0"),
])
def test_invalid_coo_is_refused(indices, message):
    """Port of test_serialization_sparse_invalid."""
    t = torch.sparse_coo_tensor(torch.tensor(indices), torch.tensor([1.0, 2.0]), (2, 2), check_invariants=False)
    with pytest.raises(nbckpt.FormatError, match=message):
        nbckpt.load(torch_bytes({"s": t}))


def test_layouts_scipy_cannot_hold_are_refused():
    three_d = torch.zeros(2, 2, 2).to_sparse()
    with pytest.raises(nbckpt.FormatError, match="2-D"):
        nbckpt.load(torch_bytes(three_d))
    hybrid = torch.zeros(3, 3, 2).to_sparse(sparse_dim=2)
    with pytest.raises(nbckpt.FormatError, match="dense dimensions"):
        nbckpt.load(torch_bytes(hybrid))


def test_sparse_tensors_from_legacy_files():
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"s": DENSE.to_sparse_csr()}, buf, _use_new_zipfile_serialization=False)
    buf.seek(0)
    np.testing.assert_array_equal(nbckpt.load(buf)["s"].toarray(), DENSE.numpy())


# -- meta ------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights_only", [True, False])
def test_meta_tensors_load_as_meta_arrays(weights_only):
    """Port of test_meta_serialization (smaller): shapes survive, no data."""
    model = torch.nn.Conv2d(2000, 3200, kernel_size=3, device="meta")
    buf = torch_bytes(model.state_dict())
    assert len(buf.getvalue()) < 10_000
    state = nbckpt.load(buf, weights_only=weights_only)
    weight = state["weight"]
    assert isinstance(weight, nbckpt.MetaArray)
    assert weight.shape == (3200, 2000, 3, 3) and weight.dtype == np.float32
    assert weight.nbytes == 3200 * 2000 * 9 * 4 and weight.device == "meta"
    with pytest.raises(TypeError, match="has no data"):
        np.asarray(weight)


def test_meta_arrays_save_as_torch_meta_tensors():
    meta = nbckpt.MetaArray((4, 5), np.float16)
    out = torch.load(nbckpt_bytes({"m": meta, "real": np.ones(2)}), weights_only=True)
    assert out["m"].is_meta and tuple(out["m"].shape) == (4, 5) and out["m"].dtype == torch.float16
    back = nbckpt.load(nbckpt_bytes({"m": meta}))
    assert back["m"] == meta


def test_meta_records_in_archive():
    with nbckpt.open(torch_bytes({"w": torch.empty(3, 2, device="meta")})) as archive:
        record = archive.record("w")
        assert (record.location, record.shape, record.nbytes) == ("meta", (3, 2), 24)
        assert archive["w"] == nbckpt.MetaArray((3, 2), np.float32)
