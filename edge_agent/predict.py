"""`edge-agent predict`: the agent's model on files instead of a camera, with no broker and no archive. A line
engineer's first check of a bake on their own images: one CSV row per image or video frame, heatmap overlays,
and a summary that shows at once whether the bake behaves.

Each picture goes the way a camera frame goes in `edge-agent run`: the bundle's geometry (`infer_frame`), the
verdict rule (`decide`), and for a reject the regions its MQTT verdict would carry (`find_regions`)."""

from __future__ import annotations

import csv
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import cv2
from pydantic import ValidationError
from tqdm import tqdm

from edge_agent.archive import overlay
from edge_agent.config import ModelConfig
from edge_agent.errors import AgentError
from edge_agent.frames import image_problem
from edge_agent.geometry import Combined
from edge_agent.model import LoadedModel, load_model
from edge_agent.predict_inputs import Item, open_inputs
from edge_agent.regions import find_regions
from edge_agent.runtimes.base import infer_frame
from edge_agent.verdict import ERROR, OK, REJECT, VerdictKind, decide

log = logging.getLogger(__name__)

OverlayChoice = Literal["all", "rejects", "none"]
OVERLAY_CHOICES: tuple[OverlayChoice, ...] = get_args(OverlayChoice)
CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("file", "score", "threshold", "verdict", "regions", "error", "overlay")
OVERLAY_FOLDER = "overlays"
OUT_SUFFIX = "-predictions"
SCORE_DIGITS = 6  # as the MQTT verdict rounds it
ERRORS_NAMED = 3  # in the warning; the CSV has every one


@dataclass(frozen=True)
class Row:
    file: str
    score: float | None
    verdict: VerdictKind
    regions: list[dict[str, float]]
    error: str | None
    ms: float | None  # geometry, inference and regions; not the file's decoding


@dataclass
class Summary:
    unit: str  # image or frame
    threshold: float
    out: Path
    counts: dict[VerdictKind, int] = field(default_factory=lambda: {OK: 0, REJECT: 0, ERROR: 0})
    scores: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the files
    overlays: int = 0

    def add(self, row: Row) -> None:
        self.counts[row.verdict] += 1
        if row.score is not None:
            self.scores.append(row.score)
        if row.ms is not None:
            self.ms.append(row.ms)
        if row.error is not None:
            self.errors.append(row.file)

    def lines(self) -> list[str]:
        c = self.counts
        lines = [f"{sum(c.values())} {self.unit}(s): {c[OK]} ok, {c[REJECT]} reject, {c[ERROR]} error"]
        if self.scores:
            lines.append(
                f"score min {min(self.scores):.4g}, median {statistics.median(self.scores):.4g}, "
                f"max {max(self.scores):.4g}; threshold {self.threshold:.4g} (reject at or above)"
            )
            lines.append(
                f"median {statistics.median(self.ms):.1f} ms per {self.unit} "
                "(geometry, inference and regions; file decoding and overlays not counted)"
            )
        else:
            lines.append(f"no {self.unit} could be judged; the error column of {CSV_NAME} says why")
        where = f" and {self.overlays} overlay(s) under {self.out / OVERLAY_FOLDER}" if self.overlays else ""
        lines.append(f"wrote {self.out / CSV_NAME}{where}")
        return lines


def default_out(source: Path) -> Path:
    """Beside the input, never inside it: a later --recursive run over the folder must not judge the overlays."""
    source = source.resolve()
    return source.parent / f"{source.name}{OUT_SUFFIX}"


def model_config(path: Path, runtime: str | None, device: str, hmac_key_file: Path | None) -> ModelConfig:
    """The agent's model settings from the command line; a bad value is an AgentError naming its option."""
    try:
        return ModelConfig.model_validate(
            {"path": path, "runtime": runtime, "device": device, "hmac_key_file": hmac_key_file}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-")
        raise AgentError(f"{option} {first['input']!r}: {first['msg']}") from None


def _overlay_choice(value: str) -> OverlayChoice:
    for choice in OVERLAY_CHOICES:
        if value == choice:
            return choice
    raise AgentError(f"--overlays {value!r}: use one of {', '.join(OVERLAY_CHOICES)}")


def _check_out(out: Path) -> None:
    """Refuse an existing folder with anything in it: earlier results are never overwritten or mixed in."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AgentError(f"--out {out} exists and is not empty; choose a new or empty folder")


def judge(item: Item, model: LoadedModel) -> tuple[Row, Combined | None]:
    """The verdict `edge-agent run` would give this picture, and the model's map of it (None on an error)."""
    image = item.image
    problem = item.error if image is None else image_problem(image)
    if image is None or problem is not None:
        return Row(item.file, None, ERROR, [], problem, None), None
    info = model.info
    start = time.perf_counter()
    try:
        result = infer_frame(model.runtime, image, info.geometry)
    except Exception as exc:  # as in the agent's loop: one picture the model fails on is an error, not the end
        return Row(item.file, None, ERROR, [], f"{type(exc).__name__}: {exc}", None), None
    kind = decide(result.score, info.threshold)
    regions = find_regions(result.anomaly_map, info.threshold, result.frame_scale) if kind == REJECT else []
    ms = (time.perf_counter() - start) * 1000
    return Row(item.file, round(result.score, SCORE_DIGITS), kind, regions, None, ms), result


def _wants_overlay(choice: OverlayChoice, kind: VerdictKind) -> bool:
    return kind != ERROR and (choice == "all" or (choice == "rejects" and kind == REJECT))


def _write_overlay(path: Path, result: Combined, score_scale: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), overlay(result.view, result.anomaly_map, score_scale)):
        raise OSError(f"cv2 could not write {path}")


def predict(source: Path, config: ModelConfig, out: Path | None, overlays: str, recursive: bool) -> Summary:
    """Judge every picture under `source` with the bundle `config.path`, writing predictions.csv and the
    overlays into `out` (default: beside `source`). Bad input is an AgentError before anything is written."""
    choice = _overlay_choice(overlays)
    inputs = open_inputs(source, recursive)
    out = default_out(source) if out is None else out
    _check_out(out)
    model = load_model(config.path, config)
    info = model.info
    summary = Summary(inputs.unit, info.threshold, out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / CSV_NAME).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        # disable=None: a bar on a terminal only, so a log file does not fill with carriage returns.
        for item in tqdm(inputs.items, total=inputs.count, desc="predict", unit=inputs.unit, disable=None):
            row, result = judge(item, model)
            overlay_path = ""
            if result is not None and _wants_overlay(choice, row.verdict):
                _write_overlay(out / OVERLAY_FOLDER / item.overlay, result, info.score_scale)
                overlay_path = (Path(OVERLAY_FOLDER) / item.overlay).as_posix()
                summary.overlays += 1
            regions = "" if row.verdict == ERROR else json.dumps(row.regions, separators=(",", ":"))
            score = "" if row.score is None else row.score
            writer.writerow([row.file, score, info.threshold, row.verdict, regions, row.error or "", overlay_path])
            summary.add(row)
    if summary.errors:
        named = ", ".join(summary.errors[:ERRORS_NAMED])
        more = f" and {len(summary.errors) - ERRORS_NAMED} more" if len(summary.errors) > ERRORS_NAMED else ""
        log.warning(
            "%d %s(s) could not be judged: %s%s; the error column of %s says why",
            len(summary.errors),
            inputs.unit,
            named,
            more,
            CSV_NAME,
        )
    return summary
