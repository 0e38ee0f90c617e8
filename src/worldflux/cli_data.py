"""``worldflux data ...``: offline datasets (import a Minari dataset for ``dataset=<folder>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from worldflux.core.exceptions import WorldFluxError

data_app = typer.Typer(help="Offline datasets: import them for training with dataset=<folder>.")


@data_app.command("import-minari")
def import_minari_cmd(
    dataset: Annotated[str, typer.Argument(help="a local Minari dataset id, or its folder")],
    out: Annotated[Path, typer.Argument(help="a new or empty folder to write")],
    download: Annotated[bool, typer.Option(help="fetch a remote dataset id first")] = False,
) -> None:
    """Convert a Minari dataset into a folder that `worldflux train MODEL dataset=OUT` reads."""
    from worldflux.data.minari import import_minari

    try:
        path = import_minari(dataset, out, download=download)
    except WorldFluxError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    info = (path / "minari.json").read_text()
    typer.echo(f"wrote {path}: {info}")
    typer.echo(f"train: worldflux train tdmpc2:5m dataset={path} eval_every=0")
