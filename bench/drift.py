"""The drift watch's false alarms on stationary replays and its detection delay on shifted ones, at 30 frames a
second, with the agent's own detector (edge_agent.drift) and the config's defaults unless overridden.

    .venv/bin/python bench/drift.py --data elpv-mono --seed 0

    .venv/bin/python bench/drift.py --data elpv-poly --alpha 0.001,0.05 --breaches 1,3 --hours 10 --trials 10

    .venv/bin/python bench/drift.py --bundle edge/press2 --hours 50

`--data` fits the default PatchCore on a data set of bench/accuracy.py, bakes it (OpenVINO fp32) and reads the
score reference the bake wrote (the validation images through the baked graph), then scores the data set's
labelled test images, goods and defects, through the baked graph too. `--bundle` takes an edge bundle's
reference alone. Every replay draws scores at random, one per frame:

- stationary: from the reference itself (what the test was built for); from it with each part seen for 5 frames
  (a free-running camera: the same score with a little noise); from the other good test parts (not the reference:
  its own sampling error is then in every check, as on a real line); from a new reference each hour (a smoothed
  bootstrap of the reference stands for the true distribution, and each run draws its own reference of the same
  size from it, as each bake does: `--references` of them); with defects mixed in at a normal rate. False alarms
  per hour are counted over `--hours` of frames each;
- shifted: from the reference for a window and a random part of a check, then shifted (by the reference's
  standard deviation, a gain, a wider spread, more defects) until the alarm, for at most 10 minutes; then back to
  the reference until it clears. `--trials` runs each.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from accuracy import DATASETS, data_for

from converters.bake import BakeOptions, bake
from edge_agent.bundle import load_edge_bundle
from edge_agent.config import DriftConfig, ModelConfig
from edge_agent.drift import DriftDetector, ks_critical
from edge_agent.runtimes import make_runtime
from edge_agent.runtimes.base import infer_frame
from trainer.data.layouts import discover
from trainer.fit import FitOptions, fit
from trainer.predict import read_frames

FPS = 30
HOUR_S = 3600
FRAMES_PER_PART = 5  # the free-running camera's replay
JITTER_SD = 0.05  # frame-to-frame noise of one part's score, in reference standard deviations
NORMAL_DEFECT_SHARE = 0.02
HIGH_DEFECT_SHARES = (0.2, 0.4)
MAX_DELAY_S = 600  # a shift not alarmed within this long counts as missed; a return not cleared, as never cleared
SHIFTS_SD = (0.25, 0.5, 1.0, 2.0)
GAINS = (1.1, 1.25)
SPREADS = (1.5, 2.0)
# Silverman's rule of thumb for the smoothed bootstrap's kernel width.
SILVERMAN = 0.9
IQR_TO_SD = 1.34

Draw = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class Scores:
    reference: np.ndarray
    other_goods: np.ndarray | None  # good test parts, not in the reference
    defects: np.ndarray | None


def scores_from_data(name: str, seed: int, tmp: Path) -> Scores:
    data = data_for(name, tmp, seed)
    fit(FitOptions(data=data, model="patchcore", out=tmp / "model", seed=seed))
    edge = tmp / "edge"
    bake(BakeOptions(bundle=tmp / "model", out=edge))
    bundle = load_edge_bundle(edge)
    runtime = make_runtime(bundle, ModelConfig(path=edge, cache_dir=tmp / "cache"))

    def scored(paths: list[Path]) -> np.ndarray:
        frames = read_frames(paths)[0]
        return np.array([infer_frame(runtime, f, bundle.manifest.geometry).score for f in frames])

    test = discover(data).test
    goods = scored([s.path for s in test if not s.is_defect])
    defects = scored([s.path for s in test if s.is_defect])
    return Scores(reference_of(edge), goods if len(goods) else None, defects if len(defects) else None)


def reference_of(edge: Path) -> np.ndarray:
    reference = load_edge_bundle(edge).manifest.score_reference
    if reference is None:
        raise SystemExit(f"error: {edge} has no score reference; bake it again with this version's `converter bake`")
    return np.array(reference.scores)


def bootstrap(scores: np.ndarray) -> Draw:
    return lambda rng, n: rng.choice(scores, n)


def per_part(scores: np.ndarray, frames: int) -> Draw:
    noise = JITTER_SD * scores.std()
    return lambda rng, n: np.repeat(rng.choice(scores, -(-n // frames)), frames)[:n] + rng.normal(0, noise, n)


def mixed(goods: np.ndarray, defects: np.ndarray, share: float) -> Draw:
    def draw(rng: np.random.Generator, n: int) -> np.ndarray:
        out = rng.choice(goods, n)
        is_defect = rng.random(n) < share
        out[is_defect] = rng.choice(defects, int(is_defect.sum()))
        return out

    return draw


def smoothed(scores: np.ndarray) -> Draw:
    """A kernel density estimate of `scores`: a stand-in for the distribution they were drawn from."""
    iqr = float(np.subtract(*np.percentile(scores, [75, 25])))
    width = SILVERMAN * min(scores.std(), iqr / IQR_TO_SD) * len(scores) ** -0.2
    return lambda rng, n: rng.choice(scores, n) + rng.normal(0, width, n)


def alarms(reference: np.ndarray, stream: np.ndarray, config: DriftConfig) -> tuple[int, float]:
    """Alarms raised, and the highest statistic / critical value of any check."""
    detector = DriftDetector(reference, config)
    raised, peak = 0, 0.0
    for s in stream:
        raised += detector.observe(float(s)) == "alarm"
        if detector.last is not None:
            peak = max(peak, detector.last.statistic / detector.last.critical)
    return raised, peak


def stationary_rows(
    scores: Scores, config: DriftConfig, hours: float, references: int, rng: np.random.Generator
) -> list[str]:
    frames = int(hours * HOUR_S * FPS)
    ref = scores.reference
    replays: list[tuple[str, Draw]] = [
        ("reference, resampled", bootstrap(ref)),
        (f"reference, each part {FRAMES_PER_PART} frames", per_part(ref, FRAMES_PER_PART)),
    ]
    if scores.other_goods is not None:
        replays.append(("other good parts", bootstrap(scores.other_goods)))
    if scores.defects is not None:
        share = f"reference + {NORMAL_DEFECT_SHARE:.0%} defects"
        replays.append((share, mixed(ref, scores.defects, NORMAL_DEFECT_SHARE)))
    rows = []
    for name, draw in replays:
        count, peak = alarms(ref, draw(rng, frames), config)
        rows.append(f"| {name} | {hours:g} | {count} | {count / hours:.2f} | {peak:.2f} |")
    # A new reference for each hour: the false alarms a line can expect from a bake, not from this one bake.
    truth = smoothed(ref)
    results = [alarms(truth(rng, len(ref)), truth(rng, HOUR_S * FPS), config) for _ in range(references)]
    count, peak = sum(c for c, _ in results), max(p for _, p in results)
    name = f"new reference each hour ({sum(c > 0 for c, _ in results)} of {references} had an alarm)"
    rows.append(f"| {name} | {references} | {count} | {count / references:.2f} | {peak:.2f} |")
    return rows


def delays(
    reference: np.ndarray, shifted: Draw, config: DriftConfig, rng: np.random.Generator
) -> tuple[int | None, int | None]:
    """Frames from the shift to the alarm, and from the return to the clear (None: not within MAX_DELAY_S)."""
    detector = DriftDetector(reference, config)
    for s in rng.choice(reference, config.window + int(rng.integers(config.check_every))):
        detector.observe(float(s))
    limit = MAX_DELAY_S * FPS
    raised = _frames_until(detector, shifted(rng, limit), "alarm")
    if raised is None:
        return None, None
    return raised, _frames_until(detector, rng.choice(reference, limit), "clear")


def _frames_until(detector: DriftDetector, stream: np.ndarray, change: str) -> int | None:
    for i, s in enumerate(stream, start=1):
        if detector.observe(float(s)) == change:
            return i
    return None


def shifted_rows(scores: Scores, config: DriftConfig, trials: int, rng: np.random.Generator) -> list[str]:
    ref = scores.reference
    sd, median = float(ref.std()), float(np.median(ref))
    draw = bootstrap(ref)
    shifts: list[tuple[str, Draw]] = [
        *((f"+{k:g} sd", lambda g, n, k=k: draw(g, n) + k * sd) for k in SHIFTS_SD),
        *((f"gain x{k:g}", lambda g, n, k=k: draw(g, n) * k) for k in GAINS),
        *((f"spread x{k:g} about the median", lambda g, n, k=k: median + (draw(g, n) - median) * k) for k in SPREADS),
    ]
    if scores.defects is not None:
        shifts += [(f"{share:.0%} defects", mixed(ref, scores.defects, share)) for share in HIGH_DEFECT_SHARES]
    rows = []
    for name, shifted in shifts:
        results = [delays(ref, shifted, config, rng) for _ in range(trials)]
        raised = np.array([r for r, _ in results if r is not None]) / FPS
        cleared = np.array([c for _, c in results if c is not None]) / FPS
        rows.append(
            f"| {name} | {len(raised)}/{trials} | {_seconds(raised, 50)} | {_seconds(raised, 90)} "
            f"| {len(cleared)}/{len(raised)} | {_seconds(cleared, 50)} |"
        )
    return rows


def _seconds(values: np.ndarray, percent: int) -> str:
    return f"{np.percentile(values, percent):.0f}" if len(values) else "-"


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def report(name: str, scores: Scores, config: DriftConfig, args: argparse.Namespace) -> None:
    ref = scores.reference
    rng = np.random.default_rng(args.seed)  # the same replays for every config
    critical = ks_critical(config.alpha, config.window, len(ref))
    print(
        f"\n{name}: reference of {len(ref)} scores (median {np.median(ref):.4g}, sd {ref.std():.4g}); window "
        f"{config.window}, a check every {config.check_every} frames, alpha {config.alpha:g}, {config.breaches} "
        f"consecutive breaches; critical value {critical:.3f} for a window of independent scores; {FPS} frames a "
        "second\n"
    )
    print("| stationary replay | hours | alarms | false alarms per hour | highest statistic / critical value |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(stationary_rows(scores, config, args.hours, args.references, rng)))
    shifted = "alarmed within 10 min | median delay s | p90 delay s | cleared after return | median clear s"
    print(f"\n| shifted replay | {shifted} |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(shifted_rows(scores, config, args.trials, rng)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", choices=DATASETS, help="fit and bake on this data set (bench/accuracy.py's names)")
    source.add_argument("--bundle", type=Path, help="an edge bundle baked with a score reference")
    parser.add_argument("--seed", type=int, default=0, help="the data split and fit seed, and the replays' seed")
    parser.add_argument("--hours", type=float, default=20.0, help="hours of 30 fps frames per stationary replay")
    parser.add_argument("--references", type=int, default=20, help="new references, an hour of frames each")
    parser.add_argument("--trials", type=int, default=20, help="runs of each shifted replay")
    defaults = DriftConfig()
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--check-every", type=int, default=defaults.check_every)
    parser.add_argument("--alpha", type=_floats, default=[defaults.alpha], help="one or more, comma-separated")
    parser.add_argument("--breaches", type=_ints, default=[defaults.breaches], help="one or more, comma-separated")
    args = parser.parse_args()
    configs = [
        DriftConfig(window=args.window, check_every=args.check_every, alpha=alpha, breaches=breaches)
        for alpha in args.alpha
        for breaches in args.breaches
    ]
    with tempfile.TemporaryDirectory() as tmp:
        scores = (
            Scores(reference_of(args.bundle), None, None)
            if args.data is None
            else scores_from_data(args.data, args.seed, Path(tmp))
        )
    for config in configs:
        report(str(args.data or args.bundle), scores, config, args)


if __name__ == "__main__":
    main()
