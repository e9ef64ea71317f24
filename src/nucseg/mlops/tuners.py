"""Keras Tuner searches the way the pipeline runs them: a budget of trials (and an opt-in clock
cap) in the oracle, each trial a nested MLflow run, a saved search resumed only under the same
settings, and a worker's loop for a distributed search.

Budget: keras-tuner 1.4.8 has no trial limit for Hyperband and no clock cap, so the oracle gets
both (`BudgetedOracleMixin`): once either is spent, it answers a request for a new trial with
"stopped", as it does when a search is complete. No trial is half-created, so the saved state
stays a valid point to resume from, and a trial waiting in the oracle's retry queue is held back
too. At least one trial always completes; a running trial is never cut short. The Keras Tuner
internals this needs live in `keras_tuner_compat`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from nucseg.config import get_logger

log = get_logger("nucseg.tune")

import keras  # noqa: E402 - after config has set the backend
import keras_tuner as kt  # noqa: E402

from nucseg.core import resume  # noqa: E402
from nucseg.core.data import CropDataset, validation_crops_from_params  # noqa: E402
from nucseg.core.search_space import OBJECTIVE, VAL_METRICS, UNetHyperModel, mean_result  # noqa: E402
from nucseg.mlops import keras_tuner_compat as compat  # noqa: E402
from nucseg.mlops.distributed_search import Heartbeat, LivenessOracleMixin  # noqa: E402
from nucseg.mlops.logged_models import MlflowLive  # noqa: E402

class BudgetedOracleMixin:
    """An oracle that starts no trial once `trial_limit` trials exist or `deadline`
    (time.monotonic) has passed, if one has completed; `cut_short` says whether the clock stopped
    it. Comes before the keras-tuner oracle class in the bases."""

    deadline: float = math.inf
    trial_limit: int | None = None
    cut_short: bool = False

    @compat.synchronized
    def create_trial(self, tuner_id):
        if tuner_id not in self.ongoing_trials and completed_trials(self):
            limit_reached = self.trial_limit is not None and len(self.trials) >= self.trial_limit
            if limit_reached or time.monotonic() >= self.deadline:
                self.cut_short = self.cut_short or not limit_reached
                log.info("tune: %s after %d trial(s); starting no more",
                         "trial budget spent" if limit_reached else "clock cap reached", len(self.trials))
                return compat.stop_answer(self, tuner_id)  # as for a finished search
        return super().create_trial(tuner_id)


class BudgetedHyperbandOracle(LivenessOracleMixin, BudgetedOracleMixin, kt.oracles.HyperbandOracle):
    pass


class BudgetedBayesianOracle(LivenessOracleMixin, BudgetedOracleMixin, kt.oracles.BayesianOptimizationOracle):
    pass


class MlflowTrialMixin:
    """Each trial a nested MLflow run (params, live epoch metrics, best val metrics) under the
    parent run `parent_run_id`. Must come before the keras-tuner class in the bases so its hooks
    wrap the tuner's."""

    parent_run_id: str | None = None
    trials_run = 0
    heartbeat_seconds = 0.0  # a worker of a distributed search tells the chief it is alive this often

    def run_trial(self, trial, *args, **kwargs):
        """The trial; a distributed worker tells the chief it is alive all along."""
        with Heartbeat(self.oracle, trial.trial_id, self.heartbeat_seconds) if self.heartbeat_seconds \
                else contextlib.nullcontext():
            return self._run_tracked_trial(trial, *args, **kwargs)

    def _run_tracked_trial(self, trial, *args, **kwargs):
        """The trial, in its nested run if the tracking store takes one: a store that does not
        answer costs the trial its MLflow run (with a warning naming it), never the search."""
        import mlflow

        self.trials_run += 1
        values = trial.hyperparameters.values
        log.info("tune: trial %s running (#%d this session): %s", trial.trial_id, self.trials_run, values)
        run = _tracked(f"open trial {trial.trial_id}'s run", lambda: mlflow.start_run(
            nested=True, parent_run_id=self.parent_run_id, run_name=f"trial-{trial.trial_id}"))
        if run:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), MlflowLive()]
            _tracked("tag the trial's run", lambda: (mlflow.set_tags(
                {"stage": "tune", "trial_id": trial.trial_id, "tuner_id": self.tuner_id}), mlflow.log_params(values)))
        status = "FAILED"
        try:
            results = super().run_trial(trial, *args, **kwargs)
            best = mean_result(results)
            status = "FINISHED"
        finally:
            if run:
                if status == "FINISHED":
                    _tracked("log the trial's result", lambda: mlflow.log_metrics(
                        {"val_dsb": best["val_dsb"], **{f"final_{name}": best[name] for name in VAL_METRICS[1:]}}))
                _tracked("close the trial's run", lambda: mlflow.end_run(status))
        log.info("tune: trial %s finished: %s", trial.trial_id, best)
        return results

    def on_trial_end(self, trial) -> None:
        # keras-tuner swallows a trial's exception into `trial.message`; say it out loud.
        if trial.status != compat.TrialStatus.COMPLETED:
            log.warning("tune: trial %s %s:\n%s", trial.trial_id, trial.status.lower(), trial.message)
        super().on_trial_end(trial)


