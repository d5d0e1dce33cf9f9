"""`converter benchmark`: every model family on one data set, through the whole product path. Each family is
fitted with its default recipe (or the recipe file given for it), evaluated by `trainer eval` on the data set's
labelled test images, and baked for OpenVINO fp32 and int8, with the test defects as `--defects` so that the
int8 guard also bounds the AUROC change, as a user with labelled defects would bake. The int8 bake is scored on
the same test images through the agent's runtime, and both bakes are timed per frame as the agent runs them (in a
fresh process, taking turns). One table comes out: accuracy of the model and of its int8 bake, the operating
point at the fitted threshold, fit time, latency and bundle size.

It lives in the converters because it bakes: the trainer never imports the converters.
"""

from __future__ import annotations

import csv
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from converters.bake import BakeError, BakeOptions, bake
from converters.latency import measure_in_fresh_process
from edge_agent.bundle import load_edge_bundle
from edge_agent.config import ModelConfig
from edge_agent.runtimes import make_runtime
from edge_agent.runtimes.base import infer_frame
from edge_agent.runtimes.openvino_ops import cpu_isa
from trainer.evaluate import evaluate
from trainer.fit import FitOptions, fit
from trainer.metrics import image_auroc
from trainer.predict import read_frames

PERCENT = 100.0
MEGABYTE = 1e6
PRECISIONS = ("fp32", "int8")
CSV_FILE = "benchmark.csv"
MARKDOWN_FILE = "benchmark.md"


@dataclass(frozen=True)
class BenchmarkOptions:
    data: Path
    models: tuple[str, ...]
    out: Path  # one folder per family (its model bundle and bakes), plus the table files
    category: str | None = None
    recipes: dict[str, Path] | None = None  # a recipe file per family; the others use their defaults
    frames: int = 200  # timed frames per bake
    seed: int = 0


@dataclass(frozen=True)
class FamilyResult:
    model: str
    fit_s: float
    image_auroc: float | None  # percent, the model as `trainer eval` scores it
    pixel_auroc: float | None
    aupro: float | None
    goods_rejected: float | None  # percent of the test goods at the fitted threshold
    defects_caught: float | None  # percent of the test defects at the fitted threshold
    int8_image_auroc: float | None  # percent, the int8 bake through the agent's runtime
    fp32_ms: float | None  # p50 per frame, batch 1
    int8_ms: float | None
    fp32_mb: float | None  # edge bundle on disk
    int8_mb: float | None
    note: str = ""


def run_benchmark(options: BenchmarkOptions) -> list[FamilyResult]:
    return [_family(name, options) for name in options.models]


def _family(name: str, options: BenchmarkOptions) -> FamilyResult:
    folder = options.out / name
    recipe = (options.recipes or {}).get(name)
    started = time.perf_counter()
    fit(FitOptions(data=options.data, model=name, out=folder / "model", recipe=recipe, category=options.category))
    fit_s = time.perf_counter() - started
    evaluated = evaluate(folder / "model", options.data, options.category)
    at = evaluated.at_threshold
    defects = _linked(folder / "defects", [p for p, d in zip(evaluated.paths, evaluated.is_defect, strict=True) if d])
    edges: dict[str, Path] = {}
    notes: list[str] = []
    for precision in PRECISIONS:
        edge = folder / f"openvino-{precision}"
        try:
            bake(BakeOptions(bundle=folder / "model", out=edge, precision=precision, defects=defects))
            edges[precision] = edge
        except BakeError as exc:  # the int8 guard refused it: say so, and keep the rest of the row
            notes.append(f"{precision} not baked: {exc}")
    timed = measure_in_fresh_process(list(edges.values()), options.frames) if edges else []
    ms = dict(zip(edges, timed, strict=True))
    pixel = evaluated.pixel
    return FamilyResult(
        model=name,
        fit_s=fit_s,
        image_auroc=_percent(evaluated.image_auroc),
        pixel_auroc=_percent(pixel.pixel_auroc if pixel else None),
        aupro=_percent(pixel.aupro if pixel else None),
        goods_rejected=_percent(at.false_reject_rate),
        defects_caught=None if at.escape_rate is None else PERCENT * (1 - at.escape_rate),
        int8_image_auroc=_baked_auroc(edges["int8"], evaluated.paths, evaluated.is_defect) if "int8" in edges else None,
        fp32_ms=_p50(ms.get("fp32")),
        int8_ms=_p50(ms.get("int8")),
        fp32_mb=_size_mb(edges.get("fp32")),
        int8_mb=_size_mb(edges.get("int8")),
        note="; ".join(notes),
    )


