"""Refusals said in one line, the roles as MLflow permissions (hand-checked cases; the server
itself is in tests/server/test_access.py)."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST, UNAUTHENTICATED

from nucseg.mlops.access import ROLES, check_role, refusal_message
from nucseg.mlops.registry import PromotionError

SERVER = "http://tracking.lab:5000"


def plain_refusal(endpoint: str, status: int) -> MlflowException:
    """What MLflow's client raises for a refusal whose body is not JSON (the auth app's own)."""
    code = {401: UNAUTHENTICATED, 403: PERMISSION_DENIED}[status]
    return MlflowException(f"API request to endpoint {endpoint} failed with error code {status} != 200. "
                           f"Response body: 'Permission denied'", error_code=code)


@pytest.fixture
def as_bob(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "x")


@pytest.mark.parametrize("endpoint, needs", [
    ("/api/2.0/mlflow/runs/create", "EDIT on experiment 'nucseg' (the member role)"),
    ("/api/2.0/mlflow/model-versions/create", "EDIT on registered model 'nucseg-unet' (the member role)"),
    ("/api/2.0/mlflow/registered-models/alias", "MANAGE on registered model 'nucseg-unet' (the promoter role)"),
    ("/api/3.0/mlflow/users/create", "to be the server's admin"),
])
def test_a_403_names_server_user_and_the_missing_permission(as_bob, endpoint, needs):
    message = refusal_message(plain_refusal(endpoint, 403), SERVER)
    assert message == (f"MLflow tracking server {SERVER} refused a request (403): user 'bob' needs {needs} for "
                       "this step; ask the server's admin for the role")


def test_a_401_says_how_to_give_credentials(as_bob, monkeypatch):
    message = refusal_message(plain_refusal("/api/2.0/mlflow/experiments/get-by-name", 401), SERVER)
    assert message.startswith(f"MLflow tracking server {SERVER} refused the password of user 'bob' (401)")
    assert "MLFLOW_TRACKING_USERNAME" in message
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.mlflow/credentials either
    assert "refused a request without a user (401)" in refusal_message(plain_refusal("/x", 401), SERVER)


def test_the_servers_own_words_are_kept_and_causes_are_followed(as_bob):
    server_said = MlflowException("PERMISSION_DENIED: user 'bob' may not move aliases", error_code=PERMISSION_DENIED)
    try:
        try:
            raise server_said
        except MlflowException as err:
            raise PromotionError("cannot load model models:/nucseg-unet/1") from err
    except PromotionError as wrapped:
        message = refusal_message(wrapped, SERVER)
    assert message == (f"MLflow tracking server {SERVER} refused a request (403): user 'bob' may not move aliases; "
                       "ask the server's admin for the role")


def test_other_errors_are_not_refusals():
    assert refusal_message(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), SERVER) is None
    assert refusal_message(ValueError("bad"), SERVER) is None


def test_only_the_promoter_manages_the_model():
    assert ROLES["reader"] == {}
    assert ROLES["member"] == {"experiment": "EDIT", "registered_model": "EDIT"}
    assert ROLES["promoter"] == {"experiment": "EDIT", "registered_model": "MANAGE"}
    with pytest.raises(ValueError, match="unknown role 'owner'"):
        check_role("owner")
