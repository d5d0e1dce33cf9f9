from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.models.prediction import Prediction


@dataclass(frozen=True)
class FitResult:
    """What every model's `fit` returns: a summary for the manifest, and its predictions on the validation inputs
    as the fitted model would make them had it never seen those inputs (fit calibrates the threshold on them)."""

    summary: dict[str, Any]
    validation: Prediction
