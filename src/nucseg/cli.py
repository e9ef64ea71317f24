"""nucseg: nucleus instance segmentation on DSB2018, one sub-command per pipeline stage."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

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


def _fail_if_refused(err: Exception) -> None:
    """A request the tracking server refused (401/403) becomes one line naming server, user and
    the missing permission; any other error goes on."""
    from nucseg.mlops.access import refusal_message

    message = refusal_message(err)
    if message:
        _fail(message)


def _fail_if_missing_from_store(err: Exception) -> None:
    """A run or model an earlier stage logged but the tracking store lacks (DVC does not see the
    store: a fresh or another mlflow.db leaves `dvc status` clean) becomes one line saying how to
    rebuild it; any other error goes on."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException) and err.error_code == "RESOURCE_DOES_NOT_EXIST":
        what = (err.message or str(err)).splitlines()[0].rstrip(".")
        _fail(f"{what} in the MLflow tracking store {config.tracking_uri()}, which is not the store the earlier "
              "stages logged to. Point MLFLOW_TRACKING_URI at that store, or rebuild what this stage reads: "
              "`dvc repro -s -f train tune` (then `dvc repro` runs the rest).")


@contextmanager
def _one_line_errors(*expected: type[Exception]) -> Iterator[None]:
    """`expected` failures, refusals by the tracking server and runs or models missing from it
    become one red line and exit status 1; anything else keeps its traceback."""
    try:
        yield
    except expected as err:
        _fail_if_refused(err)
        _fail(str(err))
    except Exception as err:
        _fail_if_refused(err)
        _fail_if_missing_from_store(err)
        raise


def _training_backend(params: Path) -> None:
    """A training stage's Keras backend (`train.backend`), set before the stage's module loads Keras."""
    with _one_line_errors(OSError, ValueError, RuntimeError):
        config.use_training_backend(config.load_params(params))


def _run_stage(label: str, stage_run, params: Path, *expected: type[Exception]) -> None:
    """Run a stage on the params file; known failures become one red line and exit status 1."""
    from nucseg import io
    from nucseg.mlops import tracking

    with _one_line_errors(OSError, io.ImageError, tracking.TrackingUnavailable, *expected):  # OSError: a full disk too
        result = stage_run(config.load_params(params))
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
    _training_backend(params)
    from nucseg.stages import train as stage

    _run_stage("trained", stage.run, params)


@app.command()
def package(name: str = typer.Argument(..., help="the trained network: untuned or tuned"),
            params: Path = PARAMS) -> None:
    """Package a trained network as the segmenter users get (ONNX, int8 where it keeps its accuracy)."""
    from nucseg.mlops.packaging import PackagingError
    from nucseg.stages import package as stage

    _run_stage(f"package {name}", lambda loaded: stage.run(loaded, name), params, PackagingError)


@app.command()
def evaluate(params: Path = PARAMS) -> None:
    """DSB metric, pixel IoU and Dice of the untuned model's package on the val and test splits."""
    from nucseg.mlops.packaging import PackagingError
    from nucseg.stages import evaluate as stage

    _run_stage("evaluation", stage.run, params, PackagingError)


@app.command("unseen-fold")
def unseen_fold(name: str = typer.Argument(..., help="the fold: a key of unseen.folds"), params: Path = PARAMS) -> None:
    """Leave-type-out: train the untuned recipe without the image types of one fold."""
    _training_backend(params)
    from nucseg.stages import unseen_fold as stage

    _run_stage(f"unseen fold {name}", lambda loaded: stage.run(loaded, name), params, ValueError)


