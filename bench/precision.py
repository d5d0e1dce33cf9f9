"""What baking costs in accuracy: image AUROC of torch, OpenVINO fp32 and OpenVINO int8 on the same test images,
with the int8 bake's parity against torch (as bake writes it into the edge manifest: the validation images, all
good) and its rank correlation against torch on the test images (goods and defects), and on their goods alone.
Where the data set has masks (the synthetic sets), the pixel AUROC and AUPRO of torch, fp32 and int8 on the same
images follow, maps and masks compared on the model input grid as `trainer eval` does; ELPV has no masks: `-`.

    .venv/bin/python bench/precision.py

    .venv/bin/python bench/precision.py --datasets elpv-mono --seed 1

    .venv/bin/python bench/precision.py --datasets elpv-mono,elpv-poly --models patchcore --seed 0,1,2,3,4

With several seeds (ELPV splits), a table of the means over them follows: torch and int8 AUROC and the int8
test images' rank correlation, the figures issue 19's goals are set on, and torch and int8 pixel AUROC and AUPRO
where there are masks. `--recipe` fits one model with that recipe. Data sets as in bench/accuracy.py. int8 is
calibrated as bake does by default: on the training images less the validation images. `--int8-cpu any,vnni`
bakes int8 for both CPU classes from the same fit (`converter bake --int8-cpu`: 7-bit weights for any CPU, 8-bit
for VNNI CPUs), a row each:

    .venv/bin/python bench/precision.py --datasets elpv-mono,elpv-poly --models patchcore --seed 0,1,2,3,4 \
        --int8-cpu any,vnni
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from accuracy import DATASETS, data_for, parse_datasets, parse_seeds

from converters.bake import BakeError, BakeOptions, bake
from converters.parity import spearman
from edge_agent.bundle import load_edge_bundle
from edge_agent.config import ModelConfig
from edge_agent.geometry import Combined
from edge_agent.runtimes import make_runtime
from edge_agent.runtimes.base import infer_frame
from edge_agent.runtimes.openvino_ops import cpu_isa
from trainer.bundle import InputSpec, load_bundle
from trainer.data.dataset import Sample
from trainer.data.layouts import discover
from trainer.eval_result import PixelMetrics
from trainer.fit import FitOptions, fit
from trainer.metrics import image_auroc, pixel_auroc_and_aupro
from trainer.models import REGISTRY
from trainer.predict import on_grid, predict, read_frames
from trainer.scoring import read_mask

PERCENT = 100.0
INT8_CPUS = ("any", "vnni")
NO_FIGURE = "-"  # a pixel figure of a data set without masks
# The pixel columns, in order: torch, OV fp32, OV int8; pixel AUROC first, then AUPRO.
PIXEL_RUNTIMES = ("torch", "fp32", "int8")


@dataclass(frozen=True)
class Truth:
    """Ground-truth masks of the test frames that take part in pixel metrics: the goods (all zero) and the defects
    with a mask, as in `trainer eval`."""

    rows: list[int]  # index into the test frames of each mask
    masks: np.ndarray  # R x H x W bool, on the model input grid
    spec: InputSpec


@dataclass(frozen=True)
class Run:
    """One seed's figures of a model, data set and int8 CPU class, for the means over seeds."""

    torch_auroc: float
    int8_auroc: float
    test_rho: float
    torch_pixel: PixelMetrics | None
    int8_pixel: PixelMetrics | None


def baked(edge: Path, frames: list[np.ndarray], cache: Path) -> list[Combined]:
    bundle = load_edge_bundle(edge)
    runtime = make_runtime(bundle, ModelConfig(path=edge, cache_dir=cache))
    return [infer_frame(runtime, frame, bundle.manifest.geometry) for frame in frames]


def scores_of(combined: Sequence[Combined]) -> np.ndarray:
    return np.array([c.score for c in combined])


