"""A throw-away MQTT broker on a free loopback port, for the demo and the tests.

`run_broker` starts mosquitto when it is installed and amqtt (a Python broker, a dev dependency)
otherwise. `start_mosquitto` insists on mosquitto, which is what the tests use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0  # generous: a loaded machine starts a Python broker (amqtt) slowly
MOSQUITTO_MISSING = "mosquitto not found; install it with apt-get install mosquitto"
_MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")

BrokerKind = Literal["mosquitto", "amqtt"]
# Writes a broker config for a port into a folder; returns the command line that runs the broker.
ConfigWriter = Callable[[int, Path], list[str]]


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    kind: BrokerKind


def free_port() -> int:
    """A loopback TCP port nothing listens on, kept from the OS's other picks for about a minute.

    Found free, closed, then bound by a broker later: in between, anything else on the machine may take it. So the
    port is left in TIME_WAIT (listened on, connected to once, closed server side first): while it waits, the kernel
    hands it to no other bind(0) and no outgoing connection, but a server that sets SO_REUSEADDR, as mosquitto,
    asyncio (amqtt) and http.server do, can still listen on it. That narrows the race; `start_mosquitto` also
    retries on a new port where it picked the port itself.
    """
    return _hold(0)


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports, each held as `free_port` holds one: for an agent, whose
    camera N (in its config's order) serves metrics on `metrics.port` + N."""
    for _ in range(100):
        first = free_port()
        try:
            for port in range(first + 1, first + count):
                _hold(port)
        except OSError:  # taken, or past the last port: start again elsewhere
            continue
        return first
    raise RuntimeError(f"found no {count} consecutive free ports on {HOST}")


def _hold(port: int) -> int:
    """Leaves `port` (0: one the OS picks) in TIME_WAIT, as `free_port` says; OSError where it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        # Inherited by the accepted socket and its TIME_WAIT: without it the broker's own bind would be refused too.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen(1)
        held = int(listener.getsockname()[1])
        with socket.create_connection((HOST, held), timeout=START_TIMEOUT_S):
            accepted, _ = listener.accept()
            accepted.close()  # the side that closes first is the one left in TIME_WAIT: the port's side
    return held


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in _MOSQUITTO_DIRS:
        candidate = os.path.join(folder, "mosquitto")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextmanager
def run_broker(port: int | None = None) -> Iterator[Broker]:
    """mosquitto if installed, else amqtt; stopped on exit."""
    if find_mosquitto() is not None:
        with start_mosquitto(port) as broker:
            yield broker
    else:
        with start_amqtt(port) as broker:
            yield broker


ANONYMOUS = "allow_anonymous true"
MOSQUITTO_RUNNING = " running"  # "mosquitto version 2.0.11 running"
AMQTT_LISTENING = "Listener 'default' bind to"
BIND_FAILED = "address already in use"  # mosquitto's and asyncio's, whatever the case
START_ATTEMPTS = 5


@contextmanager
def start_mosquitto(
    port: int | None = None, listener_settings: str = ANONYMOUS, persistence_dir: Path | None = None
) -> Iterator[Broker]:
    """A real mosquitto on `port` (a free one if None); RuntimeError if mosquitto is not installed.
    `listener_settings` are mosquitto.conf lines for the listener (TLS files, password file). With
    `persistence_dir`, sessions, subscriptions and queued messages are saved there when the broker stops and read
    back by the next one started with it: a broker restart that loses nothing for a persistent subscriber."""
    exe = find_mosquitto()
    if exe is None:
        raise RuntimeError(MOSQUITTO_MISSING)
    persistence = (
        "persistence false" if persistence_dir is None else f"persistence true\npersistence_location {persistence_dir}/"
    )

    def config(port: int, folder: Path) -> list[str]:
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {port} {HOST}\n{listener_settings}\n{persistence}\nlog_dest stderr\n")
        return [exe, "-c", str(conf)]

    # Logged once every listener is bound: a connection before it could reach whoever else holds the port.
    with _broker_process("mosquitto", port, config, ready_line=MOSQUITTO_RUNNING) as broker:
        yield broker


@contextmanager
def start_amqtt(port: int | None = None) -> Iterator[Broker]:
    """amqtt's broker in a subprocess (the fallback when mosquitto is missing)."""

    def config(port: int, folder: Path) -> list[str]:
        conf = folder / "amqtt.yaml"
        body = {
            "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        conf.write_text(yaml.safe_dump(body))
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]

    with _broker_process("amqtt", port, config, ready_line=AMQTT_LISTENING) as broker:
        yield broker


@contextmanager
def _broker_process(
    kind: BrokerKind, port: int | None, config: ConfigWriter, ready_line: str | None = None
) -> Iterator[Broker]:
    """The broker on `port`, or on a free port; `ready_line`: a line of its log that says it has bound its port."""
    with tempfile.TemporaryDirectory(prefix=f"{kind}-") as tmp:
        folder = Path(tmp)
        # A port we picked may still be taken by someone else before the broker binds it: then try another. A port the
        # caller gave is theirs to pick (a restart on the same port): one try, and the error says what happened.
        attempts = 1 if port is not None else START_ATTEMPTS
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            argv = config(chosen, folder)
            log_path = folder / f"{kind}-{attempt}.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                _wait_until_listening(proc, chosen, log_path, kind, ready_line)
            except _BrokerExited:
                _terminate(proc)
                if attempt + 1 < attempts:
                    continue
                raise RuntimeError(
                    f"{kind} could not start on port {chosen} ({attempts} attempt(s)): {_tail(log_path)}"
                ) from None
            except BaseException:
                _terminate(proc)
                raise
            break
        try:
            yield Broker(HOST, chosen, kind)
        finally:
            _terminate(proc)


class _BrokerExited(Exception):
    """The broker ended, or said it could not bind its port, before it was ready."""


def _wait_until_listening(
    proc: subprocess.Popen[bytes], port: int, log_path: Path, kind: str, ready_line: str | None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise _BrokerExited
        log = _tail(log_path)
        if BIND_FAILED in log.lower():  # the broker ends soon after, or stays up without a listener (amqtt)
            raise _BrokerExited
        if ready_line is None or ready_line in log:
            try:
                with socket.create_connection((HOST, port), timeout=0.2):
                    pass
            except OSError:
                pass
            else:
                # Still alive after the connection: it was ours that accepted it, not someone else's listener.
                if proc.poll() is None:
                    return
                raise _BrokerExited
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{kind} did not accept connections on {HOST}:{port} within {START_TIMEOUT_S:.0f} s: {_tail(log_path)}"
            )
        time.sleep(0.02)  # polling a child process's start; nothing to wait on instead


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no output)"
    return text[-limit:] or "(no output)"


def main() -> None:
    """`python -m demo.broker [PORT]`: run a local broker until Ctrl-C."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else None
    with run_broker(port) as broker:
        print(f"{broker.kind} listening on {broker.host}:{broker.port} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
