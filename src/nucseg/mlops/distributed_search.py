"""A distributed Keras Tuner search that survives a dead worker.

Keras Tuner's chief ends only when no trial is running and every worker it has seen has been
told that the search is over: a worker that dies mid-trial keeps it waiting forever. Here a
worker says it is alive while it runs a trial (`Heartbeat`: a cheap GetTrial call to the chief
every few seconds, the network's and the val scoring's time included), the chief's oracle notes
when it last heard from each worker (`LivenessOracleMixin`), and a watchdog thread on the chief
drops a worker silent for longer than the timeout: its trial ends FAILED (in the oracle, so the
trials table says so, and in its MLflow run) and the chief waits for it no more.

Roles: the chief (`nucseg tune --role chief --oracle host:port`) holds the oracle, serves it over
gRPC and opens the parent run, tagged with its port and search settings; workers find that run
by its port tag and refuse a chief whose settings differ from their params.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable

from nucseg.config import get_logger
from nucseg.mlops.keras_tuner_compat import Trial, TrialStatus, grpc_protos, synchronized

log = get_logger("nucseg.tune")


class LivenessOracleMixin:
    """The chief's oracle, hearing from workers through their requests. Comes before the
    keras-tuner oracle class in the bases."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_seen: dict[str, float] = {}  # worker -> when it was last heard from (time.monotonic)
        self.dropped_trials: set[str] = set()  # trials that failed with their silent worker
        self.told_to_stop = False  # some worker heard "stopped": the chief's service ends once no one is left

    def _heard_from(self, tuner_id: str) -> None:
        self.last_seen[tuner_id] = time.monotonic()

    def _heard_about(self, trial_id: str) -> None:
        for tuner_id, trial in self.ongoing_trials.items():
            if trial.trial_id == trial_id:
                self._heard_from(tuner_id)

    @synchronized
    def create_trial(self, tuner_id):
        self._heard_from(tuner_id)
        trial = super().create_trial(tuner_id)
        if trial.status == TrialStatus.STOPPED:
            self.told_to_stop = True
        return trial

    @synchronized
    def update_trial(self, trial_id, metrics, step=0):
        self._heard_about(trial_id)
        return super().update_trial(trial_id, metrics, step=step)

    @synchronized
    def get_trial(self, trial_id):
        self._heard_about(trial_id)
        return super().get_trial(trial_id)

    @synchronized
    def end_trial(self, trial):
        if trial.trial_id in self.dropped_trials:
            log.warning("tune: trial %s came back after its worker was dropped; it stays failed", trial.trial_id)
            return
        self._heard_about(trial.trial_id)
        super().end_trial(trial)

    @synchronized
    def drop_silent_workers(self, timeout: float, now: float | None = None) -> list[tuple[str, Trial | None]]:
        """Forget workers not heard from for over `timeout` seconds, ending their trials FAILED;
        returns (worker, its trial or None) for each."""
        now = time.monotonic() if now is None else now
        dropped = []
        for tuner_id in sorted(self.tuner_ids):
            silent = now - self.last_seen.setdefault(tuner_id, now)
            if silent <= timeout:
                continue
            trial = self.ongoing_trials.get(tuner_id)
            self.tuner_ids.discard(tuner_id)
            if trial is not None:
                trial.status = TrialStatus.FAILED
                trial.message = f"worker {tuner_id} stopped answering ({silent:.0f} s without a word, timeout {timeout:.0f} s)"
                super().end_trial(trial)  # also takes it out of the running trials
                self.dropped_trials.add(trial.trial_id)
            log.warning("tune: dropped worker %s, silent for %.0f s (timeout %.0f s)%s", tuner_id, silent, timeout,
                        f"; its trial {trial.trial_id} failed" if trial else "")
            dropped.append((tuner_id, trial))
        return dropped

    @synchronized
    def abandoned(self) -> bool:
        """No worker left and none told that the search is over, none running a trial, the budget
        spent and a trial completed: a request for a trial is then answered "stopped" (see
        `tuners.BudgetedOracleMixin`)."""
        finished = any(trial.status == TrialStatus.COMPLETED for trial in self.trials.values())
        return (bool(self.last_seen) and not self.told_to_stop and not self.tuner_ids and not self.ongoing_trials
                and finished
                and time.monotonic() >= getattr(self, "deadline", float("inf")))


WATCHDOG = "chief-watchdog"


def ask_for_a_trial(oracle_address: str) -> None:
    """A CreateTrial request to the chief's oracle, as a worker sends it."""
    import grpc

    protos = grpc_protos()
    with grpc.insecure_channel(oracle_address.replace("0.0.0.0", "127.0.0.1")) as channel:
        protos.get_service_grpc().OracleStub(channel).CreateTrial(
            protos.get_service().CreateTrialRequest(tuner_id=WATCHDOG), wait_for_ready=True, timeout=60)


class Heartbeat:
    """While a worker runs a trial, a daemon thread asks the chief for that trial every
    `interval` seconds, so the chief hears from it however long an epoch or the scoring takes."""

    def __init__(self, oracle, trial_id: str, interval: float):
        self.oracle, self.trial_id, self.interval = oracle, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=1)  # a beat stuck on a chief that went away must not hold up the trial

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.oracle.get_trial(self.trial_id)
            except Exception as err:  # noqa: BLE001 - a missed beat must not end the trial
                log.warning("tune: the chief did not answer trial %s's heartbeat (%s)", self.trial_id, type(err).__name__)


def watch_workers(oracle: LivenessOracleMixin, timeout: float, on_dropped: Callable[[str, Trial | None], None],
                  oracle_address: str) -> threading.Event:
    """Start the chief's watchdog; set the returned event to stop it. When every worker is gone
    and the budget (the oracle's `deadline`) is spent, it ends the search itself: Keras Tuner's
    chief stops only once some worker has asked for a trial and been told no, so the watchdog
    asks, over the chief's own gRPC service, as a worker would."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(max(timeout / 4, 0.5)):
            for tuner_id, trial in oracle.drop_silent_workers(timeout):
                on_dropped(tuner_id, trial)
            if oracle.abandoned():
                log.warning("tune: every worker is gone and the budget is spent; ending the search")
                ask_for_a_trial(oracle_address)
                return

    threading.Thread(target=watch, name="tune-watchdog", daemon=True).start()
    return stop


def fail_trial_run(parent_run_id: str, tuner_id: str, trial: Trial | None) -> None:
    """Mark the dropped trial's MLflow run FAILED (its worker cannot), with the reason as a tag."""
    import mlflow

    if trial is None:
        return
    client = mlflow.MlflowClient()
    try:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        # by name, not by its tags: the worker may have died before it tagged the run
        runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                                   f"attributes.run_name = 'trial-{trial.trial_id}' and "
                                                   "attributes.status = 'RUNNING'")
        for run in runs:
            client.set_tag(run.info.run_id, "tuner_id", tuner_id)
            client.set_tag(run.info.run_id, "failure", trial.message)
            client.set_terminated(run.info.run_id, "FAILED")
    except Exception as err:  # noqa: BLE001 - the search goes on; the trials table says it failed
        log.warning("tune: could not mark trial %s's MLflow run failed (%s: %s)", trial.trial_id,
                    type(err).__name__, err)


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
