"""Post-training int8 quantization of the baked OpenVINO graph with NNCF, calibrated on good images.

What stays float, and why (measured on Lite0 PatchCore; relative L2 error of the features against fp32):
- the scoring head, everything from the first MatMul or FakeQuantize on (distances, maps, blur, score): its
  inputs on defects lie far outside the ranges calibration sees on good parts, so NNCF's ranges would clip
  exactly what must stand out. A model that wants int8 in its head writes it itself (PatchCore's int8 bank);
- the pooling, resampling and concatenation of the taps;
- the convolution(s) reading the normalized pixels (the stem): with only that one in int8, ELPV mono's rank
  correlation against torch (431 test images) fell to 0.92 and PatchCore's AUROC by 5.6 points;
- the convolution reading the stem's output (Lite0's first depthwise). It alone broke earlier bakes that kept
  every depthwise float: in int8 it moved PatchCore's scores by 88% (every validation verdict flipped, on every
  oneDNN ISA alike), and its weights alone, rounded per channel to 7 bits in torch, by 45%: its 3 x 3 filters
  sum nearly to zero and the batch norm after it scales them up to 56 times, so rounding is amplified. In the
  backbone scope (PatchCore) the other depthwise convolutions are int8: parity is that of keeping them float,
  and the frame 0.6 ms shorter (Xeon with amx_int8 avx512_vnni avx_vnni, 3.13 -> 2.55 ms p50, one scratch
  profile). The projections scope keeps them float: FastFlow's ELPV mono bake was refused with them in int8;
- for every model but PatchCore, also the convolutions fed by the signed linear bottleneck (the expand
  convolutions), the "projections" scope. PatchCore takes the "backbone" scope, with them in int8: on ELPV mono
  its AUROC went 95.47 -> 95.57 and every validation verdict held, and its frame took 2.9 ms against 4.2
  (PERF_COUNT profile, exact search, 2,048-entry bank, AVX-512 VNNI EPYC). SimpleNet's learned discriminator
  does not take that noise: its AUROC fell 1.1 points (bench/precision.py, both). Nor does PaDiM's Mahalanobis
  distance, which magnifies the features' small axes: on ELPV split 0 the backbone scope moved its AUROC by
  -0.53 (mono) and +0.89 (poly) points with validation rank correlations of 0.91 and 0.93, the projections
  scope by -0.11 and -0.06 with 0.99 (bench/precision.py, the scope patched in a scratch run).

NNCF's fast bias correction, not its full one: on ELPV mono the full one raised the validation rank correlation
against torch from 0.911 to 0.932 and the test goods' from 0.971 to 0.981 (a bake of 55 s instead of 24, 300
calibration images; a scratch comparison, one run each), but on the tests' tiny synthetic set it took PatchCore's
from above 0.85 to 0.75. The mixed preset (asymmetric activations) gained less on mono (0.924, 0.979).

Weights are 7 bits in every layer (NNCF's overflow fix) unless the bake is for VNNI CPUs: CPUs without VNNI (AVX2
only, as many factory PCs) multiply u8 x s8 pairs into saturating int16, which took the tiny PatchCore bake's rank
correlation from 0.90 to 0.63. `converter bake --int8-cpu vnni` takes 8-bit weights for CPUs with AVX-512 VNNI,
AVX-VNNI or AMX, and the agent refuses that bundle on any other CPU: on ELPV split 0 (bench/precision.py) poly's
int8 AUROC went from +0.55 points off torch to +0.11, its test images' rank correlation from 0.9931 to 0.9955, and
mono's validation rank correlation from 0.952 to 0.968.
"""

from __future__ import annotations

import logging
from typing import Literal

import nncf
import numpy as np
import openvino as ov
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

from edge_agent.bundle import Int8Cpu

log = logging.getLogger(__name__)

