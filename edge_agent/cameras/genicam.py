"""GenICam cameras through harvesters over any GenTL producer (.cti).

`cti: viky` selects the simulated producer shipped inside the `genicam` package (three devices,
400 x 400 RGBa8 at 20 fps); anything else is the path of a vendor's producer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import genicam
import numpy as np
from genicam.genapi import GenericException as GenApiError
from genicam.gentl import GenericException as GenTLError
from genicam.gentl import TimeoutException
from harvesters.core import Harvester

from edge_agent.cameras.pacing import Pacer
from edge_agent.cameras.pixel_formats import BadBuffer, to_rgb_or_mono
from edge_agent.config import GenicamCameraConfig
from edge_agent.errors import CameraError, CameraUnavailable
from edge_agent.frames import NO_IMAGE, Frame

logger = logging.getLogger(__name__)

VIKY = "viky"
# harvesters waits for a buffer in back-to-back GenTL calls of 1 ms that hold the GIL, so the inference thread
# waited up to Python's 5 ms switch interval each time it needed the GIL (measured beside a 30 fps viky camera:
# OpenVINO's 10 ms graph took 26 ms). So ask GenTL without waiting, and wait in time.sleep, which frees the GIL.
GENTL_WAIT_MS = 0
POLL_INTERVAL_S = 0.001
NO_WAIT_S = 1e-6  # harvesters' try_fetch treats 0 as "wait for ever"
# Where GenTL consumers look for installed producers (GenTL standard): folders separated by os.pathsep.
GENTL_PATH_VARIABLE = "GENICAM_GENTL64_PATH"
CTI_SUFFIX = ".cti"
# Producers named in the "not found" line; a site with many vendors installed must still get one readable line.
CTI_NAMED = 3
# A camera that delivers nothing is asked this often whether its device is still there: the GenTL device module's
# DeviceAccessStatus, which the producer keeps from its transport (a GigE producer's heartbeat, a USB detach).
# Under a hardware trigger silence is normal, so without it a pulled cable would look like an idle line.
HEARTBEAT_S = 1.0
DEVICE_ACCESS_STATUS = "DeviceAccessStatus"
OPEN_STATUSES = frozenset({"OpenReadWrite", "OpenReadOnly"})


def resolve_cti(cti: str) -> Path:
    """The GenTL producer file that `cti` names: 'viky' is the simulator inside the genicam package."""
    if cti == VIKY:
        path = Path(genicam.__file__).resolve().parent / "viky.cti"
        if not path.is_file():
            raise CameraError(
                f"cti 'viky' means the simulator shipped in the genicam package, but {path} does not exist; "
                "reinstall genicam or give the path of a .cti file"
            )
        return path
    path = Path(cti).expanduser()
    if not path.is_file():
        raise CameraError(f"GenTL producer (.cti) not found: {path}; {_installed_producers(os.environ)}")
    return path


def find_producers(environ: Mapping[str, str]) -> list[Path]:
    """The .cti files in the folders of GENICAM_GENTL64_PATH, in the variable's order, each once."""
    found: list[Path] = []
    for folder in environ.get(GENTL_PATH_VARIABLE, "").split(os.pathsep):
        if not folder:
            continue
        try:
            entries = sorted(Path(folder).iterdir())
        except OSError:  # a stale entry (uninstalled vendor) must not hide the others
            continue
        for entry in entries:
            if entry.suffix.lower() == CTI_SUFFIX and entry.is_file() and entry not in found:
                found.append(entry)
    return found


def _installed_producers(environ: Mapping[str, str]) -> str:
    """The tail of the "not found" line: which producers this machine does have, so the user can pick one."""
    simulator = f"or use cti: {VIKY} (the simulator)"
    found = find_producers(environ)
    if found:
        return f"found: {_first_few([str(p) for p in found], CTI_NAMED)} ({GENTL_PATH_VARIABLE}), {simulator}"
    searched = environ.get(GENTL_PATH_VARIABLE, "")
    where = f"no .cti in {GENTL_PATH_VARIABLE} ({searched})" if searched else f"{GENTL_PATH_VARIABLE} is not set"
    return f"{where}; install the camera vendor's GenTL producer and give the path of its .cti, {simulator}"


