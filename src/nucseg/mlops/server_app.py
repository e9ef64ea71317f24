"""The team server's MLflow app (`mlflow server --app-name nucseg-auth`): MLflow's own basic-auth
app, plus one rule of the pipeline's.

MLflow lets anyone with EDIT on a registered model both register versions and move its aliases.
Here the two differ: `champion` decides what every `nucseg score`, served model and Spark job of
the lab runs, so setting or deleting an alias needs MANAGE on the model (the `promoter` role),
while members, who register versions, hold EDIT. Admins pass, as everywhere in MLflow's app.
"""

from __future__ import annotations

ALIAS_ROUTE = "/mlflow/registered-models/alias"  # under /api/2.0 and /ajax-api/2.0
ALIAS_METHODS = ("POST", "DELETE")


def create_app():
    """MLflow's basic-auth app with the alias rule checked after MLflow's own checks."""
    from mlflow.server import app as flask_app
    from mlflow.server import auth

    served = auth.create_app(flask_app)
    flask_app.before_request(aliases_need_manage)
    return served


def aliases_need_manage():
    """None (go on) unless this request moves or deletes an alias without MANAGE on its model."""
    from flask import jsonify, request
    from mlflow.server import auth

    if request.method not in ALIAS_METHODS or not request.path.endswith(ALIAS_ROUTE):
        return None
    if auth.sender_is_admin() or auth._validate_can_manage_registered_model_or_prompt():
        return None
    name = auth._get_request_param("name")
    user = auth.authenticate_request().username
    response = jsonify(error_code="PERMISSION_DENIED",
                       message=f"user '{user}' may not move or delete aliases of registered model '{name}': "
                               "that needs MANAGE on the model (the promoter role)")
    response.status_code = 403
    return response


def bootstrap() -> None:
    """Create the user store's tables and the admin user once, before the server's workers start
    (MLflow does this itself for `--app-name basic-auth` only)."""
    from mlflow.server.auth import bootstrap_admin_user, get_flask_server_secret_key

    get_flask_server_secret_key()
    bootstrap_admin_user()


if __name__ == "__main__":
    bootstrap()
