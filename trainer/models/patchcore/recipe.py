"""PatchCore's recipe: the keys a user sets in a recipe file, validated once at the edge (unknown keys fail)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from trainer.backbones.efficientnet_lite import DEFAULT_BACKBONE, BackboneName, check_taps, with_default_taps
from trainer.models.patchcore.bank import Quantization

# Default taps: the last blocks of these backbone stages (stride 8 and stride 16).
TAP_STAGES = (2, 4)


class PatchCoreRecipe(BaseModel):
    """Training recipe keys; unknown keys are rejected so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = (256, 256)
    # Lite2 (wider and deeper) against Lite0: ELPV accuracy and latency side by side under Measured in the README.
    backbone: BackboneName = DEFAULT_BACKBONE
    # Backbone blocks to tap. Left out: the ends of the stride-8 and stride-16 stages (Lite0: 4 and 10, Lite2: 6
    # and 14).
    taps: tuple[int, ...]
    # Each tap's features are multiplied by its weight, so its share of a patch distance goes with the weight
    # squared: a heavier fine tap for thin defects on smooth surfaces. On ELPV (README) (3, 1) left mono level
    # and cost poly 2-3 points, whose fine grain is normal texture; so by default (None) the taps stay even.
    tap_weights: tuple[float, ...] | None = None
    # The patch grid is averaged over grid_pool x grid_pool cells before the search, for the bank and for every
    # frame: 2 searches the stride-8 grid at stride 16, a quarter of the patches. With a 4,096-entry bank this
    # is the default because it is both faster and as accurate on ELPV (five splits, README): mono 95.56 and
    # poly 89.60 against 95.46 and 89.13 at stride 8 with 1% banks, for a sixth of the search's work.
    grid_pool: int = Field(default=2, ge=1, le=4)
    coreset_ratio: float = Field(default=0.01, gt=0, le=1)
    # Few training images at 1% leave too few patches to cover normal variation; the bank never goes below this.
    # At stride 16 a few hundred images give 1,000-1,500 entries at 1%; 2,048 cost ELPV mono 0.8 points.
    min_memory_bank: int = Field(default=4096, ge=1)
    projection_dim: int = Field(default=32, ge=4)
    max_candidates: int = Field(default=400_000, ge=1000)
    bank_quantization: Quantization = "int8"
    pq_subvector_dim: int = Field(default=4, ge=1)
    # b of the paper's image-score reweighting (its nearest bank entry's neighbourhood); 0 turns it off.
    reweight_neighbours: int = Field(default=9, ge=0)
    # 0 (the default): every patch is measured against every bank entry, the exact search. Else the search
    # takes two steps: every bank entry is ranked on the bank's first `shortlist_dim` principal axes (a lower
    # bound of its distance, at a fraction of the matmul), then the `shortlist_size` best are measured in full.
    # The shortlist is about twice as fast in torch eager, but slower baked: OpenVINO's int8 matmul over the
    # whole bank costs less than the shortlist's TopKs (README, Measured).
    shortlist_dim: int = Field(default=0, ge=0)
    shortlist_size: int = Field(default=8, ge=1)
    # Gaussian smoothing of the map, in input pixels. 8 against the paper's 4, five splits each (README): pixel
    # AUROC and AUPRO up on every split of the masked ELPV-texture sets (+0.4 to +0.8, +1.3 to +1.6 on average),
    # ELPV image AUROC level on mono and +0.27 on poly; the drawn-disc set loses 0.1 pixel AUROC and 0.4 AUPRO.
    blur_sigma: float = Field(default=8.0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _backbone_taps(cls, data: Any) -> Any:
        return with_default_taps(data, TAP_STAGES)

    _taps_in_backbone = field_validator("taps")(check_taps)

    @field_validator("tap_weights")
    @classmethod
    def _one_weight_per_tap(cls, weights: tuple[float, ...] | None, info: ValidationInfo) -> tuple[float, ...] | None:
        taps = info.data.get("taps", ())
        if weights is not None and len(weights) != len(taps):
            raise ValueError(f"{len(weights)} weight(s) for {len(taps)} tap(s); give one per tap, in the taps' order")
        if weights is not None and min(weights) <= 0:
            raise ValueError("every tap weight must be positive")
        return weights
