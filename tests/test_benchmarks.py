"""Smoke run of the benchmark suite: every library and operation runs and loads the right values.

No timing is asserted: the suite's figures are measurements, not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_and_checks_values(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
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
    assert {r["lib"] for r in rows} == {"nbckpt", "nbckpt-scratch", "torch", "safetensors", "numpy", "plain"}
    assert "| operation | nbckpt | nbckpt-scratch | torch | safetensors | numpy | plain |" in report["table"]