HEAD_STARTS = {"MatMul", "FakeQuantize"}
FLOAT_TYPES = ["AvgPool", "Interpolate", "Concat"]
DEPTHWISE = "GroupConvolution"
CONVOLUTIONS = {"Convolution", DEPTHWISE}
BOUNDED_ACTIVATION = "Clamp"

Scope = Literal["backbone", "projections"]
# Models whose bakes hold with the expand convolutions in int8 (see above); the others keep them float.
BACKBONE_SCOPE_MODELS = frozenset({"patchcore"})


def int8_scope(model_type: str) -> Scope:
    return "backbone" if model_type in BACKBONE_SCOPE_MODELS else "projections"


def head_ops(model: ov.Model) -> list[str]:
    """Names of the ops at or after the first MatMul / FakeQuantize on any path."""
    head: set[str] = set()
    for op in model.get_ordered_ops():
        producers = (value.get_node().get_friendly_name() for value in op.input_values())
        if op.get_type_name() in HEAD_STARTS or any(p in head for p in producers):
            head.add(op.get_friendly_name())
    return sorted(head)


def input_convolutions(model: ov.Model) -> list[str]:
    """Names of the convolutions no other convolution precedes: those that read the normalized pixels."""
    after: set[str] = set()
    first = []
    for op in model.get_ordered_ops():
        producers = [value.get_node().get_friendly_name() for value in op.input_values()]
        fed = any(p in after for p in producers)
        if op.get_type_name() in CONVOLUTIONS and not fed:
            first.append(op.get_friendly_name())
        if fed or op.get_type_name() in CONVOLUTIONS:
            after.add(op.get_friendly_name())
    return first


def stem_successors(model: ov.Model) -> list[str]:
    """Names of the convolutions that read the stem's output: those whose nearest convolutions upstream are all
    input convolutions (Lite0's first depthwise, through the stem's batch norm and ReLU6)."""
    stems = set(input_convolutions(model))
    convolutions: set[str] = set()
    nearest: dict[str, set[str]] = {}  # op -> the convolutions closest upstream of it
    found = []
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        producers = [value.get_node().get_friendly_name() for value in op.input_values()]
        nearest[name] = {c for p in producers for c in ({p} if p in convolutions else nearest[p])}
        if op.get_type_name() in CONVOLUTIONS:
            convolutions.add(name)
            if name not in stems and nearest[name] and nearest[name] <= stems:
                found.append(name)
    return found


def unbounded_convolutions(model: ov.Model) -> list[str]:
    """Convolutions whose input is not a clamped activation."""
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Convolution" and op.input_value(0).get_node().get_type_name() != BOUNDED_ACTIVATION
    ]


def quantize_openvino(model: ov.Model, calibration: np.ndarray, scope: Scope, cpu: Int8Cpu = "any") -> ov.Model:
    """int8 for the feature extractor's convolutions in `scope` (all but the stem and the convolution after it,
    or only the 1 x 1 convolutions fed by a clamped activation), with ranges from `calibration` (uint8 K x H x W x 3
    model inputs of good parts), and weights of 7 bits for any CPU or 8 for VNNI CPUs (see above)."""
    if len(calibration) == 0:
        raise ValueError("int8 quantization needs at least one calibration image")
    dataset = nncf.Dataset([image[np.newaxis] for image in calibration])
    floats = head_ops(model) + input_convolutions(model) + stem_successors(model)
    types = FLOAT_TYPES
    if scope == "projections":
        floats += unbounded_convolutions(model)
        types = [*types, DEPTHWISE]
    ignored = nncf.IgnoredScope(names=floats, types=types, validate=False)
    log.info("quantizing to int8 (%s scope, for %s CPUs) on %d calibration image(s)", scope, cpu, len(calibration))
    overflow_fix = OverflowFix.ENABLE if cpu == "any" else OverflowFix.DISABLE
    advanced = AdvancedQuantizationParameters(overflow_fix=overflow_fix)
    return nncf.quantize(
        model, dataset, subset_size=len(calibration), ignored_scope=ignored, advanced_parameters=advanced
    )
