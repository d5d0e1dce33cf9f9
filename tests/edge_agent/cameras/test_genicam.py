"""GenicamCamera against the real viky.cti simulator (three devices, 400 x 400 RGBa8, 20 fps,
device 0 draws a red ball, 1 a green one, 2 a blue one), and the pixel-format conversion."""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harvesters.core import Harvester

from edge_agent.cameras import genicam as genicam_module
from edge_agent.cameras.base import Camera
from edge_agent.cameras.genicam import CTI_NAMED, GenicamCamera, resolve_cti
from edge_agent.cameras.pixel_formats import BadBuffer, to_rgb_or_mono
from edge_agent.config import GenicamCameraConfig
from edge_agent.errors import CameraError
from edge_agent.frames import NO_IMAGE, Frame
from edge_agent.geometry import Geometry
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.model import ModelInfo
from edge_agent.publish.fake import FakePublisher
from edge_agent.runtimes.fake import FakeRuntime
from tests.edge_agent.waiting import WAIT_S

OpenCamera = Callable[..., GenicamCamera]
SHORT_SLEEP_S = 0.0005
MEASURE_SWITCH_INTERVAL_S = 0.05  # 10 x Python's default, so a thread holding the GIL stands out of any noise
LOOP_GUARD_S = 20.0


@pytest.fixture
def open_camera() -> Iterator[OpenCamera]:
    """Opens cameras and closes every one of them, whatever the test does."""
    cameras: list[Camera] = []  # also checks, under mypy, that GenicamCamera is a Camera

    def factory(**fields: Any) -> GenicamCamera:
        camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam", **fields))
        cameras.append(camera)
        camera.open()
        return camera

    try:
        yield factory
    finally:
        for camera in cameras:
            camera.close()


def viky_devices() -> list[dict[str, Any]]:
    """The simulator's device list, read with a Harvester of our own that is gone before any camera opens."""
    harvester = Harvester()
    try:
        harvester.add_file(str(resolve_cti("viky")))
        harvester.update()
        return [dict(info.property_dict) for info in harvester.device_info_list]
    finally:
        harvester.reset()


def grab_frames(camera: GenicamCamera, count: int) -> list[Frame]:
    frames = []
    for _ in range(count):
        frame = camera.grab(2.0)
        assert frame is not None, "viky delivers 20 fps; a 2 s grab must not time out"
        frames.append(frame)
    return frames


def ball_colour(image: np.ndarray) -> np.ndarray:
    """Mean RGB of the pixels that are not the white background."""
    ball = image[(image < 250).any(axis=2)]
    assert len(ball) > 0, "no ball in the picture"
    colour: np.ndarray = ball.mean(axis=0)
    return colour


# --- the real simulator ---------------------------------------------------------------------


def test_viky_resolves_to_the_simulator_in_the_genicam_package() -> None:
    import genicam

    assert resolve_cti("viky") == Path(genicam.__file__).resolve().parent / "viky.cti"


