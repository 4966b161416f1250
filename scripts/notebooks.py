"""Write the tutorial notebooks (``notebooks/``) from the cells below, then run them.

    python scripts/notebooks.py            # write and execute every notebook in place
    python scripts/notebooks.py --no-run   # only write them

The notebooks are the tutorials a reader follows top to bottom, with the outputs a
fresh kernel produces stored in them; ``pytest --nbval`` (part of ``make test``)
runs them again and compares. Keeping their text here, as plain Python, makes
them easy to review and to change together; edit a cell here and re-run this
script rather than editing the ``.ipynb`` files by hand.

Conventions: every notebook starts in a clean ``ckpts/`` folder (so a cache or a
file from an earlier run changes nothing), uses seeded random data, and marks
the few cells whose output depends on the machine (GPUs) with
``# NBVAL_IGNORE_OUTPUT``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

SETUP = '''import os, shutil
import numpy as np
import nbckpt

shutil.rmtree("ckpts", ignore_errors=True)   # a clean folder for this tutorial's files
os.makedirs("ckpts")
rng = np.random.default_rng(0)'''


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text: str):
    return nbformat.v4.new_code_cell(text.strip("\n"))


QUICKSTART = [
    md("""
# 1. Quickstart: save and load NumPy state

**nbckpt** reads and writes the checkpoint files of `torch.save` / `torch.load`, for NumPy (and
CuPy) arrays, without torch. Loading is safe by default: a file from the internet never runs code.

This tutorial saves some nested training state, loads it back, shows that views of one array
stay views of one array, and looks inside the file.
"""),
    code(SETUP),
    md("""
## Nested state in, nested state out

`nbckpt.save` takes dicts, lists, tuples and sets of arrays, numbers, strings and bytes — what a
training loop keeps.
"""),
    code('''state = {
    "model": {"layer1.weight": rng.standard_normal((4, 3), dtype=np.float32),
              "layer1.bias": np.zeros(4, dtype=np.float32)},
    "optimizer": {"step": 100, "lr": 3e-4, "betas": (0.9, 0.999)},
    "history": [0.91, 0.52, 0.33],
    "run": "baseline",
}
nbckpt.save(state, "ckpts/state.pt")
loaded = nbckpt.load("ckpts/state.pt")
loaded["optimizer"], loaded["history"], loaded["run"]'''),
    code('''np.array_equal(loaded["model"]["layer1.weight"], state["model"]["layer1.weight"])'''),
    md("""
The save is **atomic**: nbckpt writes a temporary file next to the target, syncs it to disk and
renames it over the old file. A crash in the middle leaves the previous checkpoint as it was.

## Views and shared memory survive

Arrays that view one buffer (a transpose, a slice, a reshape) are stored **once**, and after
loading they view one buffer again — writing through one is visible in the others, as before.
"""),
    code('''w = np.arange(12, dtype=np.float64).reshape(3, 4)
views = {"w": w, "w_T": w.T, "row": w[1], "every_other": w[:, ::2]}
nbckpt.save(views, "ckpts/views.pt")
out = nbckpt.load("ckpts/views.pt")
{name: np.shares_memory(out["w"], a) for name, a in out.items()}'''),
    code('''out["w"][1, 2] = -1.0
out["row"].tolist(), float(out["w_T"][2, 1])'''),
    md("""
Saving `w[:5]` of a large array stores those 5 rows, not the whole array.

## Every dtype torch has

