"""The quantized memory bank: int8 codes with one scale per block of dimensions, or product quantization (PQ).

PatchCore fits its int8 bank as one block, one scale over every tap, so the query features are quantized the
same way and the whole search is one int8 x int8 convolution with exact integer sums (PatchCore._graph_terms);
bundles fitted earlier hold a block per tap. PQ decodes
to float inside `forward` (a gather), so only the stored file is smaller.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import torch

INT8_MAX = 127
PQ_CENTROIDS = 256  # one uint8 code per sub-vector
KMEANS_ITERATIONS = 25

Quantization = Literal["none", "int8", "pq"]


def block_scales(values: np.ndarray, blocks: list[int], margin: float = 1.0) -> np.ndarray:
    """One symmetric int8 scale per block of columns (sizes in `blocks`), covering `margin` times the largest
    magnitude seen in the block."""
    edges = np.cumsum([0, *blocks])
    peaks = [float(np.abs(values[:, lo:hi]).max(initial=0.0)) for lo, hi in itertools.pairwise(edges)]
    return np.array([margin * p / INT8_MAX if p > 0 else 1.0 for p in peaks], dtype=np.float32)


def int8_encode(bank: np.ndarray, blocks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per block of dimensions: codes (N x D int8) and per-dimension scales
    (D float32, constant within a block), bank ~= codes * scales."""
    scale = np.repeat(block_scales(bank, blocks), blocks)
    codes = np.clip(np.round(bank / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scale


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd iterations from a k-means++-lite start (random distinct points); returns centroids, labels."""
    centroids = points[rng.choice(len(points), k, replace=False)].copy()
    labels = np.zeros(len(points), np.int64)
    for _ in range(KMEANS_ITERATIONS):
        sq = (points**2).sum(1, keepdims=True) - 2 * points @ centroids.T + (centroids**2).sum(1)
        labels = sq.argmin(1)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, points)
        filled = counts > 0  # an empty cluster keeps its old centroid
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids, labels


def pq_encode(bank: np.ndarray, subvector_dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Codebooks (S x K x d float32) and codes (N x S uint8) for S = D / d sub-vectors."""
    n, dim = bank.shape
    if dim % subvector_dim:
        raise ValueError(f"pq_subvector_dim {subvector_dim} must divide the feature dimension {dim}")
    k = min(PQ_CENTROIDS, n)
    rng = np.random.default_rng(seed)
    subspaces = dim // subvector_dim
    codebooks = np.zeros((subspaces, k, subvector_dim), np.float32)
    codes = np.zeros((n, subspaces), np.uint8)
    for s in range(subspaces):
        part = np.ascontiguousarray(bank[:, s * subvector_dim : (s + 1) * subvector_dim], dtype=np.float32)
        codebooks[s], codes[:, s] = _kmeans(part, k, rng)
    return codebooks, codes


def pq_decode(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """N x D float bank from codes; a gather, which exporters keep as a constant-input op."""
    subspaces = codebooks.shape[0]
    flat = codebooks.reshape(-1, codebooks.shape[2])  # (S*K) x d
    offsets = torch.arange(subspaces, device=codes.device) * codebooks.shape[1]
    index = codes.long() + offsets  # N x S
    return flat[index.reshape(-1)].reshape(codes.shape[0], -1)
