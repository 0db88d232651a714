"""An emulator of the Microsoft identity platform (Entra ID's sign-in service) for tests: HTTPS on ``127.0.0.1``.

The real azure-identity and MSAL code runs against it: client credentials with a secret, a certificate (PEM or
PFX) or a federated token (workload identity), the device code, the authorization code with PKCE (through the
scripted :mod:`browser <defguard_entra.testing.identity.browser>`), refresh tokens, and an App Service-style
managed-identity endpoint. It issues RS256 JWT access tokens (``aud``, ``iss``, ``tid``, ``oid``, ``appid``,
``scp`` or ``roles``, ``wids``, ``iat``/``nbf``/``exp``, ``upn``) that
:class:`~defguard_entra.testing.GraphEmulator` verifies when given ``identity=``, and refuses with Entra's AADSTS
answers (:meth:`IdentityEmulator.refuse`). Unlike the other emulators it needs ``cryptography`` (a dependency of
azure-identity) for its test CA and signatures::

    from defguard_entra.testing import GraphEmulator, IdentityEmulator

    with IdentityEmulator() as idp, GraphEmulator(identity=idp) as graph:
        app = idp.add_app(secret="s3cret", roles=["User.Read.All"])
        env = {**idp.environment(), "AZURE_CLIENT_ID": app.client_id, "AZURE_CLIENT_SECRET": "s3cret"}

The modules: :mod:`._pki` (CA and certificates), :mod:`._tokens` (signing, client assertions), :mod:`._errors`
(AADSTS answers), :mod:`._registry` (apps, users, identities), :mod:`._grants` (the token endpoint),
:mod:`._emulator` (HTTPS, discovery, device code, authorize, managed identity).
"""

from __future__ import annotations

from ._emulator import IdentityEmulator
from ._errors import REFUSALS
from ._pki import AppCertificate, make_certificate
from ._registry import ROLE_IDS, App, Federated, Identity, UserAccount

__all__ = [
    "REFUSALS",
    "ROLE_IDS",
    "App",
    "AppCertificate",
    "Federated",
    "Identity",
    "IdentityEmulator",
    "UserAccount",
    "make_certificate",
]
