"""An OPC UA server (asyncua) with one camera's board: one object per camera, one variable per value (README: PLC
outputs, OPC UA).

Values are written into the address space, not computed on read, so a PLC subscribed to a variable is notified of
its changes. `publish` records the verdict and wakes the server's thread, which then writes what changed: the
result's fields first and `result_ready` last, so a PLC that sees `result_ready` reads fields of that result (or of
a newer one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timezone

from asyncua import ua
from asyncua.server.address_space import NodeData
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds

from edge_agent.config import OpcUaConfig
from edge_agent.log_throttle import LogThrottle
from edge_agent.plc.base import PlcError, check_listen, listen_error
from edge_agent.plc.board import NO_RESULT_CODE, BoardState, ResultBoard
from edge_agent.plc.loop_thread import LoopThread
from edge_agent.verdict import Verdict

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:edge-inspect"
START_TIMEOUT_S = 60.0  # asyncua loads the standard address space first: about a second here
STOP_TIMEOUT_S = 10.0
# trigger_ready follows the camera and the pause, which send no event: the server looks this often.
READY_POLL_S = 0.1
SYNC_ERROR_LOG_INTERVAL_S = 60.0
UINT32_MOD = 2**32
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ACK = "ack"

V = ua.VariantType
# Browse name -> type, in the order the server writes them: result_ready after the result's fields.
VARIABLES: dict[str, ua.VariantType] = {
    "verdict": V.String,
    "verdict_code": V.UInt16,
    "reject": V.Boolean,
    "late": V.Boolean,
    "score": V.Double,
    "score_valid": V.Boolean,
    "threshold": V.Double,
    "frame_id": V.UInt64,
    "camera_frame_id": V.UInt64,
    "camera_frame_id_valid": V.Boolean,
    "captured_at": V.DateTime,
    "inspected": V.UInt32,
    "rejects": V.UInt32,
    "errors": V.UInt32,
    "not_inspected": V.UInt32,
    "results_unacked": V.UInt32,
    "reject_pulse": V.Boolean,
    "trigger_ready": V.Boolean,
    "result_ready": V.Boolean,
    ACK: V.Boolean,  # the only one a client may write
}

Value = bool | int | float | str | datetime


def node_values(state: BoardState) -> dict[str, Value]:
    """Every variable's value for `state`, in `VARIABLES` order."""
    last = state.last
    values: dict[str, Value] = {
        "verdict": "" if last is None else last.verdict,
        "verdict_code": NO_RESULT_CODE if last is None else last.code,
        "reject": last is not None and last.reject,
        "late": last is not None and last.late,
        "score": 0.0 if last is None or last.score is None else last.score,
        "score_valid": last is not None and last.score is not None,
        "threshold": 0.0 if last is None else last.threshold,
        "frame_id": 0 if last is None else last.frame_id,
        "camera_frame_id": 0 if last is None or last.camera_frame_id is None else last.camera_frame_id,
        "camera_frame_id_valid": last is not None and last.camera_frame_id is not None,
        "captured_at": EPOCH if last is None else datetime.fromtimestamp(last.captured_at, timezone.utc),
        "inspected": state.inspected % UINT32_MOD,
        "rejects": state.rejects % UINT32_MOD,
        "errors": state.errors % UINT32_MOD,
        "not_inspected": state.not_inspected % UINT32_MOD,
        "results_unacked": state.results_unacked % UINT32_MOD,
        "reject_pulse": state.reject_pulse,
        "trigger_ready": state.trigger_ready,
        "result_ready": state.result_ready,
        # Reads false: a true written by the PLC is taken as the acknowledgement and set back.
        ACK: False,
    }
    return values


def node_id(camera: str, name: str | None = None) -> str:
    """The string identifier of the camera's object (name None) or of one of its variables."""
    return camera if name is None else f"{camera}.{name}"


