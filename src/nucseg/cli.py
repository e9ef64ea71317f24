"""`nucseg` command line: one sub-command per pipeline step; it parses and calls, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from nucseg import config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
PARAMS = typer.Option(Path(config.PARAMS_FILE), "--params", "-p", help="parameters file")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@app.command()
def validate(params: Path = PARAMS) -> None:
    """Build the data manifest and check it with the Great Expectations suite."""
    from nucseg import validate as stage

    try:
        summary = stage.run(config.load_params(params))
    except (stage.ValidationFailed, FileNotFoundError) as err:
        _fail(str(err))
    typer.echo(f"data summary: {summary}")


@app.command()
def modality(params: Path = PARAMS) -> None:
    """Cluster images into fluorescence / brightfield / histology with k-means."""
    from nucseg import modality as stage

    typer.echo(f"modality counts: {stage.run(config.load_params(params))}")


@app.command()
def prepare(params: Path = PARAMS) -> None:
    """Instance labels, training targets, normalised images and the train/validation split."""
    from nucseg import prepare as stage

    typer.echo(f"prepared: {stage.run(config.load_params(params))}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
