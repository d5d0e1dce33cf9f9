"""`edge-agent`: the factory-PC service that inspects camera frames and publishes verdicts over MQTT."""

from __future__ import annotations

import functools
import gc
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from edge_agent.archive import Archive
from edge_agent.cameras import make_camera
from edge_agent.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    CameraConfig,
    GenicamCameraConfig,
    load_config,
)
from edge_agent.console import run_cli, setup_logging
from edge_agent.control import Command, CommandError, Controller, parse_command
from edge_agent.drift_watch import DriftWatch
from edge_agent.errors import AgentError, CameraUnavailable
from edge_agent.frame_ids import FrameIds, frame_ids_path
from edge_agent.logs import DEFAULT_LOG_FORMAT, LOG_FORMATS
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.metrics import (
    ARCHIVE_DROPPED,
    ARCHIVE_FAILED,
    ARCHIVE_PENDING,
    MQTT_CONNECTED,
    OUTBOX,
    OUTBOX_DROPPED,
    REJECTS_EXPIRED,
    Metrics,
    MetricsServer,
)
from edge_agent.model import load_model
from edge_agent.plc import make_plc_output
from edge_agent.predict import OVERLAY_CHOICES, model_config, predict
from edge_agent.publish.mqtt import CommandHandler, MqttPublisher
from edge_agent.publish.store import SqliteStore, store_path
from edge_agent.run_summary import RunSummary
from edge_agent.systemd import SystemdNotifier
from edge_agent.verdict import ERROR, OK, REJECT

log = logging.getLogger("edge_agent")

UNDELIVERED_EXIT = 1
GRAB_TIMEOUT_S = 1.0  # the loop checks for stop at least this often

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """Inspect camera frames with a baked model and publish verdicts over MQTT."""


def _install_signal_handlers(stop: threading.Event, controller: Controller) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("already stopping; waiting for in-flight verdicts to be delivered")
        else:
            log.info("%s received: finishing in-flight frames, then stopping", signal.Signals(signum).name)
        stop.set()

    def reload(_signum: int, _frame: FrameType | None) -> None:
        log.info("SIGHUP received: reloading the model")
        controller.submit(Command("reload"))

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGHUP, reload)


def _command_handler(camera: str, controller: Controller, publisher: MqttPublisher) -> CommandHandler:
    def handle(verb: str, payload: bytes) -> None:
        try:
            command = parse_command(verb, payload)
        except CommandError as exc:
            log.warning("MQTT command refused: %s", exc)
            publisher.publish_event(camera, "command_refused", {"reason": str(exc)})
            return
        controller.submit(command)

    return handle


def _report(name: str, summary: RunSummary, cfg: AgentConfig, archive: Archive | None) -> None:
    c = summary.counts
    typer.echo(
        f"{name}: {summary.frames} frames: {c[OK]} ok, {c[REJECT]} reject, {c[ERROR]} error; "
        f"{summary.dropped} dropped, {summary.late} late (deadline {cfg.reject.deadline_ms:g} ms)"
    )
    reasons = ", ".join(f"{count} {reason}" for reason, count in summary.not_inspected.items())
    typer.echo(f"not inspected: {reasons}; {summary.missed_without_verdict} with no verdict of their own")
    for label, percent in (("median", 50), ("p99", 99)):
        stages = ", ".join(f"{s} {summary.percentile_ms(s, percent):.1f}" for s in summary.stage_ms)
        typer.echo(f"{label} latency from capture {summary.percentile_ms('total', percent):.1f} ms ({stages})")
    if archive is not None and archive.saved:
        typer.echo(f"{archive.saved} reject image(s) and heatmaps archived under {archive.root}")


def _camera_timeouts(cam_cfg: CameraConfig) -> tuple[float, float | None]:
    """How long one grab waits, and after how long without a frame the camera counts as gone."""
    if isinstance(cam_cfg, GenicamCameraConfig):
        silence_is_normal = cam_cfg.trigger == "hardware"
        return min(cam_cfg.timeout_s, GRAB_TIMEOUT_S), None if silence_is_normal else cam_cfg.timeout_s
    return GRAB_TIMEOUT_S, None


