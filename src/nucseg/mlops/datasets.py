"""Which data a run saw, as MLflow datasets: the UI's Datasets column and `run.inputs` then say
which data version, split and preparation made every run.

A dataset is one side (`train`, `val`, `test`) of the split of one DVC data version. Its digest
changes when the raw data (data.dvc md5), the split or the `prepare` params change, so two runs
with the same digest saw the same examples, prepared the same way.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.data.dataset_source import DatasetSource

from nucseg import config
from nucseg.mlops import tracking

DATASET_COLUMNS = ["id", "group", "split", "modality", "height", "width"]


class DvcDatasetSource(DatasetSource):
    """Where the raw data comes from: a path tracked by a .dvc file, at an md5, in a DVC remote."""

    def __init__(self, remote: str, path: str, md5: str):
        self.remote, self.path, self.md5 = remote, path, md5

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, **kwargs):
        raise NotImplementedError("fetch the data with `dvc pull data.dvc` at the commit that logged this run")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> "DvcDatasetSource":
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"remote": self.remote, "path": self.path, "md5": self.md5}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> "DvcDatasetSource":
        return cls(source_dict.get("remote", ""), source_dict.get("path", ""), source_dict.get("md5", ""))


def default_remote(root: Path = config.ROOT) -> str:
    """`name: url` of the checkout's default DVC remote ("unknown" outside a DVC project)."""
    try:
        from dvc.config import Config

        remotes = Config(dvc_dir=str(root / ".dvc"))
        name = remotes["core"].get("remote")
        return f"{name}: {remotes['remote'][name]['url']}" if name else "unknown"
    except Exception:  # noqa: BLE001 - provenance is best effort; a run must not fail over it
        return "unknown"


def digest(md5: str, rows: pd.DataFrame, prepare_params: dict[str, Any]) -> str:
    keys = [c for c in ("id", "group", "split") if c in rows]
    payload = json.dumps({"data_md5": md5, "rows": rows[keys].values.tolist(),
                          "prepare": prepare_params}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def split_dataset(split: pd.DataFrame, context: str, prepare_params: dict[str, Any], md5: str, remote: str):
    """The `context` side of the split as an MLflow dataset named for the data version."""
    import mlflow

    rows = split.loc[split["split"] == context, [c for c in DATASET_COLUMNS if c in split]].reset_index(drop=True)
    return mlflow.data.from_pandas(rows, source=DvcDatasetSource(remote, "data", md5),
                                   name=tracking.data_version(md5), digest=digest(md5, rows, prepare_params))


def log_split_inputs(split_path: str | Path, contexts: tuple[str, ...], params: dict[str, Any]) -> None:
    """`mlflow.log_input` for each side of the split this run reads, into the active run."""
    import mlflow

    split = pd.read_csv(split_path)
    md5, remote = tracking.data_md5(), default_remote()
    with warnings.catch_warnings():  # the split's integer columns never hold missing values
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        for context in contexts:
            mlflow.log_input(split_dataset(split, context, params["prepare"], md5, remote), context=context)
