"""`trainer eval`: score a model bundle on labelled test images and measure how well it separates defects.

Image metrics need good and defective test images; pixel metrics also need ground-truth masks. Whatever the data
cannot support is left out with a note, never a crash: a set with only good images still gets the goods' score
statistics and the false-reject rate at the bundle's threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch import nn
from tqdm import tqdm

from trainer import metrics
from trainer.bundle import InputSpec, ModelManifest, load_bundle
from trainer.data.dataset import GOOD, DataError, Dataset, Sample
from trainer.data.layouts import MASK_NAMING, discover
from trainer.predict import listed, on_grid, predict, read_frames, warn_mixed_sizes
from trainer.report import write_report

__all__ = ["EvalResult", "evaluate", "write_report"]

log = logging.getLogger(__name__)

EVAL_BATCH = 16
# Tiles in the report grid: the goods closest to a false reject, the defects closest to an escape.
GRID_PER_ROW = 8
NEEDS_DEFECTS = (
    "image AUROC needs labelled defective test images; only the goods' scores and false-reject rate are reported"
)
NEEDS_GOODS = (
    "image AUROC needs good test images the model never learned from (put some in test/good, or in a folder "
    "not passed to `trainer fit`); only the defects' scores and escape rate are reported"
)
NEEDS_MASKS = "pixel AUROC and AUPRO need ground-truth masks of defective images"
# Files named in one warning line; the count says how many more there are.
MAX_NAMED = 5


# --- input geometry: frames go through the bundle's geometry (as in the agent); maps and masks meet on a grid ---


@dataclass(frozen=True)
class _Predicted:
    paths: list[Path]
    skipped: list[Path]
    shapes: list[tuple[int, int]]  # (height, width) of each frame as stored
    scores: np.ndarray  # N
    views: np.ndarray  # N x H x W x 3 uint8, each frame as the model saw it, on the eval grid
    maps: np.ndarray  # N x H x W float32, on the eval grid


def _predict_paths(model: nn.Module, paths: Sequence[Path], manifest: ModelManifest) -> _Predicted:
    """Scores and grid maps of image files; unreadable files come back in `skipped`."""
    frames, kept, skipped = read_frames(paths)
    combined = predict(model, frames, manifest.geometry)
    on = [on_grid(c, manifest.input.height, manifest.input.width) for c in combined]
    h, w = manifest.input.height, manifest.input.width
    return _Predicted(
        kept,
        skipped,
        [(f.shape[0], f.shape[1]) for f in frames],
        np.array([c.score for c in combined], dtype=np.float32),
        np.stack([v for v, _ in on]) if on else np.zeros((0, h, w, 3), np.uint8),
        np.stack([m for _, m in on]) if on else np.zeros((0, h, w), np.float32),
    )


def mask_to_grid(mask: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A ground-truth mask as stored -> boolean H x W on the eval grid (nearest keeps it binary)."""
    if mask.shape[:2] != (spec.height, spec.width):
        mask = cv2.resize(mask, (spec.width, spec.height), interpolation=cv2.INTER_NEAREST)
    return mask > 0


# --- results -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AtThreshold:
    """What the line would do at the bundle's calibrated threshold (`score >= threshold` rejects)."""

    threshold: float
    goods: int
    false_rejects: int
    defects: int
    escapes: int

    @property
    def false_reject_rate(self) -> float | None:
        return self.false_rejects / self.goods if self.goods else None

    @property
    def escape_rate(self) -> float | None:
        return self.escapes / self.defects if self.defects else None


@dataclass(frozen=True)
class PixelMetrics:
    images: int  # images whose masks took part (goods plus masked defects)
    pixel_auroc: float
    aupro: float


@dataclass(frozen=True)
class TypeMetrics:
    label: str
    count: int
    image_auroc: float | None  # this type against all goods
    escapes: int
    pixel: PixelMetrics | None

    @property
    def escape_rate(self) -> float:
        return self.escapes / self.count


