"""Per-frame latency of each model's whole graph (uint8 frame in, map and score out), batch 1, 256x256, on every
CPU runtime and precision the converter bakes.

    .venv/bin/python bench/latency.py --frames 200

Fits each registry model on synthetic parts, bakes it for OpenVINO fp32, fp16 and int8 and for ONNX Runtime
fp32, then times torch eager and the agent's runtime classes on the same frames, taking turns in blocks of 10
frames so machine noise hits every runtime alike. The timing runs in a fresh process (bench/timing.py), as an
agent process holds the runtimes: in the process that had just fitted and baked, the same int8 bake timed up
to 1.8x slower. Ratios are against torch eager and against OpenVINO fp32 (of
the default recipe), medians from this one run. `--variant LABEL=RECIPE.yaml` also times the model fitted with
that recipe, in the same turns:

    .venv/bin/python bench/latency.py --models patchcore --variant exact=exact.yaml --train-images 700

`--openvino-only` times the OpenVINO bakes alone, as an agent process runs them, without torch eager or ONNX
Runtime taking turns (their thread pools cost the 2 cores something even at rest); the timing process then
never imports torch.

`--profile` then prints, per model, where each OpenVINO bake spends its time: the baked model.xml compiled as
the agent's OpenVinoRuntime compiles it, plus PERF_COUNT, runs the same frames (after warm-up) through one infer
request, and each op's real time is summed by op type and kernel precision, in ms per frame:

    .venv/bin/python bench/latency.py --models patchcore --openvino-only --profile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from converters.bake import BakeError, BakeOptions, bake
from converters.guard import TIMING_GUARD
from edge_agent.geometry import prepare
from edge_agent.imageio import list_images, read_image
from edge_agent.runtimes.openvino_ops import ISA_CAP, cpu_description
from trainer.bundle import load_bundle
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.fit import FitOptions, fit
from trainer.models import REGISTRY

LATENCY_EPOCHS = 2
TIMING = Path(__file__).with_name("timing.py")
TORCH = "torch eager fp32"
BAKES = (("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8"), ("onnx", "fp32"))
RUNTIME_NAMES = {"openvino": "OpenVINO", "onnx": "ONNX Runtime"}
OV_FP32 = "OpenVINO fp32"
PROFILE_ROWS = 12


@dataclass(frozen=True)
class Variant:
    label: str
    recipe: Path | None  # None: the model's default recipe


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def contenders(model_name: str, data: Path, root: Path, variant: Variant, openvino_only: bool) -> list[Contender]:
    bundle = root / model_name / variant.label
    recipe = variant.recipe
    if recipe is None and "epochs" in REGISTRY[model_name].recipe.model_fields:
        # Time per frame does not depend on how well a model trained: a short fit gives the same graph.
        recipe = root / f"{model_name}.yaml"
        recipe.write_text(f"epochs: {LATENCY_EPOCHS}\n")
    fit(FitOptions(data=data, model=model_name, out=bundle, recipe=recipe))
    manifest = load_bundle(bundle)[1]
    detail = ", ".join(f"{k} {v}" for k, v in manifest.fit_summary.items() if k in ("memory_bank", "channels"))
    label = f"{model_name} ({variant.label}, {detail or f'{LATENCY_EPOCHS} training epochs'})"
    found = [] if openvino_only else [Contender(label, TORCH, bundle, profiled=False)]
    for target, precision in BAKES:
        if openvino_only and target != "openvino":
            continue
        edge = bundle.with_name(f"{variant.label}-{target}-{precision}")
        try:
            bake(BakeOptions(bundle=bundle, out=edge, target=target, precision=precision, guard=TIMING_GUARD))
        except BakeError as exc:  # the accuracy guard refused this precision: say so, time the others
            print(f"{label} {target} {precision}: not timed, {exc}", flush=True)
            continue
        runtime = f"{RUNTIME_NAMES[target]} {precision}"
        found.append(Contender(label, runtime, edge, profiled=target == "openvino"))
    return found


@dataclass(frozen=True)
class Contender:
    model: str  # the model and its recipe variant
    runtime: str
    bundle: Path  # the trainer bundle for torch eager, else the edge bundle
    profiled: bool  # an OpenVINO bake, which --profile splits by op


@dataclass(frozen=True)
class Profile:
    groups: dict[str, float]  # ms per frame by op group
    head_ms: float  # ms per frame of the ops after the backbone (edge_agent.runtimes.openvino_ops)
    head_kernels: list[str]


@dataclass(frozen=True)
class Measured:
    ms: dict[Contender, list[float]]
    profiles: dict[Contender, Profile]
    warmup: int  # frames each contender ran before its timed ones


@dataclass(frozen=True)
class TimingOptions:
    count: int  # timed frames per contender
    profile: bool
    # ONEDNN_MAX_CPU_ISA for the timing process alone: fits and bakes run uncapped, because under a cap NNCF's
    # calibration cannot build the bf16 graphs it compiles on CPUs with avx512_bf16. The bundles do not depend
    # on the CPU; the kernels they are run on do.
    isa_cap: str | None


def measured(contenders: list[Contender], frames: np.ndarray, options: TimingOptions, root: Path) -> Measured:
    """The contenders timed (and profiled) in a fresh process, bench/timing.py, as an agent process would hold
    the runtimes: nothing fitted, baked or calibrated before them in it."""
    np.save(root / "frames.npy", frames)
    spec = {
        "contenders": [
            {"bundle": str(c.bundle), "torch": c.runtime == TORCH, "profiled": c.profiled} for c in contenders
        ],
        "frames": str(root / "frames.npy"),
        "count": options.count,
        "profile": options.profile,
        "cache_dir": str(root / "cache"),
    }
    (root / "spec.json").write_text(json.dumps(spec))
    env = os.environ | ({ISA_CAP: options.isa_cap} if options.isa_cap else {})
    command = [sys.executable, str(TIMING), str(root / "spec.json"), str(root / "result.json")]
    subprocess.run(command, check=True, env=env)
    result = json.loads((root / "result.json").read_text())
    profiles = {c: Profile(**p) for c, p in zip(contenders, result["profiles"], strict=True) if p is not None}
    return Measured(dict(zip(contenders, result["ms"], strict=True)), profiles, result["warmup"])


def profile_table(model: str, profiles: dict[str, Profile]) -> str:
    """Markdown: op groups by ms per frame of each bake, slowest first in the int8 (else largest) column, then
    the head's time and share, and its matrix kernels."""
    runtimes = list(profiles)
    groups_of = {r: p.groups for r, p in profiles.items()}
    key = "OpenVINO int8" if "OpenVINO int8" in profiles else max(runtimes, key=lambda r: sum(groups_of[r].values()))
    groups = sorted({g for ops in groups_of.values() for g in ops}, key=lambda g: -groups_of[key].get(g, 0.0))
    lines = [
        f"{model}: OpenVINO op profile, ms per frame",
        "",
        f"| op (kernel) | {' | '.join(runtimes)} |",
        f"|---|{'---:|' * len(runtimes)}",
    ]
    for group in groups[:PROFILE_ROWS]:
        cells = " | ".join(f"{groups_of[r][group]:.2f}" if group in groups_of[r] else "-" for r in runtimes)
        lines.append(f"| {group} | {cells} |")
    if len(groups) > PROFILE_ROWS:
        rest = " | ".join(f"{sum(groups_of[r].get(g, 0.0) for g in groups[PROFILE_ROWS:]):.2f}" for r in runtimes)
        lines.append(f"| {len(groups) - PROFILE_ROWS} other op groups | {rest} |")
    totals = {r: sum(groups_of[r].values()) for r in runtimes}
    lines.append(f"| **total of profiled ops** | {' | '.join(f'**{totals[r]:.2f}**' for r in runtimes)} |")
    lines.append(f"| head: every op after the backbone | {' | '.join(f'{p.head_ms:.2f}' for p in profiles.values())} |")
    shares = " | ".join(f"**{100 * p.head_ms / totals[r]:.0f}%**" for r, p in profiles.items())
    lines.append(f"| **head's share of the frame** | {shares} |")
    lines.append(f"| head's matrix kernels | {' | '.join(', '.join(p.head_kernels) for p in profiles.values())} |")
    return "\n".join(lines)


