from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from in_process import run_main
from pipeline import TEST_SIZE, Pipeline

import converters.cli
from converters.benchmark import CSV_FILE, MARKDOWN_FILE
from converters.latency import BLOCK, time_turns

TIMED_FRAMES = 10


@pytest.mark.slow
def test_benchmark_fits_evaluates_bakes_and_times_a_family(pipeline: Pipeline, tmp_path: Path) -> None:
    recipe = tmp_path / "patchcore.yaml"
    recipe.write_text(f"input_size: [{TEST_SIZE}, {TEST_SIZE}]\n")
    out = tmp_path / "bench"
    args = ["--data", str(pipeline.data), "--out", str(out), "--models", "patchcore", "--frames", str(TIMED_FRAMES)]
    result = run_main(converters.cli.main, "converter", "benchmark", *args, "--recipe", f"patchcore={recipe}")
    assert result.returncode == 0, result.stderr
    assert (out / "patchcore" / "openvino-fp32" / "manifest.yaml").is_file()
    (row,) = list(csv.DictReader((out / CSV_FILE).open()))
    assert row["model"] == "patchcore"
    assert float(row["image_auroc"]) >= 90 and float(row["pixel_auroc"]) > 50  # drawn defects, exact masks
    assert float(row["fp32_ms"]) > 0 and float(row["fp32_mb"]) > 0
    # The tiny set holds 12 validation goods and 9 defects: too few for the int8 guard, which the row says.
    assert "int8 not baked" in row["note"] and "needs at least 64 images" in row["note"]
    assert row["int8_ms"] == row["int8_image_auroc"] == row["int8_mb"] == ""
    table = (out / MARKDOWN_FILE).read_text()
    assert "| patchcore |" in table and "CPU flags:" in table and table.strip() in result.stdout


def test_benchmark_refuses_an_unknown_family_in_one_line(tmp_path: Path) -> None:
    args = ["--data", str(tmp_path), "--out", str(tmp_path / "b"), "--models", "patchcore,nosuch"]
    result = run_main(converters.cli.main, "converter", "benchmark", *args)
    assert result.returncode != 0
    assert "unknown --models nosuch" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_benchmark_refuses_a_recipe_for_a_family_not_benchmarked(tmp_path: Path) -> None:
    args = ["--data", str(tmp_path), "--out", str(tmp_path / "b"), "--models", "patchcore", "--recipe", "fastflow=x"]
    result = run_main(converters.cli.main, "converter", "benchmark", *args)
    assert result.returncode != 0 and "--recipe 'fastflow=x' must be MODEL=FILE" in result.stderr


def test_runners_take_turns_in_blocks_after_their_warm_up() -> None:
    calls: list[str] = []
    frames = np.zeros((BLOCK, 1), np.uint8)
    ms = time_turns([lambda _: calls.append("a"), lambda _: calls.append("b")], frames, 2 * BLOCK, settle_s=0)
    assert [len(m) for m in ms] == [2 * BLOCK, 2 * BLOCK]
    timed = calls[-4 * BLOCK :]
    assert timed == (["a"] * BLOCK + ["b"] * BLOCK) * 2
