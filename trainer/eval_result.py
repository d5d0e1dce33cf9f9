"""What `trainer eval` measured: the result of one evaluation and its metrics.json form.

Apart from the evaluation that fills it, so the report can draw and write a result without importing the
evaluation (and torch with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer import metrics
from trainer.data.dataset import GOOD
from trainer.targets import TargetPoint


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
    targets: list[TargetPoint] = field(default_factory=list)  # thresholds meeting `trainer eval --target-*`
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
        "targets": [_target_json(t) for t in result.targets],
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


def _target_json(chosen: TargetPoint) -> dict[str, Any]:
    point = chosen.point
    return {
        "method": chosen.target.method,
        "target_rate": chosen.target.rate,
        "threshold": point.threshold,
        "defects_caught": point.defects_caught,
        "defects": point.defects,
        "goods_rejected": point.goods_rejected,
        "goods": point.goods,
    }


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
