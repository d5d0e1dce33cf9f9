"""Where on the frame a reject is: boxes around the parts of the anomaly map at or above the threshold."""

from __future__ import annotations

import cv2
import numpy as np

MAX_REGIONS = 8  # the largest peaks; a PLC or MES rarely wants more, and the payload stays small


def find_regions(anomaly_map: np.ndarray, threshold: float, frame_scale: tuple[float, float]) -> list[dict[str, float]]:
    """Boxes in frame pixel coordinates `{x, y, w, h, peak}`, highest peak first; `frame_scale` is frame pixels per
    map pixel along (y, x)."""
    above = (anomaly_map >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    if count <= 1:
        return []
    sy, sx = frame_scale
    regions = []
    for label in range(1, count):  # 0 is the background
        x, y, w, h, _ = stats[label]
        # Within the box only: a whole-map mask per region costs milliseconds on a noisy reject.
        inside = labels[y : y + h, x : x + w] == label
        peak = float(anomaly_map[y : y + h, x : x + w][inside].max())
        box = {"x": round(x * sx), "y": round(y * sy), "w": round(w * sx), "h": round(h * sy)}
        regions.append({**box, "peak": round(peak, 4)})
    regions.sort(key=lambda r: -r["peak"])
    return regions[:MAX_REGIONS]
