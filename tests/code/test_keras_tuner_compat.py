"""The Keras Tuner internals the search relies on are all there, or a clear error names them."""

from __future__ import annotations

import keras_tuner as kt
import pytest

from nucseg.mlops import keras_tuner_compat as compat


def test_the_installed_keras_tuner_has_every_internal_the_search_uses():
    compat.check()  # raises IncompatibleKerasTuner naming what is missing


def test_a_keras_tuner_without_them_is_refused_by_name(monkeypatch):
    monkeypatch.delattr(kt.Oracle, "end_trial")
    monkeypatch.delattr(compat.TrialStatus, "STOPPED")
    with pytest.raises(compat.IncompatibleKerasTuner, match=r"lacks .*Oracle\.end_trial\(trial\).*TrialStatus\.STOPPED.*"
                                                            r"keras-tuner==1\.4\.8"):
        compat.check()


def test_a_stopped_answer_forgets_the_tuner_that_asked():
    oracle = kt.oracles.BayesianOptimizationOracle(objective=kt.Objective("score", "max"), max_trials=1)
    oracle.tuner_ids.add("worker-1")
    answer = compat.stop_answer(oracle, "worker-1")
    assert answer.status == compat.TrialStatus.STOPPED and "worker-1" not in oracle.tuner_ids
