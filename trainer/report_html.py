"""`report.html`: the eval report as one self-contained page. Every image is inlined as a data URI, so the page
opens from disk with no server and still shows everything after being mailed or copied on its own.

It shows what `trainer eval` printed (the overall and per-type tables, the targets), the plots the report folder
holds, and the worst cases one by one: the goods scored highest (the nearest to, or past, a false reject) and the
defects scored lowest (the nearest to, or past, an escape), each as a heatmap overlay with its file and score.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from edge_agent.archive import overlay

if TYPE_CHECKING:
    from trainer.eval_result import EvalResult, GridTile

HTML_FILE = "report.html"
# Worst-case tiles are shrunk to this width: big enough to see a thin defect, small enough for a page of 16.
TILE_WIDTH = 320

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
.plots img { max-width: 32%; margin-right: 1%; }
.tiles { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; }
figcaption { font-size: 0.85em; word-break: break-all; max-width: 320px; }
.reject { color: #c00; font-weight: bold; }
.pass { color: #080; font-weight: bold; }
.note { color: #555; }
"""


def write_html(
    result: EvalResult,
    path: Path,
    tables: Sequence[tuple[str, list[list[str]]]],
    notes: Sequence[str],
    plots: Sequence[Path],
) -> Path:
    """Write the page to `path`. `tables` are (title, header row + rows), as the printed summary has them;
    `plots` are PNG files already written, inlined in the order given."""
    at = result.at_threshold
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(result.model)} evaluation</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(result.model)} on {escape(str(result.data))}</h1>",
        f"<p>bundle <code>{escape(str(result.bundle))}</code>, input {result.input_size[1]}x{result.input_size[0]}, "
        f"threshold {result.threshold:.4g}: {at.goods} good and {at.defects} defective test images.</p>",
    ]
    for title, rows in tables:
        parts += [f"<h2>{escape(title)}</h2>", _table(rows)]
    parts += [f'<p class="note">{escape(note)}</p>' for note in notes]
    if plots:
        parts.append('<h2>Plots</h2><div class="plots">')
        parts += [f'<img alt="{escape(p.stem)}" src="{_png_uri(p.read_bytes())}">' for p in plots]
        parts.append("</div>")
    parts += _tiles("Goods scored highest (false rejects, or the nearest to one)", result.grid_goods, result.threshold)
    parts += _tiles("Defects scored lowest (escapes, or the nearest to one)", result.grid_defects, result.threshold)
    parts.append("</body></html>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _table(rows: list[list[str]]) -> str:
    header, body = rows[0], rows[1:]
    lines = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    for row in body:
        # The first column names the row; the others are numbers or counts, right-aligned so digits line up.
        cells = [f"<td>{escape(row[0])}</td>"] + [f'<td class="number">{escape(c)}</td>' for c in row[1:]]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _tiles(title: str, tiles: Sequence[GridTile], threshold: float) -> list[str]:
    if not tiles:
        return []
    parts = [f"<h2>{escape(title)}</h2>", '<div class="tiles">']
    for tile in tiles:
        # The overlay saturates at twice the threshold, as the agent's archived overlays do.
        heat = overlay(tile.image, tile.anomaly_map, score_scale=threshold)
        height = round(heat.shape[0] * TILE_WIDTH / heat.shape[1])
        heat = cv2.resize(heat, (TILE_WIDTH, height), interpolation=cv2.INTER_AREA)
        ok, png = cv2.imencode(".png", heat)
        if not ok:
            raise OSError(f"could not encode the overlay of {tile.path}")
        rejected = tile.score >= threshold
        verdict = '<span class="reject">rejected</span>' if rejected else '<span class="pass">passed</span>'
        parts.append(
            f'<figure><img alt="{escape(tile.path.name)}" src="{_png_uri(png.tobytes())}">'
            f"<figcaption>{escape(tile.label)}: {escape(tile.path.name)}<br>score {tile.score:.4g}, {verdict}"
            "</figcaption></figure>"
        )
    parts.append("</div>")
    return parts


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
