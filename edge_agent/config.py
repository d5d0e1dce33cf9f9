"""The agent's YAML config, validated once at start-up. Past `load_config`, code gets typed objects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from edge_agent.errors import AgentError

CONFIG_VERSION = 1
DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FolderCameraConfig(Strict):
    source: Literal["folder"]
    path: Path
    fps: float | None = Field(default=None, gt=0, description="replay rate; None replays as fast as the loop runs")
    loop: bool = False
    queue_size: int = Field(default=4, ge=1)
    model: ModelConfig | None = None  # this camera's own model section; unset: the top-level one


class VideoCameraConfig(Strict):
    """A video file replayed frame by frame (anything OpenCV's FFmpeg reads: mp4, avi, mkv, ...)."""

    source: Literal["video"]
    path: Path
    fps: float | None = Field(default=None, gt=0, description="replay rate; None replays as fast as the loop runs")
    loop: bool = False
    queue_size: int = Field(default=4, ge=1)
    model: ModelConfig | None = None  # this camera's own model section; unset: the top-level one


class RoiConfig(Strict):
    """The sensor window, in sensor pixels: a smaller window is less to transfer and faster to read out."""

    width: int = Field(gt=0)
    height: int = Field(gt=0)
    offset_x: int = Field(default=0, ge=0)
    offset_y: int = Field(default=0, ge=0)


class GenicamCameraConfig(Strict):
    """A GenICam device. A setting left out keeps the device's own value; a setting given on a device
    without its node is an error that names the node."""

    source: Literal["genicam"]
    cti: str = "viky"  # 'viky' is the simulator in the genicam package; otherwise a path to a .cti
    device: int | str = 0  # index, serial number or user-defined name
    trigger: Literal["free-run", "software", "hardware"] = "free-run"
    # software: frames per second the agent triggers at (unset: one trigger per grab, as fast as the loop runs)
    trigger_rate_hz: float | None = Field(default=None, gt=0)
    trigger_line: str = "Line0"  # hardware: the input line the part sensor or PLC drives
    trigger_activation: Literal["RisingEdge", "FallingEdge", "AnyEdge", "LevelHigh", "LevelLow"] = "RisingEdge"
    pixel_format: str | None = None  # a PFNC name, e.g. Mono8, BayerRG8, Mono12p
    exposure_us: float | None = Field(default=None, gt=0)  # turns ExposureAuto off where the device has it
    gain_db: float | None = Field(default=None, ge=0)  # turns GainAuto off where the device has it
    frame_rate: float | None = Field(default=None, gt=0)  # free-run: AcquisitionFrameRate
    roi: RoiConfig | None = None
    buffer_count: int | None = Field(default=None, ge=1, description="frame buffers the producer fills")
    timeout_s: float = Field(default=2.0, gt=0)
    queue_size: int = Field(default=4, ge=1)
    model: ModelConfig | None = None  # this camera's own model section; unset: the top-level one

    @model_validator(mode="after")
    def _known_pixel_format(self) -> GenicamCameraConfig:
        # Imported here: the cameras package imports this module.
        from edge_agent.cameras.pixel_formats import SUPPORTED_PIXEL_FORMATS

        if self.pixel_format is not None and self.pixel_format not in SUPPORTED_PIXEL_FORMATS:
            raise ValueError(
                f"pixel format {self.pixel_format!r} is not supported; use one of {', '.join(SUPPORTED_PIXEL_FORMATS)}"
            )
        return self


CameraConfig = Annotated[FolderCameraConfig | VideoCameraConfig | GenicamCameraConfig, Field(discriminator="source")]


class ModelConfig(Strict):
    path: Path
    # Unset: the runtime that runs the bundle's target (openvino for openvino, onnxruntime for onnx/tensorrt).
    runtime: Literal["openvino", "onnxruntime"] | None = None
    device: Literal["CPU", "GPU", "AUTO"] = "CPU"  # OpenVINO only; onnxruntime picks TensorRT, CUDA, then CPU
    # Compiled models (OpenVINO) and TensorRT engines are cached here, so a restart skips compilation.
    # Unset: systemd's CacheDirectory when the unit has one, else ~/.cache/edge-agent.
    cache_dir: Path | None = None
    # The only folders `cmd/reload {"path": ...}` may load an edge bundle from (symlinks followed), so a command
    # cannot point the agent at any folder on the disk. Unset: the folder holding `path`.
    reload_dirs: list[Path] | None = None
    # A shared secret: only bundles whose manifest is signed with it (`converter bake --sign-key`) load.
    hmac_key_file: Path | None = None

    @property
    def allowed_reload_dirs(self) -> list[Path]:
        return self.reload_dirs if self.reload_dirs is not None else [self.path.parent]


class TlsConfig(Strict):
    ca_file: Path  # the CA that signed the broker's certificate
    # A client certificate and its key, for brokers that authenticate clients by certificate; both or neither.
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both, or neither")
        return self


class MqttConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = "inspect"
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=5)
    # Reconnect backoff: the wait doubles after each failed attempt, from the min to the max. Whole seconds: paho
    # counts them as ints.
    reconnect_min_s: int = Field(default=1, gt=0)
    reconnect_max_s: int = Field(default=30, gt=0)
    flush_timeout_s: float = Field(default=10.0, gt=0, description="how long a clean stop waits for delivery")
    # The outbox: verdicts wait in outbox-<camera>.sqlite in this folder until the broker acknowledged them,
    # across broker outages and agent restarts. Unset: systemd's StateDirectory, else ~/.local/state/edge-agent.
    store_dir: Path | None = None
    store_max_messages: int = Field(default=100_000, ge=1, description="outbox bound; when full the oldest go")
    tls: TlsConfig | None = None  # unset: plain TCP
    username: str | None = None
    # The password lives in its own file (mode 0600, outside the config), so configs can be shared and versioned.
    password_file: Path | None = None

    @model_validator(mode="after")
    def _password_needs_user(self) -> MqttConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        return self

    @model_validator(mode="after")
    def _backoff_grows(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) is above reconnect_max_s ({self.reconnect_max_s}); "
                "the backoff starts at the min and stops growing at the max"
            )
        return self


