"""Would an ensemble of model families beat the best single one? Each family is fitted with its default recipe on
the same split and scored by `trainer eval` on the same held-out test images; an ensemble's score is the mean of
its members' normalised scores, each family's score put on the scale of its own validation goods (from its
manifest, so the agent could do the same in one graph): z = (score - mean) / std, or, more robust to a few odd
goods, q = (score - median) / (p99 - median).

    .venv/bin/python bench/ensemble.py --datasets elpv-mono,elpv-poly --seed 0,1,2,3,4

Prints, per split and data set, every family's and every ensemble's image AUROC and the share of defects caught
with 1% of the test goods rejected (the threshold set on those goods: optimistic, but the same for every row), then
the means over the splits, each against the best single family of that data set (by mean AUROC) and how many
splits the ensemble beat that family on. Data sets as in bench/accuracy.py; their fits as there.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from accuracy import data_for, parse_datasets, parse_models, parse_seeds

from trainer.bundle import ModelManifest, load_bundle
from trainer.evaluate import evaluate
from trainer.fit import FitOptions, fit
from trainer.metrics import image_auroc

PERCENT = 100.0
# The operating point: the share of the test goods a line would accept rejecting.
GOODS_REJECTED = 0.01
MIN_MEMBERS = 2
Normaliser = Callable[[np.ndarray, ModelManifest], np.ndarray]


def z_score(scores: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    stats = manifest.validation_scores
    return (scores - stats.mean) / max(stats.std, np.finfo(np.float32).eps)


def quantile_score(scores: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    stats = manifest.validation_scores
    return (scores - stats.p50) / max(stats.p99 - stats.p50, np.finfo(np.float32).eps)


NORMALISERS: dict[str, Normaliser] = {"z": z_score, "q": quantile_score}


@dataclass(frozen=True)
class Family:
    """One fitted family's scores of the test images, in data order, and what normalises them."""

    scores: np.ndarray
    is_defect: np.ndarray
    paths: list[Path]
    manifest: ModelManifest
    fit_s: float


@dataclass(frozen=True)
class Figures:
    auroc_percent: float
    caught_percent: float  # defects scoring above the threshold that rejects GOODS_REJECTED of the test goods


def fitted(model: str, data: Path, out: Path, seed: int) -> Family:
    start = time.perf_counter()
    fit(FitOptions(data=data, model=model, out=out, seed=seed))
    fit_s = time.perf_counter() - start
    result = evaluate(out, data)
    _, manifest = load_bundle(out)
    return Family(result.scores, result.is_defect, result.paths, manifest, fit_s)


def figures(scores: np.ndarray, is_defect: np.ndarray) -> Figures:
    threshold = float(np.quantile(scores[~is_defect], 1.0 - GOODS_REJECTED))
    return Figures(
        auroc_percent=PERCENT * image_auroc(scores, is_defect),
        caught_percent=PERCENT * float((scores[is_defect] > threshold).mean()),
    )


def combined(members: Sequence[Family], normaliser: Normaliser) -> np.ndarray:
    first = members[0]
    for other in members[1:]:
        if other.paths != first.paths:
            raise SystemExit("the families scored different test images; they cannot be combined")
    normalised: np.ndarray = np.mean([normaliser(m.scores, m.manifest) for m in members], axis=0)
    return normalised


def candidates(models: Sequence[str]) -> list[tuple[str, ...]]:
    """Every single family, then every ensemble of two or more."""
    singles = [(m,) for m in models]
    groups = [g for size in range(MIN_MEMBERS, len(models) + 1) for g in itertools.combinations(models, size)]
    return singles + groups


def label(members: tuple[str, ...], normaliser: str) -> str:
    return members[0] if len(members) == 1 else f"{'+'.join(members)} ({normaliser})"


def measure_split(families: dict[str, Family], models: Sequence[str]) -> dict[str, Figures]:
    out: dict[str, Figures] = {}
    is_defect = families[models[0]].is_defect
    for members in candidates(models):
        if len(members) == 1:
            out[label(members, "")] = figures(families[members[0]].scores, is_defect)
            continue
        for name, normaliser in NORMALISERS.items():
            scores = combined([families[m] for m in members], normaliser)
            out[label(members, name)] = figures(scores, is_defect)
    return out


def over_splits(results: dict[tuple[str, int], dict[str, Figures]], datasets: list[str], models: list[str]) -> str:
    lines = [
        "",
        "| data set | family or ensemble | splits | mean AUROC % | vs best single | splits beating it | "
        "mean caught % at 1% goods rejected |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in datasets:
        runs = [r for (n, _), r in results.items() if n == name]
        mean = {row: float(np.mean([r[row].auroc_percent for r in runs])) for row in runs[0]}
        best = max(models, key=lambda m: mean[m])
        for row in runs[0]:
            beats = sum(r[row].auroc_percent > r[best].auroc_percent for r in runs)
            caught = np.mean([r[row].caught_percent for r in runs])
            lines.append(
                f"| {name} | {row} | {len(runs)} | {mean[row]:.2f} | {mean[row] - mean[best]:+.2f} ({best}) | "
                f"{beats} | {caught:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=parse_datasets, default=["elpv-mono", "elpv-poly"])
    parser.add_argument("--models", type=parse_models, default=["patchcore", "fastflow", "simplenet"])
    parser.add_argument("--seed", type=parse_seeds, default=[0], help="seed(s) of the ELPV split and fit's hold-out")
    args = parser.parse_args()
    if len(args.models) < MIN_MEMBERS:
        parser.error("an ensemble needs at least two models")
    print("| seed | data set | family or ensemble | image AUROC % | caught % at 1% goods rejected | fit wall s |")
    print("|---:|---|---|---:|---:|---:|")
    results: dict[tuple[str, int], dict[str, Figures]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seed:
            for name in args.datasets:
                data = data_for(name, Path(tmp) / str(seed), seed)
                families = {m: fitted(m, data, Path(tmp) / "models" / str(seed) / m / name, seed) for m in args.models}
                results[name, seed] = measure_split(families, args.models)
                for row, fig in results[name, seed].items():
                    fit_s = sum(families[m].fit_s for m in row.split(" ")[0].split("+"))
                    print(
                        f"| {seed} | {name} | {row} | {fig.auroc_percent:.2f} | {fig.caught_percent:.1f} | "
                        f"{fit_s:.0f} |",
                        flush=True,
                    )
    print(over_splits(results, args.datasets, args.models))


if __name__ == "__main__":
    main()
