"""The checkpoint viewer's server extension (nbckpt/labextension), with Jupyter server's own
test fixtures (pytest-jupyter: a real ServerApp, real HTTP requests with and without the
token), and its worker pool and cache on their own."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

import nbckpt
from nbckpt.labextension import handlers as handlers_module
from nbckpt.labextension.pool import AnswerCache, ViewerError, WorkerPool, _Worker

pytest_plugins = ["pytest_jupyter.jupyter_server"]

ATTACKS = Path(__file__).resolve().parent / "data" / "attacks"
STATE = {
    "model": {"layers": {str(i): {"weight": np.arange(12, dtype=np.float32).reshape(3, 4) * (i + 1),
                                  "bias": np.zeros(4, np.float32)} for i in range(2)}},
    "head": np.linspace(-1, 1, 5),
    "step": 12,
    "config": {"lr": 0.1},
}


@pytest.fixture
def jp_server_config():
    return Config({"ServerApp": {"jpserver_extensions": {"nbckpt.labextension": True}},
                   "NbckptViewer": {"time_limit": 30, "workers": 1}})


@pytest.fixture
def root(jp_root_dir, jp_serverapp):
    """The server's root folder, with model.pt, a tuned copy and a hostile file; the workers stop after."""
    nbckpt.save(STATE, jp_root_dir / "model.pt")
    tuned = {**STATE, "head": STATE["head"] * 1.1, "step": 13}
    nbckpt.save(tuned, jp_root_dir / "tuned.pt")
    shutil.copy(ATTACKS / "g_posix_system.pt", jp_root_dir / "hostile.pt")
    yield jp_root_dir
    jp_serverapp.web_app.settings["nbckpt_pool"].close()


async def get_json(jp_fetch, endpoint, **params):
    response = await jp_fetch("nbckpt", endpoint, params=params)
    assert response.code == 200 and response.headers["Content-Type"] == "application/json"
    return json.loads(response.body)


async def error_of(jp_fetch, endpoint, **params):
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("nbckpt", endpoint, params=params)
    return caught.value.code, json.loads(caught.value.response.body)["message"]


async def test_listing_gives_header_entries_and_tree(jp_fetch, root):
    found = await get_json(jp_fetch, "listing", path="model.pt")
    assert dict(found["header"])["entries"] == "5 arrays in 5 storages, 2 other entries"
    assert found["header"][0] == ["file", "model.pt"]  # as the user named it, not the server's path
    assert [(e["name"], e["kind"]) for e in found["entries"]] == [
        ("model.layers.0.weight", "array"), ("model.layers.0.bias", "array"), ("model.layers.1.weight", "array"),
        ("model.layers.1.bias", "array"), ("head", "array"), ("step", "value"), ("config", "value")]
    assert found["entries"][0] == {"name": "model.layers.0.weight", "kind": "array", "shape": [3, 4],
                                   "dtype": "float32", "location": "cpu", "bytes": 48, "params": 12,
                                   "label": "(3, 4) float32 48 B"}
    assert found["entries"][5] == {"name": "step", "kind": "value", "label": "int: 12"}
    model = found["tree"]["children"][0]
    assert (model["path"], model["count"], model["params"], model["bytes"], model["dtypes"]) == (
        "model", 4, 32, 128, {"float32": 32})
    assert [c["path"] for c in model["children"][0]["children"]] == ["model.layers.0", "model.layers.1"]
    assert [c["name"] for c in found["tree"]["children"]] == ["model", "head", "step", "config"]


