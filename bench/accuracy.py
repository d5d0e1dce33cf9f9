"""Accuracy of PatchCore (or any registry model) on synthetic parts and on ELPV solar cells, against DESIGN.md's
bar: image AUROC, pixel AUROC and AUPRO (synthetic parts have masks, ELPV has none), fit seconds, the memory
bank's bytes and torch's milliseconds per image. `synthetic-elpv-mono` and `synthetic-elpv-poly` are real ELPV
good cells with drawn thin cracks, faint stains and edge chips and their exact masks: 60 test goods and 40 defects
per type, every other good cell of the type a training image, all drawn by the seed.

    .venv/bin/python bench/accuracy.py

    .venv/bin/python bench/accuracy.py --datasets elpv-mono,elpv-poly --recipe my-recipe.yaml --seed 1

    .venv/bin/python bench/accuracy.py --datasets elpv-mono,elpv-poly --seed 0,1,2,3,4

    .venv/bin/python bench/accuracy.py --models patchcore,simplenet --datasets elpv-mono,elpv-poly

Each data set goes through the public API the way `trainer fit` and `trainer eval` see it: fit (which holds out
20% of the good training images to calibrate the threshold, so it learns from "fitted on" of them), load the
bundle back from disk, and `trainer eval`'s own evaluation of the test images. ELPV is
`--data elpv:<type>:<seed>`: a seeded 80/20 of the probability-0 cells, tested as held-out probability-0 cells
against the probability-1 cells, as the reference measurement was. Fit wall seconds are the whole `fit()` call:
reading, fitting, and its own scoring. Torch ms per image is the median of batch-1 eager forwards (CPU) over up
to 50 test images. One row per model, seed and data set, each model with its default recipe unless `--recipe`
names one (then only one model); with several models, a side-by-side table follows: AUROC (fit seconds) and the
difference from the first model named. With several seeds (ELPV splits), a table of each model's mean and range
over them follows. `bench/reference_recipe.yaml` is DESIGN.md's throwaway reference PatchCore as a recipe, for
`--recipe`.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_agent.geometry import Geometry
from trainer.bundle import load_bundle
from trainer.data import synthetic_elpv
from trainer.data.elpv import CELL_TYPES, ELPV_PREFIX, Counts, summary
from trainer.data.layouts import discover
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.evaluate import evaluate
from trainer.fit import FitOptions, fit
from trainer.models import REGISTRY
from trainer.predict import model_inputs, read_frames

MODEL = "patchcore"
SYNTHETIC = "synthetic"
# Real ELPV good cells with drawn defects (trainer/data/synthetic_elpv.py), by cell type.
SYNTHETIC_ELPV = {f"{SYNTHETIC}-{synthetic_elpv.TEXTURE_PREFIX}{t}": t for t in CELL_TYPES}
DATASETS = (SYNTHETIC, *SYNTHETIC_ELPV, "elpv-mono", "elpv-poly", "elpv-all")
# More test images than the generator's default, so one image moves the AUROC by little.
SYNTHETIC_SPEC = SyntheticSpec(test_good=40, test_defects_per_type=20)
# Cells kept for testing the ELPV-based synthetic sets; every other good cell of the type is a training image.
SYNTHETIC_ELPV_TEST_GOOD = 60
SYNTHETIC_ELPV_DEFECTS_PER_TYPE = 40
# The throwaway reference PatchCore's image AUROC in percent (DESIGN.md, "A bar to beat on ELPV").
BAR = {"elpv-mono": 96.4, "elpv-poly": 89.0}
PERCENT = 100.0
MS = 1000.0
TIMED_IMAGES = 50


@dataclass(frozen=True)
class Result:
    name: str
    seed: int
    counts: Counts
    fitted_on: int
    auroc_percent: float
    pixel_auroc_percent: float | None  # None without masks
    aupro_percent: float | None
    fit_s: float
    bank_bytes: int | None  # None for models without a memory bank
    torch_ms: float


def synthetic_elpv_spec(cell_type: str, seed: int) -> SyntheticSpec:
    """As many training cells as the type has once the test goods and the defective cells are set aside."""
    reserved = SYNTHETIC_ELPV_TEST_GOOD + SYNTHETIC_ELPV_DEFECTS_PER_TYPE * len(synthetic_elpv.DEFECT_TYPES)
    train_good = len(synthetic_elpv.good_cells(cell_type)) - reserved
    return SyntheticSpec(
        train_good=train_good,
        test_good=SYNTHETIC_ELPV_TEST_GOOD,
        test_defects_per_type=SYNTHETIC_ELPV_DEFECTS_PER_TYPE,
        seed=seed,
    )


def data_for(name: str, tmp: Path, seed: int) -> Path:
    if name == SYNTHETIC:
        return generate(tmp / SYNTHETIC, dataclasses.replace(SYNTHETIC_SPEC, seed=seed))
    if name in SYNTHETIC_ELPV:
        cell_type = SYNTHETIC_ELPV[name]
        return synthetic_elpv.generate(tmp / name, cell_type, synthetic_elpv_spec(cell_type, seed))
    return Path(f"{ELPV_PREFIX}{name.removeprefix('elpv-')}:{seed}")


def measure(model_name: str, name: str, data: Path, out: Path, recipe: Path | None, seed: int) -> Result:
    dataset = discover(data)  # the same call fit makes, so the test set here is the one fit kept out
    start = time.perf_counter()
    fit(FitOptions(data=data, model=model_name, out=out, recipe=recipe, seed=seed))
    fit_s = time.perf_counter() - start
    evaluated = evaluate(out, data)
    model, manifest = load_bundle(out)
    pixel = evaluated.pixel
    return Result(
        name=name,
        seed=seed,
        counts=summary(dataset),
        fitted_on=manifest.training_set.count,
        auroc_percent=PERCENT * float(evaluated.image_auroc or 0.0),
        pixel_auroc_percent=None if pixel is None else PERCENT * pixel.pixel_auroc,
        aupro_percent=None if pixel is None else PERCENT * pixel.aupro,
        fit_s=fit_s,
        bank_bytes=manifest.fit_summary.get("bank_bytes"),
        torch_ms=torch_ms_per_image(model, [s.path for s in dataset.test[:TIMED_IMAGES]], manifest.geometry),
    )


@torch.no_grad()
def torch_ms_per_image(model: nn.Module, paths: list[Path], geometry: Geometry) -> float:
    """Median wall ms of one eager forward of batch 1 (all of a frame's tiles), after one warm-up."""
    frames, _, _ = read_frames(paths)
    inputs = [torch.from_numpy(model_inputs([f], geometry)) for f in frames]
    model(inputs[0])
    times = []
    for x in inputs:
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return MS * float(np.median(times))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row(result: Result) -> str:
    auroc = round(result.auroc_percent, 1)
    bar = BAR.get(result.name)
    versus_bar = f"{bar:.1f} | {auroc - bar:+.1f}" if bar is not None else "- | -"
    counts = result.counts
    bank = "-" if result.bank_bytes is None else f"{result.bank_bytes:,}"
    return (
        f"| {result.seed} | {result.name} | {counts.train} | {result.fitted_on} | {counts.test_good} | "
        f"{counts.test_defect} | {auroc:.1f} | {percent(result.pixel_auroc_percent)} | "
        f"{percent(result.aupro_percent)} | {versus_bar} | {result.fit_s:.0f} | {bank} | {result.torch_ms:.1f} |"
    )


def parse_datasets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown data set(s) {', '.join(unknown)}; pick from {', '.join(DATASETS)}")
    return names


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds '{text}' are not comma-separated integers, like 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds '{text}' must be one or more non-negative integers")
    return seeds


def parse_models(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(REGISTRY))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(unknown)}; pick from {', '.join(REGISTRY)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=parse_datasets, default=list(DATASETS), help=",".join(DATASETS))
    parser.add_argument("--models", type=parse_models, default=[MODEL], help=",".join(REGISTRY))
    parser.add_argument("--recipe", type=Path, help="training recipe YAML passed to fit (default: the model's)")
    parser.add_argument(
        "--seed", type=parse_seeds, default=[0], help="seed(s) of the ELPV split, fit's hold-out and synthetic set: 0,1"
    )
    args = parser.parse_args()
    if args.recipe is not None and len(args.models) > 1:
        parser.error("--recipe holds one model's keys; name that one model with --models")
    print(f"recipe {args.recipe or 'default'}, seed(s) {','.join(map(str, args.seed))}\n")
    print(
        "| model | seed | data set | train | fitted on | test good | test defect | I-AUROC % | P-AUROC % | AUPRO % "
        "| bar % | I-AUROC vs bar (points) | fit wall s | bank bytes | torch ms/image |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results: dict[tuple[str, str, int], Result] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seed:
            for model in args.models:
                for name in args.datasets:
                    data = data_for(name, Path(tmp) / str(seed), seed)
                    out = Path(tmp) / "models" / str(seed) / model / name
                    results[model, name, seed] = measure(model, name, data, out, args.recipe, seed)
                    print(f"| {model} {row(results[model, name, seed])}", flush=True)
    if len(args.models) > 1:
        for seed in args.seed:
            of_seed = {(m, n): r for (m, n, s), r in results.items() if s == seed}
            print(side_by_side(of_seed, args.models, args.datasets))
    if len(args.seed) > 1:
        print(over_seeds(results, args.models, args.datasets))


def over_seeds(results: dict[tuple[str, str, int], Result], models: list[str], datasets: list[str]) -> str:
    """Each model's mean image AUROC % over the seeds (splits), its lowest and highest, the bar, and the mean
    pixel AUROC and AUPRO where the data set has masks."""
    lines = [
        "",
        "| model | data set | splits | mean AUROC % | lowest | highest | bar % | mean vs bar | mean P-AUROC % | "
        "mean AUPRO % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        for name in datasets:
            runs = [r for (m, n, _), r in results.items() if (m, n) == (model, name)]
            values = [r.auroc_percent for r in runs]
            mean = float(np.mean(values))
            bar = BAR.get(name)
            versus = f"{bar:.1f} | {round(mean, 2) - bar:+.2f}" if bar is not None else "- | -"
            pixel = _mean_of([r.pixel_auroc_percent for r in runs])
            aupro = _mean_of([r.aupro_percent for r in runs])
            lines.append(
                f"| {model} | {name} | {len(values)} | {mean:.2f} | {min(values):.1f} | {max(values):.1f} | {versus} "
                f"| {pixel} | {aupro} |"
            )
    return "\n".join(lines)


def _mean_of(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{np.mean(known):.2f}" if known else "-"


def side_by_side(results: dict[tuple[str, str], Result], models: list[str], datasets: list[str]) -> str:
    """Image AUROC % (fit wall s) of every model per data set, and each one's difference from the first model."""
    first = models[0]
    head = " | ".join(models) + " | " + " | ".join(f"{m} vs {first}" for m in models[1:])
    lines = ["", f"| data set | {head} |", "|---|" + "---:|" * (2 * len(models) - 1)]
    for name in datasets:
        cells = [f"{results[m, name].auroc_percent:.1f} ({results[m, name].fit_s:.0f} s)" for m in models]
        base = round(results[first, name].auroc_percent, 1)
        cells += [f"{round(results[m, name].auroc_percent, 1) - base:+.1f}" for m in models[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