@app.command("run")
def run_command(
    camera: Annotated[str, typer.Option(help="camera name from the config's cameras section")],
    config: Annotated[Path, typer.Option(help="agent config YAML")] = DEFAULT_CONFIG_PATH,
    max_frames: Annotated[int | None, typer.Option(min=1, help="stop after this many frames")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every verdict")] = False,
    # A plain str checked by setup_logging, not a typer choice: a bad value is then one `error:` line, exit 2.
    log_format: Annotated[
        str,
        typer.Option(
            metavar="|".join(LOG_FORMATS),
            help="format of the log lines on stderr: logfmt (key=value) or json (one object per line)",
        ),
    ] = DEFAULT_LOG_FORMAT,
) -> None:
    """Run the inspection loop until the camera ends, --max-frames, Ctrl-C or SIGTERM.

    Example: edge-agent run --camera gige0 --config configs/agent.yaml --max-frames 100
    """
    setup_logging(verbose, log_format)
    cfg = load_config(config)
    cam_cfg = cfg.camera(camera)
    # This camera's settings for the first load and for every reload (SIGHUP, cmd/reload and its reload_dirs).
    model_cfg = cfg.camera_model(camera)
    # Warmed up before READY, so the first real frame meets its deadline.
    model = load_model(model_cfg.path, model_cfg)
    version = model.info.version
    notifier = SystemdNotifier.from_environment()
    outbox = store_path(cfg.mqtt, camera)
    with SqliteStore(outbox, cfg.mqtt.store_max_messages) as store:
        frame_ids = FrameIds(frame_ids_path(outbox))
        cam = make_camera(camera, cam_cfg)
        try:
            cam.open()
        except CameraUnavailable as exc:
            # A camera powered up after the PC is normal on a line: keep trying instead of exiting.
            log.error("%s; will keep trying", exc)
        stop = threading.Event()
        archive = (
            Archive(cfg.archive.path, cfg.archive.quota_mb, cfg.archive.good_sample_rate)
            if cfg.archive.enabled
            else None
        )
        publisher = MqttPublisher(
            cfg.mqtt, cfg.station, version, store, camera=camera, reject_deadline_ms=cfg.reject.deadline_ms
        )
        # Stopped before the store closes, on every path: its sender thread reads the store.
        try:
            grab_timeout_s, frame_timeout_s = _camera_timeouts(cam_cfg)
            options = LoopOptions(
                max_frames=max_frames,
                deadline_ms=cfg.reject.deadline_ms,
                error_is_reject=cfg.reject.error_is_reject,
                not_inspected_is_reject=cfg.reject.not_inspected_is_reject,
                queue_size=cam_cfg.queue_size,
                flush_timeout_s=cfg.mqtt.flush_timeout_s,
                stats_interval_s=cfg.metrics.stats_interval_s,
                grab_timeout_s=grab_timeout_s,
                frame_timeout_s=frame_timeout_s,
            )
            where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
            metrics: Metrics | None = None
            server: MetricsServer | None = None
            if cfg.metrics.enabled:
                metrics = Metrics(version, cfg.metrics.health_timeout_s)
                metrics.watch(OUTBOX, camera, publisher.pending)
                # Losses, beside the logs that name them, so an alert can fire on any of them.
                metrics.watch(OUTBOX_DROPPED, camera, lambda: publisher.dropped)
                metrics.watch(REJECTS_EXPIRED, camera, lambda: publisher.expired_rejects)
                if archive is not None:
                    metrics.watch(ARCHIVE_PENDING, camera, archive.pending)
                    metrics.watch(ARCHIVE_DROPPED, camera, lambda: archive.dropped)
                    metrics.watch(ARCHIVE_FAILED, camera, lambda: archive.failed)
                metrics.watch(MQTT_CONNECTED, camera, lambda: publisher.connected)
            # `loop` is read only once the PLC servers are started, below, where it exists.
            plc = make_plc_output(cfg, camera, ready=lambda: loop.ready)
            events = functools.partial(publisher.publish_event, camera)
            drift = DriftWatch(camera, cfg.drift, events, metrics) if cfg.drift.enabled else None
            loop = InspectionLoop(
                cam,
                model.runtime,
                publisher,
                model.info,
                options,
                archive,
                metrics,
                notifier,
                frame_ids=frame_ids,
                plc=plc,
                drift=drift,
            )
            controller = Controller(
                camera,
                loop,
                lambda path: load_model(path, model_cfg),
                model_cfg.path,
                lambda event, details: publisher.publish_event(camera, event, details),
                model_cfg.allowed_reload_dirs,
            )
            publisher.on_command(_command_handler(camera, controller, publisher))
            try:
                if metrics is not None:
                    # One process per camera from one config: each camera gets the port after the previous one.
                    port = cfg.metrics.port + list(cfg.cameras).index(camera)
                    server = MetricsServer(metrics, cfg.metrics.host, port)
                    log.info("metrics on http://%s:%d/metrics and /healthz", cfg.metrics.host, server.port)
                if plc is not None:
                    plc.start()
                controller.start()
                _install_signal_handlers(stop, controller)
                publisher.start()
                # A full collection walks every object the imports and the model made (14 ms here) with the
                # GIL held, stalling the camera and inference threads; these live for ever, so stop re-walking them.
                gc.freeze()
                log.info("ready: camera '%s', model %s, publishing to %s", camera, version, where)
                notifier.ready(f"inspecting camera {camera} with {version}")
                summary = loop.run(stop)
            finally:
                notifier.stopping()
                controller.stop()
                if plc is not None:
                    plc.stop()
                if server is not None:
                    server.stop()
                cam.close()
                if archive is not None:
                    archive.close()
            undelivered = publisher.pending()
        finally:
            publisher.stop()
    _report(camera, summary, cfg, archive)
    if not summary.delivered:
        typer.echo(
            f"error: {undelivered} MQTT message(s) were not acknowledged by the broker; "
            f"they stay in {outbox} and are sent at the next start",
            err=True,
        )
        raise typer.Exit(UNDELIVERED_EXIT)


@app.command("predict")
def predict_command(
    source: Annotated[Path, typer.Argument(metavar="FOLDER|IMAGE|VIDEO", help="images (sorted by name) or a video")],
    model: Annotated[Path, typer.Option(help="edge bundle directory (the output of converter bake)")],
    out: Annotated[
        Path | None,
        typer.Option(help="new or empty folder for the results", show_default="SOURCE-predictions, beside SOURCE"),
    ] = None,
    # Plain strs checked by predict, not typer choices: a bad value is then one `error:` line, exit 2.
    overlays: Annotated[
        str, typer.Option(metavar="|".join(OVERLAY_CHOICES), help="which pictures get a heatmap overlay PNG")
    ] = "rejects",
    recursive: Annotated[bool, typer.Option("--recursive", help="also judge the images in subfolders")] = False,
    runtime: Annotated[
        str | None, typer.Option(metavar="openvino|onnxruntime", show_default="the one the bundle was baked for")
    ] = None,
    device: Annotated[str, typer.Option(metavar="CPU|GPU|AUTO", help="OpenVINO device")] = "CPU",
    hmac_key_file: Annotated[
        Path | None, typer.Option(help="the key a signed bundle needs (converter bake --sign-key)")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Judge image files or a video's frames as `run` judges camera frames: no camera, no broker.

    Writes predictions.csv (file, score, threshold, verdict, regions, error, overlay; the regions as the MQTT
    verdict carries them) and heatmap overlay PNGs. Then prints the counts, the scores against the threshold,
    and the time per image.

    A file that cannot be read gets an `error` row and a warning; the run goes on, and exits 0.

    Example: edge-agent predict images/press2 --model edge/press2 --recursive

    Example: edge-agent predict line3.mp4 --model edge/press2 --overlays all
    """
    setup_logging(verbose)
    summary = predict(source, model_config(model, runtime, device, hmac_key_file), out, overlays, recursive)
    for line in summary.lines():
        typer.echo(line)


def main() -> None:
    run_cli(app, (AgentError, OSError))


if __name__ == "__main__":
    main()
