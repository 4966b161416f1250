"""``nbckpt.dask.from_checkpoint``: lazy Dask arrays over DCP folders, sharded checkpoints and single files.

These run on Dask's local threads; the same functions on a LocalCluster of
worker processes are tested in ``test_dcp_distributed.py``.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

import nbckpt
import nbckpt.dask
from nbckpt.formats.dcp_metadata import (ChunkStorageMetadata, MetadataIndex, dump_metadata, read_metadata)
from tests.required import required
from gpu_helpers import fake_cupy  # noqa: F401 - fixture

torch = required("torch")
dask_array = required("dask.array")


def test_importing_nbckpt_does_not_import_dask():
    import subprocess

    code = "import nbckpt, nbckpt.dask, sys; print('dask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_blocks_are_the_checkpoints_chunks_and_read_lazily(tmp_path):
    x = np.arange(10 * 6, dtype=np.int32).reshape(10, 6)
    nbckpt.save({"x": dask_array.from_array(x, chunks=(4, 3)), "lr": 0.5}, tmp_path / "c", format="dcp")
    state = nbckpt.dask.from_checkpoint(tmp_path / "c")
    assert state["lr"] == 0.5
    assert state["x"].chunks == ((4, 4, 2), (3, 3)) and state["x"].dtype == np.int32
    assert state["x"][4:8, 3:].compute().tolist() == x[4:8, 3:].tolist()
    assert state["x"].compute().tolist() == x.tolist()


def test_rechunk_on_request(tmp_path):
    x = np.arange(12.0)
    nbckpt.save({"x": dask_array.from_array(x, chunks=3)}, tmp_path / "c", format="dcp")
    state = nbckpt.dask.from_checkpoint(tmp_path / "c", chunks=6)
    assert state["x"].chunks == ((6, 6),) and state["x"].sum().compute() == 66.0


def test_torch_made_checkpoint_nests_like_the_state_dict(tmp_path):
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "opt": {"param_groups": [{"lr": 0.1}]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(tmp_path / "c"))
    lazy = nbckpt.dask.from_checkpoint(tmp_path / "c")
    assert lazy["opt"] == {"param_groups": [{"lr": 0.1}]}
    assert lazy["model"]["w"].compute().tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_chunks_that_are_not_a_grid_give_blocks_of_all_boundaries(tmp_path):
    """Rows 0-1 are one chunk; rows 2-3 are split at column 1: blocks are the grid of every cut."""
    x = np.arange(16.0).reshape(4, 4)
    folder = tmp_path / "c"
    parts = {(0, 0): x[:2], (2, 0): x[2:, :1], (2, 1): x[2:, 1:]}
    # write three chunks with the real writer (three 1-block Dask arrays), then describe them as one tensor
    nbckpt.save({f"p{i}": dask_array.from_array(np.ascontiguousarray(p), chunks=p.shape)
                 for i, p in enumerate(parts.values())}, folder, format="dcp")
    md = read_metadata((folder / ".metadata").read_bytes())
    tensor = md.state_dict_metadata.pop("p0")
    infos = [md.storage_data.pop(MetadataIndex(f"p{i}", (0, 0))) for i in range(3)]
    for i in (1, 2):
        md.state_dict_metadata.pop(f"p{i}")
    tensor.size = (4, 4)
    tensor.chunks = [ChunkStorageMetadata(o, p.shape) for o, p in parts.items()]
    md.state_dict_metadata["x"] = tensor
    md.planner_data = {"x": ("x",)}
    md.storage_data = {MetadataIndex("x", o): info for o, info in zip(parts, infos)}
    (folder / ".metadata").write_bytes(dump_metadata(md))
    lazy = nbckpt.dask.from_checkpoint(folder)["x"]
    assert lazy.chunks == ((2, 2), (1, 3))
    assert lazy.compute().tolist() == x.tolist()
    assert nbckpt.load(folder)["x"].tolist() == x.tolist()


def test_single_file_arrays_are_one_block_each(tmp_path):
    nbckpt.save({"a": np.arange(5.0), "b": [np.ones((2, 2), np.float16), "note"]}, tmp_path / "m.pt")
    state = nbckpt.dask.from_checkpoint(tmp_path / "m.pt")
    assert state["b"][1] == "note"
    assert state["a"].chunks == ((5,),) and state["a"].compute().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert state["b"][0].dtype == np.float16 and state["b"][0].compute().tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_sharded_index_checkpoint(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.arange(4, dtype=np.float32)}, str(tmp_path / "model-1.safetensors"))
    save_file({"b": np.ones(3, dtype=np.int64)}, str(tmp_path / "model-2.safetensors"))
    index = {"metadata": {}, "weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    state = nbckpt.dask.from_checkpoint(tmp_path)
    assert state["a"].compute().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert state["b"].compute().tolist() == [1, 1, 1]


def test_a_file_object_is_refused_with_the_reason(tmp_path):
    with pytest.raises(TypeError, match="needs a local path"):
        with open(__file__, "rb") as f:
            nbckpt.dask.from_checkpoint(f)


def test_a_function_map_location_is_refused(tmp_path):
    nbckpt.save({"a": np.arange(3.0)}, tmp_path / "c", format="dcp")
    with pytest.raises(ValueError, match="not a function"):
        nbckpt.dask.from_checkpoint(tmp_path / "c", map_location=lambda s, loc: None)


def test_map_location_puts_blocks_and_loads_on_a_gpu(tmp_path, fake_cupy):
    """With CuPy's test double (2 GPUs): a worker's block and nbckpt.load's tensors land on cuda:1.

    (Dask's own CuPy dispatch needs the real CuPy: ``test_blocks_on_a_real_gpu`` runs on GPU machines.)
    """
    import cupy

    from nbckpt.formats.dcp import DcpReader

    x = np.arange(12.0).reshape(3, 4)
    nbckpt.save({"x": dask_array.from_array(x, chunks=(2, 4)), "n": 1}, tmp_path / "c", format="dcp")
    entry = DcpReader.open_folder(tmp_path / "c").layout.tensors["x"]
    chunk = next(c for c in entry.chunks if c.offsets == (0, 0))
    block = nbckpt.dask.read_dcp_block(str(tmp_path / "c"), chunk, "float64", (), "cuda:1")
    assert isinstance(block, cupy.ndarray) and block.device.id == 1
    assert block.get().tolist() == x[:2].tolist()
    loaded = nbckpt.load(tmp_path / "c", map_location={"cpu": "cuda:1"})
    assert isinstance(loaded["x"], cupy.ndarray) and loaded["x"].device.id == 1
    assert loaded["x"].get().tolist() == x.tolist() and loaded["n"] == 1
    nbckpt.save({"x": loaded["x"]}, tmp_path / "from_gpu", format="dcp")  # a CuPy array, one writer
    assert nbckpt.load(tmp_path / "from_gpu")["x"].tolist() == x.tolist()


@pytest.mark.gpu
def test_blocks_on_a_real_gpu(tmp_path):
    from nbckpt.backends import gpu_count

    if gpu_count() == 0:
        pytest.skip("CuPy finds no CUDA device")
    import cupy

    x = np.arange(12.0).reshape(3, 4)
    nbckpt.save({"x": dask_array.from_array(x, chunks=(2, 2))}, tmp_path / "c", format="dcp")
    lazy = nbckpt.dask.from_checkpoint(tmp_path / "c", map_location="cuda:0")["x"]
    assert isinstance(lazy._meta, cupy.ndarray)
    assert cupy.asnumpy(lazy.compute()).tolist() == x.tolist()


def test_scalars_and_empty_arrays_round_trip(tmp_path):
    import torch.distributed.checkpoint as dcp

    state = {"s": np.array(3.0), "e": np.zeros((0, 3), np.float32),
             "de": dask_array.zeros((0, 4), chunks=(1, 2)), "d0": dask_array.from_array(np.array(2.0))}
    nbckpt.save(state, tmp_path / "c", format="dcp")
    loaded = nbckpt.load(tmp_path / "c")
    assert {k: (v.shape, v.tolist()) for k, v in loaded.items()} == {
        "s": ((), 3.0), "e": ((0, 3), []), "de": ((0, 4), []), "d0": ((), 2.0)}
    lazy = nbckpt.dask.from_checkpoint(tmp_path / "c")
    assert {k: v.compute().tolist() for k, v in lazy.items()} == {"s": 3.0, "e": [], "de": [], "d0": 2.0}
    target = {"s": torch.tensor(0.0, dtype=torch.float64), "e": torch.zeros(0, 3),
              "de": torch.zeros(0, 4, dtype=torch.float64), "d0": torch.tensor(0.0, dtype=torch.float64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(target, checkpoint_id=str(tmp_path / "c"))
    assert (target["s"].item(), target["d0"].item(), tuple(target["e"].shape)) == (3.0, 2.0, (0, 3))
