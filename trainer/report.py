"""The eval report folder (metrics.json, roc.png, tradeoff.png, histogram.png, grid.png, and report.html, which
holds them all in one page) and the printed summary table.

matplotlib is imported inside the plotting functions, with the Agg backend, so importing the trainer never needs
a display or pays matplotlib's start-up time.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge_agent.archive import overlay
from trainer.report_html import HTML_FILE, write_html
from trainer.targets import MISS_RATE

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from trainer.eval_result import EvalResult, GridTile
    from trainer.targets import TargetPoint

METRICS_FILE = "metrics.json"
ROC_FILE = "roc.png"
TRADEOFF_FILE = "tradeoff.png"
HISTOGRAM_FILE = "histogram.png"
GRID_FILE = "grid.png"

FIGURE_SIZE = (6.0, 4.5)  # inches
# Room around 0-100% so points on the axes' ends stay visible.
PERCENT_MARGIN = 2.0
# Colours of the targets in the trade-off plot, reused in turn when there are more targets.
TARGET_COLOURS = ("tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
FIGURE_DPI = 120
HISTOGRAM_BINS = 30
# Grid tiles are shrunk to this height so a 512 px model still gives a report image of a sensible size.
TILE_HEIGHT = 192
CAPTION_HEIGHT = 22
TITLE_HEIGHT = 26
TILE_GAP = 4
FONT = cv2.FONT_HERSHEY_SIMPLEX
CAPTION_SCALE = 0.45
TITLE_SCALE = 0.55
# BGR: red captions for images the threshold rejects, green for passes, so misses stand out at a glance.
REJECT_COLOUR = (60, 60, 255)
PASS_COLOUR = (80, 220, 80)
TITLE_COLOUR = (255, 255, 255)
BACKGROUND = 32


def write_report(result: EvalResult, folder: Path) -> list[Path]:
    """Write the report files into `folder` (created if needed); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [_write_json(result, folder / METRICS_FILE)]
    if result.roc is not None:
        written.append(plot_roc(result, folder / ROC_FILE))
        written.append(plot_tradeoff(result, folder / TRADEOFF_FILE))
    written.append(plot_histogram(result, folder / HISTOGRAM_FILE))
    plots = written[1:]
    if result.grid_goods or result.grid_defects:
        written.append(draw_grid(result, folder / GRID_FILE))
    tables = [(f"At the bundle's threshold {result.threshold:.4g}", [list(COLUMNS), *_summary_rows(result)])]
    if result.targets:
        tables.append((TARGETS_TITLE.format(threshold=result.threshold), [list(TARGET_COLUMNS), *_target_rows(result)]))
    written.append(write_html(result, folder / HTML_FILE, tables, _f1_lines(result) + _extra_lines(result), plots))
    return written


def _write_json(result: EvalResult, path: Path) -> Path:
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return path


def _figure() -> Figure:
    import matplotlib

    matplotlib.use("Agg")  # no display on build servers; must precede pyplot's first import
    import matplotlib.pyplot as plt

    figure, _ = plt.subplots(figsize=FIGURE_SIZE, dpi=FIGURE_DPI)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_roc(result: EvalResult, path: Path) -> Path:
    """Image-level ROC curve with its AUROC, and the operating point of the bundle's threshold."""
    assert result.roc is not None, "plot_roc needs a result with good and defective images"
    figure = _figure()
    axes = figure.axes[0]
    axes.plot(result.roc.fpr, result.roc.tpr, drawstyle="steps-post", label=f"ROC (AUROC = {result.image_auroc:.4f})")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    at = result.at_threshold
    if at.false_reject_rate is not None and at.escape_rate is not None:
        axes.plot(at.false_reject_rate, 1 - at.escape_rate, "o", color="red", label=f"threshold {at.threshold:.4g}")
    axes.set(xlabel="false-reject rate (goods)", ylabel="detection rate (defects)", xlim=(0, 1), ylim=(0, 1.02))
    axes.set_title(f"{result.model}: image-level ROC")
    axes.legend(loc="lower right")
    return _save(figure, path)


