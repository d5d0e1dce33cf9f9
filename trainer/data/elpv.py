"""The ELPV solar-cell data set (pip package `elpv-dataset`) as a Dataset: `--data elpv:mono|poly|all[:SEED]`.

ELPV has no masks. Each cell carries the share of annotators who called it defective (0, 1/3, 2/3 or 1). The
split follows the reference measurement in DESIGN.md: a seeded 80/20 of the probability-0 cells gives the
training images and the good test images, the probability-1 cells are the defective test images, and the
ambiguous 1/3 and 2/3 cells are left out. Only labels.csv is read here; the images stay on disk.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from trainer.data.dataset import GOOD, DataError, Dataset, Sample

ELPV_PREFIX = "elpv:"  # `--data elpv:mono` names the installed ELPV data set, not a folder
PACKAGE = "elpv_dataset"
PIP_INSTALL = "pip install elpv-dataset"
LABELS = Path("data") / "labels.csv"
CELL_TYPES = ("mono", "poly")
ALL = "all"
CATEGORIES = (*CELL_TYPES, ALL)
LAYOUT = "elpv"
DEFECT = "defect"
GOOD_PROBABILITY = 0.0
DEFECT_PROBABILITY = 1.0
TEST_SHARE = 0.2
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Cell:
    path: Path
    probability: float
    cell_type: str


class Counts(NamedTuple):
    train: int
    test_good: int
    test_defect: int


def package_root() -> Path:
    # find_spec locates the package without importing it (its __init__ chain pulls in PIL).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the ELPV data set is not installed; run `{PIP_INSTALL}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _parse_line(labels: Path, number: int, line: str) -> Cell:
    try:
        path, probability, cell_type = line.split()
        return Cell(labels.parent / path, float(probability), cell_type)
    except ValueError:
        raise DataError(f"{labels}:{number} is not 'path probability type'; reinstall with `{PIP_INSTALL}`") from None


def read_cells(root: Path) -> list[Cell]:
    """Every cell in labels.csv (whitespace-separated: path, probability, type), image paths made absolute."""
    labels = root / LABELS
    try:
        lines = labels.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{labels} cannot be read ({exc.strerror}); reinstall with `{PIP_INSTALL}`") from None
    return [_parse_line(labels, n, line) for n, line in enumerate(lines, start=1) if line.strip()]


def _split_good(paths: list[Path], seed: int) -> tuple[list[Path], list[Path]]:
    """A seeded shuffle of good cells cut into (train, test), each in file order."""
    ordered = sorted(paths)  # shuffle from a fixed order, so the split does not depend on labels.csv's order
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_test = round(len(ordered) * TEST_SHARE)
    return [ordered[i] for i in sorted(order[n_test:])], [ordered[i] for i in sorted(order[:n_test])]


def split(cells: list[Cell], category: str, seed: int) -> Dataset:
    # `all` splits each cell type on its own with the same seed, so its split is exactly the union of the
    # mono and poly splits, both types keep the 80/20 share, and a per-type model never tests on cells that
    # the `all` model trained on or the other way round.
    train: list[Path] = []
    test: list[Sample] = []
    for cell_type in CELL_TYPES if category == ALL else (category,):
        cells_of_type = [c for c in cells if c.cell_type == cell_type]
        good = [c.path for c in cells_of_type if c.probability == GOOD_PROBABILITY]
        good_train, good_test = _split_good(good, seed)
        train += good_train
        test += [Sample(p, GOOD) for p in good_test]
        test += [Sample(c.path, DEFECT) for c in cells_of_type if c.probability == DEFECT_PROBABILITY]
    return Dataset(name=f"elpv-{category}", layout=LAYOUT, train=train, test=test)


def load(category: str, seed: int = DEFAULT_SEED) -> Dataset:
    category = category.lower()
    if category not in CATEGORIES:
        raise DataError(f"unknown ELPV category '{category}'; pick one of {', '.join(CATEGORIES)} (--data elpv:mono)")
    return split(read_cells(package_root()), category, seed)


def from_spec(spec: str, category: str | None = None) -> Dataset:
    """`elpv:CATEGORY[:SEED]`, any case, as `--data` gives it; SEED (default 0) picks the 80/20 split."""
    if category is not None:
        raise DataError(
            "--category does not apply to ELPV; name the cell type in --data: elpv:mono, elpv:poly or elpv:all"
        )
    name, _, seed_text = spec[len(ELPV_PREFIX) :].partition(":")
    if not seed_text:
        return load(name)
    if not seed_text.isdigit():
        raise DataError(f"ELPV split seed '{seed_text}' is not a non-negative integer (for example --data elpv:mono:1)")
    return load(name, int(seed_text))


def summary(data: Dataset) -> Counts:
    defects = sum(s.is_defect for s in data.test)
    return Counts(train=len(data.train), test_good=len(data.test) - defects, test_defect=defects)
