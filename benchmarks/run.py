"""nbckpt against torch, safetensors, NumPy and a plain file, on the same data, in one run.

    python -m benchmarks.run                  # all scenarios, 5 runs each (several minutes)
    python -m benchmarks.run --quick          # tiny data, 1 run: a smoke test
    python -m benchmarks.run --scenarios big small --runs 3 --libs nbckpt torch
    python -m benchmarks.run --scaling --plot # and the scaling run; a chart in docs/benchmark.png
    python -m benchmarks.run --from-json benchmarks/results/latest.json --plot   # redraw only

Every figure is the median of ``--runs`` runs, each in a fresh Python process
(so imports, caches and allocator state are the same for every library), with
the page cache warm (the files were just written; dropping the cache needs
root rights this machine does not grant — the report says which it was). Peak
memory is the growth of the process's resident set during the operation.

The output is a table of medians with each library's time as a ratio to
nbckpt's, and a JSON file with every run (``--json``, default
``benchmarks/results/latest.json``). ``--scaling`` adds the scaling run
(nbckpt and torch; 1,000 to 100,000 records, 64 MiB to ``--scaling-max-mib``,
1 GiB unless told otherwise: 4 GiB takes minutes on a small machine) and its
table of time per record and per GiB; ``--plot`` draws both (see ``plot.py``).
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

from .scenarios import SCALING_MIB, SCALING_RECORDS, SCENARIOS, scenario
from .worker import AVAILABLE, LIBRARIES

ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS = {"nbckpt": ".pt", "nbckpt-scratch": ".pt", "torch": ".pt", "safetensors": ".safetensors", "numpy": ".npz",
              "plain": ".bin", "plain-durable": ".bin"}
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
    """Run every (library, operation) of each scenario ``runs`` times, interleaved.

    Run k of every library comes before run k + 1 of any: on a shared machine
    whose load drifts, each library then sees the same conditions, and the
    ratios of one run stay comparable.
    """
    rows = []
    for scenario_name in scenarios:
        this = scenario(scenario_name)
        paths = {lib: str(workdir / f"{scenario_name}-{lib}{EXTENSIONS[lib]}") for lib in libs}
        # The file every load reads is written by a (timed) save first.
        ordered = ("save",) + tuple(op for op in this.ops if op != "save")
        planned: dict[str, list[str]] = {}
        wanted = [op for op in (ordered if "save" in this.ops else this.ops) if not only or op in only]
        for lib in libs:
            planned[lib] = [op for op in wanted if op in AVAILABLE[lib]]
            if planned[lib] and "save" not in planned[lib]:  # a scenario without a save, or --ops without one
                run_worker(lib, "save", scenario_name, paths[lib], quick, check=False)
        results = {(lib, op): ([], [], []) for lib in libs for op in planned[lib]}
        for run in range(runs):
            for lib in libs:
                for op in planned[lib]:
                    if cold and op != "save":
                        try_drop_caches()
                    result = run_worker(lib, op, scenario_name, paths[lib], quick, check=quick or run == 0)
                    results[(lib, op)][0].append(result["seconds"])
                    results[(lib, op)][1].append(result["rss_peak"] - result["rss_before"])
                    results[(lib, op)][2].append(result["cpu_seconds"])
        for lib in libs:
            for op in wanted:
                if op not in AVAILABLE[lib]:
                    rows.append({"scenario": scenario_name, "lib": lib, "op": op, "runs": 0,
                                 "skipped": f"{lib} has no {op}"})
                    continue
                rows.append(_row(scenario_name, lib, op, *results[(lib, op)], paths[lib]))
        for path in paths.values():
            for leftover in (path, path + ".sizes.json"):
                if os.path.exists(leftover):
                    os.remove(leftover)
    return rows


def _row(scenario_name: str, lib: str, op: str, times: list[float], growth: list[int], cpu: list[float],
         path: str) -> dict:
    """One result row: the median and every run's time (wall and CPU), peak memory growth, file size."""
    row = {"scenario": scenario_name, "lib": lib, "op": op, "runs": len(times), "skipped": None,
           "median_s": statistics.median(times), "min_s": min(times), "times": times,
           "median_cpu_s": statistics.median(cpu), "cpu_times": cpu,
           "peak_growth_bytes": int(statistics.median(growth)),
           "file_bytes": os.path.getsize(path) if os.path.exists(path) else 0}
    print(f"  {scenario_name:12s} {lib:14s} {op:10s} {row['median_s']:.4f} s  "
          f"({', '.join(f'{t:.3f}' for t in times)}; CPU {row['median_cpu_s']:.3f} s)", flush=True)
    return row