class RejectConfig(Strict):
    deadline_ms: float = Field(default=100.0, gt=0)
    error_is_reject: bool = True
    # A part that got no model verdict (dropped, paused, skipped by the camera) goes to the reject topic too.
    not_inspected_is_reject: bool = True


class ArchiveConfig(Strict):
    enabled: bool = True
    path: Path = Path("/var/lib/edge-agent/archive")
    # Disk the archive may use; past it the oldest files go first, so the newest rejects are always kept.
    quota_mb: float = Field(default=5000.0, gt=0)
    # Share of good frames archived too (0 to 1): evidence of what "good" looked like on a given day.
    good_sample_rate: float = Field(default=0.0, ge=0, le=1)


class MetricsConfig(Strict):
    stats_interval_s: float = Field(default=10.0, gt=0)
    # Prometheus /metrics and /healthz over HTTP; loopback only unless a scraper elsewhere needs it.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=1, le=65535)
    health_timeout_s: float = Field(default=10.0, gt=0, description="/healthz fails after this long without a frame")


class OpcUaConfig(Strict):
    """An OPC UA server (no security, anonymous): bind it to loopback or the PLC network's interface only."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=4840, ge=1, le=65535)  # camera N of the config serves on port + N


class ModbusConfig(Strict):
    """A Modbus TCP server (no authentication): bind it to loopback or the PLC network's interface only."""

    enabled: bool = False
    host: str = "127.0.0.1"
    # Not 502: ports below 1024 need CAP_NET_BIND_SERVICE, which the systemd unit does not grant.
    port: int = Field(default=5020, ge=1, le=65535)  # camera N of the config serves on port + N
    unit_id: int = Field(default=1, ge=1, le=255)  # 0 is Modbus broadcast, never answered


class PlcConfig(Strict):
    """Servers a PLC reads the camera's last result from, beside MQTT (README: PLC outputs)."""

    opcua: OpcUaConfig = OpcUaConfig()
    modbus: ModbusConfig = ModbusConfig()
    # How long reject_pulse stays on after a reject: long enough for a PLC polling every 100 ms to see it.
    reject_pulse_ms: float = Field(default=250.0, gt=0)


# The drift watch estimates the window's serial correlation from the window itself; fewer scores make it noise.
MIN_DRIFT_WINDOW = 20


class DriftConfig(Strict):
    """Drift watch: every `check_every` judged frames, a two-sample Kolmogorov-Smirnov test of the last `window`
    scores against the bundle's score reference (README, Drift watch). On only when the bundle has a reference."""

    enabled: bool = True
    window: int = Field(default=1000, ge=MIN_DRIFT_WINDOW, description="recent scores compared with the reference")
    check_every: int = Field(default=100, ge=1, description="judged frames between two tests")
    alpha: float = Field(default=0.001, gt=0, lt=0.5, description="the test's significance level, per check")
    # Consecutive checks past the critical value that raise the alarm; as many well inside it (below 80%) clear it.
    breaches: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _every_score_tested(self) -> DriftConfig:
        if self.check_every > self.window:
            raise ValueError(
                f"check_every ({self.check_every}) is above window ({self.window}): scores between two windows "
                "would never be tested; lower check_every or raise window"
            )
        return self


