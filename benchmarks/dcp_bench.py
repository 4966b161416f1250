"""Sharded checkpoints: nbckpt + Dask across 1, 2, 4 worker processes against torch.distributed.checkpoint.

    python -m benchmarks.dcp_bench                    # 4 GiB, workers 1 2 4
    python -m benchmarks.dcp_bench --gib 1 --workers 1 2 --tensors 4

The same float32 tensors (``--tensors`` of them, ``--gib`` GiB in all) are:

- saved by ``torch.distributed.checkpoint.save`` (one process, torch's default
  ``FileSystemWriter``: one file, fsynced) and loaded back by
  ``torch.distributed.checkpoint.load`` into preallocated tensors;
- made by the workers of a Dask ``LocalCluster`` (processes, 127.0.0.1; blocks
  of ``--block-mib``; same shapes, values drawn there) and saved by ``nbckpt.save(state, folder,
  format="dcp")`` — each worker writes its own blocks, fsynced — then loaded
  back with ``nbckpt.dask.from_checkpoint`` and persisted on the workers (each
  worker reads the blocks it computes);
- loaded by ``nbckpt.load(folder)`` in one process, without Dask.

Each figure is the median of ``--runs`` runs (page cache warm: the files were
just written). Times in seconds, throughput in GiB/s, and each time as a ratio
to torch's for the same operation. ``--json PATH`` also writes every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings

import numpy as np

GIB = 1 << 30


def _tensors(gib: float, count: int) -> dict[str, np.ndarray]:
    rows = max(1, int(gib * GIB / count / 4 / 1024))
    rng = np.random.default_rng(0)
    return {f"layer{i}.weight": rng.standard_normal((rows, 1024), dtype=np.float32) for i in range(count)}


class _Shape:
    """Only the shape of a tensor (what the Dask runs need to make their own)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _torch_runs(arrays: dict, folder: str, runs: int) -> dict[str, list[float]]:
    import torch
    import torch.distributed.checkpoint as dcp

    state = {name: torch.from_numpy(a) for name, a in arrays.items()}
    target = {name: torch.empty_like(t) for name, t in state.items()}
    found: dict[str, list[float]] = {"save": [], "load": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(runs):
            shutil.rmtree(folder, ignore_errors=True)
            found["save"].append(_timed(lambda: dcp.save(state, checkpoint_id=folder)))
            found["load"].append(_timed(lambda: dcp.load(target, checkpoint_id=folder)))
    assert all(torch.equal(target[n], state[n]) for n in state)
    return found


def _dask_runs(arrays: dict, folder: str, workers: int, block_mib: int, runs: int) -> dict[str, list[float]]:
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import nbckpt
    import nbckpt.dask

    found: dict[str, list[float]] = {"save": [], "load": []}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0", silence_logs=50, memory_limit=0) as cluster, Client(cluster) as client:
        rows_per_block = max(1, block_mib * (1 << 20) // (4 * 1024))
        rng = da.random.default_rng(0)
        # Made on the workers, as a training job's shards are: the blocks live there before the clock starts.
        state = {name: client.persist(rng.standard_normal(a.shape, chunks=(rows_per_block, 1024)).astype(np.float32))
                 for name, a in arrays.items()}
        wait(list(state.values()))
        warm = os.path.join(folder + "-warm")  # workers import nbckpt once, outside the timings
        nbckpt.save({"w": da.ones((workers * 2, 4), chunks=(1, 4))}, warm, format="dcp")
        wait(client.persist(list(nbckpt.dask.from_checkpoint(warm).values())))
        shutil.rmtree(warm, ignore_errors=True)
        for _ in range(runs):
            shutil.rmtree(folder, ignore_errors=True)
            found["save"].append(_timed(lambda: nbckpt.save(state, folder, format="dcp", progress=False)))

            def load():
                lazy = nbckpt.dask.from_checkpoint(folder)
                wait(list(client.persist(list(lazy.values()))))

            found["load"].append(_timed(load))
    return found


def _single_process_load(folder: str, runs: int) -> list[float]:
    import nbckpt

    return [_timed(lambda: nbckpt.load(folder, progress=False)) for _ in range(runs)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0, help="total size of the tensors (default 4)")
    parser.add_argument("--tensors", type=int, default=8, help="how many tensors (default 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="Dask worker counts")
    parser.add_argument("--block-mib", type=int, default=128, help="Dask block size in MiB (default 128)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write every run here")
    args = parser.parse_args(argv)

    arrays = _tensors(args.gib, args.tensors)
    nbytes = sum(a.nbytes for a in arrays.values())
    root = tempfile.mkdtemp(dir=args.dir, prefix="dcp-bench-")
    results: dict[str, dict[str, list[float]]] = {}
    try:
        results["torch dcp (1 process)"] = _torch_runs(arrays, os.path.join(root, "torch"), args.runs)
        shutil.rmtree(os.path.join(root, "torch"), ignore_errors=True)
        shapes = {name: _Shape(a.shape) for name, a in arrays.items()}
        del arrays  # the workers make their own copies: keep one copy of the data in memory at a time
        for workers in args.workers:
            name = f"nbckpt + Dask ({workers} worker{'s' if workers > 1 else ''})"
            results[name] = _dask_runs(shapes, os.path.join(root, f"dask{workers}"), workers, args.block_mib,
                                       args.runs)
        last = os.path.join(root, f"dask{args.workers[-1]}")
        results["nbckpt.load (1 process)"] = {"load": _single_process_load(last, args.runs)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _print(results, nbytes, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bytes": nbytes, "cpus": os.cpu_count(), "runs": results}, f, indent=1)
    return results


def _print(results: dict, nbytes: int, args) -> None:
    base = {op: statistics.median(t) for op, t in results["torch dcp (1 process)"].items()}
    print(f"{nbytes / GIB:.2f} GiB in {args.tensors} float32 tensors, {os.cpu_count()} CPUs, "
          f"median of {args.runs} runs; ratio = time / torch's time")
    print(f"{'':28} {'save s':>8} {'GiB/s':>7} {'ratio':>6}   {'load s':>8} {'GiB/s':>7} {'ratio':>6}")
    for name, ops in results.items():
        cells = []
        for op in ("save", "load"):
            if op in ops:
                t = statistics.median(ops[op])
                cells.append(f"{t:8.2f} {nbytes / GIB / t:7.2f} {t / base[op]:6.2f}")
            else:
                cells.append(f"{'-':>8} {'-':>7} {'-':>6}")
        print(f"{name:28} {cells[0]}   {cells[1]}")


if __name__ == "__main__":
    main()