@dataclass(frozen=True)
class GridTile:
    path: Path
    label: str
    score: float
    image: np.ndarray  # model input, H x W x 3 RGB uint8
    anomaly_map: np.ndarray  # H x W float32


@dataclass
class EvalResult:
    bundle: Path
    data: Path
    category: str | None
    model: str
    input_size: tuple[int, int]
    threshold: float
    paths: list[Path]  # scored test images, in data order
    labels: list[str]
    scores: np.ndarray
    at_threshold: AtThreshold
    image_auroc: float | None = None
    roc: metrics.RocCurve | None = None
    f1_max: metrics.F1Max | None = None
    pixel: PixelMetrics | None = None
    per_type: list[TypeMetrics] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # unreadable test images
    unmasked: list[Path] = field(default_factory=list)  # defects without a (readable) mask: no pixel metrics
    seen_in_training: int = 0  # good images left out because the bundle was fitted on them
    grid_goods: list[GridTile] = field(default_factory=list)
    grid_defects: list[GridTile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_defect(self) -> np.ndarray:
        return np.array([label != GOOD for label in self.labels], dtype=bool)

    def to_json(self) -> dict[str, Any]:
        """Everything measured, as plain JSON values (non-finite floats become null)."""
        safe: dict[str, Any] = _json_safe(_result_json(self))
        return safe


# --- evaluation ---------------------------------------------------------------------------------------------


@dataclass
class _Scored:
    """Scores of every readable test image, and maps + masks of those that can take part in pixel metrics."""

    samples: list[Sample]
    scores: np.ndarray
    skipped: list[Path]
    shapes: list[tuple[int, int]]  # (height, width) of each sample's frame as stored
    pixel_index: list[int]  # index into `samples` of each row of `maps`/`masks`
    maps: np.ndarray  # P x H x W float32
    masks: np.ndarray  # P x H x W bool
    unmasked: list[Path]


def evaluate(bundle: Path, data: Path, category: str | None = None) -> EvalResult:
    """Score every labelled test image of `data` with the model bundle and compute all metrics."""
    model, manifest = load_bundle(bundle)
    dataset = discover(data, category)
    root = data if category is None else data / category
    samples, seen = _test_samples(dataset, manifest, root)
    for folder in dataset.empty_folders:
        log.warning("%s has no images; it is left out of the evaluation", _shown(folder, root))
    if not samples:
        raise _no_test_images(dataset, data, root)
    _warn_orphan_masks(dataset, root)
    scored = _score(model, manifest, samples)
    if len(scored.samples) == 0:
        raise DataError(f"none of the {len(samples)} test images in {data} could be read")
    warn_mixed_sizes(scored.shapes, "test images", manifest.geometry, "bundle's")
    _warn_unmasked(scored, dataset)
    labels = [s.label for s in scored.samples]
    result = EvalResult(
        bundle=bundle,
        data=data,
        category=category,
        model=manifest.model,
        input_size=(manifest.input.height, manifest.input.width),
        threshold=manifest.threshold,
        paths=[s.path for s in scored.samples],
        labels=labels,
        scores=scored.scores,
        at_threshold=_at_threshold(scored.scores, np.array([s.is_defect for s in scored.samples]), manifest.threshold),
        skipped=scored.skipped,
        unmasked=scored.unmasked,
        seen_in_training=seen,
    )
    _image_metrics(result)
    result.pixel = _pixel_metrics(scored, keep=np.ones(len(scored.pixel_index), dtype=bool))
    if result.pixel is None and result.is_defect.any():
        result.notes.append(NEEDS_MASKS)
    result.per_type = [_type_metrics(result, scored, label) for label in sorted(set(labels) - {GOOD})]
    result.grid_goods, result.grid_defects = _grid_tiles(model, manifest, result)
    return result


def _shown(path: Path, root: Path) -> str:
    """A path as the user knows it: under the data folder they passed, when it is there."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _no_test_images(dataset: Dataset, data: Path, root: Path) -> DataError:
    if dataset.empty_folders:
        empty = ", ".join(_shown(f, root) for f in dataset.empty_folders)
        return DataError(
            f"no test images in {data}: {empty} {'has' if len(dataset.empty_folders) == 1 else 'have'} no images, "
            "and image AUROC needs defective test images (and good ones the model never learned from); add them"
        )
    return DataError(f"no test images in {data}: add test/good and test/<defect> (or defect folders beside good/)")


def _warn_orphan_masks(dataset: Dataset, root: Path) -> None:
    if not dataset.orphan_masks:
        return
    log.warning(
        "%d mask file(s) match no test image and are not used: %s; a mask is named after its image (%s)",
        len(dataset.orphan_masks),
        listed([_shown(m, root) for m in dataset.orphan_masks], MAX_NAMED),
        MASK_NAMING.get(dataset.layout, "see DESIGN.md"),
    )


def _warn_unmasked(scored: _Scored, dataset: Dataset) -> None:
    """Name defects without a mask when the data set has masks at all: then a missing one is likely a mistake.
    Without any masks, the NEEDS_MASKS note says it once, as for ELPV, which has none by design."""
    has_masks = dataset.orphan_masks or any(s.mask is not None for s in dataset.test if s.is_defect)
    if not scored.unmasked or not has_masks:
        return
    defects = sum(s.is_defect for s in scored.samples)
    masked = defects - len(scored.unmasked)
    log.warning(
        "%d of %d defective test images have no usable mask: %s; pixel AUROC and AUPRO are computed over the %d "
        "with masks and the goods (masks go in %s)",
        len(scored.unmasked),
        defects,
        listed([f"{p.parent.name}/{p.name}" for p in scored.unmasked], MAX_NAMED),
        masked,
        MASK_NAMING.get(dataset.layout, "the layout's mask folder"),
    )


def _test_samples(dataset: Dataset, manifest: ModelManifest, root: Path) -> tuple[list[Sample], int]:
    """The labelled test images, and how many good images were left out as seen in training.

    The folder layout has no test/good: its good/ images are the goods to test. When the bundle was fitted on
    this very folder, only its hold-out images are fair; the others would flatter the false-reject rate.
    """
    if dataset.layout != "folder":
        return list(dataset.test), 0
    trained_root = Path(manifest.training_set.root).resolve()
    holdout = set(manifest.training_set.holdout)
    goods: list[Sample] = []
    seen = 0
    for path in dataset.train:
        resolved = path.resolve()
        if resolved.is_relative_to(trained_root) and str(resolved) not in holdout:
            seen += 1
            continue
        goods.append(Sample(path, GOOD))
    if seen:
        log.info("left out %d good image(s) of %s that the bundle was fitted on", seen, root)
    return goods + list(dataset.test), seen


def _batches(items: Sequence[Sample], size: int) -> Iterator[Sequence[Sample]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read_mask(sample: Sample, spec: InputSpec) -> np.ndarray | None:
    """The sample's mask on the input grid; all-zero for goods; None for a defect without a usable mask."""
    if not sample.is_defect:
        return np.zeros((spec.height, spec.width), dtype=bool)
    if sample.mask is None:
        return None
    raw = cv2.imread(str(sample.mask), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        log.warning("mask %s is unreadable; %s takes no part in pixel metrics", sample.mask, sample.path)
        return None
    return mask_to_grid(raw, spec)


class _Collector:
    """Gathers scores of readable images, and maps + masks of those that can take part in pixel metrics."""

    def __init__(self, samples: list[Sample], spec: InputSpec) -> None:
        self.spec = spec
        # Preallocated at the most it can hold, so pixel data is never copied while collecting it.
        capacity = sum(1 for s in samples if not s.is_defect or s.mask is not None)
        self.maps = np.empty((capacity, spec.height, spec.width), dtype=np.float32)
        self.masks = np.empty((capacity, spec.height, spec.width), dtype=bool)
        self.kept: list[Sample] = []
        self.scores: list[float] = []
        self.skipped: list[Path] = []
        self.unmasked: list[Path] = []
        self.pixel_index: list[int] = []
        self.shapes: list[tuple[int, int]] = []

    def add(self, sample: Sample, score: float, amap: np.ndarray, shape: tuple[int, int]) -> None:
        mask = _read_mask(sample, self.spec)
        if mask is None:
            self.unmasked.append(sample.path)
        else:
            row = len(self.pixel_index)
            self.maps[row], self.masks[row] = amap, mask
            self.pixel_index.append(len(self.kept))
        self.kept.append(sample)
        self.scores.append(score)
        self.shapes.append(shape)

    def result(self) -> _Scored:
        rows = len(self.pixel_index)
        scores = np.array(self.scores, dtype=np.float32)
        return _Scored(
            self.kept,
            scores,
            self.skipped,
            self.shapes,
            self.pixel_index,
            self.maps[:rows],
            self.masks[:rows],
            self.unmasked,
        )


def _score(model: nn.Module, manifest: ModelManifest, samples: list[Sample]) -> _Scored:
    by_path = {s.path: s for s in samples}
    collector = _Collector(samples, manifest.input)
    with tqdm(total=len(samples), desc="scoring test images", unit="img") as bar:
        for batch in _batches(samples, EVAL_BATCH):
            predicted = _predict_paths(model, [s.path for s in batch], manifest)
            collector.skipped += predicted.skipped
            for path, shape, score, amap in zip(
                predicted.paths, predicted.shapes, predicted.scores, predicted.maps, strict=True
            ):
                collector.add(by_path[path], float(score), amap, shape)
            bar.update(len(batch))
    return collector.result()


def _at_threshold(scores: np.ndarray, is_defect: np.ndarray, threshold: float) -> AtThreshold:
    return AtThreshold(
        threshold=threshold,
        goods=int((~is_defect).sum()),
        false_rejects=int((scores[~is_defect] >= threshold).sum()),
        defects=int(is_defect.sum()),
        escapes=int((scores[is_defect] < threshold).sum()),
    )


def _image_metrics(result: EvalResult) -> None:
    is_defect = result.is_defect
    if not is_defect.any():
        result.notes.append(NEEDS_DEFECTS)
        return
    if is_defect.all():
        result.notes.append(NEEDS_GOODS)
        return
    result.image_auroc = metrics.image_auroc(result.scores, is_defect)
    result.roc = metrics.roc_curve(result.scores, is_defect)
    result.f1_max = metrics.f1_max(result.scores, is_defect)


def _pixel_metrics(scored: _Scored, keep: np.ndarray) -> PixelMetrics | None:
    """Pixel AUROC and AUPRO over the rows of `scored.maps` selected by `keep`; None without defect pixels."""
    masks = scored.masks if keep.all() else scored.masks[keep]
    if not masks.any() or masks.all():
        return None
    maps = scored.maps if keep.all() else scored.maps[keep]
    return PixelMetrics(int(keep.sum()), *metrics.pixel_auroc_and_aupro(maps, masks))


def _type_metrics(result: EvalResult, scored: _Scored, label: str) -> TypeMetrics:
    labels = np.array(result.labels)
    of_type = labels == label
    goods = labels == GOOD
    type_scores = result.scores[of_type]
    auroc = None
    if goods.any():
        both = of_type | goods
        auroc = metrics.image_auroc(result.scores[both], of_type[both])
    # Pixel metrics of a type: its masked images together with all goods, as the image AUROC does.
    pixel_labels = labels[scored.pixel_index] if scored.pixel_index else np.zeros(0, dtype=str)
    keep = (pixel_labels == label) | (pixel_labels == GOOD)
    pixel = _pixel_metrics(scored, keep) if (pixel_labels == label).any() else None
    escapes = int((type_scores < result.threshold).sum())
    return TypeMetrics(label, int(of_type.sum()), auroc, escapes, pixel)


def _grid_choice(result: EvalResult) -> list[int]:
    """Indices of the goods scored highest and the defects scored lowest: the cases nearest to a wrong verdict."""
    is_defect = result.is_defect
    order = np.argsort(result.scores, kind="stable")
    worst_goods = [int(i) for i in order[::-1] if not is_defect[i]][:GRID_PER_ROW]
    worst_defects = [int(i) for i in order if is_defect[i]][:GRID_PER_ROW]
    return worst_goods + worst_defects


def _grid_tiles(model: nn.Module, manifest: ModelManifest, result: EvalResult) -> tuple[list[GridTile], list[GridTile]]:
    """The report grid's images, predicted again: at most two rows, so cheaper than keeping every view."""
    chosen = _grid_choice(result)
    predicted = _predict_paths(model, [result.paths[i] for i in chosen], manifest)
    if predicted.skipped:
        log.warning("%d grid image(s) could not be read again; the report grid leaves them out", len(predicted.skipped))
    index_of = {result.paths[i]: i for i in chosen}
    tiles = [
        GridTile(path, result.labels[index_of[path]], float(score), view, amap)
        for path, score, view, amap in zip(
            predicted.paths, predicted.scores, predicted.views, predicted.maps, strict=True
        )
    ]
    return [t for t in tiles if t.label == GOOD], [t for t in tiles if t.label != GOOD]


# --- JSON ---------------------------------------------------------------------------------------------------


def _result_json(result: EvalResult) -> dict[str, Any]:
    at = result.at_threshold
    is_defect = result.is_defect
    return {
        "bundle": str(result.bundle),
        "data": str(result.data),
        "category": result.category,
        "model": result.model,
        "input": {"height": result.input_size[0], "width": result.input_size[1]},
        "counts": {
            "images": len(result.paths),
            "good": int((~is_defect).sum()),
            "defect": int(is_defect.sum()),
            "pixel_images": result.pixel.images if result.pixel else 0,
            "skipped": len(result.skipped),
            "defects_without_masks": len(result.unmasked),
            "goods_seen_in_training": result.seen_in_training,
        },
        "image_auroc": result.image_auroc,
        "pixel_auroc": result.pixel.pixel_auroc if result.pixel else None,
        "aupro": result.pixel.aupro if result.pixel else None,
        "aupro_fpr_limit": metrics.AUPRO_FPR_LIMIT,
        "f1_max": _f1_json(result.f1_max),
        "at_threshold": {
            "threshold": at.threshold,
            "goods": at.goods,
            "false_rejects": at.false_rejects,
            "false_reject_rate": at.false_reject_rate,
            "defects": at.defects,
            "escapes": at.escapes,
            "escape_rate": at.escape_rate,
        },
        "score_stats": {
            name: metrics.score_stats(result.scores[selected]) if selected.any() else None
            for name, selected in (("good", ~is_defect), ("defect", is_defect))
        },
        "per_type": {t.label: _type_json(t) for t in result.per_type},
        "roc": _roc_json(result.roc),
        "notes": result.notes,
        "skipped": [str(p) for p in result.skipped],
        "defects_without_masks": [str(p) for p in result.unmasked],
        "images": [
            {"path": str(p), "label": label, "score": float(s)}
            for p, label, s in zip(result.paths, result.labels, result.scores, strict=True)
        ],
    }


def _f1_json(f1: metrics.F1Max | None) -> dict[str, float] | None:
    if f1 is None:
        return None
    return {"f1": f1.f1, "threshold": f1.threshold, "precision": f1.precision, "recall": f1.recall}


def _roc_json(roc: metrics.RocCurve | None) -> dict[str, list[float]] | None:
    if roc is None:
        return None
    return {"fpr": roc.fpr.tolist(), "tpr": roc.tpr.tolist(), "thresholds": roc.thresholds.tolist()}


def _type_json(t: TypeMetrics) -> dict[str, Any]:
    return {
        "count": t.count,
        "image_auroc": t.image_auroc,
        "escapes": t.escapes,
        "escape_rate": t.escape_rate,
        "pixel_images": t.pixel.images if t.pixel else 0,
        "pixel_auroc": t.pixel.pixel_auroc if t.pixel else None,
        "aupro": t.pixel.aupro if t.pixel else None,
    }


def _json_safe(value: Any) -> Any:
    """JSON has no inf/NaN (the ROC's first threshold is +inf): write them as null."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
