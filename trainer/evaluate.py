"""`trainer eval`: score a model bundle on labelled test images and measure how well it separates defects.

Image metrics need good and defective test images; pixel metrics also need ground-truth masks. Whatever the data
cannot support is left out with a note, never a crash: a set with only good images still gets the goods' score
statistics and the false-reject rate at the bundle's threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from trainer import metrics
from trainer.bundle import ModelManifest, load_bundle
from trainer.data.dataset import GOOD, DataError, Dataset, Sample
from trainer.data.layouts import MASK_NAMING, discover
from trainer.eval_result import AtThreshold, EvalResult, GridTile, PixelMetrics, TypeMetrics
from trainer.predict import listed, warn_mixed_sizes
from trainer.scoring import Scored, predict_paths, score_samples
from trainer.targets import EVAL_OPTIONS, MISS_RATE, Target, TargetPoint, choose, coarse_warning

log = logging.getLogger(__name__)

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


def evaluate(bundle: Path, data: Path, category: str | None = None, targets: Sequence[Target] = ()) -> EvalResult:
    """Score every labelled test image of `data` with the model bundle and compute all metrics, and for each
    target the threshold that would meet it on these images (the bundle is left as it is)."""
    model, manifest = load_bundle(bundle)
    dataset = discover(data, category)
    root = data if category is None else data / category
    samples, seen = _test_samples(dataset, manifest, root)
    for folder in dataset.empty_folders:
        log.warning("%s has no images; it is left out of the evaluation", _shown(folder, root))
    if not samples:
        raise _no_test_images(dataset, data, root)
    _warn_orphan_masks(dataset, root)
    scored = score_samples(model, manifest, samples)
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
    result.targets = _target_points(result, targets)
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


def _warn_unmasked(scored: Scored, dataset: Dataset) -> None:
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


def _target_points(result: EvalResult, targets: Sequence[Target]) -> list[TargetPoint]:
    """Per target, the threshold meeting it on these images. One the data cannot measure is left out with a
    note, and one finer than a single image of its set gets a note saying so."""
    is_defect = result.is_defect
    goods, defects = result.scores[~is_defect], result.scores[is_defect]
    points: list[TargetPoint] = []
    for target in targets:
        option = EVAL_OPTIONS[target.method]
        miss = target.method == MISS_RATE
        if not (defects if miss else goods).size:
            needed = "defective" if miss else "good"
            result.notes.append(f"{option} {target.rate:g} needs labelled {needed} test images; it is left out")
            continue
        chosen = choose(target, goods, defects)
        warning = coarse_warning(chosen, option)
        if warning is not None:
            result.notes.append(warning)
        points.append(chosen)
    return points


def _pixel_metrics(scored: Scored, keep: np.ndarray) -> PixelMetrics | None:
    """Pixel AUROC and AUPRO over the rows of `scored.maps` selected by `keep`; None without defect pixels."""
    masks = scored.masks if keep.all() else scored.masks[keep]
    if not masks.any() or masks.all():
        return None
    maps = scored.maps if keep.all() else scored.maps[keep]
    return PixelMetrics(int(keep.sum()), *metrics.pixel_auroc_and_aupro(maps, masks))


def _type_metrics(result: EvalResult, scored: Scored, label: str) -> TypeMetrics:
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
    predicted = predict_paths(model, [result.paths[i] for i in chosen], manifest)
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