def data_bytes(scenario: str, quick: bool) -> int:
    from .scenarios import build
    from .worker import _unique

    return sum(v.nbytes for v in _unique(build(scenario, quick)).values())


def table(rows: list[dict], quick: bool) -> str:
    """A markdown table per scenario: medians and ratios to nbckpt."""
    out = []
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    for name in scenarios:
        these = [r for r in rows if r["scenario"] == name]
        libs = list(dict.fromkeys(r["lib"] for r in these))
        ops = list(dict.fromkeys(r["op"] for r in these))
        size = data_bytes(name, quick)
        out.append(f"\n**{scenario(name).description}** ({size / 2**30:.2f} GiB of array data)\n")
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
        for op in ("load", "save"):
            memory = {r["lib"]: r.get("peak_growth_bytes") for r in these if r["op"] == op and "median_s" in r}
            if memory:
                out.append(f"| peak RSS growth, {op} | " + " | ".join(
                    f"{memory[lib] / size:.2f}× data" if memory.get(lib) is not None else "—" for lib in libs)
                    + " |")
    return "\n".join(out)


def scaling_table(rows: list[dict]) -> str:
    """Time per record (records-N) and per GiB (bytes-N): flat when cost grows linearly."""
    out = []
    for kind, unit, per in (("records", "µs per record", lambda n, _b: 1e6 / n),
                            ("bytes", "s per GiB", lambda _n, b: 2**30 / b)):
        these = [r for r in rows if r["scenario"].startswith(kind + "-") and "median_s" in r]
        if not these:
            continue
        sizes = sorted({int(r["scenario"].split("-")[1]) for r in these})
        out.append(f"\n**Scaling: {unit}** (median time × {'1e6 / records' if kind == 'records' else '1 GiB / bytes'})\n")
        out.append("| library, operation | " + " | ".join(
            f"{n:,} records" if kind == "records" else f"{n} MiB" for n in sizes) + " |")
        out.append("|---|" + "---|" * len(sizes))
        for lib, op in dict.fromkeys((r["lib"], r["op"]) for r in these):
            cells = []
            for n in sizes:
                r = next((r for r in these if r["lib"] == lib and r["op"] == op
                          and r["scenario"] == f"{kind}-{n}"), None)
                cells.append("—" if r is None else f"{r['median_s'] * per(n, n << 20):.3g}")
            out.append(f"| {lib} {OP_TITLES.get(op, op)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


#: The targets of issue 16, as (label, scenario, op, lib, reference lib, op of the reference, target ratio).
TARGETS = (
    ("1 GiB save, durable, ÷ torch.save", "big", "save", "nbckpt", "torch", "save", 1.0),
    ("1 GiB save, durable=False, ÷ torch.save", "big", "save", "nbckpt-scratch", "torch", "save", 0.8),
    ("1 GiB load ÷ torch.load", "big", "load", "nbckpt", "torch", "load", 0.9),
    ("20k save ÷ torch.save", "small", "save", "nbckpt", "torch", "save", 0.5),
    ("20k load ÷ torch.load", "small", "load", "nbckpt", "torch", "load", 0.2),
    ("20k load ÷ safetensors load_file", "small", "load", "nbckpt", "safetensors", "load", 1.5),
)


def targets(rows: list[dict]) -> str:
    """The issue's target ratios, measured in this run (where both sides ran): wall time, and
    process CPU time (steadier on a shared machine; it leaves out waiting for the disk)."""
    medians = {(r["scenario"], r["lib"], r["op"]): r["median_s"] for r in rows if "median_s" in r}
    cpu = {(r["scenario"], r["lib"], r["op"]): r["median_cpu_s"] for r in rows if "median_cpu_s" in r}
    out = []
    for label, scenario_name, op, lib, ref, ref_op, target in TARGETS:
        mine, theirs = medians.get((scenario_name, lib, op)), medians.get((scenario_name, ref, ref_op))
        if mine and theirs:
            ratio = mine / theirs
            mine_cpu, theirs_cpu = cpu.get((scenario_name, lib, op)), cpu.get((scenario_name, ref, ref_op))
            cpu_ratio = f"{mine_cpu / theirs_cpu:.2f}" if mine_cpu and theirs_cpu else "—"
            verdict = "met" if ratio <= target else "not met"
            out.append(f"| {label} | {ratio:.2f} | {cpu_ratio} | ≤ {target} | {verdict} |")
    open_list = medians.get(("small", "nbckpt", "open_list"))
    if open_list:
        open_cpu = cpu.get(("small", "nbckpt", "open_list"))
        out.append(f"| 20k open + list | {open_list:.3f} s | {f'{open_cpu:.3f} s' if open_cpu else '—'} | ≤ 0.1 s | "
                   f"{'met' if open_list <= 0.1 else 'not met'} |")
    if not out:
        return ""
    return ("\n**Targets (issue 16)**\n\n| ratio | measured | CPU time | target | |\n|---|---|---|---|---|\n"
            + "\n".join(out))


def scaling_scenarios(quick: bool, max_mib: int) -> list[str]:
    """The scenarios of the scaling run (tiny ones with ``quick``)."""
    if quick:
        return ["records-100", "records-400", "bytes-1", "bytes-4"]
    return [f"records-{n}" for n in SCALING_RECORDS] + [f"bytes-{n}" for n in SCALING_MIB if n <= max_mib]


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
    parser.add_argument("--scaling", action="store_true",
                        help="add the scaling run (nbckpt and torch, records-N and bytes-N scenarios)")
    parser.add_argument("--scaling-max-mib", type=int, default=1024,
                        help="largest size of the scaling run in MiB (default 1024; 4096 adds the 4 GiB point)")
    parser.add_argument("--scaling-runs", type=int, default=1, help="runs per figure of the scaling run (default 1)")
    parser.add_argument("--plot", nargs="?", const=str(ROOT / "docs" / "benchmark.png"), default=None,
                        help="draw the chart to this PNG (default docs/benchmark.png)")
    parser.add_argument("--from-json", default=None,
                        help="measure nothing: print and plot the results of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        print(saved["table"])
        if args.plot:
            from .plot import write_chart

            write_chart(saved["rows"], args.plot, saved["meta"])
            print(f"chart in {args.plot}")
        return 0
    runs = args.runs or (1 if args.quick else 5)
    cold = args.cold and try_drop_caches()
    if args.cold and not cold:
        print("note: cannot drop the page cache here (needs root); measuring with a warm cache")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="nbckpt-bench-") as workdir:
        started = time.time()
        rows = measure(args.scenarios, args.libs, runs, args.quick, Path(workdir), cold, args.ops)
        if args.scaling:
            scaling_libs = [lib for lib in ("nbckpt", "torch") if lib in args.libs]
            rows += measure(scaling_scenarios(args.quick, args.scaling_max_mib), scaling_libs,
                            args.scaling_runs, args.quick, Path(workdir), cold, None)
    fixed = [r for r in rows if r["scenario"] in SCENARIOS]
    report = "\n".join(filter(None, (table(fixed, args.quick), scaling_table(rows), targets(rows))))
    print(report)
    meta = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "page_cache": "cold" if cold else "warm", "runs": runs, "quick": args.quick,
        "scaling_runs": args.scaling_runs if args.scaling else None,
        "seconds": time.time() - started, "versions": _versions(),
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows, "table": report}, f, indent=1)
    print(f"\n{meta['page_cache']} page cache, median of {runs} run(s) in fresh processes; JSON in {args.json}")
    if args.plot:
        from .plot import write_chart

        write_chart(rows, args.plot, meta)
        print(f"chart in {args.plot}")
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
