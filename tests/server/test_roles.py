"""Who may do what on the team's server: real PostgreSQL, real `mlflow server` with the
`nucseg-auth` app, users made by `nucseg team add` (the `tracking_server` fixture)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

import pytest
import requests
from conftest import BIN, ROOT, free_port, pipeline_env, write_synthetic_prepared

pytestmark = pytest.mark.server

SEARCH = "/api/2.0/mlflow/experiments/search"


def client_as(server, user, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.passwords[user])
    return mlflow.MlflowClient(server.url, registry_uri=server.url)


def refused(call) -> str:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as caught:
        call()
    assert caught.value.error_code == "PERMISSION_DENIED", caught.value
    return str(caught.value)


def test_anonymous_and_wrong_passwords_are_refused(tracking_server):
    url = tracking_server.url + SEARCH
    assert requests.post(url, json={"max_results": 1}, timeout=10).status_code == 401
    assert requests.post(url, json={"max_results": 1}, auth=("reader", "not-the-password"), timeout=10).status_code == 401
    answer = requests.post(url, json={"max_results": 1}, auth=("reader", tracking_server.passwords["reader"]), timeout=10)
    assert answer.status_code == 200 and "experiments" in answer.json()


def test_a_reader_reads_but_cannot_log_or_move_an_alias(tracking_server, monkeypatch):
    client = client_as(tracking_server, "reader", monkeypatch)
    experiment = client.get_experiment_by_name("nucseg")  # made by `nucseg team add`, as the admin
    assert experiment is not None
    refused(lambda: client.create_run(experiment.experiment_id))
    refused(lambda: client.set_registered_model_alias("nucseg-unet", "champion", "1"))


def test_a_member_logs_and_registers_but_only_the_promoter_moves_champion(tracking_server, monkeypatch):
    member = client_as(tracking_server, "member", monkeypatch)
    experiment_id = member.get_experiment_by_name("nucseg").experiment_id
    run = member.create_run(experiment_id, run_name="member-run")
    member.log_metric(run.info.run_id, "dsb", 0.5)
    member.set_terminated(run.info.run_id)
    version = member.create_model_version("nucseg-unet", f"runs:/{run.info.run_id}/model", run.info.run_id).version
    message = refused(lambda: member.set_registered_model_alias("nucseg-unet", "access-test", version))
    assert "member" in message and "MANAGE" in message

    promoter = client_as(tracking_server, "promoter", monkeypatch)
    promoter.set_registered_model_alias("nucseg-unet", "access-test", version)
    assert promoter.get_model_version_by_alias("nucseg-unet", "access-test").version == version
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "member")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking_server.passwords["member"])
    refused(lambda: member.delete_registered_model_alias("nucseg-unet", "access-test"))
    client_as(tracking_server, "promoter", monkeypatch).delete_registered_model_alias("nucseg-unet", "access-test")


def nucseg(*args, env, cwd):
    return subprocess.run([str(BIN / "nucseg"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_refusal_is_one_line_naming_server_user_and_permission(tracking_server, tmp_path):
    import numpy as np
    from skimage.io import imsave

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    write_synthetic_prepared(tmp_path / "artifacts")
    wrong = {**tracking_server.env("reader"), "MLFLOW_TRACKING_PASSWORD": "wrong"}
    result = nucseg("train", env=wrong, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"MLflow tracking server {tracking_server.url} refused the password of user 'reader' (401)" in result.stderr
    assert "MLFLOW_TRACKING_USERNAME" in result.stderr

    reader = nucseg("train", env=tracking_server.env("reader"), cwd=tmp_path)
    assert reader.returncode == 1 and "Traceback" not in reader.stderr
    assert (f"MLflow tracking server {tracking_server.url} refused a request (403): user 'reader' needs EDIT on "
            "experiment 'nucseg' (the member role)") in reader.stderr

    (tmp_path / "in").mkdir()
    imsave(tmp_path / "in" / "cells.png", np.zeros((32, 32), np.uint8), check_contrast=False)
    anonymous = nucseg("score", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                       env=tracking_server.env(None), cwd=tmp_path)
    assert anonymous.returncode == 1 and "Traceback" not in anonymous.stderr
    assert "refused a request without a user (401)" in anonymous.stderr

    secret = tmp_path / "new.secret"
    secret.write_text("a-password-123")
    secret.chmod(0o600)
    not_admin = nucseg("team", "add", "mallory", "--role", "promoter", "--password-file", str(secret),
                       env=tracking_server.env("member"), cwd=tmp_path)
    assert not_admin.returncode == 1 and "Traceback" not in not_admin.stderr
    assert "refused a request (403)" in not_admin.stderr and "admin" in not_admin.stderr


def test_team_roles_can_change(tracking_server, tmp_path, monkeypatch):
    secret = tmp_path / "new.secret"
    secret.write_text("a-password-456")
    secret.chmod(0o600)
    admin = tracking_server.env("admin")
    assert nucseg("team", "add", "dana", "--role", "member", "--password-file", str(secret), env=admin,
                  cwd=tmp_path).returncode == 0
    tracking_server.passwords["dana"] = "a-password-456"
    assert nucseg("team", "role", "dana", "reader", env=admin, cwd=tmp_path).returncode == 0
    client = client_as(tracking_server, "dana", monkeypatch)
    refused(lambda: client.create_run(client.get_experiment_by_name("nucseg").experiment_id))

    secret.chmod(0o644)
    loose = nucseg("team", "password", "dana", "--password-file", str(secret), env=admin, cwd=tmp_path)
    assert loose.returncode == 1 and "chmod 600" in loose.stderr
    unknown = nucseg("team", "role", "dana", "owner", env=admin, cwd=tmp_path)
    assert unknown.returncode == 1 and "unknown role 'owner'" in unknown.stderr


def start_script(*args: str, env: dict, tmp_path) -> subprocess.Popen:
    return subprocess.Popen([str(ROOT / "scripts" / "tracking-server"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_no_authentication_beyond_loopback_only_when_insecure(tmp_path):
    env = {**pipeline_env(), "MLFLOW_HOST": "0.0.0.0", "MLFLOW_PORT": str(free_port()),
           "NUCSEG_DB_URI": "postgresql+psycopg://nobody@127.0.0.1:1/none", "NUCSEG_SERVER_HOME": str(tmp_path / "h")}
    refused_start = start_script("--no-auth", env=env, tmp_path=tmp_path)
    output = refused_start.communicate(timeout=60)[0]
    assert refused_start.returncode == 1
    assert "refusing to serve 0.0.0.0" in output and "--insecure" in output

    insecure = start_script("--no-auth", "--insecure", env=env, tmp_path=tmp_path)
    try:
        first = insecure.stdout.readline()
        assert "WARNING" in first and "WITHOUT authentication" in first
    finally:
        os.killpg(insecure.pid, signal.SIGTERM)
        insecure.wait(timeout=60)


def test_the_secrets_are_generated_owner_only_and_nowhere_a_default(tracking_server):
    for name in ("db-password", "secret-key"):
        path = tracking_server.home / name
        assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().strip()) >= 24
    assert (tracking_server.home.stat().st_mode & 0o077) == 0
    for path in [ROOT / "Makefile", ROOT / ".ci" / "run", *(ROOT / "scripts").iterdir()]:
        text = path.read_text()
        assert not re.search(r"PASSWORD:-[^}]", text), f"{path} has a default password"
        assert "admin_password" not in text, path