@app.command()
def unseen(params: Path = PARAMS) -> None:
    """Leave-type-out: DSB of the training recipe on image types held out of its training."""
    from nucseg.stages import unseen as stage

    _run_stage("unseen image types", stage.run, params, ValueError)


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

    _training_backend(params)
    from nucseg.mlops.distributed_search import ROLES
    from nucseg.mlops.keras_tuner_compat import IncompatibleKerasTuner
    from nucseg.stages import tune as stage

    if role is not None and role not in ROLES:
        _fail(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    _run_stage("tuned" if role != "worker" else "worker", partial(stage.run, role=role, oracle=oracle), params,
               ValueError, TimeoutError, IncompatibleKerasTuner)


@app.command()
def promote(params: Path = PARAMS) -> None:
    """Register untuned and tuned models; alias `champion` to the better by test DSB, `challenger` to the other."""
    from nucseg.mlops.packaging import PackagingError
    from nucseg.mlops.registry import PromotionError
    from nucseg.stages import promote as stage

    _run_stage("promotion", stage.run, params, PromotionError, PackagingError)


DIAMETER = typer.Option(None, "--diameter", min=0.5, help="the nuclei's typical width in pixels, when you know it "
                        "[default: estimated for each image]; images are rescaled so their nuclei reach the size the "
                        "model was trained at")
QUALITY = typer.Option("default", "--quality", help="fast (one view of each image: about twice as fast), default "
                       "(the model's own test-time views) or best (eight views); the registry version's quality.* "
                       "tags give each level's measured DSB and speed")


@app.command("check-store")
def check_store(params: Path = PARAMS) -> None:
    """Check that the MLflow store holds the runs, models and versions the pipeline's outputs name."""
    from nucseg.stages import store_check as stage

    _run_stage("MLflow store", stage.run, params, stage.StoreIncomplete)


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
    workers: int = typer.Option(0, "--workers", min=0, help="local engine: processes scoring images side by side "
                                "(0: one per core; 1: this process, least memory)"),
    diameter: Optional[float] = DIAMETER,
    quality: str = QUALITY,
    params: Path = PARAMS,
) -> None:
    """Segment every image of a folder with the registry's champion (or --model-uri), with the
    settings registered with that model."""
    from nucseg.mlops import tracking
    from nucseg.mlops import model_uris
    from nucseg.stages import score as stage

    loaded = _scoring_params(params)
    if model_uri and promotion:
        _fail("give --model-uri or --promotion, not both")
    with _one_line_errors(tracking.TrackingUnavailable, model_uris.ModelUnavailable, OSError, ValueError):
        uri = model_uris.promoted_model_uri(promotion) if promotion else \
            model_uri or loaded.get("score", {}).get("model_uri", model_uris.CHAMPION_URI)
        result = stage.run(uri, input_dir, output_dir, loaded, geojson=geojson, engine=engine, master=master,
                           diameter=diameter, quality=quality, workers=workers)
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
    diameter: Optional[float] = DIAMETER,
    quality: str = QUALITY,
    params: Path = PARAMS,
) -> None:
    """Segment one image: print its nucleus count, write its label and overlay files."""
    from nucseg import io
    from nucseg.mlops import tracking
    from nucseg.mlops import model_uris
    from nucseg.stages import score as stage

    loaded = _scoring_params(params)
    with _one_line_errors(io.ImageError, tracking.TrackingUnavailable, model_uris.ModelUnavailable, OSError,
                          ValueError):
        count = stage.predict_one(model_uri or loaded.get("score", {}).get("model_uri", model_uris.CHAMPION_URI), image,
                                  output_dir, diameter, quality)
    typer.echo(f"{image}: {count} nuclei")


team = typer.Typer(no_args_is_help=True, help="Users of the team's tracking server (run as its admin: "
                   "MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME=admin, MLFLOW_TRACKING_PASSWORD).")
app.add_typer(team, name="team")
ROLE_HELP = "reader (views runs and models) | member (also logs runs, registers versions) | promoter (also moves champion)"
PASSWORD_FILE = typer.Option(None, "--password-file", help="read the password from this file (readable by its "
                             "owner only) instead of asking for it")


def _team():
    from nucseg.mlops.access import Team

    uri = config.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        _fail(f"MLFLOW_TRACKING_URI must name the team's tracking server (http://host:port), not {uri}")
    return Team(uri)


def _password(password_file: Optional[Path]) -> str:
    if password_file is None:
        return typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        if password_file.stat().st_mode & 0o077:
            _fail(f"{password_file} may be read by others than its owner: chmod 600 it")
        password = password_file.read_text().strip()
    except OSError as err:
        _fail(f"{password_file}: {err.strerror}")
    if not password:
        _fail(f"{password_file} is empty")
    return password


def _as_admin(what: str, call) -> None:
    from mlflow.exceptions import MlflowException

    with _one_line_errors(ValueError, MlflowException):
        call()
    typer.echo(what)


@team.command("add")
def team_add(username: str, role: str = typer.Option(..., "--role", help=ROLE_HELP),
             password_file: Optional[Path] = PASSWORD_FILE) -> None:
    """Create a user with a role."""
    server = _team()
    _as_admin(f"added {username} as {role} on {server.uri}", lambda: server.add(username, _password(password_file), role))


@team.command("role")
def team_role(username: str, role: str = typer.Argument(..., help=ROLE_HELP)) -> None:
    """Give an existing user another role."""
    server = _team()
    _as_admin(f"{username} is now {role} on {server.uri}", lambda: server.set_role(username, role))


@team.command("password")
def team_password(username: str, password_file: Optional[Path] = PASSWORD_FILE) -> None:
    """Change a user's password (the admin's own too)."""
    server = _team()
    _as_admin(f"changed the password of {username} on {server.uri}",
              lambda: server.set_password(username, _password(password_file)))


if __name__ == "__main__":  # pragma: no cover
    app()
