"""The benchmark chart: where nbckpt is ahead and where it is behind, at a glance.

``write_chart(rows, path)`` draws, from the rows of one run (``run.py``'s JSON):

- left: for every case (scenario and operation), each library's median time
  divided by nbckpt's, on a log scale — a bar right of 1 means nbckpt is faster;
  saves are compared twice, with nbckpt's default durable save and with
  ``durable=False`` (what torch.save does: no fsync);
- right: the scaling run, time per record against the number of records and
  time per GiB against the size — flat lines mean cost grows linearly.

    python -m benchmarks.run --from-json benchmarks/results/latest.json --plot docs/benchmark.png
"""

from __future__ import annotations

__all__ = ["write_chart", "ratio_cases"]

COMPARED = ("torch", "safetensors", "numpy", "plain", "plain-durable")
LABELS = {"torch": "torch.save / torch.load", "safetensors": "safetensors", "numpy": "np.savez / np.load",
          "plain": "plain file (the limit)", "plain-durable": "plain file + fsync (limit of a durable save)"}
COLORS = {"torch": "#ee4c2c", "safetensors": "#f2a900", "numpy": "#4d77cf", "plain": "#999999",
          "plain-durable": "#555555"}
OP_NAMES = {"save": "save", "load": "load", "load_mmap": "load, mmap", "open_list": "open + list",
            "load_one": "load one array"}
SCENARIO_NAMES = {"big": "1 GiB, 256 arrays", "small": "20,000 small arrays", "transformer": "transformer bf16",
                  "huge": "4 GiB, 64 arrays"}


def ratio_cases(rows: list[dict]) -> list[tuple[str, dict[str, float]]]:
    """``[(case label, {library: its time / nbckpt's})]`` for the fixed scenarios."""
    medians = {(r["scenario"], r["lib"], r["op"]): r["median_s"] for r in rows if "median_s" in r}
    cases = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        if scenario not in SCENARIO_NAMES:
            continue
        for op in dict.fromkeys(r["op"] for r in rows if r["scenario"] == scenario):
            bases = [("nbckpt", "")]
            if op == "save":
                bases.append(("nbckpt-scratch", ", durable=False"))
            for base_lib, suffix in bases:
                base = medians.get((scenario, base_lib, op))
                if not base:
                    continue
                ratios = {lib: medians[(scenario, lib, op)] / base for lib in COMPARED
                          if (scenario, lib, op) in medians}
                if ratios:
                    cases.append((f"{SCENARIO_NAMES[scenario]}: {OP_NAMES.get(op, op)}{suffix}", ratios))
    return cases


def _scaling(rows: list[dict], kind: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """``{(lib, op): [(size, time per record or per GiB)]}`` of the scaling run."""
    lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in rows:
        if not r["scenario"].startswith(kind + "-") or "median_s" not in r:
            continue
        size = int(r["scenario"].split("-")[1])
        per = r["median_s"] * 1e6 / size if kind == "records" else r["median_s"] * 1024 / size
        lines.setdefault((r["lib"], r["op"]), []).append((size, per))
    return {key: sorted(points) for key, points in lines.items()}


def write_chart(rows: list[dict], path: str, meta: dict | None = None) -> None:
    """Draw the chart of one run's ``rows`` to the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cases = ratio_cases(rows)
    records, sizes = _scaling(rows, "records"), _scaling(rows, "bytes")
    scaling_panels = [p for p in ((records, "records", "µs per record"), (sizes, "MiB", "s per GiB")) if p[0]]
    height = max(4.0, 0.42 * len(cases) * (len(COMPARED) / 3) + 1.5)
    fig = plt.figure(figsize=(13, height))
    grid = fig.add_gridspec(max(len(scaling_panels), 1), 2, width_ratios=(1.7, 1))
    ax = fig.add_subplot(grid[:, 0])
    libs = [lib for lib in COMPARED if any(lib in ratios for _, ratios in cases)]
    bar = 0.8 / max(len(libs), 1)
    for k, lib in enumerate(libs):
        ys = [i + (k - (len(libs) - 1) / 2) * bar for i, (_, ratios) in enumerate(cases) if lib in ratios]
        xs = [ratios[lib] for _, ratios in cases if lib in ratios]
        # Each bar runs from 1 (nbckpt) to the library's ratio: right, nbckpt is faster.
        ax.barh(ys, [x - 1 for x in xs], height=bar, color=COLORS[lib], label=LABELS[lib], left=1)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    if cases:
        values = [v for _, ratios in cases for v in ratios.values()]
        ax.set_xlim(min(min(values) * 0.7, 0.5), max(max(values) * 1.4, 2.0))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}×"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
    ax.set_yticks(range(len(cases)), [label for label, _ in cases])
    ax.invert_yaxis()
    ax.set_xlabel("time of the library ÷ time of nbckpt  (right of 1: nbckpt is faster)", labelpad=2)
    ax.set_title("nbckpt against the others, same data, one run (medians)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3, fontsize="small")
    ax.grid(axis="x", which="both", alpha=0.3)
    for row, (points, unit, ylabel) in enumerate(scaling_panels):
        side = fig.add_subplot(grid[row, 1])
        for (lib, op), line in sorted(points.items()):
            style = "-" if lib == "nbckpt" else "--"
            side.plot([p[0] for p in line], [p[1] for p in line], style, marker="o",
                      color="#2a9d8f" if lib == "nbckpt" else COLORS.get(lib, "gray"),
                      alpha=1.0 if op == "load" else 0.6, label=f"{lib} {op}")
        side.set_xscale("log")
        side.set_yscale("log")
        side.set_xlabel(unit)
        side.set_ylabel(ylabel)
        side.set_title(f"scaling: {ylabel} (flat = linear cost)", fontsize="medium")
        side.grid(True, which="both", alpha=0.3)
        side.legend(fontsize="x-small")
    if meta:
        fig.text(0.01, 0.005, f"{meta.get('cpus', '?')} CPUs, {meta.get('page_cache', '?')} page cache, "
                 f"median of {meta.get('runs', '?')} runs in fresh processes (scaling run: "
                 f"{meta.get('scaling_runs', 1)})"
                 + (" (quick smoke run: tiny data)" if meta.get("quick") else ""), fontsize="x-small")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
