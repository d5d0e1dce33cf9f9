from __future__ import annotations

import numpy as np

from trainer.models.patchcore.coreset import greedy_coreset


def reference_kcenter(points: np.ndarray, k: int, start: int) -> list[int]:
    nearest = np.full(len(points), np.inf)
    chosen = [start]
    for _ in range(k - 1):
        nearest = np.minimum(nearest, ((points - points[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(nearest.argmax()))
    return chosen


def test_matches_plain_greedy_kcenter_without_projection() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(3000, 8)).astype(np.float32)
    chosen = greedy_coreset(points, 50, projection_dim=8, seed=3)
    expected = reference_kcenter(points.astype(np.float64), 50, int(chosen[0]))
    assert list(chosen) == expected


def test_covers_every_cluster_with_projection() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=50, size=(20, 64))
    labels = rng.integers(0, 20, 20_000)
    points = (centres[labels] + rng.normal(size=(20_000, 64))).astype(np.float32)
    chosen = greedy_coreset(points, 20, projection_dim=16, seed=0)
    assert len(set(labels[chosen])) == 20
    assert len(set(chosen.tolist())) == 20


def test_k_larger_than_points_is_clamped() -> None:
    points = np.eye(5, dtype=np.float32)
    assert sorted(greedy_coreset(points, 10, projection_dim=32, seed=0).tolist()) == [0, 1, 2, 3, 4]
