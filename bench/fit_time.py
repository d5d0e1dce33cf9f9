"""How long `trainer fit` takes, and how much memory it needs, on synthetic 256x256 parts.

    .venv/bin/python bench/fit_time.py --images 200 --images 700 --repeats 3

Each run is a separate `trainer fit` process, so the wall time includes start-up and the numba cache load,
as a user sees it. Peak RSS is the child's maximum resident set size. Medians over the repeats.
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


def one_fit(data: Path, out: Path) -> tuple[float, dict[str, float], float]:
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "fit", "--data", str(data), "--out", str(out)],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, action="append", help="good images in the data set (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = args.images or [200]
    print(
        "| good images | bank learns from | wall s (median) | features s | coreset s | validation s | memory bank "
        "| peak RSS MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            data = generate(Path(tmp) / f"data{n}", SyntheticSpec(train_good=n, test_good=0, test_defects_per_type=0))
            runs = [one_fit(data, Path(tmp) / f"model{n}_{i}") for i in range(args.repeats)]
            walls = [r[0] for r in runs]
            summary = runs[walls.index(statistics.median(walls))][1]
            print(
                f"| {n} | {summary['learned']:.0f} | {statistics.median(walls):.1f} | "
                f"{statistics.median(r[1]['features_s'] for r in runs):.1f} | "
                f"{statistics.median(r[1]['coreset_s'] for r in runs):.1f} | "
                f"{statistics.median(r[1]['validation_s'] for r in runs):.1f} | {summary['memory_bank']:.0f} | "
                f"{max(r[2] for r in runs):.0f} |"
            )


if __name__ == "__main__":
    main()
