"""`converter bake`: model bundle -> edge bundle, with a parity check of the baked graph against torch."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
from torch import nn
from tqdm import tqdm

from converters.graph import OUTPUT_NAMES
from converters.guard import Guard, refusal, too_few_images
from converters.onnx import export_onnx
from converters.openvino import to_openvino
from converters.parity import parity_report
from converters.quantize import int8_scope, quantize_openvino
from converters.reference import score_reference
from converters.tensorrt import (
    ENGINE_ON_TARGET,
    MODEL_ENGINE,
    NOT_INSTALLED,
    EngineError,
    build_engine,
    tensorrt_available,
)
from edge_agent.bundle import EDGE_FORMAT_VERSION, MANIFEST, EdgeManifest, Int8Cpu, Parity, write_manifest
from edge_agent.geometry import Combined, Geometry
from edge_agent.hashing import read_key, sha256_file
from edge_agent.imageio import list_images
from edge_agent.runtimes.base import Runtime, infer_frame
from edge_agent.runtimes.onnxruntime import MODEL_ONNX, OnnxRuntime
from edge_agent.runtimes.openvino import MODEL_BIN, MODEL_XML, OpenVinoRuntime
from edge_agent.runtimes.openvino_ops import cpu_isa, has_vnni
from trainer.bundle import MANIFEST as MODEL_MANIFEST
from trainer.bundle import ModelManifest, TrainingSet, load_bundle
from trainer.data.dataset import DataError
from trainer.data.layouts import discover
from trainer.metrics import image_auroc
from trainer.predict import model_inputs, predict, read_frames

log = logging.getLogger(__name__)

MAX_PARITY_IMAGES = 64
MAX_CALIBRATION_IMAGES = 300
# NNCF sets every activation range from the calibration images: fewer than this leaves ranges that the next
# ordinary part overruns.
MIN_CALIBRATION_IMAGES = 10
BUNDLE_MODE = 0o755
PRECISIONS = {"openvino": ("fp32", "fp16", "int8"), "onnx": ("fp32",), "tensorrt": ("fp32", "fp16")}


class BakeError(Exception):
    pass


@dataclass(frozen=True)
class BakeOptions:
    bundle: Path
    out: Path
    target: str = "openvino"
    precision: str = "fp32"
    calib: Path | None = None  # good images to calibrate int8 on; default: the bundle's validation images
    defects: Path | None = None  # labelled defect images: the guard then also bounds the AUROC change
    guard: Guard = field(default_factory=Guard)
    # tensorrt without TensorRT here: write the ONNX anyway, for the agent's TensorRT provider to build on the target
    engine_on_target: bool = False
    int8_cpu: Int8Cpu = "any"  # the CPU class an int8 bake runs on (edge_agent.bundle.Int8Cpu)
    sign_key: Path | None = None  # an HMAC key file: the manifest is signed, for agents with model.hmac_key_file


@dataclass(frozen=True)
class Frames:
    validation: list[np.ndarray]  # good images the parity and the guard are measured on
    calibration: list[np.ndarray]
    calibration_source: str  # edge_agent.bundle.Calibration.source
    defects: list[np.ndarray]


def _check_target(options: BakeOptions) -> None:
    target, precision = options.target, options.precision
    if target not in PRECISIONS:
        raise BakeError(f"unknown --target '{target}'; choose one of {', '.join(PRECISIONS)}")
    if precision not in PRECISIONS[target]:
        hint = "; int8 is baked for OpenVINO (--target openvino)" if precision == "int8" else ""
        choices = ", ".join(PRECISIONS[target])
        raise BakeError(f"--precision {precision} is not available for --target {target} (choose {choices}){hint}")
    if target == "tensorrt" and not tensorrt_available() and not options.engine_on_target:
        raise BakeError(NOT_INSTALLED)
    if options.int8_cpu != "any" and precision != "int8":
        raise BakeError(f"--int8-cpu {options.int8_cpu} applies to int8 bakes; add --precision int8 or leave it out")
    if options.int8_cpu == "vnni" and not has_vnni(isa := cpu_isa()):
        # Parity would be measured on saturating kernels, which the target never runs.
        raise BakeError(
            f"--int8-cpu vnni needs a VNNI CPU to check the bake on, and this one has none ({' '.join(isa)}); "
            "bake on such a machine, or use --int8-cpu any"
        )


def _read_folder(folder: Path, option: str) -> list[np.ndarray]:
    if not folder.is_dir():
        raise BakeError(f"{option} folder {folder} does not exist")
    frames, _, _ = read_frames(list_images(folder))
    if not frames:
        raise BakeError(f"{option} folder {folder} holds no readable images")
    return frames


def _training_goods(training: TrainingSet) -> list[Path]:
    """The good images the bundle was fitted on, less the validation images, when the data set is on this
    machine: int8 calibrates on these, so the guard judges images the calibration never saw."""
    try:
        data = discover(Path(training.root), training.category)
    except DataError:
        return []
    judged = set(training.validation)
    goods = [p for p in data.train if str(p.resolve()) not in judged]
    step = max(1, len(goods) // MAX_CALIBRATION_IMAGES)  # spread over the whole set, not its first files
    return goods[::step][:MAX_CALIBRATION_IMAGES]


def _calibration(
    training: TrainingSet, given: list[np.ndarray] | None, good: list[np.ndarray]
) -> tuple[list[np.ndarray], str]:
    if given is not None:
        return given[:MAX_CALIBRATION_IMAGES], "--calib"
    paths = _training_goods(training)
    frames = read_frames(paths)[0] if len(paths) >= MIN_CALIBRATION_IMAGES else []
    if len(frames) >= MIN_CALIBRATION_IMAGES:
        return frames, "training images"
    log.warning(
        "the bundle's training images are not on this machine: calibrating on the validation images, which the "
        "accuracy guard then judges too; pass --calib DIR with other images of good parts for an independent check"
    )
    return good, "validation images"


def _frames(training: TrainingSet, options: BakeOptions) -> Frames:
    paths = [Path(p) for p in training.validation if Path(p).is_file()]
    calib = _read_folder(options.calib, "--calib") if options.calib is not None else None
    # A few-shot bundle (trainer/few_shot.py) learned from every good image it had, so it lists none.
    missing = (
        f"the bundle was fitted in few-shot mode on all {training.count} of its good images and kept none"
        if not training.validation
        else "the bundle's validation images are not on this machine"
    )
    if paths:
        good, _, _ = read_frames(paths[:MAX_PARITY_IMAGES])
    elif calib is not None:
        log.warning("%s; checking parity on --calib images", missing)
        good = calib[:MAX_PARITY_IMAGES]
    else:
        raise BakeError(f"{missing}; pass --calib DIR with images of good parts")
    if not good:
        raise BakeError("none of the validation images could be read; pass --calib DIR with images of good parts")
    defects = _read_folder(options.defects, "--defects") if options.defects is not None else []
    if options.precision != "int8":
        return Frames(good, [], "", defects)
    calibration, source = _calibration(training, calib, good)
    if len(calibration) < MIN_CALIBRATION_IMAGES:
        given = f"--calib {options.calib}" if options.calib is not None else "the bundle's validation images"
        raise BakeError(
            f"int8 needs at least {MIN_CALIBRATION_IMAGES} good images to calibrate on; {given} gave "
            f"{len(calibration)}; pass --calib DIR with more images of good parts"
        )
    log.info("calibrating int8 on %d good images (%s)", len(calibration), source)
    return Frames(good, calibration, source, defects)


def _check_replaceable(out: Path) -> None:
    """Baking replaces `out`: refuse when it holds anything but an earlier edge bundle, never delete user data."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise BakeError(f"--out {out} exists and is not an edge bundle; choose a new or empty folder")


