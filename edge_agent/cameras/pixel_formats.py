"""Camera buffers in GenICam PFNC pixel formats -> the H x W (mono) or H x W x 3 (RGB) uint8 the model takes."""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.errors import CameraError

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
# Packed mono: PFNC's `p` formats are one little-endian bit stream over the whole image; GigE Vision's older
# `Packed` formats put two pixels in three bytes, the high bits of each in bytes 0 and 2, the low ones in byte 1.
_MONO_PACKED_BITS: dict[str, int] = {"Mono10p": 10, "Mono12p": 12, "Mono10Packed": 10, "Mono12Packed": 12}
# Channels per pixel, and the OpenCV conversion to RGB (None: already RGB). OpenCV, not a numpy channel slice:
# the slice's strided copy took 0.9 ms of a 400 x 400 RGBa8 frame, cvtColor 0.02 ms.
_CHANNELS: dict[str, tuple[int, int | None]] = {
    "RGB8": (3, None),
    "BGR8": (3, cv2.COLOR_BGR2RGB),
    "RGBa8": (4, cv2.COLOR_RGBA2RGB),
    "BGRa8": (4, cv2.COLOR_BGRA2RGB),
}
BITS_PER_BYTE = 8


class BadBuffer(CameraError):
    """One buffer cannot be turned into an image (too short, unknown pixel format, wrong data type). That frame
    is judged `error`; the camera that sent it is still working and is not reconnected."""


SUPPORTED_PIXEL_FORMATS: tuple[str, ...] = (
    "Mono8",
    *_MONO_DEEP_BITS,
    *_MONO_PACKED_BITS,
    *_CHANNELS,
    *_BAYER_TO_RGB,
)


def to_rgb_or_mono(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """The pixels of one buffer as H x W (mono) or H x W x 3 (RGB) uint8.

    `data` is the component data harvesters hands out: flat (or already shaped) uint8 for 8-bit and packed
    formats, uint16 for the unpacked 10/12/16-bit mono formats (raw little-endian bytes are accepted too).
    Rows may carry trailing padding; it is cropped. The result may share memory with `data`: copy the buffer
    first if it is going back to the producer. Raises BadBuffer, naming what does not fit, for a buffer that
    cannot be converted.
    """
    if pixel_format == "Mono8":
        return _rows(_as_dtype(data, np.uint8, pixel_format), width, height, 1, pixel_format)
    if pixel_format in _MONO_DEEP_BITS:
        bits = _MONO_DEEP_BITS[pixel_format]
        deep = _rows(_as_dtype(data, np.uint16, pixel_format), width, height, 1, pixel_format)
        return _top_8_bits(deep, bits)
    if pixel_format in _MONO_PACKED_BITS:
        bits = _MONO_PACKED_BITS[pixel_format]
        packed = _as_dtype(data, np.uint8, pixel_format).reshape(-1)
        return _top_8_bits(_unpack(packed, width, height, bits, pixel_format), bits)
    if pixel_format in _CHANNELS:
        channels, conversion = _CHANNELS[pixel_format]
        pixels = np.ascontiguousarray(
            _rows(_as_dtype(data, np.uint8, pixel_format), width, height, channels, pixel_format)
        )
        return pixels if conversion is None else np.asarray(cv2.cvtColor(pixels, conversion), dtype=np.uint8)
    if pixel_format in _BAYER_TO_RGB:
        mosaic = np.ascontiguousarray(_rows(_as_dtype(data, np.uint8, pixel_format), width, height, 1, pixel_format))
        return np.asarray(cv2.cvtColor(mosaic, _BAYER_TO_RGB[pixel_format]), dtype=np.uint8)
    raise BadBuffer(
        f"unsupported pixel format {pixel_format!r}; supported: {', '.join(SUPPORTED_PIXEL_FORMATS)}. "
        "Set the camera's PixelFormat to one of these."
    )


def _top_8_bits(deep: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    scaled: np.ndarray = (np.minimum(deep, top) >> (bits - BITS_PER_BYTE)).astype(np.uint8)
    return scaled


def _unpack(packed: np.ndarray, width: int, height: int, bits: int, pixel_format: str) -> np.ndarray:
    """Packed pixels -> uint16 H x W holding `bits`-bit values."""
    count = width * height
    if width <= 0 or height <= 0:
        raise BadBuffer(f"{pixel_format} buffer reports an empty image ({width} x {height})")
    if pixel_format.endswith("Packed"):
        if count % 2:
            raise BadBuffer(f"{pixel_format} packs pixels in pairs; {width} x {height} is an odd count")
        need = count // 2 * 3
        if packed.size < need:
            raise BadBuffer(f"{pixel_format} buffer holds {packed.size} bytes, {width} x {height} needs {need}")
        groups = packed[:need].reshape(-1, 3).astype(np.uint16)
        low_bits = bits - BITS_PER_BYTE
        low_mask = (1 << low_bits) - 1
        first = (groups[:, 0] << low_bits) | (groups[:, 1] & low_mask)
        second = (groups[:, 2] << low_bits) | ((groups[:, 1] >> 4) & low_mask)
        return np.stack([first, second], axis=1).reshape(height, width)
    need = -(-count * bits // BITS_PER_BYTE)
    if packed.size < need:
        raise BadBuffer(f"{pixel_format} buffer holds {packed.size} bytes, {width} x {height} needs {need}")
    stream = np.unpackbits(packed[:need], bitorder="little")[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits)).astype(np.uint16)
    values: np.ndarray = (stream.astype(np.uint16) * weights).sum(axis=1, dtype=np.uint16)
    return values.reshape(height, width)


def _as_dtype(data: np.ndarray, dtype: type[np.uint8] | type[np.uint16], pixel_format: str) -> np.ndarray:
    if data.dtype == dtype:
        return data
    if data.dtype == np.uint8 and dtype is np.uint16:
        flat = np.ascontiguousarray(data).reshape(-1)
        if flat.size % 2:
            raise BadBuffer(f"{pixel_format} buffer has an odd number of bytes ({flat.size})")
        return flat.view("<u2")
    raise BadBuffer(f"{pixel_format} buffer holds {data.dtype} data, expected {np.dtype(dtype).name}")


def _rows(data: np.ndarray, width: int, height: int, channels: int, pixel_format: str) -> np.ndarray:
    """Reshape to H x W (x C), dropping any padding at the end of each row."""
    if width <= 0 or height <= 0:
        raise BadBuffer(f"{pixel_format} buffer reports an empty image ({width} x {height})")
    flat = data.reshape(-1)
    row = width * channels
    if flat.size < row * height or flat.size % height:
        raise BadBuffer(
            f"{pixel_format} buffer holds {flat.size} values, which does not fit {width} x {height}"
            f"{f' x {channels}' if channels > 1 else ''}"
        )
    stride = flat.size // height
    shaped = flat.reshape(height, stride)[:, :row]
    return shaped if channels == 1 else shaped.reshape(height, width, channels)
