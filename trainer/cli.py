"""`trainer`: fit models on images of good parts, and make sample data."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edge_agent.console import run_cli, setup_logging
from trainer.bundle import BundleError
from trainer.data.dataset import DataError
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.evaluate import evaluate
from trainer.fit import HOLDOUT_MAX, HOLDOUT_MIN, FitOptions, RecipeError, fit
from trainer.models.training import TrainingError
from trainer.report import summary_table, write_report


class ThresholdMethod(str, Enum):
    quantile = "quantile"
    f1 = "f1"


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.command("fit")
def fit_command(
    data: Annotated[Path, typer.Option(help="MVTec AD category folder, or a folder layout with good/")],
    out: Annotated[Path, typer.Option(help="where to write the model bundle")],
    model: Annotated[str, typer.Option(help="model from the registry")] = "patchcore",
    config: Annotated[Path | None, typer.Option(help="training recipe YAML (keys of the model's recipe)")] = None,
    category: Annotated[str | None, typer.Option(help="category, when --data holds several")] = None,
    holdout: Annotated[
        float,
        typer.Option(
            min=HOLDOUT_MIN,
            max=HOLDOUT_MAX,
            help="share of good images scored out-of-sample to calibrate the threshold",
        ),
    ] = 0.2,
    threshold_quantile: Annotated[float, typer.Option(min=0.5, max=1.0, help="quantile of held-out scores")] = 0.99,
    threshold: Annotated[
        ThresholdMethod, typer.Option(help="quantile of held-out goods, or F1-optimal on labelled test images")
    ] = ThresholdMethod.quantile,
    seed: Annotated[int, typer.Option(help="seed of the hold-out split")] = 0,
    device: Annotated[str, typer.Option(help="where trained models (simplenet, fastflow) train: cpu or cuda")] = "cpu",
) -> None:
    """Learn from good images and write a model bundle.

    Example: trainer fit --data datasets/press2 --model patchcore --out models/press2
    """
    setup_logging()
    options = FitOptions(
        data=data,
        model=model,
        out=out,
        recipe=config,
        category=category,
        holdout=holdout,
        threshold_quantile=threshold_quantile,
        threshold=threshold.value,
        seed=seed,
        device=device,
    )
    manifest = fit(options)
    typer.echo(f"wrote {out}: {manifest.model}, threshold {manifest.threshold:.4g}, {manifest.fit_summary}")
    for name, value in manifest.metrics.items():
        typer.echo(f"  {name}: {value:.4f}")


@app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option(help="folder to write (MVTec AD layout)")],
    train_good: Annotated[int, typer.Option(min=2)] = 60,
    test_good: Annotated[int, typer.Option(min=0)] = 10,
    defects_per_type: Annotated[int, typer.Option(min=0)] = 5,
    size: Annotated[int, typer.Option(min=64)] = 256,
    seed: int = 0,
) -> None:
    """Write a synthetic data set of textured parts with scratches, spots and cracks (exact masks).

    Example: trainer synth --out datasets/synthetic
    """
    generate(out, SyntheticSpec(size, train_good, test_good, defects_per_type, seed))
    typer.echo(f"wrote synthetic data set to {out}")


@app.command("eval")
def eval_command(
    model: Annotated[Path, typer.Option(help="model bundle folder written by `trainer fit`")],
    data: Annotated[Path, typer.Option(help="MVTec AD category folder, or a folder layout with good/ and defects")],
    report: Annotated[Path, typer.Option(help="folder for metrics.json, roc.png, histogram.png, grid.png")],
    category: Annotated[str | None, typer.Option(help="category, when --data holds several")] = None,
) -> None:
    """Score labelled test images with a model bundle; write metrics, ROC and histogram plots, heatmap samples.

    Example: trainer eval --model models/press2 --data datasets/press2 --report report/press2
    """
    setup_logging()
    result = evaluate(model, data, category)
    write_report(result, report)
    typer.echo(summary_table(result))
    typer.echo(f"wrote report to {report}")


def main() -> None:
    run_cli(app, (DataError, RecipeError, BundleError, TrainingError, OSError))


if __name__ == "__main__":
    main()