def _linked(folder: Path, paths: list[Path]) -> Path | None:
    """A folder of links to `paths` (bake's --defects takes one folder; test defects sit in one per type)."""
    if not paths:
        return None
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, path in enumerate(paths):
        (folder / f"{i:05d}-{path.name}").symlink_to(path.resolve())
    return folder


def _baked_auroc(edge: Path, paths: list[Path], is_defect: np.ndarray) -> float | None:
    """Image AUROC of the edge bundle on the images `trainer eval` scored, through the agent's own runtime."""
    if is_defect.all() or not is_defect.any():
        return None
    bundle = load_edge_bundle(edge)
    runtime = make_runtime(bundle, ModelConfig(path=edge))
    geometry = bundle.manifest.geometry
    frames, kept, _ = read_frames(paths)
    scores = [infer_frame(runtime, f, geometry).score for f in tqdm(frames, desc=f"scoring {edge.name}", unit="img")]
    row_of = {path: i for i, path in enumerate(paths)}
    labels = is_defect[[row_of[p] for p in kept]]
    return _percent(image_auroc(np.array(scores), labels))


def _percent(value: float | None) -> float | None:
    return None if value is None else PERCENT * value


def _p50(ms: list[float] | None) -> float | None:
    return None if ms is None else float(np.percentile(ms, 50))


def _size_mb(edge: Path | None) -> float | None:
    return None if edge is None else sum(f.stat().st_size for f in edge.iterdir() if f.is_file()) / MEGABYTE


COLUMNS = (
    ("model", "model"),
    ("image AUROC %", "image_auroc"),
    ("pixel AUROC %", "pixel_auroc"),
    ("AUPRO %", "aupro"),
    ("goods rejected %", "goods_rejected"),
    ("defects caught %", "defects_caught"),
    ("int8 image AUROC %", "int8_image_auroc"),
    ("fit s", "fit_s"),
    ("fp32 ms", "fp32_ms"),
    ("int8 ms", "int8_ms"),
    ("fp32 MB", "fp32_mb"),
    ("int8 MB", "int8_mb"),
)


def markdown(results: list[FamilyResult], options: BenchmarkOptions) -> str:
    """The table, under a line naming the data and this CPU's instruction sets (latency depends on them)."""
    flags = " ".join(cpu_isa()) or "unknown"
    lines = [
        f"{options.data}{f' ({options.category})' if options.category else ''}, CPU flags: {flags}; "
        f"ms: p50 per frame of batch 1 over {options.frames} frames, OpenVINO, the agent's runtime",
        "",
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|---|" + "---:|" * (len(COLUMNS) - 1),
    ]
    for result in results:
        values = asdict(result)
        lines.append("| " + " | ".join(_cell(values[key]) for _, key in COLUMNS) + " |")
    lines += [f"- {r.model}: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def write_tables(results: list[FamilyResult], options: BenchmarkOptions) -> list[Path]:
    options.out.mkdir(parents=True, exist_ok=True)
    table = options.out / MARKDOWN_FILE
    table.write_text(markdown(results, options) + "\n")
    sheet = options.out / CSV_FILE
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(FamilyResult)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    return [table, sheet]
