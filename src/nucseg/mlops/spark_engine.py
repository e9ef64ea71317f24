"""Scoring at scale: the registered segmenter applied on Spark, one model load per partition.

`spark_udf` cannot return the binary label images, so the pyfunc runs inside `mapInPandas`:
each partition loads the model once, segments its images in batches, and also draws and
measures them (`image_outputs`), so the driver only writes files. Executors read the image
files themselves, so the paths must be visible to them (a shared filesystem on a cluster).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from nucseg.core.image_outputs import ROW_SCHEMA, ImageOutputs


def score_with_spark(images: list[tuple[str, Path]], model_uri: str, modality_model: dict[str, Any] | None,
                     geojson: bool = False, master: str = "local[2]",
                     partitions: int | None = None) -> dict[str, ImageOutputs | str]:
    """{image id: its outputs, or what went wrong with it} for every image, scored by `model_uri`."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors use this environment's Python
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(master).appName("nucseg-score")
             .config("spark.ui.enabled", "false").config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    try:
        rows = [(image_id, str(Path(path).resolve())) for image_id, path in images]
        frame = spark.createDataFrame(rows, "id string, path string")
        frame = frame.repartition(partitions or spark.sparkContext.defaultParallelism)
        result = frame.mapInPandas(_partition_scorer(model_uri, modality_model, geojson), ROW_SCHEMA).collect()
    finally:
        spark.stop()
    return {row.id: row.error if row.error else ImageOutputs.from_row(row) for row in result}


def _partition_scorer(model_uri: str, modality_model: dict[str, Any] | None, geojson: bool):
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")

    def score(batches):
        import mlflow
        import pandas as pd

        from nucseg import io
        from nucseg.core.image_outputs import image_outputs

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        # Once per partition, one ONNX Runtime thread: Spark already runs one task per core.
        model = mlflow.pyfunc.load_model(model_uri, model_config={"threads": 1})
        recipe = model.unwrap_python_model().recipe
        columns = [column.split()[0] for column in ROW_SCHEMA.split(", ")]
        for batch in batches:
            data, unreadable = [], {}
            for index, path in zip(batch.index, batch["path"]):
                try:
                    data.append(Path(path).read_bytes())
                except OSError as err:
                    data.append(b"")
                    unreadable[index] = f"cannot read file ({err.strerror or err})"
            segmented = model.predict(pd.DataFrame({"image": data}, index=batch.index))
            rows = []
            for image_id, image_bytes, index, labels, error in zip(batch["id"], data, batch.index,
                                                                   segmented["labels"], segmented["error"]):
                error = unreadable.get(index, error)
                if not error:
                    try:
                        image, labels = io.decode_image(image_bytes, image_id), io.decode_image(labels, image_id)
                        rows.append(image_outputs(image_id, image, labels, recipe, modality_model, geojson).to_row())
                        continue
                    except Exception as err:  # noqa: BLE001 - one bad image never sinks the batch
                        error = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
                rows.append({"id": image_id, "error": error})
            yield pd.DataFrame(rows, columns=columns, dtype=object)  # pyarrow-backed strings confuse Spark

    return score
