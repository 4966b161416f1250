"""nbckpt.convert's ``format=`` (as nbckpt.save takes it) and the deprecated ``legacy=``.

Conversions between every format are in tests/test_formats.py (and, through the
command line, tests/test_cli.py); here: how the target's format is chosen.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nbckpt
from nbckpt.convert import TARGETS, target_format
from nbckpt.formats.sniff import sniff


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src.pt"
    nbckpt.save({"w": np.arange(6.0).reshape(2, 3), "b": np.ones(2, np.int32)}, str(path))
    return path


def test_format_takes_what_save_takes_and_the_flat_formats():
    assert list(TARGETS) == ["zip", "legacy", "dcp", "safetensors", "npz"]
    with pytest.raises(ValueError) as info:
        nbckpt.save({}, "/nonexistent/x.pt", format="npz")  # save names its own three first
    assert "'zip'" in str(info.value) and "'legacy'" in str(info.value) and "'dcp'" in str(info.value)


@pytest.mark.parametrize("dst, fmt, expected", [
    ("m.pt", None, "zip"), ("m.bin", None, "zip"), ("m.safetensors", None, "safetensors"), ("m.npz", None, "npz"),
    ("m.pt", "legacy", "legacy"), ("m.ckpt", "zip", "zip"), ("folder", "dcp", "dcp"), ("weights", "npz", "npz"),
    ("s3://bucket/m.pth?v=1", "legacy", "legacy"),
])
def test_target_format(dst, fmt, expected):
    assert target_format(dst, fmt) == expected


def test_format_decides_what_is_written(source, tmp_path):
    for fmt in TARGETS:
        target = tmp_path / f"target-{fmt}"
        nbckpt.convert(source, target, format=fmt)
        assert sniff(str(target)) == fmt
        np.testing.assert_array_equal(nbckpt.load(target)["w"], np.arange(6.0).reshape(2, 3))


def test_unknown_format_and_conflicts_are_refused_before_anything_is_read(tmp_path):
    missing = tmp_path / "missing.pt"  # never opened: the target is checked first
    with pytest.raises(ValueError) as info:
        nbckpt.convert(missing, tmp_path / "x.pt", format="torch")
    assert str(info.value) == ("format must be one of 'zip', 'legacy', 'dcp', 'safetensors', 'npz' ('zip' and "
                               "'legacy' are torch files, as in nbckpt.save; 'dcp' a torch.distributed.checkpoint "
                               "folder), got 'torch'")
    with pytest.raises(ValueError) as info:
        nbckpt.convert(missing, tmp_path / "x.pt", format="npz")
    assert str(info.value) == (f"format='npz' writes an npz file, but the target {tmp_path / 'x.pt'} has the "
                               f"extension of a torch file: rename the target, or leave out format= (--format) to "
                               f"write what its extension says")
    with pytest.raises(ValueError, match=r"^format='dcp' writes a torch.distributed.checkpoint folder, but the "
                                         r"target .*x.safetensors has the extension of a safetensors file"):
        nbckpt.convert(missing, tmp_path / "x.safetensors", format="dcp")
    with pytest.raises(ValueError) as info:
        nbckpt.convert(missing, tmp_path / "x.h5")
    assert str(info.value) == (f"cannot tell the format of {tmp_path / 'x.h5'} from its extension '.h5': use one "
                               f"of .pt, .pth, .ckpt, .bin, .safetensors, .npz; or pass format= (--format): "
                               f"'zip', 'legacy', 'dcp', 'safetensors', 'npz'")
    assert not list(tmp_path.iterdir())


def test_legacy_true_is_deprecated_for_format_legacy(source, tmp_path):
    with pytest.warns(DeprecationWarning) as caught:
        report = nbckpt.convert(source, tmp_path / "old.pt", legacy=True)
    assert [str(w.message) for w in caught] == [
        "nbckpt.convert(legacy=True) is deprecated: pass format='legacy', as nbckpt.save takes it"]
    assert caught[0].filename == __file__
    nbckpt.convert(source, tmp_path / "new.pt", format="legacy")
    assert report.written and sniff(str(tmp_path / "old.pt")) == "legacy"
    assert (tmp_path / "old.pt").read_bytes()[:64] == (tmp_path / "new.pt").read_bytes()[:64]


def test_legacy_false_is_deprecated_and_changes_nothing(source, tmp_path):
    with pytest.warns(DeprecationWarning, match=r"^nbckpt.convert\(legacy=False\) is deprecated: pass "
                                                r"format='zip' \(or leave format out\)"):
        nbckpt.convert(source, tmp_path / "x.npz", legacy=False)
    assert sniff(str(tmp_path / "x.npz")) == "npz"


def test_legacy_true_keeps_its_messages(source, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError) as info:
            nbckpt.convert(source, tmp_path / "x.npz", legacy=True)
        assert str(info.value) == f"legacy=True writes torch's pre-1.6 format; the target {tmp_path / 'x.npz'} is npz"
        with pytest.raises(ValueError) as info:
            nbckpt.convert(source, tmp_path / "x.pt", legacy=True, format="zip")
        assert str(info.value) == ("legacy=True asks for format='legacy', but format='zip' was passed: pass only "
                                   "format='legacy'")
        nbckpt.convert(source, tmp_path / "y.pt", legacy=True, format="legacy")  # both agree
    assert sniff(str(tmp_path / "y.pt")) == "legacy"


def test_dcp_target_needs_a_dict_at_the_top(tmp_path):
    src = tmp_path / "list.pt"
    nbckpt.save([np.ones(2)], str(src))
    with pytest.raises(nbckpt.FormatError) as info:
        nbckpt.convert(src, tmp_path / "folder", format="dcp")
    assert str(info.value) == (f"{src} holds a list; format='dcp' writes a state dict (a dict at the top, as "
                               f"torch.distributed.checkpoint does): convert it to a torch file (format='zip') "
                               f"instead")
    assert not (tmp_path / "folder").exists()