def _write_graph(model: nn.Module, source: ModelManifest, options: BakeOptions, frames: Frames, folder: Path) -> None:
    geometry = source.geometry
    height, width = geometry.height, geometry.width
    if options.target == "openvino":
        graph = to_openvino(model, height, width)
        if options.precision == "int8":
            calibration = model_inputs(frames.calibration, geometry)
            graph = quantize_openvino(graph, calibration, int8_scope(source.model), options.int8_cpu)
        ov.save_model(graph, str(folder / MODEL_XML), compress_to_fp16=options.precision == "fp16")
        return
    export_onnx(model, height, width, folder / MODEL_ONNX)
    if options.target == "tensorrt":
        if tensorrt_available():
            try:
                build_engine(folder / MODEL_ONNX, folder / MODEL_ENGINE, options.precision)
            except EngineError as exc:
                raise BakeError(str(exc)) from None
        else:
            log.warning(ENGINE_ON_TARGET)


def agent_runtime(options: BakeOptions, folder: Path) -> Runtime:
    """The agent's own runtime class on the staged files, so parity is measured on what the agent will run."""
    if options.target == "openvino":
        return OpenVinoRuntime(folder / MODEL_XML, options.precision)
    return OnnxRuntime(folder / MODEL_ONNX, options.precision)


