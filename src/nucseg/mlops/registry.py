"""The model registry: versions, their tags, and the `champion` / `challenger` aliases.

`score` and `predict` load `models:/nucseg-unet@champion`, so whichever model holds that alias
is what users get.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

from nucseg import config
from nucseg.config import get_logger
from nucseg.core import maps_cache
from nucseg.core.evaluation import evaluate_model, evaluate_shifted, summarize, summarize_shifts
from nucseg.core.preprocess import preprocessing
from nucseg.core.quality import measure_levels
from nucseg.core.segment import Recipe
from nucseg.mlops import access
from nucseg.mlops.segmenter_model import load_segmenter

log = get_logger("nucseg.registry")


CHAMPION, CHALLENGER = "champion", "challenger"


class PromotionError(RuntimeError):
    """Promotion cannot go ahead (no run.json, an unknown run, a model that does not load); the
    message names the file, run or URI. Raised before any alias moves."""


@dataclass(frozen=True)
class Decision:
    """Who gets which alias (candidate names, or the label of the current champion) and why."""

    champion: str
    challenger: str | None
    reason: str


@dataclass(frozen=True)
class Candidate:
    """One model up for promotion: where it came from and how it scored."""

    name: str
    run_id: str
    model_uri: str
    summary: dict[str, Any]
    val_loss: float | None
    lineage: dict[str, str]
    recipe: Recipe = Recipe()

    @property
    def dsb(self) -> float:
        return self.summary["overall"]["dsb"]


class Incumbent(NamedTuple):
    """The version holding `champion` when the stage starts; `label` is its candidate name if it is one."""

    label: str
    dsb: float
    version: int
    groups: dict[str, float]  # `group_scores`


def decide(scores: Mapping[str, float], current_champion: tuple[str, float] | None, margin: float) -> Decision:
    """Champion and challenger from test DSB scores.

    The best candidate wins; ties go to the candidate listed first. A champion from an earlier
    promotion that is not among `scores` keeps its alias unless the best candidate beats it by
    more than `margin`, so noise cannot flip the served model back and forth; the
    best candidate is then its challenger.
    """
    if not scores:
        raise ValueError("no candidates to decide between")
    ranked = sorted(scores, key=lambda name: -scores[name])  # stable sort: ties keep the listed order
    best = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    reason = _ranking_reason(scores, best, runner_up)
    if current_champion is None or current_champion[0] in scores:
        return Decision(best, runner_up, reason)
    holder, held = current_champion
    gain = round(scores[best] - held, 9)  # 0.805 - 0.8 must not exceed a margin of 0.005
    if gain > margin:
        return Decision(best, runner_up, f"{reason}; it beats the current champion {holder} (DSB {held:.4f}) "
                                         f"by {gain:.4f} > margin {margin}")
    return Decision(holder, best, f"{reason}, but it does not beat the current champion {holder} "
                                  f"(DSB {held:.4f}) by more than margin {margin}, so {holder} stays champion")


def group_scores(summary: Mapping[str, Any]) -> dict[str, float]:
    """DSB of every group of users a promotion must not fail: each modality of `test` and each
    shifted copy of it (another magnification, darker, brighter, noisier)."""
    return {**{m: v["dsb"] for m, v in summary["per_modality"].items()},
            **{shift: v["dsb"] for shift, v in summary.get("shifted", {}).items()}}


def losses(candidate: Mapping[str, float], reference: Mapping[str, float], max_loss: float) -> dict[str, float]:
    """{group: DSB lost} where `candidate` scores more than `max_loss` below `reference`."""
    lost = {group: round(reference[group] - value, 9) for group, value in candidate.items() if group in reference}
    return {group: loss for group, loss in lost.items() if loss > max_loss}


def gate_reference(decision: Decision, current_champion: str | None) -> str | None:
    """The model a promotion would replace, which the gate measures candidates against: the
    current champion, or on a first promotion the runner-up."""
    return decision.challenger if current_champion is None else current_champion


def gate(decision: Decision, groups: Mapping[str, Mapping[str, float]], max_loss: float,
         reference: str | None) -> Decision:
    """`decision`, unless its champion would replace `reference` (`gate_reference`: the verdicts
    are measured against the same model) that it beats overall but trails by more than
    `max_loss` on some modality or shifted copy: users of that group would get a worse model, so
    `reference` is champion and the refused one challenger. `groups`: per contender, `group_scores`."""
    if reference is None or reference == decision.champion:
        return decision
    lost = losses(groups[decision.champion], groups[reference], max_loss)
    if not lost:
        return Decision(decision.champion, decision.challenger,
                        f"{decision.reason}; it loses no more than {max_loss} on any modality or shifted copy")
    which = ", ".join(f"{group} by {loss:.4f} ({groups[decision.champion][group]:.4f} vs {groups[reference][group]:.4f})"
                      for group, loss in sorted(lost.items(), key=lambda item: -item[1]))
    return Decision(reference, decision.champion,
                    f"{decision.reason}; but {decision.champion} is refused: it trails {reference} on {which}, "
                    f"more than the gate's {max_loss}, so {reference} is champion")


def verdicts(groups: Mapping[str, Mapping[str, float]], reference: str | None, max_loss: float) -> dict[str, str]:
    """The gate's word on every contender: measured against `reference` (the model a promotion
    would replace), the others `passed` or `refused: trails <reference> on <groups>`."""
    result = {}
    for name, scores in groups.items():
        if reference is None or name == reference or reference not in groups:
            result[name] = "reference" if name == reference else "passed"
            continue
        lost = losses(scores, groups[reference], max_loss)
        result[name] = ("refused: trails " + reference + " on " + ", ".join(f"{g} by {v:.4f}" for g, v in lost.items())
                        if lost else f"passed: within {max_loss} of {reference} on every modality and shifted copy")
    return result


def _ranking_reason(scores: Mapping[str, float], best: str, runner_up: str | None) -> str:
    if runner_up is None:
        return f"{best} is the only candidate (test DSB {scores[best]:.4f})"
    if scores[best] == scores[runner_up]:
        return f"{best} and {runner_up} tie at test DSB {scores[best]:.4f}; the tie goes to {best}, listed first"
    return f"{best} has the better test DSB ({scores[best]:.4f} vs {runner_up} {scores[runner_up]:.4f})"


@contextmanager
def promotion_lock() -> Iterator[None]:
    """One promotion at a time per store: packaging, registering and moving aliases are several
    registry calls, and two promotions interleaved would register the same model twice and could
    leave `champion` and `challenger` from different decisions. The lock is a file beside a local
    store, or in the project for a tracking server (promotions from other machines are not
    serialised by it: promote from one place, e.g. CI)."""
    uri = config.tracking_uri()
    path = Path(uri.removeprefix("sqlite:///") + ".promote.lock") if uri.startswith("sqlite:///") \
        else config.ROOT / ".promote.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another promotion holds %s; waiting for it to finish", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def score_model(model_uri: str, samples: list[dict[str, Any]], prepared_with: Recipe, label: str,
                shifts: Sequence[str] = ()) -> dict[str, Any]:
    """Test summary (overall, per modality and, under `shifted`, per shifted copy) of the
    segmenter behind `model_uri`, with its own recipe. The test images were prepared with `prepared_with`'s preprocessing; a model whose
    recipe preprocesses differently cannot be compared like for like on them."""
    try:
        network, recipe = load_segmenter(model_uri, fallback_recipe=prepared_with)
    except Exception as err:  # noqa: BLE001 - whatever the cause, the URI is what the user must fix
        raise PromotionError(f"cannot load model {model_uri} ({label}): {err}") from err
    own, prepared = preprocessing(recipe.to_dict()), preprocessing(prepared_with.to_dict())
    if own != prepared:
        raise PromotionError(f"{model_uri} ({label}) preprocesses images as {own}, the prepared "
                             f"test images were made with {prepared}: run `prepare` with its "
                             "settings to compare it")
    network = maps_cache.cached(network)  # a rerun of `promote` scores the same maps again
    per_image, _ = evaluate_model(network, samples, recipe, desc=f"promote {label}")
    summary = summarize(per_image)
    if shifts:
        summary["shifted"] = summarize_shifts(evaluate_shifted(network, samples, recipe, tuple(shifts),
                                                               desc=f"promote {label}"))
    log.info("%s (%s): test DSB %.4f; %s", label, model_uri, summary["overall"]["dsb"], network.summary())
    return summary


def measure_quality(model_uri: str, samples: list[dict[str, Any]], label: str) -> dict[str, dict[str, float]]:
    """`quality.measure_levels` of the segmenter behind `model_uri` on the test `samples`."""
    network, recipe = load_segmenter(model_uri)
    levels = measure_levels(network, samples, recipe)
    log.info("%s at each quality level: %s", label,
             {level: (m["dsb"], m["megapixels_per_second"]) for level, m in levels.items()})
    return levels


def quality_tags(levels: Mapping[str, Mapping[str, float]], images: int) -> dict[str, str]:
    """`quality.<level>.dsb` and `quality.<level>.megapixels_per_second` version tags, and what
    they were measured on (the speed is this machine's)."""
    import os

    tags = {f"quality.{level}.{key}": str(measured[key]) for level, measured in levels.items()
            for key in ("dsb", "megapixels_per_second")}
    if tags:
        tags["quality.measured_on"] = (f"test split ({images} images), segmenting in one process on "
                                       f"{os.cpu_count()} cores")
    return tags


def best_val_loss(client, run_id: str) -> float | None:
    """Lowest validation loss the run logged (None if it logged none), for the comparison table."""
    history = client.get_metric_history(run_id, "val_loss")
    return round(min(m.value for m in history), 5) if history else None


def current_champion(client, name: str, scored: list[Candidate], samples, recipe: Recipe,
                     shifts: Sequence[str] = ()) -> Incumbent | None:
    """The version holding `champion` now, or None if none does.

    A holder that is not a candidate is rescored on this test split: the DSB tagged on
    it may come from different data, and the margin only means something like for like.
    """
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_registered_model(name).aliases.get(CHAMPION)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    if version is None:
        return None
    for candidate in scored:
        if find_version(client, name, candidate) == int(version):
            return Incumbent(candidate.name, candidate.dsb, int(version), group_scores(candidate.summary))
    summary = score_model(f"models:/{name}/{version}", samples, recipe, f"current champion version {version}", shifts)
    return Incumbent(f"version {version}", summary["overall"]["dsb"], int(version), group_scores(summary))


def find_version(client, name: str, candidate: Candidate) -> int | None:
    """The registry version already made from this run's model, so a rerun reuses it."""
    for version in client.search_model_versions(f"name='{name}' and run_id='{candidate.run_id}'"):
        if version.source == candidate.model_uri:
            return int(version.version)
    return None


def register(client, name: str, candidate: Candidate, reason: str, verdict: str = "",
             extra_tags: Mapping[str, Any] | None = None) -> int:
    """Version number of `candidate` in the registry (created once), tagged and described."""
    import mlflow

    version = find_version(client, name, candidate)
    if version is None:
        version = int(mlflow.register_model(candidate.model_uri, name).version)
    runtime_choice = (mlflow.models.get_model_info(candidate.model_uri).metadata or {}).get("runtime_choice", {})
    tags = {**version_tags(candidate, reason, runtime_choice, verdict), **{k: str(v) for k, v in (extra_tags or {}).items()}}
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    overall = candidate.summary["overall"]
    client.update_model_version(name, str(version), description=(
        f"{candidate.name} U-Net from run {candidate.run_id}. Test DSB {overall['dsb']:.4f}, pixel IoU "
        f"{overall['pixel_iou']:.4f}, Dice {overall['pixel_dice']:.4f} on {overall['images']} images. "
        f"Promotion: {reason}."))
    return version


def source_lineage(client, run_id: str, current: dict[str, str]) -> dict[str, str]:
    """Data and code versions the model was trained with (the current checkout's where the
    training run did not record them), and `budget_cut` where a clock cap cut its training short."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException as err:
        raise PromotionError(f"MLflow run {run_id} not found in {config.tracking_uri()}: {err}") from err
    return {**{key: tags.get(key, value) for key, value in current.items()},
            **({"budget_cut": tags["budget_cut"]} if "budget_cut" in tags else {})}


# What chose the runtime: each one's speed, and the int8 network's verdict (kept or why not) and DSBs.
RUNTIME_CHOICE_TAGS = ("keras_seconds_per_megapixel", "onnx_seconds_per_megapixel", "onnx_int8_seconds_per_megapixel",
                       "int8", "float_dsb", "int8_dsb")


def version_tags(candidate: Candidate, reason: str, runtime_choice: Mapping[str, Any] | None = None,
                 verdict: str = "") -> dict[str, str]:
    """Tags a version carries: scores (per modality and shifted copy), lineage, the recipe's
    settings (the training nucleus size among them), the promotion gate's verdict and the network
    runtime it runs on (with the timings that chose it)."""
    overall = candidate.summary["overall"]
    lineage = {key: value for key, value in candidate.lineage.items() if not key.startswith("mlflow.")}
    tags = {"candidate": candidate.name, "decision": reason, **lineage,
            **{key: str(overall[key]) for key in ("dsb", "pixel_iou", "pixel_dice")},
            **{f"dsb_{group}": str(value) for group, value in group_scores(candidate.summary).items()},
            "nucleus_diameter": str(candidate.recipe.nucleus_diameter)}
    if verdict:
        tags["gate"] = verdict
    if candidate.val_loss is not None:
        tags["val_loss"] = str(candidate.val_loss)
    tags.update({f"recipe.{key}": str(value) for key, value in candidate.recipe.to_dict().items()})
    choice = runtime_choice or {}
    tags["runtime"] = choice.get("runtime", "keras")
    tags.update({f"runtime.{key}": str(choice[key]) for key in RUNTIME_CHOICE_TAGS if key in choice})
    return tags


def move_aliases(client, name: str, champion: int, challenger: int | None) -> None:
    """Champion first: setting an alias moves it in one step, so `champion` always resolves."""
    client.set_registered_model_alias(name, CHAMPION, str(champion))
    if challenger is not None:
        client.set_registered_model_alias(name, CHALLENGER, str(challenger))
    elif CHALLENGER in client.get_registered_model(name).aliases:
        client.delete_registered_model_alias(name, CHALLENGER)


def try_move_aliases(client, name: str, champion: int, challenger: int | None) -> str | None:
    """Move the aliases; None, or why the server refused (a member registers versions, only a
    promoter moves aliases). Refused, nothing has moved: `champion` is the first to move."""
    from mlflow.exceptions import MlflowException

    try:
        move_aliases(client, name, champion, challenger)
    except MlflowException as err:
        refused = access.refusal_message(err)
        if refused is None:
            raise
        log.warning("versions registered, aliases not moved: %s", refused)
        return refused
    return None
