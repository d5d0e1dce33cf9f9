"""Finding train and test images in the MVTec AD layout or the folder layout (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edge_agent.imageio import list_images
from trainer.data.dataset import GOOD, DataError, Dataset, Sample
from trainer.data.elpv import ELPV_PREFIX, from_spec

MASKS = "masks"  # the folder layout's mask folder
GROUND_TRUTH = "ground_truth"  # the MVTec AD layout's mask folder
MASK_SUFFIX = "_mask"
# Where each layout looks for the mask of a defective image, for messages about missing or misnamed masks.
MASK_NAMING = {"mvtec": "ground_truth/<type>/<stem>_mask.png", "folder": "masks/<stem>.png"}


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem.removesuffix(MASK_SUFFIX): p for p in list_images(folder)}


def _unused(masks: Sequence[Path], test: Sequence[Sample]) -> list[Path]:
    """Mask files no test image took: misnamed, or made for an image that is not there."""
    used = {s.mask for s in test}
    return sorted(m for m in masks if m not in used)


def _ground_truth_masks(root: Path) -> list[Path]:
    """Every mask under ground_truth/, also those of a type with no test/<type> folder (a misspelt type)."""
    folder = root / GROUND_TRUTH
    if not folder.is_dir():
        return []
    return [m for kind in sorted(folder.iterdir()) if kind.is_dir() for m in list_images(kind)]


def _mvtec(root: Path) -> Dataset:
    train = list_images(root / "train" / GOOD)
    test: list[Sample] = []
    empty: list[Path] = []
    test_root = root / "test"
    if test_root.is_dir():
        for kind in sorted(p for p in test_root.iterdir() if p.is_dir()):
            masks = _masks_by_stem(root / GROUND_TRUTH / kind.name)
            images = list_images(kind)
            if not images:
                empty.append(kind)
            test += [Sample(p, kind.name, masks.get(p.stem)) for p in images]
    return Dataset(root.name, "mvtec", train, test, _unused(_ground_truth_masks(root), test), empty)


def _folder(root: Path) -> Dataset:
    masks = _masks_by_stem(root / MASKS)
    test: list[Sample] = []
    empty: list[Path] = []
    for kind in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in (GOOD, MASKS)):
        images = list_images(kind)
        # A hidden folder (.ipynb_checkpoints, .git) is no defect type anyone meant; not worth a warning.
        if not images and not kind.name.startswith("."):
            empty.append(kind)
        test += [Sample(p, kind.name, masks.get(p.stem)) for p in images]
    return Dataset(root.name, "folder", list_images(root / GOOD), test, _unused(list(masks.values()), test), empty)


def discover(root: Path, category: str | None = None) -> Dataset:
    """Read `root` as an MVTec category, an MVTec root plus `category`, a folder layout, or `elpv:TYPE`."""
    if str(root).lower().startswith(ELPV_PREFIX):
        return from_spec(str(root), category)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass --data with a folder holding train/good or good/")
    if category is not None:
        root = root / category
        if not root.is_dir():
            raise DataError(f"category folder {root} does not exist")
    if (root / "train" / GOOD).is_dir():
        data = _mvtec(root)
    elif (root / GOOD).is_dir():
        data = _folder(root)
    else:
        categories = sorted(p.name for p in root.iterdir() if (p / "train" / GOOD).is_dir())
        if categories:
            raise DataError(f"{root} holds several categories; pick one with --category ({', '.join(categories)})")
        raise DataError(f"{root} has neither train/good/ (MVTec AD layout) nor good/ (folder layout)")
    if not data.train:
        raise DataError(f"no images of good parts found in {root}; add png/jpg/bmp/tif files to the good folder")
    return data
