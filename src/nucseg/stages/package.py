"""Stage `package`, once per trained network (`models/untuned`, `models/tuned`): the network
becomes the segmenter users get. Its post-processing thresholds are chosen here, on `val`
(`calibration.chosen_recipe`, over the network's kept maps), so a `postprocess` change repackages
and trains nothing; then it is logged once into its training run (`mlops.packaging`): network
and recipe, ONNX, and int8 where it keeps its `val` DSB (`package.int8_calibration_crops`).
`models/packages/<name>.json` names the package and its recipe; `evaluate`, `promote` and the
registry use it, never the bare network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nucseg import io
from nucseg.config import get_logger
from nucseg.core import maps_cache
from nucseg.core.calibration import chosen_recipe
from nucseg.core.data import load_split
from nucseg.core.runtime import load_keras
from nucseg.mlops import tracking
from nucseg.mlops.networks import PACKAGES_DIR, TRAINED_NETWORKS, package_record, thresholds_table
from nucseg.mlops.packaging import PackagingError, int8_check, package, read_run_info

log = get_logger("nucseg.package")


def run(params: dict[str, Any], name: str, model_dir: str | Path | None = None,
        split_path: str | Path = "artifacts/split.csv", samples_dir: str | Path = "artifacts/prepared",
        output_dir: str | Path = PACKAGES_DIR) -> dict[str, Any]:
    """Package the network `name` (its DVC output unless `model_dir` says where); returns what
    `models/packages/<name>.json` holds."""
    import mlflow

    if model_dir is None and name not in TRAINED_NETWORKS:
        raise PackagingError(f"no trained network called {name!r}: expected one of {', '.join(TRAINED_NETWORKS)}")
    model_dir = Path(model_dir or TRAINED_NETWORKS[name].directory)
    cfg = params["package"]
    crops, crop_size = int(cfg["int8_calibration_crops"]), int(cfg["int8_crop_size"])
    tracking.setup()
    run_id, _ = read_run_info(model_dir / "run.json")
    try:
        network = maps_cache.cached(load_keras(model_dir / "model.keras"))
    except (OSError, ValueError) as err:
        raise PackagingError(f"{model_dir / 'model.keras'}: cannot load the trained network ({err}); "
                             "run the stage that trains it first") from err
    loaded = load_split(split_path, samples_dir, ("train", "val"), labelled=("val",), desc=f"package {name}: loading")
    recipe, thresholds, chosen = chosen_recipe(network, params, loaded["train"], loaded["val"],
                                               desc=f"package {name}: thresholds on val")
    log.info("package %s: thresholds chosen on val: %s (val DSB %.4f, %.4f with the params' thresholds); %s", name,
             {key: getattr(recipe, key) for key in params["postprocess"].get("search") or {}}, chosen["val_dsb"],
             chosen["val_dsb_params_thresholds"], network.summary())

    def int8_offer():
        return int8_check([sample["image"] for sample in loaded["train"]], loaded["val"], recipe, name,
                          crops, crop_size)

    uri = package(mlflow.MlflowClient(), run_id, model_dir / "model.keras", recipe, int8_offer if crops > 0 else None,
                  choice=(thresholds, chosen))
    packaged = {"run_id": run_id, "model_uri": uri, **{key: round(value, 4) for key, value in chosen.items()},
                "recipe": recipe.to_dict()}
    io.write_csv(thresholds_table(name, output_dir), thresholds.round(5))
    io.write_json(package_record(name, output_dir), packaged)
    log.info("packaged %s: %s", name, {key: packaged[key] for key in ("model_uri", "val_dsb")})
    return packaged
