"""What baking costs in accuracy: image AUROC of torch, OpenVINO fp32 and OpenVINO int8 on the same test images,
with the int8 bake's parity against torch (as bake writes it into the edge manifest: the validation images, all
good) and its rank correlation against torch on the test images (goods and defects), and on their goods alone.

    .venv/bin/python bench/precision.py

    .venv/bin/python bench/precision.py --datasets elpv-mono --seed 1

    .venv/bin/python bench/precision.py --datasets elpv-mono,elpv-poly --models patchcore --seed 0,1,2,3,4

With several seeds (ELPV splits), a table of the means over them follows: torch and int8 AUROC and the int8
test images' rank correlation, the figures issue 19's goals are set on. `--recipe` fits one model with that
recipe. Data sets as in bench/accuracy.py. int8 is calibrated as bake does by default: on the training images less the
validation images.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from accuracy import DATASETS, data_for, parse_datasets, parse_seeds

from converters.bake import BakeError, BakeOptions, bake
from converters.parity import spearman
from edge_agent.bundle import load_edge_bundle
from edge_agent.config import ModelConfig
from edge_agent.runtimes import make_runtime
from edge_agent.runtimes.base import infer_frame
from trainer.bundle import load_bundle
from trainer.data.layouts import discover
from trainer.fit import FitOptions, fit
from trainer.metrics import image_auroc
from trainer.models import REGISTRY
from trainer.predict import predict_scores, read_frames

PERCENT = 100.0
PRECISIONS = ("fp32", "int8")


def baked_scores(edge: Path, frames: list[np.ndarray], cache: Path) -> np.ndarray:
    bundle = load_edge_bundle(edge)
    runtime = make_runtime(bundle, ModelConfig(path=edge, cache_dir=cache))
    return np.array([infer_frame(runtime, frame, bundle.manifest.geometry).score for frame in frames])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=parse_datasets, default=list(DATASETS[:3]), help=",".join(DATASETS))
    parser.add_argument("--models", default=",".join(sorted(REGISTRY)))
    parser.add_argument("--seed", type=parse_seeds, default=[0], help="ELPV split seeds, e.g. 0,1,2,3,4")
    parser.add_argument("--recipe", type=Path, help="training recipe YAML passed to fit (default: the model's)")
    args = parser.parse_args()
    if args.recipe is not None and "," in args.models:
        parser.error("--recipe holds one model's keys; name that one model with --models")
    print(f"recipe {args.recipe or 'default'}, seed(s) {','.join(map(str, args.seed))}\n")
    print(
        "| model | seed | data set | torch AUROC % | OV fp32 AUROC % | OV int8 AUROC % | int8 vs torch (points) "
        "| int8 parity: spearman | verdicts agree | images | int8 spearman: test images | test goods only |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model_name, seed, name in itertools.product(args.models.split(","), args.seed, args.datasets):
            data = data_for(name, root / str(seed), seed)
            dataset = discover(data)
            bundle = root / f"{model_name}-{name}-{seed}"
            fit(FitOptions(data=data, model=model_name, out=bundle, recipe=args.recipe, seed=seed))
            model, manifest = load_bundle(bundle)
            frames, kept, _ = read_frames(s.path for s in dataset.test)
            label_of = {s.path: s.is_defect for s in dataset.test}
            labels = np.array([label_of[p] for p in kept])
            scores = {"torch": predict_scores(model, frames, manifest.geometry)}
            auroc = {"torch": image_auroc(scores["torch"], labels)}
            parity = None
            try:
                for precision in PRECISIONS:
                    edge = root / f"{model_name}-{name}-{seed}-{precision}"
                    parity = bake(BakeOptions(bundle=bundle, out=edge, precision=precision)).parity
                    scores[precision] = baked_scores(edge, frames, root / "cache")
                    auroc[precision] = image_auroc(scores[precision], labels)
            except BakeError as refused:
                print(
                    f"| {model_name} | {seed} | {name} | {PERCENT * auroc['torch']:.2f} | {refused} ||||||", flush=True
                )
                continue
            assert parity is not None
            test_rho = spearman(scores["torch"], scores["int8"])
            runs[model_name, name].append((auroc["torch"], auroc["int8"], test_rho))
            print(
                f"| {model_name} | {seed} | {name} | {PERCENT * auroc['torch']:.2f} | {PERCENT * auroc['fp32']:.2f} | "
                f"{PERCENT * auroc['int8']:.2f} | {PERCENT * (auroc['int8'] - auroc['torch']):+.2f} | "
                f"{parity.spearman:.4f} | {parity.verdict_agreement:.1%} | {parity.images} | "
                f"{test_rho:.4f} | "
                f"{spearman(scores['torch'][~labels], scores['int8'][~labels]):.4f} |",
                flush=True,
            )
    if len(args.seed) > 1:
        print(_means_table(runs))


def _means_table(runs: dict[tuple[str, str], list[tuple[float, float, float]]]) -> str:
    lines = [
        "",
        "| model | data set | splits | torch AUROC % (mean) | OV int8 AUROC % (mean) | int8 vs torch (points) "
        "| int8 spearman on test images (mean, min) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (model, name), rows in runs.items():
        torch_auroc, int8_auroc, rho = (np.array(column) for column in zip(*rows, strict=True))
        lines.append(
            f"| {model} | {name} | {len(rows)} | {PERCENT * torch_auroc.mean():.2f} | "
            f"{PERCENT * int8_auroc.mean():.2f} "
            f"| {PERCENT * (int8_auroc.mean() - torch_auroc.mean()):+.2f} | {rho.mean():.4f}, {rho.min():.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
