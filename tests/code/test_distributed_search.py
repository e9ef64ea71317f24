"""A dead worker of a distributed search: dropped by the chief's oracle after its timeout, its
trial failed; a worker that keeps talking is kept. Real Keras Tuner oracles, no gRPC."""

from __future__ import annotations

import copy
import threading
import time

import keras_tuner as kt
from keras_tuner.engine.trial import TrialStatus

from nucseg.mlops.distributed_search import Heartbeat, LivenessOracleMixin, watch_workers
from nucseg.mlops.tuners import BudgetedOracleMixin


class Oracle(LivenessOracleMixin, kt.oracles.RandomSearchOracle):
    pass


class BudgetedOracle(LivenessOracleMixin, BudgetedOracleMixin, kt.oracles.RandomSearchOracle):
    pass


def new_oracle(tmp_path, kind=Oracle):
    oracle = kind(objective=kt.Objective("val_dsb", "max"), max_trials=10, seed=0)
    oracle._set_project_dir(str(tmp_path), "search")
    hp = kt.HyperParameters()
    hp.Float("dropout", 0.0, 0.3)
    oracle.update_space(hp)
    return oracle


def complete(oracle, trial, val_dsb: float) -> None:
    """End `trial` as its worker does when it finished."""
    oracle.update_trial(trial.trial_id, {"val_dsb": val_dsb})
    trial.status = TrialStatus.COMPLETED
    oracle.end_trial(trial)


def oracle_with_two_trials(tmp_path):
    oracle = new_oracle(tmp_path)
    return oracle, oracle.create_trial("worker-a"), oracle.create_trial("worker-b")


def test_a_silent_worker_is_dropped_and_its_trial_fails(tmp_path):
    oracle, trial_a, trial_b = oracle_with_two_trials(tmp_path)
    heard = time.monotonic()
    assert oracle.drop_silent_workers(timeout=10, now=heard + 5) == []  # not silent long enough

    time.sleep(0.3)
    oracle.get_trial(trial_b.trial_id)  # worker b's heartbeat, 0.3 s after worker a was last heard from
    dropped = oracle.drop_silent_workers(timeout=10, now=time.monotonic() + 9.9)
    assert [(worker, trial.trial_id) for worker, trial in dropped] == [("worker-a", trial_a.trial_id)]
    assert oracle.trials[trial_a.trial_id].status == TrialStatus.FAILED
    assert "worker-a stopped answering" in oracle.trials[trial_a.trial_id].message
    assert oracle.tuner_ids == {"worker-b"} and list(oracle.ongoing_trials) == ["worker-b"]

    late = copy.deepcopy(oracle.trials[trial_a.trial_id])  # as it comes over gRPC: a copy
    late.status = TrialStatus.COMPLETED  # the dropped worker comes back after all
    oracle.end_trial(late)
    assert oracle.trials[trial_a.trial_id].status == TrialStatus.FAILED


def test_a_worker_between_trials_is_dropped_without_a_trial(tmp_path):
    oracle, _, trial_b = oracle_with_two_trials(tmp_path)
    complete(oracle, trial_b, 0.5)
    dropped = oracle.drop_silent_workers(timeout=1, now=time.monotonic() + 60)
    assert sorted((worker, trial is None) for worker, trial in dropped) == [("worker-a", False), ("worker-b", True)]
    assert not oracle.tuner_ids and not oracle.ongoing_trials  # the chief waits for no one


class CountingOracle:
    """Stands in for the gRPC client of the chief's oracle: counts GetTrial calls per trial."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def get_trial(self, trial_id):
        with self.lock:
            self.calls.append(trial_id)


def test_the_heartbeat_beats_during_a_trial_only():
    oracle = CountingOracle()
    with Heartbeat(oracle, "0007", interval=0.02):
        time.sleep(0.3)
    beats = len(oracle.calls)
    time.sleep(0.1)
    assert beats >= 5 and set(oracle.calls) == {"0007"}
    assert len(oracle.calls) == beats  # stopped with the trial


def test_a_chief_whose_workers_all_died_ends_on_its_budget(tmp_path, monkeypatch):
    """Keras Tuner's real chief service (gRPC) and the pipeline's budgeted oracle: one trial
    completed, its worker then gone, the budget spent; the watchdog ends the search."""
    from keras_tuner.src.distribute import oracle_chief

    from conftest import free_port

    port = free_port()
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))
    oracle = new_oracle(tmp_path, BudgetedOracle)
    complete(oracle, oracle.create_trial("worker-a"), 0.4)
    oracle.deadline = time.monotonic()  # spent

    served = threading.Thread(target=oracle_chief.start_server, args=(oracle,), daemon=True)
    served.start()
    assert not oracle.abandoned()  # worker a may still ask for its next trial
    dropped = []
    stop = watch_workers(oracle, timeout=1.0, on_dropped=lambda worker, t: dropped.append((worker, t)),
                         oracle_address=f"127.0.0.1:{port}")
    served.join(timeout=60)
    stop.set()
    assert not served.is_alive(), "the chief still serves a search nobody works on"
    assert dropped == [("worker-a", None)]
    assert not oracle.abandoned()  # told to stop: nothing more to end


def test_a_search_that_ended_normally_is_not_abandoned(tmp_path):
    oracle = new_oracle(tmp_path, BudgetedOracle)
    complete(oracle, oracle.create_trial("worker-a"), 0.4)
    oracle.deadline = time.monotonic()
    assert oracle.create_trial("worker-a").status == TrialStatus.STOPPED  # the worker hears the search is over
    assert not oracle.tuner_ids and not oracle.abandoned()


def test_a_trial_budget_stops_the_search_as_work_and_a_clock_cap_is_marked_as_a_cut(tmp_path):
    by_work = new_oracle(tmp_path / "work", BudgetedOracle)
    by_work.trial_limit = 2
    for _ in range(2):
        complete(by_work, by_work.create_trial("worker-a"), 0.4)
    assert by_work.create_trial("worker-a").status == TrialStatus.STOPPED and len(by_work.trials) == 2
    assert not by_work.cut_short  # the same two trials on any machine

    by_clock = new_oracle(tmp_path / "clock", BudgetedOracle)
    complete(by_clock, by_clock.create_trial("worker-a"), 0.4)
    assert by_clock.create_trial("worker-a").status != TrialStatus.STOPPED and not by_clock.cut_short
    by_clock.deadline = time.monotonic()
    assert by_clock.create_trial("worker-b").status == TrialStatus.STOPPED and by_clock.cut_short
