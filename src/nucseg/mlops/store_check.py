"""Whether the MLflow store holds what the pipeline logged there.

DVC sees files, not the tracking store: with a fresh or another `mlflow.db`, every DVC output is
in place while the runs, models and registry versions they name are gone, and `evaluate`,
`promote` and `score` would fail on them. This lists what is missing, each with the stage that
makes it, so a user learns what to rebuild before anything reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nucseg.mlops.networks import TRAINED_NETWORKS, package_record

# What each pipeline output names in the store, and the stage that logged it.
RUN_RECORDS = {trained.stage: f"{trained.directory}/run.json" for trained in TRAINED_NETWORKS.values()}
PACKAGE_RECORDS, PACKAGE_STAGE = tuple(str(package_record(name)) for name in TRAINED_NETWORKS), "package"
PROMOTION_REPORT, PROMOTE_STAGE = "reports/promotion.json", "promote"


def recorded(root: Path, registered_model: str) -> list[tuple[str, str, str, Any]]:
    """(stage, file, kind, what) for every run, logged model and version of `registered_model`
    the pipeline's outputs under `root` name; files not made yet name nothing."""
    found = []
    for stage, name in RUN_RECORDS.items():
        path = root / name
        if path.exists():
            info = json.loads(path.read_text())
            found += [(stage, name, "run", info["run_id"]), (stage, name, "logged model", info["model_uri"])]
    for name in PACKAGE_RECORDS:
        if (root / name).exists():
            found.append((PACKAGE_STAGE, name, "logged model", json.loads((root / name).read_text())["model_uri"]))
    report = root / PROMOTION_REPORT
    if report.exists():
        promotion = json.loads(report.read_text())
        found += [(PROMOTE_STAGE, PROMOTION_REPORT, "registered version", (registered_model, candidate["version"]))
                  for candidate in promotion["candidates"].values() if candidate.get("version")]
    return found


def missing(client, records: list[tuple[str, str, str, Any]]) -> list[tuple[str, str, str, Any]]:
    """The records the store behind `client` (an `MlflowClient`) does not hold."""
    from mlflow.exceptions import MlflowException

    lookups = {"run": client.get_run,
               "logged model": lambda uri: client.get_logged_model(uri.removeprefix("models:/")),
               "registered version": lambda name_version: client.get_model_version(*map(str, name_version))}
    absent = []
    for record in records:
        try:
            lookups[record[2]](record[3])
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            absent.append(record)
    return absent


def rebuild_message(uri: str, absent: list[tuple[str, str, str, Any]]) -> str:
    """One paragraph: what is missing from which store, and the `dvc repro -s -f` that makes it again
    (`-s`: those stages alone; a bare `-f` would rerun everything above them too, trainings included)."""
    stages = sorted({stage for stage, *_ in absent}, key=[*RUN_RECORDS, PACKAGE_STAGE, PROMOTE_STAGE].index)
    if set(stages) & set(RUN_RECORDS):
        stages = [*RUN_RECORDS]  # new runs give new models, which promotion must register again
    items = "; ".join(f"{kind} {value if kind != 'registered version' else '%s v%s' % value} ({file}, stage {stage})"
                      for stage, file, kind, value in absent)
    return (f"the MLflow store {uri} lacks what the pipeline logged there: {items}. Point MLFLOW_TRACKING_URI at the "
            f"store these stages logged to, or rebuild them: `dvc repro -s -f {' '.join(stages)}`, then `dvc repro`.")
