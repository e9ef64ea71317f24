"""Every Keras Tuner internal nucseg relies on, in one place.

Keras Tuner has no public hooks for a work budget, MLflow runs per trial or a chief that outlives
a dead worker, so `mlops.tuners` and `mlops.distributed_search` subclass its oracles and tuners
and read their state. What they rely on beyond the documented API is named here and checked by
`check()` (called before a search starts, and by `tests/code/test_keras_tuner_compat.py`), so an
incompatible Keras Tuner fails loudly, naming what is missing, instead of searching wrongly.
"""

from __future__ import annotations

import inspect

import keras_tuner as kt
from keras_tuner.engine.trial import Trial, TrialStatus  # not exported at the top level

TESTED_VERSION = "1.4.8"
synchronized = kt.synchronized  # the oracle's lock, which subclass hooks must hold as the base class does

# Oracle state the subclasses read and change, and the hooks they override (with their arguments).
ORACLE_STATE = ("trials", "ongoing_trials", "tuner_ids", "hyperparameters")
ORACLE_HOOKS = {"create_trial": ("tuner_id",), "update_trial": ("trial_id", "metrics", "step"),
                "get_trial": ("trial_id",), "end_trial": ("trial",)}


class IncompatibleKerasTuner(RuntimeError):
    """The installed Keras Tuner lacks an internal nucseg's search uses; the message says which."""


def build_on_oracle(tuner: kt.Tuner, oracle: kt.Oracle, **kwargs) -> None:
    """Initialise a Hyperband or BayesianOptimization subclass on `oracle`: their own
    `__init__` builds an oracle without a budget, so it is skipped for the base Tuner's."""
    kt.Tuner.__init__(tuner, oracle=oracle, **kwargs)


def stop_answer(oracle: kt.Oracle, tuner_id: str) -> Trial:
    """The answer of a finished search to a tuner asking for a trial: "stopped", with the tuner
    forgotten so the chief waits for it no more."""
    oracle.tuner_ids.discard(tuner_id)
    return Trial(oracle.hyperparameters.copy(), status=TrialStatus.STOPPED)


def grpc_protos():
    """The chief's gRPC service definitions (a watchdog asks the chief for a trial as a worker would)."""
    from keras_tuner.src import protos

    return protos


def _absent():
    """Stands in for a hook the Oracle lacks: it takes no arguments, so every one is reported."""


def _undecorated(function, name: str):
    """The function named `name` that `synchronized` wrapped (it keeps it only in its closure),
    else `function`."""
    for cell in function.__closure__ or ():
        if inspect.isfunction(cell.cell_contents) and cell.cell_contents.__name__ == name:
            return cell.cell_contents
    return function


def check() -> None:
    """Raise `IncompatibleKerasTuner` naming every internal above that the installed version lacks."""
    missing = []
    oracle = kt.oracles.BayesianOptimizationOracle(objective=kt.Objective("score", "max"), max_trials=1)
    missing += [f"Oracle.{name}" for name in ORACLE_STATE if not hasattr(oracle, name)]
    for hook, arguments in ORACLE_HOOKS.items():
        parameters = inspect.signature(_undecorated(getattr(kt.Oracle, hook, None) or _absent, hook)).parameters
        missing += [f"Oracle.{hook}({argument})" for argument in arguments if argument not in parameters]
    tuner_parameters = inspect.signature(kt.Tuner.__init__).parameters
    missing += [f"Tuner.__init__({name})" for name in ("oracle", "hypermodel", "directory", "project_name", "overwrite")
                if name not in tuner_parameters]
    missing += [f"Tuner.{name}" for name in ("run_trial", "on_trial_end", "load_model") if not hasattr(kt.Tuner, name)]
    missing += [f"TrialStatus.{name}" for name in ("COMPLETED", "FAILED", "STOPPED") if not hasattr(TrialStatus, name)]
    try:
        protos = grpc_protos()
        protos.get_service_grpc().OracleStub, protos.get_service().CreateTrialRequest  # noqa: B018
    except (ImportError, AttributeError):
        missing.append("keras_tuner.src.protos (OracleStub, CreateTrialRequest)")
    if missing:
        raise IncompatibleKerasTuner(
            f"keras-tuner {kt.__version__} lacks what nucseg's search relies on ({', '.join(missing)}); install "
            f"keras-tuner=={TESTED_VERSION}, the version it was built and tested with")
