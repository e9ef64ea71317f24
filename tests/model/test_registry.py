"""Promotion on a real sqlite MLflow registry: who gets `champion`, idempotent reruns, and a
failed promotion that leaves the served model where it was."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from nucseg import config, io
from nucseg.mlops import registry
from nucseg.mlops.logged_models import log_keras_model
from nucseg.core.data import load_split
from nucseg.mlops.packaging import PackagingError, int8_check, package
from nucseg.stages import package as package_stage
from nucseg.stages import promote as promote_stage
from nucseg.core.targets import targets_from_labels
from nucseg.core.segment import Recipe
from nucseg.core.unet import build_unet

NAME = config.REGISTERED_MODEL


# ---- decide: the rule on its own ----

def test_better_tuned_becomes_champion():
    decision = registry.decide({"untuned": 0.40, "tuned": 0.55}, None, margin=0.005)
    assert (decision.champion, decision.challenger) == ("tuned", "untuned")
    assert "0.5500" in decision.reason and "0.4000" in decision.reason


def test_worse_tuned_becomes_challenger():
    decision = registry.decide({"untuned": 0.55, "tuned": 0.40}, None, margin=0.005)
    assert (decision.champion, decision.challenger) == ("untuned", "tuned")


def test_margin_keeps_an_existing_champion():
    scores = {"untuned": 0.40, "tuned": 0.605}
    kept = registry.decide(scores, ("version 3", 0.60), margin=0.005)  # gain exactly the margin is not enough
    assert (kept.champion, kept.challenger) == ("version 3", "tuned")
    assert "does not beat the current champion version 3" in kept.reason
    beaten = registry.decide(scores, ("version 3", 0.59), margin=0.005)
    assert (beaten.champion, beaten.challenger) == ("tuned", "untuned")
    assert "beats the current champion version 3" in beaten.reason


def test_margin_does_not_protect_a_champion_that_is_a_candidate():
    decision = registry.decide({"untuned": 0.600, "tuned": 0.601}, ("untuned", 0.600), margin=0.005)
    assert decision.champion == "tuned"


# ---- the gate: no group of users may lose ----

GROUPS = {"untuned": {"fluorescence": 0.65, "histology": 0.30, "x4": 0.55},
          "tuned": {"fluorescence": 0.70, "histology": 0.25, "x4": 0.56}}  # better overall, worse on histology


def test_gate_refuses_a_better_candidate_that_loses_on_one_modality():
    decision = registry.decide({"untuned": 0.58, "tuned": 0.60}, None, margin=0.005)
    gated = registry.gate(decision, GROUPS, max_loss=0.03, reference=registry.gate_reference(decision, None))
    assert (gated.champion, gated.challenger) == ("untuned", "tuned")
    assert "tuned is refused" in gated.reason and "histology by 0.0500 (0.2500 vs 0.3000)" in gated.reason
    verdicts = registry.verdicts(GROUPS, "untuned", 0.03)
    assert verdicts["tuned"] == "refused: trails untuned on histology by 0.0500"


def test_verdicts_after_a_refusal_are_measured_against_the_model_the_gate_kept():
    # Each loses a group to the other (as in a real run: tuned ahead on histology, behind on
    # brightfield). The refused candidate's verdict says refused; the kept one is the reference.
    groups = {"untuned": {"histology": 0.27, "brightfield": 0.34}, "tuned": {"histology": 0.31, "brightfield": 0.29}}
    decision = registry.decide({"untuned": 0.59, "tuned": 0.60}, None, margin=0.005)
    reference = registry.gate_reference(decision, None)
    gated = registry.gate(decision, groups, max_loss=0.03, reference=reference)
    assert (reference, gated.champion) == ("untuned", "untuned")
    verdicts = registry.verdicts(groups, reference, 0.03)
    assert verdicts == {"untuned": "reference", "tuned": "refused: trails untuned on brightfield by 0.0500"}
    assert registry.gate_reference(decision, "version 3") == "version 3"


def test_gate_lets_a_candidate_within_the_loss_through_and_measures_against_the_current_champion():
    decision = registry.decide({"untuned": 0.58, "tuned": 0.60}, None, margin=0.005)
    assert registry.gate(decision, GROUPS, max_loss=0.06, reference="untuned").champion == "tuned"
    groups = {**GROUPS, "version 3": {"fluorescence": 0.60, "histology": 0.20, "x4": 0.40}}
    beaten = registry.decide({"untuned": 0.58, "tuned": 0.60}, ("version 3", 0.50), margin=0.005)
    gated = registry.gate(beaten, groups, max_loss=0.03, reference=registry.gate_reference(beaten, "version 3"))
    assert gated.champion == "tuned" and "loses no more than 0.03" in gated.reason
    shifted = {**groups, "version 3": {"fluorescence": 0.60, "histology": 0.20, "x4": 0.60}}
    refused = registry.gate(beaten, shifted, max_loss=0.03, reference="version 3")
    assert (refused.champion, refused.challenger) == ("version 3", "tuned") and "x4 by 0.0400" in refused.reason


def test_group_scores_are_the_modalities_and_the_shifted_copies():
    summary = {"overall": {"dsb": 0.5}, "per_modality": {"histology": {"dsb": 0.3}},
               "shifted": {"x2": {"dsb": 0.45, "dsb_histology": 0.2}}}
    assert registry.group_scores(summary) == {"histology": 0.3, "x2": 0.45}


def test_tie_goes_to_the_candidate_listed_first():
    decision = registry.decide({"untuned": 0.5, "tuned": 0.5}, None, margin=0.0)
    assert (decision.champion, decision.challenger) == ("untuned", "tuned")
    assert "tie" in decision.reason and "listed first" in decision.reason


# ---- run: a tiny world of synthetic nuclei and two hand-made U-Nets ----

def _bright_disk_images(root: Path) -> tuple[Path, Path]:
    """split.csv + npz samples in prepare's format: 64x64 images with separate bright disks."""
    rng = np.random.default_rng(0)
    rows = []
    for index, modality in enumerate(["fluorescence", "fluorescence", "brightfield", "brightfield"]):
        labels = np.zeros((64, 64), np.uint16)
        for label, centre in enumerate([(14, 14), (14, 46), (46, 30)], start=1):
            rr, cc = disk(centre, int(rng.integers(5, 9)), shape=labels.shape)
            labels[rr, cc] = label
        image = np.where(labels[..., None] > 0, 220, 20).astype(np.uint8).repeat(3, axis=2)
        io.write_npz(root / "prepared" / f"img{index}.npz", image=image, labels=labels,
                     target=targets_from_labels(labels))
        rows.append({"id": f"img{index}", "modality": modality, "split": "test"})
    for index, split in enumerate(["train", "train", "val", "val"], start=4):  # int8 calibration and its check
        labels = np.zeros((64, 64), np.uint16)
        for label, centre in enumerate([(20, 20), (40, 44)], start=1):
            rr, cc = disk(centre, int(rng.integers(5, 9)), shape=labels.shape)
            labels[rr, cc] = label
        image = np.where(labels[..., None] > 0, 220, 20).astype(np.uint8).repeat(3, axis=2)
        io.write_npz(root / "prepared" / f"img{index}.npz", image=image, labels=labels,
                     target=targets_from_labels(labels))
        rows.append({"id": f"img{index}", "modality": "fluorescence", "split": split})
    io.write_csv(root / "split.csv", pd.DataFrame(rows))
    return root / "split.csv", root / "prepared"


