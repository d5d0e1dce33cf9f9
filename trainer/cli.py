"""`trainer`: fit models on images of good parts, and make sample data."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edge_agent.console import run_cli, setup_logging
from trainer.bundle import BundleError
from trainer.data import synthetic_elpv
from trainer.data.dataset import DataError
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.evaluate import evaluate
from trainer.fit import HOLDOUT_MAX, HOLDOUT_MIN, FitOptions, RecipeError, fit
from trainer.fit_target import threshold_line
from trainer.models import REGISTRY
from trainer.models.training import TrainingError
from trainer.report import summary_table, write_report
from trainer.targets import EVAL_OPTIONS, FALSE_REJECT_RATE, MISS_RATE, OptionError, Target, check_rate


class ThresholdMethod(str, Enum):
    quantile = "quantile"
    f1 = "f1"
    miss_rate = MISS_RATE
    false_reject_rate = FALSE_REJECT_RATE


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.command("fit")
def fit_command(
    data: Annotated[Path, typer.Option(help="MVTec AD category folder, or a folder layout with good/")],
    out: Annotated[Path, typer.Option(help="where to write the model bundle")],
    model: Annotated[str, typer.Option(help=f"model from the registry: {', '.join(REGISTRY)}")] = "patchcore",
    config: Annotated[
        Path | None,
        typer.Option(help="training recipe YAML: keys of the model's recipe, each commented in configs/<model>.yaml"),
    ] = None,
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
        ThresholdMethod,
        typer.Option(
            help="quantile of held-out goods; F1-optimal on labelled test images; or the threshold letting at most "
            "--target-rate of the defects escape (miss-rate) or of the goods be rejected (false-reject-rate)"
        ),
    ] = ThresholdMethod.quantile,
    target_rate: Annotated[
        float | None,
        typer.Option(help="with --threshold miss-rate or false-reject-rate: the share to stay at or under (0.01: 1%)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the hold-out split")] = 0,
    device: Annotated[
        str, typer.Option(help="where simplenet and fastflow train, and padim extracts its features: cpu or cuda")
    ] = "cpu",
) -> None:
    """Learn from good images and write a model bundle.

    Example: trainer fit --data datasets/press2 --model patchcore --out models/press2

    Example: trainer fit --data datasets/press2 --out models/press2 --threshold miss-rate --target-rate 0.01
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
        target_rate=target_rate,
        seed=seed,
        device=device,
    )
    manifest = fit(options)
    typer.echo(f"wrote {out}: {manifest.model}, threshold {manifest.threshold:.4g}, {manifest.fit_summary}")
    line = threshold_line(manifest.threshold, manifest.threshold_target)
    if line is not None:
        typer.echo(line)
    for name, value in manifest.metrics.items():
        typer.echo(f"  {name}: {value:.4f}")


class Texture(str, Enum):
    disc = "disc"
    elpv_mono = "elpv-mono"
    elpv_poly = "elpv-poly"


@app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option(help="folder to write (MVTec AD layout)")],
    train_good: Annotated[int, typer.Option(min=2)] = 60,
    test_good: Annotated[int, typer.Option(min=0)] = 10,
    defects_per_type: Annotated[int, typer.Option(min=0)] = 5,
    size: Annotated[int, typer.Option(min=64)] = 256,
    seed: int = 0,
    texture: Annotated[
        Texture,
        typer.Option(help="disc: drawn metal discs; elpv-mono, elpv-poly: real defect-free ELPV cells of that type"),
    ] = Texture.disc,
) -> None:
    """Write a synthetic data set with exact masks: metal discs with scratches, spots and cracks, or real ELPV
    cells with thin cracks, faint stains and edge chips (train, test and defective cells all different).

    Example: trainer synth --out datasets/synthetic

    Example: trainer synth --texture elpv-mono --out datasets/elpv-mono-synth --train-good 400 --defects-per-type 40
    """
    spec = SyntheticSpec(size, train_good, test_good, defects_per_type, seed)
    if texture is Texture.disc:
        generate(out, spec)
    else:
        synthetic_elpv.generate(out, synthetic_elpv.cell_type_of(texture.value), spec)
    typer.echo(f"wrote synthetic {texture.value} data set to {out}")


@app.command("eval")
def eval_command(
    model: Annotated[Path, typer.Option(help="model bundle folder written by `trainer fit`")],
    data: Annotated[Path, typer.Option(help="MVTec AD category folder, or a folder layout with good/ and defects")],
    report: Annotated[
        Path, typer.Option(help="folder for metrics.json, the plots (PNG) and report.html, which holds them all")
    ],
    category: Annotated[str | None, typer.Option(help="category, when --data holds several")] = None,
    target_miss_rate: Annotated[
        list[float] | None,
        typer.Option(help="also list the threshold letting at most this share of defects escape (repeatable)"),
    ] = None,
    target_false_reject_rate: Annotated[
        list[float] | None,
        typer.Option(help="also list the threshold rejecting at most this share of goods (repeatable)"),
    ] = None,
) -> None:
    """Score labelled test images with a model bundle; write metrics, ROC, trade-off and histogram plots, heatmap
    samples. Targets list thresholds that would meet them on this data; the bundle is not changed.

    Example: trainer eval --model models/press2 --data datasets/press2 --report report/press2

    Example: trainer eval --model models/press2 --data datasets/press2 --report r/ --target-miss-rate 0.01
    """
    setup_logging()
    targets = _eval_targets(target_miss_rate or [], target_false_reject_rate or [])
    result = evaluate(model, data, category, targets)
    write_report(result, report)
    typer.echo(summary_table(result))
    typer.echo(f"wrote report to {report}")


def _eval_targets(miss_rates: list[float], false_reject_rates: list[float]) -> list[Target]:
    targets = [Target(MISS_RATE, r) for r in miss_rates] + [Target(FALSE_REJECT_RATE, r) for r in false_reject_rates]
    for target in targets:
        check_rate(EVAL_OPTIONS[target.method], target.rate)
    return targets


def main() -> None:
    run_cli(app, (DataError, RecipeError, OptionError, BundleError, TrainingError, OSError))


if __name__ == "__main__":
    main()
