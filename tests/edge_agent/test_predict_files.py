"""`edge-agent predict` on a real baked bundle: a folder of goods, defects and a broken file, a video, and bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest
from in_process import run_main
from pipeline import Pipeline

import edge_agent.cli
from edge_agent.bundle import load_edge_bundle
from edge_agent.cameras.folder import FolderCamera
from edge_agent.config import FolderCameraConfig, ModelConfig
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.model import load_model
from edge_agent.publish.fake import FakePublisher

DEFECT_TYPES = ("crack", "scratch", "spot")
BROKEN = "zz_broken.png"
VIDEO_FRAMES = 4


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return run_main(edge_agent.cli.main, "edge-agent", *args)


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@dataclass(frozen=True)
class Predicted:
    result: subprocess.CompletedProcess[str]
    out: Path
    rows: list[dict[str, str]]


@pytest.fixture(scope="module")
def parts(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One flat folder: the test goods and defects named `<type>_<n>.png`, and a file that is not an image."""
    folder = tmp_path_factory.mktemp("line") / "parts"
    folder.mkdir()
    for kind in ("good", *DEFECT_TYPES):
        for image in sorted((pipeline.data / "test" / kind).glob("*.png")):
            shutil.copy(image, folder / f"{kind}_{image.name}")
    (folder / BROKEN).write_bytes(b"not a png")
    return folder


