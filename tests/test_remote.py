"""Checkpoints at URLs, through fsspec, against real servers on 127.0.0.1.

An S3-compatible server (moto's, driven by s3fs) and an HTTP server with byte
ranges (tests/remote_servers.py) are started once for this module and stopped
after it; both count every request and the bytes they send, which is how these
tests know what nbckpt fetched.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

import nbckpt
import nbckpt.api
from nbckpt.io import remote
from remote_servers import S3_CREDENTIALS, RangeHTTPServer, S3Server
from test_magics import ipython, run, run_cell, shell, texts  # noqa: F401 - fixtures

# The servers' clients are test dependencies (the lock installs them): a missing one fails
# the tests, never skips them.
import aiohttp  # noqa: E402,F401 - fsspec's HTTP filesystem needs it
import moto  # noqa: E402,F401 - remote_servers starts moto's S3 server
import s3fs  # noqa: E402

MiB = 1 << 20
BUCKET = "nbckpt-tests"


# --------------------------------------------------------------------------------------
# Servers


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server with one bucket; dummy credentials in the environment meanwhile."""
    patch = pytest.MonkeyPatch()
    for key, value in S3_CREDENTIALS.items():
        patch.setenv(key, value)
    server = S3Server().start()
    try:
        fs = s3fs.S3FileSystem(**server.storage_options())
        fs.mkdir(BUCKET)
        yield server
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        patch.undo()


@pytest.fixture
def s3_options(s3):
    s3.counter.reset()
    return s3.storage_options()


@pytest.fixture(scope="module")
def http_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def http(http_folder):
    server = RangeHTTPServer(str(http_folder)).start()
    try:
        yield server
    finally:
        server.stop()


def s3_fs(s3) -> "s3fs.S3FileSystem":
    return s3fs.S3FileSystem(**s3.storage_options())


def state(n: int = 4, elements: int = 1000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {f"layer{i}.weight": rng.standard_normal(elements).astype(np.float32) for i in range(n)}
    out["step"] = 7
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key]


@pytest.fixture(scope="module")
def large_http(http, http_folder):
    """A 256 MiB checkpoint of 64 arrays, served over HTTP."""
    big = {f"block{i}.weight": np.full((1 << 20,), i, np.float32) for i in range(64)}
    big["step"] = 1000
    nbckpt.save(big, str(http_folder / "large.pt"), progress=False)
    return f"{http.url}/large.pt"


# --------------------------------------------------------------------------------------
# URLs


@pytest.mark.parametrize("f, expected", [
    ("s3://bucket/model.pt", True),
    ("https://example.org/model.pt", True),
    ("memory://model.pt", True),
    ("file:///tmp/model.pt", True),
    ("simplecache::s3://bucket/model.pt", True),
    ("C:\\runs\\model.pt", False),
    ("C:/runs/model.pt", False),
    ("runs/model.pt", False),
    ("/abs/model.pt", False),
    ("run::1.pt", False),
    (b"s3://bucket/model.pt", False),
])
def test_is_url(f, expected):
    assert remote.is_url(f) is expected


# --------------------------------------------------------------------------------------
# S3


def test_save_to_s3_and_load_back(s3, s3_options):
    saved = state()
    saved["layer0.weight_view"] = saved["layer0.weight"][10:20]
    url = f"s3://{BUCKET}/roundtrip.pt"
    nbckpt.save(saved, url, storage_options=s3_options)
    assert s3_fs(s3).info(f"{BUCKET}/roundtrip.pt")["size"] > 16000
    loaded = nbckpt.load(url, storage_options=s3_options)
    assert_same(loaded, saved)
    assert np.shares_memory(loaded["layer0.weight"], loaded["layer0.weight_view"])
    assert all(g.allowed for g in nbckpt.scan(url, storage_options=s3_options))
    report = nbckpt.verify(url, storage_options=s3_options)
    assert report.ok and report.records_checked == 10 and report.source == url
    with nbckpt.open(url, storage_options=s3_options) as archive:
        assert archive.source == url
        assert archive.verify().ok
        np.testing.assert_array_equal(archive["layer2.weight"], saved["layer2.weight"])


