"""Stage `tune`: a Keras Tuner search over the U-Net's size and loss/optimizer knobs; the best
configuration becomes the "tuned" model.

The objective is what promotion decides on: the DSB metric of whole `val` images after
post-processing (with the params' thresholds; the tuned model then gets its own, as the
untuned one does), not pixel IoU on crops. The best configuration is retrained from scratch
with the untuned model's budget (`train.epochs`, `train.max_minutes`), so the two compete on
equal terms.

MLflow: a parent run named "tune" holds the search settings, the best hyperparameters and the
trials table; every trial is a nested run with its hyperparameters and live per-epoch metrics.
The tuned model gets a top-level run of its own ("tuned"), shaped like the untuned one, so
promotion compares the two runs on an equal footing.

Resuming: the tuner keeps its state in `models/tuner` (a persisted DVC output) and is created
with overwrite=False, so a rerun continues an interrupted search under the same parent run:
finished trials are not run again and an interrupted trial is retried. A search whose settings
changed (space, algorithm, or the data/model/loss knobs trials share) starts afresh instead,
because its old scores would not be comparable with new ones.

Budget: work, not time. The search runs `tune.max_trials` trials (Bayesian optimisation as
keras-tuner counts them; Hyperband its brackets in order, cut after that many trials, 0: all of
them), so the same params give the same search on any machine. A wall-clock cap is opt-in
(`tune.max_minutes` > 0, counted from the start of the stage; the retraining is bounded by
`train.max_minutes`): keras-tuner 1.4.8 has neither, so the oracle gets both
(`BudgetedOracleMixin`): once either is spent, it answers a request for a new trial with
"stopped", as it does when a search is complete. No trial is half-created, so the saved state
stays a valid point to resume from, and a trial waiting in the oracle's retry queue is held back
too. At least one trial always completes; a running trial is never cut short. A search the clock
cut short says so (log, `budget_cut` tag on the tune and tuned runs and so on the registered
version, `reports/tune_metrics.json`): it depends on the machine's speed.

Distributed search (`role`): Keras Tuner's chief/worker mode. The chief (`role="chief"`) holds
the oracle and serves it over gRPC at `oracle` (host:port), opens the parent run and, when the
workers are done, writes the results and trains the tuned model as a single-process search
does. Workers (`role="worker"`, on any machine that reaches the oracle and the tracking server)
ask it for trials and log each as a nested run under the chief's parent run, which they find by
its `tune.oracle_port` tag. The budget is the chief's, since its oracle enforces it. A worker
the chief has not heard from for `tune.worker_timeout` seconds is dropped and its trial failed
(`mlops.distributed_search`). Hyperband continues trials from other trials' checkpoints, so its
workers need the tuner directory on a shared filesystem; Bayesian optimisation does not.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from nucseg import io
from nucseg.config import get_logger

log = get_logger("nucseg.tune")

import keras  # noqa: E402 - after config has set the backend
import keras_tuner as kt  # noqa: E402
from keras_tuner.engine.trial import Trial, TrialStatus  # noqa: E402

from nucseg.core import resume, training  # noqa: E402
from nucseg.core.data import CropDataset, load_split, validation_crops_from_params  # noqa: E402
from nucseg.core.evaluation import evaluate_model  # noqa: E402
from nucseg.core.segment import Recipe  # noqa: E402
from nucseg.mlops import datasets, tracking  # noqa: E402
from nucseg.mlops.distributed_search import Heartbeat, LivenessOracleMixin, fail_trial_run, watch_workers  # noqa: E402
from nucseg.mlops.logged_models import MlflowLive, log_keras_model, log_recipe, log_training_curves  # noqa: E402

# Tunable name -> the params section whose value it replaces.
SECTIONS = {"base_filters": "model", "depth": "model", "dropout": "model",
            "learning_rate": "train", "bce_weight": "train", "dice_weight": "train"}
CHOICES = ("base_filters", "depth")
LOG_SAMPLED = ("learning_rate",)
VAL_METRICS = ("val_dsb", "val_loss", "val_iou", "val_dice")
# Trial results depend on these train keys (beside the tuned ones); a saved search resumes only if they are unchanged.
TRIAL_TRAIN_KEYS = ("seed", "crop_size", "batch_size", "border_loss_weight", "val_crops", "modality_balance",
                    "type_balance")
# tune keys a resumed search may change: they limit the search but do not change its trials.
RESUMABLE_TUNE_KEYS = ("max_minutes", "retrain", "max_trials", "worker_timeout")
# The metric promotion uses (DSB of whole val images after post-processing), not val_loss: the
# loss weights are searched too, and a loss scaled by smaller weights would look better
# without the model being any better.
OBJECTIVE = ("val_dsb", "max")
STATE_FILE = "state.json"


# ---- search space and hypermodel ----

def declare_space(hp: kt.HyperParameters, space: dict[str, list]) -> dict[str, Any]:
    """Register `space` with `hp`; returns this trial's values. Choices for the architecture
    (integers), ranges for the rest, the learning rate sampled on a log scale."""
    unknown = sorted(set(space) - set(SECTIONS))
    if unknown:
        raise ValueError(f"tune.space: unknown hyperparameter(s) {unknown}, expected some of {sorted(SECTIONS)}")
    return {name: _declare(hp, name, spec) for name, spec in space.items()}


def _declare(hp: kt.HyperParameters, name: str, spec: list) -> Any:
    if name in CHOICES:
        return hp.Choice(name, [int(v) for v in spec])
    low, high = (float(v) for v in spec)
    return hp.Float(name, low, high, sampling="log" if name in LOG_SAMPLED else "linear")


def merged_params(params: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `params` with the tuned values in place of the model/train defaults."""
    merged = copy.deepcopy(params)
    for name, value in values.items():
        merged[SECTIONS[name]][name] = value
    return merged


