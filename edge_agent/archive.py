"""Saves rejects and a sample of goods (image, heatmap overlay, verdict JSON) under a dated folder, on a
background thread so a slow disk never holds up the loop, within a disk quota that removes the oldest first."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import threading
import time
from collections import deque
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
# Over quota, delete down to this share of it, so the next few saves don't each go over again.
QUOTA_LOW_WATER = 0.9
# The quota works from an index of the files: the last scan of the folder plus what this archive saved since.
# A scan walks every file with the GIL held between its system calls, which stalled the inference thread
# (at 24 rejects/s under a 200 MB quota, a scan every 5 s cost 47 drops in 10 minutes). So rescan only this
# often, to take in what other cameras' agents sharing the folder saved or removed.
RESCAN_S = 300.0
MB = 1_000_000


@dataclass(frozen=True)
class ArchiveItem:
    verdict: Verdict
    image: np.ndarray  # the model input, H x W x 3 RGB uint8
    anomaly_map: np.ndarray | None  # H x W float32
    score_scale: float
    snapshot: bool = False  # asked for by a command, whatever the verdict


def overlay(image: np.ndarray, anomaly_map: np.ndarray, score_scale: float) -> np.ndarray:
    """The image with the anomaly map blended in as a colour heatmap (BGR, for cv2.imwrite)."""
    level = np.clip(anomaly_map / (score_scale * HEAT_SATURATION), 0, 1)
    heat = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    if heat.shape[:2] != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]))
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(bgr, 1 - OVERLAY_ALPHA, heat, OVERLAY_ALPHA, 0)


def _files_oldest_first(root: Path) -> list[tuple[float, int, str]]:
    """(mtime, size, path) of every file under `root`, oldest first. Paths as plain strings: a quota of small
    images holds tens of thousands of files, and a Path object costs twice the memory of its string."""
    found: list[tuple[float, int, str]] = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue  # removed meanwhile, by another camera's agent sharing the archive
            found.append((stat.st_mtime, stat.st_size, path))
    found.sort()
    return found


def _remove_empty_folders(folder: Path, root: Path) -> None:
    """The camera and day folders a deletion emptied, up to (not including) `root`."""
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or already gone): nothing above it is empty either
        folder = folder.parent


class Archive:
    def __init__(self, root: Path, quota_mb: float = float("inf"), good_sample_rate: float = 0.0) -> None:
        self.root = root
        self.quota_bytes = quota_mb * MB
        # Every n-th good frame (by frame id), so the sample is spread evenly and costs no random state.
        self._good_every = round(1 / good_sample_rate) if good_sample_rate > 0 else 0
        self._queue: queue.Queue[ArchiveItem | None] = queue.Queue(PENDING_LIMIT)
        self._thread = threading.Thread(target=self._work, name="archive", daemon=True)
        self.saved = 0
        self.dropped = 0
        self.failed = 0
        self.deleted = 0
        # (size, path) oldest first, and their total. The first scan runs on the archive thread, so a big
        # archive never slows start-up.
        self._files: deque[tuple[int, str]] = deque()
        self._used = 0
        self._scanned_at = 0.0
        self._thread.start()

    def pending(self) -> int:
        """Items queued for the archive thread: a backlog that stays high means the disk or CPU cannot keep up."""
        return self._queue.qsize()

    def wants(self, verdict: Verdict) -> bool:
        """Rejects and errors always; goods at the configured sample rate."""
        return verdict.is_reject or (self._good_every > 0 and verdict.frame_id % self._good_every == 0)

    def submit(self, item: ArchiveItem) -> bool:
        """Queue the item for the archive thread; False when the archive is too far behind to take it."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.warning("archive is behind; not saving frame %d", item.verdict.frame_id)
            return False
        return True

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def folder_for(self, verdict: Verdict) -> Path:
        day = dt.datetime.fromtimestamp(verdict.captured_at).strftime("%Y-%m-%d")
        return self.root / day / verdict.camera

    def image_path(self, item: ArchiveItem) -> Path:
        """Where the item's image goes; its heatmap and verdict JSON go beside it with the same stem."""
        suffix = "_snapshot" if item.snapshot else ""
        return self.folder_for(item.verdict) / f"{item.verdict.frame_id:08d}_{item.verdict.verdict}{suffix}.png"

    def _work(self) -> None:
        self._scan()
        while (item := self._queue.get()) is not None:
            try:
                for size, path in self._save(item):
                    self._files.append((size, path))
                    self._used += size
                self.saved += 1
                if self._used > self.quota_bytes:
                    self._enforce_quota()
            except (OSError, cv2.error) as exc:
                self.failed += 1
                log.warning("could not archive frame %d: %s", item.verdict.frame_id, exc)

    def _scan(self) -> None:
        self._files = deque((size, path) for _, size, path in _files_oldest_first(self.root))
        self._used = sum(size for size, _ in self._files)
        self._scanned_at = time.monotonic()

    def _enforce_quota(self) -> None:
        if time.monotonic() - self._scanned_at > RESCAN_S:
            self._scan()
        target = self.quota_bytes * QUOTA_LOW_WATER
        removed = 0
        while self._files and self._used > target:
            size, path = self._files.popleft()
            with contextlib.suppress(FileNotFoundError):  # another camera's agent may have removed it first
                os.unlink(path)
            self._used -= size
            removed += 1
            _remove_empty_folders(Path(path).parent, self.root)
        self.deleted += removed
        log.info("archive over its %.0f MB quota: removed the %d oldest file(s)", self.quota_bytes / MB, removed)

    def _save(self, item: ArchiveItem) -> list[tuple[int, str]]:
        """Writes the item's files; returns the size and path of each."""
        image_path = self.image_path(item)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        stem = image_path.with_suffix("")
        written = [stem.with_suffix(".png"), stem.with_suffix(".json")]
        _write(written[0], cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR))
        if item.anomaly_map is not None:
            written.append(Path(f"{stem}_heatmap.png"))
            _write(written[-1], overlay(item.image, item.anomaly_map, item.score_scale))
        written[1].write_bytes(item.verdict.payload())
        return [(p.stat().st_size, str(p)) for p in written]


def _write(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cv2 could not write {path}")