def test_diff_between_s3_and_a_local_file(s3, s3_options, tmp_path):
    a = state()
    b = state()
    b["layer1.weight"] = b["layer1.weight"] + 1
    nbckpt.save(a, f"s3://{BUCKET}/a.pt", storage_options=s3_options)
    nbckpt.save(b, str(tmp_path / "b.pt"))
    report = nbckpt.diff(f"s3://{BUCKET}/a.pt", str(tmp_path / "b.pt"), storage_options=s3_options)
    assert [(d.name, d.change) for d in report.records] == [("layer1.weight", "values")]
    assert report.records[0].max_abs == pytest.approx(1.0, abs=1e-6)


def test_open_and_list_of_a_large_s3_checkpoint_fetches_only_the_directory_and_pickle(s3, s3_options):
    big = {f"block{i}.weight": np.full((1 << 18,), i, np.float32) for i in range(64)}  # 64 MiB
    url = f"s3://{BUCKET}/large.pt"
    nbckpt.save(big, url, storage_options=s3_options, progress=False)
    s3.counter.reset()
    with nbckpt.open(url, storage_options=s3_options) as archive:
        names = [r.name for r in archive.records]
        fetched = s3.counter.bytes_sent("GET")
        assert len(names) == 64 and archive.info.array_bytes == 64 * MiB
        assert fetched < MiB, fetched
        assert len(s3.counter.requests("GET")) <= 3, s3.counter.requests()
        s3.counter.reset()
        block = archive["block5.weight"]
    assert (block == 5).all()
    one = s3.counter.bytes_sent("GET")
    assert MiB <= one <= MiB + remote.BLOCK, one


def test_a_save_that_fails_half_way_never_reaches_s3(s3, s3_options, monkeypatch):
    url = f"s3://{BUCKET}/kept.pt"
    old = state(seed=1)
    nbckpt.save(old, url, storage_options=s3_options)
    keys_before = sorted(s3_fs(s3).ls(BUCKET, refresh=True))
    s3.counter.reset()
    real = nbckpt.api._write_zip

    def failing(write, *args, **kwargs):
        write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError("disk full while writing")

    monkeypatch.setattr(nbckpt.api, "_write_zip", failing)
    with pytest.raises(OSError, match="disk full"):
        nbckpt.save(state(seed=2), url, storage_options=s3_options)
    monkeypatch.setattr(nbckpt.api, "_write_zip", real)
    assert not [r for r in s3.counter.requests() if r.method in ("PUT", "POST")]
    assert sorted(s3_fs(s3).ls(BUCKET, refresh=True)) == keys_before
    assert_same(nbckpt.load(url, storage_options=s3_options), old)


def test_an_upload_that_fails_half_way_leaves_the_old_object(s3, s3_options, monkeypatch):
    """A multipart upload (12 MiB in 5 MiB parts) that fails at its second part is
    aborted: the old object stays whole, and no upload is left pending."""
    url = f"s3://{BUCKET}/multipart.pt"
    old = state(seed=3)
    nbckpt.save(old, url, storage_options=s3_options)
    monkeypatch.setattr(s3fs.core, "calculate_chunksize", lambda size, chunksize=None: 5 * MiB)
    real_call = s3fs.S3FileSystem._call_s3
    parts = []

    async def flaky(self, method, *args, **kwargs):
        if method == "upload_part":
            parts.append(kwargs["PartNumber"])
            if kwargs["PartNumber"] == 2:
                raise OSError("connection reset during part 2")
        return await real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", flaky)
    new = {"big": np.ones(3 * 1024 * 1024, np.float32)}  # 12 MiB
    with pytest.raises(OSError, match="part 2"):
        nbckpt.save(new, url, storage_options=s3_options)
    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", real_call)
    assert 1 in parts and 2 in parts  # it was a real multipart upload
    fs = s3_fs(s3)
    assert fs.call_s3("list_multipart_uploads", Bucket=BUCKET).get("Uploads", []) == []
    assert_same(nbckpt.load(url, storage_options=s3_options), old)
    # And the same save, uploaded in parts without failing, replaces it whole.
    nbckpt.save(new, url, storage_options=s3_options)
    np.testing.assert_array_equal(nbckpt.load(url, storage_options=s3_options)["big"], new["big"])


