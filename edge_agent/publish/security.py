"""TLS and username/password for the MQTT connection, from the `mqtt` config section."""

from __future__ import annotations

import ssl

from paho.mqtt.client import Client

from edge_agent.config import MqttConfig
from edge_agent.errors import AgentError


class MqttSecurityError(AgentError):
    """A TLS file or the password file cannot be used."""


def _read_password(config: MqttConfig) -> str | None:
    if config.password_file is None:
        return None
    try:
        # Only the first line: editors and `echo` add a trailing newline that is not part of the password.
        return config.password_file.read_text().splitlines()[0] if config.password_file.stat().st_size else ""
    except OSError as exc:
        raise MqttSecurityError(
            f"mqtt.password_file {config.password_file} cannot be read ({exc.strerror}); "
            "check the path and that the agent's user may read it"
        ) from None


def apply_security(client: Client, config: MqttConfig) -> None:
    """Set TLS and credentials on `client` before it connects; a missing or unusable file is a clear error."""
    if config.username is not None:
        client.username_pw_set(config.username, _read_password(config))
    tls = config.tls
    if tls is None:
        return
    for key, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        if path is not None and not path.is_file():
            raise MqttSecurityError(f"mqtt.tls.{key} {path} does not exist; fix the path in the config")
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file),
            certfile=None if tls.cert_file is None else str(tls.cert_file),
            keyfile=None if tls.key_file is None else str(tls.key_file),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (ssl.SSLError, ValueError) as exc:
        raise MqttSecurityError(
            f"mqtt.tls files cannot be loaded ({exc}); check that ca_file is a PEM CA certificate and that "
            "cert_file and key_file are a matching PEM pair"
        ) from None