def build_hypermodel(hp: kt.HyperParameters, params: dict[str, Any]) -> keras.Model:
    """The pipeline's compiled U-Net with this trial's values. The seed is reset first, so trials
    of the same architecture start from the same weights and differ only by their values."""
    tuned = merged_params(params, declare_space(hp, params["tune"]["space"]))
    keras.utils.set_random_seed(int(params["train"]["seed"]))
    return training.build_model(tuned["model"], tuned["train"])


class UNetHyperModel(kt.HyperModel):
    """`build_hypermodel` bound to the params, and a `fit` that rewinds the crop stream to the
    first epoch trained (every trial, a hyperband continuation included, then sees the batches a
    from-scratch run would, so scores differ by hyperparameters rather than by data luck) and
    scores the trained model on the whole `val` images (`val_samples`, with their labels) with the
    params' post-processing. Trials are ranked without test-time augmentation or rescaling to the
    training nucleus size: both multiply the network time of every trial's scoring, and the kept model gets them
    back with its thresholds."""

    def __init__(self, params: dict[str, Any], val_samples: list[dict[str, Any]]):
        super().__init__(name="unet")
        self.params = params
        self.val_samples = val_samples
        self.recipe = dataclasses.replace(Recipe.from_params(params), tta="none", rescale=False)

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return build_hypermodel(hp, self.params)

    def fit(self, hp, model, dataset: CropDataset, *args, initial_epoch: int = 0, **kwargs) -> dict[str, float]:
        dataset.set_epoch(initial_epoch)
        history = model.fit(dataset, *args, initial_epoch=initial_epoch, **kwargs)
        return trial_result(model, history.history, self.val_samples, self.recipe)


def trial_result(model: keras.Model, history: dict[str, list[float]], val_samples: list[dict[str, Any]],
                 recipe: Recipe) -> dict[str, float]:
    """The objective, `val_dsb` of the trained model, with the last epoch's crop metrics."""
    per_image, _ = evaluate_model(model, val_samples, recipe, desc="tune: trial on val")
    return {"val_dsb": float(per_image["dsb"].mean()), **{name: float(history[name][-1]) for name in VAL_METRICS[1:]}}


# ---- tuners: MLflow per trial, time budget ----

class BudgetedOracleMixin:
    """An oracle that starts no trial once `trial_limit` trials exist or `deadline`
    (time.monotonic) has passed, if one has completed; `cut_short` says whether the clock stopped
    it. Comes before the keras-tuner oracle class in the bases."""

    deadline: float = math.inf
    trial_limit: int | None = None
    cut_short: bool = False

    @kt.synchronized
    def create_trial(self, tuner_id):
        if tuner_id not in self.ongoing_trials and completed_trials(self):
            limit_reached = self.trial_limit is not None and len(self.trials) >= self.trial_limit
            if limit_reached or time.monotonic() >= self.deadline:
                self.cut_short = self.cut_short or not limit_reached
                log.info("tune: %s after %d trial(s); starting no more",
                         "trial budget spent" if limit_reached else "clock cap reached", len(self.trials))
                self.tuner_ids.discard(tuner_id)  # as for a finished search: the chief waits for no one
                return Trial(self.hyperparameters.copy(), status=TrialStatus.STOPPED)
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
        if trial.status != TrialStatus.COMPLETED:
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
# these build the tuner on a budgeted one (Tuner.__init__) and keep the rest of the class.

