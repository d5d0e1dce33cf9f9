from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_agent.geometry import Geometry, combine, prepare


def frame(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_squash_resizes_both_axes() -> None:
    p = prepare(frame(300, 500), Geometry(height=100, width=100))
    assert p.inputs.shape == (1, 100, 100, 3)
    c = combine(p, [np.ones((100, 100), np.float32)], [1.0], "squash")
    assert c.frame_scale == (3.0, 5.0)


def test_letterbox_keeps_aspect_and_leaves_the_pad_out_of_the_score() -> None:
    g = Geometry(mode="letterbox", height=100, width=100)
    p = prepare(frame(100, 200), g)
    assert p.inputs.shape == (1, 100, 100, 3) and p.view.shape == (50, 100, 3)
    assert p.origins == ((25, 0),)
    amap = np.zeros((100, 100), np.float32)
    amap[:25] = 9.0  # hot pad above the image: must not count
    amap[40, 40] = 2.0
    c = combine(p, [amap], [9.0 * 0.5], "letterbox")  # the graph's score carries a 0.5 reweighting factor
    assert c.anomaly_map.shape == (50, 100)
    assert c.score == pytest.approx(1.0)
    assert c.frame_scale == (2.0, 2.0)


def test_gray_frames_become_three_channels() -> None:
    p = prepare(np.full((40, 60), 7, np.uint8), Geometry(mode="letterbox", height=32, width=32))
    assert p.inputs.shape == (1, 32, 32, 3) and int(p.inputs.min()) == 7


def test_tiles_cover_the_frame_and_stitch_by_maximum() -> None:
    g = Geometry(mode="tile", height=64, width=64, tile_overlap=0.25)
    p = prepare(frame(100, 150), g)
    ys = sorted({y for y, _ in p.origins})
    xs = sorted({x for _, x in p.origins})
    assert ys[0] == 0 and ys[-1] == 100 - 64 and xs[0] == 0 and xs[-1] == 150 - 64
    assert all(b - a <= 48 for a, b in itertools.pairwise(xs))  # overlap at least 25%
    maps = [np.full((64, 64), i, np.float32) for i in range(len(p.inputs))]
    c = combine(p, maps, [float(i) for i in range(len(p.inputs))], "tile")
    assert c.anomaly_map.shape == (100, 150)
    assert c.anomaly_map[-1, -1] == len(p.inputs) - 1  # last tile owns the corner
    assert c.score == len(p.inputs) - 1


def test_tile_scale_shrinks_the_frame_first_but_never_below_one_tile() -> None:
    p = prepare(frame(400, 400), Geometry(mode="tile", height=64, width=64, tile_scale=0.1))
    assert p.view.shape[:2] == (64, 64) and len(p.inputs) == 1
