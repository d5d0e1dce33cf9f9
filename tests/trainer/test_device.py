"""`trainer fit --device cuda`: a clear error without a GPU, and on a GPU the same model as on the CPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from in_process import run_main
from pipeline import Pipeline

import trainer.cli
from trainer.bundle import load_bundle
from trainer.fit import FitOptions, fit

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TRAINED = ("simplenet", "fastflow")
# Float sums run in another order on the GPU, so scores agree only to this relative tolerance.
GPU_SCORE_RTOL = 1e-2


def run_trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return run_main(trainer.cli.main, "trainer", *args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_clear_line(tmp_path: Path, pipeline: Pipeline) -> None:
    out = tmp_path / "m"
    result = run_trainer("fit", "--data", str(pipeline.data), "--out", str(out), "--device", "cuda")
    assert result.returncode == 2
    assert "sees no CUDA GPU" in result.stderr and "--device cpu" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@needs_cuda
@pytest.mark.parametrize("model", TRAINED)
def test_training_on_cuda_gives_the_cpu_model(model: str, pipeline: Pipeline, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input_size: [128, 128]\nepochs: 2\n")
    scores = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        fit(FitOptions(data=pipeline.data, model=model, out=out, recipe=recipe, device=device))
        trained, _ = load_bundle(out)
        with torch.no_grad():
            scores[device] = trained(torch.zeros(2, 128, 128, 3, dtype=torch.uint8)).score
    torch.testing.assert_close(scores["cuda"], scores["cpu"], rtol=GPU_SCORE_RTOL, atol=1e-3)