bfloat16 and the float8 family come from [`ml_dtypes`](https://github.com/jax-ml/ml_dtypes).
"""),
    code('''import ml_dtypes
low = {"bf16": np.linspace(-1, 1, 5).astype(ml_dtypes.bfloat16),
       "fp8": np.array([0.5, 1.0, 2.0], dtype=ml_dtypes.float8_e4m3fn),
       "u16": np.arange(3, dtype=np.uint16)}
nbckpt.save(low, "ckpts/dtypes.pt")
{k: (str(v.dtype), v.tolist()) for k, v in nbckpt.load("ckpts/dtypes.pt").items()}'''),
    md("""
## What is inside the file

A checkpoint is a zip archive: a pickle (`data.pkl`) describing the structure and one record per
storage. The `%ckpt` magics show it without loading any array.
"""),
    code('''%load_ext nbckpt'''),
    code('''%ckpt ls ckpts/views.pt'''),
    code('''%ckpt info ckpts/state.pt'''),
    md("""
`nbckpt.open` gives the same listing in Python, and reads an array only when you ask for it:
"""),
    code('''with nbckpt.open("ckpts/state.pt") as archive:
    print([(r.name, r.shape, str(r.dtype)) for r in archive.records])
    bias = archive["model.layer1.bias"]      # reads only this array's bytes
str(bias.dtype), bias.tolist()'''),
    md("""
Next: [safe loading](02_safe_loading.ipynb) — why a checkpoint can be dangerous, and how nbckpt
keeps you safe.
"""),
]


SAFE = [
    md("""
# 2. Safe loading

A `.pt` file is a **pickle**, and unpickling can call any function the file names. A checkpoint
downloaded from the internet can run code on your machine the moment you load it — with
`pickle.load`, or with `torch.load(weights_only=False)`.

nbckpt never does: by default it runs the pickle in its own small virtual machine that imports
nothing and only knows an allowlist of what checkpoints need (arrays, containers, numbers…).
"""),
    code(SETUP + '''
import io, pickle, zipfile
from nbckpt.format.container import ZipWriter'''),
    md("""
## A hostile checkpoint

Here is how little it takes: an object whose `__reduce__` says "to rebuild me, call
`os.system(...)`". We put its pickle in a checkpoint-shaped zip.
"""),
    code('''class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > ckpts/pwned.txt",))

def checkpoint_with(obj, path):
    """A torch-style zip whose data.pkl is the pickle of obj."""
    with open(path, "wb") as f:
        writer = ZipWriter(f.write, "archive")
        writer.write_record("data.pkl", pickle.dumps(obj, protocol=2))
        writer.close()

checkpoint_with({"weights": [0.1, 0.2], "surprise": Payload()}, "ckpts/hostile.pt")
zipfile.ZipFile("ckpts/hostile.pt").namelist()'''),
    md("""
Loading it with nbckpt's defaults refuses the file and says exactly why — nothing runs:
"""),
    code('''try:
    nbckpt.load("ckpts/hostile.pt")
except nbckpt.UnpicklingError as err:
    print(type(err).__name__, "-", err)
os.path.exists("ckpts/pwned.txt")'''),
    md("""
`os`, `subprocess`, `eval`, `exec` and a few more stay refused **even if you allowlist them**.

## Look before you load: `nbckpt.scan`

`scan` lists every global a file names, marked allowed or not, without running anything:
"""),
    code('''[(g.name, g.allowed, g.reason) for g in nbckpt.scan("ckpts/hostile.pt")]'''),
    md("""
## Allowlisting a class you trust

Your own classes are refused too, until you say you trust them. nbckpt saves namedtuples, so a
small configuration record makes a good example:
"""),
    code('''from collections import namedtuple
Hparams = namedtuple("Hparams", "lr batch_size")

nbckpt.save({"hparams": Hparams(3e-4, 64), "w": np.ones(3)}, "ckpts/hparams.pt")
try:
    nbckpt.load("ckpts/hparams.pt")
except nbckpt.UnpicklingError as err:
    print(err)'''),
    md("""
The message names the two ways forward. For one load, `safe_globals` (it only lasts for the
block, and only in this thread):
"""),
    code('''with nbckpt.safe_globals([Hparams]):
    loaded = nbckpt.load("ckpts/hparams.pt")
loaded["hparams"]'''),
    md("""
`nbckpt.add_safe_globals([Hparams])` allows it from then on. And for a file from a source you
trust completely, `nbckpt.load(path, weights_only=False)` runs the pickle as Python would —
**never** use it on a file like `hostile.pt`.

## Corrupt files

Damaged files raise `nbckpt.FormatError` (a `ValueError`), never a crash. `nbckpt.verify` checks
every record's checksum without loading:
"""),
    code('''nbckpt.save({"w": np.arange(1000, dtype=np.float32)}, "ckpts/good.pt")
data = bytearray(open("ckpts/good.pt", "rb").read())
data[2000] ^= 0xFF                                   # flip the bits of one byte
open("ckpts/damaged.pt", "wb").write(data)
print(nbckpt.verify("ckpts/damaged.pt"))'''),
    code('''try:
    nbckpt.load("ckpts/damaged.pt", verify=True)   # checks CRCs while it reads
except nbckpt.FormatError as err:
    print(err)'''),
    md("""
Next: [devices and `map_location`](03_devices.ipynb).
"""),
]


DEVICES = [
    md("""
# 3. Devices and `map_location`

Every storage in a checkpoint carries the device it was saved on: `cpu`, `cuda:0`, `cuda:1`…
nbckpt loads `cpu` storages as NumPy arrays and `cuda:N` storages as CuPy arrays on GPU N —
and `map_location` says where each storage goes instead.

The cells below run on any machine; where the answer depends on whether this machine has a
GPU, the output shown is from a machine without one.
"""),
    code(SETUP),
    code('''# NBVAL_IGNORE_OUTPUT
nbckpt.devices()          # what this machine can load onto'''),
    md("""
`data/saved_on_gpu.pt` was saved by torch on `cuda:0`. Opening it needs no device — only
loading arrays does:
"""),
    code('''with nbckpt.open("data/saved_on_gpu.pt") as archive:
    print([(r.name, r.location) for r in archive.records], archive.values)'''),
    code('''# NBVAL_IGNORE_OUTPUT
try:
    nbckpt.load("data/saved_on_gpu.pt")                # back onto cuda:0
except nbckpt.DeviceError as err:
    print(err)'''),
    md("""
## Every form of `map_location`
"""),
    code('''to_host = nbckpt.load("data/saved_on_gpu.pt", map_location="cpu")    # everything on the host
to_host["weight"].tolist(), type(to_host["weight"]).__name__'''),
    code('''nbckpt.load("data/saved_on_gpu.pt", map_location={"cuda:0": "cpu"})["bias"].tolist()   # remap listed tags'''),
    code('''class Device:                     # anything whose str() is a tag works, e.g. torch.device("cpu")
    def __str__(self):
        return "cpu"

float(nbckpt.load("data/saved_on_gpu.pt", map_location=Device())["weight"].sum())'''),
    code('''seen = []
def place(storage, location):     # called once per storage with a host array and its saved tag
    seen.append((location, str(storage.dtype), storage.shape))
    return storage                # keep it on the host (return a CuPy array to move it)

nbckpt.load("data/saved_on_gpu.pt", map_location=place)
seen'''),
    md("""
`"auto"` (an nbckpt extra) keeps each storage on its saved device when that device is usable
here, and moves it to the host otherwise, with one warning naming what moved:
"""),
    code('''# NBVAL_IGNORE_OUTPUT
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    auto = nbckpt.load("data/saved_on_gpu.pt", map_location="auto")
[str(w.message) for w in caught], type(auto["weight"]).__module__'''),
    md("""
## On a machine with GPUs

With CuPy installed (`pip install cupy-cuda12x`, nbckpt's `cuda` extra), the same calls place arrays on GPUs: each
storage is read once into pinned host memory and copied inside `cupy.cuda.Device(N)`, so
`cuda:1` really lands on GPU 1 and nothing is allocated on GPU 0. CuPy arrays save back with
their device tag. This cell only does something when a GPU is there:
"""),
    code('''# NBVAL_IGNORE_OUTPUT
if "cuda:0" in nbckpt.devices():
    on_gpu = nbckpt.load("data/saved_on_gpu.pt", map_location="cuda:0")
    print(type(on_gpu["weight"]), on_gpu["weight"].device)
    nbckpt.save(on_gpu, "ckpts/from_gpu.pt")        # saved with its cuda:0 tags
else:
    print("no GPU here: nothing to show")'''),
    md("""
Next: [browsing archives](04_browsing.ipynb) with widgets.
"""),
]


BROWSING = [
    md("""
# 4. Browsing archives

For a checkpoint too big to load at once (or one you do not trust yet), browse it: see every
array's name, shape, dtype and size, preview the ones you care about — statistics, histogram,
heat-map — and load just those, onto the device you choose.
"""),
    code(SETUP + '''
import ml_dtypes

# A small transformer-shaped state dict (about 60 MB) in bfloat16, with tied embeddings.
d, layers, vocab = 512, 6, 8000
embed = (rng.standard_normal((vocab, d)) * 0.02).astype(ml_dtypes.bfloat16)
model = {"embed.weight": embed}
for i in range(layers):
    model[f"layers.{i}.attn.qkv.weight"] = (rng.standard_normal((3 * d, d)) * 0.02).astype(ml_dtypes.bfloat16)
    model[f"layers.{i}.mlp.up.weight"] = (rng.standard_normal((4 * d, d)) * 0.02).astype(ml_dtypes.bfloat16)
    model[f"layers.{i}.norm.weight"] = np.ones(d, dtype=ml_dtypes.bfloat16)
model["lm_head.weight"] = embed            # tied: one storage, two names
nbckpt.save({"model": model, "step": 5000, "config": {"d_model": d, "layers": layers}}, "ckpts/model.pt")
os.path.getsize("ckpts/model.pt") // 2**20'''),
    md("""
## The archive browser

`%ckpt browse PATH` (or `nbckpt.jupyter.ArchiveBrowser(path)`) opens the file lazily. Type in the
filter box, pick a record to preview it, choose a device and a variable name, and press *Load*.
Nothing is read from the file until you preview or load an array.
"""),
    code('''%load_ext nbckpt'''),
    code('''%ckpt browse ckpts/model.pt'''),
    md("""
The browser is an ordinary widget, so it can be driven from code too — the same steps as the
clicks above:
"""),
    code('''from nbckpt.jupyter import ArchiveBrowser, ArrayPreview

browser = ArchiveBrowser("ckpts/model.pt", namespace=globals())
browser.filter.value = "layers.0"                    # type in the filter box
browser.records.options                              # what the list now shows'''),
    code('''browser.select("model.layers.0.norm.weight")       # click a record: it is previewed
browser.device.value = "cpu"                         # pick a device
browser.variable.value = "norm0"                     # and a name
browser.load_button.click()                          # press Load
browser.status.value, str(norm0.dtype), norm0[:4].tolist()'''),
    code('''browser'''),
    md("""
## Previewing one array

`ArrayPreview` shows shape, dtype, device and size; min, max, mean, std, NaN and Inf counts and
the fraction of zeros (exact up to 16 M elements, computed on a sample beyond, and labelled so);
a histogram; a heat-map for 2-D arrays; the first values.
"""),
    code('''with nbckpt.open("ckpts/model.pt") as archive:
    qkv = archive["model.layers.0.attn.qkv.weight"]     # only this array is read
ArrayPreview(qkv)'''),
    md("""
The statistics are plain functions, usable anywhere:
"""),
    code('''from nbckpt.jupyter.stats import array_stats
s = array_stats(qkv)
f"mean {s.mean:.4f}, std {s.std:.4f}, NaNs {s.nan_count}, sampled {s.sampled}"'''),
    md("""
Next: [round trips with PyTorch](05_pytorch.ipynb).
"""),
]


PYTORCH = [
    md("""
# 5. Round trips with PyTorch

nbckpt writes the files torch writes and reads the files torch writes — checked against the real
torch package in nbckpt's test suite. This tutorial uses torch to make and read files; nbckpt
itself never imports it.
"""),
    code(SETUP + '''
import warnings
import torch
_ = torch.manual_seed(0)
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")'''),
    md("""
## A torch model's state dict, read without torch

Someone trained a model and sent you `model.pt`. nbckpt reads it into NumPy arrays — safely —
whether or not torch is installed:
"""),
    code('''model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))
model(torch.randn(2, 3, 8, 8))                  # a forward pass moves the BatchNorm statistics
torch.save(model.state_dict(), "ckpts/model.pt")

state = nbckpt.load("ckpts/model.pt")
{name: (a.shape, str(a.dtype)) for name, a in state.items()}'''),
    code('''all(np.array_equal(state[k], v.numpy()) for k, v in model.state_dict().items())'''),
    md("""
## NumPy state, read by torch

Arrays you make in NumPy load in `torch.load(weights_only=True)` — the safe default — as tensors,
and arrays that shared memory share storage in torch:
"""),
    code('''state["0.weight"] *= 0.5                      # change something in NumPy
nbckpt.save(state, "ckpts/edited.pt")

fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))
fresh.load_state_dict(torch.load("ckpts/edited.pt", weights_only=True))
torch.equal(fresh[0].weight, model[0].weight * 0.5)'''),
    code('''w = np.arange(6, dtype=np.float32).reshape(2, 3)
nbckpt.save({"w": w, "w_T": w.T}, "ckpts/shared.pt")
t = torch.load("ckpts/shared.pt", weights_only=True)
t["w_T"].stride(), t["w"].untyped_storage().data_ptr() == t["w_T"].untyped_storage().data_ptr()'''),
    md("""
## Legacy files

torch before 1.6 wrote another format (still written with `_use_new_zipfile_serialization=False`).
nbckpt reads it — safely, with the same allowlist — and can write it too:
"""),
    code('''torch.save({"w": torch.ones(2, 2)}, "ckpts/old.pt", _use_new_zipfile_serialization=False)
{k: v.tolist() for k, v in nbckpt.load("ckpts/old.pt").items()}'''),
    code('''nbckpt.save({"w": np.eye(2, dtype=np.float32)}, "ckpts/for_old_torch.pt", format="legacy")
{k: v.tolist() for k, v in torch.load("ckpts/for_old_torch.pt", weights_only=True).items()}'''),
    md("""
## Sparse matrices

torch's sparse tensors load as `scipy.sparse` arrays (after the invariant checks torch itself
does), and scipy sparse arrays save in torch's layouts:
"""),
    code('''import scipy.sparse as sp
dense = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 3.0]])
torch.save({"csr": dense.to_sparse_csr(), "coo": dense.to_sparse()}, "ckpts/sparse.pt")
loaded = nbckpt.load("ckpts/sparse.pt")
type(loaded["csr"]).__name__, loaded["csr"].toarray().tolist()'''),
    code('''nbckpt.save({"m": sp.csc_array(np.eye(3))}, "ckpts/from_scipy.pt")
back = torch.load("ckpts/from_scipy.pt", weights_only=True)["m"]
str(back.layout), str(back.dtype), back.to_dense().tolist()'''),
    md("""
Next: [caching and comparing runs](06_caching.ipynb).
"""),
]


CACHING = [
    md("""
# 6. Caching cells and comparing runs

Two notebook chores: not recomputing an expensive cell every time the notebook runs, and seeing
what changed between two checkpoints.
"""),
    code(SETUP + '''
import time'''),
    code('''%load_ext nbckpt'''),
    md("""
## `%%ckpt cache`: run once, load afterwards

`%%ckpt cache PATH VAR ...` runs the cell and saves the named variables, with a fingerprint of
the cell's source. When the file exists and was made from the same source, the next run loads the
variables instead of running the cell. Changing the cell (or `--force`) runs it again.
"""),
    code('''runs = 0'''),
    code('''%%ckpt cache ckpts/features.pt features labels
runs += 1
time.sleep(1)                                    # stands for an expensive computation
features = rng.standard_normal((1000, 16)).astype(np.float32)
labels = (features[:, 0] > 0).astype(np.int64)'''),
    code('''%%ckpt cache ckpts/features.pt features labels
runs += 1
time.sleep(1)                                    # stands for an expensive computation
features = rng.standard_normal((1000, 16)).astype(np.float32)
labels = (features[:, 0] > 0).astype(np.int64)'''),
    code('''runs, features.shape, labels[:8].tolist()'''),
    md("""
The second cell did not run (`runs` is still 1): it loaded `features` and `labels` from the file.

## `%ckpt diff`: what changed between two checkpoints

Two checkpoints of a toy training run, a few steps apart:
"""),
    code('''w = rng.standard_normal((16, 1)).astype(np.float32)
targets = labels[:, None].astype(np.float32)
def train(w, steps, lr=np.float32(0.1)):
    for _ in range(steps):
        grad = features.T @ (features @ w - targets) / np.float32(len(features))
        w = w - lr * grad
    return w

nbckpt.save({"w": w, "step": 0}, "ckpts/step0.pt")
w10 = train(w, 10)
nbckpt.save({"w": w10, "step": 10, "b": np.zeros(1, dtype=np.float32)}, "ckpts/step10.pt")'''),
    code('''%ckpt diff ckpts/step0.pt ckpts/step10.pt'''),
    md("""
The same comparison as data, for scripts:
"""),
    code('''report = nbckpt.diff("ckpts/step0.pt", "ckpts/step10.pt")
[(d.name, d.change) for d in report.records], [(v.name, v.change) for v in report.values]'''),
]


SHARDED = [
    md("""
# 7. Sharded checkpoints: torch.distributed.checkpoint and Dask

Models trained on many GPUs are saved in shards. PyTorch's format for that is
`torch.distributed.checkpoint` (DCP): a folder holding a `.metadata` file (which tensor is cut
into which chunks, and where each chunk is stored) and one or more `__R_I.distcp` data files.
nbckpt reads such a folder without torch or a process group, and writes folders that PyTorch
jobs resume from — in parallel, from Dask arrays, each block written by the worker that holds it.

This tutorial uses torch only to make and read DCP folders; nbckpt never imports it.
"""),
    code(SETUP + '''
import warnings
import torch
import torch.distributed.checkpoint as dcp
warnings.filterwarnings("ignore", message="torch.distributed is disabled")
_ = torch.manual_seed(0)'''),
    md("""
## A checkpoint made by torch

A model and its optimizer, saved the way FSDP and DTensor training jobs save them (here in one
process; a job with many ranks writes one data file per rank into the same folder):
"""),
    code('''model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
model(torch.randn(16, 4)).sum().backward()
optimizer.step()
dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict(), "epoch": 3},
         checkpoint_id="ckpts/torch_dcp")
sorted(os.listdir("ckpts/torch_dcp"))'''),
    md("""
`nbckpt.load` gives the nested state dict back, each tensor whole, as NumPy arrays (the
`.metadata` is a pickle, read by nbckpt's safe loader with only DCP's own classes allowed):
"""),
    code('''state = nbckpt.load("ckpts/torch_dcp")
{name: (a.shape, str(a.dtype)) for name, a in state["model"].items()}'''),
    code('''state["epoch"], state["optim"]["param_groups"][0]["lr"], sorted(state["optim"]["state"]["0"])'''),
    code('''all(np.array_equal(state["model"][k], v.numpy()) for k, v in model.state_dict().items())'''),
    md("""
## Browsing it

`nbckpt.open` lists every full tensor — global shape, dtype, the files holding its chunks —
reading nothing but `.metadata`; indexing reads only that tensor's chunks. `%ckpt ls`,
`%ckpt browse` and `nbckpt ls` on the command line show the same folder as one archive.
"""),
    code('''with nbckpt.open("ckpts/torch_dcp") as archive:
    listing = [(r.name, r.shape, str(r.dtype), r.shard) for r in archive.records[:4]]
    bias = archive["model.2.bias"]
listing'''),
    code('''np.array_equal(bias, model[2].bias.detach().numpy())'''),
    md("""
Before anything is allocated, every chunk's file, offset and length is checked against the
folder (no path outside it, nothing past a file's end), and the chunks must tile each tensor
exactly. A `.metadata` that names anything but DCP's classes is refused:
"""),
    code('''os.makedirs("ckpts/hostile")
with open("ckpts/hostile/.metadata", "wb") as f:
    f.write(b"\\x80\\x02cos\\nsystem\\nX\\x02\\x00\\x00\\x00id\\x85R.")   # would run `id` in a shell
try:
    nbckpt.load("ckpts/hostile")
except nbckpt.UnpicklingError as err:
    print(type(err).__name__, "refused", err.global_name)'''),
    md("""
## Saving a Dask-sharded state that torch loads

Start Dask — here a `LocalCluster` of two worker processes; on a real cluster you would pass
the scheduler's address, `Client("tcp://scheduler:8786")`, and save to a folder every worker
sees under the same path. The arrays are made on the workers, as a training job's shards are:
"""),
    code('''import logging
import dask.array as da
from distributed import Client, LocalCluster

cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0",
                       silence_logs=logging.CRITICAL)
client = Client(cluster)
weight = da.random.default_rng(1).standard_normal((8, 6), chunks=(4, 3))   # four blocks
weight.chunks'''),
    md("""
`nbckpt.save(..., format="dcp")` writes each Dask block as one DCP chunk, on the worker that
holds it; then `.metadata` is written once, last, atomically — a crash before that leaves the
previous checkpoint in the folder as it was.
"""),
    code('''nbckpt.save({"model": {"weight": weight}, "step": 100}, "ckpts/dask_dcp", format="dcp")
len([n for n in os.listdir("ckpts/dask_dcp") if n.endswith(".distcp")])'''),
    md("""
torch's own `dcp.load` reads it into a state dict it preallocated (a job with several ranks
would each read only its shard):
"""),
    code('''target = {"model": {"weight": torch.zeros(8, 6, dtype=torch.float64)}, "step": 0}
dcp.load(target, checkpoint_id="ckpts/dask_dcp")
target["step"], torch.equal(target["model"]["weight"], torch.from_numpy(weight.compute()))'''),
    md("""
And back into Dask, lazily: `nbckpt.dask.from_checkpoint` gives Dask arrays whose blocks are the
checkpoint's chunks, each read by the worker that computes it (`chunks=` rechunks):
"""),
    code('''import nbckpt.dask
lazy = nbckpt.dask.from_checkpoint("ckpts/dask_dcp")
lazy["model"]["weight"].chunks, lazy["step"]'''),
    code('''bool((lazy["model"]["weight"] == weight).all().compute())'''),
    code('''# NBVAL_IGNORE_OUTPUT
client.close()     # workers may log their goodbyes while the cluster shuts down
cluster.close()'''),
    md("""
That is the end of the tutorials. The README has the details: safety guarantees, devices,
performance, the command line.
"""),
]


NOTEBOOK_CELLS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_safe_loading.ipynb": SAFE,
    "03_devices.ipynb": DEVICES,
    "04_browsing.ipynb": BROWSING,
    "05_pytorch.ipynb": PYTORCH,
    "06_caching.ipynb": CACHING,
    "07_sharded.ipynb": SHARDED,
}


def write(name: str, cells) -> Path:
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    path = NOTEBOOKS / name
    nbformat.write(notebook, path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("names", nargs="*", help="only these notebooks")
    args = parser.parse_args()
    for name, cells in NOTEBOOK_CELLS.items():
        if args.names and name not in args.names:
            continue
        path = write(name, cells)
        if not args.no_run:
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                            "--inplace", "--ExecutePreprocessor.timeout=120", str(path)], check=True,
                           cwd=NOTEBOOKS)
        print("wrote", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
