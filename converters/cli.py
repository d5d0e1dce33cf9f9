"""`converter`: bake a trained model bundle into an edge bundle for the agent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from converters.bake import BakeError, BakeOptions, bake
from edge_agent.console import run_cli, setup_logging
from trainer.bundle import BundleError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """Bake model bundles for the edge."""


@app.command("bake")
def bake_command(
    bundle: Annotated[Path, typer.Argument(help="model bundle written by `trainer fit`")],
    out: Annotated[Path, typer.Option(help="edge bundle folder to write")],
    target: Annotated[str, typer.Option(help="openvino")] = "openvino",
    precision: Annotated[str, typer.Option(help="fp32")] = "fp32",
    calib: Annotated[Path | None, typer.Option(help="images of good parts for the parity check")] = None,
) -> None:
    """Export the whole pipeline as one graph, check it against torch, and write the edge bundle.

    Example: converter bake models/press2 --target openvino --out edge/press2
    """
    setup_logging()
    manifest = bake(BakeOptions(bundle, out, target, precision, calib))
    p = manifest.parity
    typer.echo(
        f"wrote {out}: {manifest.version} {manifest.target} {manifest.precision}; parity on {p.images} images: "
        f"max score diff {p.score_rel_diff_max:.2e} relative, spearman {p.spearman:.5f}, "
        f"verdicts agree {p.verdict_agreement:.1%}"
    )


def main() -> None:
    run_cli(app, (BakeError, BundleError, OSError))


if __name__ == "__main__":
    main()