def plot_tradeoff(result: EvalResult, path: Path) -> Path:
    """The two costs a line weighs, both in percent: defects let through against goods rejected, one point per
    threshold (the ROC's), with the bundle's threshold and every target's point marked.

    Both axes are errors, so lower-left is better, and a target reads straight off its axis: the dashed line at
    the rate asked for, and the point the threshold meeting it lands on."""
    assert result.roc is not None, "plot_tradeoff needs a result with good and defective images"
    figure = _figure()
    axes = figure.axes[0]
    axes.plot(100 * result.roc.fpr, 100 * (1 - result.roc.tpr), ".-", color="tab:blue", label="each threshold")
    at = result.at_threshold
    if at.false_reject_rate is not None and at.escape_rate is not None:
        # A hollow ring, drawn last, so a target landing on the same point does not hide it.
        label = f"bundle threshold {at.threshold:.4g}"
        axes.plot(
            100 * at.false_reject_rate,
            100 * at.escape_rate,
            "o",
            color="red",
            label=label,
            markersize=12,
            markerfacecolor="none",
            markeredgewidth=2,
            zorder=3,
        )
    for chosen, colour in zip(result.targets, itertools.cycle(TARGET_COLOURS), strict=False):
        _mark_target(axes, chosen, colour)
    axes.set(
        xlabel="goods rejected (false-reject rate, %)",
        ylabel="defects let through (miss rate, %)",
        xlim=(-PERCENT_MARGIN, 100 + PERCENT_MARGIN),
        ylim=(-PERCENT_MARGIN, 100 + PERCENT_MARGIN),
    )
    axes.set_title(f"{result.model}: defects let through against goods rejected")
    axes.legend(loc="upper right")
    return _save(figure, path)


def _mark_target(axes: Axes, chosen: TargetPoint, colour: str) -> None:
    point, target = chosen.point, chosen.target
    rate = 100 * target.rate
    if target.method == MISS_RATE:
        axes.axhline(rate, color=colour, linestyle="--", linewidth=1)
    else:
        axes.axvline(rate, color=colour, linestyle="--", linewidth=1)
    x = 100 * point.goods_rejected / point.goods
    y = 100 * (point.defects - point.defects_caught) / point.defects
    axes.plot(x, y, "s", color=colour, markersize=7, label=f"{target.label}: threshold {point.threshold:.4g}")


def plot_histogram(result: EvalResult, path: Path) -> Path:
    """Score histograms of goods and defects on shared bins, with the threshold as a vertical line."""
    figure = _figure()
    from matplotlib.ticker import MaxNLocator

    axes = figure.axes[0]
    is_defect = result.is_defect
    bins = np.histogram_bin_edges(np.append(result.scores, result.threshold), bins=HISTOGRAM_BINS).tolist()
    for name, selected, colour in (("good", ~is_defect, "tab:green"), ("defect", is_defect, "tab:red")):
        if selected.any():
            axes.hist(result.scores[selected], bins=bins, alpha=0.6, color=colour, label=f"{name} ({selected.sum()})")
    axes.axvline(result.threshold, color="black", linestyle="--", label=f"threshold {result.threshold:.4g}")
    axes.set(xlabel="image score", ylabel="images")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of images, never fractions
    axes.set_title(f"{result.model}: image scores")
    axes.legend()
    return _save(figure, path)


def draw_grid(result: EvalResult, path: Path) -> Path:
    """Two rows of heatmap overlays: the highest-scored goods and the lowest-scored defects."""
    drawn = (
        _row("highest-scored good images (closest to a false reject)", result.grid_goods, result.threshold),
        _row("lowest-scored defective images (closest to an escape)", result.grid_defects, result.threshold),
    )
    rows = [r for r in drawn if r is not None]
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, TILE_GAP), (0, width - r.shape[1]), (0, 0)), constant_values=BACKGROUND) for r in rows]
    if not cv2.imwrite(str(path), np.vstack(padded)):
        raise OSError(f"could not write {path}")
    return path


def _row(title: str, tiles: Sequence[GridTile], threshold: float) -> np.ndarray | None:
    if not tiles:
        return None
    drawn = [_tile(t, threshold) for t in tiles]
    gap = np.full((drawn[0].shape[0], TILE_GAP, 3), BACKGROUND, dtype=np.uint8)
    body = np.hstack([part for tile in drawn for part in (tile, gap)][:-1])
    header = np.full((TITLE_HEIGHT, body.shape[1], 3), BACKGROUND, dtype=np.uint8)
    cv2.putText(header, title, (6, TITLE_HEIGHT - 8), FONT, TITLE_SCALE, TITLE_COLOUR, 1, cv2.LINE_AA)
    return np.vstack([header, body])


