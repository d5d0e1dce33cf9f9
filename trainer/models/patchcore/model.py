"""PatchCore (Roth et al., CVPR 2022) on EfficientNet-Lite0 (or Lite2): locally aware patch features, a greedy coreset
memory bank (optionally quantized), nearest-neighbour patch scores with the paper's reweighting of the image
score, and a smoothed anomaly map.

`forward` takes the raw uint8 N x H x W x 3 image, so normalization is inside the exported graph and the agent
feeds camera pixels straight in.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from trainer.acceleration import batched_features
from trainer.backbones.efficientnet_lite import (
    efficientnet_lite,
    lite_input,
)
from trainer.models.fit_result import FitResult
from trainer.models.patch_features import locally_aware
from trainer.models.patchcore.bank import block_scales, int8_encode, pq_decode, pq_encode
from trainer.models.patchcore.coreset import greedy_coreset
from trainer.models.patchcore.leave_out import held_out_blocks, leave_groups_out
from trainer.models.patchcore.recipe import PatchCoreRecipe
from trainer.models.patchcore.search import nearest_in_eager, principal_axes, smallest, squared_distances
from trainer.models.prediction import Prediction
from trainer.models.smoothing import gaussian_kernel, upsample_blur

FLOAT_BYTES = 4
# int8 query features cover this many times the largest training feature, so a defect's unusually strong
# features are still told apart instead of being clipped to the normal range.
QUERY_RANGE_MARGIN = 2.0
INT8_LOW, INT8_HIGH = -128, 127
# Bank entries per group in the shortlist's first TopK (see `smallest`); the bank's index is padded to a whole
# number of groups with entries ranked beyond any real one.
SHORTLIST_GROUP = 8
PADDING_RANK = 1e15
# Validation inputs scored at once; each holds a patches x bank distance matrix, so this bounds fit's peak RSS.
VALIDATION_BATCH = 2


def patch_rows(chunks: list[np.ndarray]) -> np.ndarray:
    """Feature batches (N x D x h x w each) as one (sum N * h * w) x D array of patches, image by image. Filled in
    place and each batch released once copied: the fit's largest array is never held two or three times over
    (peak RSS of a 700-image fit)."""
    _, d, h, w = chunks[0].shape
    rows = np.empty((sum(len(c) for c in chunks) * h * w, d), np.float32)
    start = 0
    while chunks:
        batch = chunks.pop(0)
        stop = start + len(batch) * h * w
        rows[start:stop] = batch.transpose(0, 2, 3, 1).reshape(-1, d)
        start = stop
    return rows


class PatchCore(nn.Module):
    bank_float: torch.Tensor
    bank_codes: torch.Tensor
    bank_scale: torch.Tensor
    query_scale: torch.Tensor
    bank_codebooks: torch.Tensor
    bank_neighbours: torch.Tensor
    shortlist_basis: torch.Tensor
    shortlist_bank: torch.Tensor
    shortlist_norms: torch.Tensor
    block_norms: torch.Tensor
    blur_kernel: torch.Tensor
    channel_weight: torch.Tensor | None

    def __init__(self, recipe: PatchCoreRecipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.backbone = efficientnet_lite(recipe.backbone)
        self.backbone.requires_grad_(False)
        self.blocks = [self.backbone.block_channels[t] for t in recipe.taps]
        self.feature_dim = sum(self.blocks)
        # The channel blocks the search quantizes and convolves as one: every channel, unless an int8 bank has a
        # scale per tap (bundles fitted before one scale was shared), which takes one convolution per tap.
        self.search_blocks = [self.feature_dim]
        # Only the buffers of the chosen quantization exist, so the weights file holds just the codes.
        if recipe.bank_quantization == "none":
            self.register_buffer("bank_float", torch.zeros(0, self.feature_dim))
        elif recipe.bank_quantization == "int8":
            self.register_buffer("bank_codes", torch.zeros(0, self.feature_dim, dtype=torch.int8))
            self.register_buffer("bank_scale", torch.ones(self.feature_dim))
            self.register_buffer("query_scale", torch.ones(len(self.blocks)))
        else:
            subspaces = self.feature_dim // recipe.pq_subvector_dim
            self.register_buffer("bank_codes", torch.zeros(0, subspaces, dtype=torch.uint8))
            self.register_buffer("bank_codebooks", torch.zeros(subspaces, 0, recipe.pq_subvector_dim))
        self.register_buffer("bank_neighbours", torch.zeros(0, recipe.reweight_neighbours, dtype=torch.int64))
        # Each search block's share of every bank entry's squared norm (blocks x N): the bias of the exact
        # search's convolutions, derived from the bank like the shortlist index, so a constant of the baked graph.
        self.register_buffer("block_norms", torch.zeros(len(self.blocks), 0), persistent=False)
        if recipe.shortlist_dim > 0:
            rank = min(recipe.shortlist_dim, self.feature_dim)
            # Derived from the bank, so not saved: rebuilt whenever a bank is set or loaded.
            self.register_buffer("shortlist_basis", torch.zeros(self.feature_dim, rank), persistent=False)
            self.register_buffer("shortlist_bank", torch.zeros(0, rank), persistent=False)
            self.register_buffer("shortlist_norms", torch.zeros(0), persistent=False)
        self.register_buffer("blur_kernel", gaussian_kernel(recipe.blur_sigma))
        # Without weights there is no multiply at all, so the default baked graph has no extra op per frame.
        weight = None
        if recipe.tap_weights is not None:
            per_tap = [torch.full((c,), w) for c, w in zip(self.blocks, recipe.tap_weights, strict=True)]
            weight = torch.cat(per_tap).view(1, -1, 1, 1)
        self.register_buffer("channel_weight", weight, persistent=False)
        self.eval()

    def memory_bank(self) -> torch.Tensor:
        """The bank as float N x D, decoded from its stored form."""
        q = self.recipe.bank_quantization
        if q == "none":
            return self.bank_float
        if q == "int8":
            return self.bank_codes.float() * self.bank_scale
        return pq_decode(self.bank_codebooks, self.bank_codes)

    def bank_bytes(self) -> int:
        """Bytes of the stored bank (codes plus scales or codebooks), as the weights file and baked graph hold it."""
        names = {"none": ("bank_float",), "int8": ("bank_codes", "bank_scale"), "pq": ("bank_codes", "bank_codebooks")}
        return sum(
            getattr(self, n).numel() * getattr(self, n).element_size() for n in names[self.recipe.bank_quantization]
        )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        keys = super().load_state_dict(state_dict, strict, assign)
        self.index_bank(self.memory_bank())
        return keys

    def index_bank(self, decoded: torch.Tensor) -> None:
        """Builds the search's constants from the current bank, given decoded (float N x D): the search blocks
        and each one's norms, and the shortlist index when the recipe asks for one."""
        per_tap = self.recipe.bank_quantization == "int8" and (
            len(set(self.query_scale.tolist())) > 1 or len(set(self.bank_scale.tolist())) > 1
        )
        self.search_blocks = self.blocks if per_tap else [self.feature_dim]
        squares = torch.split(decoded * decoded, self.search_blocks, dim=1)
        self.block_norms = torch.stack([part.sum(1) for part in squares]) if len(decoded) else self.block_norms
        if self.recipe.shortlist_dim == 0 or len(decoded) == 0:
            return
        self.shortlist_basis = principal_axes(decoded, self.shortlist_basis.shape[1])
        padding = -len(decoded) % SHORTLIST_GROUP
        projected = decoded @ self.shortlist_basis
        self.shortlist_bank = F.pad(projected, (0, 0, 0, padding))
        self.shortlist_norms = F.pad((projected * projected).sum(-1), (0, padding), value=PADDING_RANK)

    def shortlist_bytes(self) -> int:
        """Bytes of the shortlist index (principal axes and the bank's projection), held beside the bank."""
        if self.recipe.shortlist_dim == 0:
            return 0
        parts = (self.shortlist_basis, self.shortlist_bank, self.shortlist_norms)
        return sum(t.numel() for t in parts) * FLOAT_BYTES

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> locally aware patch features N x D x h x w at the first tap's stride times
        `grid_pool`."""
        return self.tap_features(self.backbone.features(lite_input(image), self.recipe.taps))

    def tap_features(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """The backbone's outputs at the recipe's taps -> the patch features `embed` gives."""
        features = locally_aware(taps)
        if self.recipe.grid_pool > 1:
            features = F.avg_pool2d(features, self.recipe.grid_pool, ceil_mode=True)
        return features if self.channel_weight is None else features * self.channel_weight

    def _reweight(self, to_bank: torch.Tensor) -> torch.Tensor:
        """Paper eq. 7: weight in [1 - 1/b, 1) of each image's most anomalous patch, given its squared distance to
        every bank entry (n x N). It is close to 1 when that patch's nearest bank entry sits in a sparse region of
        the bank, so rare-but-normal patches count less."""
        support = self.bank_neighbours[to_bank.argmin(dim=1)]  # n x b, its nearest entry first
        # Gathering distances, not bank rows: OpenVINO mis-gathers rows of a per-column-scaled int8 constant.
        dist = to_bank.gather(1, support).sqrt()
        return 1 - torch.softmax(dist, dim=1)[:, 0]

    def _quantized_queries(self, features: torch.Tensor) -> list[torch.Tensor]:
        """The query features one search block at a time (dimension 1: patches x D, or a N x D x h x w map).
        With the int8 bank each block is quantized with its one scale, so every distance term comes from the same
        quantized values as the bank's."""
        parts = list(torch.split(features, self.search_blocks, dim=1))
        if self.recipe.bank_quantization != "int8":
            return parts
        # A Python float per block: exporters turn this into a static FakeQuantize / QuantizeLinear pair. With
        # one block, every tap's scale is the same.
        return [
            torch.fake_quantize_per_tensor_affine(part, float(scale), 0, INT8_LOW, INT8_HIGH)
            for part, scale in zip(parts, self.query_scale, strict=False)
        ]

    def _search_filters(self, start: int, width: int) -> torch.Tensor:
        """-2 x the bank's entries of one search block as 1 x 1 convolution filters (N x width x 1 x 1). The int8
        codes keep their block's single scale as a scalar, the pattern OpenVINO takes for int8 convolution
        weights."""
        if self.recipe.bank_quantization == "int8":
            codes = self.bank_codes[:, start : start + width, None, None]
            return codes.float() * (-2 * float(self.bank_scale[start]))
        return -2 * self.memory_bank()[:, start : start + width, None, None]

    def _graph_terms(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact search as the baked graph has it, on each search block's n x c x h x w query map: the sum
        over blocks of |b|^2 - 2ab (n x N x h x w), each a 1 x 1 convolution with the bank entries as its filters
        and their norms as its bias, and |a|^2 (n x h x w). OpenVINO runs these on its int8 convolution kernels
        (brgconv on AVX-512, jit 1x1 on AVX2), where the same work as a MatMul lands on oneDNN's legacy int8 GEMM
        without VNNI: 1.7-2.2x faster on AVX-512 VNNI and with oneDNN capped at AVX2 (bench/knn_head.py, README)."""
        starts = np.cumsum([0, *self.search_blocks[:-1]]).tolist()
        terms = [
            F.conv2d(q, self._search_filters(start, q.shape[1]), self.block_norms[block])
            for block, (q, start) in enumerate(zip(maps, starts, strict=True))
        ]
        # Summed from the first term: adding to a zero cost a pass over the n x N x h x w distances.
        partial = functools.reduce(torch.add, terms)
        own = functools.reduce(torch.add, [(q * q).sum(1) for q in maps])
        return partial, own

    def _nearest_in_graph(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Squared distances to the nearest entry in patch order (n * h * w); |a|^2 is added once per patch,
        after the min."""
        partial, own = self._graph_terms(maps)
        return (partial.min(dim=1).values + own).clamp_min(0).flatten()

    def _worst_in_graph(self, maps: list[torch.Tensor], worst: torch.Tensor) -> torch.Tensor:
        """n x N squared distances from each image's patch `worst` (its index in the image) to every entry: the
        search's own convolutions on that one patch, so its int8 filters serve reweighting too, where a float
        copy of the bank would be read again for one row a frame."""
        picked = [q.flatten(2).gather(2, worst.view(-1, 1, 1).expand(-1, q.shape[1], 1)).unsqueeze(-1) for q in maps]
        partial, own = self._graph_terms(picked)
        return (partial.flatten(1) + own.flatten(1)).clamp_min(0)

    def _nearest_shortlisted(self, queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """Squared L2 from each patch to the nearest of the entries closest to it on the bank's principal axes."""
        projected = queries @ self.shortlist_basis
        ranked = self.shortlist_norms - 2 * projected @ self.shortlist_bank.T
        shortlist = smallest(ranked, min(self.recipe.shortlist_size, len(bank)), SHORTLIST_GROUP)
        if self.recipe.bank_quantization == "int8":
            # Gathering the codes and scaling after: OpenVINO mis-gathers rows of a per-column-scaled int8 constant.
            entries = self.bank_codes[shortlist].float() * self.bank_scale
        else:
            entries = bank[shortlist]
        exact = ((queries.unsqueeze(1) - entries) ** 2).sum(-1)
        return exact.min(dim=1).values

    def forward(self, image: torch.Tensor) -> Prediction:
        return self._predict(self.embed(image), (image.shape[1], image.shape[2]))

    def predict_taps(self, taps: list[torch.Tensor], size: tuple[int, int]) -> Prediction:
        """`forward` from the backbone's outputs at the recipe's taps on, for a caller that runs the backbone once
        for several heads (the ensemble); `size` is the input's H x W."""
        return self._predict(self.tap_features(taps), size)

    def _predict(self, feats: torch.Tensor, size: tuple[int, int]) -> Prediction:
        n, d, h, w = feats.shape
        maps = self._quantized_queries(feats)  # per search block, n x c x h x w
        queries = torch.cat(maps, dim=1).permute(0, 2, 3, 1).reshape(-1, d)  # patches x D, image by image
        bank = self.memory_bank()
        # Both exporters trace. torch exports is_tracing unannotated and outside torch.jit.__all__.
        tracing = torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
        in_graph = self.recipe.shortlist_dim == 0 and tracing
        if in_graph:
            nearest_sq = self._nearest_in_graph(maps)
        elif self.recipe.shortlist_dim > 0:
            nearest_sq = self._nearest_shortlisted(queries, bank)
        else:
            nearest_sq = nearest_in_eager(queries, bank)
        amap = nearest_sq.sqrt().reshape(n, 1, h, w)
        amap = upsample_blur(amap, size, self.blur_kernel)
        score = amap.amax(dim=(1, 2, 3))
        if self.recipe.reweight_neighbours > 0:
            worst = nearest_sq.reshape(n, h * w).argmax(dim=1)  # each image's most anomalous patch
            if in_graph:
                to_bank = self._worst_in_graph(maps, worst)
            else:
                to_bank = squared_distances(queries[torch.arange(n) * h * w + worst], bank)
            score = score * self._reweight(to_bank)
        return Prediction(anomaly_map=amap, score=score)

    @torch.no_grad()
    def fit(
        self, train_images: np.ndarray, val_images: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> FitResult:
        """Build the memory bank from the training images (uint8 N x H x W x 3) and score the validation images
        against it. They stay out of the bank, so their scores, the threshold set from them and every bake's
        parity check judge images the model never learned from."""
        # PatchCore does not train: its features come fastest through OpenVINO on the CPU, whatever --device says.
        self.cpu()
        started = time.perf_counter()
        features, grid = self.patch_features(np.concatenate([train_images, val_images]), progress)
        h, w, d = grid
        val_features = torch.from_numpy(features[len(train_images) * h * w :].copy()).reshape(-1, h, w, d)
        features = features[: len(train_images) * h * w]
        extracted = time.perf_counter()
        summary = self.build_bank(features)
        del features  # the largest array of the fit
        built = time.perf_counter()
        validation = self.score_features(val_features.permute(0, 3, 1, 2))
        summary |= {"features_s": round(extracted - started, 2), "validation_s": round(time.perf_counter() - built, 2)}
        return FitResult(summary, validation)

    def patch_features(
        self, images: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """uint8 N x H x W x 3 -> every patch's features as (N * h * w) x D rows, image by image, and (h, w, D)."""
        chunks = batched_features(self.embed, images, self.recipe.batch_size, progress)
        d, h, w = chunks[0].shape[1:]
        return patch_rows(chunks), (h, w, d)

    def build_bank(self, features: np.ndarray) -> dict[str, Any]:
        """The coreset of the training patches (rows x D) as the bank, in the recipe's form; the fit summary's
        bank figures and stage times."""
        started = time.perf_counter()
        rows = np.arange(len(features))
        if len(features) > self.recipe.max_candidates:
            # Keeps memory and selection time bounded on large sets; the coreset size still follows the full count.
            rng = np.random.default_rng(self.recipe.seed)
            rows = np.sort(rng.choice(len(features), self.recipe.max_candidates, replace=False))
        k = max(self.recipe.min_memory_bank, round(len(features) * self.recipe.coreset_ratio))
        with tqdm(total=min(k, len(rows)), desc="coreset", unit="entry") as bar:
            chosen = greedy_coreset(features, k, self.recipe.projection_dim, self.recipe.seed, rows, bar.update)
        bank = np.ascontiguousarray(features[rows[chosen]], dtype=np.float32)
        selected = time.perf_counter()
        self.set_bank(bank, features)
        return {
            "patches": len(features),
            "candidates": len(rows),
            "memory_bank": len(bank),
            "bank_bytes": self.bank_bytes(),
            "shortlist_bytes": self.shortlist_bytes(),
            "bank_float_bytes": bank.size * FLOAT_BYTES,
            "coreset_s": round(selected - started, 2),
            "quantize_s": round(time.perf_counter() - selected, 2),
        }

    @torch.no_grad()
    def fit_leave_one_out(
        self, images: np.ndarray, groups: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> FitResult:
        """Fit on every image; the validation predictions are each input's from the bank of the other groups'
        patches (a group: the inputs of one good image), built exactly as a fit on them alone would build it."""
        self.cpu()
        features, grid = self.patch_features(images, progress)
        validation = leave_groups_out(self, features, grid, groups)
        return FitResult({**self.build_bank(features), "leave_one_out": len(np.unique(groups))}, validation)

    @torch.no_grad()
    def fit_held_out_blocks(
        self, images: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """Fit on every image, and score each block of every input's patch grid against a bank without that block
        (`held_out_blocks`): for a single good image, which has no other to leave out. The summary, and the
        scores block-major."""
        self.cpu()
        features, grid = self.patch_features(images, progress)
        scores = held_out_blocks(self, features, grid)
        return {**self.build_bank(features), "held_out_blocks": len(scores)}, scores

    def score_features(self, feats: torch.Tensor, size: tuple[int, int] | None = None) -> Prediction:
        """Predictions on patch feature maps (N x D x h x w), a few at a time; maps at `size`, default the input's."""
        size = size or (self.recipe.input_size[0], self.recipe.input_size[1])
        if len(feats) == 0:
            return Prediction(torch.zeros(0, 1, *size), torch.zeros(0))
        parts = [self._predict(feats[i : i + VALIDATION_BATCH], size) for i in range(0, len(feats), VALIDATION_BATCH)]
        return Prediction(torch.cat([p.anomaly_map for p in parts]), torch.cat([p.score for p in parts]))

    def set_bank(self, bank: np.ndarray, features: np.ndarray) -> None:
        """Store a float N x D bank in the recipe's form, with each entry's neighbour table for reweighting.
        `features` are the training patch features, whose range sets the int8 query scales."""
        q = self.recipe.bank_quantization
        if q == "none":
            self.bank_float = torch.from_numpy(bank)
        elif q == "int8":
            # One scale for all taps (their ranges differ by ~20%), so the search is one int8 convolution over
            # every channel: a scale per tap took one per tap and a pass to add their n x N x h x w outputs.
            codes, scale = int8_encode(bank, [self.feature_dim])
            self.bank_codes, self.bank_scale = torch.from_numpy(codes), torch.from_numpy(scale)
            shared = block_scales(features, [self.feature_dim], QUERY_RANGE_MARGIN)
            self.query_scale = torch.from_numpy(np.repeat(shared, len(self.blocks)))
        else:
            codebooks, codes = pq_encode(bank, self.recipe.pq_subvector_dim, self.recipe.seed)
            self.bank_codebooks, self.bank_codes = torch.from_numpy(codebooks), torch.from_numpy(codes)
        b = self.recipe.reweight_neighbours
        decoded = self.memory_bank()
        self.index_bank(decoded)
        # Each entry's b nearest entries (itself first), measured on the bank as scoring will see it.
        order = squared_distances(decoded, decoded).topk(min(b, len(decoded)), largest=False).indices
        self.bank_neighbours = order