def _unet(tracks_brightness: bool):
    """All-zero U-Net whose border channel is off; its foreground is either off everywhere or a
    steep sigmoid of image brightness, routed through the full-resolution skip connection."""
    model = build_unet(depth=2, base_filters=4, dropout=0.0, batchnorm=False)
    for layer in model.layers:
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    if tracks_brightness:
        for layer_name, tap_in, value in [("enc0_conv1", slice(0, 3), 1 / 3), ("enc0_conv2", 0, 1.0),
                                          ("dec0_conv1", 4, 1.0), ("dec0_conv2", 0, 1.0)]:  # 4: first skip channel
            kernel, bias = model.get_layer(layer_name).get_weights()
            kernel[1, 1, tap_in, 0] = value
            model.get_layer(layer_name).set_weights([kernel, bias])
    kernel, _ = model.get_layer("logits").get_weights()
    kernel[0, 0, 0, 0] = 20.0 if tracks_brightness else 0.0  # foreground logit 20 * (brightness - 0.5)
    model.get_layer("logits").set_weights([kernel, np.array([-10.0, -10.0], np.float32)])
    return model


def _log(model, val_losses: list[float]) -> dict[str, str]:
    """What a training stage leaves: an MLflow run with its curve and logged network, and the
    network's file (`network`, copied to `models/<name>/model.keras` by `promote` below)."""
    with mlflow.start_run() as active:
        for step, value in enumerate(val_losses):
            mlflow.log_metric("val_loss", value, step=step)
        network = Path.cwd() / "networks" / f"{active.info.run_id}.keras"
        network.parent.mkdir(exist_ok=True)
        model.save(network)
        return {"run_id": active.info.run_id, "model_uri": log_keras_model(model), "network": str(network)}


