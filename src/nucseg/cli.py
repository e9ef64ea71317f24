"""nucseg: nucleus instance segmentation on DSB2018, one sub-command per pipeline stage."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nucseg import config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
PARAMS = typer.Option(Path(config.PARAMS_FILE), "--params", "-p", help="parameters file")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _scoring_params(path: Path) -> dict:
    """params.yaml here or at the project root (scoring from a folder below it); none outside a
    project: scoring needs only the modality model's path, and does without it."""
    for candidate in (path, config.ROOT / path):
        if candidate.is_file():
            return config.load_params(candidate)
    return {}


def _run_stage(label: str, stage_run, params: Path, *expected: type[Exception]) -> None:
    """Run a stage on the params file; known failures become one red line and exit status 1."""
    from nucseg import io
    from nucseg.mlops import tracking

    try:
        result = stage_run(config.load_params(params))
    except (OSError, io.ImageError, tracking.TrackingUnavailable, *expected) as err:  # OSError: a full disk too
        _fail(str(err))
    typer.echo(f"{label}: {result}")


@app.command()
def validate(params: Path = PARAMS) -> None:
    """Build the data manifest and check it with the Great Expectations suite."""
    from nucseg.stages import validate as stage

    _run_stage("data summary", stage.run, params, stage.ValidationFailed)


@app.command()
def modality(params: Path = PARAMS) -> None:
    """Cluster images into fluorescence / brightfield / histology with k-means."""
    from nucseg.stages import modality as stage

    _run_stage("modality counts", stage.run, params)


@app.command()
def split(params: Path = PARAMS) -> None:
    """Group tiles of one picture; split pictures into train / val / test, stratified by modality."""
    from nucseg.stages import split as stage

    _run_stage("split", stage.run, params, ValueError)


@app.command()
def prepare(params: Path = PARAMS) -> None:
    """Instance labels, training targets and normalised images."""
    from nucseg.stages import prepare as stage

    _run_stage("prepared", stage.run, params)


@app.command()
def train(params: Path = PARAMS) -> None:
    """Train the untuned U-Net (resumes an interrupted run) and log it to MLflow."""
    from nucseg.core.training import ResumeRefused
    from nucseg.stages import train as stage

    _run_stage("trained", stage.run, params, ResumeRefused)


@app.command()
def evaluate(params: Path = PARAMS) -> None:
    """DSB metric, pixel IoU and Dice of the untuned model on the val and test splits."""
    from nucseg.stages import evaluate as stage

    _run_stage("evaluation", stage.run, params)


@app.command()
def tune(
    params: Path = PARAMS,
    role: Optional[str] = typer.Option(None, "--role", help="chief | worker: one process of a distributed search"),
    oracle: str = typer.Option("127.0.0.1:8000", "--oracle",
                               help="host:port of the chief's oracle (the chief binds it; 0.0.0.0:PORT for every interface)"),
) -> None:
    """Keras Tuner search (each trial a nested MLflow run); the best configuration becomes the tuned model.

    Distributed: `--role chief` on one machine, `--role worker --oracle CHIEF:PORT` on each other one,
    all with the same MLFLOW_TRACKING_URI and params."""
    from functools import partial

    from nucseg.stages import tune as stage

    if role is not None and role not in stage.ROLES:
        _fail(f"--role must be one of {', '.join(stage.ROLES)}, got {role!r}")
    _run_stage("tuned" if role != "worker" else "worker", partial(stage.run, role=role, oracle=oracle), params,
               ValueError, TimeoutError)


@app.command()
def promote(params: Path = PARAMS) -> None:
    """Register untuned and tuned models; alias `champion` to the better by test DSB, `challenger` to the other."""
    from nucseg.mlops.registry import PromotionError
    from nucseg.stages import promote as stage

    _run_stage("promotion", stage.run, params, PromotionError)


@app.command()
def score(
    input_dir: Path = typer.Option(..., "--input", help="DSB-layout folder (<id>/images/<id>.png) or flat folder of images"),
    output_dir: Path = typer.Option(..., "--output", help="where labels/, overlays/, submission.csv, counts.csv go"),
    model_uri: Optional[str] = typer.Option(None, "--model-uri", help="MLflow model URI [default: params score.model_uri]"),
    promotion: Optional[Path] = typer.Option(None, "--promotion", help="score the champion this promotion report "
                                             "names (reports/promotion.json; what a DVC experiment would serve)"),
    geojson: bool = typer.Option(False, "--geojson", help="also write QuPath-readable outlines/<id>.geojson"),
    engine: str = typer.Option("local", "--engine", help="local (this process) or spark"),
    master: str = typer.Option("local[2]", "--master", help="Spark master URL for --engine spark"),
    params: Path = PARAMS,
) -> None:
    """Segment every image of a folder with the registry's champion (or --model-uri), with the
    settings registered with that model."""
    from nucseg.mlops import tracking
    from nucseg.stages import score as stage

    loaded = _scoring_params(params)
    if model_uri and promotion:
        _fail("give --model-uri or --promotion, not both")
    try:
        uri = stage.promoted_model_uri(promotion) if promotion else \
            model_uri or loaded.get("score", {}).get("model_uri", stage.CHAMPION_URI)
        result = stage.run(uri, input_dir, output_dir, loaded, geojson=geojson, engine=engine, master=master)
    except (tracking.TrackingUnavailable, stage.ModelUnavailable, OSError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"scored {len(result.scored)} image(s) into {output_dir}")
    if result.failed:
        for path, problem in result.failed:
            typer.secho(f"not scored: {path}: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)


@app.command()
def predict(
    image: Path = typer.Argument(..., help="one image file (png, tif, jpg; grey, RGB, RGBA; 8- or 16-bit)"),
    output_dir: Path = typer.Option(Path("outputs/predict"), "--output", help="where the label and overlay PNGs go"),
    model_uri: Optional[str] = typer.Option(None, "--model-uri", help="MLflow model URI [default: params score.model_uri]"),
    params: Path = PARAMS,
) -> None:
    """Segment one image: print its nucleus count, write its label and overlay files."""
    from nucseg import io
    from nucseg.mlops import tracking
    from nucseg.stages import score as stage

    loaded = _scoring_params(params)
    try:
        count = stage.predict_one(model_uri or loaded.get("score", {}).get("model_uri", stage.CHAMPION_URI), image,
                                  output_dir)
    except (io.ImageError, tracking.TrackingUnavailable, stage.ModelUnavailable, OSError) as err:
        _fail(str(err))
    typer.echo(f"{image}: {count} nuclei")


if __name__ == "__main__":  # pragma: no cover
    app()
