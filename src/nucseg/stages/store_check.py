"""Stage `store_check`: the MLflow store still holds the runs, models and registry versions the
pipeline's outputs name (`mlops.store_check`). DVC cannot see the store, so this stage is
always run (`always_changed`); it reads and writes nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nucseg import config
from nucseg.config import get_logger
from nucseg.mlops import store_check, tracking

log = get_logger("nucseg.store_check")


class StoreIncomplete(RuntimeError):
    """The store lacks what the pipeline logged; the message says what and how to rebuild it."""


def run(params: dict[str, Any], root: str | Path = ".") -> dict[str, Any]:
    import mlflow

    records = store_check.recorded(Path(root), config.REGISTERED_MODEL)
    uri = config.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        absent = records  # the local store was deleted, or never made here
    else:
        tracking.setup(create=False)
        absent = store_check.missing(mlflow.MlflowClient(), records)
    if absent:
        raise StoreIncomplete(store_check.rebuild_message(uri, absent))
    log.info("the MLflow store %s holds the %d runs, models and versions the pipeline logged", uri, len(records))
    return {"store": uri, "checked": len(records)}
