"""Stage `promote`: the model registry decides which U-Net serves.

`score` and `predict` load `models:/nucseg-unet@champion`, so whichever model holds that alias
is what users get. Every candidate is scored here, on the same `test` split with the same
post-processing, before the registry is touched: a crash mid-stage then leaves the aliases
exactly as they were, and the registry is never without a champion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from nucseg import config, datasets, io, tracking
from nucseg.config import get_logger
from nucseg.evaluate import evaluate_model, load_split_samples, summarize

log = get_logger("nucseg.registry")

# Order matters: on a DSB tie the candidate listed first wins, so tuning has to beat the
# baseline, not merely match it.
CANDIDATES = {"untuned": "models/untuned", "tuned": "models/tuned"}
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

    @property
    def dsb(self) -> float:
        return self.summary["overall"]["dsb"]


class Incumbent(NamedTuple):
    """The version holding `champion` when the stage starts; `label` is its candidate name if it is one."""

    label: str
    dsb: float
    version: int


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


def _ranking_reason(scores: Mapping[str, float], best: str, runner_up: str | None) -> str:
    if runner_up is None:
        return f"{best} is the only candidate (test DSB {scores[best]:.4f})"
    if scores[best] == scores[runner_up]:
        return f"{best} and {runner_up} tie at test DSB {scores[best]:.4f}; the tie goes to {best}, listed first"
    return f"{best} has the better test DSB ({scores[best]:.4f} vs {runner_up} {scores[runner_up]:.4f})"


def run(params: dict[str, Any], candidates: Mapping[str, str | Path] = CANDIDATES,
        split_path: str | Path = "artifacts/split.csv", samples_dir: str | Path = "artifacts/prepared",
        metrics_path: str | Path = "reports/promotion.json",
        report_path: str | Path = "reports/promotion.md") -> dict[str, Any]:
    """Score, register, alias, report; returns what `metrics_path` holds."""
    import mlflow

    tracking.setup()
    client = mlflow.MlflowClient()
    name = config.REGISTERED_MODEL
    lineage = tracking.lineage_tags()
    sources = {cand: read_run_info(Path(folder) / "run.json") for cand, folder in candidates.items()}
    samples = load_split_samples(split_path, samples_dir, "test")
    scored = [Candidate(cand, run_id, uri, score_model(uri, samples, params, cand), best_val_loss(client, run_id),
                        source_lineage(client, run_id, lineage)) for cand, (run_id, uri) in sources.items()]
    incumbent = current_champion(client, name, scored, samples, params)
    decision = decide({c.name: c.dsb for c in scored}, (incumbent.label, incumbent.dsb) if incumbent else None,
                      float(params["promote"]["margin"]))
    log.info("decision: %s", decision.reason)

    versions = {c.name: register(client, name, c, decision.reason) for c in scored}
    if incumbent:
        versions.setdefault(incumbent.label, incumbent.version)
    move_aliases(client, name, versions[decision.champion],
                 versions[decision.challenger] if decision.challenger else None)

    result = promotion_table(scored, versions, decision, incumbent)
    io.write_json(metrics_path, result)
    io.atomic_write_text(report_path, promotion_markdown(result))
    log_promote_run(result, lineage, metrics_path, report_path, split_path, params)
    return result


def read_run_info(path: Path) -> tuple[str, str]:
    """(run_id, model_uri) a training or tuning stage left behind."""
    try:
        info = json.loads(path.read_text())
        return info["run_id"], info["model_uri"]
    except FileNotFoundError as err:
        raise PromotionError(f"{path}: not found; run the stage that trains this model first") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PromotionError(f"{path}: expected JSON with run_id and model_uri ({err!r})") from err


def score_model(model_uri: str, samples: list[dict[str, Any]], params: dict[str, Any], label: str) -> dict[str, Any]:
    """Test summary (overall and per modality) of the model behind `model_uri`."""
    import mlflow

    try:
        model = mlflow.keras.load_model(model_uri)
    except Exception as err:  # noqa: BLE001 - whatever the cause, the URI is what the user must fix
        raise PromotionError(f"cannot load model {model_uri} ({label}): {err}") from err
    per_image, _ = evaluate_model(model, samples, params, desc=f"promote {label}")
    summary = summarize(per_image)
    log.info("%s (%s): test DSB %.4f", label, model_uri, summary["overall"]["dsb"])
    return summary


def best_val_loss(client, run_id: str) -> float | None:
    """Lowest validation loss the run logged (None if it logged none), for the comparison table."""
    history = client.get_metric_history(run_id, "val_loss")
    return round(min(m.value for m in history), 5) if history else None


def current_champion(client, name: str, scored: list[Candidate], samples, params) -> Incumbent | None:
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
            return Incumbent(candidate.name, candidate.dsb, int(version))
    summary = score_model(f"models:/{name}/{version}", samples, params, f"current champion version {version}")
    return Incumbent(f"version {version}", summary["overall"]["dsb"], int(version))


def find_version(client, name: str, candidate: Candidate) -> int | None:
    """The registry version already made from this run's model, so a rerun reuses it."""
    for version in client.search_model_versions(f"name='{name}' and run_id='{candidate.run_id}'"):
        if version.source == candidate.model_uri:
            return int(version.version)
    return None


