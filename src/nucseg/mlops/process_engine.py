"""Scoring in worker processes: one segmenter per core, so one image's watershed, measurements
and drawing run beside the next image's network instead of after it (threads would share the
GIL). Each worker loads the registered segmenter once, with one ONNX Runtime thread (the workers
already fill the cores), and reads, segments and describes whole images (`score_file`, as the
other engines do); the parent only writes. Workers are fresh interpreters (`spawn`): nothing of the
parent's MLflow store connection or runtime threads is inherited. At most two images per worker are
in flight, so memory stays that of `workers` images, not of the batch.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterator

from nucseg.core.image_outputs import ImageOutputs, score_or_problem

IN_FLIGHT_PER_WORKER = 2
_loaded: dict[tuple[str, str], tuple[Any, Any]] = {}  # in a worker: (uri, quality) -> (network, recipe)


def default_workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def score_in_processes(images: list[tuple[str, Path]], model_uri: str, tracking_uri: str, quality: str,
                       modality_model: dict[str, Any] | None, geojson: bool, diameter: float | None,
                       workers: int) -> Iterator[tuple[str, Path, ImageOutputs | None, str | None]]:
    """(image id, path, outputs or None, problem or None) of every image, in the order given.
    `model_uri` must be pinned (`models:/name/<version>`), so every worker loads the same model,
    from the store at `tracking_uri`.
    A model that no worker can load raises `ModelUnavailable` once, not a failure per image."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(tracking_uri,)) as pool:
        pending: deque = deque()
        try:
            for image_id, path in images:
                pending.append((image_id, path, pool.submit(_score, model_uri, quality, modality_model, geojson,
                                                            diameter, image_id, path)))
                if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                    yield _outcome(*pending.popleft())
            while pending:
                yield _outcome(*pending.popleft())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _outcome(image_id: str, path: Path, future) -> tuple[str, Path, ImageOutputs | None, str | None]:
    try:
        outputs, problem = future.result()
    except BrokenProcessPool:
        return image_id, path, None, "the worker process scoring it stopped (out of memory?); try --workers 1"
    return image_id, path, outputs, problem


def _start(tracking_uri: str) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the parent's store, however it was chosen


def _score(model_uri: str, quality: str, modality_model: dict[str, Any] | None, geojson: bool,
           diameter: float | None, image_id: str, path: Path) -> tuple[ImageOutputs | None, str | None]:
    from nucseg.mlops.model_uris import load_model

    if (model_uri, quality) not in _loaded:
        network, recipe, _ = load_model(model_uri, quality, threads=1)  # ModelUnavailable reaches the parent
        _loaded[(model_uri, quality)] = network, recipe
    return score_or_problem(image_id, path, *_loaded[(model_uri, quality)], modality_model, geojson, diameter)
