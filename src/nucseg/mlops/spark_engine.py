"""Scoring at scale: the registered segmenter applied on Spark, one model load per partition.

`spark_udf` cannot return the binary label images, so the pyfunc runs inside `mapInPandas`:
each partition loads the model once and segments its images in batches. Executors read the
image files themselves, so the paths must be visible to them (a shared filesystem on a cluster).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

RESULT_SCHEMA = "id string, labels binary, error string"


def segment_with_spark(images: list[tuple[str, Path]], model_uri: str, master: str = "local[2]",
                       partitions: int | None = None) -> dict[str, tuple[bytes, str]]:
    """{image id: (PNG-encoded labels, error)} for every image, segmented by `model_uri`."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors use this environment's Python
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(master).appName("nucseg-score")
             .config("spark.ui.enabled", "false").config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    try:
        rows = [(image_id, str(Path(path).resolve())) for image_id, path in images]
        frame = spark.createDataFrame(rows, "id string, path string")
        frame = frame.repartition(partitions or spark.sparkContext.defaultParallelism)
        result = frame.mapInPandas(_partition_scorer(model_uri), RESULT_SCHEMA).collect()
    finally:
        spark.stop()
    return {row.id: (bytes(row.labels or b""), row.error or "") for row in result}


def _partition_scorer(model_uri: str):
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")

    def score(batches):
        import mlflow
        import pandas as pd

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        model = mlflow.pyfunc.load_model(model_uri)  # once per partition
        for batch in batches:
            data, unreadable = [], {}
            for index, path in zip(batch.index, batch["path"]):
                try:
                    data.append(Path(path).read_bytes())
                except OSError as err:
                    data.append(b"")
                    unreadable[index] = f"cannot read file ({err.strerror or err})"
            out = model.predict(pd.DataFrame({"image": data}, index=batch.index))
            errors = [unreadable.get(i, e) for i, e in zip(batch.index, out["error"])]
            yield pd.DataFrame({"id": batch["id"].to_numpy(), "labels": out["labels"].to_numpy(), "error": errors})

    return score
