"""Scoring at scale: the registered segmenter applied on Spark, one model load per partition.

`spark_udf` cannot return the binary label images, so the segmenter runs inside `mapInPandas`:
each partition loads the registered pyfunc once and scores its images with the network and
recipe it holds, exactly as the local engine does (`image_outputs.score_or_problem`: segment, draw,
measure), so the driver only writes files. Executors read the image
files themselves, so the paths must be visible to them (a shared filesystem on a cluster).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from nucseg.core.image_outputs import ROW_SCHEMA, ImageOutputs


def score_with_spark(images: list[tuple[str, Path]], model_uri: str, modality_model: dict[str, Any] | None,
                     geojson: bool = False, master: str = "local[2]", diameter: float | None = None,
                     partitions: int | None = None, quality: str = "default") -> dict[str, ImageOutputs | str]:
    """{image id: its outputs, or what went wrong with it} for every image, scored by `model_uri`
    at `quality` (`core.quality`)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors use this environment's Python
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(master).appName("nucseg-score")
             .config("spark.ui.enabled", "false").config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    try:
        rows = [(image_id, str(Path(path).resolve())) for image_id, path in images]
        frame = spark.createDataFrame(rows, "id string, path string")
        frame = frame.repartition(partitions or spark.sparkContext.defaultParallelism)
        result = frame.mapInPandas(_partition_scorer(model_uri, modality_model, geojson, diameter, quality), ROW_SCHEMA).collect()
    finally:
        spark.stop()
    return {row.id: row.error if row.error else ImageOutputs.from_row(row) for row in result}


def _partition_scorer(model_uri: str, modality_model: dict[str, Any] | None, geojson: bool, diameter: float | None,
                      quality: str):
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")

    def score(batches):
        import mlflow
        import pandas as pd

        from nucseg.core.image_outputs import score_or_problem
        from nucseg.mlops.model_uris import segmenter_at

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        # Once per partition, one ONNX Runtime thread: Spark already runs one task per core.
        network, recipe = segmenter_at(model_uri, quality, threads=1)
        columns = [column.split()[0] for column in ROW_SCHEMA.split(", ")]
        for batch in batches:
            rows = []
            for image_id, path in zip(batch["id"], batch["path"]):
                outputs, problem = score_or_problem(image_id, path, network, recipe, modality_model,
                                                    geojson, diameter)
                rows.append(outputs.to_row() if outputs else {"id": image_id, "error": problem})
            yield pd.DataFrame(rows, columns=columns, dtype=object)  # pyarrow-backed strings confuse Spark

    return score
