from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import FolderCameraConfig, GenicamCameraConfig, load_config
from edge_agent.errors import AgentError

REPO = Path(__file__).resolve().parents[2]

# Exactly as DESIGN.md prints it: users' scripts rely on these keys.
DESIGN_MINIMAL = """\
version: 1
station: press2
cameras:
  cam0:                 # replay a folder of images (sorted by name), optionally at a fixed rate
    source: folder
    path: /data/replay
    fps: 30
  gige0:
    source: genicam
    cti: viky           # 'viky' = the simulator shipped in the genicam package; else a path to a .cti
    device: 0           # index, serial number or user-defined name
    trigger: free-run   # free-run | software | hardware
model:
  path: /var/lib/edge-agent/models/press2   # an edge bundle directory
  runtime: openvino     # openvino | onnxruntime
  device: CPU           # CPU | GPU | AUTO (OpenVINO)
mqtt:
  host: 127.0.0.1
  port: 1883
  topic_prefix: inspect
reject:
  deadline_ms: 100
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_design_minimal_config_loads_as_written(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DESIGN_MINIMAL))
    assert cfg.station == "press2"
    cam0, gige0 = cfg.camera("cam0"), cfg.camera("gige0")
    assert isinstance(cam0, FolderCameraConfig) and cam0.fps == 30 and cam0.path == Path("/data/replay")
    assert isinstance(gige0, GenicamCameraConfig) and gige0.device == 0 and gige0.trigger == "free-run"
    assert cfg.model.path == Path("/var/lib/edge-agent/models/press2")
    assert (cfg.mqtt.topic_prefix, cfg.reject.deadline_ms) == ("inspect", 100)


@pytest.mark.parametrize("name", ["agent.yaml", "factory.yaml", "two-cameras.yaml"])
def test_example_configs_in_repo_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg.camera("gige0"), GenicamCameraConfig)


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    text = DESIGN_MINIMAL.replace("/data/replay", "replay").replace("/var/lib/edge-agent/models/press2", "edge")
    cfg = load_config(write(tmp_path, text))
    assert cfg.model.path == tmp_path / "edge"
    cam0 = cfg.camera("cam0")
    assert isinstance(cam0, FolderCameraConfig) and cam0.path == tmp_path / "replay"


def test_reload_dirs_and_key_file_resolve_from_the_config_folder(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, DESIGN_MINIMAL)).model.allowed_reload_dirs == [
        Path("/var/lib/edge-agent/models")
    ]
    text = DESIGN_MINIMAL.replace(
        "path: /var/lib/edge-agent/models/press2",
        "path: /var/lib/edge-agent/models/press2\n  reload_dirs: [bundles]\n  hmac_key_file: bundle.key",
    )
    model = load_config(write(tmp_path, text)).model
    assert model.allowed_reload_dirs == [tmp_path / "bundles"] and model.hmac_key_file == tmp_path / "bundle.key"


def test_outbox_settings_default_and_relative_store_dir(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DESIGN_MINIMAL))
    assert (cfg.mqtt.store_dir, cfg.mqtt.store_max_messages) == (None, 100_000)
    text = DESIGN_MINIMAL.replace("  topic_prefix: inspect", "  topic_prefix: inspect\n  store_dir: state")
    assert load_config(write(tmp_path, text)).mqtt.store_dir == tmp_path / "state"


def test_tls_and_password_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    extra = "  tls:\n    ca_file: pki/ca.crt\n  username: line2\n  password_file: secrets/mqtt"
    cfg = load_config(
        write(tmp_path, DESIGN_MINIMAL.replace("  topic_prefix: inspect", f"  topic_prefix: inspect\n{extra}"))
    )
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca_file == tmp_path / "pki" / "ca.crt"
    assert cfg.mqtt.password_file == tmp_path / "secrets" / "mqtt"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  tls:\n    ca_file: ca.crt\n    cert_file: c.crt", "cert_file and key_file go together"),
        ("  password_file: p", "password_file needs username"),
    ],
)
def test_half_configured_security_names_what_is_missing(tmp_path: Path, extra: str, message: str) -> None:
    text = DESIGN_MINIMAL.replace("  topic_prefix: inspect", f"  topic_prefix: inspect\n{extra}")
    with pytest.raises(AgentError, match=message):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    fps: 30", "    fpz: 30", "unknown field 'cameras.cam0.fpz'"),
        ("  port: 1883", "  port: lots", "field 'mqtt.port'"),
        ("  device: CPU ", "  device: TPU ", "field 'model.device'"),
        ("version: 1", "version: 7", "field 'version'"),
        ("  port: 1883", "  port: 1883\n  store_max_messages: 0", "field 'mqtt.store_max_messages'"),
        ("  port: 1883", "  port: 1883\n  reconnect_min_s: 0", "field 'mqtt.reconnect_min_s'"),
        ("  port: 1883", "  port: 1883\n  reconnect_max_s: -5", "field 'mqtt.reconnect_max_s'"),
        ("    source: folder", "    source: usb", "field 'cameras.cam0'"),
        (
            "  deadline_ms: 100",
            "  deadline_ms: 100\n  not_inspected_is_reject: maybe",
            "reject.not_inspected_is_reject",
        ),
        ("  deadline_ms: 100", "  deadline_ms: 100\n  not_inspected_reject: false", "unknown field 'reject.not_insp"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in DESIGN_MINIMAL
    with pytest.raises(AgentError, match=message):
        load_config(write(tmp_path, DESIGN_MINIMAL.replace(old, new)))


def test_parts_not_inspected_are_rejects_unless_the_config_says_otherwise(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, DESIGN_MINIMAL)).reject.not_inspected_is_reject is True
    off = DESIGN_MINIMAL.replace("  deadline_ms: 100", "  deadline_ms: 100\n  not_inspected_is_reject: false")
    assert load_config(write(tmp_path, off)).reject.not_inspected_is_reject is False


def test_the_reconnect_backoff_defaults_and_a_min_above_the_max_is_refused(tmp_path: Path) -> None:
    mqtt = load_config(write(tmp_path, DESIGN_MINIMAL)).mqtt
    assert (mqtt.reconnect_min_s, mqtt.reconnect_max_s) == (1, 30)
    backoff = "  port: 1883\n  reconnect_min_s: 60\n  reconnect_max_s: 30"
    with pytest.raises(AgentError, match=r"field 'mqtt': .*reconnect_min_s \(60\) is above reconnect_max_s \(30\)"):
        load_config(write(tmp_path, DESIGN_MINIMAL.replace("  port: 1883", backoff)))


def test_unknown_camera_lists_known_ones(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DESIGN_MINIMAL))
    with pytest.raises(AgentError, match="unknown camera 'cam9'; this config defines: cam0, gige0"):
        cfg.camera("cam9")


GIGE0_OWN_MODEL = """\
    trigger: free-run   # free-run | software | hardware
    model:
      path: models/gige0
      device: GPU
      reload_dirs: [models]
      cache_dir: cache
