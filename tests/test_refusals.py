"""What nbckpt refuses, and how it says so: TorchScript, pickled modules; nbckpt.scan."""

from __future__ import annotations

import collections
import io
import os

import numpy as np
import pytest
import torch

import nbckpt


def canary_payload(path: str):
    """An object whose unpickling would create ``path``."""

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (path,))

    return Payload()


@pytest.mark.parametrize("weights_only", [True, False])
def test_torchscript_archive_is_refused(weights_only):
    """Port of test_serialization_zipfile_actually_jit (nbckpt refuses for any weights_only)."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 4)), buf)
    buf.seek(0)
    with pytest.raises(nbckpt.FormatError, match="TorchScript archive.*torch.jit.load"):
        nbckpt.load(buf, weights_only=weights_only)
    buf.seek(0)
    with pytest.raises(nbckpt.FormatError, match="TorchScript"):
        nbckpt.open(buf)


def test_pickled_module_is_refused_with_both_ways_forward():
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 3), buf)
    buf.seek(0)
    with pytest.raises(nbckpt.UnpicklingError) as info:
        nbckpt.load(buf)
    message = str(info.value)
    assert info.value.global_name == "torch.nn.modules.linear.Linear"
    assert "nbckpt.add_safe_globals([torch.nn.modules.linear.Linear])" in message
    assert "weights_only=False" in message and "trust" in message


def test_scan_lists_every_global_without_running_anything(tmp_path):
    canary = str(tmp_path / "ran")
    path = tmp_path / "mixed.pt"
    torch.save({"w": torch.ones(2), "d": collections.defaultdict(int), "evil": canary_payload(canary),
                "size": torch.Size([2])}, path)
    found = {g.name: g for g in nbckpt.scan(path)}
    assert not os.path.exists(canary)
    assert found["torch._utils._rebuild_tensor_v2"].allowed
    assert found["torch.Size"].allowed and found["collections.OrderedDict"].allowed
    assert not found["collections.defaultdict"].allowed
    assert found["collections.defaultdict"].reason == "not allowlisted"
    assert not found["posix.mkdir"].allowed and found["posix.mkdir"].reason.startswith("blocked")
    with nbckpt.safe_globals([collections.defaultdict]):
        assert {g.name: g for g in nbckpt.scan(path)}["collections.defaultdict"].allowed
    with pytest.raises(nbckpt.UnpicklingError):
        nbckpt.load(path)
    assert not os.path.exists(canary)


def test_scan_legacy_and_archive_info(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2), "c": collections.Counter(a=1)}, path, _use_new_zipfile_serialization=False)
    names = {g.name: g.allowed for g in nbckpt.scan(path)}
    assert names["torch._utils._rebuild_tensor_v2"] and names["collections.Counter"]
    buf = io.BytesIO()
    nbckpt.save({"a": np.arange(3)}, buf)
    buf.seek(0)
    with nbckpt.open(buf) as archive:
        assert [g.name for g in archive.info.globals] == ["torch._utils._rebuild_tensor_v2", "torch.LongStorage",
                                                           "collections.OrderedDict"]


def test_scan_leaves_stream_after_checkpoint():
    buf = io.BytesIO()
    nbckpt.save([1], buf)
    buf.write(b"tail")
    buf.seek(0)
    nbckpt.scan(buf)
    assert buf.read() == b"tail"


# -- a Python 2 string the encoding cannot decode: torch's UnicodeDecodeError, typed -------------------


def _checkpoint_with_undecodable_string() -> bytes:
    """A zip checkpoint whose data.pkl holds a SHORT_BINSTRING that is not UTF-8 (a byte flip)."""
    import io
    import pickle

    from checkpoint_tools import _records, _write

    buf = io.BytesIO()
    nbckpt.save({"w": np.arange(3, dtype=np.float32)}, buf)
    prefix, records = _records(buf.getvalue())
    assert "data.pkl" in records
    # protocol-2 pickle of a dict whose key is a Python 2 str holding byte 0xe2
    evil = pickle.PROTO + b"\x02}q\x00U\x01\xe2K\x01s."
    records["data.pkl"] = evil
    return _write(prefix, records)


def test_undecodable_python2_string_is_a_typed_error_at_every_entry_point(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(_checkpoint_with_undecodable_string())
    for attempt in (lambda: nbckpt.load(path), lambda: nbckpt.open(path).values):
        with pytest.raises(nbckpt.EncodingError) as info:
            attempt()
        # still what torch raises, for code written against torch.load
        assert isinstance(info.value, UnicodeDecodeError) and isinstance(info.value, nbckpt.FormatError)
        assert "0xe2" in str(info.value) and "encoding='latin1'" in str(info.value)
    report = nbckpt.verify(path)
    assert not report.ok and "0xe2" in str(report)
    # the encoding the user asks for decides, as in torch
    assert nbckpt.load(path, encoding="latin1") == {"\xe2": 1}