@dataclass
class World:
    root: Path
    split: Path
    samples: Path
    good: dict
    bad: dict
    good_twin: dict  # same weights as `good`, another run: an earlier pipeline's champion


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.chdir(root)  # artifacts land beside the store, not in the project's mlruns/
        # log_model infers pip requirements by loading the model in a fresh Python (~10 s each on
        # two busy cores); cut short, MLflow falls back to its default Keras requirements.
        patch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
        from nucseg.mlops import tracking

        tracking.setup()
        split, samples = _bright_disk_images(root)
        yield World(root, split, samples, good=_log(_unet(True), [0.6, 0.2, 0.3]), bad=_log(_unet(False), [0.9]),
                    good_twin=_log(_unet(True), [0.25]))


@pytest.fixture
def promote(world, params, tmp_path):
    """promote(untuned=..., tuned=...) runs the `package` stage, then the `promote` stage, on what
    those training runs left (`_log`); `evaluated`: the untuned package's scores on file, if any.
    Each test starts from an empty registry."""
    client = mlflow.MlflowClient()
    if client.search_registered_models(f"name='{NAME}'"):
        client.delete_registered_model(NAME)
    trained = {"untuned": tmp_path / "untuned", "tuned": tmp_path / "tuned"}

    def _promote(untuned: dict, tuned: dict, evaluated: dict | None = None) -> dict:
        for kind, info in (("untuned", untuned), ("tuned", tuned)):
            io.write_json(tmp_path / kind / "run.json", info)
            (tmp_path / kind / "model.keras").write_bytes(Path(info["network"]).read_bytes())
        for kind, folder in trained.items():
            package_stage.run(params, kind, folder, split_path=world.split, samples_dir=world.samples,
                              output_dir=tmp_path / "packages")
        return promote_stage.run(params, candidates=list(trained), packages_dir=tmp_path / "packages",
                                 evaluated=evaluated or {}, split_path=world.split, samples_dir=world.samples,
                                 metrics_path=tmp_path / "reports" / "promotion.json",
                                 report_path=tmp_path / "reports" / "promotion.md")

    return _promote


def _aliases() -> dict[str, int]:
    return {alias: int(v) for alias, v in mlflow.MlflowClient().get_registered_model(NAME).aliases.items()}


