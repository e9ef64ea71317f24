"""MLflow plumbing: a down tracking server is named at once; lineage tags; params flattening."""

from __future__ import annotations

import socket

import pytest

from nucseg.mlops import tracking


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_named(monkeypatch):
    uri = f"http://127.0.0.1:{unused_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(tracking.TrackingUnavailable, match=f"{uri} is not reachable"):
        tracking.setup()


def test_sqlite_store_keeps_artifacts_beside_the_database(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    tracking.setup("exp")
    location = mlflow.get_experiment_by_name("exp").artifact_location
    assert location == (tmp_path / "store" / "mlruns").as_uri()


def test_data_md5_reads_the_dvc_pointer(tmp_path):
    pointer = tmp_path / "data.dvc"
    pointer.write_text("outs:\n- md5: abc123.dir\n  path: data\n")
    assert tracking.data_md5(pointer) == "abc123.dir"
    assert tracking.data_md5(tmp_path / "missing.dvc") == "unknown"


def test_flatten_nested_params():
    assert tracking.flatten({"train": {"epochs": 3, "aug": {"flip": True}}, "seed": 1}) == {
        "train.epochs": 3, "train.aug.flip": True, "seed": 1}