class MlflowHyperband(MlflowTrialMixin, kt.Hyperband):
    """Hyperband with MLflow trial runs, cut after `max_trials` trials (0: its full brackets)."""

    def __init__(self, *, objective, max_epochs: int, factor: int, max_trials: int, seed: int, deadline: float,
                 **kwargs):
        oracle = BudgetedHyperbandOracle(objective, max_epochs=max_epochs, factor=factor, seed=seed)
        oracle.deadline, oracle.trial_limit = deadline, max_trials or None
        kt.Tuner.__init__(self, oracle=oracle, **kwargs)


class MlflowBayesianOptimization(MlflowTrialMixin, kt.BayesianOptimization):
    """Bayesian optimisation with MLflow trial runs, `max_trials` of them."""

    def __init__(self, *, objective, max_trials: int, seed: int, deadline: float, **kwargs):
        oracle = BudgetedBayesianOracle(objective, max_trials=max_trials, seed=seed)
        oracle.deadline = deadline
        kt.Tuner.__init__(self, oracle=oracle, **kwargs)


def make_tuner(params: dict[str, Any], directory: Path, overwrite: bool, deadline: float,
               val_samples: list[dict[str, Any]]) -> MlflowTrialMixin:
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


# ---- trial results ----

def mean_result(results: list[dict[str, float]]) -> dict[str, float]:
    """A trial's metrics, averaged over its executions as keras-tuner averages its objective."""
    return {name: float(sum(r[name] for r in results) / len(results)) for name in VAL_METRICS}


def completed_trials(tuner_or_oracle) -> list:
    oracle = getattr(tuner_or_oracle, "oracle", tuner_or_oracle)
    return [t for t in oracle.trials.values() if t.status == TrialStatus.COMPLETED]


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


# ---- resuming ----

def search_settings(params: dict[str, Any], split_path: str | Path) -> dict[str, Any]:
    """Everything a trial's score depends on (`core.resume.settings`): the params trials share,
    the data version, the train/val rows of the split, and the code this process runs."""
    space = params["tune"]["space"]
    sections = {"tune": {k: v for k, v in params["tune"].items() if k not in RESUMABLE_TUNE_KEYS},
                "model": {k: v for k, v in params["model"].items() if k not in space},
                "train": {k: params["train"][k] for k in TRIAL_TRAIN_KEYS},
                "augment": params["augment"]}
    return resume.settings(sections, tracking.data_md5(), split_path, ("train", "val"), resume.package_code(__file__))


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


# ---- stage ----

def run_search(tuner: kt.Tuner, params: dict[str, Any], train_samples: list[dict], val_samples: list[dict]) -> None:
    """Trials train on random augmented crops (tune.steps_per_epoch batches an epoch) and are
    scored on the same fixed validation crops as the training stage."""
    dataset = CropDataset.from_params(train_samples, params, steps_per_epoch=int(params["tune"]["steps_per_epoch"]))
    validation = validation_crops_from_params(val_samples, params)
    tuner.search(dataset, validation_data=validation, epochs=int(params["tune"]["max_epochs"]), verbose=2)


def log_search_results(best, values: dict[str, Any], n_trials: int, trials_path: Path) -> None:
    """Best hyperparameters as metrics and a JSON artifact, not params: a resumed search may find
    a better trial, and MLflow params cannot change."""
    import mlflow

    mlflow.set_tag("best_trial_id", best.trial_id)
    mlflow.log_metrics({**{f"best_{k}": v for k, v in trial_metrics(best).items()},
                        **{f"best.{k}": float(v) for k, v in values.items()}, "trials": n_trials})
    mlflow.log_dict(values, "best_hyperparameters.json")
    mlflow.log_artifact(str(trials_path))


def retrain(tuned: dict[str, Any], samples: tuple[list, list], model_dir: Path, run_id: str) -> keras.Model:
    """The best configuration from scratch with the training stage's callbacks (checkpoint, early
    stopping, LR schedule) and budget (train.epochs, train.max_minutes)."""
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


