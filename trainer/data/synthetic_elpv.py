"""Real ELPV solar cells with drawn defects and exact masks, in the MVTec AD layout (`trainer synth --texture`).

ELPV labels whole cells only. Here the parts are real defect-free (probability-0) cells of one type, and the
defects are drawn onto some of them, so pixel AUROC and AUPRO can be measured on real surfaces. The defects are
made hard the way real electroluminescence defects are: thin, dim, branching cracks; faint stains a few grey levels
off; pieces chipped off the border. A mask holds exactly the pixels a defect moved by more than VISIBLE_CHANGE.

Train goods, test goods and the cells defects are drawn on are disjoint sets of cells, drawn by the seed, so no
test image shows a cell a model learned from. Files are named after their source cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from trainer.data.dataset import GOOD, DataError
from trainer.data.elpv import CELL_TYPES, GOOD_PROBABILITY, PIP_INSTALL, package_root, read_cells
from trainer.data.layouts import GROUND_TRUTH, MASK_SUFFIX
from trainer.data.synthetic import MASK_ON, MIN_DEFECT_SHARE, SyntheticSpec, write_image

DEFECT_TYPES = ("thin_crack", "faint_stain", "edge_chip")
TEXTURE_PREFIX = "elpv-"  # `--texture elpv-mono` names the cell type
TEXTURES = tuple(f"{TEXTURE_PREFIX}{t}" for t in CELL_TYPES)
GREY_MAX = 255

# A pixel is in the mask when the defect moved it by more than this many grey levels. ELPV cells at 256 px have a
# pixel noise of about 1.3 (mono) to 2.1 (poly) grey levels (robust sigma of the high-pass residual); a smaller
# change is lost in that noise, so no model or inspector can see it, and counting the faint anti-aliased rims and
# stain tails would swell the masks beyond the visible defect.
VISIBLE_CHANGE = 2
# Outlines are drawn this many times finer and averaged down: anti-aliased edges with sub-pixel coverage.
SUPERSAMPLE = 4
# Cracks and stain centres start in this span of the side (as shares), away from where the cell ends.
DEFECT_AREA = (0.15, 0.85)

# Share of the local brightness a crack takes away: real EL cracks are dim lines, seldom black.
CRACK_DARKENING = (0.1, 0.3)
CRACK_WIDTH_PX = (1, 3)
CRACK_STEPS = (8, 16)  # steps of the main walk; a branch walks half of what is left
CRACK_STEP = 0.025  # of the side, per step
CRACK_TURN = 0.35  # radians the heading may change per step: cracks wander but do not curl
BRANCH_CHANCE = 0.15  # per step
BRANCH_ANGLE = (0.4, 1.2)  # radians off the parent's heading
MAX_BRANCH_DEPTH = 2  # branches of branches, no further: deeper trees become a web no real crack looks like

# Grey levels a stain moves its centre by, darker or brighter; from just above VISIBLE_CHANGE to clearly visible.
STAIN_CONTRAST = (4.0, 15.0)
STAIN_RADIUS = (0.04, 0.12)  # of the side
STAIN_LOBES = (1, 4)  # overlapping ellipses, so stains are irregular rather than round
STAIN_SOFTNESS = 0.5  # Gaussian sigma as a share of the radius: the stain fades out with no visible rim

CHIP_WIDTH = (0.1, 0.3)  # of the side, along the edge
CHIP_DEPTH = (0.04, 0.12)  # of the side, into the cell
CHIP_CORNER_LEG = (0.06, 0.18)  # of the side, along each edge from the corner
CHIP_VERTICES = (2, 5)  # points of the broken line between where the chip leaves the border and comes back
CHIP_CORNER_BULGE = (0.0, 0.4)  # share of the legs by which a corner chip's broken line bows past the straight cut
CORNER_CHIP_CHANCE = 0.5  # the rest are bitten out of an edge
OUTSIDE = -1.0  # a coordinate just outside the image, so a chip's outline covers the border pixels fully
# The darkest 1% of a cell is its surroundings (cut corners, the gap to the next cell): what a chipped piece shows.
BACKGROUND_PERCENTILE = 1
# Grey levels of sensor noise on a chipped piece, so it is not a flat patch, which no real EL image has.
BACKGROUND_NOISE = 1.5

Drawer = Callable[[np.random.Generator, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CellPlan:
    """Which cells go where. No cell is in two places."""

    train: list[Path]
    test_good: list[Path]
    defective: dict[str, list[Path]]


def cell_type_of(texture: str) -> str:
    return texture.removeprefix(TEXTURE_PREFIX)


def good_cells(cell_type: str) -> list[Path]:
    """The probability-0 cells of one type, sorted by file name so the draw does not depend on labels.csv's order."""
    cells = read_cells(package_root())
    return sorted(c.path for c in cells if c.cell_type == cell_type and c.probability == GOOD_PROBABILITY)


