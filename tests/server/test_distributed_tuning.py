"""A distributed Keras Tuner search: a chief and two workers as separate processes, sharing one
oracle and one parent run on the shared tracking server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest
import yaml
from conftest import BIN, free_port, tiny_tune_params, write_synthetic_prepared

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_chief_and_two_workers_share_one_search(tracking_server, as_admin, tmp_path):
    import mlflow

    write_synthetic_prepared(tmp_path / "artifacts")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_tune_params(algorithm="hyperband", max_epochs=4, hyperband_factor=2)))
    env = tracking_server.env("member")
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


def wait_for_line(path, text: str, process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None, f"{path.name} exited before '{text}':\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no '{text}' in {path.name} after {timeout} s"
        time.sleep(0.1)


def wait_for_running_trial_run(url: str, process, timeout: float = 120) -> None:
    import mlflow

    client = mlflow.MlflowClient(url)
    experiment_id = client.get_experiment_by_name("nucseg").experiment_id
    deadline = time.monotonic() + timeout
    while not client.search_runs([experiment_id], "attributes.run_name LIKE 'trial-%' and attributes.status = 'RUNNING'"):
        assert process.poll() is None and time.monotonic() < deadline, "worker a opened no trial run"
        time.sleep(0.1)


def test_a_dead_worker_is_dropped_and_the_search_ends(tracking_server, as_admin, tmp_path):
    import mlflow
    import pandas as pd

    timeout = 8
    write_synthetic_prepared(tmp_path / "artifacts")
    params = tiny_tune_params(algorithm="hyperband", max_epochs=4, hyperband_factor=2, max_minutes=0.5,
                              worker_timeout=timeout, steps_per_epoch=20)  # trials of a few seconds
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = tracking_server.env("member")
    oracle = f"127.0.0.1:{free_port()}"
    logs = {name: tmp_path / f"{name}.log" for name in ("chief", "worker-a", "worker-b")}
    processes = {}
    for name in logs:  # the chief first, then worker a, which starts the first trial alone
        processes[name] = subprocess.Popen([str(BIN / "nucseg"), "tune", "--oracle", oracle, "--role",
                                            name.split("-")[0]], cwd=tmp_path, env=env,
                                           stdout=open(logs[name], "w"), stderr=subprocess.STDOUT)
        if name == "worker-a":
            wait_for_line(logs[name], "running (#1 this session)", processes[name])
            wait_for_running_trial_run(tracking_server.url, processes[name])
            processes[name].send_signal(signal.SIGKILL)  # mid-trial: it never ends its trial or its run
            killed = time.monotonic()
    assert processes["worker-b"].wait(timeout=600) == 0, logs["worker-b"].read_text()[-5000:]
    assert processes["chief"].wait(timeout=600) == 0, logs["chief"].read_text()[-5000:]
    search_end = params["tune"]["max_minutes"] * 60 + timeout
    chief_log = logs["chief"].read_text()
    assert f"dropped worker worker-{socket.gethostname()}-{processes['worker-a'].pid}" in chief_log
    assert time.monotonic() - killed < search_end + 240  # + the chief's own work: the tuned model's thresholds

    trials = pd.read_csv(tmp_path / "reports" / "tune_trials.csv", dtype={"trial_id": str})
    [dead] = trials.loc[trials["status"] == "FAILED", "trial_id"]
    assert (trials["status"] == "COMPLETED").sum() >= 1
    client = mlflow.MlflowClient(tracking_server.url)
    parent = json.loads((tmp_path / "models" / "tuned" / "run.json").read_text())
    tune_run = client.get_run(parent["run_id"]).data.tags["tune_run_id"]
    [run] = client.search_runs([client.get_experiment_by_name("nucseg").experiment_id],
                               f"tags.`mlflow.parentRunId` = '{tune_run}' and attributes.run_name = 'trial-{dead}'")
    assert run.info.status == "FAILED" and "stopped answering" in run.data.tags["failure"]
    assert (tmp_path / "models" / "tuned" / "model.keras").exists()  # the tuned model is made all the same