class OpcUaOutput:
    """The `PlcOutput` for OPC UA. `config.port` is this camera's port (the base port plus its index)."""

    def __init__(self, camera: str, config: OpcUaConfig, board: ResultBoard) -> None:
        self._camera = camera
        self._config = config
        self._board = board
        self._thread: LoopThread | None = None
        # The rest is the server thread's only.
        self._server: Server | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._written: dict[str, Value] = {}
        self._wake: asyncio.Event | None = None  # set to have `_sync` write what changed
        self._sync_task: asyncio.Task[None] | None = None
        self._sync_errors = LogThrottle(SYNC_ERROR_LOG_INTERVAL_S)

    @property
    def endpoint(self) -> str:
        host = f"[{self._config.host}]" if ":" in self._config.host else self._config.host
        return f"opc.tcp://{host}:{self._config.port}"

    @property
    def name(self) -> str:
        return f"OPC UA {self.endpoint}"

    def start(self) -> None:
        # asyncua logs every request at INFO: a PLC reading ten times a second would flood the journal.
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        self._thread = LoopThread("plc-opcua")
        try:
            self._thread.run(self._serve(), START_TIMEOUT_S)
        except (PlcError, TimeoutError, OSError) as exc:
            self._thread.close(STOP_TIMEOUT_S)
            self._thread = None
            if isinstance(exc, OSError):  # the port was taken in the moment since the check
                raise listen_error("OPC UA server", self._config.host, self._config.port, "plc.opcua", exc) from None
            raise PlcError(str(exc)) from None
        log.info("PLC output: %s, namespace %s, object %s", self.name, NAMESPACE_URI, self._camera)

    def publish(self, verdict: Verdict) -> None:
        self._board.record(verdict)
        if self._thread is not None:
            self._thread.call_soon(self._wake_up)

    def stop(self) -> None:
        if self._thread is None:
            return
        try:
            self._thread.run(self._shutdown(), STOP_TIMEOUT_S)
        except TimeoutError as exc:
            log.warning("%s: %s stopping", self.name, exc)
        self._thread.close(STOP_TIMEOUT_S)
        self._thread = None

    # -- the server thread ---------------------------------------------------------------------------------------

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _serve(self) -> None:
        await check_listen("OPC UA server", self._config.host, self._config.port, "plc.opcua")
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"edge-inspect {self._camera}")
        # No certificates here: plain and anonymous (README: bind to loopback or the PLC network only).
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        ns = await server.register_namespace(NAMESPACE_URI)
        camera = await server.nodes.objects.add_object(
            ua.NodeId(ua.String(node_id(self._camera)), ua.Int16(ns)), ua.QualifiedName(self._camera, ns)
        )
        initial = node_values(self._board.state())
        for name, variant_type in VARIABLES.items():
            variable = await camera.add_variable(
                ua.NodeId(ua.String(node_id(self._camera, name)), ua.Int16(ns)),
                ua.QualifiedName(name, ns),
                ua.Variant(initial[name], variant_type),
            )
            self._nodes[name] = variable.nodeid
        await server.get_node(self._nodes[ACK]).set_writable()
        server.set_attribute_value_setter(self._nodes[ACK], self._on_ack_write)
        self._written = dict(initial)
        await server.start()
        self._server = server
        self._wake = asyncio.Event()
        self._sync_task = asyncio.create_task(self._sync(server, self._wake))

    async def _shutdown(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        if self._server is not None:
            await self._server.stop()

    def _on_ack_write(self, node: NodeData, attribute: AttributeIds, value: ua.DataValue) -> None:
        """Every write of `ack`, the server's own included: store it, and on a true acknowledge the result."""
        node.attributes[attribute].value = value
        if value.Value is not None and value.Value.Value is True:
            self._board.ack()
            self._written.pop(ACK, None)  # so `_sync` sets it back to false
            self._wake_up()

    async def _sync(self, server: Server, wake: asyncio.Event) -> None:
        """Write what changed on the board, whenever a verdict or an ack wakes this up, or at the latest when
        reject_pulse ends or trigger_ready may have changed."""
        while True:
            wake.clear()
            try:
                await self._write_changes(server)
            except Exception as exc:  # the next verdict must still get through: log, keep serving
                if self._sync_errors.admit(type(exc).__name__) is not None:
                    log.error("%s: could not update the variables: %s", self.name, exc)
            pulse_left = self._board.pulse_left_s()
            timeout = min(READY_POLL_S, pulse_left) if pulse_left > 0 else READY_POLL_S
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin before Python 3.11
                await asyncio.wait_for(wake.wait(), timeout)

    async def _write_changes(self, server: Server) -> None:
        for name, value in node_values(self._board.state()).items():
            if self._written.get(name) == value:
                continue
            data = ua.DataValue(ua.Variant(value, VARIABLES[name]))
            await server.write_attribute_value(self._nodes[name], data)
            self._written[name] = value
