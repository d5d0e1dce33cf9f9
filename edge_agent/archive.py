"""Saves rejects (image, heatmap overlay, verdict JSON) under a dated folder, on a background thread so a slow
disk never holds up the loop."""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.verdict import Verdict

log = logging.getLogger(__name__)

PENDING_LIMIT = 64
OVERLAY_ALPHA = 0.45
# The heatmap saturates at twice the threshold, so "just over" and "far over" look different.
HEAT_SATURATION = 2.0


@dataclass(frozen=True)
class ArchiveItem:
    verdict: Verdict
    image: np.ndarray  # the model input, H x W x 3 RGB uint8
    anomaly_map: np.ndarray | None  # H x W float32
    score_scale: float


def overlay(image: np.ndarray, anomaly_map: np.ndarray, score_scale: float) -> np.ndarray:
    """The image with the anomaly map blended in as a colour heatmap (BGR, for cv2.imwrite)."""
    level = np.clip(anomaly_map / (score_scale * HEAT_SATURATION), 0, 1)
    heat = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    if heat.shape[:2] != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]))
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(bgr, 1 - OVERLAY_ALPHA, heat, OVERLAY_ALPHA, 0)


class Archive:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._queue: queue.Queue[ArchiveItem | None] = queue.Queue(PENDING_LIMIT)
        self._thread = threading.Thread(target=self._work, name="archive", daemon=True)
        self.saved = 0
        self.dropped = 0
        self.failed = 0
        self._thread.start()

    def submit(self, item: ArchiveItem) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.warning("archive is behind; not saving frame %d", item.verdict.frame_id)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def folder_for(self, verdict: Verdict) -> Path:
        day = dt.datetime.fromtimestamp(verdict.captured_at).strftime("%Y-%m-%d")
        return self.root / day / verdict.camera

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._save(item)
                self.saved += 1
            except (OSError, cv2.error) as exc:
                self.failed += 1
                log.warning("could not archive frame %d: %s", item.verdict.frame_id, exc)

    def _save(self, item: ArchiveItem) -> None:
        folder = self.folder_for(item.verdict)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{item.verdict.frame_id:08d}_{item.verdict.verdict}"
        _write(stem.with_suffix(".png"), cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR))
        if item.anomaly_map is not None:
            _write(Path(f"{stem}_heatmap.png"), overlay(item.image, item.anomaly_map, item.score_scale))
        stem.with_suffix(".json").write_bytes(item.verdict.payload())


def _write(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cv2 could not write {path}")
