from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from in_process import run_main
from pipeline import Pipeline

import trainer.cli
from trainer.bundle import read_manifest
from trainer.data.dataset import DataError
from trainer.data.layouts import discover
from trainer.evaluate import _test_samples, evaluate
from trainer.metrics import false_reject_threshold, miss_rate_threshold
from trainer.report import summary_table, write_report

DEFECT_TYPES = ("crack", "scratch", "spot")
# 9 defects and 6 goods: 0.2 allows 1 escape, or 1 good rejected.
TARGET_RATE = 0.2


def run_trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return run_main(trainer.cli.main, "trainer", *args)


@pytest.fixture(scope="module")
def cli_eval(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    report = tmp_path_factory.mktemp("eval") / "report"
    paths = ["--model", str(pipeline.model), "--data", str(pipeline.data), "--report", str(report)]
    targets = ["--target-miss-rate", str(TARGET_RATE), "--target-false-reject-rate", str(TARGET_RATE)]
    result = run_trainer("eval", *paths, *targets)
    assert result.returncode == 0, result.stderr
    return result.stdout, report


def copy_images(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for image in sorted(source.glob("*.png")):
        shutil.copy(image, target / image.name)


def test_cli_eval_writes_the_report_folder(cli_eval: tuple[str, Path]) -> None:
    _, report = cli_eval
    for name in ("metrics.json", "roc.png", "tradeoff.png", "histogram.png", "grid.png"):
        assert (report / name).is_file(), name
    grid = cv2.imread(str(report / "grid.png"))
    assert grid is not None and grid.shape[1] > grid.shape[0]  # two rows of up to eight tiles


class PageParts(HTMLParser):
    """The report page's images, table cells, and any reference to something outside the page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: list[str] = []
        self.outside: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"] or "")
        self.outside += [v for k, v in attrs if k in ("href", "src") and v and not v.startswith("data:")]
        self._in_cell = tag == "td"

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells.append(data)
            self._in_cell = False


def test_report_html_is_one_self_contained_page_with_tables_plots_and_worst_cases(cli_eval: tuple[str, Path]) -> None:
    report = cli_eval[1]
    page = PageParts()
    page.feed((report / "report.html").read_text(encoding="utf-8"))
    assert page.outside == []  # opens from disk, alone: no file, server or CDN behind it
    decoded = [cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), 1) for src in page.images]
    assert all(image is not None for image in decoded)
    # roc, trade-off, histogram; then one overlay per good and per defect of the grid (6 goods, 9 defects here).
    assert len(page.images) == 3 + 6 + min(9, 8)
    metrics = json.loads((report / "metrics.json").read_text())
    assert {"overall", *DEFECT_TYPES} <= set(page.cells)
    assert f"{metrics['image_auroc']:.4f}" in page.cells
    assert len(metrics["targets"]) == 2 and sum("≤" in cell for cell in page.cells) == 2  # one row per target


def test_metrics_json_has_image_pixel_threshold_and_per_type_metrics(cli_eval: tuple[str, Path]) -> None:
    metrics = json.loads((cli_eval[1] / "metrics.json").read_text())
    assert metrics["image_auroc"] >= 0.9
    assert 0.5 < metrics["pixel_auroc"] <= 1.0
    assert 0.0 < metrics["aupro"] <= 1.0
    assert metrics["counts"] | {"good": 6, "defect": 9, "pixel_images": 15, "skipped": 0} == metrics["counts"]
    assert metrics["at_threshold"]["goods"] == 6 and metrics["at_threshold"]["defects"] == 9
    assert sorted(metrics["per_type"]) == list(DEFECT_TYPES)
    assert all(t["count"] == 3 and t["aupro"] is not None for t in metrics["per_type"].values())
    assert metrics["roc"]["thresholds"][0] is None  # +inf, written as null
    assert len(metrics["images"]) == 15


def test_metrics_json_lists_the_threshold_meeting_each_target(cli_eval: tuple[str, Path]) -> None:
    metrics = json.loads((cli_eval[1] / "metrics.json").read_text())
    scores = np.array([image["score"] for image in metrics["images"]], dtype=np.float32)
    is_defect = np.array([image["label"] != "good" for image in metrics["images"]])
    goods, defects = scores[~is_defect], scores[is_defect]
    thresholds = {
        "miss-rate": miss_rate_threshold(defects, TARGET_RATE),
        "false-reject-rate": false_reject_threshold(goods, TARGET_RATE),
    }
    assert [t["method"] for t in metrics["targets"]] == list(thresholds)
    for listed in metrics["targets"]:
        threshold = thresholds[listed["method"]]
        assert listed == {
            "method": listed["method"],
            "target_rate": TARGET_RATE,
            "threshold": threshold,
            "defects_caught": int((defects >= threshold).sum()),
            "defects": 9,
            "goods_rejected": int((goods >= threshold).sum()),
            "goods": 6,
        }
    miss, reject = metrics["targets"]
    assert miss["defects"] - miss["defects_caught"] <= 1 and reject["goods_rejected"] <= 1
    # The bundle's threshold is reported as before: the targets do not change it.
    assert metrics["at_threshold"]["threshold"] == read_manifest(Path(metrics["bundle"])).threshold


def test_cli_eval_prints_each_target_under_the_table(cli_eval: tuple[str, Path]) -> None:
    stdout, report = cli_eval
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("thresholds that would meet the targets"))
    header, miss, reject = lines[start + 1 : start + 4]
    assert header.split() == ["target", "threshold", "defects", "caught", "goods", "rejected"]
    assert miss.startswith("miss-rate ≤ 20%") and reject.startswith("false-reject-rate ≤ 20%")
    assert len({len(header), len(miss), len(reject)}) == 1
    targets = json.loads((report / "metrics.json").read_text())["targets"]
    assert f"{targets[0]['defects_caught']}/9" in miss and f"{targets[1]['goods_rejected']}/6" in reject


def test_cli_eval_prints_an_aligned_summary(cli_eval: tuple[str, Path]) -> None:
    stdout, _ = cli_eval
    rows = {line.split()[0]: line for line in stdout.splitlines() if line}
    assert {"set", "overall", *DEFECT_TYPES} <= rows.keys()
    assert len({len(rows[name]) for name in ("set", "overall", *DEFECT_TYPES)}) == 1


def test_goods_only_data_reports_false_rejects_not_auroc(pipeline: Pipeline, tmp_path: Path) -> None:
    data = tmp_path / "goods_only"
    copy_images(pipeline.data / "train" / "good", data / "train" / "good")
    copy_images(pipeline.data / "test" / "good", data / "test" / "good")
    result = evaluate(pipeline.model, data, None)
    assert result.image_auroc is None and result.pixel is None and result.per_type == []
    assert result.at_threshold.goods == 6 and result.at_threshold.false_reject_rate is not None
    assert any("needs labelled defective" in note for note in result.notes)
    written = {p.name for p in write_report(result, tmp_path / "report")}
    assert written == {"metrics.json", "histogram.png", "grid.png", "report.html"}
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["image_auroc"] is None and metrics["score_stats"]["good"]["count"] == 6
    assert metrics["targets"] == []
    assert "note: image AUROC needs" in summary_table(result)


def test_folder_layout_without_masks_skips_corrupt_images(pipeline: Pipeline, tmp_path: Path) -> None:
    data = tmp_path / "folder"
    copy_images(pipeline.data / "test" / "good", data / "good")
    copy_images(pipeline.data / "test" / "scratch", data / "scratch")
    (data / "scratch" / "broken.png").write_bytes(b"\x89PNG truncated")
    result = evaluate(pipeline.model, data, None)
    assert [p.name for p in result.skipped] == ["broken.png"]
    assert len(result.unmasked) == 3 and result.pixel is None
    assert result.image_auroc is not None and result.image_auroc >= 0.9
    assert [t.label for t in result.per_type] == ["scratch"] and result.per_type[0].pixel is None
    assert result.seen_in_training == 0  # the bundle was fitted on another folder


def test_folder_layout_leaves_out_goods_the_bundle_was_fitted_on(pipeline: Pipeline, tmp_path: Path) -> None:
    data = tmp_path / "fitted_here"
    copy_images(pipeline.data / "test" / "good", data / "good")
    holdout = sorted((data / "good").iterdir())[0].resolve()
    manifest = read_manifest(pipeline.model)
    training_set = manifest.training_set.model_copy(update={"root": str(data.resolve()), "holdout": [str(holdout)]})
    manifest = manifest.model_copy(update={"training_set": training_set})
    samples, seen = _test_samples(discover(data), manifest, data)
    assert [s.path.resolve() for s in samples] == [holdout]
    assert seen == 5


def test_missing_data_folder_is_a_data_error(pipeline: Pipeline, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        evaluate(pipeline.model, tmp_path / "nowhere", None)


def test_cli_eval_missing_bundle_is_one_clear_line(tmp_path: Path, pipeline: Pipeline) -> None:
    result = run_trainer(
        "eval", "--model", str(tmp_path / "nope"), "--data", str(pipeline.data), "--report", str(tmp_path / "r")
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a model bundle" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()
