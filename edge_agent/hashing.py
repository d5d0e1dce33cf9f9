from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from edge_agent.errors import BundleError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hmac_sha256(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def same_digest(expected: str, actual: str) -> bool:
    # Constant time: a signature check must not tell an attacker how many leading characters were right.
    return hmac.compare_digest(expected.strip(), actual)


def read_key(path: Path) -> bytes:
    """An HMAC key file's bytes, surrounding whitespace stripped (a trailing newline is not part of the key)."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise BundleError(
            f"bundle signing key {path} cannot be read ({exc.strerror}); check the path and its rights"
        ) from None
    if not key:
        raise BundleError(f"bundle signing key {path} is empty; write a random key into it (openssl rand -hex 32)")
    return key
