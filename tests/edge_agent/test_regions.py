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
