"""Stage `promote`: the model registry decides which U-Net serves.

`score` and `predict` load `models:/nucseg-unet@champion`, so whichever model holds that alias
is what users get. The candidates are the packages `package` made of each trained network
(`models/packages/`), each with its own recipe (the thresholds `package` chose for it on
`val`), compared on the same `test` split and its shifted copies before the registry is touched:
a crash mid-stage then leaves the aliases exactly as they were, and the registry is never without
a champion. A package `evaluate` has scored already (the untuned one) is not scored again.

Under `dvc exp run` the candidates are registered and scored (their versions tagged with the
experiment) but no alias moves: an experiment reports which version it would make champion
(`reports/promotion.json`, which the pipeline's `score` stage then scores), and production
keeps serving what it served.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from nucseg import config, io
from nucseg.config import get_logger
from nucseg.core.data import load_split
from nucseg.core.segment import Recipe
from nucseg.mlops import tracking
from nucseg.mlops.networks import PACKAGES_DIR, TRAINED_NETWORKS, package_record
from nucseg.mlops.packaging import read_recipe, read_run_info
from nucseg.mlops.runs import stage_run
from nucseg.mlops.promotion_report import promotion_markdown, promotion_table
from nucseg.mlops.registry import (Candidate, best_val_loss, current_champion, decide, gate, gate_reference,
                                   group_scores, measure_quality, promotion_lock,
                                   quality_tags, register, score_model, source_lineage,
                                   try_move_aliases, verdicts)

log = get_logger("nucseg.promote")


CANDIDATES = tuple(TRAINED_NETWORKS)  # on a DSB tie the first wins
# Candidates whose package another stage scored on `test` and its shifted copies already.
EVALUATED = {"untuned": "reports/eval_metrics.json"}


def run(params: dict[str, Any], candidates: Sequence[str] = CANDIDATES,
        packages_dir: str | Path = PACKAGES_DIR, evaluated: Mapping[str, str | Path] = EVALUATED,
        split_path: str | Path = "artifacts/split.csv", samples_dir: str | Path = "artifacts/prepared",
        metrics_path: str | Path = "reports/promotion.json",
        report_path: str | Path = "reports/promotion.md",
        unseen_path: str | Path = "reports/unseen_types.json") -> dict[str, Any]:
    """Score, register, alias, report; returns what `metrics_path` holds. Two promotions at
    once (two `dvc repro` in one project, or against one local store) take turns."""
    import mlflow

    tracking.setup()
    with promotion_lock():
        client = mlflow.MlflowClient()
        name = config.REGISTERED_MODEL
        lineage = tracking.lineage_tags()
        sources = {cand: read_run_info(package_record(cand, packages_dir)) for cand in candidates}
        recipes = {cand: read_recipe(package_record(cand, packages_dir)) for cand in candidates}
        prepared_with = Recipe.from_params(params)  # how the test samples were prepared
        samples = load_split(split_path, samples_dir, ("test",), desc="promote: loading")["test"]
        shifts = tuple(params["evaluate"]["shifts"])
        scored = [Candidate(cand, run_id, uri,
                            evaluated_summary(evaluated.get(cand), uri, shifts)
                            or score_model(uri, samples, prepared_with, cand, shifts),
                            best_val_loss(client, run_id), source_lineage(client, run_id, lineage), recipes[cand])
                  for cand, (run_id, uri) in sources.items()]
        incumbent = current_champion(client, name, scored, samples, prepared_with, shifts)
        decision = decide({c.name: c.dsb for c in scored}, (incumbent.label, incumbent.dsb) if incumbent else None,
                          float(params["promote"]["margin"]))
        groups = {c.name: group_scores(c.summary) for c in scored}
        if incumbent:
            groups.setdefault(incumbent.label, incumbent.groups)
        max_loss = float(params["promote"]["max_loss"])
        replaced = incumbent.label if incumbent else None
        reference = gate_reference(decision, replaced)
        decision = gate(decision, groups, max_loss, reference)
        log.info("decision: %s", decision.reason)
        verdict = verdicts(groups, reference, max_loss)

        unseen = unseen_tags(unseen_path)
        quality = {c.name: measure_quality(c.model_uri, samples, c.name)  # what `nucseg score --quality` trades
                   for c in scored if c.name == decision.champion}
        versions = {c.name: register(client, name, c, decision.reason, verdict[c.name],
                                     {**unseen, **quality_tags(quality.get(c.name, {}), len(samples))}) for c in scored}
        if incumbent:
            versions.setdefault(incumbent.label, incumbent.version)
        experiment = tracking.dvc_experiment()
        refused = None
        if experiment:
            log.info("dvc experiment %s: no alias moves; it would make version %s champion", experiment[0],
                     versions[decision.champion])
        else:
            refused = try_move_aliases(client, name, versions[decision.champion],
                                       versions[decision.challenger] if decision.challenger else None)

        result = promotion_table(scored, versions, decision, incumbent, verdict, quality)
        result.update(unseen)
        result["aliases_moved"] = experiment is None and refused is None
        if experiment:
            result["dvc_experiment"] = experiment[0]
        if refused:
            result["aliases_refused"] = refused
        io.write_json(metrics_path, result)
        io.atomic_write_text(report_path, promotion_markdown(result))
        log_promote_run(result, metrics_path, report_path, split_path, params)
        return result


def evaluated_summary(path: str | Path | None, model_uri: str, shifts: tuple[str, ...]) -> dict[str, Any] | None:
    """The `test` summary (shifted copies included) another stage wrote of the package at
    `model_uri` (`evaluate`'s metrics); None where none is on file for that package and those shifts."""
    if path is None or not Path(path).exists():
        return None
    measured = json.loads(Path(path).read_text())
    test = measured.get("test", {})
    if measured.get("model_uri") != model_uri or set(test.get("shifted", {})) != set(shifts):
        log.info("%s scored %s on shifts %s, not %s on %s: scoring it here", path, measured.get("model_uri"),
                 sorted(test.get("shifted", {})), model_uri, sorted(shifts))
        return None
    log.info("%s: test DSB %.4f as %s measured it", model_uri, test["overall"]["dsb"], path)
    return {**test, "shifted": {shift: test["shifted"][shift] for shift in shifts}}  # the order scoring gives


def unseen_tags(path: str | Path) -> dict[str, Any]:
    """What the `unseen` stage measured for the training recipe (leave-type-out DSB per held-out
    image type and their mean): every version trained by it carries them."""
    path = Path(path)
    if not path.exists():
        log.warning("%s not found: versions will not say how the recipe does on unseen image types "
                    "(run `dvc repro unseen`)", path)
        return {}
    summary = json.loads(path.read_text())
    return {"unseen_type_dsb_mean": summary["mean_dsb"],
            **{f"unseen_type_dsb.{t.replace(' ', '_')}": v["dsb"] for t, v in summary["per_type"].items()}}


def log_promote_run(table: dict[str, Any], metrics_path: str | Path, report_path: str | Path,
                    split_path: str | Path, params: dict[str, Any]) -> None:
    """An MLflow run of its own, so the UI shows when and why the champion changed, and on which data."""
    import mlflow

    with stage_run("promote", params, split_path, ("test",), run_name="promote",
                   tags={"champion_version": table["champion_version"], "decision": table["reason"]}):
        mlflow.log_metrics({f"{name}_{key}": c[key] for name, c in table["candidates"].items()
                            for key in ("dsb", "pixel_iou", "pixel_dice")})
        mlflow.log_artifact(str(metrics_path), "promotion")
        mlflow.log_artifact(str(report_path), "promotion")
