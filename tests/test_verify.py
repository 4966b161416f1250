"""nbckpt.verify, Archive.verify and load(verify=True): integrity checks with clear reports."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import nbckpt
from checkpoint_tools import _records, _write


def saved(obj) -> bytes:
    buf = io.BytesIO()
    nbckpt.save(obj, buf)
    return buf.getvalue()


def flip_in_record(data: bytes, name: str, index: int = 0) -> bytes:
    """Flip one bit inside record ``name``'s data (the directory is left as it was)."""
    z = zipfile.ZipFile(io.BytesIO(data))
    info = z.getinfo(f"archive/{name}")
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    out = bytearray(data)
    out[start + index] ^= 0x10
    return bytes(out)


STATE = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3), "step": 3}


def test_clean_file_is_ok():
    report = nbckpt.verify(io.BytesIO(saved(STATE)))
    assert report.ok and report.problems == [] and report.format == "zip"
    assert report.records_checked == 8
    assert "no problems" in str(report)


@pytest.mark.parametrize("record", ["data/0", "data/1", "data.pkl", "byteorder"])
def test_flipped_bit_is_reported_with_record_expected_and_found(record):
    data = flip_in_record(saved(STATE), record)
    report = nbckpt.verify(io.BytesIO(data))
    assert not report.ok
    crc = [p for p in report.problems if p.record == record and "CRC-32 mismatch" in p.message]
    assert len(crc) == 1
    z = zipfile.ZipFile(io.BytesIO(data))
    assert crc[0].expected == z.getinfo(f"archive/{record}").CRC
    assert crc[0].found != crc[0].expected
    assert record in str(report) and "problem" in report._repr_html_()


def test_load_with_verify_refuses_corrupt_data_and_plain_load_does_not():
    data = flip_in_record(saved(STATE), "data/0", 5)
    with pytest.raises(nbckpt.FormatError, match=r"archive/data/0 is corrupt: CRC-32 expected 0x[0-9a-f]{8}, found"):
        nbckpt.load(io.BytesIO(data), verify=True)
    out = nbckpt.load(io.BytesIO(data))  # torch does not check CRCs either
    assert not np.array_equal(out["w"], STATE["w"])
    np.testing.assert_array_equal(nbckpt.load(io.BytesIO(saved(STATE)), verify=True)["w"], STATE["w"])


def test_verify_with_mmap(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(flip_in_record(saved(STATE), "data/1"))
    with pytest.raises(nbckpt.FormatError, match="data/1 is corrupt"):
        nbckpt.load(path, mmap=True, verify=True)


def test_files_saved_without_crcs_get_a_note_not_a_problem():
    torch.serialization.set_crc32_options(False)
    try:
        buf = io.BytesIO()
        torch.save({"x": torch.arange(4.0)}, buf)
    finally:
        torch.serialization.set_crc32_options(True)
    report = nbckpt.verify(io.BytesIO(buf.getvalue()))
    assert report.ok and any("no CRC-32" in n for n in report.notes)
    nbckpt.load(io.BytesIO(buf.getvalue()), verify=True)


def test_structure_problems_are_reported():
    prefix, records = _records(saved(STATE))
    del records["data/1"]
    report = nbckpt.verify(io.BytesIO(_write(prefix, records)))
    assert not report.ok and "data/1" in str(report.problems[0])

    prefix, records = _records(saved({"w": np.ones(4, np.float32)}))
    records["data/0"] = records["data/0"][:8]  # the pickle still declares 4 floats
    report = nbckpt.verify(io.BytesIO(_write(prefix, records)))
    assert not report.ok and "holds 8 bytes but the pickle declares 4 x float32 = 16 bytes" in str(report)


def test_archive_verify_and_legacy_verify(tmp_path):
    path = tmp_path / "a.pt"
    path.write_bytes(saved(STATE))
    with nbckpt.open(path) as archive:
        assert archive.verify().ok
        np.testing.assert_array_equal(archive["w"], STATE["w"])  # still usable afterwards
    buf = io.BytesIO()
    torch.save({"x": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
    report = nbckpt.verify(io.BytesIO(buf.getvalue()))
    assert report.ok and report.format == "legacy stream" and "no checksums" in report.notes[0]
    report = nbckpt.verify(io.BytesIO(buf.getvalue()[:-3]))
    assert not report.ok and "truncated" in str(report)


# -- a check that says OK means load succeeds (issue 15) -------------------------------------------

ATTACKS = Path(__file__).parent / "data" / "attacks"


@pytest.mark.parametrize("name, error", [
    ("tensor_as_dict_key.pt", nbckpt.FormatError),  # NumPy arrays are unhashable: so are the listing's refs
    ("size1_stride_2_62.pt", nbckpt.FormatError),  # a 2**64-byte stride fits no index
    ("cuda_5000_digits.pt", nbckpt.DeviceError),  # no device has that index
])
def test_verify_and_open_refuse_what_load_refuses(name, error):
    path = str(ATTACKS / name)
    with pytest.raises(nbckpt.CheckpointError):
        nbckpt.load(path)
    report = nbckpt.verify(path)
    assert not report.ok, report
    with pytest.raises(error):
        nbckpt.open(path)


def test_report_lines_cannot_be_forged_by_names_in_messages():
    from nbckpt.verify import Problem, VerifyReport

    report = VerifyReport("a\nOK b.pt", "zip")
    report.problems.append(Problem("shard\nOK", "bad\r\x1b[2J"))
    assert str(report).splitlines() == ["a\\nOK b.pt: zip checkpoint, 0 records checked, 1 problem(s)",
                                        "  problem: shard\\nOK: bad\\r\\x1b[2J"]


def test_verify_notes_locations_a_default_load_cannot_place_here():
    """verify judges the file, not the machine, but its OK must not hide that load would fail here."""
    path = str(ATTACKS / "location_unknown.pt")  # a storage saved on 'evil:0'
    report = nbckpt.verify(path)
    assert report.ok
    assert [n for n in report.notes if "default map_location" in n] == [
        "the file is sound, but a load with the default map_location would fail here: nbckpt cannot place "
        "arrays on 'evil:0': it loads to 'cpu' (NumPy) and 'cuda' or 'cuda:N' (CuPy). Pass map_location='cpu' "
        "to load everything to the host."]
    with pytest.raises(nbckpt.DeviceError):
        nbckpt.load(path)
    assert nbckpt.load(path, map_location="cpu")["w"].shape == (2, 3)
    assert not [n for n in nbckpt.verify(str(ATTACKS / "ok_handmade.pt")).notes if "map_location" in n]


def test_a_problem_names_its_record_once(tmp_path):
    import pickle

    folder = tmp_path / "ckpt"
    nbckpt.save({"w": np.arange(3.0)}, folder, format="dcp")
    (folder / ".metadata").write_bytes(pickle.dumps(5, protocol=2))
    report = nbckpt.verify(folder)
    assert not report.ok
    line = str(report.problems[0])
    assert line.startswith(".metadata holds a int") and line.count(".metadata") == 1