def plan_cells(cells: list[Path], spec: SyntheticSpec, cell_type: str) -> CellPlan:
    per_type = spec.test_defects_per_type
    needed = spec.train_good + spec.test_good + per_type * len(DEFECT_TYPES)
    if needed > len(cells):
        raise DataError(
            f"asked for {needed} {cell_type} cells ({spec.train_good} train goods + {spec.test_good} test goods + "
            f"{len(DEFECT_TYPES)} x {per_type} defects) but ELPV has {len(cells)} good {cell_type} cells; lower "
            "--train-good, --test-good or --defects-per-type"
        )
    order = [cells[i] for i in np.random.default_rng(spec.seed).permutation(len(cells))]
    test_end = spec.train_good + spec.test_good
    starts = {kind: test_end + i * per_type for i, kind in enumerate(DEFECT_TYPES)}
    defective = {kind: order[start : start + per_type] for kind, start in starts.items()}
    return CellPlan(order[: spec.train_good], order[spec.train_good : test_end], defective)


def load_cell(path: Path, size: int) -> np.ndarray:
    """A cell as a size x size uint8 grey image."""
    cell = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if cell is None:
        raise DataError(f"ELPV cell {path} cannot be read; reinstall with `{PIP_INSTALL}`")
    return cv2.resize(cell, (size, size), interpolation=cv2.INTER_AREA)


def _coverage(size: int, draw: Callable[[np.ndarray], object]) -> np.ndarray:
    """Share of each pixel that `draw` fills (0..1), drawn in MASK_ON on a SUPERSAMPLE times finer canvas."""
    fine = np.zeros((size * SUPERSAMPLE, size * SUPERSAMPLE), np.uint8)
    draw(fine)
    return cv2.resize(fine.astype(np.float32) / MASK_ON, (size, size), interpolation=cv2.INTER_AREA)


def _fine(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> integer coordinates on the fine canvas (pixel centres at +0.5)."""
    return np.round((points + 0.5) * SUPERSAMPLE).astype(np.int32)


def _crack_paths(
    rng: np.random.Generator, start: np.ndarray, heading: float, steps: int, size: int, depth: int = 0
) -> list[np.ndarray]:
    """A random walk from `start` and the walks branching off it, each an N x 2 array of pixel coordinates."""
    points = [start]
    branches: list[np.ndarray] = []
    for step in range(steps):
        heading += rng.uniform(-CRACK_TURN, CRACK_TURN)
        points.append(points[-1] + CRACK_STEP * size * np.array([np.cos(heading), np.sin(heading)]))
        if depth < MAX_BRANCH_DEPTH and rng.random() < BRANCH_CHANCE:
            turn = rng.choice((-1.0, 1.0)) * rng.uniform(*BRANCH_ANGLE)
            branches += _crack_paths(rng, points[-1], heading + turn, (steps - step) // 2, size, depth + 1)
    return [np.array(points), *branches]


def _thin_crack(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    size = clean.shape[0]
    start = rng.uniform(*DEFECT_AREA, 2) * size
    steps = int(rng.integers(CRACK_STEPS[0], CRACK_STEPS[1], endpoint=True))
    paths = [_fine(p) for p in _crack_paths(rng, start, rng.uniform(0, 2 * np.pi), steps, size)]
    thickness = int(rng.integers(CRACK_WIDTH_PX[0], CRACK_WIDTH_PX[1], endpoint=True)) * SUPERSAMPLE
    alpha = _coverage(size, lambda fine: cv2.polylines(fine, paths, False, MASK_ON, thickness=thickness))
    return clean * (1 - rng.uniform(*CRACK_DARKENING) * alpha)


def _stain_profile(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft blob peaking at 1: a few overlapping ellipses near one centre, blurred."""
    radius = rng.uniform(*STAIN_RADIUS) * size
    centre = rng.uniform(*DEFECT_AREA, 2) * size
    blob = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(STAIN_LOBES[0], STAIN_LOBES[1], endpoint=True))):
        lobe = np.round(centre + rng.uniform(-radius / 2, radius / 2, 2)).astype(int)
        axes = np.maximum(1, np.round(radius * rng.uniform(0.5, 1.0, 2))).astype(int)
        cv2.ellipse(blob, tuple(map(int, lobe)), tuple(map(int, axes)), rng.uniform(0, 180), 0, 360, 1.0, -1)
    soft = cv2.GaussianBlur(blob, (0, 0), STAIN_SOFTNESS * radius)
    peak_one: np.ndarray = soft / soft.max()
    return peak_one


