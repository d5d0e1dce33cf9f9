from __future__ import annotations

import numpy as np

from edge_agent.regions import find_regions


def test_boxes_are_in_frame_pixels_and_sorted_by_peak() -> None:
    amap = np.zeros((100, 100), np.float32)
    amap[10:20, 30:50] = 2.0  # weaker blob
    amap[60:70, 60:65] = 5.0  # stronger blob
    regions = find_regions(amap, threshold=1.0, frame_scale=(2.0, 4.0))
    assert regions == [
        {"x": 240, "y": 120, "w": 20, "h": 20, "peak": 5.0},
        {"x": 120, "y": 20, "w": 80, "h": 20, "peak": 2.0},
    ]


def test_nothing_above_threshold_gives_no_region() -> None:
    assert find_regions(np.ones((8, 8), np.float32), 2.0, (1.0, 1.0)) == []


def test_a_peak_inside_another_regions_box_belongs_to_that_region() -> None:
    amap = np.zeros((40, 40), np.float32)
    amap[5:35, 5] = amap[5:35, 34] = amap[5, 5:35] = 2.0  # an open frame: its box covers the middle
    amap[18:22, 18:22] = 9.0  # a separate blob inside that box
    peaks = sorted(r["peak"] for r in find_regions(amap, threshold=1.0, frame_scale=(1.0, 1.0)))
    assert peaks == [2.0, 9.0]