async def test_record_picture_and_value(jp_fetch, root):
    found = await get_json(jp_fetch, "record", path="model.pt", name="model.layers.1.weight")
    assert found["header"] == "(3, 4) float32 on cpu, 12 elements, 48 B"
    assert found["statistics"][:4] == [["min", "0.0"], ["max", "22.0"], ["mean", "11.0"],
                                       ["std", found["statistics"][3][1]]]
    assert found["first_values"] == "[ 0.,  2.,  4.,  6.,  8., 10., 12., 14., 16., 18., 20., 22.]"
    assert found["histogram"] and found["heatmap"]
    for kind in ("histogram", "heatmap"):
        response = await jp_fetch("nbckpt", "picture", params={"path": "model.pt", "name": "head", "kind": kind}
                                  ) if kind == "histogram" else await jp_fetch(
            "nbckpt", "picture", params={"path": "model.pt", "name": "model.layers.1.weight", "kind": kind})
        assert response.headers["Content-Type"] == "image/png" and response.body[:8] == b"\x89PNG\r\n\x1a\n"
    code, message = await error_of(jp_fetch, "picture", path="model.pt", name="head", kind="heatmap")
    assert code == 422 and message == ("ValueError: head has no heat map: it has fewer than 2 dimensions or no "
                                       "values to draw")
    assert await get_json(jp_fetch, "value", path="model.pt", name="config") == {
        "name": "config", "type": "dict", "text": "{'lr': 0.1}"}
    code, message = await error_of(jp_fetch, "record", path="model.pt", name="nope")
    assert code == 422 and message.startswith("KeyError: no array named 'nope' in ")


async def test_diff_lists_changed_records_most_changed_first(jp_fetch, root):
    found = await get_json(jp_fetch, "diff", a="model.pt", b="tuned.pt")
    assert [(row["name"], row["change"]) for row in found["rows"]] == [("head", "values")]
    assert found["rows"][0]["relative"] == pytest.approx(0.1 / 1.1) and found["equal"] == 4
    assert found["values"] == [{"name": "step", "change": "value", "a": "int: 12", "b": "int: 13"}]
    assert found["summary"] == "model.pt vs tuned.pt: 4 arrays equal, 1 with other values; 1 other value equal, 1 differ"


async def test_requests_without_the_token_are_refused(jp_fetch, root, http_server_client, jp_base_url):
    for endpoint in ("listing?path=model.pt", "record?path=model.pt&name=head", "diff?a=model.pt&b=tuned.pt",
                     "picture?path=model.pt&name=head", "value?path=model.pt&name=step"):
        response = await http_server_client.fetch(f"{jp_base_url}nbckpt/{endpoint}", raise_error=False)
        assert response.code == 403, endpoint


@pytest.mark.parametrize("path", ["../outside.pt", "/etc/passwd", "sub/../../outside.pt", "link.pt"])
async def test_paths_outside_the_root_are_refused(jp_fetch, root, path):
    outside = root.parent / "outside.pt"
    nbckpt.save({"secret": np.ones(2)}, outside)
    (root / "sub").mkdir()
    (root / "link.pt").symlink_to(outside)
    code, message = await error_of(jp_fetch, "listing", path=path)
    assert (code, message) == (403, f"{path} is outside the server's root folder")


async def test_bad_requests(jp_fetch, root):
    assert await error_of(jp_fetch, "listing") == (
        400, "the request needs ?path=PATH (a path under the server's root folder)")
    assert await error_of(jp_fetch, "listing", path="missing.pt") == (
        404, "no file missing.pt under the server's root folder")
    assert await error_of(jp_fetch, "record", path="model.pt") == (
        400, "the request needs ?name=NAME (an entry's dotted name; empty for the root)")
    assert await error_of(jp_fetch, "picture", path="model.pt", name="head", kind="movie") == (
        400, "kind must be histogram or heatmap, not 'movie'")


async def test_a_hostile_file_gives_an_error_and_the_server_keeps_answering(jp_fetch, root):
    code, message = await error_of(jp_fetch, "listing", path="hostile.pt")
    assert code == 422 and message.startswith("UnpicklingError: ") and "posix.system" in message
    assert not Path("/tmp/nbckpt-canary-g_posix_system").exists()
    found = await get_json(jp_fetch, "listing", path="model.pt")  # the server, and the worker, go on
    assert len(found["entries"]) == 7
    status = await jp_fetch("api", "status")
    assert status.code == 200