def test_device_0_free_runs_rgb_frames(open_camera: OpenCamera) -> None:
    camera = open_camera(device=0)
    before = time.monotonic()
    frames = grab_frames(camera, 4)

    for frame in frames:
        assert frame.image.shape == (400, 400, 3)
        assert frame.image.dtype == np.uint8
        assert frame.source == "0"
        assert before <= frame.captured_mono <= time.monotonic()
        assert abs(frame.captured_at - time.time()) < 10
        # viky's buffers carry no timestamp (GetBufferInfo: "timestamps not supported by the device"):
        # the frame says so rather than inventing one.
        assert frame.camera_timestamp is None
    ids = [frame.frame_id for frame in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    monos = [frame.captured_mono for frame in frames]
    assert monos == sorted(monos)
    # RGBa8 -> RGB in the right order: device 0 draws a pure red ball.
    np.testing.assert_allclose(ball_colour(frames[-1].image), [255, 0, 0])


class Mono8Camera(GenicamCamera):
    """viky also speaks Mono8; the config has no pixel format yet, so switch it before acquisition starts."""

    def _apply_trigger(self, node_map: Any) -> None:
        super()._apply_trigger(node_map)
        node_map.get_node("PixelFormat").value = "Mono8"


def test_mono8_frames_survive_the_buffer_going_back() -> None:
    # Mono8 is the format where the converted image could still point into the producer's buffer.
    camera = Mono8Camera("gige0", GenicamCameraConfig(source="genicam"))
    try:
        camera.open()
        first = grab_frames(camera, 1)[0]
        assert first.image.shape == (400, 400) and first.image.dtype == np.uint8
        kept = first.image.copy()
        later = grab_frames(camera, 6)  # viky cycles through a few buffers and its ball moves
        assert any(not np.array_equal(frame.image, kept) for frame in later), "the scene should change"
        np.testing.assert_array_equal(first.image, kept)
    finally:
        camera.close()


def test_device_by_serial_number(open_camera: OpenCamera) -> None:
    devices = viky_devices()
    assert len(devices) == 3
    serial = devices[2]["serial_number"]
    assert isinstance(serial, str) and serial

    camera = open_camera(device=serial)
    frame = grab_frames(camera, 1)[0]
    assert frame.source == serial
    np.testing.assert_allclose(ball_colour(frame.image), [0, 0, 255])  # the third device draws blue


def test_device_by_id(open_camera: OpenCamera) -> None:
    camera = open_camera(device="VikyTL_DEV_green")
    np.testing.assert_allclose(ball_colour(grab_frames(camera, 1)[0].image), [0, 255, 0])


@pytest.mark.parametrize("device", ["no-such-camera", 7])
def test_unknown_device_lists_the_devices_found(device: int | str) -> None:
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam", device=device))
    with pytest.raises(CameraError) as caught:
        camera.open()
    message = str(caught.value)
    assert str(device) in message
    devices = viky_devices()
    for index, info in enumerate(devices):
        name = info["user_defined_name"] or "-"  # viky's devices have none
        assert f"[{index}] serial {info['serial_number']}, name {name}, id {info['id_']}, model {info['model']}" in (
            message
        )
    assert "\n" not in message
    assert not camera.is_open


def test_software_trigger_on_viky_names_the_missing_node() -> None:
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam", trigger="software"))
    with pytest.raises(CameraError, match="TriggerMode"):
        camera.open()
    assert not camera.is_open
    # the failed open let go of the device and the producer: a free-running camera opens afterwards
    again = GenicamCamera("gige0", GenicamCameraConfig(source="genicam"))
    try:
        again.open()
        assert again.grab(2.0) is not None
    finally:
        again.close()


def test_missing_cti_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "vendor" / "producer.cti"
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam", cti=str(missing)))
    with pytest.raises(CameraError, match=str(missing)):
        camera.open()


def fake_producers(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"not opened: only listed")
    return paths


def missing_cti_message(tmp_path: Path) -> str:
    missing = tmp_path / "vendor" / "producer.cti"
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam", cti=str(missing)))
    with pytest.raises(CameraError) as caught:
        camera.open()
    message = str(caught.value)
    assert message.startswith(f"GenTL producer (.cti) not found: {missing}; ")
    assert "\n" not in message
    assert message.endswith("or use cti: viky (the simulator)")
    return message


def test_missing_cti_lists_the_producers_on_the_gentl_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mv = fake_producers(tmp_path / "mvIMPACT" / "lib", "mvGenTLProducer.cti")
    basler = fake_producers(tmp_path / "pylon", "ProducerGEV.cti", "ProducerU3V.cti")
    (tmp_path / "pylon" / "readme.txt").write_text("not a producer")
    (tmp_path / "pylon" / "old.cti").mkdir()  # a folder, whatever its name
    gone = tmp_path / "uninstalled"
    monkeypatch.setenv("GENICAM_GENTL64_PATH", os.pathsep.join(map(str, [mv[0].parent, gone, basler[0].parent])))
    message = missing_cti_message(tmp_path)
    found = ", ".join(map(str, [*mv, *basler]))
    assert f"found: {found} (GENICAM_GENTL64_PATH), or use cti: viky" in message
    assert "readme" not in message and "old.cti" not in message


def test_many_producers_are_named_up_to_a_few_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    producers = fake_producers(tmp_path / "gentl", *(f"vendor{i}.cti" for i in range(7)))
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path / "gentl"))
    message = missing_cti_message(tmp_path)
    assert f"found: {', '.join(map(str, producers[:CTI_NAMED]))} and {7 - CTI_NAMED} more (GENICAM_GENTL64_PATH)" in (
        message
    )
    assert str(producers[CTI_NAMED]) not in message


