"""What a data set is, whichever layout it came from: its good training images, its labelled test samples, and
the error for data we cannot read. Every loader (MVTec AD, folder, ELPV) builds these, so they sit below all of
them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GOOD = "good"


class DataError(Exception):
    """The data folder is missing or laid out in a way we cannot read."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str  # "good" or the defect type
    mask: Path | None = None

    @property
    def is_defect(self) -> bool:
        return self.label != GOOD


@dataclass(frozen=True)
class Dataset:
    name: str
    layout: str  # "mvtec" | "folder" | "elpv"
    train: list[Path]  # good images to learn from
    test: list[Sample]  # labelled images for evaluation (may be empty)
    orphan_masks: list[Path] = field(default_factory=list)  # mask files named after no test image
    empty_folders: list[Path] = field(default_factory=list)  # test folders without images: left out
