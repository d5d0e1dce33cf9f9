from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from in_process import run_main
from pipeline import Pipeline

import converters.bake
import converters.cli
from converters.bake import BakeError, BakeOptions, Frames, bake
from edge_agent.bundle import MANIFEST_DIGEST, MANIFEST_SIGNATURE, load_edge_bundle
from edge_agent.errors import BundleError
from edge_agent.geometry import Geometry, prepare
from edge_agent.hashing import sha256_bytes
from edge_agent.imageio import list_images, read_image
from edge_agent.runtimes.base import infer_frame
from edge_agent.runtimes.openvino import OpenVinoRuntime
from edge_agent.runtimes.openvino_ops import ISA_CAP
from trainer.bundle import load_bundle, read_manifest

FP32_REL_TOLERANCE = 1e-3
FP32_MIN_SPEARMAN = 0.9999


def test_parity_report_meets_fp32_goals(pipeline: Pipeline) -> None:
    parity = load_edge_bundle(pipeline.edge).manifest.parity
    assert parity.images > 0
    assert parity.score_rel_diff_max <= FP32_REL_TOLERANCE
    assert parity.spearman >= FP32_MIN_SPEARMAN
    assert parity.verdict_agreement == 1.0


def test_agent_runtime_matches_torch_on_defects(pipeline: Pipeline) -> None:
    """Defect images were not part of the bake's parity set: check them independently here."""
    model, _ = load_bundle(pipeline.model)
    runtime = OpenVinoRuntime.from_bundle(load_edge_bundle(pipeline.edge))
    for path in list_images(pipeline.data / "test" / "scratch"):
        image = prepare(read_image(path), Geometry(height=128, width=128)).inputs[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(image[None]))
        baked = runtime.infer(image)
        assert abs(baked.score - float(ref.score[0])) <= FP32_REL_TOLERANCE * float(ref.score[0])
        np.testing.assert_allclose(baked.anomaly_map, ref.anomaly_map[0, 0].numpy(), rtol=1e-3, atol=1e-2)


def test_the_manifest_carries_the_baked_graphs_scores_of_every_validation_image(pipeline: Pipeline) -> None:
    bundle = load_edge_bundle(pipeline.edge)
    reference = bundle.manifest.score_reference
    validation = read_manifest(pipeline.model).training_set.validation
    runtime = OpenVinoRuntime.from_bundle(bundle)
    expected = sorted(infer_frame(runtime, read_image(Path(p)), bundle.manifest.geometry).score for p in validation)
    assert reference is not None and len(reference.scores) == len(validation)
    np.testing.assert_allclose(reference.scores, expected, rtol=1e-6)


