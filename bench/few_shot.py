"""The few-shot start on ELPV: image AUROC and the operating point at the leave-one-out threshold, from 1, 4 and 8
good cells (16 for reference, past the few-shot range), for PatchCore and PaDiM with their default recipes.

    .venv/bin/python bench/few_shot.py

    .venv/bin/python bench/few_shot.py --datasets elpv-mono --seed 0,1 --shots 1,4 --draws 2

For each ELPV split (`elpv:<type>:<seed>`, bench/accuracy.py's data), each shot count and each draw, the shots are
drawn from the split's good training cells by a seeded RNG, and the model is fitted on them the way `trainer fit`
does in few-shot mode (trainer/few_shot.py: every shot learned from, each scored out-of-sample by leave-one-out, a
single shot by held-out blocks for PatchCore), its threshold `calibrate_threshold` at the default quantile 0.99 of
those scores. It is then measured on the split's whole test set (held-out probability-0 cells against the
probability-1 cells): image AUROC, defects caught and goods rejected at that threshold. PaDiM sets no threshold
from one shot (fit refuses), so its 1-shot rows have AUROC only. The test cells' features are extracted once per
split (both families' default features are the same map, checked) and scored by each fitted model. One row per
data set, shot count and model: means over splits and draws, and the lowest and highest split mean of the AUROC.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accuracy import data_for, parse_seeds

from edge_agent.geometry import Geometry
from trainer.acceleration import batched_features
from trainer.data.layouts import discover
from trainer.few_shot import FEW_SHOT_MAX_IMAGES, fit_few_shot
from trainer.fit import calibrate_threshold, load_recipe
from trainer.metrics import image_auroc
from trainer.models import REGISTRY
from trainer.predict import model_inputs, read_frames

MODELS = ("patchcore", "padim")
DATASETS = ("elpv-mono", "elpv-poly")
SHOTS = (1, 4, 8, 16)
DRAWS = 3
QUANTILE = 0.99  # `trainer fit --threshold-quantile`'s default
PERCENT = 100.0
EMBED_BATCH = 16
SAME_FEATURES_ATOL = 1e-5


@dataclass(frozen=True)
class Run:
    auroc: float
    caught: float | None  # share of defects at or above the threshold; None without a threshold
    rejected: float | None  # share of test goods at or above it


def parse_list(text: str, choices: tuple[str, ...]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or set(names) - set(choices):
        raise argparse.ArgumentTypeError(f"'{text}': pick from {', '.join(choices)}")
    return names


def parse_shots(text: str) -> list[int]:
    shots = parse_seeds(text)
    if min(shots) < 1:
        raise argparse.ArgumentTypeError("shots must be 1 or more")
    return shots


def test_features(models: dict[str, torch.nn.Module], inputs: np.ndarray) -> torch.Tensor:
    """The test inputs' feature maps, once: both families' default `embed` is the same map, checked on a batch."""
    first, *others = models.values()
    features = torch.from_numpy(np.concatenate(batched_features(first.embed, inputs, EMBED_BATCH)))
    with torch.no_grad():
        for model in others:
            probe = model.embed(torch.from_numpy(inputs[:2]))
            np.testing.assert_allclose(probe, first.embed(torch.from_numpy(inputs[:2])), atol=SAME_FEATURES_ATOL)
    return features


def run_once(
    model: torch.nn.Module, frames: list[np.ndarray], geometry: Geometry, features: torch.Tensor, labels: np.ndarray
) -> Run:
    threshold = None
    if len(frames) == 1 and not hasattr(model, "fit_held_out_blocks"):
        model.fit(model_inputs(frames, geometry), model_inputs([], geometry))  # AUROC only: fit refuses this
    else:
        threshold = calibrate_threshold(fit_few_shot(model, frames, geometry).scores, QUANTILE)
    with torch.no_grad():
        scores = model.score_features(features).score.numpy()
    if threshold is None:
        return Run(image_auroc(scores, labels), None, None)
    return Run(
        image_auroc(scores, labels),
        float((scores[labels] >= threshold).mean()),
        float((scores[~labels] >= threshold).mean()),
    )


def measure_split(
    name: str, seed: int, shots: list[int], draws: int, models: list[str]
) -> dict[tuple[str, int], list[Run]]:
    data = discover(data_for(name, Path("."), seed))
    recipes = {m: load_recipe(m, None) for m in models}
    fitted = {m: REGISTRY[m].model(r.model) for m, r in recipes.items()}
    geometry = recipes[models[0]].geometry
    assert all(r.geometry == geometry for r in recipes.values()), "the families' default geometries differ"
    frames, kept, _ = read_frames([s.path for s in data.test])
    label_of = {s.path: s.is_defect for s in data.test}
    labels = np.array([label_of[p] for p in kept], dtype=bool)
    features = test_features(fitted, model_inputs(frames, geometry))
    del frames
    runs: dict[tuple[str, int], list[Run]] = {}
    for count in shots:
        for draw in range(draws if count < len(data.train) else 1):
            rng = np.random.default_rng([seed, count, draw])
            chosen = sorted(rng.choice(len(data.train), min(count, len(data.train)), replace=False))
            goods, _, _ = read_frames([data.train[i] for i in chosen])
            for model_name, model in fitted.items():
                run = run_once(model, goods, geometry, features, labels)
                runs.setdefault((model_name, count), []).append(run)
                print(f"  {name} split {seed} {count} shot(s) draw {draw} {model_name}: {fmt(run)}", flush=True)
    return runs


def fmt(run: Run) -> str:
    op = (
        "-"
        if run.caught is None
        else f"caught {PERCENT * run.caught:.1f}%, goods rejected {PERCENT * (run.rejected or 0):.1f}%"
    )
    return f"AUROC {PERCENT * run.auroc:.2f}, {op}"


def _mean(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{PERCENT * np.mean(known):.1f}" if known else "-"


def table(
    results: dict[tuple[str, int], dict[tuple[str, int], list[Run]]],
    names: list[str],
    shots: list[int],
    models: list[str],
) -> str:
    lines = [
        "| data set | shots | model | splits x draws | mean AUROC % | lowest split | highest split | defects caught % "
        "| goods rejected % |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for count in shots:
            for model in models:
                per_split = [runs[model, count] for (n, _), runs in results.items() if n == name]
                flat = [r for runs in per_split for r in runs]
                split_means = [PERCENT * np.mean([r.auroc for r in runs]) for runs in per_split]
                mark = "" if count <= FEW_SHOT_MAX_IMAGES else " (reference)"
                lines.append(
                    f"| {name} | {count}{mark} | {model} | {len(per_split)} x {len(flat) // len(per_split)} | "
                    f"{PERCENT * np.mean([r.auroc for r in flat]):.2f} | {min(split_means):.1f} | "
                    f"{max(split_means):.1f} | "
                    f"{_mean([r.caught for r in flat])} | {_mean([r.rejected for r in flat])} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=lambda t: parse_list(t, DATASETS), default=list(DATASETS))
    parser.add_argument("--models", type=lambda t: parse_list(t, MODELS), default=list(MODELS))
    parser.add_argument("--seed", type=parse_seeds, default=[0, 1, 2, 3, 4], help="ELPV splits: 0,1,2,3,4")
    parser.add_argument("--shots", type=parse_shots, default=list(SHOTS), help="good cells per fit: 1,4,8,16")
    parser.add_argument("--draws", type=int, default=DRAWS, help="seeded draws of the shots per split")
    args = parser.parse_args()
    results = {}
    # Split by split, both data sets each: a run cut short still has every data set on its first splits.
    for seed in args.seed:
        for name in args.datasets:
            results[name, seed] = measure_split(name, seed, args.shots, args.draws, args.models)
        if seed != args.seed[-1]:  # the splits so far, in case a long run has to be cut
            print(f"\nsplits {', '.join(str(s) for s in args.seed[: args.seed.index(seed) + 1])}:")
            print(table(results, args.datasets, args.shots, args.models), flush=True)
    print()
    print(table(results, args.datasets, args.shots, args.models))


if __name__ == "__main__":
    main()