def _versions() -> dict[str, int]:
    """candidate tag → version number."""
    return {v.tags["candidate"]: int(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{NAME}'")}


@pytest.mark.slow
def test_better_tuned_model_is_champion_and_rerun_is_idempotent(world, promote, tmp_path):
    result = promote(untuned=world.bad, tuned=world.good)

    versions = _versions()
    assert _aliases() == {"champion": versions["tuned"], "challenger": versions["untuned"]}
    assert result["candidates"]["tuned"]["dsb"] == 1.0 and result["candidates"]["untuned"]["dsb"] == 0.0
    assert result["candidates"]["tuned"]["loss"] == 0.2  # the best epoch's, not the last one's
    assert set(result["candidates"]["tuned"]["dsb_per_modality"]) == {"brightfield", "fluorescence"}
    tags = mlflow.MlflowClient().get_model_version(NAME, str(versions["tuned"])).tags
    assert tags["candidate"] == "tuned" and tags["dsb"] == "1.0" and tags["dsb_fluorescence"] == "1.0"
    assert {"data_md5", "git_commit", "pixel_iou", "pixel_dice", "decision"} <= set(tags)
    assert tags["runtime"] in ("onnx-int8", "onnx", "keras") and float(tags["runtime.onnx_seconds_per_megapixel"]) > 0
    assert tags["runtime.int8"] == "kept" and float(tags["runtime.int8_dsb"]) >= float(tags["runtime.float_dsb"]) - 0.005
    assert float(tags["runtime.onnx_int8_seconds_per_megapixel"]) > 0
    quality = result["candidates"]["tuned"]["quality"]  # the champion's levels, measured on test
    assert set(quality) == {"fast", "default", "best"} and "quality" not in result["candidates"]["untuned"]
    assert quality["default"]["dsb"] == result["candidates"]["tuned"]["dsb"]  # default is the recipe it was scored with
    assert all(tags[f"quality.{level}.dsb"] == str(quality[level]["dsb"]) and
               float(tags[f"quality.{level}.megapixels_per_second"]) > 0 for level in quality)
    assert "test split" in tags["quality.measured_on"]
    record = json.loads((tmp_path / "packages" / "tuned.json").read_text())
    trained_run = mlflow.MlflowClient().get_run(record["run_id"])  # the thresholds `package` chose travel with it
    assert trained_run.data.tags["recipe.fg_threshold"] == str(record["recipe"]["fg_threshold"])
    assert trained_run.data.metrics["val_dsb"] == pytest.approx(record["val_dsb"], abs=5e-5)
    assert trained_run.data.metrics["val_dsb"] >= trained_run.data.metrics["val_dsb_params_thresholds"]
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(record["run_id"], "evaluation")} \
        >= {"evaluation/thresholds.csv"}

    assert json.loads((tmp_path / "reports" / "promotion.json").read_text()) == result
    report = (tmp_path / "reports" / "promotion.md").read_text()
    assert "| tuned |" in report and "| untuned |" in report and result["reason"] in report
    assert "**Quality levels**" in report and "| tuned | fast |" in report
    promote_runs = mlflow.search_runs(filter_string="tags.stage = 'promote'", output_format="list")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(promote_runs[0].info.run_id, "promotion")}
    assert artifacts == {"promotion/promotion.json", "promotion/promotion.md"}

    again = promote(untuned=world.bad, tuned=world.good)
    assert _versions() == versions and len(mlflow.MlflowClient().search_model_versions(f"name='{NAME}'")) == 2
    assert _aliases() == {"champion": versions["tuned"], "challenger": versions["untuned"]}
    assert again["champion_version"] == result["champion_version"]


def test_an_int8_network_keeps_the_float_networks_labels(world, params, tmp_path):
    from nucseg.core import metrics, runtime
    from nucseg.core.data import load_split
    from nucseg.core.segment import segment_prepared

    network, recipe = _unet(True), Recipe.from_params(params)
    runtime.export_onnx(network, tmp_path / "float.onnx")
    images = [s["image"] for s in load_split(world.split, world.samples, ("train",))["train"]]
    runtime.quantize_onnx(tmp_path / "float.onnx", tmp_path / "int8.onnx", runtime.calibration_crops(images, 32, 16))
    on_float, on_int8 = runtime.OnnxNetwork(tmp_path / "float.onnx"), runtime.OnnxNetwork(tmp_path / "int8.onnx")
    for sample in load_split(world.split, world.samples, ("test",))["test"]:
        labels = [segment_prepared(net, sample["image"], recipe, *sample["labels"].shape)[0] for net in (on_float, on_int8)]
        assert labels[0].max() == 3
        assert metrics.dsb_scores_per_threshold(labels[0], labels[1]).mean() >= 0.95


def test_a_refused_candidate_is_challenger_and_the_version_tags_say_so(world, promote, params):
    # A max_loss of -2 asks every group to gain 2 DSB, which no model can: the better model is refused.
    params["promote"]["max_loss"] = -2.0
    result = promote(untuned=world.bad, tuned=world.good)
    versions = _versions()
    assert _aliases() == {"champion": versions["untuned"], "challenger": versions["tuned"]}
    assert "tuned is refused" in result["reason"]
    client = mlflow.MlflowClient()
    assert client.get_model_version(NAME, str(versions["untuned"])).tags["gate"] == "reference"
    assert client.get_model_version(NAME, str(versions["tuned"])).tags["gate"].startswith("refused: trails untuned on")


def test_worse_tuned_model_is_challenger(world, promote):
    result = promote(untuned=world.good, tuned=world.bad)
    versions = _versions()
    assert _aliases() == {"champion": versions["untuned"], "challenger": versions["tuned"]}
    assert result["champion"] == "untuned" and "untuned has the better test DSB" in result["reason"]


@pytest.mark.slow
def test_an_earlier_champion_keeps_its_alias_within_the_margin(world, promote):
    promote(untuned=world.good_twin, tuned=world.bad)
    earlier = _aliases()["champion"]

    result = promote(untuned=world.bad, tuned=world.good)  # ties the earlier champion: no gain beyond margin
    assert _aliases() == {"champion": earlier, "challenger": result["candidates"]["tuned"]["version"]}
    assert result["previous_champion"] == {"label": f"version {earlier}", "version": earlier, "dsb": 1.0}
    assert "stays champion" in result["reason"]