def test_missing_cti_without_a_gentl_path_points_at_the_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GENICAM_GENTL64_PATH", raising=False)
    assert "GENICAM_GENTL64_PATH is not set; install the camera vendor's GenTL producer" in missing_cti_message(
        tmp_path
    )
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path / "empty"))
    assert f"no .cti in GENICAM_GENTL64_PATH ({tmp_path / 'empty'})" in missing_cti_message(tmp_path)


def test_a_file_that_is_no_producer(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.cti"
    bogus.write_bytes(b"not a shared library")
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam", cti=str(bogus)))
    with pytest.raises(CameraError, match="not a loadable GenTL producer"):
        camera.open()


def drain(camera: GenicamCamera) -> list[Frame | None]:
    """Grab with 5 ms waits until one finds no frame ready. viky sends one every 50 ms, so a quiet machine gets
    there in a few grabs; a busy one, slower at each grab, in more: the deadline is only against a hang."""
    results: list[Frame | None] = []
    deadline = time.monotonic() + WAIT_S
    while not results or results[-1] is not None:
        assert time.monotonic() < deadline, f"{len(results)} grabs of 5 ms in {WAIT_S} s, and each found a frame"
        results.append(camera.grab(0.005))
    return results


def test_grab_returns_none_on_timeout(open_camera: OpenCamera) -> None:
    camera = open_camera()
    grab_frames(camera, 1)
    assert drain(camera)[-1] is None


# --- the heartbeat: a device lost while no frame comes (a hardware trigger's idle line) -------------------


class DeviceStatus:
    """Stands in for the acquirer's GenTL device module, whose DeviceAccessStatus the producer keeps."""

    def __init__(self, status: str | Exception) -> None:
        self.status = status
        self.node_map = self
        self.node = self  # the GenApi node behind the value, as harvesters exposes it

    def get_node(self, name: str) -> DeviceStatus:
        assert name == genicam_module.DEVICE_ACCESS_STATUS
        return self

    def invalidate_node(self) -> None:
        pass

    @property
    def value(self) -> str:
        if isinstance(self.status, Exception):
            raise self.status
        return self.status


class WithDevice:
    """The real acquirer, but with `device` replaced: viky's devices cannot be unplugged."""

    def __init__(self, acquirer: Any, device: DeviceStatus) -> None:
        self._acquirer = acquirer
        self.device = device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._acquirer, name)


def test_a_silent_camera_whose_device_is_still_open_is_no_camera_loss(
    open_camera: OpenCamera, caplog: pytest.LogCaptureFixture
) -> None:
    camera = open_camera()
    assert camera._acquirer is not None
    status = camera._acquirer.device.node_map.get_node(genicam_module.DEVICE_ACCESS_STATUS).value
    assert status in genicam_module.OPEN_STATUSES, "viky reports its open device through the standard node"
    assert drain(camera)[-1] is None
    assert drain(camera)[-1] is None
    assert genicam_module.DEVICE_ACCESS_STATUS not in caplog.text


