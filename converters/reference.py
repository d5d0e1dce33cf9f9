"""The score reference an edge bundle carries for the agent's drift watch: the baked graph's scores of the
validation images."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from edge_agent.bundle import ScoreReference
from edge_agent.geometry import Geometry
from edge_agent.imageio import ImageReadError, read_image
from edge_agent.runtimes.base import Runtime, infer_frame

log = logging.getLogger(__name__)

# Plenty for a two-sample test against a window of recent frames, and a manifest that stays readable.
MAX_REFERENCE_IMAGES = 2000
# Scores are stored to this many significant digits: far finer than any drift the test can see.
SIGNIFICANT_DIGITS = 7


def score_reference(runtime: Runtime, validation: list[str], geometry: Geometry) -> ScoreReference | None:
    """Every readable validation image (all of them, not only the parity check's first few) through the baked
    graph. Only these will do: they are good parts the model never learned from, while a training image scores
    lower than any new part would. None, with a warning, when they are not on this machine."""
    if not validation:
        log.warning(
            "the bundle lists no validation images (a few-shot fit learns from every good image): the edge bundle "
            "gets no score reference, so the agent's drift watch stays off for it; fit again with more good images"
        )
        return None
    paths = [Path(p) for p in validation if Path(p).is_file()]
    step = max(1, -(-len(paths) // MAX_REFERENCE_IMAGES))  # spread over the whole set, not its first files
    scores: list[float] = []
    # One image at a time: a large validation set of large frames need not fit in memory at once.
    for path in tqdm(paths[::step], desc="score reference", unit="img"):
        try:
            frame = read_image(path)
        except ImageReadError as exc:
            log.warning("score reference: skipping %s", exc)
            continue
        scores.append(float(f"{infer_frame(runtime, frame, geometry).score:.{SIGNIFICANT_DIGITS}g}"))
    if not scores:
        log.warning(
            "the bundle's validation images are not on this machine: the edge bundle gets no score reference, so "
            "the agent's drift watch stays off for it; bake where `trainer fit` ran to include one"
        )
        return None
    return ScoreReference(scores=tuple(sorted(scores)))
