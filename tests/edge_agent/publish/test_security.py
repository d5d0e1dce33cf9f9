"""MQTT over TLS with a username and password file, against a real mosquitto with a test CA."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.broker import Broker, start_mosquitto
from edge_agent.config import MqttConfig, TlsConfig
from edge_agent.publish.fake import MemoryStore
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.security import MqttSecurityError
from edge_agent.verdict import OK, Verdict

USER = "line2"
PASSWORD = "s3cret-pass"
# `start` returns at the first attempt's outcome and `flush` once acknowledged: generous, so a loaded machine's slow
# TLS handshake is no failure; only a broker that never answers waits this long.
CONNECT_WAIT_S = 30.0


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA and a broker certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(d / "san.ext"), "-out", str(d / "server.crt"))  # fmt: skip
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(d / "passwd"), USER, PASSWORD], check=True, timeout=30)
    (d / "agent.password").write_text(PASSWORD + "\n")
    return d


@pytest.fixture
def tls_broker(pki: Path) -> Iterator[Broker]:
    settings = "\n".join(
        [
            f"cafile {pki / 'ca.crt'}",
            f"certfile {pki / 'server.crt'}",
            f"keyfile {pki / 'server.key'}",
            "allow_anonymous false",
            f"password_file {pki / 'passwd'}",
            # Started as root, mosquitto would switch to its own user, which cannot read pytest's private tmp.
            "user root" if os.geteuid() == 0 else "",
        ]
    )
    with start_mosquitto(listener_settings=settings) as broker:
        yield broker


def publisher(broker: Broker, pki: Path, password_file: Path) -> MqttPublisher:
    config = MqttConfig(
        host=broker.host,
        port=broker.port,
        tls=TlsConfig(ca_file=pki / "ca.crt"),
        username=USER,
        password_file=password_file,
    )
    return MqttPublisher(
        config, "s1", "m", MemoryStore(), camera="cam0", reject_deadline_ms=100, connect_wait_s=CONNECT_WAIT_S
    )


def a_verdict() -> Verdict:
    return Verdict(frame_id=1, camera="cam0", captured_at=0.0, score=0.1, threshold=1.0, verdict=OK, model="m")


def test_verdicts_are_delivered_over_tls_with_a_password(tls_broker: Broker, pki: Path) -> None:
    p = publisher(tls_broker, pki, pki / "agent.password")
    try:
        p.start()
        assert p.connected
        p.publish(a_verdict())
        assert p.flush(CONNECT_WAIT_S)
    finally:
        p.stop()


def test_a_wrong_password_is_not_let_in(tls_broker: Broker, pki: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("nope\n")
    p = publisher(tls_broker, pki, wrong)
    try:
        p.start()
        assert not p.connected
    finally:
        p.stop()


def test_missing_tls_or_password_files_are_clear_errors(pki: Path, tmp_path: Path) -> None:
    config = MqttConfig(tls=TlsConfig(ca_file=tmp_path / "nope.crt"))
    with pytest.raises(MqttSecurityError, match=r"mqtt\.tls\.ca_file .*nope\.crt does not exist"):
        MqttPublisher(config, "s1", "m", MemoryStore(), camera="cam0", reject_deadline_ms=100)
    config = MqttConfig(username=USER, password_file=tmp_path / "missing")
    with pytest.raises(MqttSecurityError, match=r"mqtt\.password_file .*missing cannot be read"):
        MqttPublisher(config, "s1", "m", MemoryStore(), camera="cam0", reject_deadline_ms=100)
    config = MqttConfig(tls=TlsConfig(ca_file=pki / "agent.password"))  # not a certificate
    with pytest.raises(MqttSecurityError, match="cannot be loaded"):
        MqttPublisher(config, "s1", "m", MemoryStore(), camera="cam0", reject_deadline_ms=100)