def test_save_uploads_once_from_a_local_temporary_file(s3, s3_options, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    nbckpt.save(state(), f"s3://{BUCKET}/once.pt", storage_options=s3_options)
    writes = [r for r in s3.counter.requests() if r.method in ("PUT", "POST")]
    assert len(writes) == 1 and writes[0].path == f"/{BUCKET}/once.pt"
    assert os.listdir(tmp_path) == []  # the temporary file is gone


def test_missing_object_is_file_not_found(s3, s3_options):
    with pytest.raises(FileNotFoundError):
        nbckpt.open(f"s3://{BUCKET}/nothing-here.pt", storage_options=s3_options)


# --------------------------------------------------------------------------------------
# HTTP


def test_load_over_http(http, http_folder):
    saved = state(n=3)
    nbckpt.save(saved, str(http_folder / "model.pt"))
    assert_same(nbckpt.load(f"{http.url}/model.pt"), saved)
    with nbckpt.open(f"{http.url}/model.pt") as archive:
        assert [r.name for r in archive.records] == ["layer0.weight", "layer1.weight", "layer2.weight"]
        assert archive.values == {"step": 7}


def test_open_and_list_of_a_large_http_checkpoint_fetches_under_a_mebibyte(http, large_http):
    http.counter.reset()
    with nbckpt.open(large_http) as archive:
        listed = [(r.name, r.shape) for r in archive.records]
        gets = http.counter.requests("GET")
        fetched = http.counter.bytes_sent("GET")
        assert listed[:2] == [("block0.weight", (1 << 20,)), ("block1.weight", (1 << 20,))] and len(listed) == 64
        assert archive.info.file_bytes > 256 * MiB
        assert fetched < MiB and len(gets) <= 3, gets
        assert all(r.range is not None for r in gets)  # every GET asked for a range
        http.counter.reset()
        block = archive["block63.weight"]
        assert (block == 63).all()
        one = http.counter.bytes_sent("GET")
        assert 4 * MiB <= one <= 4 * MiB + remote.BLOCK, one


def test_mmap_on_a_url_is_refused(http, large_http):
    with pytest.raises(ValueError, match="mmap maps local files only; http://.* is a URL"):
        nbckpt.load(large_http, mmap=True)
    with pytest.raises(ValueError, match="mmap maps local files only"):
        nbckpt.open(large_http, mmap=True)


def test_missing_http_file(http):
    with pytest.raises(FileNotFoundError):
        nbckpt.load(f"{http.url}/missing.pt")


# --------------------------------------------------------------------------------------
# Other protocols, options and install hints


def test_memory_and_file_urls(tmp_path):
    saved = state(n=2)
    nbckpt.save(saved, "memory://nbckpt-tests/model.pt")
    assert_same(nbckpt.load("memory://nbckpt-tests/model.pt"), saved)
    url = (tmp_path / "local.pt").as_uri()
    nbckpt.save(saved, url)
    assert os.listdir(tmp_path) == ["local.pt"]  # saved like a path: atomically, no leftovers
    assert_same(nbckpt.load(str(tmp_path / "local.pt")), saved)
    assert_same(nbckpt.load(url), saved)


def test_storage_options_need_a_url(tmp_path):
    path = str(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="storage_options are for URLs"):
        nbckpt.save({"a": 1}, path, storage_options={"anon": True})
    assert not os.path.exists(path)
    nbckpt.save({"a": 1}, path)
    with pytest.raises(ValueError, match="storage_options are for URLs"):
        nbckpt.load(path, storage_options={"anon": True})


def test_missing_fsspec_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    with pytest.raises(ImportError, match=r'reads and writes URLs through fsspec, which is not installed .*'
                                          r"pip install fsspec \(part of nbckpt's remote extra\) and s3fs for s3:// URLs"):
        nbckpt.load("s3://bucket/model.pt")


def test_missing_protocol_package_says_what_to_install(monkeypatch):
    import fsspec.registry  # noqa: F401 - the module, whose _registry caches imported filesystems

    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    with pytest.raises(ImportError, match=r"s3://bucket/model.pt: fsspec cannot open s3:// URLs here: "
                                          r"Install s3fs to access S3.*pip install s3fs"):
        nbckpt.open("s3://bucket/model.pt")


def test_unknown_protocol():
    with pytest.raises(ValueError, match="fsspec knows no protocol 'nosuchproto'"):
        nbckpt.load("nosuchproto://x/model.pt")


# --------------------------------------------------------------------------------------
# Jupyter


def test_magics_on_urls(shell, http, http_folder, large_http):  # noqa: F811 - fixture
    nbckpt.save(state(n=2), str(http_folder / "a.pt"))
    nbckpt.save(state(n=2, seed=5), str(http_folder / "b.pt"))
    a, b = f"{http.url}/a.pt", f"{http.url}/b.pt"
    http.counter.reset()
    listed = texts(run(shell, f"ls {large_http} block1*"))[0]
    assert listed.startswith(f"{large_http}: 64 arrays, 11 matching block1*")
    assert http.counter.bytes_sent("GET") < MiB
    info = texts(run(shell, f"info {a}"))[0]
    assert re.search(rf"^file +{re.escape(a)}$", info, re.M) and re.search(r"^arrays +2$", info, re.M)
    shown = texts(run(shell, f"show {a} layer1.weight"))[0]
    assert shown.startswith(f"layer1.weight in {a}")
    out = run(shell, f"load {a} --as st")
    assert out.stdout.startswith(f"loaded {a} as st: dict of 3 entries")
    assert shell.user_ns["st"]["step"] == 7
    compared = texts(run(shell, f"diff {a} {b}"))[0]
    assert compared.startswith(f"{a} vs {b}: 0 arrays equal, 2 with other values")
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match=f"^no such file: {http.url}/missing.pt. Check the path"):
        run(shell, f"ls {http.url}/missing.pt")


