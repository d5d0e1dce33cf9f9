"""A deterministic generator of textured parts with drawn defects and exact masks, in the MVTec AD layout.

Each part is a brushed-metal disc on a darker fixture, with per-image jitter in texture phase, lighting and
position, so a model must learn the variation of good parts rather than one picture. Defects are scratches,
spots and cracks drawn onto the part, and their masks are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFECT_TYPES = ("scratch", "spot", "crack")
MASK_ON = 255
MIN_DEFECT_SHARE = 0.001  # of the image area


@dataclass(frozen=True)
class SyntheticSpec:
    size: int = 256
    train_good: int = 60
    test_good: int = 10
    test_defects_per_type: int = 5
    seed: int = 0


def _part(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A good part (H x W x 3 uint8) and the mask of where the part is (defects go there)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    brushed = 0.5 + 0.06 * np.sin(xx * 0.9 + yy * 0.15 + phase) + 0.04 * np.sin(yy * 0.31 + phase * 2)
    grain = cv2.GaussianBlur(rng.normal(0, 0.05, (size, size)).astype(np.float32), (0, 0), 1.2)
    light = 0.9 + 0.1 * rng.uniform(-1, 1) + 0.08 * (xx - size / 2) / size
    cx, cy = size / 2 + rng.uniform(-4, 4, 2)
    radius = size * 0.38
    inside = ((xx - cx) ** 2 + (yy - cy) ** 2) < radius**2
    surface = np.where(inside, (brushed + grain) * light, 0.18 + grain * 0.5)
    hole = ((xx - cx) ** 2 + (yy - cy) ** 2) < (radius * 0.22) ** 2
    surface = np.where(hole, 0.1, surface)
    gray = np.clip(surface * 255, 0, 255).astype(np.uint8)
    tint = np.stack([gray, gray, np.clip(gray.astype(np.int16) + 6, 0, 255).astype(np.uint8)], axis=-1)
    return tint, (inside & ~hole)


def _point_on(rng: np.random.Generator, where: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(where)
    i = int(rng.integers(len(xs)))
    return int(xs[i]), int(ys[i])


def _scratch(rng: np.random.Generator, canvas: np.ndarray, where: np.ndarray, size: int) -> None:
    x0, y0 = _point_on(rng, where)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.15, 0.3) * size
    x1, y1 = int(x0 + np.cos(angle) * length), int(y0 + np.sin(angle) * length)
    cv2.line(canvas, (x0, y0), (x1, y1), MASK_ON, thickness=int(rng.integers(2, 4)))


def _spot(rng: np.random.Generator, canvas: np.ndarray, where: np.ndarray, size: int) -> None:
    x0, y0 = _point_on(rng, where)
    axes = (int(rng.uniform(0.02, 0.05) * size), int(rng.uniform(0.02, 0.05) * size))
    cv2.ellipse(canvas, (x0, y0), axes, rng.uniform(0, 180), 0, 360, MASK_ON, thickness=-1)


def _crack(rng: np.random.Generator, canvas: np.ndarray, where: np.ndarray, size: int) -> None:
    x, y = _point_on(rng, where)
    points = [(x, y)]
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(5, 9))):
        heading += rng.uniform(-0.8, 0.8)
        x, y = int(x + np.cos(heading) * size * 0.03), int(y + np.sin(heading) * size * 0.03)
        points.append((x, y))
    cv2.polylines(canvas, [np.array(points, np.int32)], False, MASK_ON, thickness=2)


DRAWERS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray, int], None]] = {
    "scratch": _scratch,
    "spot": _spot,
    "crack": _crack,
}
DEFECT_SHADE = {"scratch": 0.35, "spot": 1.45, "crack": 0.25}


def defective(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    image, where = _part(rng, size)
    on_part = where.astype(np.uint8) * MASK_ON
    mask = np.zeros((size, size), np.uint8)
    # A defect drawn mostly off the part (or into the hole) leaves nothing to find: draw again.
    while (mask > 0).mean() < MIN_DEFECT_SHARE:
        mask[:] = 0
        DRAWERS[kind](rng, mask, where, size)
        mask &= on_part
    hit = mask > 0
    image[hit] = np.clip(image[hit].astype(np.float32) * DEFECT_SHADE[kind], 0, 255).astype(np.uint8)
    return image, mask


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"could not write {path}")


def generate(root: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write an MVTec-layout category to `root` and return it. Same spec, same bytes."""
    rng = np.random.default_rng(spec.seed)
    for i in range(spec.train_good):
        write_image(root / "train" / "good" / f"{i:03d}.png", _part(rng, spec.size)[0])
    for i in range(spec.test_good):
        write_image(root / "test" / "good" / f"{i:03d}.png", _part(rng, spec.size)[0])
    for kind in DEFECT_TYPES:
        for i in range(spec.test_defects_per_type):
            image, mask = defective(rng, spec.size, kind)
            write_image(root / "test" / kind / f"{i:03d}.png", image)
            write_image(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    return root