async def test_answers_are_cached_until_the_file_changes(jp_fetch, root, jp_serverapp):
    pool = jp_serverapp.web_app.settings["nbckpt_pool"]
    first = await get_json(jp_fetch, "listing", path="model.pt")
    [pid] = pool.pids()
    os.kill(pid, 9)  # a cached answer needs no worker
    time.sleep(0.1)
    assert await get_json(jp_fetch, "listing", path="model.pt") == first and pool.pids() == []
    nbckpt.save({"other": np.ones(3)}, root / "model.pt")  # replaced: another inode, size, time
    again = await get_json(jp_fetch, "listing", path="model.pt")
    assert [e["name"] for e in again["entries"]] == ["other"] and len(pool.pids()) == 1


# --------------------------------------------------------------------------------------
# The pool and the cache on their own


def test_a_worker_that_takes_too_long_is_killed_and_the_next_request_works(tmp_path):
    path = str(tmp_path / "m.pt")
    nbckpt.save(STATE, path)
    pool = WorkerPool(1, time_limit=0.01)  # not even time to start Python
    try:
        with pytest.raises(ViewerError, match=r"reading took longer than the viewer allows \(0.01 s\); the reading "
                                              r"was stopped") as caught:
            pool.call("listing", {"path": path}, [path])
        assert caught.value.kind == "Timeout" and pool.pids() == []
        with pytest.raises(ViewerError, match="took longer"):  # cached: the same file fails the same way
            pool.call("listing", {"path": path}, [path])
        pool.time_limit = 60
        os.utime(path, ns=(time.time_ns(), time.time_ns()))  # touched: read again
        assert len(pool.call("listing", {"path": path}, [path])["entries"]) == 7
    finally:
        pool.close()
    assert pool.pids() == []


def test_a_worker_that_dies_is_reported_and_replaced(tmp_path):
    worker = _Worker(1 << 30)
    try:
        worker.process.kill()
        worker.process.wait()
        with pytest.raises(ViewerError, match=r"the process reading the file ended \(killed by signal 9: out of "
                                              r"memory, or a crash\); the server is fine") as caught:
            worker.ask({"op": "listing", "args": {"path": "x"}, "files": []}, 10)
        assert caught.value.kind == "WorkerDied"
    finally:
        worker.kill()


@pytest.mark.slow  # writes a 256 MiB checkpoint
def test_the_worker_answers_errors_and_memory_exhaustion(tmp_path):
    big = tmp_path / "big.pt"
    nbckpt.save({"big": np.zeros((64, 1 << 20), np.float32)}, big)  # 256 MiB
    pool = WorkerPool(1, memory_limit=300 << 20, time_limit=60)  # Python, NumPy, matplotlib: about 140 MiB
    try:
        with pytest.raises(ViewerError) as caught:
            pool.call("value", {"path": str(big), "name": "big"}, [str(big)])
        assert caught.value.kind == "KeyError"
        assert str(caught.value).startswith("no value named 'big' in ")
        with pytest.raises(ViewerError, match="unknown request 'format_disk'"):
            pool.call("format_disk", {}, [])
        # A diff reads whole arrays: 2 x 256 MiB under a 300 MiB heap (compare says so in its own words).
        with pytest.raises(ViewerError, match="the file asks for more memory than this machine has"):
            pool.call("diff", {"a": str(big), "b": str(big)}, [str(big)])
        # The statistics of the same array work: it is mapped, and sampled.
        found = pool.call("record", {"path": str(big), "name": "big"}, [str(big)])
        assert found["header"] == "(64, 1048576) float32 on cpu, 67,108,864 elements, 256.0 MiB"
        assert found["sampled"].startswith("sampled: statistics of 1,048,576 of 67,108,864 elements")
        assert len(pool.pids()) == 1  # the same worker answered everything
    finally:
        pool.close()