def _faint_stain(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    profile = _stain_profile(rng, clean.shape[0])
    stained: np.ndarray = clean + rng.choice((-1.0, 1.0)) * rng.uniform(*STAIN_CONTRAST) * profile
    return stained


def _broken_line(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, push: np.ndarray) -> np.ndarray:
    """Points between `start` and `end`, each pushed a random amount along `push`: the jagged edge of a break."""
    count = int(rng.integers(CHIP_VERTICES[0], CHIP_VERTICES[1], endpoint=True))
    t = np.linspace(0, 1, count + 2)[1:-1, None]
    points: np.ndarray = start + t * (end - start) + rng.uniform(0.4, 1.0, (count, 1)) * push
    return points


def _edge_bite(rng: np.random.Generator, size: int) -> np.ndarray:
    """The outline of a piece bitten off the top edge, in pixel coordinates."""
    width, depth = rng.uniform(*CHIP_WIDTH) * size, rng.uniform(*CHIP_DEPTH) * size
    left = rng.uniform(0, size - width)
    start, end = np.array([left, OUTSIDE]), np.array([left + width, OUTSIDE])
    return np.vstack([start, _broken_line(rng, start, end, np.array([0.0, depth])), end])


def _corner_bite(rng: np.random.Generator, size: int) -> np.ndarray:
    """The outline of a piece bitten off the top-left corner, in pixel coordinates."""
    along_top, along_left = rng.uniform(*CHIP_CORNER_LEG, 2) * size
    start, end = np.array([along_top, OUTSIDE]), np.array([OUTSIDE, along_left])
    push = np.array([along_top, along_left]) * rng.uniform(*CHIP_CORNER_BULGE)
    return np.vstack([[OUTSIDE, OUTSIDE], start, _broken_line(rng, start, end, push), end])


def _edge_chip(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    size = clean.shape[0]
    outline = _fine(_corner_bite(rng, size) if rng.random() < CORNER_CHIP_CHANCE else _edge_bite(rng, size))
    # Drawn at the top (edge or left corner), then turned to any of the four sides: cells are square.
    alpha = np.rot90(_coverage(size, lambda fine: cv2.fillPoly(fine, [outline], MASK_ON)), int(rng.integers(4)))
    background = np.percentile(clean, BACKGROUND_PERCENTILE) + rng.normal(0, BACKGROUND_NOISE, clean.shape)
    chipped: np.ndarray = clean * (1 - alpha) + background * alpha
    return chipped


DRAWERS: dict[str, Drawer] = {"thin_crack": _thin_crack, "faint_stain": _faint_stain, "edge_chip": _edge_chip}


def defective(rng: np.random.Generator, clean: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The clean cell with one defect of `kind`, and the mask of the pixels it moved by more than VISIBLE_CHANGE.
    A defect that leaves too little visible (a crack along a dark busbar, a chip over a cut corner) is redrawn."""
    reference = clean.astype(np.int16)
    while True:
        drawn = DRAWERS[kind](rng, clean.astype(np.float32))
        image = np.clip(np.rint(drawn), 0, GREY_MAX).astype(np.uint8)
        visible = np.abs(image.astype(np.int16) - reference) > VISIBLE_CHANGE
        if visible.mean() >= MIN_DEFECT_SHARE:
            return image, visible.astype(np.uint8) * MASK_ON


def _write_cells(cells: list[Path], folder: Path, size: int) -> None:
    for path in cells:
        write_image(folder / f"{path.stem}.png", load_cell(path, size))


def generate(root: Path, cell_type: str, spec: SyntheticSpec) -> Path:
    """Write an MVTec-layout category of `cell_type` cells to `root` and return it. Same arguments, same bytes."""
    plan = plan_cells(good_cells(cell_type), spec, cell_type)
    _write_cells(plan.train, root / "train" / GOOD, spec.size)
    _write_cells(plan.test_good, root / "test" / GOOD, spec.size)
    for kind_index, (kind, cells) in enumerate(plan.defective.items()):
        for i, path in enumerate(cells):
            # One generator per image: an image depends on its own cell and place, not on how many redraws the
            # images before it needed.
            rng = np.random.default_rng([spec.seed, kind_index, i])
            image, mask = defective(rng, load_cell(path, spec.size), kind)
            write_image(root / "test" / kind / f"{path.stem}.png", image)
            write_image(root / GROUND_TRUTH / kind / f"{path.stem}{MASK_SUFFIX}.png", mask)
    return root
