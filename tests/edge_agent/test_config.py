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


@pytest.mark.parametrize("name", ["agent.yaml", "factory.yaml"])
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