def test_cell_cache_and_save_on_a_url(shell):  # noqa: F811 - fixture
    url = "memory://nbckpt-tests/cache.pt"
    first = run_cell(shell, f"cache {url} x", "x = np.arange(3)")
    assert first.stdout.startswith(f"ran the cell ({url} did not exist) and saved x to {url}.")
    second = run_cell(shell, f"cache {url} x", "x = np.arange(3)")
    assert second.stdout.startswith(f"loaded x from {url}: the cell did not run")
    saved = run(shell, "save memory://nbckpt-tests/saved.pt x")
    assert saved.stdout.startswith("saved 1 variable to memory://nbckpt-tests/saved.pt (1 array")


def test_browser_on_a_url(http, large_http):
    from nbckpt.jupyter import ArchiveBrowser

    http.counter.reset()
    variables = {}
    browser = ArchiveBrowser(large_http, namespace=variables)
    try:
        assert http.counter.bytes_sent("GET") < MiB
        browser.select("block2.weight")
        browser.load_button.click()
        assert browser.status.value.startswith("loaded block2.weight as block2_weight")
        assert (variables["block2_weight"] == 2).all()
        # the preview and the load read that array (once each at most), nothing else
        assert http.counter.bytes_sent("GET") < MiB + 2 * 4 * MiB
    finally:
        browser.close()

