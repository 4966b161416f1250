"""Progress bars for long saves and loads (tqdm.auto), quiet for small files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tqdm.auto

import nbckpt
from nbckpt import progress


class RecordingBar:
    """Stands in for tqdm: records what a bar was told."""

    made: list["RecordingBar"] = []

    def __init__(self, total, desc, **kwargs):
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        RecordingBar.made.append(self)

    def update(self, n):
        self.n += n

    def close(self):
        self.closed = True


@pytest.fixture()
def bars(monkeypatch):
    RecordingBar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    return RecordingBar.made


STATE = {"a": np.ones(1000), "b": np.arange(10, dtype=np.int32)}


def roundtrip(**kwargs):
    buf = io.BytesIO()
    nbckpt.save(STATE, buf, **kwargs)
    buf.seek(0)
    return nbckpt.load(buf, **kwargs)


def test_small_files_show_no_bar(bars):
    roundtrip()
    assert bars == []


def test_progress_true_counts_every_byte(bars):
    roundtrip(progress=True)
    assert [(b.desc, b.total, b.n, b.closed) for b in bars] == [("saving", 8040, 8040, True),
                                                                ("loading", 8040, 8040, True)]


def test_large_files_show_a_bar_by_default(bars, monkeypatch):
    monkeypatch.setattr(progress, "AUTO_THRESHOLD", 1000)
    roundtrip()
    assert [b.desc for b in bars] == ["saving", "loading"]
    roundtrip(progress=False)
    assert len(bars) == 2


def test_bar_closes_when_a_save_fails(bars):
    class Broken(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError("disk gone")

    with pytest.raises(OSError):
        nbckpt.save(STATE, Broken(), progress=True)
    assert bars[0].closed
