"""JSON Web Tokens with the standard library only: base64url, and verifying an RS256 signature against a JWKS.

The Graph emulator uses this to accept the identity emulator's access tokens without a third-party package (the
testing package's Graph and Defguard sides stay standard-library only). RS256 is RSASSA-PKCS1-v1_5 with SHA-256
(RFC 7518 §3.3, RFC 8017 §8.2.2): the signature raised to ``e`` modulo ``n`` must equal the DER ``DigestInfo`` of
the SHA-256 of ``header.payload``, padded ``00 01 FF… 00``. Keys come as JWKs (RFC 7517: ``kty`` RSA, ``n``,
``e``, ``kid``), as Entra publishes them at its ``jwks_uri``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["JwsError", "b64url", "b64url_decode", "unverified_header", "verify_rs256"]

#: DER prefix of a SHA-256 ``DigestInfo`` (RFC 8017 §9.2, note 1).
_SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


class JwsError(ValueError):
    """A token that is not a well-formed JWS, or whose signature does not verify."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise JwsError("not base64url") from exc


def _part(text: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(text))
    except ValueError as exc:
        raise JwsError("not JSON") from exc
    if not isinstance(value, dict):
        raise JwsError("not a JSON object")
    return value


def unverified_header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsError("a JWS has three parts")
    return _part(parts[0])


def _int(value: str) -> int:
    return int.from_bytes(b64url_decode(value), "big")


def verify_rs256(token: str, keys: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The claims of ``token`` if it is an RS256 JWS signed by one of ``keys`` (JWKs); raises :class:`JwsError`.

    Only the signature is checked here: the caller judges ``aud``, ``iss`` and the times.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsError("a JWS has three parts")
    header = _part(parts[0])
    if header.get("alg") != "RS256":
        raise JwsError(f"unsupported alg {header.get('alg')!r}")
    key = next((k for k in keys if k.get("kid") == header.get("kid") and k.get("kty") == "RSA"), None)
    if key is None:
        raise JwsError("signed with an unknown key")
    n, e = _int(str(key["n"])), _int(str(key["e"]))
    size = (n.bit_length() + 7) // 8
    signature = b64url_decode(parts[2])
    if len(signature) != size:
        raise JwsError("bad signature length")
    recovered = pow(int.from_bytes(signature, "big"), e, n).to_bytes(size, "big")
    digest = hashlib.sha256(f"{parts[0]}.{parts[1]}".encode("ascii")).digest()
    tail = _SHA256_PREFIX + digest
    expected = b"\x00\x01" + b"\xff" * (size - len(tail) - 3) + b"\x00" + tail
    if not hmac.compare_digest(recovered, expected):
        raise JwsError("signature verification failed")
    return _part(parts[1])
