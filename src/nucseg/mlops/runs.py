"""A stage's MLflow run, opened one way everywhere: a new run carries its stage, the lineage of
its data and code, the params it ran with and the sides of the split it read; a stage that adds
to another stage's run (`run_id`) logs the sides it reads there."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from nucseg.mlops import datasets, tracking


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any], split_path: str | Path, sides: tuple[str, ...], *,
              run_name: str | None = None, sections: tuple[str, ...] = (), logged: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None, run_id: str | None = None) -> Iterator[Any]:
    """The active run for `stage`: new (named `run_name`, its `sections` of `params` and `logged`
    as MLflow params, `tags` beside the lineage) or, with `run_id`, that existing run."""
    import mlflow

    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as run:
        if run_id is None:
            mlflow.set_tags({"stage": stage, **tracking.lineage_tags(), **(tags or {})})
            mlflow.log_params({**tracking.flatten({key: params[key] for key in sections}), **(logged or {})})
        if sides:
            datasets.log_split_inputs(split_path, sides, params)
        yield run