"""


def test_a_camera_model_replaces_the_top_level_one_for_that_camera_only(tmp_path: Path) -> None:
    text = DESIGN_MINIMAL.replace(
        "    trigger: free-run   # free-run | software | hardware\n", GIGE0_OWN_MODEL
    ).replace("  device: CPU           # CPU | GPU | AUTO (OpenVINO)", "  device: CPU\n  hmac_key_file: bundle.key")
    cfg = load_config(write(tmp_path, text))
    own, shared = cfg.camera_model("gige0"), cfg.camera_model("cam0")
    assert shared == cfg.model and shared.path == Path("/var/lib/edge-agent/models/press2")
    # Relative to the config's folder, like the top-level section's paths.
    assert (own.path, own.device, own.cache_dir) == (tmp_path / "models" / "gige0", "GPU", tmp_path / "cache")
    assert own.allowed_reload_dirs == [tmp_path / "models"]
    # Replaced, not merged: a key the camera's section leaves out takes its default, not the top-level value.
    assert shared.hmac_key_file == tmp_path / "bundle.key" and own.hmac_key_file is None
    assert own.runtime is None


def test_top_level_model_may_go_when_every_camera_has_its_own(tmp_path: Path) -> None:
    text = (
        "version: 1\nstation: s1\ncameras:\n"
        "  left: {source: genicam, device: 0, model: {path: /models/left}}\n"
        "  right: {source: folder, path: replay, model: {path: right}}\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.model is None
    assert cfg.camera_model("left").path == Path("/models/left")
    assert cfg.camera_model("right").path == tmp_path / "right"


@pytest.mark.parametrize(
    ("cameras", "message"),
    [
        # As before per-camera models: no model anywhere.
        ("  cam0: {source: folder, path: r}\n  gige0: {source: genicam}\n", "camera\\(s\\) cam0, gige0 have"),
        (
            "  cam0: {source: folder, path: r, model: {path: m}}\n  gige0: {source: genicam}\n",
            "camera\\(s\\) gige0 have",
        ),
    ],
)
def test_a_camera_without_any_model_is_named(tmp_path: Path, cameras: str, message: str) -> None:
    with pytest.raises(AgentError, match=f"field 'model': .*{message} no 'model' of their own; add the top-level"):
        load_config(write(tmp_path, f"version: 1\nstation: s1\ncameras:\n{cameras}"))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{path: m, pth: x}", "unknown field 'cameras.gige0.model.pth'"),
        ("{path: m, device: TPU}", "field 'cameras.gige0.model.device'"),
    ],
)
def test_bad_camera_model_fields_are_named(tmp_path: Path, model: str, message: str) -> None:
    text = DESIGN_MINIMAL.replace("    device: 0   ", f"    model: {model}\n    device: 0   ")
    with pytest.raises(AgentError, match=message):
        load_config(write(tmp_path, text))


def test_the_two_camera_example_gives_each_camera_its_own_device_and_model() -> None:
    cfg = load_config(REPO / "configs" / "two-cameras.yaml")
    cameras = [cfg.camera(name) for name in ("gige0", "gige1")]
    assert [(c.source, c.cti, c.device) for c in cameras if isinstance(c, GenicamCameraConfig)] == [
        ("genicam", "viky", 0),
        ("genicam", "viky", 1),
    ]
    assert cfg.camera_model("gige0").path != cfg.camera_model("gige1").path


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="not valid YAML at line"):
        load_config(write(tmp_path, "version: 1\nstation: [unclosed\n"))
    with pytest.raises(AgentError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_plc_outputs_are_off_and_on_loopback_by_default(tmp_path: Path) -> None:
    plc = load_config(write(tmp_path, DESIGN_MINIMAL)).plc
    assert not plc.opcua.enabled and not plc.modbus.enabled
    assert (plc.opcua.host, plc.opcua.port, plc.modbus.host, plc.modbus.port) == ("127.0.0.1", 4840, "127.0.0.1", 5020)


@pytest.mark.parametrize(
    ("plc", "message"),
    [
        ("  modbus: {enabled: true, unti_id: 2}", "unknown field 'plc.modbus.unti_id'"),
        ("  modbus: {unit_id: 0}", "field 'plc.modbus.unit_id'"),
        ("  opcua: {port: 70000}", "field 'plc.opcua.port'"),
        ("  reject_pulse_ms: 0", "field 'plc.reject_pulse_ms'"),
        ("  profinet: {enabled: true}", "unknown field 'plc.profinet'"),
    ],
)
def test_bad_plc_fields_are_named(tmp_path: Path, plc: str, message: str) -> None:
    with pytest.raises(AgentError, match=message):
        load_config(write(tmp_path, f"{DESIGN_MINIMAL}plc:\n{plc}\n"))
