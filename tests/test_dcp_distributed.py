"""DCP across processes: a 2-process gloo group (torch.multiprocessing) and a Dask LocalCluster.

- torch -> nbckpt: two ranks save DTensor-sharded parameters (along dim 0, along
  dim 1, and replicated) with ``dcp.save``; nbckpt reads each whole, equal to
  the unsharded original, without torch's process group.
- nbckpt -> torch: checkpoints nbckpt writes from NumPy and from Dask arrays on
  a LocalCluster of worker processes load with ``dcp.load`` in one process and
  in the 2-process group (each rank reading its own shard).
- Crash safety: a worker killed in the middle of a save leaves the previous
  checkpoint readable, by nbckpt and by torch.

Starting processes costs seconds on a small machine, so the group runs once
(every rank does all its checks and reports them) and the cluster is shared
by the module.
"""

from __future__ import annotations

import json
import os
import re
import socket
import warnings

import numpy as np
import pytest

import nbckpt
import nbckpt.dask
from nbckpt.formats.dcp import DcpReader
from tests.required import required

torch = required("torch")
dask = required("dask")
dask_array = required("dask.array")

pytestmark = pytest.mark.slow

SHAPE = (6, 4)


def _full(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, work: str) -> None:
    """One rank of the gloo group: save DTensors, then load nbckpt's checkpoints into DTensors."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        placements = {"dim0": [Shard(0)], "dim1": [Shard(1)], "replicated": [Replicate()]}

        def sharded(seed_of):
            return {name: distribute_tensor(torch.zeros(SHAPE) if seed_of is None
                                            else torch.from_numpy(_full(seed_of(name))), mesh, p)
                    for name, p in placements.items()}

        seeds = {"dim0": 1, "dim1": 2, "replicated": 3}
        dcp.save({"model": sharded(seeds.get), "step": 5}, checkpoint_id=os.path.join(work, "torch_made"))
        report = {}
        for made in ("numpy_made", "dask_made"):
            state = {"model": sharded(None)}
            dcp.load(state, checkpoint_id=os.path.join(work, made))
            for name, tensor in state["model"].items():
                local = tensor.to_local().numpy()
                full = _full(seeds[name])
                expected = {"dim0": np.array_split(full, world, 0)[rank],
                            "dim1": np.array_split(full, world, 1)[rank], "replicated": full}[name]
                report[f"{made}/{name}"] = [list(local.shape), bool(np.array_equal(local, expected))]
        with open(os.path.join(work, f"rank{rank}.json"), "w") as f:
            json.dump(report, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def cluster():
    """A Dask LocalCluster of 2 worker processes on 127.0.0.1 (a killed task is not retried)."""
    distributed = pytest.importorskip("distributed")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=":0", silence_logs=50) as lc:
            with distributed.Client(lc) as client:
                yield client


@pytest.fixture(scope="module")
def work(tmp_path_factory, cluster):
    """The folders every test reads: nbckpt-made (NumPy, Dask on the cluster), then torch-made by the group."""
    work = tmp_path_factory.mktemp("distributed")
    model = {name: _full(seed) for name, seed in (("dim0", 1), ("dim1", 2), ("replicated", 3))}
    nbckpt.save({"model": model}, work / "numpy_made", format="dcp")
    blocks = {name: cluster.persist(dask_array.from_array(a, chunks=(3, 2))) for name, a in model.items()}
    import distributed

    with distributed.get_task_stream(cluster) as stream:
        nbckpt.save({"model": blocks, "step": 9}, work / "dask_made", format="dcp")
    writes = [(t["worker"], t["key"]) for t in stream.data if "write_chunk_file" in str(t["key"])]
    (work / "writes.json").write_text(json.dumps({"writes": len(writes),
                                                  "workers": sorted({w for w, _ in writes}),
                                                  "cluster": sorted(cluster.scheduler_info()["workers"])}))
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(2, _free_port(), str(work)), nprocs=2, join=True)
    return work


def test_nbckpt_reads_dtensor_shards_saved_by_two_ranks(work):
    out = nbckpt.load(work / "torch_made")
    assert out["step"] == 5
    for name, seed in (("dim0", 1), ("dim1", 2), ("replicated", 3)):
        np.testing.assert_array_equal(out["model"][name], _full(seed))
    layout = DcpReader.open_folder(work / "torch_made").layout
    assert sorted(c.offsets for c in layout.tensors["model.dim0"].chunks) == [(0, 0), (3, 0)]
    assert sorted(c.offsets for c in layout.tensors["model.dim1"].chunks) == [(0, 0), (0, 2)]
    assert len(layout.tensors["model.replicated"].chunks) == 1
    assert layout.tensors["model.dim0"].files == ("__0_0.distcp", "__1_0.distcp") or \
        set(layout.tensors["model.dim0"].files) == {"__0_0.distcp", "__1_0.distcp"}


def test_each_rank_loads_its_shard_of_nbckpts_checkpoints(work):
    for rank in (0, 1):
        report = json.loads((work / f"rank{rank}.json").read_text())
        assert report == {
            f"{made}/{name}": [shape, True]
            for made in ("numpy_made", "dask_made")
            for name, shape in (("dim0", [3, 4]), ("dim1", [6, 2]), ("replicated", [6, 4]))
        }


def test_dask_blocks_were_written_as_chunks_by_the_cluster(work, cluster):
    writes = json.loads((work / "writes.json").read_text())
    assert writes["writes"] == 12  # one task per block, each run by a worker process of the cluster
    assert set(writes["workers"]) <= set(writes["cluster"]) and writes["workers"]
    layout = DcpReader.open_folder(work / "dask_made").layout
    entry = layout.tensors["model.dim1"]
    assert sorted(c.offsets for c in entry.chunks) == [(r, c) for r in (0, 3) for c in (0, 2)]
    assert len(layout.file_sizes) == 1 + 3 * 4  # the driver's file (step) and one per block
    state = nbckpt.dask.from_checkpoint(work / "dask_made")
    assert state["model"]["dim1"].chunks == ((3, 3), (2, 2)) and state["step"] == 9
    computed = cluster.compute(state["model"]["dim1"]).result()
    np.testing.assert_array_equal(computed, _full(2))


def test_dask_made_checkpoint_loads_in_one_process_and_converts(work, tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    state = {"model": {name: torch.zeros(SHAPE) for name in ("dim0", "dim1", "replicated")}, "step": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=work / "dask_made")
    assert state["step"] == 9
    np.testing.assert_array_equal(state["model"]["dim0"].numpy(), _full(1))
    dcp_to_torch_save(work / "dask_made", tmp_path / "whole.pt")
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    np.testing.assert_array_equal(whole["model"]["replicated"].numpy(), _full(3))


def _die_on_second_block(block, block_info=None):
    if block_info[0]["chunk-location"] == (1, 0):
        os._exit(13)  # the worker process dies in the middle of the save
    return block


def test_a_worker_killed_mid_save_leaves_the_previous_checkpoint(work, cluster, tmp_path):
    distributed = pytest.importorskip("distributed")
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(work / "dask_made", folder)
    before = sorted(os.listdir(folder))
    doomed = dask_array.from_array(np.ones(SHAPE, np.float32), chunks=(3, 4)).map_blocks(
        _die_on_second_block, dtype=np.float32)
    with pytest.raises(distributed.KilledWorker):
        nbckpt.save({"model": {"dim0": doomed}}, folder, format="dcp")
    cluster.wait_for_workers(2, timeout=60)
    after = sorted(os.listdir(folder))
    # The failed save removed what it wrote; a block still being written elsewhere when the save gave
    # up may leave its file behind, never referenced by .metadata, and removed by the next save.
    left = set(after) - set(before)
    assert set(before) <= set(after) and all(re.fullmatch(r"__\d+_[0-9a-f]{12}\.distcp", n) for n in left)
    np.testing.assert_array_equal(nbckpt.load(folder)["model"]["dim1"], _full(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = {"model": {"dim1": torch.zeros(SHAPE)}}
        import torch.distributed.checkpoint as dcp

        dcp.load(target, checkpoint_id=folder)
    np.testing.assert_array_equal(target["model"]["dim1"].numpy(), _full(2))
    nbckpt.save({"model": {"dim0": np.zeros(2)}}, folder, format="dcp")
    assert not left & set(os.listdir(folder))