def test_cache_keys_on_identity_and_evicts_the_oldest(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    cache = AnswerCache(entries=2)
    cache.put("listing", {"path": str(a)}, [str(a)], {"ok": True, "result": "a"})
    cache.put("listing", {"path": str(b)}, [str(b)], {"ok": True, "result": "b"})
    assert cache.get("listing", {"path": str(a)}, [str(a)])["result"] == "a"  # now the newest
    cache.put("value", {"path": str(b)}, [str(b)], {"ok": True, "result": "v"})
    assert cache.get("listing", {"path": str(b)}, [str(b)]) is None  # evicted
    os.replace(b, a)  # same size, another inode
    assert cache.get("listing", {"path": str(a)}, [str(a)]) is None
    assert cache.get("listing", {"path": str(tmp_path / "gone")}, [str(tmp_path / "gone")]) is None
    small = AnswerCache(entries=10, max_bytes=100)
    small.put("listing", {"path": str(a)}, [str(a)], {"ok": True, "result": "big"}, size=26)  # > a quarter
    assert small.get("listing", {"path": str(a)}, [str(a)]) is None
    for n in range(5):
        small.put("value", {"n": n}, [str(a)], {"ok": True, "result": n}, size=25)
    assert [small.get("value", {"n": n}, [str(a)]) for n in range(5)] == [
        None, {"ok": True, "result": 1}, {"ok": True, "result": 2}, {"ok": True, "result": 3},
        {"ok": True, "result": 4}]  # 100 bytes at most: the oldest went


def test_resolve_refuses_hidden_files_when_the_server_hides_them(tmp_path):
    (tmp_path / ".secret").mkdir()
    (tmp_path / ".secret" / "m.pt").write_bytes(b"x")
    assert handlers_module.resolve(str(tmp_path), ".secret/m.pt") == str(tmp_path / ".secret" / "m.pt")
    with pytest.raises(Exception, match="is hidden"):
        handlers_module.resolve(str(tmp_path), ".secret/m.pt", allow_hidden=False)


def test_the_worker_protocol_answers_every_request(monkeypatch):
    from nbckpt.labextension import reading, worker

    def exhausted(path):
        raise MemoryError

    monkeypatch.setattr(worker, "set_limits", lambda memory_limit, files: None)  # not on the test's own process
    monkeypatch.setitem(reading.OPERATIONS, "listing", exhausted)
    monkeypatch.setitem(reading.OPERATIONS, "value", lambda path, name: {"nan": float("nan")})
    requests = io.BytesIO(b'{"op": "listing", "args": {"path": "x"}}\nnot json\n'
                          b'{"op": "value", "args": {"path": "x", "name": "y"}}\n{"op": "eval"}\n')
    answers = io.BytesIO()
    worker.serve(requests, answers, 100 << 20)
    assert [json.loads(line) for line in answers.getvalue().splitlines()] == [
        {"ok": False, "error": "MemoryError", "message": "reading this needs more memory than the viewer allows "
                                                         "(100 MiB)"},
        {"ok": False, "error": "ValueError", "message": "not a JSON request: Expecting value: line 1 column 1 (char 0)"},
        {"ok": False, "error": "ValueError", "message": "the answer could not be sent as JSON: Out of range float "
                                                        "values are not JSON compliant"},
        {"ok": False, "error": "ValueError", "message": "unknown request 'eval'"},
    ]


async def test_a_dcp_folder_is_listed(jp_fetch, root):
    nbckpt.save({"enc": {"w": np.ones((2, 3), np.float32)}, "step": 5}, root / "run" / "step5", format="dcp")
    found = await get_json(jp_fetch, "listing", path="run/step5")
    assert found["header"][0] == ["file", "run/step5"]
    assert [(e["name"], e["kind"]) for e in found["entries"]] == [("enc.w", "array"), ("step", "value")]
    record = await get_json(jp_fetch, "record", path="run/step5", name="enc.w")
    assert record["header"] == "(2, 3) float32 on cpu, 6 elements, 24 B"