def load_trial_model(tuner: kt.Tuner, trial) -> keras.Model:
    """A trial's best checkpoint in a freshly built model. The checkpoint also holds the trial's
    optimizer state, which the fresh, unbuilt optimizer cannot take; Keras warns and skips it,
    which is harmless for a model that is kept for inference, so that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return tuner.load_model(trial)


def log_tuned_model(tuner: kt.Tuner, best, params: dict[str, Any], samples: tuple[list, list],
                    model_dir: Path, parent_run_id: str, split_path: str | Path,
                    val_images: list[dict[str, Any]], extra_tags: dict[str, str]) -> dict[str, float]:
    """The "tuned" run: retrained if tune.retrain, else the best trial's own weights; with its
    thresholds chosen on val (returned: val DSB with the params' and the chosen thresholds)."""
    import mlflow

    values = space_values(best, params["tune"]["space"])
    tuned = merged_params(params, values)
    metrics = trial_metrics(best)
    model_dir.mkdir(parents=True, exist_ok=True)
    with mlflow.start_run(run_name="tuned") as active:
        mlflow.set_tags({"stage": "tune", "model_kind": "tuned", "tune_run_id": parent_run_id,
                         "best_trial_id": best.trial_id, **tracking.lineage_tags(), **extra_tags})
        mlflow.log_params(tracking.flatten({k: tuned[k] for k in ("model", "train", "augment", "tune")}))
        datasets.log_split_inputs(split_path, ("train", "val"), params)
        mlflow.log_metrics({f"best_trial_{k}": v for k, v in metrics.items()})
        if params["tune"]["retrain"]:
            log.info("tune: retraining trial %s's configuration with the untuned model's budget (%s epochs, "
                     "%s minutes)", best.trial_id, params["train"]["epochs"], params["train"]["max_minutes"])
            model = retrain(tuned, samples, model_dir, active.info.run_id)
        else:
            log.info("tune: keeping trial %s's model", best.trial_id)
            model = load_trial_model(tuner, best)
            mlflow.log_metrics({name: metrics[name] for name in VAL_METRICS[1:]})  # as a trained run has them
        model.save(model_dir / "model.keras")
        recipe, chosen = training.choose_recipe(model, tuned, samples[0], val_images, model_dir)
        log_recipe(model_dir, recipe, chosen)
        model_uri = log_keras_model(model)
        io.write_json(model_dir / "run.json",
                      {"run_id": active.info.run_id, "model_uri": model_uri, "hyperparameters": values})
    return chosen


ROLES = ("chief", "worker")
ORACLE_TAG, PORT_TAG = "tune.oracle", "tune.oracle_port"
SETTINGS_TAG = "tune.settings_digest"


def join_search(role: str, oracle: str) -> str:
    """Point Keras Tuner at the chief's oracle (its environment variables); returns this
    tuner's id. The chief binds `oracle`'s host (0.0.0.0: every interface), workers connect to it."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    host, _, port = oracle.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"oracle must be host:port, got {oracle!r}")
    tuner_id = "chief" if role == "chief" else f"worker-{socket.gethostname()}-{os.getpid()}"
    os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=port)
    return tuner_id


def find_parent_run(oracle: str, digest: str, timeout: float = 300) -> str:
    """The running parent run of the chief serving on `oracle`'s port (the chief may have bound
    0.0.0.0 where workers name its host); waits for the chief to open it. Refuses a chief whose
    search settings differ from this worker's params."""
    import mlflow

    port = oracle.rpartition(":")[2]
    deadline = time.monotonic() + timeout
    while True:
        runs = mlflow.search_runs(filter_string=f"tags.`{PORT_TAG}` = '{port}' and attributes.status = 'RUNNING'",
                                  order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        if runs:
            if runs[0].data.tags.get(SETTINGS_TAG) != digest:
                raise ValueError(f"the chief at {oracle} searches with other settings than this worker's params "
                                 f"(digest {runs[0].data.tags.get(SETTINGS_TAG)} vs {digest}): use the same params.yaml")
            return runs[0].info.run_id
        if time.monotonic() > deadline:
            raise TimeoutError(f"no running tune chief for oracle {oracle} in {mlflow.get_tracking_uri()} after "
                               f"{timeout:.0f} s: start `nucseg tune --role chief --oracle {oracle}` first, with the "
                               "same MLFLOW_TRACKING_URI")
        time.sleep(2)


def run(params: dict[str, Any], split_path: str | Path = "artifacts/split.csv",
        samples_dir: str | Path = "artifacts/prepared", tuner_dir: str | Path = "models/tuner",
        model_dir: str | Path = "models/tuned", metrics_path: str | Path = "reports/tune_metrics.json",
        trials_path: str | Path = "reports/tune_trials.csv", role: str | None = None,
        oracle: str | None = None) -> dict[str, Any]:
    """The search and the tuned model; see the module doc. With `role` (and `oracle`,
    host:port), this process is the chief or one worker of a distributed search."""
    import mlflow

    started = time.monotonic()
    tuner_dir, model_dir = Path(tuner_dir), Path(model_dir)
    tracking.setup()
    loaded = load_split(split_path, samples_dir, ("train", "val"), desc="tune: loading")
    samples = loaded["train"], loaded["val"]
    val_images = samples[1]
    settings = search_settings(params, split_path)
    tuner_id = join_search(role, oracle) if role else None
    if role == "worker":
        return run_worker(params, tuner_dir, samples, val_images, find_parent_run(oracle, resume.digest(settings)),
                          tuner_id)
    resume, parent_id = saved_search(tuner_dir, settings)
    cap = float(params["tune"]["max_minutes"])
    tuner = make_tuner(params, tuner_dir, overwrite=not resume, deadline=started + 60 * cap if cap > 0 else math.inf,
                       val_samples=val_images)
    if resume:
        log.info("tune: resuming the saved search in %s (%d trials so far)", tuner_dir, len(tuner.oracle.trials))
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else "tune") as parent:
        if not parent_id:
            mlflow.set_tags({"stage": "tune", **tracking.lineage_tags()})
            mlflow.log_params(tracking.flatten({"tune": params["tune"]}))
            datasets.log_split_inputs(split_path, ("train", "val"), params)
            io.write_json(tuner_dir / STATE_FILE, {"run_id": parent.info.run_id, "settings": settings})
        if role == "chief":
            mlflow.set_tags({ORACLE_TAG: oracle, PORT_TAG: oracle.rpartition(":")[2],
                             SETTINGS_TAG: resume.digest(settings)})
            log.info("tune: chief serving the oracle on %s; start workers with `nucseg tune --role worker "
                     "--oracle <this host>:%s`", oracle, oracle.rpartition(":")[2])
        tuner.parent_run_id = parent.info.run_id
        watchdog = watch_workers(tuner.oracle, float(params["tune"]["worker_timeout"]),
                                 lambda worker, trial: fail_trial_run(parent.info.run_id, worker, trial), oracle) \
            if role == "chief" else None
        try:
            run_search(tuner, params, *samples)
        finally:
            if watchdog:
                watchdog.set()
        minutes = round((time.monotonic() - started) / 60, 2)
        best = best_trial(tuner)
        values = space_values(best, params["tune"]["space"])
        io.write_csv(trials_path, trials_table(tuner, params))
        log_search_results(best, values, len(tuner.oracle.trials), Path(trials_path))
        cut = budget_cut(tuner, cap)
        if cut:
            log.warning("tune: %s; another machine would search differently (set tune.max_minutes: 0)", cut)
            mlflow.set_tag("budget_cut", cut)
    chosen = log_tuned_model(tuner, best, params, samples, model_dir, parent.info.run_id, split_path, val_images,
                             {"budget_cut": cut} if cut else {})
    metrics = {"best_hyperparameters": values, "best_trial_id": best.trial_id, "budget_cut": cut,
               **{f"best_trial_{k}": round(v, 5) for k, v in trial_metrics(best).items()},
               **{f"tuned_{k}": round(v, 4) for k, v in chosen.items()},
               "trials": len(tuner.oracle.trials), "trials_this_session": tuner.trials_run,
               "minutes": minutes}
    io.write_json(metrics_path, metrics)
    log.info("tuned: %s", metrics)
    return metrics


def budget_cut(tuner: kt.Tuner, cap_minutes: float) -> str:
    """Why the clock stopped the search, or "" when its work budget did."""
    if not tuner.oracle.cut_short:
        return ""
    return f"the clock cap tune.max_minutes={cap_minutes:g} stopped the search after {len(tuner.oracle.trials)} trial(s)"


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