def test_tampered_bin_is_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    copy = shutil.copytree(pipeline.edge, tmp_path / "edge")
    data = bytearray((copy / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.bin does not match its sha256"):
        load_edge_bundle(copy)


def test_unknown_format_version_is_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    copy = shutil.copytree(pipeline.edge, tmp_path / "edge")
    manifest = copy / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("format_version: 1", "format_version: 99"))
    # As a later converter would write it: its digest matches.
    (copy / MANIFEST_DIGEST).write_text(sha256_bytes(manifest.read_bytes()))
    with pytest.raises(BundleError, match="format version 99"):
        load_edge_bundle(copy)


def test_a_bake_signed_with_a_key_loads_with_it_and_with_no_other(pipeline: Pipeline, tmp_path: Path) -> None:
    key = tmp_path / "bundle.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    edge = tmp_path / "edge"
    bake(BakeOptions(bundle=pipeline.model, out=edge, sign_key=key))
    assert (edge / MANIFEST_SIGNATURE).is_file()
    assert load_edge_bundle(edge, b"0123456789abcdef0123456789abcdef").manifest.precision == "fp32"
    with pytest.raises(BundleError, match="signed with another key"):
        load_edge_bundle(edge, b"another key")
    with pytest.raises(BundleError, match="not signed"):
        load_edge_bundle(pipeline.edge, b"0123456789abcdef0123456789abcdef")


def test_bake_with_an_unreadable_key_stops_before_baking(pipeline: Pipeline, tmp_path: Path) -> None:
    result = _bake_cli(str(pipeline.model), "--out", str(tmp_path / "edge"), "--sign-key", str(tmp_path / "none"))
    _one_line_error(result, "bundle signing key")
    assert not (tmp_path / "edge").exists()


def _bake_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_main(converters.cli.main, "converter", "bake", *args)


def _one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_bake_cli_refuses_a_missing_bundle(tmp_path: Path) -> None:
    _one_line_error(_bake_cli(str(tmp_path / "nope"), "--out", str(tmp_path / "e")), "is not a model bundle")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--target", "coreml"], "unknown --target 'coreml'; choose one of openvino, onnx, tensorrt"),
        (["--precision", "int4"], "--precision int4 is not available for --target openvino (choose fp32, fp16, int8)"),
        (["--target", "onnx", "--precision", "int8"], "int8 is baked for OpenVINO"),
        (["--precision", "int8", "--int8-cpu", "arm"], "unknown --int8-cpu 'arm'; choose any, vnni or native"),
        (["--int8-cpu", "vnni"], "--int8-cpu vnni applies to int8 bakes; add --precision int8"),
    ],
)
def test_bake_cli_refuses_an_unknown_target_or_precision(
    pipeline: Pipeline, tmp_path: Path, option: list[str], expected: str
) -> None:
    _one_line_error(_bake_cli(str(pipeline.model), "--out", str(tmp_path / "e"), *option), expected)
    assert not (tmp_path / "e").exists()


def test_an_int8_bake_for_vnni_cpus_needs_one_to_check_it_on(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ISA_CAP, "AVX2")  # oneDNN capped below VNNI: no VNNI here, whatever this CPU has
    args = ("--out", str(tmp_path / "e"), "--precision", "int8", "--int8-cpu", "vnni")
    _one_line_error(_bake_cli(str(pipeline.model), *args), "--int8-cpu vnni needs a VNNI CPU to check the bake on")
    assert not (tmp_path / "e").exists()


def test_int8_refuses_too_few_calibration_images(pipeline: Pipeline, tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for path in list_images(pipeline.data / "train" / "good")[:3]:
        shutil.copy(path, calib / path.name)
    args = (str(pipeline.model), "--out", str(tmp_path / "e"), "--precision", "int8", "--calib", str(calib))
    _one_line_error(_bake_cli(*args), "int8 needs at least 10 good images to calibrate on; --calib")
    assert "gave 3" in _bake_cli(*args).stderr
    assert not (tmp_path / "e").exists()


def test_bake_never_replaces_a_folder_that_is_not_an_edge_bundle(pipeline: Pipeline, tmp_path: Path) -> None:
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "keep.txt").write_text("not a bundle")
    with pytest.raises(BakeError, match="exists and is not an edge bundle"):
        bake(BakeOptions(bundle=pipeline.model, out=precious))
    assert (precious / "keep.txt").read_text() == "not a bundle"


def _int8_frames(pipeline: Pipeline, root: str) -> Frames:
    training = read_manifest(pipeline.model).training_set.model_copy(update={"root": root})
    return converters.bake._frames(training, BakeOptions(bundle=pipeline.model, out=Path("e"), precision="int8"))


def test_int8_calibrates_on_training_images_the_guard_does_not_judge(pipeline: Pipeline) -> None:
    frames = _int8_frames(pipeline, str(pipeline.data))
    assert frames.calibration_source == "training images"
    judged = {image.tobytes() for image in frames.validation}
    assert len(frames.calibration) == 48 and not judged & {image.tobytes() for image in frames.calibration}


def test_int8_calibrates_on_the_validation_images_when_the_training_images_are_gone(
    pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frames = _int8_frames(pipeline, str(tmp_path / "moved"))
    assert frames.calibration_source == "validation images" and len(frames.calibration) == len(frames.validation)
    assert "the accuracy guard then judges too" in caplog.text
