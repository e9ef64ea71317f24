"""The one resume policy: what a saved state depends on, and which of it changed."""

from __future__ import annotations

import pandas as pd

from nucseg.core import resume


def write_split(path, sides):
    pd.DataFrame({"id": ["a", "b", "c"], "split": sides, "modality": ["fluorescence"] * 3}).to_csv(path, index=False)


def test_code_digest_follows_the_code(tmp_path):
    files = [tmp_path / "a.py", tmp_path / "b.py"]
    for path in files:
        path.write_text("x = 1\n")
    before = resume.code_digest(files)
    assert resume.code_digest(files) == before
    files[1].write_text("x = 2\n")
    assert resume.code_digest(files) != before
    code = resume.package_code(tmp_path / "a.py")
    assert resume.PACKAGE / "core" / "training.py" in code and code[-1] == (tmp_path / "a.py").resolve()


def test_changes_name_the_params_section_data_split_and_code(tmp_path):
    split, code = tmp_path / "split.csv", [tmp_path / "stage.py"]
    code[0].write_text("x = 1\n")
    write_split(split, ["train", "val", "test"])
    saved = resume.settings({"train": {"lr": 1}, "model": {"depth": 4}}, "md5-1", split, ("train", "val"), code)
    assert resume.changes(saved, saved) == []
    assert resume.changes(saved, resume.settings({"train": {"lr": 2}, "model": {"depth": 4}}, "md5-1", split,
                                                 ("train", "val"), code)) == ["params.train"]
    write_split(split, ["train", "val", "train"])  # a test image moved to train
    code[0].write_text("x = 2\n")
    moved = resume.settings({"train": {"lr": 1}, "model": {"depth": 4}}, "md5-2", split, ("train", "val"), code)
    assert resume.changes(saved, moved) == ["code", "data_md5", "split"]
    assert resume.digest(saved) != resume.digest(moved) and len(resume.digest(saved)) == 16


def test_only_the_sides_read_count(tmp_path):
    split = tmp_path / "split.csv"
    write_split(split, ["train", "val", "test"])
    before = resume.split_digest(split, ("train", "val"))
    write_split(split, ["train", "val", "val"])  # the test image moved, to a side that is read
    assert resume.split_digest(split, ("train",)) == resume.split_digest(split, ("train",))
    assert resume.split_digest(split, ("train", "val")) != before