@pytest.fixture(scope="module")
def predicted(parts: Path, pipeline: Pipeline) -> Predicted:
    out = parts.parent / "out"
    result = run_agent("predict", str(parts), "--model", str(pipeline.edge), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return Predicted(result, out, read_rows(out))


def test_every_image_gets_a_row_and_its_verdict_follows_the_bundles_threshold(
    predicted: Predicted, parts: Path, pipeline: Pipeline
) -> None:
    threshold = load_edge_bundle(pipeline.edge).manifest.threshold
    assert [row["file"] for row in predicted.rows] == sorted(p.name for p in parts.iterdir())
    judged = [row for row in predicted.rows if row["file"] != BROKEN]
    for row in judged:
        assert float(row["threshold"]) == threshold
        rejected = float(row["score"]) >= threshold
        assert row["verdict"] == ("reject" if rejected else "ok"), row
        assert (row["regions"] != "[]") == rejected, row
    verdicts = [row["verdict"] for row in judged]
    assert "ok" in verdicts and "reject" in verdicts


def test_defects_score_above_goods(predicted: Predicted) -> None:
    scores = {row["file"]: float(row["score"]) for row in predicted.rows if row["score"]}
    goods = [score for name, score in scores.items() if name.startswith("good_")]
    defects = [score for name, score in scores.items() if name.startswith(DEFECT_TYPES)]
    assert len(goods) == 6 and len(defects) == 9
    assert min(defects) > max(goods)


def test_overlays_are_written_for_rejects_only_by_default(predicted: Predicted) -> None:
    listed = {row["overlay"] for row in predicted.rows if row["verdict"] == "reject"}
    assert all(row["overlay"] == "" for row in predicted.rows if row["verdict"] != "reject")
    written = {p.relative_to(predicted.out).as_posix() for p in (predicted.out / "overlays").rglob("*.png")}
    assert written == listed
    for name in written:
        heatmap = cv2.imread(str(predicted.out / name))
        assert heatmap is not None and heatmap.shape == (128, 128, 3)


def test_an_unreadable_file_is_an_error_row_a_warning_and_a_count(predicted: Predicted) -> None:
    (broken,) = [row for row in predicted.rows if row["file"] == BROKEN]
    assert broken["verdict"] == "error" and "is not a readable image" in broken["error"]
    assert broken["score"] == "" and broken["overlay"] == ""
    assert f"1 image(s) could not be judged: {BROKEN}" in predicted.result.stderr
    rejects = sum(row["verdict"] == "reject" for row in predicted.rows)
    ok = sum(row["verdict"] == "ok" for row in predicted.rows)
    assert f"16 image(s): {ok} ok, {rejects} reject, 1 error" in predicted.result.stdout
    assert "ms per image" in predicted.result.stdout


def test_the_verdicts_are_the_ones_the_agent_publishes(predicted: Predicted, parts: Path, pipeline: Pipeline) -> None:
    model = load_model(pipeline.edge, ModelConfig(path=pipeline.edge))
    camera = FolderCamera("cam0", FolderCameraConfig(source="folder", path=parts))
    camera.open()
    publisher = FakePublisher()
    InspectionLoop(camera, model.runtime, publisher, model.info, LoopOptions()).run(threading.Event())
    published = {v.source: v for v in publisher.verdicts}
    judged = [row for row in predicted.rows if row["verdict"] != "error"]
    assert sorted(published) == [row["file"] for row in judged]
    for row in judged:
        verdict = published[row["file"]]
        assert (row["verdict"], float(row["score"])) == (verdict.verdict, verdict.score)
        assert json.loads(row["regions"]) == verdict.regions


def test_subfolders_are_judged_with_recursive_only(parts: Path, pipeline: Pipeline, tmp_path: Path) -> None:
    nested = tmp_path / "nested"
    for name in ("good_000.png", "spot_000.png"):
        (nested / name.split("_")[0]).mkdir(parents=True)
        shutil.copy(parts / name, nested / name.split("_")[0] / "000.png")
    flat = run_agent("predict", str(nested), "--model", str(pipeline.edge))
    assert flat.returncode == 2
    assert "add --recursive" in flat.stderr
    out = tmp_path / "out"
    args = [
        "predict",
        str(nested),
        "--recursive",
        "--overlays",
        "all",
        "--model",
        str(pipeline.edge),
        "--out",
        str(out),
    ]
    result = run_agent(*args)
    assert result.returncode == 0, result.stderr
    rows = read_rows(out)
    assert [(row["file"], row["overlay"]) for row in rows] == [
        ("good/000.png", "overlays/good/000.png"),
        ("spot/000.png", "overlays/spot/000.png"),
    ]
    assert (out / "overlays" / "good" / "000.png").is_file() and (out / "overlays" / "spot" / "000.png").is_file()


def test_a_video_gets_one_row_per_frame_beside_it_by_default(parts: Path, pipeline: Pipeline, tmp_path: Path) -> None:
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 128))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write an MJPG AVI")
    goods = sorted(parts.glob("good_*.png"))[:VIDEO_FRAMES]
    for image in goods:
        writer.write(cv2.imread(str(image)))
    writer.release()
    result = run_agent("predict", str(video), "--model", str(pipeline.edge), "--overlays", "all")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "line.avi-predictions"
    rows = read_rows(out)
    assert [row["file"] for row in rows] == [f"line.avi#{i}" for i in range(1, VIDEO_FRAMES + 1)]
    assert [row["overlay"] for row in rows] == [f"overlays/line_{i:06d}.png" for i in range(1, VIDEO_FRAMES + 1)]
    assert all(row["verdict"] in ("ok", "reject") and row["score"] for row in rows)
    assert f"{VIDEO_FRAMES} frame(s):" in result.stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_input", "does not exist; give a folder of images or a video file"),
        ("not_a_video", "as a video"),
        ("missing_bundle", "no edge bundle at"),
        ("used_out", "exists and is not empty; choose a new or empty folder"),
        ("bad_overlays", "--overlays 'some': use one of all, rejects, none"),
        ("bad_device", "--device 'TPU'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(
    case: str, message: str, parts: Path, pipeline: Pipeline, tmp_path: Path
) -> None:
    source = {"missing_input": tmp_path / "absent", "not_a_video": tmp_path / "notes.txt"}.get(case, parts)
    (tmp_path / "notes.txt").write_text("not a video")
    model = tmp_path / "nothing" if case == "missing_bundle" else pipeline.edge
    out = tmp_path / "out"
    if case == "used_out":
        out.mkdir()
        (out / "predictions.csv").write_text("earlier results\n")
    options = {"bad_overlays": ["--overlays", "some"], "bad_device": ["--device", "TPU"]}.get(case, [])
    result = run_agent("predict", str(source), "--model", str(model), "--out", str(out), *options)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    if case == "used_out":
        assert (out / "predictions.csv").read_text() == "earlier results\n"
    else:
        assert not out.exists()


def test_help_shows_examples() -> None:
    result = run_agent("predict", "--help")
    assert result.returncode == 0
    assert "edge-agent predict images/press2 --model edge/press2 --recursive" in result.stdout
    assert "edge-agent predict line3.mp4 --model edge/press2 --overlays all" in result.stdout


def test_one_image_file_is_judged_alone(parts: Path, pipeline: Pipeline, tmp_path: Path) -> None:
    image = shutil.copy(parts / "spot_000.png", tmp_path / "spot_000.png")
    result = run_agent("predict", str(image), "--model", str(pipeline.edge), "--overlays", "none")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "spot_000.png-predictions"
    assert [(row["file"], row["verdict"], row["overlay"]) for row in read_rows(out)] == [("spot_000.png", "reject", "")]
    assert not (out / "overlays").exists()