@pytest.mark.parametrize(
    ("status", "message"),
    [("NoAccess", "reports device .* as NoAccess, no longer open"), (RuntimeError("port read failed"), "heartbeat")],
)
def test_a_device_the_producer_no_longer_has_open_is_a_camera_error(
    open_camera: OpenCamera, monkeypatch: pytest.MonkeyPatch, status: str | Exception, message: str
) -> None:
    camera = open_camera()
    grab_frames(camera, 1)
    monkeypatch.setattr(camera, "_acquirer", WithDevice(camera._acquirer, DeviceStatus(status)))
    with pytest.raises(CameraError, match=message):
        drain(camera)


def test_the_heartbeat_asks_at_most_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = PollLog(buffer_at_fetch=None)
    monkeypatch.setattr(genicam_module, "time", clock)
    asked = []
    device = DeviceStatus("OpenReadWrite")
    monkeypatch.setattr(device, "invalidate_node", lambda: asked.append(clock.now))
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam"))
    camera._acquirer = WithDevice(clock, device)
    for _ in range(30):
        assert camera.grab(0.1) is None
    # 30 empty grabs of 0.1 s (and the polls' sleeps) span about 3 s: one question at the first, then one a second
    assert len(asked) == 3
    assert all(later - earlier >= genicam_module.HEARTBEAT_S for earlier, later in itertools.pairwise(asked))
    camera._acquirer = None


# Why the camera polls: harvesters waited for a buffer in back-to-back 1 ms GenTL calls that hold the GIL, so the
# inference thread, needing the GIL back after each of its native calls, waited up to Python's switch interval
# (5 ms) every time. The tests below check what the fix is made of (a GenTL call that never waits, a sleep between
# two polls), then the effect on a real camera, measured against a thread that does hold the GIL.


class PollLog:
    """Stands in for the genicam module's `time` (a clock that moves only when slept on) and for the image
    acquirer, and writes down the order of their calls: ("fetch", timeout) and ("sleep", seconds)."""

    def __init__(self, buffer_at_fetch: int | None) -> None:
        self.calls: list[tuple[str, float]] = []
        self.now = 100.0
        self._buffer_at_fetch = buffer_at_fetch

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.calls.append(("sleep", seconds))
        self.now += seconds

    def try_fetch(self, *, timeout: float) -> object | None:
        self.calls.append(("fetch", timeout))
        fetches = sum(1 for name, _ in self.calls if name == "fetch")
        return BUFFER if fetches == self._buffer_at_fetch else None


BUFFER = object()


def test_polling_asks_gentl_without_waiting_and_sleeps_between_two_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deterministic: a fake clock and a fake acquirer, no thread, no timing.
    arrives = PollLog(buffer_at_fetch=4)
    monkeypatch.setattr(genicam_module, "time", arrives)
    assert genicam_module._poll(arrives, 1.0) is BUFFER
    # Each ask returns at once (harvesters reads a timeout of 0 as "wait for ever", so the smallest positive one),
    # and time.sleep, which lets go of the GIL, comes between every two of them.
    assert 0 < genicam_module.NO_WAIT_S <= 1e-3 and genicam_module.POLL_INTERVAL_S > 0
    fetch, pause = ("fetch", genicam_module.NO_WAIT_S), ("sleep", genicam_module.POLL_INTERVAL_S)
    assert arrives.calls == [fetch, pause, fetch, pause, fetch, pause, fetch]

    never = PollLog(buffer_at_fetch=None)
    monkeypatch.setattr(genicam_module, "time", never)
    assert genicam_module._poll(never, 0.01) is None
    # Gives up at the deadline, having slept between its asks all along: no busy loop.
    assert never.now >= 100.01
    assert never.calls[0::2] == [fetch] * len(never.calls[0::2]) and never.calls[1::2] == [pause] * (
        len(never.calls) // 2
    )
    assert never.calls[-1] == fetch and len(never.calls[0::2]) <= 0.01 / genicam_module.POLL_INTERVAL_S + 2


class SleepSpy:
    """The `time` module, writing down each sleep into a shared log."""

    def __init__(self, log: list[tuple[str, object]]) -> None:
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        self._log.append(("sleep", seconds))
        time.sleep(seconds)