def test_failed_promotion_leaves_the_champion_where_it_was(world, promote, params, tmp_path):
    promote(untuned=world.bad, tuned=world.good)
    before = _aliases()
    count = len(mlflow.MlflowClient().search_model_versions(f"name='{NAME}'"))
    missing_uri = "models:/m-0000000000000000000000000000dead"
    trained, packages = {"untuned": tmp_path / "untuned", "tuned": tmp_path / "tuned"}, tmp_path / "packages"

    record = json.loads((packages / "tuned.json").read_text())
    io.write_json(packages / "tuned.json", {**record, "model_uri": missing_uri})  # a package the store lacks
    with pytest.raises(registry.PromotionError, match=missing_uri):
        promote_stage.run(params, candidates=list(trained), packages_dir=packages, evaluated={}, split_path=world.split,
                          samples_dir=world.samples, metrics_path=tmp_path / "reports" / "promotion.json",
                          report_path=tmp_path / "reports" / "promotion.md")
    assert _aliases() == before
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{NAME}'")) == count

    with pytest.raises(PackagingError, match="0" * 32):
        promote(untuned=world.good_twin, tuned={**world.good, "run_id": "0" * 32})

    io.write_json(packages / "tuned.json", {key: value for key, value in record.items() if key != "recipe"})
    with pytest.raises(PackagingError, match=re.escape(str(packages / "tuned.json")) + ".*recipe"):
        promote_stage.run(params, candidates=list(trained), packages_dir=packages)
    (packages / "tuned.json").unlink()
    with pytest.raises(PackagingError, match=re.escape(str(packages / "tuned.json"))):
        promote_stage.run({}, candidates=list(trained), packages_dir=packages)
    assert _aliases() == before
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{NAME}'")) == count


@pytest.mark.slow
def test_a_package_evaluate_scored_is_not_scored_again(world, promote, params, tmp_path):
    shifts = params["evaluate"]["shifts"]
    scored = promote(untuned=world.good, tuned=world.bad)
    assert scored["candidates"]["untuned"]["dsb"] == 1.0
    package = json.loads((tmp_path / "packages" / "untuned.json").read_text())["model_uri"]
    means = {"dsb": 0.4321, "pixel_iou": 0.5, "pixel_dice": 0.6}
    summary = {"overall": {**means, "images": 4},
               "per_modality": {m: {**means, "images": 2} for m in ("brightfield", "fluorescence")},
               "shifted": {shift: {"dsb": 0.4321} for shift in shifts}}
    evaluation = tmp_path / "eval_metrics.json"

    io.write_json(evaluation, {"test": summary, "model_uri": package})
    assert promote(untuned=world.good, tuned=world.bad,
                   evaluated={"untuned": evaluation})["candidates"]["untuned"]["dsb"] == 0.4321  # reused

    io.write_json(evaluation, {"test": summary, "model_uri": "models:/m-another-package"})
    assert promote(untuned=world.good, tuned=world.bad,
                   evaluated={"untuned": evaluation})["candidates"]["untuned"]["dsb"] == 1.0  # scored again
    other_shifts = {**summary, "shifted": {"x3": {"dsb": 0.4321}}}
    io.write_json(evaluation, {"test": other_shifts, "model_uri": package})
    assert promote(untuned=world.good, tuned=world.bad,
                   evaluated={"untuned": evaluation})["candidates"]["untuned"]["dsb"] == 1.0


def test_a_network_is_packaged_once_and_its_int8_check_built_only_then(world, params):
    trained = _log(_unet(True), [0.3])  # a run nothing has packaged yet
    recipe, built = Recipe.from_params(params), []

    def int8_offer():
        built.append(trained["run_id"])
        loaded = load_split(world.split, world.samples, ("train", "val"), labelled=("val",))
        return int8_check([s["image"] for s in loaded["train"]], loaded["val"], recipe, "twin", 4, 32)

    client = mlflow.MlflowClient()
    first = package(client, trained["run_id"], trained["network"], recipe, int8_offer)
    again = package(client, trained["run_id"], trained["network"], recipe, int8_offer)
    assert first == again and built == [trained["run_id"]]
    assert package(client, trained["run_id"], trained["network"], recipe) != first  # float only: another package
