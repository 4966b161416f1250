"""The data each benchmark saves and loads, built the same way in every process.

Every scenario is a flat ``{name: array}`` dict (what all the compared formats
can hold), deterministic and cheap to build, so a fresh process can rebuild it
and a load can be checked against it.

=============  ===========================================================
scenario       data
=============  ===========================================================
big            256 float32 arrays of 1M elements (1 GiB)
small          20,000 float32 arrays of 100 elements (per-record overhead)
transformer    a transformer-shaped bfloat16 state dict (~1 GiB) with tied
               embedding/unembedding weights (two names, one storage)
huge           ~4 GiB in 64 float32 arrays, for open/list and one record
records-N      N float32 arrays of 100 elements (the scaling run, per record)
bytes-N        N MiB in float32 arrays of 4 MiB (the scaling run, per GiB)
=============  ===========================================================

``quick=True`` shrinks every fixed scenario (for the smoke test in the test
suite); the scaling scenarios are built at the size their name gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = ["Scenario", "SCENARIOS", "scenario", "build", "probe_name", "SCALING_RECORDS", "SCALING_MIB"]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    count: int  # number of arrays (quick mode divides)
    elements: int  # elements per array (quick mode divides)
    ops: tuple[str, ...]


SCENARIOS = {
    "big": Scenario("big", "1 GiB in 256 float32 arrays of 1M elements", 256, 1 << 20,
                    ("save", "load", "load_mmap", "open_list", "load_one")),
    "small": Scenario("small", "20,000 float32 arrays of 100 elements", 20_000, 100,
                      ("save", "load", "load_mmap", "open_list", "load_one")),
    "transformer": Scenario("transformer", "transformer state dict, bfloat16, ~1 GiB, tied embeddings", 0, 0,
                            ("save", "load", "load_mmap", "open_list", "load_one")),
    "huge": Scenario("huge", "~4 GiB in 64 float32 arrays of 16M elements", 64, 1 << 24,
                     ("open_list", "load_one", "load_mmap")),
}


#: The scaling run: record counts, and sizes in MiB (4096 only with ``--scaling-max-mib 4096``).
SCALING_RECORDS = (1_000, 10_000, 100_000)
SCALING_MIB = (64, 256, 1024, 4096)
SCALING_OPS = ("save", "load")


def scenario(name: str) -> Scenario:
    """The scenario called ``name``: a fixed one, or ``records-N`` / ``bytes-N`` (MiB)."""
    if name in SCENARIOS:
        return SCENARIOS[name]
    kind, _, size = name.partition("-")
    if kind == "records" and size.isdigit():
        return Scenario(name, f"{int(size):,} float32 arrays of 100 elements", int(size), 100, SCALING_OPS)
    if kind == "bytes" and size.isdigit():
        mib = int(size)
        count = max(mib // 4, 1)
        return Scenario(name, f"{mib} MiB in {count} float32 arrays", count, (mib << 20) // 4 // count,
                        SCALING_OPS)
    raise KeyError(f"no benchmark scenario {name!r}: {', '.join(SCENARIOS)}, records-N or bytes-N")


def _fill(n: int, seed: int, dtype) -> np.ndarray:
    # Cheap and deterministic: a ramp that differs per array (no RNG cost).
    values = np.arange(n, dtype=np.float32)
    values *= np.float32(1e-6)
    values += np.float32(seed % 997)
    return values.astype(dtype, copy=False)


def _transformer(quick: bool) -> dict[str, np.ndarray]:
    d, layers, vocab = (512, 2, 4096) if quick else (2048, 10, 32000)
    bf16 = ml_dtypes.bfloat16
    state: dict[str, np.ndarray] = {}
    embed = _fill(vocab * d, 1, bf16).reshape(vocab, d)
    state["embed.weight"] = embed
    seed = 2
    for layer in range(layers):
        for name, shape in (("attn.qkv", (3 * d, d)), ("attn.out", (d, d)), ("mlp.up", (4 * d, d)),
                            ("mlp.down", (d, 4 * d))):
            state[f"layers.{layer}.{name}.weight"] = _fill(shape[0] * shape[1], seed, bf16).reshape(shape)
            seed += 1
        for norm in ("norm1", "norm2"):
            state[f"layers.{layer}.{norm}.weight"] = _fill(d, seed, bf16)
            seed += 1
    state["norm.weight"] = _fill(d, seed, bf16)
    state["lm_head.weight"] = embed  # tied: the same array under two names
    return state


def build(name: str, quick: bool = False) -> dict[str, np.ndarray]:
    """The scenario's data (deterministic)."""
    if name == "transformer":
        return _transformer(quick)
    fixed = name in SCENARIOS
    count, elements = scenario(name).count, scenario(name).elements
    if quick and fixed:
        count, elements = max(count // 64, 4), max(elements // 256, 16)
    return {f"layer{i}.weight": _fill(elements, i, np.float32) for i in range(count)}


def probe_name(name: str, quick: bool = False) -> str:
    """The record "load one" reads: one in the middle."""
    keys = list(build(name, quick)) if name == "transformer" else None
    if keys:
        return keys[len(keys) // 2]
    count = scenario(name).count
    if quick and name in SCENARIOS:
        count = max(count // 64, 4)
    return f"layer{count // 2}.weight"