def truth_of(samples: Sequence[Sample], frames: Sequence[np.ndarray], spec: InputSpec) -> Truth | None:
    """The masks of `samples` (the test frames read, in order), as `trainer eval` reads them; None where no
    defect has one (ELPV)."""
    masks = {i: read_mask(s, spec, f.shape[:2]) for i, (s, f) in enumerate(zip(samples, frames, strict=True))}
    rows = [i for i, mask in masks.items() if mask is not None]
    if not any(samples[i].is_defect for i in rows):
        return None
    return Truth(rows, np.stack([masks[i] for i in rows]), spec)


def pixel_metrics(combined: Sequence[Combined], truth: Truth | None) -> PixelMetrics | None:
    if truth is None:
        return None
    # Each frame's map brought onto the model input grid, where its mask already is.
    grid = truth.spec.height, truth.spec.width
    maps = np.stack([on_grid(combined[i], *grid)[1] for i in truth.rows])
    return PixelMetrics(len(truth.rows), *pixel_auroc_and_aupro(maps, truth.masks))


def pixel_cells(pixel: dict[str, PixelMetrics | None]) -> str:
    """Pixel AUROC of each runtime, then AUPRO of each, `-` where there is none."""
    auroc = [NO_FIGURE if (p := pixel.get(r)) is None else f"{PERCENT * p.pixel_auroc:.2f}" for r in PIXEL_RUNTIMES]
    aupro = [NO_FIGURE if (p := pixel.get(r)) is None else f"{PERCENT * p.aupro:.2f}" for r in PIXEL_RUNTIMES]
    return " | ".join(auroc + aupro) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=parse_datasets, default=list(DATASETS[:3]), help=",".join(DATASETS))
    parser.add_argument("--models", default=",".join(sorted(REGISTRY)))
    parser.add_argument("--seed", type=parse_seeds, default=[0], help="ELPV split seeds, e.g. 0,1,2,3,4")
    parser.add_argument("--recipe", type=Path, help="training recipe YAML passed to fit (default: the model's)")
    parser.add_argument("--int8-cpu", default="any", help="CPU classes to bake int8 for: any, vnni or any,vnni")
    args = parser.parse_args()
    if args.recipe is not None and "," in args.models:
        parser.error("--recipe holds one model's keys; name that one model with --models")
    cpus = args.int8_cpu.split(",")
    if not set(cpus) <= set(INT8_CPUS):
        parser.error(f"--int8-cpu takes {', '.join(INT8_CPUS)} or both, comma-separated")
    print(f"recipe {args.recipe or 'default'}, seed(s) {','.join(map(str, args.seed))}, CPU: {' '.join(cpu_isa())}\n")
    print(
        "| model | seed | data set | int8 for | torch AUROC % | OV fp32 AUROC % | OV int8 AUROC % | int8 vs torch "
        "(points) | int8 parity: spearman | verdicts agree | images | int8 spearman: test images | test goods only | "
        "torch P-AUROC % | fp32 P-AUROC % | int8 P-AUROC % | torch AUPRO % | fp32 AUPRO % | int8 AUPRO % |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model_name, seed, name in itertools.product(args.models.split(","), args.seed, args.datasets):
            data = data_for(name, root / str(seed), seed)
            dataset = discover(data)
            bundle = root / f"{model_name}-{name}-{seed}"
            fit(FitOptions(data=data, model=model_name, out=bundle, recipe=args.recipe, seed=seed))
            model, manifest = load_bundle(bundle)
            frames, kept, _ = read_frames(s.path for s in dataset.test)
            sample_of = {s.path: s for s in dataset.test}
            samples = [sample_of[p] for p in kept]
            labels = np.array([s.is_defect for s in samples])
            truth = truth_of(samples, frames, manifest.input)
            combined = predict(model, frames, manifest.geometry)
            scores = {"torch": scores_of(combined)}
            pixel = {"torch": pixel_metrics(combined, truth)}
            auroc = {"torch": image_auroc(scores["torch"], labels)}
            fp32 = root / f"{model_name}-{name}-{seed}-fp32"
            bake(BakeOptions(bundle=bundle, out=fp32))
            combined = baked(fp32, frames, root / "cache")
            auroc["fp32"] = image_auroc(scores_of(combined), labels)
            pixel["fp32"] = pixel_metrics(combined, truth)
            del combined  # every frame's map and view: let them go before the int8 bakes
            for cpu in cpus:
                row = f"| {model_name} | {seed} | {name} | {cpu} | {PERCENT * auroc['torch']:.2f} |"
                edge = root / f"{model_name}-{name}-{seed}-int8-{cpu}"
                try:
                    parity = bake(BakeOptions(bundle=bundle, out=edge, precision="int8", int8_cpu=cpu)).parity
                except BakeError as refused:
                    print(f"{row} {PERCENT * auroc['fp32']:.2f} | {refused} |||||| {pixel_cells(pixel)}", flush=True)
                    continue
                int8_combined = baked(edge, frames, root / "cache")
                int8 = scores_of(int8_combined)
                int8_pixel = pixel_metrics(int8_combined, truth)
                int8_auroc = image_auroc(int8, labels)
                test_rho = spearman(scores["torch"], int8)
                run = Run(auroc["torch"], int8_auroc, test_rho, pixel["torch"], int8_pixel)
                runs[model_name, name, cpu].append(run)
                print(
                    f"{row} {PERCENT * auroc['fp32']:.2f} | {PERCENT * int8_auroc:.2f} | "
                    f"{PERCENT * (int8_auroc - auroc['torch']):+.2f} | {parity.spearman:.4f} | "
                    f"{parity.verdict_agreement:.1%} | {parity.images} | {test_rho:.4f} | "
                    f"{spearman(scores['torch'][~labels], int8[~labels]):.4f} | "
                    f"{pixel_cells({**pixel, 'int8': int8_pixel})}",
                    flush=True,
                )
    if len(args.seed) > 1:
        print(_means_table(runs))


def _mean_percent(figures: list[float | None]) -> str:
    """The mean in percent, `-` where a run had no masks (a data set has masks in every seed or in none)."""
    if any(f is None for f in figures):
        return NO_FIGURE
    return f"{PERCENT * float(np.mean(figures)):.2f}"


def _pixel_means(rows: list[Run]) -> str:
    """Mean pixel AUROC of torch and int8, then their mean AUPRO."""
    torch_pixel = [r.torch_pixel for r in rows]
    int8_pixel = [r.int8_pixel for r in rows]
    means = [
        _mean_percent([None if p is None else p.pixel_auroc for p in torch_pixel]),
        _mean_percent([None if p is None else p.pixel_auroc for p in int8_pixel]),
        _mean_percent([None if p is None else p.aupro for p in torch_pixel]),
        _mean_percent([None if p is None else p.aupro for p in int8_pixel]),
    ]
    return " | ".join(means)


def _means_table(runs: dict[tuple[str, str, str], list[Run]]) -> str:
    lines = [
        "",
        "| model | data set | int8 for | splits | torch AUROC % (mean) | OV int8 AUROC % (mean) | int8 vs torch "
        "(points) | int8 spearman on test images (mean, min) | torch P-AUROC % (mean) | int8 P-AUROC % (mean) | "
        "torch AUPRO % (mean) | int8 AUPRO % (mean) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, name, cpu), rows in runs.items():
        torch_auroc = np.array([r.torch_auroc for r in rows])
        int8_auroc = np.array([r.int8_auroc for r in rows])
        rho = np.array([r.test_rho for r in rows])
        lines.append(
            f"| {model} | {name} | {cpu} | {len(rows)} | {PERCENT * torch_auroc.mean():.2f} | "
            f"{PERCENT * int8_auroc.mean():.2f} "
            f"| {PERCENT * (int8_auroc.mean() - torch_auroc.mean()):+.2f} | {rho.mean():.4f}, {rho.min():.4f} | "
            f"{_pixel_means(rows)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
