"""Signing the emulator's tokens and verifying what clients sign (``cryptography``).

Access and ID tokens are RS256 JWS (RFC 7515/7518) with a ``kid`` the JWKS at the OpenID configuration's
``jwks_uri`` names, as Entra's are ("Access tokens in the Microsoft identity platform",
https://learn.microsoft.com/entra/identity-platform/access-tokens). Client assertions
("Microsoft identity platform application authentication certificate credentials",
https://learn.microsoft.com/entra/identity-platform/certificate-credentials) are RS256 with ``x5t`` (SHA-1
thumbprint) or PS256 with ``x5t#S256``: MSAL 1.39 ``application.py`` ``_build_client`` picks PS256 when it knows
only the certificate (it computes the SHA-256 thumbprint); azure-identity 1.27's ``CertificateCredential`` always
passes the SHA-1 thumbprint, so RS256. ``aud`` is the token endpoint, ``iss`` and ``sub`` the client id.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from defguard_entra.testing._jws import JwsError, b64url, b64url_decode, unverified_header

from ._pki import new_key

__all__ = ["Signer", "verify_assertion"]


class Signer:
    """An RSA key that signs tokens, and its public JWK."""

    def __init__(self, key: rsa.RSAPrivateKey | None = None) -> None:
        self.key = key or new_key()
        self.kid = uuid.uuid4().hex[:27]

    def sign(self, claims: Mapping[str, Any], **header: Any) -> str:
        head = {"typ": "JWT", "alg": "RS256", "kid": self.kid, **header}
        signing_input = f"{b64url(_json(head))}.{b64url(_json(claims))}"
        signature = self.key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    @property
    def jwk(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        }


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def verify_assertion(
    token: str,
    certificates: Iterable[x509.Certificate],
    *,
    audience: Iterable[str],
    issuer: str,
    leeway: float = 300.0,
) -> dict[str, Any]:
    """The claims of a client assertion signed by one of ``certificates``; raises ``ValueError`` naming why not.

    ``ValueError("unknown certificate")`` when no thumbprint matches, ``("signature")`` when the signature fails,
    ``("time")`` when expired or not yet valid, ``("claims")`` for a wrong ``aud``/``iss``/``sub``.
    """
    try:
        header = unverified_header(token)
    except JwsError as exc:
        raise ValueError("signature") from exc
    alg = header.get("alg")
    known = list(certificates)
    by_sha1 = {c.fingerprint(hashes.SHA1()).hex(): c for c in known}  # noqa: S303 - x5t is SHA-1 by definition
    by_sha256 = {c.fingerprint(hashes.SHA256()).hex(): c for c in known}
    cert: x509.Certificate | None = None
    if isinstance(header.get("x5t#S256"), str):
        cert = by_sha256.get(b64url_decode(header["x5t#S256"]).hex())
    if cert is None and isinstance(header.get("x5t"), str):
        cert = by_sha1.get(b64url_decode(header["x5t"]).hex())
    if cert is None:
        raise ValueError("unknown certificate")
    head, payload, signature = token.split(".")
    if alg == "RS256":
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
    elif alg == "PS256":
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    else:
        raise ValueError("signature")
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("signature")  # noqa: TRY004 - one error type for every refusal
    try:
        public.verify(b64url_decode(signature), f"{head}.{payload}".encode("ascii"), pad, hashes.SHA256())
    except InvalidSignature as exc:
        raise ValueError("signature") from exc
    claims: dict[str, Any] = json.loads(b64url_decode(payload))
    now = time.time()
    if not (float(claims.get("nbf", 0)) - leeway <= now <= float(claims.get("exp", 0)) + leeway):
        raise ValueError("time")
    if claims.get("aud") not in set(audience) or claims.get("iss") != issuer or claims.get("sub") != issuer:
        raise ValueError("claims")
    return claims
