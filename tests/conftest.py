"""Shared fixtures: the project root, default params, a small slice of the real data."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
REAL_TRAIN = ROOT / "data" / "stage1_train"
REAL_TEST = ROOT / "data" / "stage1_test"


@pytest.fixture(scope="session")
def default_params() -> dict:
    from nucseg.config import load_params

    return load_params(ROOT / "params.yaml")


@pytest.fixture
def params(default_params) -> dict:
    return copy.deepcopy(default_params)


def require_real_data() -> None:
    if not REAL_TRAIN.is_dir():
        pytest.fail(f"{REAL_TRAIN} is missing: run `dvc pull` first (the README's test command does)")


@pytest.fixture
def real_slice(tmp_path) -> Path:
    """A DSB-layout copy of a few real training images (with masks) to break at will."""
    require_real_data()
    target = tmp_path / "stage1_train"
    for sample in sorted(REAL_TRAIN.iterdir())[:4]:
        shutil.copytree(sample, target / sample.name)
    return target
