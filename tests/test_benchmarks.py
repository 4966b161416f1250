"""Smoke run of the benchmark suite: every library and operation runs and loads the right values.

No timing is asserted: the suite's figures are measurements, not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_checks_values_and_draws_the_chart(tmp_path):
    out = tmp_path / "bench.json"
    chart = tmp_path / "chart.png"
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--scaling", "--json", str(out),
                           "--plot", str(chart)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["meta"]["quick"] and report["meta"]["runs"] == 1
    # Every scenario ran every operation it lists for nbckpt and torch (values were
    # checked in the worker: a wrong load makes the run fail).
    from benchmarks.scenarios import SCENARIOS

    for name, scenario in SCENARIOS.items():
        for lib in ("nbckpt", "torch"):
            done_ops = {r["op"] for r in rows if r["scenario"] == name and r["lib"] == lib and r["runs"]}
            assert set(scenario.ops) <= done_ops | {"save"}, (name, lib, done_ops)
    assert {r["lib"] for r in rows} == {"nbckpt", "nbckpt-scratch", "torch", "safetensors", "numpy", "plain",
                                        "plain-durable"}
    assert ("| operation | nbckpt | nbckpt-scratch | torch | safetensors | numpy | plain | plain-durable |"
            in report["table"])
    # The scaling run: nbckpt and torch, save and load, at every size.
    scaling = {(r["scenario"], r["lib"], r["op"]) for r in rows if r["scenario"].split("-")[0] in ("records", "bytes")}
    assert scaling == {(s, lib, op) for s in ("records-100", "records-400", "bytes-1", "bytes-4")
                       for lib in ("nbckpt", "torch") for op in ("save", "load")}
    assert "**Scaling: µs per record**" in report["table"] and "**Scaling: s per GiB**" in report["table"]
    assert "| 20k load ÷ torch.load |" in report["table"]
    assert "| peak RSS growth, save |" in report["table"]
    # The chart: a PNG, and redrawn from the JSON alone.
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "again.png"
    redraw = subprocess.run([sys.executable, "-m", "benchmarks.run", "--from-json", str(out), "--plot", str(again)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert redraw.returncode == 0, redraw.stderr[-3000:]
    assert again.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["table"] in redraw.stdout


def test_chart_cases_are_ratios_to_nbckpt():
    from benchmarks.plot import ratio_cases

    rows = [{"scenario": "big", "lib": lib, "op": "save", "median_s": s}
            for lib, s in (("nbckpt", 2.0), ("nbckpt-scratch", 1.0), ("torch", 1.5), ("plain", 0.5))]
    assert ratio_cases(rows) == [("1 GiB, 256 arrays: save", {"torch": 0.75, "plain": 0.25}),
                                 ("1 GiB, 256 arrays: save, durable=False", {"torch": 1.5, "plain": 0.5})]


def test_ops_without_save_still_write_the_file_they_load(tmp_path):
    """``--ops load`` times only the load; the file it reads is written first, untimed."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--scenarios", "small", "--libs",
                           "nbckpt", "--ops", "load", "open_list", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["lib"], r["op"]) for r in rows if r["runs"]} == {("nbckpt", "load"), ("nbckpt", "open_list")}
