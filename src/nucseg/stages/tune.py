"""Stage `tune`: a Keras Tuner search over the U-Net's size and loss/optimizer knobs
(`core.search_space`); the best configuration becomes the "tuned" model.

Trials are ranked by val DSB of whole images. The best configuration is then retrained from
scratch with the untuned model's budget (`train.epochs`), so the two compete on equal terms.
The budget is `tune.max_trials` trials, so the same params give the same search on any machine;
a clock cap is opt-in (`tune.max_minutes`), and a search it cut says so (`budget_cut`).

MLflow: a parent run "tune" holds the search settings, the best hyperparameters and the trials
table; every trial is a nested run (`mlops.tuners`); the tuned model gets a top-level run
("tuned") shaped like the untuned one. The tuner's state in `models/tuner` (a persisted DVC
output) lets a rerun continue an interrupted search, unless its settings changed (`core.resume`).
With `role`, this process is a chief or worker of a distributed search (`mlops.distributed_search`).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

from nucseg import io
from nucseg.config import get_logger

log = get_logger("nucseg.tune")

import keras  # noqa: E402 - after config has set the backend

from nucseg.core import resume, training  # noqa: E402
from nucseg.core.data import load_split  # noqa: E402
from nucseg.core.search_space import VAL_METRICS, merged_params, search_settings  # noqa: E402
from nucseg.mlops import distributed_search as distributed  # noqa: E402
from nucseg.mlops import tracking, tuners  # noqa: E402
from nucseg.mlops.logged_models import MlflowLive, log_keras_model, log_training_curves  # noqa: E402
from nucseg.mlops.runs import stage_run  # noqa: E402


def run(params: dict[str, Any], split_path: str | Path = "artifacts/split.csv",
        samples_dir: str | Path = "artifacts/prepared", tuner_dir: str | Path = "models/tuner",
        model_dir: str | Path = "models/tuned", metrics_path: str | Path = "reports/tune_metrics.json",
        trials_path: str | Path = "reports/tune_trials.csv", role: str | None = None,
        oracle: str | None = None) -> dict[str, Any]:
    import mlflow

    started = time.monotonic()
    tuner_dir, model_dir = Path(tuner_dir), Path(model_dir)
    tracking.setup()
    loaded = load_split(split_path, samples_dir, ("train", "val"), labelled=("val",), desc="tune: loading")
    samples = loaded["train"], loaded["val"]
    settings = search_settings(params, tracking.data_md5(), split_path,
                               resume.package_code(__file__, tuners.__file__))
    tuner_id = distributed.join_search(role, oracle) if role else None
    if role == "worker":
        parent_run_id = distributed.find_parent_run(oracle, resume.digest(settings))
        return tuners.run_worker(params, tuner_dir, samples, samples[1], parent_run_id, tuner_id)
    resuming, parent_id = tuners.saved_search(tuner_dir, settings)
    cap = float(params["tune"]["max_minutes"])
    tuner = tuners.make_tuner(params, tuner_dir, overwrite=not resuming, val_samples=samples[1],
                              deadline=started + 60 * cap if cap > 0 else math.inf)
    if resuming:
        log.info("tune: resuming the saved search in %s (%d trials so far)", tuner_dir, len(tuner.oracle.trials))
    chief_tags = {distributed.ORACLE_TAG: oracle, distributed.PORT_TAG: oracle.rpartition(":")[2],
                  distributed.SETTINGS_TAG: resume.digest(settings)} if role == "chief" else {}
    with stage_run("tune", params, split_path, () if parent_id else ("train", "val"), run_name="tune",
                   sections=("tune",), run_id=parent_id) as parent:
        if not parent_id:
            io.write_json(tuner_dir / tuners.STATE_FILE, {"run_id": parent.info.run_id, "settings": settings})
        if chief_tags:
            mlflow.set_tags(chief_tags)
            log.info("tune: chief serving the oracle on %s; start workers with `nucseg tune --role worker "
                     "--oracle <this host>:%s`", oracle, oracle.rpartition(":")[2])
        tuner.parent_run_id = parent.info.run_id
        watchdog = distributed.watch_workers(
            tuner.oracle, float(params["tune"]["worker_timeout"]),
            lambda worker, trial: distributed.fail_trial_run(parent.info.run_id, worker, trial), oracle) \
            if role == "chief" else None
        try:
            tuners.run_search(tuner, params, *samples)
        finally:
            if watchdog:
                watchdog.set()
        minutes = round((time.monotonic() - started) / 60, 2)
        best = tuners.best_trial(tuner)
        values = tuners.space_values(best, params["tune"]["space"])
        io.write_csv(trials_path, tuners.trials_table(tuner, params))
        tuners.log_search_results(best, values, len(tuner.oracle.trials), Path(trials_path))
        cut = tuners.budget_cut(tuner, cap)
        if cut:
            log.warning("tune: %s; another machine would search differently (set tune.max_minutes: 0)", cut)
            mlflow.set_tag("budget_cut", cut)
    log_tuned_model(tuner, best, merged_params(params, values), params, samples, model_dir, split_path,
                    {"tune_run_id": parent.info.run_id, **({"budget_cut": cut} if cut else {})})
    metrics = {"best_hyperparameters": values, "best_trial_id": best.trial_id, "budget_cut": cut,
               **{f"best_trial_{k}": round(v, 5) for k, v in tuners.trial_metrics(best).items()},
               "trials": len(tuner.oracle.trials), "trials_this_session": tuner.trials_run, "minutes": minutes}
    io.write_json(metrics_path, metrics)
    log.info("tuned: %s", metrics)
    return metrics


def log_tuned_model(tuner, best, tuned: dict[str, Any], params: dict[str, Any], samples: tuple[list, list],
                    model_dir: Path, split_path: str | Path, tags: dict[str, str]) -> None:
    """The "tuned" run: retrained if tune.retrain, else the best trial's own weights (`package`
    chooses its thresholds, as for the untuned one)."""
    import mlflow

    metrics = tuners.trial_metrics(best)
    model_dir.mkdir(parents=True, exist_ok=True)
    with stage_run("tune", params, split_path, ("train", "val"), run_name="tuned",
                   logged=tracking.flatten({k: tuned[k] for k in ("model", "train", "augment", "tune")}),
                   tags={"model_kind": "tuned", "best_trial_id": best.trial_id, **tags}) as active:
        mlflow.log_metrics({f"best_trial_{k}": v for k, v in metrics.items()})
        if params["tune"]["retrain"]:
            log.info("tune: retraining trial %s's configuration with the untuned model's budget (%s epochs)",
                     best.trial_id, params["train"]["epochs"])
            model = retrain(tuned, samples, model_dir, active.info.run_id)
        else:
            log.info("tune: keeping trial %s's model", best.trial_id)
            model = tuners.load_trial_model(tuner, best)
            mlflow.log_metrics({name: metrics[name] for name in VAL_METRICS[1:]})  # as a trained run has them
        model.save(model_dir / "model.keras")
        io.write_json(model_dir / "run.json", {"run_id": active.info.run_id, "model_uri": log_keras_model(model),
                                               "hyperparameters": tuners.space_values(best, params["tune"]["space"])})


def retrain(tuned: dict[str, Any], samples: tuple[list, list], model_dir: Path, run_id: str) -> keras.Model:
    """The best configuration from scratch with the training stage's callbacks (checkpoint, early
    stopping, LR schedule) and budget (train.epochs; train.max_minutes if set)."""
    import mlflow

    keras.utils.set_random_seed(int(tuned["train"]["seed"]))
    model = training.build_model(tuned["model"], tuned["train"])
    work_dir = model_dir / ".training"
    live = MlflowLive()
    history, cut = training.fit(model, *samples, tuned, work_dir, run_id, extra_callbacks=[live])
    live.backfill(run_id, history)
    if cut:
        mlflow.set_tag("budget_cut", cut)
    training.write_history(model_dir, history)
    log_training_curves(model_dir)
    best = keras.saving.load_model(work_dir / "best.keras")
    shutil.rmtree(work_dir)
    return best
