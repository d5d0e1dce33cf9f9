"""GenICam cameras through harvesters over any GenTL producer (.cti).

`cti: viky` selects the simulated producer shipped inside the `genicam` package (three devices,
400 x 400 RGBa8 at 20 fps); anything else is the path of a vendor's producer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cv2
import genicam
import numpy as np
from genicam.genapi import GenericException as GenApiError
from genicam.gentl import GenericException as GenTLError
from genicam.gentl import TimeoutException
from harvesters.core import Harvester

from edge_agent.config import GenicamCameraConfig
from edge_agent.errors import CameraError, CameraUnavailable
from edge_agent.frames import Frame

logger = logging.getLogger(__name__)

VIKY = "viky"
_MIN_TIMEOUT_S = 0.001  # harvesters treats a timeout of 0 as "wait for ever"

# PFNC names the Bayer tile by its top-left 2 x 2 cells (BayerRG8: R G / G B). OpenCV's historical
# two-letter codes name a tile offset by one pixel (COLOR_BayerBG2RGB is the RGGB tile), so use the
# unambiguous four-letter aliases.
_BAYER_TO_RGB: dict[str, int] = {
    "BayerRG8": cv2.COLOR_BayerRGGB2RGB,
    "BayerGR8": cv2.COLOR_BayerGRBG2RGB,
    "BayerBG8": cv2.COLOR_BayerBGGR2RGB,
    "BayerGB8": cv2.COLOR_BayerGBRG2RGB,
}
_MONO_DEEP_BITS: dict[str, int] = {"Mono10": 10, "Mono12": 12, "Mono16": 16}
_CHANNELS: dict[str, int] = {"RGB8": 3, "BGR8": 3, "RGBa8": 4, "BGRa8": 4}

SUPPORTED_PIXEL_FORMATS: tuple[str, ...] = ("Mono8", *_MONO_DEEP_BITS, *_CHANNELS, *_BAYER_TO_RGB)


def to_rgb_or_mono(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """The pixels of one buffer as H x W (mono) or H x W x 3 (RGB) uint8.

    `data` is the component data harvesters hands out: flat (or already shaped) uint8 for 8-bit
    formats, uint16 for the unpacked 10/12/16-bit mono formats (raw little-endian bytes are
    accepted too). Rows may carry trailing padding; it is cropped. The result may share memory with
    `data`: copy the buffer first if it is going back to the producer.
    """
    if pixel_format == "Mono8":
        return _rows(_as_dtype(data, np.uint8, pixel_format), width, height, 1, pixel_format)
    if pixel_format in _MONO_DEEP_BITS:
        bits = _MONO_DEEP_BITS[pixel_format]
        deep = _rows(_as_dtype(data, np.uint16, pixel_format), width, height, 1, pixel_format)
        top = (1 << bits) - 1
        scaled: np.ndarray = (np.minimum(deep, top) >> (bits - 8)).astype(np.uint8)
        return scaled
    if pixel_format in _CHANNELS:
        channels = _CHANNELS[pixel_format]
        pixels = _rows(_as_dtype(data, np.uint8, pixel_format), width, height, channels, pixel_format)
        rgb = pixels[:, :, :3]
        if pixel_format.startswith("BGR"):
            rgb = rgb[:, :, ::-1]
        return np.ascontiguousarray(rgb)
    if pixel_format in _BAYER_TO_RGB:
        mosaic = np.ascontiguousarray(_rows(_as_dtype(data, np.uint8, pixel_format), width, height, 1, pixel_format))
        return np.asarray(cv2.cvtColor(mosaic, _BAYER_TO_RGB[pixel_format]), dtype=np.uint8)
    raise CameraError(
        f"unsupported pixel format {pixel_format!r}; supported: {', '.join(SUPPORTED_PIXEL_FORMATS)}. "
        "Set the camera's PixelFormat to one of these."
    )


def _as_dtype(data: np.ndarray, dtype: type[np.uint8] | type[np.uint16], pixel_format: str) -> np.ndarray:
    if data.dtype == dtype:
        return data
    if data.dtype == np.uint8 and dtype is np.uint16:
        flat = np.ascontiguousarray(data).reshape(-1)
        if flat.size % 2:
            raise CameraError(f"{pixel_format} buffer has an odd number of bytes ({flat.size})")
        return flat.view("<u2")
    raise CameraError(f"{pixel_format} buffer holds {data.dtype} data, expected {np.dtype(dtype).name}")


def _rows(data: np.ndarray, width: int, height: int, channels: int, pixel_format: str) -> np.ndarray:
    """Reshape to H x W (x C), dropping any padding at the end of each row."""
    if width <= 0 or height <= 0:
        raise CameraError(f"{pixel_format} buffer reports an empty image ({width} x {height})")
    flat = data.reshape(-1)
    row = width * channels
    if flat.size < row * height or flat.size % height:
        raise CameraError(
            f"{pixel_format} buffer holds {flat.size} values, which does not fit {width} x {height}"
            f"{f' x {channels}' if channels > 1 else ''}"
        )
    stride = flat.size // height
    shaped = flat.reshape(height, stride)[:, :row]
    return shaped if channels == 1 else shaped.reshape(height, width, channels)


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
        raise CameraError(f"GenTL producer (.cti) not found: {path}")
    return path


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
        self._frames = 0

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
        self._apply_trigger(self._acquirer.remote_device.node_map)
        try:
            self._acquirer.start()
        except Exception as e:
            raise CameraUnavailable(
                f"camera {self.name}: could not start acquisition on device {self.source}: {e}"
            ) from e
        self._frames = 0
        logger.info("camera %s: device %s of %s open, trigger %s", self.name, self.source, cti, self.config.trigger)

    def _apply_trigger(self, node_map: Any) -> None:
        trigger = self.config.trigger
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
        self._set(node_map, "TriggerSource", "Software" if trigger == "software" else "Line0")
        self._software_trigger = trigger == "software"

    def _select_frame_start(self, node_map: Any) -> None:
        if not node_map.has_node("TriggerSelector"):
            return
        try:
            entries = list(node_map.get_node("TriggerSelector").symbolics)
        except Exception:
            return
        if "FrameStart" in entries:
            self._set(node_map, "TriggerSelector", "FrameStart")

    def _set(self, node_map: Any, node: str, value: str) -> None:
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
                acquirer.remote_device.node_map.get_node("TriggerSoftware").execute()
            buffer = acquirer.fetch(timeout=max(timeout_s, _MIN_TIMEOUT_S))
            if buffer is None:  # the producer handed over a buffer without usable information
                return None
            captured_at = time.time()
            captured_mono = time.monotonic()
            with buffer:
                components = buffer.payload.components
                if not components:
                    raise CameraError(f"camera {self.name}: device {self.source} sent a buffer with no image in it")
                component = components[0]
                pixel_format = str(component.data_format)
                width = int(component.width)
                height = int(component.height)
                raw = np.array(component.data, copy=True)  # the buffer goes back to the producer on exit
                frame_id = _optional_int(buffer.module, "frame_id")
                camera_timestamp = _optional_int(buffer.module, "timestamp")
                if camera_timestamp is None:
                    camera_timestamp = _optional_int(buffer.module, "timestamp_ns")
        except TimeoutException:
            return None
        except CameraError:
            raise
        except Exception as e:
            raise CameraError(
                f"camera {self.name}: reading an image from device {self.source} failed ({type(e).__name__}: {e})"
            ) from e
        try:
            image = to_rgb_or_mono(raw, width, height, pixel_format)
        except CameraError as e:
            raise CameraError(f"camera {self.name}: device {self.source}: {e}") from e
        self._frames += 1
        return Frame(
            image=image,
            frame_id=self._frames if frame_id is None else frame_id,
            captured_at=captured_at,
            captured_mono=captured_mono,
            camera_timestamp=camera_timestamp,
            source=self.source,
        )

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


def _optional_int(module: Any, attribute: str) -> int | None:
    """A buffer property, or None where the producer does not provide it."""
    try:
        value = getattr(module, attribute)
    except (GenTLError, GenApiError, AttributeError):
        return None
    return None if value is None else int(value)
