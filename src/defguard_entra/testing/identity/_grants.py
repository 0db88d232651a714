"""The token endpoint (``POST /{tenant}/oauth2/v2.0/token``): one method per grant, and the tokens they issue.

Sources, each grant's Microsoft Learn page (their request parameters and answers):
client credentials with a secret, a certificate assertion or a federated token
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow,
https://learn.microsoft.com/entra/workload-id/workload-identity-federation), the device code
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code), the authorization code with PKCE and
the refresh token (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow), and the token
claims ("Access token claims reference", https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference;
"ID token claims reference", https://learn.microsoft.com/entra/identity-platform/id-token-claims-reference).
What MSAL 1.39 needs back (``oauth2cli/oauth2.py``, ``token_cache.py``): ``access_token``, ``expires_in``, and for a
user ``refresh_token``, ``id_token`` (``oid``, ``tid``, ``preferred_username``, and the ``nonce`` it sent) and
``client_info`` (base64url ``{"uid", "utid"}``) from which it builds the account.

Deliberate simplifications (docs/reference/sign-in-emulator.md): a delegated token's ``scp`` lists every Graph
permission consented for the app (Entra's incremental consent does the same); a request for one that is not
consented is AADSTS65001. Federated tokens verify only against the emulator's own external issuer key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from defguard_entra.testing._jws import JwsError, b64url, unverified_header, verify_rs256

from ._errors import AadstsError
from ._registry import GRAPH_APP_ID, GRAPH_ROOTS, App, Registry, UserAccount
from ._tokens import Signer, verify_assertion

__all__ = ["DeviceFlow", "Grants"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_OIDC = frozenset({"openid", "profile", "offline_access", "email"})


@dataclass
class DeviceFlow:
    client_id: str
    scopes: list[str]
    user_code: str
    expires_at: float
    user: UserAccount | None = None
    polls: int = 0


@dataclass
class _Code:
    client_id: str
    user: UserAccount
    scopes: list[str]
    redirect_uri: str
    challenge: str | None
    method: str
    nonce: str | None
    expires_at: float
    used: bool = False


@dataclass
class _Refresh:
    client_id: str
    user: UserAccount
    issued_at: float
    revoked: bool = False


class Grants(Registry):
    """The grants; :class:`~._emulator.IdentityEmulator` routes to :meth:`token`."""

    signer: Signer
    external: Signer
    token_lifetime: int
    auto_approve: str | None

    def __init__(self, tenant_id: str | None = None) -> None:
        super().__init__(tenant_id)
        self.device_flows: dict[str, DeviceFlow] = {}
        self.codes: dict[str, _Code] = {}
        self.refresh_tokens: dict[str, _Refresh] = {}
        self.issued: list[dict[str, Any]] = []  # the claims of every access token issued, oldest first

    def _base(self) -> str:
        """``https://host:port`` (the server supplies it)."""
        raise NotImplementedError

    # -- the endpoint ------------------------------------------------------------------------------------------

    def token(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        """The answer to a token request, or :class:`AadstsError`."""
        if not self.knows_tenant(tenant):
            raise AadstsError(90002, tenant=tenant)
        grant = form.get("grant_type")
        if not grant:
            raise AadstsError(900144, parameter="grant_type")
        client_id = form.get("client_id", "")
        code = self._take_refusal(grant, client_id)
        if code is not None:
            raise AadstsError(code, client_id=client_id, tenant=tenant)
        if grant == "client_credentials":
            app = self._authenticate(tenant, form)
            resource = self._resource(_scopes(form), tenant, app_only=True)
            return self._answer(self._app_claims(app.client_id, app.object_id, app.roles, resource, app.name))
        if grant == DEVICE_GRANT:
            return self._device_grant(tenant, form)
        if grant == "authorization_code":
            return self._code_grant(tenant, form)
        if grant == "refresh_token":
            return self._refresh_grant(tenant, form)
        raise AadstsError(70003, grant_type=grant)

    def _app(self, client_id: str, tenant: str) -> App:
        with self.lock:
            app = self.apps.get(client_id)
        if app is None:
            raise AadstsError(700016, client_id=client_id, tenant=tenant)
        return app

    def _authenticate(self, tenant: str, form: dict[str, str]) -> App:
        """A confidential client: its secret, a certificate assertion, or a federated token."""
        app = self._app(form.get("client_id", ""), tenant)
        if form.get("client_secret"):
            if form["client_secret"] not in app.secrets:
                raise AadstsError(7000215, client_id=app.client_id)
            return app
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            raise AadstsError(7000218)
        try:
            header = unverified_header(assertion)
        except JwsError:
            raise AadstsError(700027) from None
        if "x5t" in header or "x5t#S256" in header:
            endpoints = {f"{self._base()}/{t}/oauth2/v2.0/token" for t in (tenant, self.tenant_id)}
            try:
                verify_assertion(assertion, app.certificates, audience=endpoints, issuer=app.client_id)
            except ValueError as exc:
                raise AadstsError(700024 if str(exc) == "time" else 700027) from None
            return app
        try:
            claims = verify_rs256(assertion, [self.external.jwk])
        except JwsError:
            raise AadstsError(70021) from None
        now = time.time()
        found = any(
            f.issuer == claims.get("iss") and f.subject == claims.get("sub") and f.audience == claims.get("aud")
            for f in app.federated
        )
        if not found or not float(claims.get("nbf", 0)) - 300 <= now <= float(claims.get("exp", 0)):
            raise AadstsError(70021)
        return app

    @staticmethod
    def _resource_of(scope: str) -> tuple[str, str]:
        root, _, name = scope.rpartition("/")
        return ("https://graph.microsoft.com" if root == GRAPH_APP_ID else root), name

    def _resource(self, scopes: list[str], tenant: str, *, app_only: bool) -> str:
        resources = {self._resource_of(s)[0] for s in scopes if s not in _OIDC}
        if len(resources) != 1 or (app_only and not all(s.endswith("/.default") for s in scopes)):
            raise AadstsError(70011)
        (resource,) = resources
        if resource not in GRAPH_ROOTS:
            raise AadstsError(500011, resource=resource, tenant=tenant)
        return resource

    # -- user grants --------------------------------------------------------------------------------------------

    def _device_grant(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            flow = self.device_flows.get(form.get("device_code", ""))
            if flow is None or flow.client_id != form.get("client_id"):
                raise AadstsError(70000)
            if time.time() > flow.expires_at:
                raise AadstsError(70020)
            flow.polls += 1
            if flow.user is None and self.auto_approve and flow.polls > 1:
                flow.user = self.users[self.auto_approve.lower()]
            if flow.user is None:
                raise AadstsError(70016)
            del self.device_flows[form["device_code"]]
        return self._user_answer(tenant, flow.client_id, flow.user, flow.scopes, None)

    def _code_grant(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            grant = self.codes.get(form.get("code", ""))
            if grant is None or grant.used or grant.client_id != form.get("client_id"):
                raise AadstsError(70000)
            grant.used = True
        if time.time() > grant.expires_at:
            raise AadstsError(70008)
        if form.get("redirect_uri") != grant.redirect_uri:
            raise AadstsError(70000)
        if grant.challenge is not None:
            verifier = form.get("code_verifier", "")
            digest = b64url(hashlib.sha256(verifier.encode("ascii")).digest()) if grant.method == "S256" else verifier
            if not verifier or digest != grant.challenge:
                raise AadstsError(501481)
        return self._user_answer(tenant, grant.client_id, grant.user, _scopes(form) or grant.scopes, grant.nonce)

    def _refresh_grant(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            record = self.refresh_tokens.get(form.get("refresh_token", ""))
        if record is None or record.client_id != form.get("client_id"):
            raise AadstsError(70000)
        if record.revoked:
            raise AadstsError(700082, issued=time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime(record.issued_at)))
        return self._user_answer(tenant, record.client_id, record.user, _scopes(form), None)

    def revoke_refresh_tokens(self, user: str | None = None) -> None:
        """Every refresh token (of ``user``, a UPN) is refused from now on (AADSTS700082)."""
        with self.lock:
            for record in self.refresh_tokens.values():
                if user is None or record.user.upn.lower() == user.lower():
                    record.revoked = True

    def _user_answer(
        self, tenant: str, client_id: str, user: UserAccount, scopes: list[str], nonce: str | None
    ) -> dict[str, Any]:
        app = self._app(client_id, tenant)
        resource = self._resource(scopes, tenant, app_only=False)
        wanted = {self._resource_of(s)[1] for s in scopes if s not in _OIDC} - {".default"}
        missing = {w.lower() for w in wanted} - {c.lower() for c in app.consented}
        if missing or not app.consented:
            raise AadstsError(65001, client_id=client_id)
        claims = self._user_claims(app, user, resource)
        answer = self._answer(claims, scope=" ".join(f"{resource}/{s}" for s in sorted(app.consented)))
        asked = set(scopes)
        if "offline_access" in asked:
            refresh = secrets.token_urlsafe(48)
            with self.lock:
                self.refresh_tokens[refresh] = _Refresh(client_id, user, time.time())
            answer["refresh_token"] = refresh
        if "openid" in asked or "profile" in asked:
            answer["id_token"] = self.signer.sign(self._id_claims(app, user, nonce))
        answer["client_info"] = b64url(json.dumps({"uid": user.oid, "utid": self.tenant_id}).encode())
        return answer

    # -- tokens -------------------------------------------------------------------------------------------------

    def _times(self) -> dict[str, int]:
        now = int(time.time())
        return {"iat": now - 5, "nbf": now - 5, "exp": now + self.token_lifetime}

    @property
    def access_token_issuer(self) -> str:
        """The ``iss`` of access tokens for Graph: v1.0 tokens, as Graph's are (``accessTokenAcceptedVersion``)."""
        return f"https://sts.windows.net/{self.tenant_id}/"

    def _common(self, resource: str, client_id: str, name: str) -> dict[str, Any]:
        return {
            "aud": resource,
            "iss": self.access_token_issuer,
            **self._times(),
            "app_displayname": name,
            "appid": client_id,
            "tid": self.tenant_id,
            "uti": base64.urlsafe_b64encode(uuid.uuid4().bytes[:16]).rstrip(b"=").decode(),
            "ver": "1.0",
        }

    def _app_claims(self, client_id: str, oid: str, roles: set[str], resource: str, name: str) -> dict[str, Any]:
        claims = {**self._common(resource, client_id, name), "appidacr": "1", "idtyp": "app", "oid": oid, "sub": oid}
        if roles:
            claims["roles"] = sorted(roles)
        return claims

    def _user_claims(self, app: App, user: UserAccount, resource: str) -> dict[str, Any]:
        claims = {
            **self._common(resource, app.client_id, app.name),
            "appidacr": "0" if not (app.secrets or app.certificates) else "1",
            "idtyp": "user",
            "name": user.name,
            "oid": user.oid,
            "scp": " ".join(sorted(app.consented)),
            "sub": user.oid,
            "unique_name": user.upn,
            "upn": user.upn,
        }
        if user.directory_roles:
            claims["wids"] = sorted(user.directory_roles)
        return claims

    def _id_claims(self, app: App, user: UserAccount, nonce: str | None) -> dict[str, Any]:
        claims = {
            "aud": app.client_id,
            "iss": f"{self._base()}/{self.tenant_id}/v2.0",
            **self._times(),
            "name": user.name,
            "oid": user.oid,
            "preferred_username": user.upn,
            "sub": user.oid,
            "tid": self.tenant_id,
            "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        return claims

    def _answer(self, claims: dict[str, Any], *, scope: str | None = None) -> dict[str, Any]:
        with self.lock:
            self.issued.append(claims)
        return {
            "token_type": "Bearer",
            "scope": scope or f"{claims['aud']}/.default",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": self.signer.sign(claims),
        }

    def managed_identity_token(self, resource: str, client_id: str | None) -> dict[str, Any] | None:
        """App Service's answer for ``resource`` (``None``: no such identity)."""
        with self.lock:
            identity = next(
                (i for i in self.identities if (i.client_id == client_id if client_id else i.system_assigned)),
                None,
            )
        if identity is None:
            return None
        root = resource.removesuffix("/.default").rstrip("/")
        claims = self._app_claims(identity.client_id, identity.object_id, identity.roles, root, "managed identity")
        token = self._answer(claims)
        return {
            "access_token": token["access_token"],
            "expires_on": str(claims["exp"]),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }


def _scopes(form: dict[str, str]) -> list[str]:
    return form.get("scope", "").split()