def _first_few(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _poll(acquirer: Any, timeout_s: float) -> Any:
    """The next complete buffer, or None after `timeout_s` (or for a buffer without usable information)."""
    deadline = time.monotonic() + timeout_s
    while True:
        buffer = acquirer.try_fetch(timeout=NO_WAIT_S)
        if buffer is not None or time.monotonic() >= deadline:
            return buffer
        time.sleep(POLL_INTERVAL_S)


def _info_value(info: Any, key: str) -> str | None:
    value = info.property_dict.get(key)
    return None if value in (None, "") else str(value)


def _describe_devices(infos: list[Any]) -> str:
    if not infos:
        return "no devices found"
    parts = []
    for index, info in enumerate(infos):
        serial = _info_value(info, "serial_number") or "-"
        name = _info_value(info, "user_defined_name") or "-"
        ident = _info_value(info, "id_") or "-"
        model = _info_value(info, "model") or "-"
        parts.append(f"[{index}] serial {serial}, name {name}, id {ident}, model {model}")
    return "devices found: " + "; ".join(parts)


def select_device(infos: list[Any], device: int | str) -> int:
    """Index into the producer's device list: an int is an index, a str matches the serial number,
    then the user-defined name, then the device id."""
    if isinstance(device, int):
        if 0 <= device < len(infos):
            return device
        raise CameraUnavailable(f"no device with index {device}; {_describe_devices(infos)}")
    for key in ("serial_number", "user_defined_name", "id_"):
        for index, info in enumerate(infos):
            if _info_value(info, key) == device:
                return index
    raise CameraUnavailable(f"no device with serial number, name or id {device!r}; {_describe_devices(infos)}")


class GenicamCamera:
    """A GenICam device through harvesters. Implements the `Camera` protocol."""

    def __init__(self, name: str, config: GenicamCameraConfig) -> None:
        self.name = name
        self.config = config
        self.source = ""
        self._harvester: Any | None = None
        self._acquirer: Any | None = None
        self._software_trigger = False
        self._trigger_pacer = Pacer(config.trigger_rate_hz)
        # This camera's frame count: never reset by a reopen, where the device's own count starts over. (The
        # agent's loop renumbers frames again, to keep counting across restarts: edge_agent.frame_ids.)
        self._frames = 0
        self._heartbeat_at = 0.0
        self._heartbeat = True  # off for a producer without DeviceAccessStatus, after one warning

    @property
    def is_open(self) -> bool:
        return self._acquirer is not None

    def open(self) -> None:
        if self._acquirer is not None:
            return
        cti = resolve_cti(self.config.cti)
        try:
            self._open(cti)
        except BaseException:
            self.close()
            raise

    def _open(self, cti: Path) -> None:
        try:
            harvester = Harvester()
            self._harvester = harvester
            harvester.add_file(str(cti), check_existence=True, check_validity=True)
            harvester.update()
        except OSError as e:
            raise CameraError(f"camera {self.name}: {cti} is not a loadable GenTL producer: {e}") from e
        except Exception as e:
            raise CameraError(f"camera {self.name}: could not load the GenTL producer {cti}: {e}") from e
        infos = list(harvester.device_info_list)
        if not infos:
            raise CameraUnavailable(
                f"camera {self.name}: the GenTL producer {cti} found no devices (connected, powered, on this network?)"
            )
        try:
            index = select_device(infos, self.config.device)
        except CameraUnavailable as e:
            raise CameraUnavailable(f"camera {self.name}: {e}") from None
        info = infos[index]
        self.source = _info_value(info, "serial_number") or _info_value(info, "id_") or str(index)
        try:
            self._acquirer = harvester.create(index)
        except Exception as e:
            raise CameraUnavailable(
                f"camera {self.name}: could not open device {self.source} (in use by another program?): {e}"
            ) from e
        self._acquirer.timeout_period_on_update_event_data_call = GENTL_WAIT_MS
        self._configure(self._acquirer.remote_device.node_map)
        if self.config.buffer_count is not None:
            self._acquirer.num_buffers = self.config.buffer_count
        try:
            self._acquirer.start()
        except Exception as e:
            raise CameraUnavailable(
                f"camera {self.name}: could not start acquisition on device {self.source}: {e}"
            ) from e
        logger.info("camera %s: device %s of %s open, trigger %s", self.name, self.source, cti, self.config.trigger)

    def _configure(self, node_map: Any) -> None:
        """Write the config's settings to the device, in an order that keeps each write valid: the pixel
        format and window before the timing, the trigger last."""
        cfg = self.config
        if cfg.pixel_format is not None:
            self._write(node_map, "PixelFormat", cfg.pixel_format, "pixel_format")
        if cfg.roi is not None:
            # Offsets first to 0, so a wider window fits; then the size, then the wanted offsets.
            for node in ("OffsetX", "OffsetY"):
                self._write_optional(node_map, node, 0)
            self._write(node_map, "Width", cfg.roi.width, "roi.width")
            self._write(node_map, "Height", cfg.roi.height, "roi.height")
            for node, offset, field in (("OffsetX", cfg.roi.offset_x, "x"), ("OffsetY", cfg.roi.offset_y, "y")):
                if offset:
                    self._write(node_map, node, offset, f"roi.offset_{field}")
        if cfg.exposure_us is not None:
            self._write_optional(node_map, "ExposureAuto", "Off")
            self._write(node_map, "ExposureTime", cfg.exposure_us, "exposure_us")
        if cfg.gain_db is not None:
            self._write_optional(node_map, "GainAuto", "Off")
            self._write(node_map, "Gain", cfg.gain_db, "gain_db")
        if cfg.frame_rate is not None:
            self._write_optional(node_map, "AcquisitionFrameRateEnable", True)
            self._write(node_map, "AcquisitionFrameRate", cfg.frame_rate, "frame_rate")
        self._apply_trigger(node_map)

    def _apply_trigger(self, node_map: Any) -> None:
        cfg = self.config
        trigger = cfg.trigger
        if trigger == "free-run":
            if not node_map.has_node("TriggerMode"):
                logger.debug("camera %s: device has no TriggerMode node; assuming it free-runs", self.name)
                return
            self._select_frame_start(node_map)
            self._set(node_map, "TriggerMode", "Off")
            return
        needed = ["TriggerMode", "TriggerSource"] + (["TriggerSoftware"] if trigger == "software" else [])
        missing = [node for node in needed if not node_map.has_node(node)]
        if missing:
            raise CameraError(
                f"camera {self.name}: trigger {trigger!r} needs the GenICam node(s) {', '.join(missing)}, "
                f"which device {self.source} does not have; use trigger 'free-run' or another camera"
            )
        self._select_frame_start(node_map)
        self._set(node_map, "TriggerMode", "On")
        if trigger == "software":
            self._set(node_map, "TriggerSource", "Software")
            self._software_trigger = True
            return
        self._set(node_map, "TriggerSource", cfg.trigger_line)
        if "trigger_activation" in cfg.model_fields_set:
            self._write(node_map, "TriggerActivation", cfg.trigger_activation, "trigger_activation")
        else:
            self._write_optional(node_map, "TriggerActivation", cfg.trigger_activation)

    def _write(self, node_map: Any, node: str, value: object, field: str) -> None:
        """A setting the config asks for: a device without the node is a config error that names both."""
        if not node_map.has_node(node):
            raise CameraError(
                f"camera {self.name}: the config sets '{field}', but device {self.source} has no GenICam node "
                f"{node}; remove '{field}' from the camera's config"
            )
        self._set(node_map, node, value)

    def _write_optional(self, node_map: Any, node: str, value: object) -> None:
        """A default the config did not ask for: skipped on a device without the node."""
        if not node_map.has_node(node):
            logger.debug("camera %s: device %s has no %s node; leaving it out", self.name, self.source, node)
            return
        self._set(node_map, node, value)

    def _select_frame_start(self, node_map: Any) -> None:
        if not node_map.has_node("TriggerSelector"):
            return
        try:
            entries = list(node_map.get_node("TriggerSelector").symbolics)
        except Exception:
            return
        if "FrameStart" in entries:
            self._set(node_map, "TriggerSelector", "FrameStart")

    def _set(self, node_map: Any, node: str, value: object) -> None:
        try:
            node_map.get_node(node).value = value
        except Exception as e:
            raise CameraError(
                f"camera {self.name}: could not set {node} to {value} on device {self.source}: {e}"
            ) from e

    def grab(self, timeout_s: float) -> Frame | None:
        acquirer = self._acquirer
        if acquirer is None:
            raise CameraError(f"camera {self.name} is not open")
        try:
            if self._software_trigger:
                if not self._trigger_pacer.wait(timeout_s):
                    return None
                acquirer.remote_device.node_map.get_node("TriggerSoftware").execute()
            buffer = _poll(acquirer, timeout_s)
            if buffer is None:
                self._check_device(acquirer)
                return None
            captured_at = time.time()
            captured_mono = time.monotonic()
            with buffer:
                camera_frame_id = _optional_int(buffer.module, "frame_id")
                camera_timestamp = _optional_int(buffer.module, "timestamp")
                if camera_timestamp is None:
                    camera_timestamp = _optional_int(buffer.module, "timestamp_ns")
                component = _copy_component(buffer.payload.components)  # the buffer goes back on exit
        except TimeoutException:
            self._check_device(acquirer)
            return None
        except CameraError:
            raise
        except Exception as e:
            raise CameraError(
                f"camera {self.name}: reading an image from device {self.source} failed ({type(e).__name__}: {e})"
            ) from e
        image, error = self._convert(component)
        self._frames += 1
        return Frame(
            image=image,
            frame_id=self._frames,
            captured_at=captured_at,
            captured_mono=captured_mono,
            camera_timestamp=camera_timestamp,
            source=self.source,
            error=error,
            camera_frame_id=camera_frame_id,
        )

    def _check_device(self, acquirer: Any) -> None:
        """CameraError when the producer says the device is no longer open; at most every HEARTBEAT_S."""
        now = time.monotonic()
        if not self._heartbeat or now - self._heartbeat_at < HEARTBEAT_S:
            return
        self._heartbeat_at = now
        try:
            node = acquirer.device.node_map.get_node(DEVICE_ACCESS_STATUS)
        except Exception:
            self._heartbeat = False
            logger.warning(
                "camera %s: the GenTL producer has no %s node, so a device lost under a hardware trigger shows only "
                "as silence",
                self.name,
                DEVICE_ACCESS_STATUS,
            )
            return
        try:
            node.node.invalidate_node()  # read the producer's current answer, not GenApi's cache
            status = str(node.value)
        except Exception as e:
            raise CameraError(
                f"camera {self.name}: device {self.source} did not answer the heartbeat ({type(e).__name__}: {e}); "
                "check its cable, power and network"
            ) from e
        if status not in OPEN_STATUSES:
            raise CameraError(
                f"camera {self.name}: the GenTL producer reports device {self.source} as {status}, no longer open; "
                "check its cable, power and network"
            )

    def _convert(self, component: _Component | None) -> tuple[np.ndarray, str | None]:
        """The buffer's image, or NO_IMAGE and why not: a bad buffer from a working camera is that frame's
        `error` verdict, not a reason to reconnect (which would miss the parts passing meanwhile)."""
        if component is None:
            return NO_IMAGE, f"bad buffer from device {self.source}: it holds no image"
        try:
            return to_rgb_or_mono(component.data, component.width, component.height, component.pixel_format), None
        except BadBuffer as e:
            return NO_IMAGE, f"bad buffer from device {self.source}: {e}"

    def close(self) -> None:
        acquirer, self._acquirer = self._acquirer, None
        harvester, self._harvester = self._harvester, None
        self._software_trigger = False
        if acquirer is not None:
            for step in ("stop", "destroy"):
                try:
                    getattr(acquirer, step)()
                except Exception as e:
                    logger.warning("camera %s: %s failed while closing: %s", self.name, step, e)
        if harvester is not None:
            try:
                harvester.reset()
            except Exception as e:
                logger.warning("camera %s: releasing the GenTL producer failed: %s", self.name, e)


@dataclass(frozen=True)
class _Component:
    """The first image component of a buffer, copied out so the buffer can go back to the producer."""

    data: np.ndarray
    width: int
    height: int
    pixel_format: str


def _copy_component(components: Any) -> _Component | None:
    if not components:
        return None
    component = components[0]
    return _Component(
        data=np.array(component.data, copy=True),
        width=int(component.width),
        height=int(component.height),
        pixel_format=str(component.data_format),
    )


def _optional_int(module: Any, attribute: str) -> int | None:
    """A buffer property, or None where the producer does not provide it."""
    try:
        value = getattr(module, attribute)
    except (GenTLError, GenApiError, AttributeError):
        return None
    return None if value is None else int(value)
