"""The edge bundle contract: what `converter bake` writes and the agent loads (DESIGN.md, Artifacts)."""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.errors import BundleError
from edge_agent.geometry import Geometry
from edge_agent.hashing import hmac_sha256, same_digest, sha256_bytes, sha256_file

EDGE_FORMAT_VERSION = 1
log = logging.getLogger(__name__)

MANIFEST = "manifest.yaml"
# Beside the manifest, which lists the other files' hashes but cannot hold its own: its sha256 (an edited
# threshold or a corrupt copy is refused) and, when bake was given a key, its HMAC-SHA256 (only a holder of the key
# can make a bundle the agent accepts).
MANIFEST_DIGEST = "manifest.sha256"
MANIFEST_SIGNATURE = "manifest.hmac"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EdgeInput(Strict):
    name: str = "image"
    height: int
    width: int
    channels: int = 3
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    normalization: Literal["in_graph"] = "in_graph"


class Parity(Strict):
    """Baked model against torch, per whole image (after the geometry's combine), on the validation images and
    on the labelled defects when bake was given some."""

    images: int  # all images compared, defects included
    score_abs_diff_max: float
    score_abs_diff_mean: float
    score_rel_diff_max: float
    spearman: float
    verdict_agreement: float
    # Torch scores within the guard's margin around the threshold, and the verdicts that flip outside it (the
    # guard counts only those). None in bundles baked before the margin existed.
    margin: float | None = None
    near_threshold: int | None = None
    flips_outside_margin: int | None = None
    map_abs_diff_max: float
    map_abs_diff_mean: float
    # With labelled defects at bake time: image AUROC of torch and of the baked model on goods + defects.
    defect_images: int = 0
    auroc_reference: float | None = None
    auroc_baked: float | None = None


class Calibration(Strict):
    """The good images a reduced-precision graph was calibrated on; never the ones its guard judged, unless
    nothing else was at hand."""

    source: Literal["--calib", "training images", "validation images"]
    images: int


class Kernels(Strict):
    """What OpenVINO ran the checked graph on at bake time: the baking machine's CPU and the kernels of the
    model head's matrix ops. A factory PC of another CPU class gets other kernels; the agent logs its own."""

    cpu: str
    head: list[str]


# The CPU class an int8 OpenVINO bundle was baked for. "any": weights of 7 bits, exact on every x86 CPU; "vnni":
# weights of 8 bits, closer to torch, but CPUs without VNNI (AVX2 only) saturate their u8 x s8 products in int16,
# so the agent refuses such a bundle there.
Int8Cpu = Literal["any", "vnni"]


class ScoreReference(Strict):
    """The baked graph's scores of the validation images, sorted: good parts the model never learned from, scored
    by exactly what the agent runs. The agent's drift watch compares its recent scores with them."""

    scores: tuple[float, ...] = Field(min_length=1)

    @field_validator("scores")
    @classmethod
    def _sorted_and_finite(cls, scores: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(s) for s in scores):
            raise ValueError("holds a score that is not a finite number")
        if any(a > b for a, b in itertools.pairwise(scores)):
            raise ValueError("must be sorted in ascending order")
        return scores


class EdgeManifest(Strict):
    format_version: int
    model: str  # model type, e.g. patchcore
    version: str  # what verdicts name as their model: type + short source hash
    target: Literal["openvino", "onnx", "tensorrt"]
    precision: Literal["fp32", "fp16", "int8"]
    input: EdgeInput
    geometry: Geometry  # how frames become inputs and outputs become one map and score
    outputs: tuple[str, ...] = ("anomaly_map", "score")
    threshold: float
    score_scale: float  # score / score_scale == 1.0 at the threshold
    parity: Parity
    calibration: Calibration | None = None  # int8 only
    kernels: Kernels | None = None  # OpenVINO CPU bakes only
    int8_cpu: Int8Cpu | None = None  # int8 bakes only; None in bundles baked before the choice existed: "any"
    # None in bundles baked before drift watch existed, or whose validation images were not at hand at bake time.
    score_reference: ScoreReference | None = None
    source_bundle_sha256: str
    created_at: str
    files: dict[str, str]


@dataclass(frozen=True)
class EdgeBundle:
    path: Path
    manifest: EdgeManifest

    def file(self, name: str) -> Path:
        return self.path / name


def write_manifest(folder: Path, manifest: EdgeManifest, key: bytes | None = None) -> None:
    """The manifest, its sha256 and, with a key, its HMAC-SHA256 signature."""
    text = yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False).encode()
    (folder / MANIFEST).write_bytes(text)
    (folder / MANIFEST_DIGEST).write_text(sha256_bytes(text) + "\n")
    if key is not None:
        (folder / MANIFEST_SIGNATURE).write_text(hmac_sha256(key, text) + "\n")


def _check_manifest(path: Path, text: bytes, key: bytes | None) -> None:
    digest = path / MANIFEST_DIGEST
    if digest.is_file() and not same_digest(digest.read_text(), sha256_bytes(text)):
        raise BundleError(
            f"{path / MANIFEST} does not match its {MANIFEST_DIGEST} (edited or corrupt); refusing it, re-run "
            "`converter bake`"
        )
    if key is not None:
        signature = path / MANIFEST_SIGNATURE
        if not signature.is_file():
            raise BundleError(
                f"edge bundle {path} is not signed, and model.hmac_key_file asks for signed bundles; bake it with "
                "`converter bake --sign-key`"
            )
        if not same_digest(signature.read_text(), hmac_sha256(key, text)):
            raise BundleError(
                f"edge bundle {path} is signed with another key than model.hmac_key_file, or changed since; refusing it"
            )
    elif not digest.is_file():
        # Bundles baked before manifests were hashed still load, as they did: without a key a digest only
        # catches accidents, and refusing them would stop a line at the agent's upgrade.
        log.warning("edge bundle %s has no %s (baked before manifests were hashed); re-bake it", path, MANIFEST_DIGEST)


def load_edge_bundle(path: Path, key: bytes | None = None) -> EdgeBundle:
    """Read the manifest and check its hash, its signature when `key` is given, and every file's hash; refuse
    anything we cannot trust."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"no edge bundle at {path} (no {MANIFEST}); make one with `converter bake`")
    text = manifest_path.read_bytes()
    _check_manifest(path, text, key)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise BundleError(f"{manifest_path} is not valid YAML; re-run `converter bake`") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != EDGE_FORMAT_VERSION:
        raise BundleError(
            f"edge bundle {path} has format version {version!r}; this agent reads version {EDGE_FORMAT_VERSION}"
        )
    try:
        manifest = EdgeManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"edge manifest {manifest_path} field '{where}': {first['msg']}") from None
    for name, expected in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"edge bundle file {file} is missing; re-run `converter bake`")
        if sha256_file(file) != expected:
            raise BundleError(f"edge bundle file {file} does not match its sha256 (tampered or corrupt); refusing it")
    return EdgeBundle(path, manifest)
