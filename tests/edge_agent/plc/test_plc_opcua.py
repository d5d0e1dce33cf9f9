"""The OPC UA output against asyncua's own client: the node ids and browse names the README's table gives a PLC."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from asyncua import Client, Node, ua

from demo.broker import free_port
from edge_agent.config import OpcUaConfig
from edge_agent.plc.base import PlcError
from edge_agent.plc.board import ResultBoard
from edge_agent.plc.opcua import NAMESPACE_URI, VARIABLES, OpcUaOutput
from edge_agent.verdict import OK
from tests.edge_agent.plc.verdicts import CAMERA, verdict
from tests.edge_agent.waiting import POLL_S, WAIT_S, wait_for_event

HOST = "127.0.0.1"
PULSE_S = 0.2


class Ready:
    value = True

    def __call__(self) -> bool:
        return self.value


@pytest.fixture
def ready() -> Ready:
    return Ready()


@pytest.fixture
def output(ready: Ready) -> Iterator[OpcUaOutput]:
    out = OpcUaOutput(CAMERA, OpcUaConfig(enabled=True, host=HOST, port=free_port()), ResultBoard(ready, PULSE_S))
    out.start()
    yield out
    out.stop()


Scenario = Callable[[Client, Callable[[str], Node]], Awaitable[None]]


def talk(output: OpcUaOutput, scenario: Scenario) -> None:
    """Run `scenario` with a client connected to `output` and a lookup of the camera's variables by name."""

    async def run() -> None:
        async with Client(output.endpoint, timeout=WAIT_S) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            await scenario(client, lambda name: client.get_node(f"ns={ns};s={CAMERA}.{name}"))

    asyncio.run(run())


async def becomes(node: Node, expected: Any) -> None:
    """Wait until `node` reads `expected` (the server writes changes on its own thread, soon after a verdict)."""
    deadline = time.monotonic() + WAIT_S
    while (value := await node.read_value()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{node} is {value!r}, waited {WAIT_S:.0f} s for {expected!r}")
        await asyncio.sleep(POLL_S)


def test_the_last_result_under_its_node_ids_browse_names_and_types(output: OpcUaOutput, ready: Ready) -> None:
    async def scenario(client: Client, var: Callable[[str], Node]) -> None:
        assert await var("verdict_code").read_value() == 0 and await var("verdict").read_value() == ""
        output.publish(verdict(frame_id=5_000_000_000, camera_frame_id=99))
        await becomes(var("result_ready"), True)
        expected = {
            "verdict": "reject",
            "verdict_code": 2,
            "reject": True,
            "late": False,
            "score": 0.63,
            "score_valid": True,
            "threshold": 0.42,
            "frame_id": 5_000_000_000,
            "camera_frame_id": 99,
            "camera_frame_id_valid": True,
            "captured_at": datetime(2026, 1, 1, 12, 0, 0, 125000, tzinfo=timezone.utc),
            "inspected": 1,
            "rejects": 1,
            "errors": 0,
            "not_inspected": 0,
            "results_unacked": 0,
            "reject_pulse": True,
            "trigger_ready": True,
            "result_ready": True,
            "ack": False,
        }
        assert expected.keys() == VARIABLES.keys()
        read = {name: await var(name).read_value() for name in expected}
        assert read["captured_at"].replace(tzinfo=timezone.utc) == expected.pop("captured_at")
        assert {name: read[name] for name in expected} == expected
        types = {name: await var(name).read_data_type_as_variant_type() for name in VARIABLES}
        assert types == VARIABLES
        ns = await client.get_namespace_index(NAMESPACE_URI)
        by_path = await client.nodes.objects.get_child([f"{ns}:{CAMERA}", f"{ns}:score"])
        assert by_path.nodeid == var("score").nodeid
        ready.value = False  # the camera went away, or inspection was paused
        await becomes(var("trigger_ready"), False)

    talk(output, scenario)


def test_ack_clears_result_ready_and_results_not_acked_are_counted(output: OpcUaOutput) -> None:
    async def scenario(client: Client, var: Callable[[str], Node]) -> None:
        output.publish(verdict(frame_id=1))
        output.publish(verdict(frame_id=2, kind=OK, score=0.1))
        await becomes(var("frame_id"), 2)
        assert await var("verdict").read_value() == "ok"
        assert await var("results_unacked").read_value() == 1
        assert await var("result_ready").read_value() is True
        await var("ack").write_value(ua.Variant(True, ua.VariantType.Boolean))
        await becomes(var("result_ready"), False)
        await becomes(var("ack"), False)  # set back, ready for the next one
        with pytest.raises(ua.UaStatusCodeError):  # everything else is read-only
            await var("result_ready").write_value(ua.Variant(True, ua.VariantType.Boolean))
        output.publish(verdict(frame_id=3))
        await becomes(var("result_ready"), True)
        assert await var("results_unacked").read_value() == 1

    talk(output, scenario)


class Changes:
    """A subscription handler keeping every (variable, value) notified."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.names: dict[Any, str] = {}

    def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
        self.seen.append((self.names[node.nodeid], value))


def test_a_subscribed_plc_is_told_of_the_result_and_the_end_of_the_pulse(output: OpcUaOutput) -> None:
    async def scenario(client: Client, var: Callable[[str], Node]) -> None:
        changes = Changes()
        names = ("result_ready", "reject_pulse")
        nodes = [var(name) for name in names]
        changes.names = {node.nodeid: name for node, name in zip(nodes, names, strict=True)}
        subscription = await client.create_subscription(10, changes)
        await subscription.subscribe_data_change(nodes)
        output.publish(verdict())

        def pulse_went_on_and_off() -> bool:
            pulse = [value for name, value in changes.seen if name == "reject_pulse"]
            return True in pulse and False in pulse[pulse.index(True) :]

        deadline = time.monotonic() + WAIT_S
        while not (("result_ready", True) in changes.seen and pulse_went_on_and_off()):
            assert time.monotonic() < deadline, f"notified only {changes.seen}"
            await asyncio.sleep(POLL_S)

    talk(output, scenario)


def test_publish_returns_at_once_while_the_server_thread_is_stalled(output: OpcUaOutput) -> None:
    stalled, release = threading.Event(), threading.Event()

    def stall() -> None:
        stalled.set()
        release.wait(WAIT_S)

    output._thread.call_soon(stall)  # type: ignore[union-attr]  # the server's own thread, made to hang
    wait_for_event(stalled, "the server thread to stall")
    published = threading.Event()

    def publish_many() -> None:
        for frame_id in range(1000):
            output.publish(verdict(frame_id=frame_id))
        published.set()

    threading.Thread(target=publish_many, daemon=True).start()
    try:
        wait_for_event(published, "1000 verdicts published to a stalled OPC UA server")
    finally:
        release.set()

    async def scenario(client: Client, var: Callable[[str], Node]) -> None:
        await becomes(var("frame_id"), 999)  # and once it runs again, it shows the newest
        assert await var("results_unacked").read_value() == 999

    talk(output, scenario)


def test_a_port_in_use_is_one_line_naming_the_key() -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = OpcUaOutput(CAMERA, OpcUaConfig(enabled=True, host=HOST, port=port), ResultBoard(lambda: True, 1.0))
        with pytest.raises(PlcError) as raised:
            out.start()
    message = str(raised.value)
    assert "\n" not in message
    assert f"OPC UA server cannot listen on {HOST}:{port}: the port is already in use" in message
    assert "plc.opcua.port" in message
