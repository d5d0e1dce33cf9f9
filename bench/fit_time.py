"""How long `trainer fit` takes, where the time goes, and how much memory it needs: on synthetic 256x256 parts,
or on any data set `trainer fit --data` takes (a folder, or ELPV as elpv:<type>:<seed>).

    .venv/bin/python bench/fit_time.py --images 200 --images 700 --repeats 3
    .venv/bin/python bench/fit_time.py --data elpv:poly:0 --data elpv:mono:0 --repeats 1
    .venv/bin/python bench/fit_time.py --data elpv:poly:0 --model simplenet --repeats 1
    .venv/bin/python bench/fit_time.py --data elpv:poly:0 --model fastflow --variant p5=patience5.yaml --repeats 1

`--variant LABEL=RECIPE.yaml` also fits with that recipe, taking turns with the default on each data set and
repeat, so a slow stretch of the machine hits both alike.

Each run is a separate `trainer fit` process, so the wall time includes start-up and the numba cache load,
as a user sees it. The stage columns are fit's own summary: reading (decode and resize of the good images),
features (the backbone), coreset, validation and scoring the labelled test images; "-" where the model has no
such stage. Peak RSS is the child's maximum resident set size. Medians over the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from trainer.data.synthetic import SyntheticSpec, generate

STAGES = ("read_s", "features_s", "coreset_s", "validation_s", "test_s")


DEFAULT = "default"
Run = tuple[float, dict[str, float], float]


def one_fit(data: str, model: str, recipe: Path | None, out: Path) -> Run:
    start = time.perf_counter()
    recipe_args = [] if recipe is None else ["--config", str(recipe)]
    child = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "fit", "--data", data, "--model", model, "--out", str(out), *recipe_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS, not the max over all children
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"trainer fit failed with exit code {child.returncode}")
    peak_kb = usage.ru_maxrss
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    return wall, {**manifest["fit_summary"], "learned": manifest["training_set"]["count"]}, peak_kb / 1024


def _variant(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=RECIPE.yaml with an existing recipe file")
    return label, Path(path)


def _stage(runs: list[Run], key: str) -> str:
    values = [r[1][key] for r in runs if key in r[1]]
    return f"{statistics.median(values):.1f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, action="append", help="synthetic good images (repeatable)")
    parser.add_argument("--data", action="append", help="a data set as `trainer fit --data` takes it (repeatable)")
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", type=_variant, action="append", default=[], help="LABEL=RECIPE.yaml")
    args = parser.parse_args()
    variants: list[tuple[str, Path | None]] = [(DEFAULT, None), *args.variant]
    columns = " | ".join(s.removesuffix("_s") + " s" for s in STAGES)
    print(f"| data | model | bank learns from | wall s (median) | {columns} | epochs | memory bank | peak RSS MB |")
    print(f"|---|---|---:|---:|{'---:|' * len(STAGES)}---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        sets = [(d, d) for d in args.data or []]
        for n in args.images or ([] if args.data else [200]):
            spec = SyntheticSpec(train_good=n, test_good=0, test_defects_per_type=0)
            sets.append((f"synthetic {n}", str(generate(Path(tmp) / f"data{n}", spec))))
        for i, (label, data) in enumerate(sets):
            runs: dict[str, list[Run]] = {name: [] for name, _ in variants}
            for r in range(args.repeats):
                for name, recipe in variants:
                    runs[name].append(one_fit(data, args.model, recipe, Path(tmp) / f"model{i}_{name}_{r}"))
            for name, done in runs.items():
                walls = [run[0] for run in done]
                summary = done[walls.index(statistics.median(walls))][1]
                stages = " | ".join(_stage(done, key) for key in STAGES)
                model = args.model if name == DEFAULT else f"{args.model} ({name})"
                print(
                    f"| {label} | {model} | {summary['learned']:.0f} | {statistics.median(walls):.1f} | {stages} | "
                    f"{_stage(done, 'epochs_run')} | {summary.get('memory_bank', '-')} | "
                    f"{max(run[2] for run in done):.0f} |"
                )


if __name__ == "__main__":
    main()