def _tracked(what: str, call):
    """`call()`'s result, or None and a warning naming the tracking store if it failed."""
    import mlflow

    try:
        return call()
    except Exception as err:  # noqa: BLE001 - the store's failures must not end the search
        log.warning("tune: could not %s: MLflow tracking store %s did not answer (%s: %s)", what,
                    mlflow.get_tracking_uri(), type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return None


# keras-tuner's Hyperband and BayesianOptimization build their own oracle, without a budget;
# these build the tuner on a budgeted one and keep the rest of the class.

class MlflowHyperband(MlflowTrialMixin, kt.Hyperband):
    """Hyperband with MLflow trial runs, cut after `max_trials` trials (0: its full brackets)."""

    def __init__(self, *, objective, max_epochs: int, factor: int, max_trials: int, seed: int, deadline: float,
                 **kwargs):
        oracle = BudgetedHyperbandOracle(objective, max_epochs=max_epochs, factor=factor, seed=seed)
        oracle.deadline, oracle.trial_limit = deadline, max_trials or None
        compat.build_on_oracle(self, oracle, **kwargs)


class MlflowBayesianOptimization(MlflowTrialMixin, kt.BayesianOptimization):
    """Bayesian optimisation with MLflow trial runs, `max_trials` of them."""

    def __init__(self, *, objective, max_trials: int, seed: int, deadline: float, **kwargs):
        oracle = BudgetedBayesianOracle(objective, max_trials=max_trials, seed=seed)
        oracle.deadline = deadline
        compat.build_on_oracle(self, oracle, **kwargs)


def make_tuner(params: dict[str, Any], directory: Path, overwrite: bool, deadline: float,
               val_samples: list[dict[str, Any]]) -> MlflowTrialMixin:
    compat.check()
    cfg = params["tune"]
    common = {"hypermodel": UNetHyperModel(params, val_samples), "objective": kt.Objective(*OBJECTIVE),
              "seed": int(params["train"]["seed"]), "directory": str(directory), "project_name": "search",
              "overwrite": overwrite, "deadline": deadline}
    if cfg["algorithm"] == "hyperband":
        return MlflowHyperband(max_epochs=int(cfg["max_epochs"]), factor=int(cfg["hyperband_factor"]),
                               max_trials=int(cfg["max_trials"]), **common)
    if cfg["algorithm"] == "bayesian":
        return MlflowBayesianOptimization(max_trials=int(cfg["max_trials"]), **common)
    raise ValueError(f"tune.algorithm must be 'hyperband' or 'bayesian', got {cfg['algorithm']!r}")


def run_search(tuner: kt.Tuner, params: dict[str, Any], train_samples: list[dict], val_samples: list[dict]) -> None:
    """Trials train on random augmented crops (tune.steps_per_epoch batches an epoch) and are
    scored on the same fixed validation crops as the training stage."""
    dataset = CropDataset.from_params(train_samples, params, steps_per_epoch=int(params["tune"]["steps_per_epoch"]))
    validation = validation_crops_from_params(val_samples, params)
    tuner.search(dataset, validation_data=validation, epochs=int(params["tune"]["max_epochs"]), verbose=2)


def run_worker(params: dict[str, Any], tuner_dir: Path, samples: tuple[list, list], val_images: list[dict[str, Any]],
               parent_run_id: str, tuner_id: str) -> dict[str, Any]:
    """Run trials for the chief until it says the search is over; every trial a nested run
    under the chief's parent run. The chief writes the results."""
    tuner = make_tuner(params, tuner_dir, overwrite=False, deadline=math.inf,  # the chief's oracle keeps time
                       val_samples=val_images)
    tuner.parent_run_id = parent_run_id
    tuner.heartbeat_seconds = float(params["tune"]["worker_timeout"]) / 4
    log.info("tune: %s joined the search of parent run %s", tuner_id, parent_run_id)
    run_search(tuner, params, *samples)
    return {"role": "worker", "tuner_id": tuner_id, "parent_run_id": parent_run_id, "trials_run": tuner.trials_run}


def completed_trials(tuner_or_oracle) -> list:
    oracle = getattr(tuner_or_oracle, "oracle", tuner_or_oracle)
    return [t for t in oracle.trials.values() if t.status == compat.TrialStatus.COMPLETED]


def trial_metrics(trial) -> dict[str, float]:
    """The val metrics keras-tuner recorded for a trial (`trial_result`'s); NaN if none."""
    return {name: float(trial.metrics.get_last_value(name)) if trial.metrics.exists(name) else math.nan
            for name in VAL_METRICS}


def best_trial(tuner: kt.Tuner):
    metric, direction = OBJECTIVE
    pick = max if direction == "max" else min
    # in trial order, so a tie (tiny searches score alike) goes to the same trial after a reload
    best = pick(sorted(completed_trials(tuner), key=lambda t: t.trial_id), key=lambda t: t.score, default=None)
    if best is None:
        raise RuntimeError(f"no tuning trial completed; see {tuner.project_dir}/trial_*/trial.json")
    return best


def space_values(trial, space: dict[str, list]) -> dict[str, Any]:
    """The searched hyperparameters of a trial, without keras-tuner's own `tuner/...` entries."""
    return {name: trial.hyperparameters.values[name] for name in space}


def trials_table(tuner: kt.Tuner, params: dict[str, Any]) -> pd.DataFrame:
    """One row per trial; `epochs` is the trial's epoch budget (hyperband varies it)."""
    cfg = params["tune"]
    rows = [{"trial": int(trial.trial_id), "trial_id": trial.trial_id,
             **{name: trial.hyperparameters.values.get(name) for name in cfg["space"]},
             "epochs": trial.hyperparameters.values.get("tuner/epochs", int(cfg["max_epochs"])),
             **trial_metrics(trial), "status": trial.status}
            for trial in tuner.oracle.trials.values()]
    return pd.DataFrame(rows).sort_values("trial", ignore_index=True)


def load_trial_model(tuner: kt.Tuner, trial) -> keras.Model:
    """A trial's best checkpoint in a freshly built model. The checkpoint also holds the trial's
    optimizer state, which the fresh, unbuilt optimizer cannot take; Keras warns and skips it,
    which is harmless for a model that is kept for inference, so that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return tuner.load_model(trial)


def budget_cut(tuner: kt.Tuner, cap_minutes: float) -> str:
    """Why the clock stopped the search, or "" when its work budget did."""
    if not tuner.oracle.cut_short:
        return ""
    return f"the clock cap tune.max_minutes={cap_minutes:g} stopped the search after {len(tuner.oracle.trials)} trial(s)"


def log_search_results(best, values: dict[str, Any], n_trials: int, trials_path: Path) -> None:
    """Best hyperparameters as metrics and a JSON artifact, not params: a resumed search may find
    a better trial, and MLflow params cannot change."""
    import mlflow

    mlflow.set_tag("best_trial_id", best.trial_id)
    mlflow.log_metrics({**{f"best_{k}": v for k, v in trial_metrics(best).items()},
                        **{f"best.{k}": float(v) for k, v in values.items()}, "trials": n_trials})
    mlflow.log_dict(values, "best_hyperparameters.json")
    mlflow.log_artifact(str(trials_path))


STATE_FILE = "state.json"


def saved_search(tuner_dir: Path, settings: dict[str, Any]) -> tuple[bool, str | None]:
    """(resume the saved search?, its parent MLflow run if that still exists). A search resumes
    even when its parent run is gone (say, another MLflow store); its trials then go under a new
    parent run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    state_file = tuner_dir / STATE_FILE
    if not state_file.exists():
        return False, None
    saved = json.loads(state_file.read_text())
    changed = resume.changes(saved["settings"], settings)
    if changed:
        log.warning("tune: search settings changed since %s was written (%s); starting a new search", state_file,
                    ", ".join(changed))
        return False, None
    try:
        MlflowClient().get_run(saved["run_id"])
    except MlflowException:
        log.warning("tune: parent run %s of the saved search is not in this MLflow store; using a new one",
                    saved["run_id"])
        return True, None
    return True, saved["run_id"]
