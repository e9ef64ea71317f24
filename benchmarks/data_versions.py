"""Data v1 versus data v2: the default model trained on each, both scored on the same v2 `test` split.

Run from the project root after `dvc repro` (which trains on v2 and logs its `test` DSB):

    python benchmarks/data_versions.py

It materialises data v1 (the `data.dvc` of the commit before `Data v2: …`) from the project's DVC
remote into `.v1/`, prepares v1's labels for the images of v2's `train` and `val` splits (the six
images v2 removed are left out: they have no group in v2's split), trains the default model on
them with the same code and params, and scores both models on v2's `test` labels. The v1 run goes
into the same MLflow experiment, tagged `data_version=dsb2018-<v1 md5>`, with `test_*` metrics and
the v2 `test` dataset as an input, beside the pipeline's own `untuned` run. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
V1_ROOT = ROOT / ".v1"


def sh(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(args)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def v1_pointer() -> str:
    """data.dvc as it was before the commit that made data v2 the project's data."""
    commits = sh("git", "log", "--format=%H", "--", "data.dvc", cwd=ROOT).split()
    for newer, older in zip(commits, commits[1:]):
        if sh("git", "log", "-1", "--format=%s", newer, cwd=ROOT).startswith("Data v2"):
            return sh("git", "show", f"{older}:data.dvc", cwd=ROOT)
    sys.exit("no `Data v2: …` commit touching data.dvc in git history")


def materialise_v1() -> None:
    """A DVC project of its own under .v1/ holding data v1, fetched from this project's remote."""
    if (V1_ROOT / "data" / "stage1_train").is_dir():
        return
    V1_ROOT.mkdir(exist_ok=True)
    remote = sh("dvc", "remote", "list", cwd=ROOT).split()
    url = (ROOT / ".dvc" / remote[1]).resolve() if not remote[1].startswith(("s3:", "gs:", "http")) else remote[1]
    sh("dvc", "init", "--no-scm", "-q", "-f", cwd=V1_ROOT)
    sh("dvc", "remote", "add", "-d", "-f", "origin", str(url), cwd=V1_ROOT)
    (V1_ROOT / "data.dvc").write_text(v1_pointer())
    sh("dvc", "pull", "-q", "data.dvc", cwd=V1_ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    materialise_v1()
    # Lineage (data.dvc md5, dataset names) comes from NUCSEG_ROOT: .v1 for the v1 run. The runs go
    # into the project's own store.
    os.environ["NUCSEG_ROOT"] = str(V1_ROOT)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")

    import mlflow
    import pandas as pd
    from tqdm import tqdm

    from nucseg import config, io
    from nucseg.mlops import datasets, tracking
    from nucseg.stages import prepare, train
    from nucseg.core.data import load_split
    from nucseg.core.evaluation import evaluate_model, summarize

    from nucseg.core.segment import Recipe

    import keras

    params = config.load_params(ROOT / "params.yaml")
    split = pd.read_csv(ROOT / "artifacts" / "split.csv")
    v1_split = split[split["split"].isin(["train", "val"])]
    v1_prepared = V1_ROOT / "artifacts" / "prepared"
    for image_id in tqdm(v1_split["id"], desc="data v1: preparing labels for v2's train and val", unit="image"):
        if not (v1_prepared / f"{image_id}.npz").exists():
            sample_dir = V1_ROOT / "data" / "stage1_train" / image_id
            io.write_npz(v1_prepared / f"{image_id}.npz",
                         **prepare.prepare_sample(sample_dir / "images" / f"{image_id}.png", sample_dir / "masks",
                                                  params["prepare"]))
    io.write_csv(V1_ROOT / "artifacts" / "split.csv", v1_split)

    v1_model_dir = V1_ROOT / "models" / "untuned"
    if not (v1_model_dir / "run.json").exists():
        train.run(params, split_path=V1_ROOT / "artifacts" / "split.csv", samples_dir=v1_prepared,
                  model_dir=v1_model_dir, metrics_path=V1_ROOT / "reports" / "train_metrics.json",
                  history_path=V1_ROOT / "reports" / "train_history.csv")

    test = load_split(ROOT / "artifacts" / "split.csv", ROOT / "artifacts" / "prepared", ("test",))["test"]
    v2_md5 = tracking.data_md5(ROOT / "data.dvc")
    tracking.setup()
    rows = []
    for label, model_dir in (("v1", v1_model_dir), ("v2", ROOT / "models" / "untuned")):
        model = keras.saving.load_model(model_dir / "model.keras", compile=False)
        summary = summarize(evaluate_model(model, test, Recipe.from_params(params), desc=f"data {label} model on v2 test")[0])
        run_id = json.loads((model_dir / "run.json").read_text())["run_id"]
        if label == "v1":
            with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
                mlflow.set_tags({"mlflow.runName": "untuned (data v1)", "compare": "data_versions"})
                mlflow.log_input(datasets.split_dataset(split, "test", params["prepare"], v2_md5,
                                                        datasets.default_remote(ROOT)), context="test")
                mlflow.log_metrics({f"test_{k}": v for k, v in summary["overall"].items() if k != "images"}
                                   | {f"test_dsb_{m}": v["dsb"] for m, v in summary["per_modality"].items()})
        rows.append({"trained on": f"data {label} ({mlflow.get_run(run_id).data.tags.get('data_version')})",
                     "run": run_id, "test DSB": summary["overall"]["dsb"],
                     **{f"DSB {m}": v["dsb"] for m, v in summary["per_modality"].items()},
                     "pixel IoU": summary["overall"]["pixel_iou"]})
    print(f"\nBoth scored on the v2 `test` split ({len(test)} images, v2 labels):")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