def parse_variant(text: str) -> Variant:
    label, _, path = text.partition("=")
    if not label or not path or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--variant {text}: expected LABEL=RECIPE.yaml, with an existing file")
    return Variant(label, Path(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--models", default=",".join(sorted(REGISTRY)))
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        help="LABEL=RECIPE.yaml: also time the model fitted with this recipe, in the same turns (one model only)",
    )
    parser.add_argument(
        "--openvino-only",
        action="store_true",
        help="time only the OpenVINO bakes: no torch or ONNX Runtime threads in the process",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the table, each OpenVINO bake's time per frame by op type, from OpenVINO's per-op counters",
    )
    parser.add_argument(
        "--isa-cap",
        help="time with oneDNN capped at this instruction set, e.g. AVX2 (ONEDNN_MAX_CPU_ISA, timing process only)",
    )
    args = parser.parse_args()
    if os.environ.get(ISA_CAP):
        parser.error(f"{ISA_CAP} is set: NNCF cannot calibrate under it here; pass --isa-cap instead")
    models = args.models.split(",")
    if args.variant and len(models) > 1:
        parser.error("--variant holds one model's recipe keys; name that one model with --models")
    variants = [Variant("default", None), *args.variant]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generate(root / "data", SyntheticSpec(train_good=args.train_images, test_defects_per_type=5))
        paths = sorted(p for kind in (data / "test").iterdir() for p in list_images(kind))
        rows = []
        profiles = []
        warmup = 0
        for name in models:
            timed = [t for v in variants for t in contenders(name, data, root, v, args.openvino_only)]
            # Squash geometry at the model's size: one graph run per frame.
            geometry = load_bundle(root / name / "default")[1].geometry
            frames = np.stack([prepare(read_image(p), geometry).inputs[0] for p in paths])
            result = measured(timed, frames, TimingOptions(args.frames, args.profile, args.isa_cap), root)
            ms, warmup = result.ms, result.warmup
            # Ratios are against the default recipe's torch eager and OpenVINO fp32, from these same turns.
            base = next((percentiles(v)[0] for t, v in ms.items() if t.runtime == TORCH), None)
            ov_fp32 = next(percentiles(v)[0] for t, v in ms.items() if t.runtime == OV_FP32)
            for t, values in ms.items():
                p50, p99 = percentiles(values)
                rows.append(
                    f"| {t.model} | {t.runtime} | {p50:.2f} | {p99:.2f} | {1000 / p50:.0f} | "
                    f"{'-' if base is None else f'{base / p50:.2f}x'} | {ov_fp32 / p50:.2f}x |"
                )
            for model in dict.fromkeys(t.model for t in result.profiles):
                ops = {t.runtime: p for t, p in result.profiles.items() if t.model == model}
                profiles.append(profile_table(model, ops))
    print(
        f"256x256, batch 1, {len(os.sched_getaffinity(0))} cores, {args.frames} frames after {warmup} warm-up, "
        f"CPU: {cpu_description(ov.Core())}{f', timed with {ISA_CAP}={args.isa_cap}' if args.isa_cap else ''}\n"
    )
    print("| model | runtime | p50 ms | p99 ms | frames/s (1/p50) | vs torch (p50) | vs OpenVINO fp32 (p50) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    for table in profiles:
        print(f"\n{table}")


if __name__ == "__main__":
    main()
