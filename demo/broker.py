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
START_TIMEOUT_S = 10.0
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
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


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


@contextmanager
def start_mosquitto(port: int | None = None, listener_settings: str = ANONYMOUS) -> Iterator[Broker]:
    """A real mosquitto on `port` (a free one if None); RuntimeError if mosquitto is not installed.
    `listener_settings` are mosquitto.conf lines for the listener (TLS files, password file)."""
    exe = find_mosquitto()
    if exe is None:
        raise RuntimeError(MOSQUITTO_MISSING)

    def config(port: int, folder: Path) -> list[str]:
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {port} {HOST}\n{listener_settings}\npersistence false\nlog_dest stderr\n")
        return [exe, "-c", str(conf)]

    with _broker_process("mosquitto", port, config) as broker:
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

    with _broker_process("amqtt", port, config) as broker:
        yield broker


@contextmanager
def _broker_process(kind: BrokerKind, port: int | None, config: ConfigWriter) -> Iterator[Broker]:
    with tempfile.TemporaryDirectory(prefix=f"{kind}-") as tmp:
        folder = Path(tmp)
        # A port picked by us may be taken by someone else before the broker binds it: try a few.
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            argv = config(chosen, folder)
            log_path = folder / f"{kind}-{attempt}.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                _wait_until_listening(proc, chosen, log_path, kind)
            except _BrokerExited:
                if attempt + 1 < attempts:
                    continue
                raise RuntimeError(f"{kind} exited at start on port {chosen}: {_tail(log_path)}") from None
            except BaseException:
                _terminate(proc)
                raise
            break
        try:
            yield Broker(HOST, chosen, kind)
        finally:
            _terminate(proc)


class _BrokerExited(Exception):
    pass


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, log_path: Path, kind: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise _BrokerExited
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{kind} did not accept connections on {HOST}:{port} within {START_TIMEOUT_S:.0f} s: {_tail(log_path)}"
            )
        time.sleep(0.02)


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
