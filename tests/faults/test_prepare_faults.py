"""A disk that fills up during `prepare`: the stage stops with a message naming the file, and
every sample under its final name is complete (a real file-size limit: the kernel refuses the
write exactly as on a full disk)."""

from __future__ import annotations

import os
import resource
import subprocess

import numpy as np

from conftest import BIN, ROOT


def run_prepare(project, limit: int | None = None) -> subprocess.CompletedProcess:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "nucseg"), "prepare"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600, preexec_fn=apply if limit else None)


def test_disk_full_during_prepare_leaves_no_half_written_sample(real_slice, tmp_path):
    from nucseg.core.manifest import build_manifest

    manifest = build_manifest(real_slice)
    manifest["split"] = "train"
    for name in ("complete", "limited"):
        (tmp_path / name / "artifacts").mkdir(parents=True)
        manifest.to_csv(tmp_path / name / "artifacts" / "manifest.csv", index=False)
        (tmp_path / name / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assert run_prepare(tmp_path / "complete").returncode == 0
    sizes = sorted(p.stat().st_size for p in (tmp_path / "complete" / "artifacts" / "prepared").glob("*.npz"))
    assert sizes[0] < sizes[-1], "need samples of different sizes"

    run = run_prepare(tmp_path / "limited", limit=(sizes[0] + sizes[-1]) // 2)  # the largest cannot be written
    assert run.returncode == 1
    assert "cannot write" in run.stderr and ".npz" in run.stderr and "Traceback" not in run.stderr
    written = sorted((tmp_path / "limited" / "artifacts" / "prepared").glob("*.npz"))
    assert len(written) < len(sizes) and not list((tmp_path / "limited").rglob("*.tmp"))
    for sample in written:  # complete, and the same as without the limit
        complete = tmp_path / "complete" / "artifacts" / "prepared" / sample.name
        assert sample.read_bytes() == complete.read_bytes()
        with np.load(sample) as arrays:
            assert {"image", "labels", "target"} <= set(arrays.files)
    assert not (tmp_path / "limited" / "reports" / "prepare_summary.json").exists()
