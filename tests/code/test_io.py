"""Atomic writers: complete files under the final name only, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from nucseg import io


def test_atomic_write_leaves_no_temp_file_and_normal_mode(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    io.atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "out.png"
    io.write_png(target, np.zeros((4, 4), np.uint8))
    before = target.read_bytes()
    with pytest.raises(ValueError, match="out.png"):
        io.write_png(target, np.zeros((4, 4, 5), np.float64))  # not encodable as PNG
    assert target.read_bytes() == before
    assert len(list(tmp_path.iterdir())) == 1


def test_read_image_names_file_and_problem(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(io.ImageError, match="empty.png: file is empty"):
        io.read_image(empty)
    with pytest.raises(io.ImageError, match="missing.png: file not found"):
        io.read_image(tmp_path / "missing.png")
