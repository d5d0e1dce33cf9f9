"""The quantized memory bank: int8 codes with per-dimension scales, or product quantization (PQ).

Either way the bank is decoded to float inside `forward` (an elementwise multiply, or a gather), so the
stored weights and the baked graph's file carry the small codes while the distance matmul stays as it was.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

INT8_MAX = 127
PQ_CENTROIDS = 256  # one uint8 code per sub-vector
KMEANS_ITERATIONS = 25

Quantization = Literal["none", "int8", "pq"]


def int8_encode(bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-dimension int8: codes (N x D int8) and scales (D float32), bank ~= codes * scales."""
    scale = np.abs(bank).max(axis=0) / INT8_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
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
