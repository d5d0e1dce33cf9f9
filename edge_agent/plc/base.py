from __future__ import annotations

import asyncio
import errno
from typing import Protocol

from edge_agent.errors import AgentError
from edge_agent.verdict import Verdict


class PlcError(AgentError):
    """A PLC server cannot serve (port in use, unknown host)."""


class PlcOutput(Protocol):
    """A server a PLC reads one camera's results from. `publish` is called by the inspection loop for every verdict
    and must return at once: it never waits on the network, a client or the server's own thread."""

    @property
    def name(self) -> str: ...  # for log lines: protocol and address

    def start(self) -> None: ...  # listening when it returns; PlcError when it cannot

    def publish(self, verdict: Verdict) -> None: ...

    def stop(self) -> None: ...


def listen_error(what: str, host: str, port: int, key: str, exc: OSError) -> PlcError:
    """One line saying why a server could not listen and which config key to change."""
    if exc.errno == errno.EADDRINUSE:
        reason = "the port is already in use"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "this machine has no such address"
    else:
        reason = exc.strerror or str(exc)
    return PlcError(
        f"{what} cannot listen on {host}:{port}: {reason}; set {key}.host and {key}.port "
        f"(camera N of the config adds N to the port), or {key}.enabled: false"
    )


async def check_listen(what: str, host: str, port: int, key: str) -> None:
    """Raise the PlcError saying why `what` cannot listen on host:port, before its library tries: asyncua logs a
    traceback of its own on a failed bind, and pymodbus hides the reason."""
    try:
        probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port, reuse_address=True)
    except OSError as exc:
        raise listen_error(what, host, port, key, exc) from None
    probe.close()
    await probe.wait_closed()