class AgentConfig(Strict):
    version: Literal[1]
    station: str = Field(min_length=1)
    cameras: dict[str, CameraConfig] = Field(min_length=1)
    # Required unless every camera has a `model` of its own. Checked as a default too, so its absence is named.
    model: ModelConfig | None = Field(default=None, validate_default=True)
    mqtt: MqttConfig = MqttConfig()
    reject: RejectConfig = RejectConfig()
    archive: ArchiveConfig = ArchiveConfig()
    metrics: MetricsConfig = MetricsConfig()
    plc: PlcConfig = PlcConfig()
    drift: DriftConfig = DriftConfig()

    def camera(self, name: str) -> CameraConfig:
        try:
            return self.cameras[name]
        except KeyError:
            known = ", ".join(sorted(self.cameras))
            raise AgentError(f"unknown camera '{name}'; this config defines: {known}") from None

    def camera_index(self, name: str) -> int:
        """Camera `name`'s place in the config (0-based): each camera's process serves on a base port + this."""
        return list(self.cameras).index(name)

    def camera_model(self, name: str) -> ModelConfig:
        """The model settings camera `name` runs and reloads with: its own `model` section, else the top-level one."""
        own = self.camera(name).model
        if own is not None:
            return own
        if self.model is None:  # only a config built without validation gets here
            raise AgentError(_missing_model([name]))
        return self.model

    @field_validator("model")
    @classmethod
    def _every_camera_has_a_model(cls, model: ModelConfig | None, info: ValidationInfo) -> ModelConfig | None:
        # Cameras that failed validation are absent here, and already reported.
        cameras: dict[str, CameraConfig] = info.data.get("cameras", {})
        without = [name for name, camera in cameras.items() if camera.model is None]
        if model is None and without:
            raise ValueError(_missing_model(without))
        return model


def _missing_model(cameras: list[str]) -> str:
    return (
        f"required, as camera(s) {', '.join(cameras)} have no 'model' of their own; add the top-level 'model' "
        "section (for every camera without one), or a 'model' section under each of those cameras"
    )


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and p in ("folder", "video", "genicam")))
    extra = f" ({len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    if first["type"] == "extra_forbidden":
        return f"unknown field '{where}'; remove it or check its spelling{extra}"
    return f"field '{where}': {first['msg']}{extra}"


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _maybe(path: Path | None, base: Path) -> Path | None:
    return None if path is None else _resolve(path, base)


def _resolve_mqtt(mqtt: MqttConfig, base: Path) -> MqttConfig:
    tls = mqtt.tls
    if tls is not None:
        tls = tls.model_copy(
            update={
                "ca_file": _resolve(tls.ca_file, base),
                "cert_file": _maybe(tls.cert_file, base),
                "key_file": _maybe(tls.key_file, base),
            }
        )
    return mqtt.model_copy(
        update={
            "store_dir": _maybe(mqtt.store_dir, base),
            "tls": tls,
            "password_file": _maybe(mqtt.password_file, base),
        }
    )


def _resolve_model(model: ModelConfig, base: Path) -> ModelConfig:
    return model.model_copy(
        update={
            "path": _resolve(model.path, base),
            "cache_dir": _maybe(model.cache_dir, base),
            "hmac_key_file": _maybe(model.hmac_key_file, base),
            "reload_dirs": None if model.reload_dirs is None else [_resolve(d, base) for d in model.reload_dirs],
        }
    )


def _resolve_camera(camera: CameraConfig, base: Path) -> CameraConfig:
    update: dict[str, object] = {}
    if isinstance(camera, FolderCameraConfig | VideoCameraConfig):
        update["path"] = _resolve(camera.path, base)
    if camera.model is not None:
        update["model"] = _resolve_model(camera.model, base)
    return camera.model_copy(update=update)


def load_config(path: Path) -> AgentConfig:
    """Read and validate; relative paths in the file are taken relative to the file's folder."""
    if not path.is_file():
        raise AgentError(f"config file {path} does not exist; pass --config with the path to agent.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise AgentError(f"config {path} is not valid YAML{line}") from None
    if not isinstance(raw, dict):
        raise AgentError(f"config {path} must be a YAML mapping with 'version', 'station', 'cameras', 'model'")
    try:
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise AgentError(f"config {path}: {_describe(exc)}") from None
    base = path.resolve().parent
    return cfg.model_copy(
        update={
            "cameras": {name: _resolve_camera(cam, base) for name, cam in cfg.cameras.items()},
            "model": None if cfg.model is None else _resolve_model(cfg.model, base),
            "mqtt": _resolve_mqtt(cfg.mqtt, base),
            "archive": cfg.archive.model_copy(update={"path": _resolve(cfg.archive.path, base)}),
        }
    )
