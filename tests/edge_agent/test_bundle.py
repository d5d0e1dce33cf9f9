"""The edge bundle's integrity checks: the manifest's own digest, its optional HMAC signature, and the key file."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import yaml
from pipeline import Pipeline
from pydantic import ValidationError

from edge_agent.bundle import (
    MANIFEST,
    MANIFEST_DIGEST,
    MANIFEST_SIGNATURE,
    ScoreReference,
    load_edge_bundle,
    write_manifest,
)
from edge_agent.config import ModelConfig
from edge_agent.errors import BundleError
from edge_agent.hashing import read_key, sha256_bytes
from edge_agent.model import load_model

KEY = b"a shared secret of the site"


def _copy(pipeline: Pipeline, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pipeline.edge, tmp_path / "edge"))


def _raise_threshold(edge: Path) -> None:
    """What someone editing the bundle by hand does: a higher threshold lets more parts pass."""
    manifest = load_edge_bundle(edge).manifest
    edited = manifest.model_copy(update={"threshold": manifest.threshold * 10})
    text = (edge / MANIFEST).read_text().replace(f"threshold: {manifest.threshold}", f"threshold: {edited.threshold}")
    assert text != (edge / MANIFEST).read_text()
    (edge / MANIFEST).write_text(text)


def test_a_hand_edited_manifest_is_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    edge = _copy(pipeline, tmp_path)
    _raise_threshold(edge)
    with pytest.raises(BundleError, match=r"manifest\.yaml does not match its manifest\.sha256"):
        load_edge_bundle(edge)


def test_with_a_key_an_edit_with_a_fresh_digest_is_still_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    edge = _copy(pipeline, tmp_path)
    write_manifest(edge, load_edge_bundle(edge).manifest, KEY)
    assert load_edge_bundle(edge, KEY).manifest.version
    _raise_threshold(edge)
    (edge / MANIFEST_DIGEST).write_text(sha256_bytes((edge / MANIFEST).read_bytes()))  # whoever edits can do this
    load_edge_bundle(edge)  # without a key, the digest only catches accidents
    with pytest.raises(BundleError, match=r"signed with another key .* or changed since"):
        load_edge_bundle(edge, KEY)


def test_a_bundle_baked_before_manifests_were_hashed_loads_with_a_warning(
    pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    edge = _copy(pipeline, tmp_path)
    (edge / MANIFEST_DIGEST).unlink()
    with caplog.at_level(logging.WARNING, logger="edge_agent.bundle"):
        assert load_edge_bundle(edge).manifest.version
    assert "baked before manifests were hashed" in caplog.text
    with pytest.raises(BundleError, match="not signed"):
        load_edge_bundle(edge, KEY)
    assert not (edge / MANIFEST_SIGNATURE).exists()


def test_key_files_are_read_without_their_newline_and_never_empty(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("secret\n")
    assert read_key(tmp_path / "key") == b"secret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(BundleError, match="is empty"):
        read_key(tmp_path / "empty")
    with pytest.raises(BundleError, match="cannot be read"):
        read_key(tmp_path / "missing")


def test_the_agent_with_a_key_file_loads_only_bundles_signed_with_it(pipeline: Pipeline, tmp_path: Path) -> None:
    key_file = tmp_path / "bundle.key"
    key_file.write_bytes(KEY + b"\n")
    config = ModelConfig(path=pipeline.edge, hmac_key_file=key_file, cache_dir=tmp_path / "cache")
    with pytest.raises(BundleError, match="not signed"):
        load_model(pipeline.edge, config)
    edge = _copy(pipeline, tmp_path)
    write_manifest(edge, load_edge_bundle(edge).manifest, KEY)
    assert load_model(edge, config).info.version == load_edge_bundle(pipeline.edge).manifest.version


def test_a_bundle_baked_before_score_references_loads_without_one(pipeline: Pipeline, tmp_path: Path) -> None:
    edge = _copy(pipeline, tmp_path)
    raw = yaml.safe_load((edge / MANIFEST).read_text())
    assert raw.pop("score_reference") is not None
    (edge / MANIFEST).write_text(yaml.safe_dump(raw, sort_keys=False))
    (edge / MANIFEST_DIGEST).write_text(sha256_bytes((edge / MANIFEST).read_bytes()))  # as that bake wrote it
    assert load_edge_bundle(edge).manifest.score_reference is None


@pytest.mark.parametrize(
    ("scores", "message"), [((2.0, 1.0), "sorted in ascending order"), ((1.0, math.nan), "not a finite number")]
)
def test_a_score_reference_must_be_sorted_and_finite(scores: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScoreReference(scores=scores)