def _tile(tile: GridTile, threshold: float) -> np.ndarray:
    """Heatmap overlay (saturating at twice the threshold, as in the agent's archive) with a caption below."""
    heat = overlay(tile.image, tile.anomaly_map, score_scale=threshold)
    scale = TILE_HEIGHT / heat.shape[0]
    heat = cv2.resize(heat, (round(heat.shape[1] * scale), TILE_HEIGHT), interpolation=cv2.INTER_AREA)
    caption = np.full((CAPTION_HEIGHT, heat.shape[1], 3), BACKGROUND, dtype=np.uint8)
    colour = REJECT_COLOUR if tile.score >= threshold else PASS_COLOUR
    text = f"{tile.label} {tile.score:.4g}"
    cv2.putText(caption, text, (4, CAPTION_HEIGHT - 7), FONT, CAPTION_SCALE, colour, 1, cv2.LINE_AA)
    return np.vstack([heat, caption])


# --- the printed summary ------------------------------------------------------------------------------------

COLUMNS = ("set", "images", "image AUROC", "pixel AUROC", "AUPRO", "false rejects", "escapes")
TARGET_COLUMNS = ("target", "threshold", "defects caught", "goods rejected")


TARGETS_TITLE = "Thresholds that would meet the targets on these images (the bundle keeps {threshold:.4g})"


def summary_table(result: EvalResult) -> str:
    """Plain-text table: one overall row and one row per defect type, then notes."""
    at = result.at_threshold
    lines = [f"{result.model} at threshold {result.threshold:.4g}: {at.goods} good, {at.defects} defective images"]
    lines += _aligned([list(COLUMNS), *_summary_rows(result)])
    lines += _f1_lines(result)
    if result.targets:
        lines.append(TARGETS_TITLE.format(threshold=result.threshold).lower() + ":")
        lines += _aligned([list(TARGET_COLUMNS), *_target_rows(result)])
    lines += _extra_lines(result)
    return "\n".join(lines)


def _summary_rows(result: EvalResult) -> list[list[str]]:
    at = result.at_threshold
    overall = [
        "overall",
        str(len(result.paths)),
        _number(result.image_auroc),
        _number(result.pixel.pixel_auroc if result.pixel else None),
        _number(result.pixel.aupro if result.pixel else None),
        _count(at.false_rejects, at.goods),
        _count(at.escapes, at.defects),
    ]
    per_type = [
        [
            t.label,
            str(t.count),
            _number(t.image_auroc),
            _number(t.pixel.pixel_auroc if t.pixel else None),
            _number(t.pixel.aupro if t.pixel else None),
            "",
            _count(t.escapes, t.count),
        ]
        for t in result.per_type
    ]
    return [overall, *per_type]


def _f1_lines(result: EvalResult) -> list[str]:
    if result.f1_max is None:
        return []
    f1 = result.f1_max
    return [f"F1-max {f1.f1:.4f} at score {f1.threshold:.4g} (precision {f1.precision:.3f}, recall {f1.recall:.3f})"]


def _target_rows(result: EvalResult) -> list[list[str]]:
    return [
        [
            t.target.label,
            f"{t.point.threshold:.4g}",
            _count(t.point.defects_caught, t.point.defects),
            _count(t.point.goods_rejected, t.point.goods),
        ]
        for t in result.targets
    ]


def _extra_lines(result: EvalResult) -> list[str]:
    lines = [f"note: {note}" for note in result.notes]
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} unreadable image(s): {', '.join(p.name for p in result.skipped)}")
    if result.unmasked:
        lines.append(f"{len(result.unmasked)} defective image(s) without a mask take no part in pixel metrics")
    if result.seen_in_training:
        lines.append(f"left out {result.seen_in_training} good image(s) the bundle was fitted on")
    return lines


def _aligned(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    # The first column is a name (left), the rest are numbers (right), so digits line up.
    return [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _count(part: int, whole: int) -> str:
    return "-" if whole == 0 else f"{part}/{whole} {100 * part / whole:.1f}%"