def _baked_files(folder: Path) -> dict[str, str]:
    names = (MODEL_XML, MODEL_BIN, MODEL_ONNX, MODEL_ENGINE)
    return {name: sha256_file(folder / name) for name in names if (folder / name).is_file()}


def _kernels(runtime: Runtime) -> dict[str, object] | None:
    """The kernels the parity check ran the head on, for the manifest and bake's summary. The int8 search is
    baked as 1 x 1 convolutions because oneDNN runs those on its int8 convolution kernels on AVX2 and AVX-512
    alike, where the same work as a MatMul falls to its legacy int8 GEMM on CPUs without VNNI (README, the kNN
    head table)."""
    if not isinstance(runtime, OpenVinoRuntime) or runtime.kernels is None:
        return None
    return runtime.kernels.model_dump()


RuntimeOpener = Callable[[BakeOptions, Path], Runtime]


def bake(options: BakeOptions, open_runtime: RuntimeOpener = agent_runtime) -> EdgeManifest:
    """`open_runtime` runs the staged graph for the parity check; tests swap it to force a parity result."""
    _check_target(options)
    _check_replaceable(options.out)
    key = None if options.sign_key is None else read_key(options.sign_key)  # before the long part
    model, source = load_bundle(options.bundle)
    frames = _frames(source.training_set, options)
    if options.precision != "fp32":
        few = too_few_images(
            len(frames.validation) + len(frames.defects), len(frames.defects), options.guard, options.precision
        )
        if few is not None:
            raise BakeError(few)
    geometry = source.geometry

    # Write into a temporary folder first, so a failed bake never leaves a half-written bundle behind.
    options.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bake-", dir=options.out.parent))
    staging.chmod(BUNDLE_MODE)
    try:
        _write_graph(model, source, options, frames, staging)
        runtime = open_runtime(options, staging)
        parity = _parity(model, runtime, frames, geometry, source.threshold, options.guard.margin)
        _check_guard(parity, options)
        kernels = _kernels(runtime)
        reference = score_reference(runtime, source.training_set.validation, geometry)
        source_sha = sha256_file(options.bundle / MODEL_MANIFEST)
        manifest = EdgeManifest.model_validate(
            {
                "format_version": EDGE_FORMAT_VERSION,
                "model": source.model,
                "version": f"{source.model}-{source_sha[:8]}-{options.target}-{options.precision}",
                "target": options.target,
                "precision": options.precision,
                "input": {"height": geometry.height, "width": geometry.width},
                "geometry": geometry.model_dump(mode="json"),
                "outputs": list(OUTPUT_NAMES),
                "threshold": source.threshold,
                "score_scale": source.threshold,
                "parity": parity.model_dump(),
                "calibration": (
                    {"source": frames.calibration_source, "images": len(frames.calibration)}
                    if frames.calibration
                    else None
                ),
                "kernels": kernels,
                "int8_cpu": options.int8_cpu if options.precision == "int8" else None,
                "score_reference": None if reference is None else reference.model_dump(mode="json"),
                "source_bundle_sha256": source_sha,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "files": _baked_files(staging),
            }
        )
        write_manifest(staging, manifest, key)
        if options.out.exists():
            shutil.rmtree(options.out)
        staging.rename(options.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _scores(combined: list[Combined]) -> np.ndarray:
    return np.array([c.score for c in combined])


def _parity(
    model: nn.Module, runtime: Runtime, frames: Frames, geometry: Geometry, threshold: float, margin: float
) -> Parity:
    """Torch against the baked graph, per whole image, on the validation images and the defects, when given."""
    images = frames.validation + frames.defects
    reference = predict(model, images, geometry)
    baked = [infer_frame(runtime, frame, geometry) for frame in tqdm(images, desc="parity check", unit="img")]
    report = parity_report(
        _scores(reference),
        _scores(baked),
        np.concatenate([r.anomaly_map.ravel() for r in reference]),
        np.concatenate([b.anomaly_map.ravel() for b in baked]),
        threshold,
        margin,
    )
    if not frames.defects:
        return report
    labels = np.r_[np.zeros(len(frames.validation), bool), np.ones(len(frames.defects), bool)]
    return report.model_copy(
        update={
            "defect_images": len(frames.defects),
            "auroc_reference": image_auroc(_scores(reference), labels),
            "auroc_baked": image_auroc(_scores(baked), labels),
        }
    )


def _check_guard(parity: Parity, options: BakeOptions) -> None:
    if options.precision == "fp32":
        return
    reason = refusal(parity, options.guard, options.precision)
    if reason is not None:
        raise BakeError(reason)
