"""What baking costs in accuracy: image AUROC of torch, OpenVINO fp32 and OpenVINO int8 on the same test images,
with the int8 bake's parity against torch (as bake writes it into the edge manifest: the validation images, all
good) and its rank correlation against torch on the test images (goods and defects), and on their goods alone.

    .venv/bin/python bench/precision.py

    .venv/bin/python bench/precision.py --datasets elpv-mono --seed 1

    .venv/bin/python bench/precision.py --datasets elpv-mono,elpv-poly --models patchcore --seed 0,1,2,3,4

With several seeds (ELPV splits), a table of the means over them follows: torch and int8 AUROC and the int8
test images' rank correlation, the figures issue 19's goals are set on. `--recipe` fits one model with that
recipe. Data sets as in bench/accuracy.py. int8 is calibrated as bake does by default: on the training images less the
validation images. `--int8-cpu any,vnni` bakes int8 for both CPU classes from the same fit (`converter bake
--int8-cpu`: 7-bit weights for any CPU, 8-bit for VNNI CPUs), a row each:

    .venv/bin/python bench/precision.py --datasets elpv-mono,elpv-poly --models patchcore --seed 0,1,2,3,4 \
        --int8-cpu any,vnni
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
from edge_agent.runtimes.openvino_ops import cpu_isa
from trainer.bundle import load_bundle
from trainer.data.layouts import discover
from trainer.fit import FitOptions, fit
from trainer.metrics import image_auroc
from trainer.models import REGISTRY
from trainer.predict import predict_scores, read_frames

PERCENT = 100.0
INT8_CPUS = ("any", "vnni")


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
        "(points) | int8 parity: spearman | verdicts agree | images | int8 spearman: test images | test goods only |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs: dict[tuple[str, str, str], list[tuple[float, float, float]]] = defaultdict(list)
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
            fp32 = root / f"{model_name}-{name}-{seed}-fp32"
            bake(BakeOptions(bundle=bundle, out=fp32))
            auroc["fp32"] = image_auroc(baked_scores(fp32, frames, root / "cache"), labels)
            for cpu in cpus:
                row = f"| {model_name} | {seed} | {name} | {cpu} | {PERCENT * auroc['torch']:.2f} |"
                edge = root / f"{model_name}-{name}-{seed}-int8-{cpu}"
                try:
                    parity = bake(BakeOptions(bundle=bundle, out=edge, precision="int8", int8_cpu=cpu)).parity
                except BakeError as refused:
                    print(f"{row} {PERCENT * auroc['fp32']:.2f} | {refused} ||||||", flush=True)
                    continue
                int8 = baked_scores(edge, frames, root / "cache")
                int8_auroc = image_auroc(int8, labels)
                test_rho = spearman(scores["torch"], int8)
                runs[model_name, name, cpu].append((auroc["torch"], int8_auroc, test_rho))
                print(
                    f"{row} {PERCENT * auroc['fp32']:.2f} | {PERCENT * int8_auroc:.2f} | "
                    f"{PERCENT * (int8_auroc - auroc['torch']):+.2f} | {parity.spearman:.4f} | "
                    f"{parity.verdict_agreement:.1%} | {parity.images} | {test_rho:.4f} | "
                    f"{spearman(scores['torch'][~labels], int8[~labels]):.4f} |",
                    flush=True,
                )
    if len(args.seed) > 1:
        print(_means_table(runs))


def _means_table(runs: dict[tuple[str, str, str], list[tuple[float, float, float]]]) -> str:
    lines = [
        "",
        "| model | data set | int8 for | splits | torch AUROC % (mean) | OV int8 AUROC % (mean) | int8 vs torch "
        "(points) | int8 spearman on test images (mean, min) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for (model, name, cpu), rows in runs.items():
        torch_auroc, int8_auroc, rho = (np.array(column) for column in zip(*rows, strict=True))
        lines.append(
            f"| {model} | {name} | {cpu} | {len(rows)} | {PERCENT * torch_auroc.mean():.2f} | "
            f"{PERCENT * int8_auroc.mean():.2f} "
            f"| {PERCENT * (int8_auroc.mean() - torch_auroc.mean()):+.2f} | {rho.mean():.4f}, {rho.min():.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
