"""A distributed Keras Tuner search: a chief and two workers as separate processes, sharing one
oracle and one parent run on the shared tracking server."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from conftest import BIN, free_port, pipeline_env, tiny_tune_params, write_synthetic_prepared

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_chief_and_two_workers_share_one_search(tracking_server, tmp_path):
    import mlflow

    write_synthetic_prepared(tmp_path / "artifacts")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_tune_params(algorithm="hyperband", max_epochs=4, hyperband_factor=2)))
    env = {**pipeline_env(), "MLFLOW_TRACKING_URI": tracking_server.url}
    oracle = f"127.0.0.1:{free_port()}"
    command = [str(BIN / "nucseg"), "tune", "--oracle", oracle, "--role"]
    processes = {}
    for name in ("chief", "worker-a", "worker-b"):
        log = open(tmp_path / f"{name}.log", "w")
        processes[name] = subprocess.Popen([*command, name.split("-")[0]], cwd=tmp_path, env=env, stdout=log,
                                           stderr=subprocess.STDOUT)
    for name, process in processes.items():
        code = process.wait(timeout=900)
        assert code == 0, f"{name} exited {code}:\n{(tmp_path / f'{name}.log').read_text()[-5000:]}"

    metrics = json.loads((tmp_path / "reports" / "tune_metrics.json").read_text())  # the chief's results
    client = mlflow.MlflowClient(tracking_server.url)
    experiment = client.get_experiment_by_name("nucseg")
    [parent] = client.search_runs([experiment.experiment_id], f"tags.`tune.oracle` = '{oracle}'")
    trials = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(trials) == metrics["trials"] >= 3 and all(t.info.status == "FINISHED" for t in trials)
    tuners = {t.data.tags["tuner_id"] for t in trials}
    assert len(tuners) == 2 and all(tuner.startswith("worker-") for tuner in tuners)  # both workers ran trials
    assert metrics["trials_this_session"] == 0  # the chief only served the oracle
    tuned = json.loads((tmp_path / "models" / "tuned" / "run.json").read_text())
    assert client.get_run(tuned["run_id"]).data.tags["tune_run_id"] == parent.info.run_id