def test_the_real_acquirer_is_polled_without_a_wait_inside_gentl(
    open_camera: OpenCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    camera = open_camera()
    acquirer = camera._acquirer
    assert acquirer is not None
    # harvesters' own wait inside GenTL, which holds the GIL, is off.
    assert acquirer.timeout_period_on_update_event_data_call == genicam_module.GENTL_WAIT_MS == 0
    log: list[tuple[str, object]] = []
    real_fetch = acquirer.try_fetch

    def fetch(*, timeout: float) -> Any:
        buffer = real_fetch(timeout=timeout)
        log.append(("fetch" if buffer is not None else "empty fetch", timeout))
        return buffer

    monkeypatch.setattr(acquirer, "try_fetch", fetch)
    monkeypatch.setattr(genicam_module, "time", SleepSpy(log))
    grab_frames(camera, 2)
    drain(camera)  # ends on a grab that waited in vain, so it polled more than once
    assert any(name == "empty fetch" for name, _ in log)
    assert {timeout for name, timeout in log if name != "sleep"} == {genicam_module.NO_WAIT_S}
    # After an ask that found nothing, the camera sleeps before it asks again.
    for (name, _), (after, _) in itertools.pairwise(log):
        assert not (name == "empty fetch" and after != "sleep"), log


def wake_up_delays_beside(work: Callable[[threading.Event, threading.Event], None], samples: int) -> list[float]:
    """How late, in seconds, 0.5 ms sleeps on this thread wake up while `work(stop, ready)` runs on another:
    waking up needs the GIL back, so each says how long the other thread kept it."""
    stop, ready = threading.Event(), threading.Event()
    worker = threading.Thread(target=work, args=(stop, ready))
    worker.start()
    try:
        assert ready.wait(WAIT_S), "the other thread did not start"
        late = []
        for _ in range(samples):
            start = time.perf_counter()
            time.sleep(SHORT_SLEEP_S)  # frees the GIL; waking up needs it back
            late.append(time.perf_counter() - start - SHORT_SLEEP_S)
    finally:
        stop.set()
        worker.join()
    return late


def hold_the_gil(stop: threading.Event, ready: threading.Event) -> None:
    """Pure Python, never waiting: gives up the GIL only when the interpreter makes it, every switch interval."""
    ready.set()
    while not stop.is_set():
        pass


def test_waiting_for_a_frame_leaves_the_gil_to_other_threads(open_camera: OpenCamera) -> None:
    """The camera thread waiting for frames, against a thread that holds the GIL, measured in the same run.

    The switch interval is raised to 50 ms for the measurement: a sleep that wakes up while another thread holds the
    GIL is then at least 50 ms late, a floor set by the interpreter, not by the machine's speed. Beside the camera a
    wake-up is as late as the machine's scheduling makes it (under 0.1 ms measured, on a loaded 2-core machine too);
    beside harvesters' GIL-holding wait it was 25 to 45 ms (it let go only between frames). A quarter of the GIL
    holder's delay sits well between the two. The holder's delay is its worst wake-up: on a loaded machine the holder
    is not always scheduled in time to take the GIL during a 0.5 ms sleep, and such a wake-up is quick.
    """
    camera = open_camera()

    def acquire(stop: threading.Event, ready: threading.Event) -> None:
        grab_frames(camera, 1)  # acquiring, not still starting
        ready.set()
        while not stop.is_set():
            camera.grab(1.0)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(MEASURE_SWITCH_INTERVAL_S)
    try:
        held = max(wake_up_delays_beside(hold_the_gil, samples=20))
        polling = statistics.median(wake_up_delays_beside(acquire, samples=40))
    finally:
        sys.setswitchinterval(previous)
    assert held >= MEASURE_SWITCH_INTERVAL_S * 0.9, f"beside a GIL holder a wake-up was {held * 1000:.1f} ms late"
    assert polling < held / 4, f"{polling * 1000:.1f} ms late beside the camera, {held * 1000:.1f} ms beside a holder"


def test_close_is_idempotent_and_grab_after_close_fails() -> None:
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam"))
    camera.close()  # never opened
    camera.open()
    try:
        assert camera.grab(2.0) is not None
    finally:
        camera.close()
    camera.close()
    assert not camera.is_open
    with pytest.raises(CameraError, match="not open"):
        camera.grab(0.1)
    camera.open()  # and it opens again
    try:
        assert camera.grab(2.0) is not None
    finally:
        camera.close()


class DeviceFrameIds:
    """Records the frame ids the producer gives, as the camera reads them (the real reader, spied on)."""

    def __init__(self) -> None:
        self.seen: list[int | None] = []
        self._read = genicam_module._optional_int

    def __call__(self, module: Any, attribute: str) -> int | None:
        value = self._read(module, attribute)
        if attribute == "frame_id":
            self.seen.append(value)
        return value


def test_frame_ids_keep_counting_across_a_reopen(monkeypatch: pytest.MonkeyPatch) -> None:
    device_ids = DeviceFrameIds()
    monkeypatch.setattr(genicam_module, "_optional_int", device_ids)
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam"))
    camera.open()
    try:
        before = grab_frames(camera, 3)
        camera.close()  # what the loop's reconnect does
        camera.open()
        after = grab_frames(camera, 3)
    finally:
        camera.close()
    frames = before + after
    assert [f.frame_id for f in frames] == [1, 2, 3, 4, 5, 6]
    assert [f.camera_frame_id for f in frames] == device_ids.seen
    # viky counts from the start again once reopened: the duplicates the agent's own frame id avoids.
    assert device_ids.seen[3:] == device_ids.seen[:3]


# --- pixel formats, no camera -----------------------------------------------------------------


def test_mono8() -> None:
    data = np.arange(12, dtype=np.uint8)
    image = to_rgb_or_mono(data, 4, 3, "Mono8")
    assert image.shape == (3, 4) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, data.reshape(3, 4))