def register(client, name: str, candidate: Candidate, reason: str) -> int:
    """Version number of `candidate` in the registry (created once), tagged and described."""
    import mlflow

    version = find_version(client, name, candidate)
    if version is None:
        version = int(mlflow.register_model(candidate.model_uri, name).version)
    for key, value in version_tags(candidate, reason).items():
        client.set_model_version_tag(name, str(version), key, value)
    overall = candidate.summary["overall"]
    client.update_model_version(name, str(version), description=(
        f"{candidate.name} U-Net from run {candidate.run_id}. Test DSB {overall['dsb']:.4f}, pixel IoU "
        f"{overall['pixel_iou']:.4f}, Dice {overall['pixel_dice']:.4f} on {overall['images']} images. "
        f"Promotion: {reason}."))
    return version


def source_lineage(client, run_id: str, current: dict[str, str]) -> dict[str, str]:
    """Data and code versions the model was trained with; the current checkout's where the
    training run did not record them."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException as err:
        raise PromotionError(f"MLflow run {run_id} not found in {config.tracking_uri()}: {err}") from err
    return {key: tags.get(key, value) for key, value in current.items()}


def version_tags(candidate: Candidate, reason: str) -> dict[str, str]:
    overall = candidate.summary["overall"]
    tags = {"candidate": candidate.name, "decision": reason, **candidate.lineage,
            **{key: str(overall[key]) for key in ("dsb", "pixel_iou", "pixel_dice")},
            **{f"dsb_{modality}": str(values["dsb"]) for modality, values in candidate.summary["per_modality"].items()}}
    if candidate.val_loss is not None:
        tags["val_loss"] = str(candidate.val_loss)
    return tags


def move_aliases(client, name: str, champion: int, challenger: int | None) -> None:
    """Champion first: setting an alias moves it in one step, so `champion` always resolves."""
    client.set_registered_model_alias(name, CHAMPION, str(champion))
    if challenger is not None:
        client.set_registered_model_alias(name, CHALLENGER, str(challenger))
    elif CHALLENGER in client.get_registered_model(name).aliases:
        client.delete_registered_model_alias(name, CHALLENGER)


def promotion_table(scored: list[Candidate], versions: dict[str, int], decision: Decision,
                    incumbent: Incumbent | None) -> dict[str, Any]:
    """The DVC metrics file: one entry per candidate, plus who holds which alias and why."""
    table = {"candidates": {c.name: {
        "version": versions[c.name], "run_id": c.run_id, "model_uri": c.model_uri, "loss": c.val_loss,
        **{key: c.summary["overall"][key] for key in ("dsb", "pixel_iou", "pixel_dice")},
        "dsb_per_modality": {m: v["dsb"] for m, v in c.summary["per_modality"].items()}} for c in scored},
        CHAMPION: decision.champion, "champion_version": versions[decision.champion],
        CHALLENGER: decision.challenger,
        "challenger_version": versions[decision.challenger] if decision.challenger else None,
        "reason": decision.reason}
    if incumbent and incumbent.label not in table["candidates"]:
        table["previous_champion"] = {"label": incumbent.label, "version": incumbent.version, "dsb": incumbent.dsb}
    return table


def promotion_markdown(table: dict[str, Any]) -> str:
    """The tuned-vs-untuned table a reviewer reads, with the decision under it."""
    candidates = table["candidates"]
    modalities = sorted({m for c in candidates.values() for m in c["dsb_per_modality"]})
    aliases = {table["champion_version"]: CHAMPION, table["challenger_version"]: CHALLENGER}
    header = ["candidate", "version", "alias", "val loss", "DSB", "pixel IoU", "Dice", *(f"DSB {m}" for m in modalities)]
    rows = [[name, c["version"], aliases.get(c["version"], ""), _fmt(c["loss"]), _fmt(c["dsb"]), _fmt(c["pixel_iou"]),
             _fmt(c["pixel_dice"]), *(_fmt(c["dsb_per_modality"].get(m)) for m in modalities)]
            for name, c in candidates.items()]
    if "previous_champion" in table:
        prev = table["previous_champion"]
        rows.append([f"{prev['label']} (champion before)", prev["version"], aliases.get(prev["version"], ""), "–",
                     _fmt(prev["dsb"]), "–", "–", *("–" for _ in modalities)])
    lines = ["# Promotion: tuned vs untuned", "", "Scored on the `test` split, which chose nothing before this.", "", _row(header), _row(["---"] * len(header)), *map(_row, rows), "",
             f"**Champion:** {_who(table['champion'], table['champion_version'])}; "
             f"**challenger:** {_who(table['challenger'], table['challenger_version'])}.", "",
             f"**Why:** {table['reason']}.", ""]
    return "\n".join(lines)


def _who(label: str | None, version: int | None) -> str:
    return "none" if label is None else label if label == f"version {version}" else f"{label} (version {version})"


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def log_promote_run(table: dict[str, Any], lineage: dict[str, str], metrics_path: str | Path,
                    report_path: str | Path, split_path: str | Path, params: dict[str, Any]) -> None:
    """An MLflow run of its own, so the UI shows when and why the champion changed, and on which data."""
    import mlflow

    with mlflow.start_run(run_name="promote"):
        datasets.log_split_inputs(split_path, ("test",), params)
        mlflow.set_tags({"stage": "promote", **lineage, "champion_version": table["champion_version"],
                         "decision": table["reason"]})
        mlflow.log_metrics({f"{name}_{key}": c[key] for name, c in table["candidates"].items()
                            for key in ("dsb", "pixel_iou", "pixel_dice")})
        mlflow.log_artifact(str(metrics_path), "promotion")
        mlflow.log_artifact(str(report_path), "promotion")
