from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data import elpv
from trainer.data.dataset import GOOD, DataError, Dataset
from trainer.data.layouts import discover

# Ambiguous cells (1/3, 2/3) never appear in a split.
GOOD_PROBABILITY = 0.0
DEFECT_PROBABILITY = 1.0


@pytest.fixture(scope="module")
def cells() -> dict[Path, elpv.Cell]:
    return {c.path: c for c in elpv.read_cells(elpv.package_root())}


def test_split_is_deterministic_for_a_seed() -> None:
    assert elpv.load("mono", seed=3) == elpv.load("mono", seed=3)
    assert elpv.load("mono", seed=3).train != elpv.load("mono", seed=4).train


@pytest.mark.parametrize("category", elpv.CATEGORIES)
def test_split_is_disjoint_and_labelled_by_probability(cells: dict[Path, elpv.Cell], category: str) -> None:
    data = elpv.load(category)
    assert (data.name, data.layout) == (f"elpv-{category}", "elpv")
    test_good = [s.path for s in data.test if not s.is_defect]
    test_defect = [s.path for s in data.test if s.is_defect]
    assert not set(data.train) & {s.path for s in data.test}
    assert len(set(data.train)) == len(data.train)
    assert {cells[p].probability for p in data.train + test_good} == {GOOD_PROBABILITY}
    assert {cells[p].probability for p in test_defect} == {DEFECT_PROBABILITY}
    assert {s.label for s in data.test} == {GOOD, elpv.DEFECT}
    assert all(s.mask is None for s in data.test)
    assert all(p.is_file() for p in data.train + [s.path for s in data.test])
    counts = elpv.summary(data)
    assert counts == (len(data.train), len(test_good), len(test_defect))
    # 80/20 within rounding, per cell type for `all`.
    assert abs(counts.test_good - elpv.TEST_SHARE * (counts.train + counts.test_good)) <= len(elpv.CELL_TYPES)


def _paths(data: Dataset) -> tuple[set[Path], set[Path]]:
    return set(data.train), {s.path for s in data.test}


def test_mono_and_poly_do_not_overlap_and_all_is_their_union(cells: dict[Path, elpv.Cell]) -> None:
    mono, poly, every = (_paths(elpv.load(c)) for c in elpv.CATEGORIES)
    assert not (mono[0] | mono[1]) & (poly[0] | poly[1])
    assert {cells[p].cell_type for p in mono[0] | mono[1]} == {"mono"}
    assert every == (mono[0] | poly[0], mono[1] | poly[1])


def test_discover_reads_an_elpv_spec_in_any_case() -> None:
    assert discover(Path("ELPV:Poly")) == elpv.load("poly")
    assert discover(Path("elpv:poly:7")) == elpv.load("poly", seed=7)


@pytest.mark.parametrize(
    ("spec", "category", "message"),
    [
        ("elpv:amorphous", None, "mono, poly, all"),
        ("elpv:", None, "mono, poly, all"),
        ("elpv:mono:-1", None, "seed '-1'"),
        ("elpv:mono", "mono", "--category does not apply"),
    ],
)
def test_bad_spec_says_what_to_pass(spec: str, category: str | None, message: str) -> None:
    with pytest.raises(DataError, match=message):
        discover(Path(spec), category)


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elpv, "PACKAGE", "elpv_dataset_not_installed")
    with pytest.raises(DataError, match="pip install elpv-dataset"):
        elpv.load("mono")