def test_rows_with_padding_are_cropped() -> None:
    padded = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 0, 0]], dtype=np.uint8).reshape(-1)
    np.testing.assert_array_equal(to_rgb_or_mono(padded, 3, 2, "Mono8"), [[1, 2, 3], [4, 5, 6]])


def test_rgb8_and_bgr8() -> None:
    rgb = np.array([[[10, 20, 30], [40, 50, 60]]], dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_or_mono(rgb.reshape(-1), 2, 1, "RGB8"), rgb)
    bgr = rgb[:, :, ::-1].copy()
    out = to_rgb_or_mono(bgr.reshape(-1), 2, 1, "BGR8")
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.c_contiguous


@pytest.mark.parametrize(("pixel_format", "order"), [("RGBa8", [0, 1, 2]), ("BGRa8", [2, 1, 0])])
def test_four_channel_formats_drop_alpha(pixel_format: str, order: list[int]) -> None:
    rgb = np.array([[[200, 100, 50], [1, 2, 3]], [[7, 8, 9], [255, 0, 128]]], dtype=np.uint8)
    four = np.concatenate([rgb[:, :, order], np.full((2, 2, 1), 77, np.uint8)], axis=2)
    out = to_rgb_or_mono(four.reshape(-1), 2, 2, pixel_format)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


# The 2 x 2 tile each PFNC name describes, top-left first.
BAYER_TILES = {"BayerRG8": "RGGB", "BayerGR8": "GRBG", "BayerBG8": "BGGR", "BayerGB8": "GBRG"}


