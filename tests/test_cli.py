"""The installed ``nbckpt`` console script, run in subprocesses.

Every sub-command, text and ``--json`` output, exit statuses 0/1/2, errors on
stderr; conversions are checked by loading the result with the target format's
own library (safetensors, numpy, torch with ``weights_only=True``).
"""

from __future__ import annotations

import fcntl
import fractions
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import nbckpt
from remote_servers import S3_CREDENTIALS, RangeHTTPServer, S3Server


@pytest.fixture(scope="module")
def command() -> str:
    """The console script pip installed next to this Python (``pip install -e .``)."""
    found = shutil.which("nbckpt", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.fail(f"the nbckpt console script is not installed in {os.path.dirname(sys.executable)}: "
                    f"run pip install -e '.[test]' (make test does)")
    return found


def run(command: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([command, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    return done


def run_json(command: str, *args: str, code: int = 0, env: dict | None = None) -> object:
    done = run(command, *args, "--json", env=env)
    assert done.returncode == code, done.stderr
    return json.loads(done.stdout)


def one_error_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def model(tmp_path):
    """A flat state dict (what torch's load_state_dict takes) plus a step counter."""
    rng = np.random.default_rng(0)
    state = {"encoder.weight": rng.standard_normal((4, 3)).astype(np.float32),
             "encoder.bias": np.arange(4, dtype=np.float32),
             "head.weight": rng.integers(-5, 5, (2, 4)).astype(np.int64)}
    path = tmp_path / "model.pt"
    nbckpt.save(state, str(path))
    return path, state


# --------------------------------------------------------------------------------------
# ls, info, show


def test_ls(command, model):
    path, _ = model
    done = run(command, "ls", path)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == f"{path}: 3 arrays"
    assert lines[1].split() == ["name", "shape", "dtype", "device", "size", "shared", "with"]
    assert lines[3].split() == ["encoder.weight", "(4,", "3)", "float32", "cpu", "48", "B"]
    data = run_json(command, "ls", path, "encoder.*")
    assert [a["name"] for a in data["arrays"]] == ["encoder.weight", "encoder.bias"]
    assert data["arrays"][0] == {"name": "encoder.weight", "shape": [4, 3], "dtype": "float32", "device": "cpu",
                                 "nbytes": 48, "storage": "0", "offset": 0, "strides": [3, 1], "shares": []}
    assert data["values"] == {}


def test_ls_lists_other_entries_and_sharing(command, tmp_path):
    w = np.ones((2, 3), np.float32)
    nbckpt.save({"w": w, "wT": w.T, "epoch": 3, "name": "run"}, str(tmp_path / "s.pt"))
    data = run_json(command, "ls", tmp_path / "s.pt")
    assert [a["shares"] for a in data["arrays"]] == [["wT"], ["w"]]
    assert data["values"] == {"epoch": 3, "name": "run"}
    assert run(command, "ls", tmp_path / "s.pt").stdout.endswith("2 other entries: epoch, name\n")


def test_info(command, model):
    path, _ = model
    done = run(command, "info", path)
    assert done.returncode == 0
    assert re.search(r"^format +zip \(torch >= 1.6\), version 3, records under model/$", done.stdout, re.M)
    data = run_json(command, "info", path)
    assert (data["arrays"], data["storages"], data["array_bytes"], data["byteorder"]) == (3, 3, 128, "little")
    assert {g["name"] for g in data["globals"]} == {"torch._utils._rebuild_tensor_v2", "torch.FloatStorage",
                                                    "torch.LongStorage", "collections.OrderedDict"}
    assert all(g["allowed"] for g in data["globals"])


@pytest.fixture
def refused(tmp_path):
    """A torch checkpoint naming a global the safe loader refuses (fractions.Fraction)."""
    path = tmp_path / "fraction.pt"
    torch.save({"w": torch.ones(2), "share": fractions.Fraction(1, 3)}, path)
    return path


def test_info_lists_refused_globals_with_status_1(command, refused):
    done = run(command, "info", refused)
    assert done.returncode == 1
    assert "fractions.Fraction" in done.stdout and "REFUSED" in done.stdout
    data = run_json(command, "info", refused, code=1)
    assert [g["name"] for g in data["globals"] if not g["allowed"]] == ["fractions.Fraction"]


def test_unsafe_loads_and_says_so_loudly(command, refused):
    line = one_error_line(run(command, "ls", refused))
    assert line.startswith("nbckpt ls: error: weights_only=True refused GLOBAL fractions.Fraction")
    assert line.endswith("If you trust this file, pass --unsafe.")
    done = run(command, "ls", refused, "--unsafe")
    assert done.returncode == 0
    assert done.stderr.startswith("nbckpt: warning: --unsafe: loading with weights_only=False. The file's pickle "
                                  "can run ANY code")
    assert "w     (2,)" in done.stdout


def test_show(command, model):
    path, state = model
    done = run(command, "show", path, "encoder.bias")
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == f"encoder.bias in {path}"
    assert "first values  [0., 1., 2., 3.]" in done.stdout
    data = run_json(command, "show", path, "encoder.bias")
    assert (data["min"], data["max"], data["mean"], data["first_values"]) == (0.0, 3.0, 1.5, [0.0, 1.0, 2.0, 3.0])
    assert data["shape"] == [4] and data["dtype"] == "float32" and data["nan_count"] == 0
    data = run_json(command, "show", path, "head.weight")
    assert data["first_values"] == state["head.weight"].ravel()[:8].tolist()


def test_show_bfloat16_nan_and_values(command, tmp_path):
    nbckpt.save({"h": np.array([1.5, np.nan, np.inf], ml_dtypes.bfloat16), "step": 9}, str(tmp_path / "b.pt"))
    data = run_json(command, "show", tmp_path / "b.pt", "h")
    assert data["first_values"] == [1.5, "nan", "inf"] and data["nan_count"] == 1 and data["inf_count"] == 1
    assert run_json(command, "show", tmp_path / "b.pt", "step") == {"file": str(tmp_path / "b.pt"), "name": "step",
                                                                     "value": 9}


def test_show_missing_name_is_one_line_on_stderr(command, model):
    path, _ = model
    line = one_error_line(run(command, "show", path, "encoder.wieght"))
    assert line == (f"nbckpt show: error: no array named 'encoder.wieght' in {path}. List the arrays with: "
                    f"nbckpt ls {path}")
    debug = run(command, "show", path, "encoder.wieght", "--debug")
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr


# --------------------------------------------------------------------------------------
# verify, diff


def test_verify(command, model, tmp_path):
    path, _ = model
    done = run(command, "verify", path)
    assert done.returncode == 0 and done.stdout.startswith(f"{path}: zip checkpoint, 9 records checked, no problems")
    data = bytearray(path.read_bytes())
    data[data.find(np.arange(4, dtype=np.float32).tobytes()) + 5] ^= 0xFF
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(data))
    done = run(command, "verify", corrupt)
    assert done.returncode == 1 and "problem: data/1: CRC-32 mismatch" in done.stdout
    report = run_json(command, "verify", corrupt, code=1)
    assert report["ok"] is False and [p["record"] for p in report["problems"]] == ["data/1"]


def test_diff(command, model, tmp_path):
    path, state = model
    other = dict(state, **{"encoder.bias": state["encoder.bias"] + 0.5})
    del other["head.weight"]
    nbckpt.save(other, str(tmp_path / "other.pt"))
    same = run(command, "diff", path, path)
    assert same.returncode == 0 and same.stdout.startswith(f"{path} vs {path}: 3 arrays equal")
    done = run(command, "diff", path, tmp_path / "other.pt")
    assert done.returncode == 1 and "1 with other values, 1 only in A" in done.stdout
    data = run_json(command, "diff", path, tmp_path / "other.pt", code=1)
    assert data["identical"] is False and data["equal_arrays"] == 1
    assert [(d["name"], d["change"], d["max_abs"]) for d in data["arrays"]] == [
        ("encoder.bias", "values", 0.5), ("head.weight", "only in A", None)]


# --------------------------------------------------------------------------------------
# convert


def test_convert_to_safetensors_and_back(command, model, tmp_path):
    path, state = model
    target = tmp_path / "model.safetensors"
    done = run(command, "convert", path, target)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == f"converted: {path} (torch) -> {target} (safetensors): 3 arrays, 128 B\n"
    loaded = safetensors.numpy.load_file(str(target))
    assert loaded.keys() == state.keys()
    for name in state:
        np.testing.assert_array_equal(loaded[name], state[name])
    back = tmp_path / "back.pth"
    assert run(command, "convert", target, back).returncode == 0
    from_torch = torch.load(back, weights_only=True)
    assert from_torch.keys() == state.keys()
    for name in state:
        np.testing.assert_array_equal(from_torch[name].numpy(), state[name])


def test_convert_keeps_bfloat16_float8_in_safetensors_and_simple_values_in_metadata(command, tmp_path):
    state = {"h": np.array([1.5, -2.0], ml_dtypes.bfloat16), "q": np.array([0.5, 448.0], ml_dtypes.float8_e4m3fn),
             "step": 12, "name": "run-1"}
    nbckpt.save(state, str(tmp_path / "a.pt"))
    data = run_json(command, "convert", tmp_path / "a.pt", tmp_path / "a.safetensors")
    assert data["lost"] == [] and data["written"] is True and data["arrays"] == 2
    loaded = safetensors.torch.load_file(str(tmp_path / "a.safetensors"))
    assert loaded["h"].dtype == torch.bfloat16 and loaded["h"].tolist() == [1.5, -2.0]
    assert loaded["q"].dtype == torch.float8_e4m3fn and loaded["q"].float().tolist() == [0.5, 448.0]
    with safetensors.safe_open(str(tmp_path / "a.safetensors"), framework="np") as opened:
        assert json.loads(opened.metadata()["nbckpt.values"]) == {"step": 12, "name": "run-1"}
    assert run(command, "convert", tmp_path / "a.safetensors", tmp_path / "b.pt").returncode == 0
    back = torch.load(tmp_path / "b.pt", weights_only=True)
    assert back["step"] == 12 and back["name"] == "run-1" and back["h"].dtype == torch.bfloat16


def test_convert_npz_both_ways(command, model, tmp_path):
    path, state = model
    target = tmp_path / "model.npz"
    assert run(command, "convert", path, target).returncode == 0
    with np.load(target) as loaded:
        assert sorted(loaded.files) == sorted(state)
        for name in state:
            np.testing.assert_array_equal(loaded[name], state[name])
    np.savez(tmp_path / "plain.npz", a=np.arange(3), b=np.ones((2, 2), np.float16))
    assert run(command, "convert", tmp_path / "plain.npz", tmp_path / "plain.pt").returncode == 0
    back = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert back["a"].tolist() == [0, 1, 2] and back["b"].dtype == torch.float16
    # names np.savez cannot take as keywords
    nbckpt.save({"file": np.arange(3), "allow_pickle": np.ones(2)}, str(tmp_path / "names.pt"))
    assert run(command, "convert", tmp_path / "names.pt", tmp_path / "names.npz").returncode == 0
    with np.load(tmp_path / "names.npz") as again:
        assert again["file"].tolist() == [0, 1, 2] and again["allow_pickle"].tolist() == [1.0, 1.0]


def test_shared_arrays_are_refused_then_copied_with_lossy(command, tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nbckpt.save({"w": w, "w_t": w.T, "b": np.zeros(2, np.float32)}, str(tmp_path / "tied.pt"))
    target = tmp_path / "tied.safetensors"
    done = run(command, "convert", tmp_path / "tied.pt", target)
    assert done.returncode == 2 and not target.exists() and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"nbckpt convert: error: refused: converting {tmp_path / 'tied.pt'} to {target} would lose:",
        "  - sharing: w and w_t share memory; written as separate copies (safetensors refuses shared tensors)",
        "Pass --lossy to convert anyway.",
    ]
    done = run(command, "convert", tmp_path / "tied.pt", target, "--lossy")
    assert done.returncode == 0
    assert done.stderr == ("nbckpt: warning: lost: sharing: w and w_t share memory; written as separate copies "
                           "(safetensors refuses shared tensors)\n")
    loaded = safetensors.torch.load_file(str(target))
    assert loaded["w_t"].tolist() == w.T.tolist() and loaded["w"].tolist() == w.tolist()


def test_lossy_npz_says_what_is_lost(command, tmp_path):
    state = {"model": {"h": np.array([1.0, 2.0], ml_dtypes.bfloat16), "w": np.ones(2, np.float32)},
             "step": 3, "betas": (0.9, 0.999)}
    nbckpt.save(state, str(tmp_path / "nested.pt"))
    target = tmp_path / "nested.npz"
    refused = run_json(command, "convert", tmp_path / "nested.pt", target, code=2)
    assert refused["written"] is False and not target.exists()
    assert refused["lost"] == [
        "nesting: 2 arrays in nested containers get dotted names (e.g. model.h from ['model']['h'])",
        "non-array values: step (int), betas (tuple) are not written",
        "dtype: model.h is bfloat16, which npz lacks; written as its raw bits (uint16)",
    ]
    done = run(command, "convert", tmp_path / "nested.pt", target, "--lossy")
    assert done.returncode == 0 and done.stderr.count("nbckpt: warning: lost: ") == 3
    with np.load(target) as loaded:
        assert sorted(loaded.files) == ["model.h", "model.w"]
        assert loaded["model.h"].dtype == np.uint16
        np.testing.assert_array_equal(loaded["model.h"], state["model"]["h"].view(np.uint16))


def test_convert_legacy(command, model, tmp_path):
    path, state = model
    target = tmp_path / "legacy.pt"
    assert run(command, "convert", path, target, "--legacy").returncode == 0
    assert not target.read_bytes().startswith(b"PK")  # the pre-1.6 stream format
    loaded = torch.load(target, weights_only=True)
    np.testing.assert_array_equal(loaded["encoder.weight"].numpy(), state["encoder.weight"])


def test_convert_mistakes(command, model, tmp_path):
    path, _ = model
    line = one_error_line(run(command, "convert", path, tmp_path / "model.h5"))
    assert line == (f"nbckpt convert: error: cannot tell the format of {tmp_path / 'model.h5'} from its extension "
                    f"'.h5': use one of .pt, .pth, .ckpt, .bin, .safetensors, .npz; or pass format= (--format): "
                    f"'zip', 'legacy', 'dcp', 'safetensors', 'npz'")
    line = one_error_line(run(command, "convert", path, tmp_path / "x.npz", "--legacy"))
    assert line == (f"nbckpt convert: error: format='legacy' writes a torch file in torch's pre-1.6 format, but the "
                    f"target {tmp_path / 'x.npz'} has the extension of an npz file: rename the target, or leave "
                    f"out format= (--format) to write what its extension says")
    line = one_error_line(run(command, "convert", path, tmp_path / "x.pt", "--legacy", "--format", "zip"))
    assert line == "nbckpt convert: error: --legacy is --format legacy; it cannot go with --format zip"


def test_convert_format_option(command, model, tmp_path):
    """--format names the target's format as nbckpt.save(format=) does; the extension need not."""
    path, state = model
    assert run(command, "convert", path, tmp_path / "old.pt", "--format", "legacy").returncode == 0
    assert not (tmp_path / "old.pt").read_bytes().startswith(b"PK")
    assert run(command, "convert", path, tmp_path / "folder", "--format", "dcp").returncode == 0
    np.testing.assert_array_equal(nbckpt.load(tmp_path / "folder")["encoder.weight"], state["encoder.weight"])


# --------------------------------------------------------------------------------------
# Usage errors and options


def test_usage_errors_exit_2(command, model):
    path, _ = model
    assert run(command).returncode == 2
    done = run(command, "lss", path)
    assert done.returncode == 2 and "invalid choice: 'lss'" in done.stderr
    line = one_error_line(run(command, "ls", path.with_name("missing.pt")))
    assert line == f"nbckpt ls: error: no such file: {path.with_name('missing.pt')}"
    line = one_error_line(run(command, "ls", path, "-o", "novalue"))
    assert line.startswith("nbckpt ls: error: --storage-option 'novalue': expected KEY=VALUE")
    line = one_error_line(run(command, "ls", path, "-o", "anon=true"))
    assert line == f"nbckpt ls: error: --storage-option is for URLs (s3://..., https://...); {path} is a local path"
    line = one_error_line(run(command, "show", path, "encoder.bias", "-m", "gpu7"))
    assert line.startswith("nbckpt show: error: --map-location gpu7: not a device or device map")
    help_text = run(command, "--help").stdout
    for sub in ("ls", "info", "show", "verify", "diff", "convert"):
        assert sub in help_text


def test_progress_bar_only_on_a_terminal(command, tmp_path):
    """A 260 MiB verify shows a bar when stderr is a terminal, and none in a pipe."""
    nbckpt.save({"big": np.zeros(65 << 20, np.float32)}, str(tmp_path / "big.pt"), progress=False)
    piped = run(command, "verify", tmp_path / "big.pt")
    assert piped.returncode == 0 and piped.stderr == ""
    leader, follower = pty.openpty()
    # A terminal of 24 x 80 (a fresh pty has no size, and tqdm draws nothing in 0 columns).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        done = subprocess.run([command, "verify", str(tmp_path / "big.pt")], stdout=subprocess.PIPE,
                              stderr=follower, stdin=subprocess.DEVNULL, timeout=120)
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert done.returncode == 0
    assert b"verifying" in shown


# --------------------------------------------------------------------------------------
# URLs


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    server = RangeHTTPServer(str(folder)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("moto")
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


def test_commands_on_urls(command, model, http, tmp_path):
    path, state = model
    shutil.copyfile(path, os.path.join(http.folder, "model.pt"))
    url = f"{http.url}/model.pt"
    data = run_json(command, "ls", url)
    assert [a["name"] for a in data["arrays"]] == list(state)
    assert run(command, "verify", url).returncode == 0
    assert run(command, "diff", url, path).returncode == 0
    assert run_json(command, "show", url, "encoder.bias")["first_values"] == [0.0, 1.0, 2.0, 3.0]
    assert run(command, "convert", url, tmp_path / "from_http.safetensors").returncode == 0
    assert safetensors.numpy.load_file(str(tmp_path / "from_http.safetensors")).keys() == state.keys()


def test_convert_to_s3_with_storage_options(command, model, s3, tmp_path):
    path, state = model
    import s3fs

    env = dict(S3_CREDENTIALS)
    endpoint = ["-o", f"client_kwargs.endpoint_url={s3.url}"]
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3.url})
    fs.mkdir("cli-bucket")
    done = run(command, "convert", path, "s3://cli-bucket/model.safetensors", *endpoint, env=env)
    assert done.returncode == 0, done.stderr
    fs.get_file("cli-bucket/model.safetensors", str(tmp_path / "got.safetensors"))
    loaded = safetensors.numpy.load_file(str(tmp_path / "got.safetensors"))
    np.testing.assert_array_equal(loaded["encoder.weight"], state["encoder.weight"])
    assert run(command, "convert", "s3://cli-bucket/model.safetensors", "s3://cli-bucket/model.pt", *endpoint,
               env=env).returncode == 0
    data = run_json(command, "ls", "s3://cli-bucket/model.pt", *endpoint, env=env)
    assert sorted(a["name"] for a in data["arrays"]) == sorted(state)


# -- hostile files: what the CLI prints, and what it converts ----------------------------------------


def test_control_characters_from_the_file_are_printed_escaped(command, tmp_path):
    path = tmp_path / "evil\x1b[2J.pt"
    nbckpt.save({"w\x1b]0;pwned\x07": np.ones(2), "ok\rFAKE": 1, "\u202eevil": "\x1b[31mred\x08"}, str(path))
    listed = run(command, "ls", path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == f"{tmp_path}/evil\\x1b[2J.pt: 1 array"
    assert "w\\x1b]0;pwned\\x07" in listed.stdout and "ok\\rFAKE, \\u202eevil" in listed.stdout
    shown = run(command, "show", path, "\u202eevil")
    assert shown.stdout == f"\\u202eevil in {tmp_path}/evil\\x1b[2J.pt: '\\x1b[31mred\\x08'\n"
    for args in (("ls", path), ("info", path), ("show", path, "ok\rFAKE"), ("diff", path, path),
                 ("verify", path), ("ls", path, "--json"), ("show", path, "nope\x07")):
        done = run(command, *args)
        assert done.returncode in (0, 1, 2), done.stderr
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]", done.stdout + done.stderr), args


def test_json_output_is_bounded_for_values_the_memo_repeats(command, tmp_path):
    value = ["x"]
    for _ in range(40):
        value = [value, value]  # 2**40 leaves, 40 lists
    torch.save({"n": 10 ** 5000, "v": value, "w": torch.ones(1)}, str(tmp_path / "laughs.pt"))  # memoized
    listed = run_json(command, "ls", tmp_path / "laughs.pt")
    assert listed["values"]["n"].startswith("<int of 16610 bits: 0x")
    flat = json.dumps(listed["values"]["v"])
    assert flat.count('"x"') < 100_000 and "<cut: the output holds at most 100000 items>" in flat


def test_convert_to_npz_never_writes_names_outside_the_folder(command, tmp_path):
    import zipfile

    nbckpt.save({"../../up": np.ones(2), "/abs": np.zeros(1), "ok": np.ones(1)}, str(tmp_path / "t.pt"))
    refused = run(command, "convert", tmp_path / "t.pt", tmp_path / "t.npz")
    assert refused.returncode == 2 and "entry names: '../../up' as '_../_../up', '/abs' as '_/abs' renamed" \
        in refused.stderr
    done = run(command, "convert", tmp_path / "t.pt", tmp_path / "t.npz", "--lossy")
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(tmp_path / "t.npz") as z:
        assert sorted(z.namelist()) == ["_../_../up.npy", "_/abs.npy", "ok.npy"]


def test_convert_refuses_views_that_would_expand_past_the_limit(command, tmp_path):
    nbckpt.save({"w": np.broadcast_to(np.float32(1), (1 << 34,))}, str(tmp_path / "b.pt"))
    done = run(command, "convert", tmp_path / "b.pt", tmp_path / "b.npz", "--lossy")
    assert one_error_line(done).startswith(
        f"nbckpt convert: error: converting {tmp_path}/b.pt would write 64.0 GiB of arrays from 4 B of stored "
        f"data: its views repeat data")
    assert not (tmp_path / "b.npz").exists()
