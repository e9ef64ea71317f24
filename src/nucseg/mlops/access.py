"""Who may do what on the team's tracking server, and a refusal said in one line.

The pipeline's roles, as MLflow permissions (the server gives every user READ by default):
reader   views runs and models;
member   logs runs and registers model versions (EDIT on the experiment and the registered model);
promoter what a member may, and moves `champion` / `challenger` (MANAGE on the registered model;
         `mlops.server_app` makes moving an alias need it).
Users are made and changed through MLflow's own auth API, by the server's admin.
"""

from __future__ import annotations

from dataclasses import dataclass

from nucseg import config
from nucseg.mlops import tracking

EXPERIMENT, REGISTERED_MODEL = "experiment", "registered_model"
ROLES: dict[str, dict[str, str]] = {
    "reader": {},
    "member": {EXPERIMENT: "EDIT", REGISTERED_MODEL: "EDIT"},
    "promoter": {EXPERIMENT: "EDIT", REGISTERED_MODEL: "MANAGE"},
}
CREDENTIALS_HELP = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)"
# What a refused request lacked, by the REST endpoint it went to (most specific first).
NEEDS = (
    ("registered-models/alias", f"MANAGE on registered model '{config.REGISTERED_MODEL}' (the promoter role)"),
    ("registered-models", f"EDIT on registered model '{config.REGISTERED_MODEL}' (the member role)"),
    ("model-versions", f"EDIT on registered model '{config.REGISTERED_MODEL}' (the member role)"),
    ("mlflow/users", "to be the server's admin"),
    ("/mlflow/", f"EDIT on experiment '{config.EXPERIMENT_NAME}' (the member role)"),
    ("artifacts", f"EDIT on experiment '{config.EXPERIMENT_NAME}' (the member role)"),
)


class AccessRefused(RuntimeError):
    """The tracking server refused this user; the message names the server, the user and what is missing."""


def current_user() -> str | None:
    """The user MLflow sends requests as (environment first, then ~/.mlflow/credentials)."""
    from mlflow.utils.credentials import read_mlflow_creds

    return read_mlflow_creds().username


def refusal_message(err: BaseException, server: str | None = None) -> str | None:
    """One line for a request the server refused (401 or 403), found anywhere in `err`'s chain of
    causes; None for any other error."""
    from mlflow.exceptions import MlflowException

    while err is not None:
        if isinstance(err, MlflowException) and err.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return _describe(err, server or config.tracking_uri())
        err = err.__cause__ or err.__context__
    return None


def _describe(err, server: str) -> str:
    user = current_user()
    if err.error_code == "UNAUTHENTICATED":
        who = f"the password of user '{user}'" if user else "a request without a user"
        return f"MLflow tracking server {server} refused {who} (401): {CREDENTIALS_HELP}"
    text = str(err.message).removeprefix("PERMISSION_DENIED: ")
    if text.startswith("API request"):  # MLflow's own refusal says only "Permission denied"
        missing = next((need for fragment, need in NEEDS if fragment in text), "a permission it lacks")
        text = f"user '{user or 'anonymous'}' needs {missing} for this step"
    return f"MLflow tracking server {server} refused a request (403): {text}; ask the server's admin for the role"


@dataclass(frozen=True)
class Team:
    """The server's users, managed as its admin (whose credentials MLflow's client reads)."""

    uri: str

    @property
    def client(self):
        from mlflow.server.auth.client import AuthServiceClient

        return AuthServiceClient(self.uri)

    def shared_resources(self) -> str:
        """The experiment's id, after making it and the registered model as the admin if missing:
        MLflow gives whoever creates a resource MANAGE on it, and a member must not own the model."""
        import mlflow
        from mlflow.exceptions import MlflowException

        client = mlflow.MlflowClient(self.uri, registry_uri=self.uri)
        experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            config.EXPERIMENT_NAME, tags={tracking.EXPERIMENT_KIND_TAG: tracking.EXPERIMENT_KIND})
        try:
            client.get_registered_model(config.REGISTERED_MODEL)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(config.REGISTERED_MODEL)
        return experiment_id

    def add(self, username: str, password: str, role: str) -> None:
        """A new user with `role`."""
        check_role(role)
        self.client.create_user(username, password)
        self.set_role(username, role)

    def set_role(self, username: str, role: str) -> None:
        """`username`'s grants on the experiment and the registered model become `role`'s."""
        grants = check_role(role)
        resources = {EXPERIMENT: self.shared_resources(), REGISTERED_MODEL: config.REGISTERED_MODEL}
        for kind, resource in resources.items():
            if kind in grants:
                self.client.grant_user_permission(username, kind, resource, grants[kind])
            else:
                self._revoke(username, kind, resource)

    def _revoke(self, username: str, kind: str, resource: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.revoke_user_permission(username, kind, resource)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # nothing granted: nothing to take back
                raise

    def set_password(self, username: str, password: str) -> None:
        self.client.update_user_password(username, password)


def check_role(role: str) -> dict[str, str]:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return ROLES[role]