def bayer_mosaic(tile: str, rgb: tuple[int, int, int], size: int = 16) -> np.ndarray:
    """A uniform scene of colour `rgb` as the sensor with this tile sees it."""
    value = dict(zip("RGB", rgb, strict=True))
    mosaic = np.zeros((size, size), np.uint8)
    for cell, letter in enumerate(tile):
        mosaic[cell // 2 :: 2, cell % 2 :: 2] = value[letter]
    return mosaic


@pytest.mark.parametrize("pixel_format", sorted(BAYER_TILES))
@pytest.mark.parametrize("colour", [(200, 0, 0), (0, 0, 200), (0, 200, 0)])
def test_bayer_pure_colour_scene(pixel_format: str, colour: tuple[int, int, int]) -> None:
    mosaic = bayer_mosaic(BAYER_TILES[pixel_format], colour)
    out = to_rgb_or_mono(mosaic.reshape(-1), 16, 16, pixel_format)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    mean = out[4:-4, 4:-4].reshape(-1, 3).mean(axis=0)  # away from the border interpolation
    np.testing.assert_allclose(mean, colour, atol=5)


@pytest.mark.parametrize(("pixel_format", "top"), [("Mono10", 1023), ("Mono12", 4095), ("Mono16", 65535)])
def test_deep_mono_scales_to_8_bits(pixel_format: str, top: int) -> None:
    data = np.array([0, top, (top + 1) // 2, top // 4], dtype=np.uint16)
    out = to_rgb_or_mono(data, 2, 2, pixel_format)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 255], [128, 63]])


def test_mono12_from_raw_little_endian_bytes() -> None:
    values = np.array([[0, 4095], [2048, 16]], dtype="<u2")
    out = to_rgb_or_mono(values.view(np.uint8).reshape(-1), 2, 2, "Mono12")
    np.testing.assert_array_equal(out, [[0, 255], [128, 1]])


def test_unsupported_pixel_format_is_named() -> None:
    with pytest.raises(CameraError, match="YCbCr422_8"):
        to_rgb_or_mono(np.zeros(8, np.uint8), 2, 2, "YCbCr422_8")


def test_buffer_of_the_wrong_size() -> None:
    with pytest.raises(BadBuffer, match="does not fit"):
        to_rgb_or_mono(np.zeros(10, np.uint8), 4, 4, "Mono8")


@pytest.mark.parametrize(
    ("data", "width", "height", "pixel_format", "problem"),
    [
        (np.zeros(400 * 400 * 4 - 1, np.uint8), 400, 400, "RGBa8", "holds 639999 values, which does not fit 400 x 400"),
        (np.zeros(16, np.uint8), 4, 4, "YUV422_8", "unsupported pixel format 'YUV422_8'"),
        (np.zeros(16, np.float32), 4, 4, "Mono8", "holds float32 data, expected uint8"),
        (np.zeros(15, np.uint8), 3, 5, "Mono12", "odd number of bytes (15)"),
        (np.zeros(16, np.uint8), 0, 4, "Mono8", "empty image (0 x 4)"),
    ],
)
def test_a_buffer_that_cannot_be_converted_says_what_is_wrong(
    data: np.ndarray, width: int, height: int, pixel_format: str, problem: str
) -> None:
    with pytest.raises(BadBuffer) as caught:
        to_rgb_or_mono(data, width, height, pixel_format)
    assert problem in str(caught.value)


class ShortBuffers:
    """Cuts the buffers whose number (from 1) is in `short` to 100 bytes, as a producer losing packets would."""

    def __init__(self, short: set[int]) -> None:
        self.short = short
        self.seen = 0
        self._copy = genicam_module._copy_component  # the real one, before the test patches it out

    def __call__(self, components: Any) -> Any:
        copied = self._copy(components)
        self.seen += 1
        if self.seen in self.short and copied is not None:
            return dataclasses.replace(copied, data=copied.data[:100])
        return copied


