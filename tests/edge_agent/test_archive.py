from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import edge_agent.archive as archive_module
from edge_agent.archive import Archive, ArchiveItem
from edge_agent.verdict import OK, REJECT, Verdict, VerdictKind

DAY = 86_400.0
START = 1_700_000_000.0


def item(frame_id: int, kind: VerdictKind, day: int = 0) -> ArchiveItem:
    verdict = Verdict(
        frame_id=frame_id,
        camera="cam0",
        captured_at=START + day * DAY,
        score=2.0 if kind == REJECT else 0.1,
        threshold=1.0,
        verdict=kind,
        model="m",
    )
    noise = np.random.default_rng(frame_id).integers(0, 255, (64, 64, 3)).astype(np.uint8)  # incompressible
    return ArchiveItem(verdict, noise, np.ones((64, 64), np.float32), 1.0)


def test_quota_removes_the_oldest_files_first_and_keeps_the_newest(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    probe = Archive(root)
    probe.submit(item(0, REJECT))
    probe.close()
    one = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    for p in root.rglob("*.png"):
        os.utime(p, (START, START))  # the first day's files are the oldest on disk
    archive = Archive(root, quota_mb=4.5 * one / 1_000_000)
    for day in range(1, 8):
        archive.submit(item(day, REJECT, day))
    archive.close()
    assert archive.pending() == 0, "close() returns once every queued item is written"
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 4.5 * one
    assert archive.deleted > 0
    assert list(root.rglob("00000007_reject*")), "the newest reject must survive"
    assert not list(root.rglob("00000000_reject.png")), "the oldest image goes first"
    day_folders = [p for p in root.iterdir() if p.is_dir()]
    assert all(any(p.rglob("*")) for p in day_folders), "emptied folders are removed"


def test_goods_are_sampled_at_the_configured_rate(tmp_path: Path) -> None:
    archive = Archive(tmp_path, good_sample_rate=0.25)
    wanted = [archive.wants(item(i, OK).verdict) for i in range(1, 17)]
    archive.close()
    assert sum(wanted) == 4
    assert archive.wants(item(3, REJECT).verdict)
    rejects_only = Archive(tmp_path / "none")
    assert not rejects_only.wants(item(4, OK).verdict)
    rejects_only.close()


def test_archives_sharing_a_folder_keep_its_quota_after_a_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each camera's agent indexes the files it saves; a rescan takes in the others' before deleting."""
    root = tmp_path / "archive"
    probe = Archive(root)
    probe.submit(item(0, REJECT))
    probe.close()
    one = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    monkeypatch.setattr(archive_module, "RESCAN_S", 0.0)
    cameras = [Archive(root, quota_mb=4.5 * one / 1_000_000) for _ in range(2)]
    for camera, first_day in zip(cameras, (1, 5), strict=True):
        for day in range(first_day, first_day + 4):
            camera.submit(item(day, REJECT, day))
        camera.close()
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) <= 4.5 * one
    assert list(root.rglob("00000008_reject*")), "the newest reject must survive"
