"""Run one timed operation of one library in this (fresh) process; print a JSON line.

    python -m benchmarks.worker --lib nbckpt --op load --scenario big --path /tmp/x.pt

Only the operation itself is timed: wall time, and the CPU time of this process
(which other processes on a shared machine do not inflate; threads of the
process add theirs). Memory is reported as the peak RSS of the
process (``VmHWM``) and the RSS just before the operation, so that
``peak - before`` is what the operation added (for loads: imports are already
done, no data exists yet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from .scenarios import build, probe_name

LIBRARIES = ("nbckpt", "nbckpt-scratch", "torch", "safetensors", "numpy", "plain", "plain-durable")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent process.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Make VmHWM the current RSS (Linux: ``5`` to clear_refs), so the peak is the operation's.

    Without it, a save's peak would be hidden under the peak of building its
    data (temporaries included) just before.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _unique(data: dict) -> dict:
    """Drop names whose array is already present under another name (tied weights)."""
    seen, out = set(), {}
    for key, value in data.items():
        if id(value) not in seen:
            seen.add(id(value))
            out[key] = value
    return out


def _as_plain_numpy(array: np.ndarray) -> np.ndarray:
    # .npz and safetensors.numpy have no bfloat16: store the raw 16 bits.
    return array.view(np.uint16) if array.dtype.kind == "V" or array.dtype.isbuiltin != 1 else array


# -- per library: (prepare, op) pairs ------------------------------------------------------


def nbckpt_ops(path: str, probe: str):
    import nbckpt

    return {
        "save": lambda data: nbckpt.save(data, path, progress=False),
        "load": lambda _: nbckpt.load(path, progress=False),
        "load_mmap": lambda _: nbckpt.load(path, mmap=True),
        "open_list": lambda _: [r.name for r in nbckpt.open(path).records],
        "load_one": lambda _: nbckpt.open(path)[probe],
    }


def nbckpt_scratch_ops(path: str, probe: str):
    """nbckpt's save without fsync (``durable=False``): what torch.save does."""
    import nbckpt

    return {"save": lambda data: nbckpt.save(data, path, progress=False, durable=False)}


def torch_ops(path: str, probe: str):
    import torch

    def to_torch(data):
        tensors, made = {}, {}
        for key, value in data.items():
            if id(value) not in made:  # tied weights stay one tensor
                if value.dtype.isbuiltin != 1:  # ml_dtypes bfloat16
                    made[id(value)] = torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
                else:
                    made[id(value)] = torch.from_numpy(value)
            tensors[key] = made[id(value)]
        return tensors

    return {
        "prepare_save": to_torch,
        "save": lambda tensors: torch.save(tensors, path),
        "load": lambda _: torch.load(path, weights_only=True),
        "load_mmap": lambda _: torch.load(path, mmap=True, weights_only=True),
        # torch has no lazy listing: a mapped load is the closest (keys only).
        "open_list": lambda _: list(torch.load(path, mmap=True, weights_only=True)),
        "load_one": lambda _: torch.load(path, mmap=True, weights_only=True)[probe].clone(),
    }


def safetensors_ops(path: str, probe: str):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    def one():
        with safe_open(path, framework="np") as f:
            return f.get_tensor(probe)

    def keys():
        with safe_open(path, framework="np") as f:
            return list(f.keys())

    return {
        # safetensors refuses shared tensors: tied weights are saved once.
        "prepare_save": lambda data: {k: _as_plain_numpy(v) for k, v in _unique(data).items()},
        "save": lambda data: save_file(data, path),
        "load": lambda _: load_file(path),
        "open_list": lambda _: keys(),
        "load_one": lambda _: one(),
    }


def numpy_ops(path: str, probe: str):
    def one():
        with np.load(path) as f:
            return f[probe]

    def keys():
        with np.load(path) as f:
            return list(f.files)

    def load_all():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}

    return {
        "prepare_save": lambda data: {k: _as_plain_numpy(v) for k, v in _unique(data).items()},
        "save": lambda data: np.savez(path, **data),
        "load": lambda _: load_all(),
        "open_list": lambda _: keys(),
        "load_one": lambda _: one(),
    }