def test_a_short_buffer_is_that_frame_s_error_and_the_camera_keeps_going(
    open_camera: OpenCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(genicam_module, "_copy_component", ShortBuffers({2}))
    camera = open_camera()
    first, short, third = grab_frames(camera, 3)
    assert first.error is None and third.error is None and third.image.shape == (400, 400, 3)
    assert short.image is NO_IMAGE and short.frame_id not in (first.frame_id, third.frame_id)
    assert short.error == f"bad buffer from device {camera.source}: RGBa8 buffer holds 100 values, which does not " + (
        "fit 400 x 400 x 4"
    )
    assert camera.is_open


def test_a_short_buffer_on_a_live_camera_is_an_error_verdict_not_a_camera_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(genicam_module, "_copy_component", ShortBuffers({2, 3}))
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam"))
    camera.open()
    publisher = FakePublisher()
    model = ModelInfo(version="m", threshold=1.0, score_scale=1.0, geometry=Geometry(height=16, width=16))
    stop = threading.Event()
    guard = threading.Timer(LOOP_GUARD_S, stop.set)  # a camera taken for lost would otherwise reconnect for ever
    guard.start()
    try:
        loop = InspectionLoop(camera, FakeRuntime(lambda image: 0.0), publisher, model, LoopOptions(max_frames=5))
        summary = loop.run(stop)
    finally:
        guard.cancel()
        camera.close()
    assert [v.verdict for v in publisher.verdicts] == ["ok", "error", "error", "ok", "ok"]
    assert "holds 100 values" in (publisher.verdicts[1].error or "")
    assert summary.camera_errors == 0 and publisher.events == []  # no camera_lost, no reconnect


# --- settings from the config, on the real simulator ------------------------------------------------


def test_pixel_format_and_window_from_the_config(open_camera: OpenCamera) -> None:
    camera = open_camera(pixel_format="Mono8", roi={"width": 200, "height": 120}, frame_rate=10.0, buffer_count=5)
    frame = grab_frames(camera, 1)[0]
    assert frame.image.shape == (120, 200)


@pytest.mark.parametrize(
    ("fields", "node"),
    [
        ({"exposure_us": 500.0}, "ExposureTime"),
        ({"gain_db": 3.0}, "Gain"),
        ({"roi": {"width": 128, "height": 128, "offset_x": 8}}, "OffsetX"),
    ],
)
def test_a_setting_on_a_missing_node_names_the_node_and_the_field(fields: dict[str, Any], node: str) -> None:
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam", **fields))
    with pytest.raises(CameraError, match=f"no GenICam node {node}") as caught:
        camera.open()
    assert f"'{next(iter(fields))}" in str(caught.value)
    assert not camera.is_open


def test_an_unsupported_pixel_format_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="YUV422"):
        GenicamCameraConfig(source="genicam", pixel_format="YUV422_8")


# --- packed mono, against a packer written bit by bit -------------------------------------------------


def pack_pfnc(values: list[int], bits: int) -> np.ndarray:
    """PFNC `p` packing: one little-endian bit stream, pixel after pixel."""
    stream = sum(v << (i * bits) for i, v in enumerate(values))
    size = -(-len(values) * bits // 8)
    return np.frombuffer(stream.to_bytes(size, "little"), np.uint8)


def pack_gige(values: list[int], bits: int) -> np.ndarray:
    """GigE Vision `Packed`: two pixels in three bytes, high bits in bytes 0 and 2, low bits in byte 1."""
    low = bits - 8
    out = []
    for a, b in zip(values[::2], values[1::2], strict=True):
        out += [a >> low, (a & ((1 << low) - 1)) | ((b & ((1 << low) - 1)) << 4), b >> low]
    return np.array(out, np.uint8)


@pytest.mark.parametrize(
    ("pixel_format", "bits", "pack"),
    [
        ("Mono10p", 10, pack_pfnc),
        ("Mono12p", 12, pack_pfnc),
        ("Mono10Packed", 10, pack_gige),
        ("Mono12Packed", 12, pack_gige),
    ],
)
def test_packed_mono_unpacks_to_the_top_8_bits(pixel_format: str, bits: int, pack: Any) -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1 << bits, size=6 * 4).tolist()
    out = to_rgb_or_mono(pack(values, bits), 6, 4, pixel_format)
    expected = (np.array(values) >> (bits - 8)).reshape(4, 6)
    np.testing.assert_array_equal(out, expected)


def test_packed_buffer_too_short() -> None:
    with pytest.raises(CameraError, match="needs 15"):
        to_rgb_or_mono(np.zeros(10, np.uint8), 4, 3, "Mono10p")
