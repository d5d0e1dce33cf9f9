"""`converter bake`: model bundle -> edge bundle, with a parity check of the baked graph against torch."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from converters.openvino import OUTPUT_NAMES, export_openvino
from converters.parity import parity_report
from edge_agent.bundle import EDGE_FORMAT_VERSION, MANIFEST, EdgeManifest, Parity
from edge_agent.geometry import combine, prepare
from edge_agent.hashing import sha256_file
from edge_agent.imageio import list_images
from edge_agent.runtimes.openvino import MODEL_BIN, MODEL_XML, OpenVinoRuntime
from trainer.bundle import MANIFEST as MODEL_MANIFEST
from trainer.bundle import ModelManifest, load_bundle
from trainer.predict import predict, read_frames

log = logging.getLogger(__name__)

MAX_PARITY_IMAGES = 64
BUNDLE_MODE = 0o755


class BakeError(Exception):
    pass


@dataclass(frozen=True)
class BakeOptions:
    bundle: Path
    out: Path
    target: str = "openvino"
    precision: str = "fp32"
    calib: Path | None = None


def _validation_paths(validation: list[str], calib: Path | None) -> list[Path]:
    if calib is not None:
        if not calib.is_dir():
            raise BakeError(f"--calib folder {calib} does not exist")
        paths = list_images(calib)
    else:
        paths = [Path(p) for p in validation if Path(p).is_file()]
    if not paths:
        where = calib or "the model bundle's held-out images"
        raise BakeError(f"no validation images found in {where}; pass --calib DIR with images of good parts")
    return paths[:MAX_PARITY_IMAGES]


def _check_replaceable(out: Path) -> None:
    """Baking replaces `out`: refuse when it holds anything but an earlier edge bundle, never delete user data."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise BakeError(f"--out {out} exists and is not an edge bundle; choose a new or empty folder")


def bake(options: BakeOptions) -> EdgeManifest:
    if options.target != "openvino":
        raise BakeError(f"target '{options.target}' is not supported yet; use --target openvino")
    if options.precision != "fp32":
        raise BakeError(f"precision '{options.precision}' is not supported yet; use --precision fp32")
    _check_replaceable(options.out)
    model, source = load_bundle(options.bundle)
    height, width = source.input.height, source.input.width
    frames, _, _ = read_frames(_validation_paths(source.training_set.validation, options.calib))
    if not frames:
        raise BakeError("none of the validation images could be read")

    # Write into a temporary folder first, so a failed bake never leaves a half-written bundle behind.
    options.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bake-", dir=options.out.parent))
    staging.chmod(BUNDLE_MODE)
    try:
        export_openvino(model, height, width, staging / MODEL_XML)
        source_sha = sha256_file(options.bundle / MODEL_MANIFEST)
        manifest: dict[str, object] = {
            "format_version": EDGE_FORMAT_VERSION,
            "model": source.model,
            "version": f"{source.model}-{source_sha[:8]}",
            "target": options.target,
            "precision": options.precision,
            "input": {"height": height, "width": width},
            "geometry": source.geometry.model_dump(mode="json"),
            "outputs": list(OUTPUT_NAMES),
            "threshold": source.threshold,
            "score_scale": source.threshold,
            "source_bundle_sha256": source_sha,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "files": {name: sha256_file(staging / name) for name in (MODEL_XML, MODEL_BIN)},
        }
        parity = _parity(model, staging / MODEL_XML, options.precision, frames, source)
        manifest["parity"] = parity.model_dump()
        typed = EdgeManifest.model_validate(manifest)
        (staging / MANIFEST).write_text(yaml.safe_dump(typed.model_dump(mode="json"), sort_keys=False))
        if options.out.exists():
            shutil.rmtree(options.out)
        staging.rename(options.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return typed


def _parity(
    model: torch.nn.Module, xml: Path, precision: str, frames: list[np.ndarray], source: ModelManifest
) -> Parity:
    """Torch against the baked graph run through the agent's own runtime class, per whole image."""
    runtime = OpenVinoRuntime(xml, precision)
    geometry = source.geometry
    reference = predict(model, frames, geometry)
    baked = []
    for frame in tqdm(frames, desc="parity check", unit="img"):
        prepared = prepare(frame, geometry)
        outputs = [runtime.infer(x) for x in prepared.inputs]
        maps, scores = [o.anomaly_map for o in outputs], [o.score for o in outputs]
        baked.append(combine(prepared, maps, scores, geometry.mode))
    return parity_report(
        np.array([r.score for r in reference]),
        np.array([b.score for b in baked]),
        np.concatenate([r.anomaly_map.ravel() for r in reference]),
        np.concatenate([b.anomaly_map.ravel() for b in baked]),
        source.threshold,
    )
