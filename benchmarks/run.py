"""nbckpt against torch, safetensors, NumPy and a plain file, on the same data, in one run.

    python -m benchmarks.run                  # all scenarios, 5 runs each (several minutes)
    python -m benchmarks.run --quick          # tiny data, 1 run: a smoke test
    python -m benchmarks.run --scenarios big small --runs 3 --libs nbckpt torch

Every figure is the median of ``--runs`` runs, each in a fresh Python process
(so imports, caches and allocator state are the same for every library), with
the page cache warm (the files were just written; dropping the cache needs
root rights this machine does not grant — the report says which it was). Peak
memory is the growth of the process's resident set during the operation.

The output is a table of medians with each library's time as a ratio to
nbckpt's, and a JSON file with every run (``--json``, default
``benchmarks/results/latest.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .scenarios import SCENARIOS
from .worker import LIBRARIES

ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS = {"nbckpt": ".pt", "nbckpt-scratch": ".pt", "torch": ".pt", "safetensors": ".safetensors", "numpy": ".npz", "plain": ".bin"}
OP_TITLES = {"save": "save", "load": "load", "load_mmap": "load(mmap)", "open_list": "open + list",
             "load_one": "load one record"}


def try_drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def run_worker(lib: str, op: str, scenario: str, path: str, quick: bool, check: bool) -> dict:
    command = [sys.executable, "-m", "benchmarks.worker", "--lib", lib, "--op", op, "--scenario", scenario,
               "--path", path]
    if quick:
        command.append("--quick")
    if check:
        command.append("--check")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{lib} {op} {scenario} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(scenarios, libs, runs: int, quick: bool, workdir: Path, cold: bool, only=None) -> list[dict]:
    rows = []
    for scenario_name in scenarios:
        scenario = SCENARIOS[scenario_name]
        for lib in libs:
            path = str(workdir / f"{scenario_name}-{lib}{EXTENSIONS[lib]}")
            # The file every load reads is written by a (timed) save first.
            ops = ("save",) + tuple(op for op in scenario.ops if op != "save")
            if "save" not in scenario.ops:
                run_worker(lib, "save", scenario_name, path, quick, check=False)
                ops = scenario.ops
            for op in ops:
                if only and op not in only:
                    continue
                times, growth, skipped = [], [], None
                for run in range(runs):
                    if cold and op != "save":
                        try_drop_caches()
                    result = run_worker(lib, op, scenario_name, path, quick, check=quick or run == 0)
                    if "skipped" in result:
                        skipped = result["skipped"]
                        break
                    times.append(result["seconds"])
                    growth.append(result["rss_peak"] - result["rss_before"])
                row = {"scenario": scenario_name, "lib": lib, "op": op, "runs": len(times), "skipped": skipped}
                if times:
                    row.update(median_s=statistics.median(times), min_s=min(times), times=times,
                               peak_growth_bytes=int(statistics.median(growth)),
                               file_bytes=os.path.getsize(path) if os.path.exists(path) else 0)
                rows.append(row)
                print(f"  {scenario_name:12s} {lib:12s} {op:10s} "
                      + (f"{row['median_s']:.4f} s" if times else f"-- ({skipped})"), flush=True)
            for leftover in (path, path + ".sizes.json"):
                if os.path.exists(leftover):
                    os.remove(leftover)
    return rows


def data_bytes(scenario: str, quick: bool) -> int:
    from .scenarios import build
    from .worker import _unique

    return sum(v.nbytes for v in _unique(build(scenario, quick)).values())


def table(rows: list[dict], quick: bool) -> str:
    """A markdown table per scenario: medians and ratios to nbckpt."""
    out = []
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    for scenario in scenarios:
        these = [r for r in rows if r["scenario"] == scenario]
        libs = list(dict.fromkeys(r["lib"] for r in these))
        ops = list(dict.fromkeys(r["op"] for r in these))
        size = data_bytes(scenario, quick)
        out.append(f"\n**{SCENARIOS[scenario].description}** ({size / 2**30:.2f} GiB of array data)\n")
        out.append("| operation | " + " | ".join(libs) + " |")
        out.append("|---|" + "---|" * len(libs))
        for op in ops:
            by_lib = {r["lib"]: r for r in these if r["op"] == op}
            base = by_lib.get("nbckpt", {}).get("median_s")
            cells = []
            for lib in libs:
                r = by_lib.get(lib)
                if not r or "median_s" not in r:
                    cells.append("—")
                    continue
                cell = f"{r['median_s']:.3f} s"
                if base and lib != "nbckpt":
                    cell += f" ({r['median_s'] / base:.2f}×)"
                cells.append(cell)
            out.append(f"| {OP_TITLES.get(op, op)} | " + " | ".join(cells) + " |")
        memory = {r["lib"]: r.get("peak_growth_bytes") for r in these if r["op"] == "load" and "median_s" in r}
        if memory:
            out.append("| peak RSS growth, load | " + " | ".join(
                f"{memory[lib] / size:.2f}× data" if memory.get(lib) is not None else "—" for lib in libs) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny data and 1 run (smoke test)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 5; 1 with --quick)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--libs", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--ops", nargs="+", default=None, help="only these operations (save, load, ...)")
    parser.add_argument("--workdir", default=None, help="where the files go (default: a temporary folder)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each load (needs root)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 5)
    cold = args.cold and try_drop_caches()
    if args.cold and not cold:
        print("note: cannot drop the page cache here (needs root); measuring with a warm cache")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="nbckpt-bench-") as workdir:
        started = time.time()
        rows = measure(args.scenarios, args.libs, runs, args.quick, Path(workdir), cold, args.ops)
    report = table(rows, args.quick)
    print(report)
    meta = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "page_cache": "cold" if cold else "warm", "runs": runs, "quick": args.quick,
        "seconds": time.time() - started, "versions": _versions(),
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows, "table": report}, f, indent=1)
    print(f"\n{meta['page_cache']} page cache, median of {runs} run(s) in fresh processes; JSON in {args.json}")
    return 0


def _versions() -> dict:
    versions = {}
    for name in ("nbckpt", "numpy", "torch", "safetensors"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = None
    return versions


if __name__ == "__main__":
    sys.exit(main())