def plain_ops(path: str, probe: str):
    """The physical limit: the same bytes written and read with no format at all.

    The array sizes go to a small side file, so a load reads them without
    rebuilding the data (which would take memory and time the other loads do not).
    """
    sizes_path = path + ".sizes.json"

    def save(data):
        arrays = list(_unique(data).values())
        with open(path, "wb") as f:
            for value in arrays:
                f.write(memoryview(np.ascontiguousarray(value).view(np.uint8)))
        with open(sizes_path, "w") as f:
            json.dump([a.nbytes for a in arrays], f)

    def load(_):
        with open(sizes_path) as f:
            sizes = json.load(f)
        out = []
        with open(path, "rb", buffering=0) as f:
            for size in sizes:
                buffer = np.empty(size, dtype=np.uint8)
                f.readinto(memoryview(buffer))
                out.append(buffer)
        return out

    return {"save": save, "load": load}


def plain_durable_ops(path: str, probe: str):
    """The limit of a durable save: the same bytes written, then fsynced with their folder."""
    plain = plain_ops(path, probe)

    def save(data):
        plain["save"](data)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    return {"save": save}


OPS = {"nbckpt": nbckpt_ops, "nbckpt-scratch": nbckpt_scratch_ops, "torch": torch_ops, "safetensors": safetensors_ops, "numpy": numpy_ops,
       "plain": plain_ops, "plain-durable": plain_durable_ops}


_ALL = ("save", "load", "load_mmap", "open_list", "load_one")
#: The operations each library has (the others are reported as skipped without starting a process).
AVAILABLE = {"nbckpt": _ALL, "nbckpt-scratch": ("save",), "torch": _ALL,
             "safetensors": ("save", "load", "open_list", "load_one"),
             "numpy": ("save", "load", "open_list", "load_one"), "plain": ("save", "load"),
             "plain-durable": ("save",)}


def check(lib: str, op: str, result, data: dict, probe: str) -> None:
    """The loaded values are the saved ones (bits), whatever the library returned."""
    def bits(a) -> np.ndarray:
        if hasattr(a, "numpy"):
            import torch

            a = (a.view(torch.int16) if a.dtype == torch.bfloat16 else a).numpy()
        return np.ascontiguousarray(a).reshape(-1).view(np.uint8)

    if op == "load_one":
        np.testing.assert_array_equal(bits(result), bits(data[probe]))
    elif op in ("load", "load_mmap") and lib != "plain":
        expected = _unique(data) if lib in ("safetensors", "numpy") else data
        assert set(result) == set(expected), (set(result) ^ set(expected))
        for key, value in expected.items():
            np.testing.assert_array_equal(bits(result[key]), bits(value))
    elif op == "open_list":
        expected = _unique(data) if lib in ("safetensors", "numpy") else data
        assert sorted(result) == sorted(expected)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=LIBRARIES, required=True)
    parser.add_argument("--op", required=True)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check", action="store_true", help="verify loaded values (not timed)")
    args = parser.parse_args(argv)

    probe = probe_name(args.scenario, args.quick)
    ops = OPS[args.lib](args.path, probe)
    if args.op not in ops:
        print(json.dumps({"skipped": f"{args.lib} has no {args.op}"}))
        return 0
    data = None
    if args.op == "save" or args.check:
        data = build(args.scenario, args.quick)
    argument = None
    if args.op == "save":
        argument = ops.get("prepare_save", lambda d: d)(data)
    # Let the kernel write out what earlier runs left dirty: otherwise a save is
    # throttled by the previous run's writeback, and the order of runs decides.
    os.sync()
    reset_peak_rss()
    before = rss_bytes()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = ops[args.op](argument)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = peak_rss_bytes()
    if args.check:
        check(args.lib, args.op, result, data, probe)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "rss_before": before, "rss_peak": peak,
                      "file_bytes": os.path.getsize(args.path) if os.path.exists(args.path) else 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
