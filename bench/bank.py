"""What quantizing the PatchCore memory bank costs in accuracy, and saves in bytes.

    .venv/bin/python bench/bank.py --datasets synthetic,elpv:mono,elpv:poly

For each data set the float coreset is selected once; the same bank is then stored as int8 codes with
per-dimension scales and as product-quantized codes, and every form scores the same test images. So the AUROC
differences below come from quantization alone.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from edge_agent.geometry import Geometry
from trainer.data.layouts import discover
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.metrics import image_auroc
from trainer.models.patchcore import PatchCore, PatchCoreRecipe
from trainer.predict import model_inputs, predict_scores, read_frames

FORMS = ("none", "int8", "pq")
SYNTHETIC_SPEC = SyntheticSpec(train_good=200, test_good=40, test_defects_per_type=20)


def data_root(name: str, tmp: Path) -> Path:
    return generate(tmp / "synthetic", SYNTHETIC_SPEC) if name == "synthetic" else Path(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="synthetic,elpv:mono,elpv:poly")
    args = parser.parse_args()
    print("| data | bank | entries | bytes | smaller than float | image AUROC % | change, points |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            data = discover(data_root(name, Path(tmp)))
            geometry = Geometry(height=256, width=256)
            train, _, _ = read_frames(data.train)
            test, kept, _ = read_frames(s.path for s in data.test)
            label_of = {s.path: s.is_defect for s in data.test}
            labels = np.array([label_of[p] for p in kept])
            base = PatchCore(PatchCoreRecipe(bank_quantization="none"))
            base.fit(model_inputs(train, geometry), model_inputs([], geometry))
            float_bank = base.memory_bank().numpy()
            reference = 0.0
            for form in FORMS:
                model = base if form == "none" else PatchCore(PatchCoreRecipe(bank_quantization=form))
                if form != "none":
                    model.backbone = base.backbone
                    model.set_bank(float_bank, float_bank)
                with torch.no_grad():
                    auroc = 100 * image_auroc(predict_scores(model, test, geometry), labels)
                reference = auroc if form == "none" else reference
                ratio = float_bank.nbytes / model.bank_bytes()
                print(
                    f"| {name} | {form} | {len(float_bank)} | {model.bank_bytes():,} | {ratio:.2f}x | "
                    f"{auroc:.2f} | {auroc - reference:+.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
