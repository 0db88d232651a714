"""The identity emulator's HTTPS side: the test CA, routing, discovery, the device code and authorize endpoints,
and the App Service-style managed-identity endpoint.

Sources: "OpenID Connect on the Microsoft identity platform" (the discovery document,
https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc); MSAL 1.39 ``authority.py`` (tenant
discovery at ``/{tenant}/v2.0/.well-known/openid-configuration``; instance discovery at
``https://login.microsoftonline.com/common/discovery/instance`` unless the host is well known or
``instance_discovery=False``, which azure-identity's ``disable_instance_discovery=True`` sets); the device code and
auth code pages (see :mod:`._grants`); azure-identity 1.27 ``_credentials/browser.py`` (``response_mode=form_post``:
the authorize answer is a page whose form posts ``code``, ``state`` and ``client_info`` to the ``redirect_uri``);
"REST endpoint reference" of App Service managed identities
(https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference) and MSAL 1.39
``managed_identity.py`` ``_obtain_token_on_app_service`` (``GET IDENTITY_ENDPOINT?api-version=2019-08-01&resource=``
with ``X-IDENTITY-HEADER``; ``expires_on`` in epoch seconds, a string).
"""

from __future__ import annotations

import html
import secrets
import string
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlencode

from defguard_entra.testing._server import EmulatorServer, Faults, Handler, Request, Response

from ._errors import AadstsError, refusal
from ._grants import DeviceFlow, Grants, _Code
from ._pki import TestCA, temporary_directory
from ._registry import EXCHANGE_AUDIENCE
from ._tokens import Signer

__all__ = ["IdentityEmulator"]

#: The issuer of federated tokens the emulator mints (a Kubernetes cluster's, say).
EXTERNAL_ISSUER = "https://oidc.emulator.invalid/cluster"
#: The header the scripted browser sends to say what the user does on the sign-in page.
DECISION_HEADER = "X-Emulator-Decision"
USER_HEADER = "X-Emulator-User"


class IdentityEmulator(Grants, EmulatorServer):
    """The Microsoft identity platform on ``https://127.0.0.1:<port>``, with a test CA in :attr:`ca_file`."""

    server_header = "defguard-entra-identity-emulator"

    def __init__(
        self,
        tenant_id: str | None = None,
        *,
        token_lifetime: int = 3600,
        device_code_interval: int = 1,
        device_code_lifetime: int = 900,
        auto_approve: str | None = None,
        browser_user: str | None = None,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        Grants.__init__(self, tenant_id)
        self._dir = temporary_directory()
        self.ca = TestCA()
        directory = Path(self._dir.name)
        self.ca_file = str(directory / "ca.pem")
        Path(self.ca_file).write_bytes(self.ca.pem)
        EmulatorServer.__init__(self, host=host, port=port, faults=faults, tls=self.ca.server_context(directory))
        self.signer = Signer()
        self.external = Signer()
        self.token_lifetime = token_lifetime
        #: Entra answers ``interval: 5``; 1 keeps tests fast (MSAL honours whatever the answer says).
        self.device_code_interval = device_code_interval
        self.device_code_lifetime = device_code_lifetime
        #: A UPN: device codes are approved as this user at the second poll (the first answers pending).
        self.auto_approve = auto_approve
        #: A UPN: who is signed in to the scripted browser (it may also say so in its request).
        self.browser_user = browser_user
        self.code_lifetime = 600.0  # authorization codes: "about 10 minutes" (auth code flow page)

    def _base(self) -> str:
        return self.base_url

    def close(self) -> None:
        """Stop and delete the CA file and the browser scripts."""
        self.stop()
        self._dir.cleanup()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what clients are pointed at ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>`` (no trailing slash)."""
        return self.base_url

    @property
    def authority(self) -> str:
        """``https://127.0.0.1:<port>``: azure-identity's ``authority`` and ``AZURE_AUTHORITY_HOST``."""
        return self.base_url

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.signer.jwk]}

    def environment(self) -> dict[str, str]:
        """The variables that point azure-identity (and the CLI) here: authority host, CA bundle, tenant."""
        return {
            "AZURE_AUTHORITY_HOST": self.authority,
            "REQUESTS_CA_BUNDLE": self.ca_file,
            "AZURE_TENANT_ID": self.tenant_id,
        }

    def managed_identity_environment(self) -> dict[str, str]:
        """App Service's ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` for this emulator."""
        return {"IDENTITY_ENDPOINT": f"{self.base_url}/msi/token", "IDENTITY_HEADER": self.identity_header}

    def federated_token(self, subject: str, *, issuer: str = EXTERNAL_ISSUER, lifetime: int = 3600) -> str:
        """A token from an external issuer (what Kubernetes projects into ``AZURE_FEDERATED_TOKEN_FILE``)."""
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": subject,
            "aud": EXCHANGE_AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
        }
        return self.external.sign(claims)

    # -- the user's side ---------------------------------------------------------------------------------------

    def approve(self, user: str, user_code: str | None = None) -> int:
        """The user ``user`` (a UPN) enters the code and approves: every pending device flow (or the one with
        ``user_code``). Returns how many were approved."""
        with self.lock:
            account = self.users[user.lower()]
            flows = [f for f in self.device_flows.values() if user_code in {None, f.user_code} and f.user is None]
            for flow in flows:
                flow.user = account
            return len(flows)

    def expire_device_codes(self) -> None:
        """Every pending device code expires now (the next poll answers ``expired_token``, AADSTS70020)."""
        with self.lock:
            for flow in self.device_flows.values():
                flow.expires_at = 0.0

    def browser_command(self, mode: str = "follow", user: str | None = None) -> str:
        """An executable for the ``BROWSER`` variable (Python's ``webbrowser`` runs it with the URL as its one
        argument): the scripted browser in ``mode`` ``follow``, ``decline`` or ``ignore``."""
        from .browser import MODES  # noqa: PLC0415

        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}")
        path = Path(self._dir.name) / f"browser-{mode}-{secrets.token_hex(4)}"
        args = f"--ca-file '{self.ca_file}' --mode {mode}" + (f" --user '{user}'" if user else "")
        path.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" -m defguard_entra.testing.identity.browser {args} "$1"\n',
            encoding="utf-8",
        )
        path.chmod(0o755)
        return str(path)

    def open_browser(self, mode: str = "follow", user: str | None = None) -> Callable[..., bool]:
        """A stand-in for ``webbrowser.open`` (monkeypatch it in-process): the scripted browser, in a thread."""
        from .browser import visit  # noqa: PLC0415

        def _open(url: str, *_args: Any, **_kwargs: Any) -> bool:
            threading.Thread(target=visit, args=(url, self.ca_file, mode, user), daemon=True).start()
            return True

        return _open

    # -- routing -------------------------------------------------------------------------------------------------

    def resolve(self, request: Request) -> tuple[str, Handler]:
        parts = [unquote(p) for p in request.raw_path.split("/") if p]
        method = request.method.upper()
        tail = "/".join(parts[1:])
        tenant = parts[0] if parts else ""
        routes: dict[tuple[str, str], tuple[str, Callable[[_Ctx], Response]]] = {
            ("GET", "v2.0/.well-known/openid-configuration"): ("openid-configuration", self._openid),
            ("GET", "discovery/instance"): ("instance-discovery", self._instance),
            ("GET", "discovery/v2.0/keys"): ("jwks", lambda _c: Response.json(200, self.jwks)),
            ("POST", "oauth2/v2.0/token"): ("token", self._token),
            ("POST", "oauth2/v2.0/devicecode"): ("devicecode", self._devicecode),
            ("GET", "oauth2/v2.0/authorize"): ("authorize", self._authorize),
        }
        if (method, request.raw_path.rstrip("/").lower()) == ("GET", "/msi/token"):
            return "managed-identity", self._managed_identity
        found = routes.get((method, tail))
        if found is None:
            return "not-found", lambda _r: Response.json(404, {"error": "not_found"})
        endpoint, handler = found
        return endpoint, lambda req: handler(_Ctx(req, tenant))

    def fault_response(self, status: int, request: Request, endpoint: str) -> Response:  # noqa: ARG002
        return Response.json(status, {"error": "temporarily_unavailable", "error_description": "injected"})

    # -- endpoints -----------------------------------------------------------------------------------------------

    def _openid(self, ctx: _Ctx) -> Response:
        tenant = ctx.tenant
        if not self.knows_tenant(tenant):
            response = refusal(90002, tenant=tenant)
            return Response(
                400, response.body.replace(b'"invalid_request"', b'"invalid_tenant"', 1), "application/json"
            )
        base = f"{self.base_url}/{tenant}"
        issuer_tenant = self.tenant_id if tenant.lower() not in {"common", "organizations"} else "{tenantid}"
        return Response.json(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{self.base_url}/{issuer_tenant}/v2.0",
                "request_uri_parameter_supported": False,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "msgraph_host": "graph.microsoft.com",
            },
        )

    def _instance(self, ctx: _Ctx) -> Response:
        endpoint = ctx.request.params.get("authorization_endpoint", "")
        tenant = endpoint.removeprefix(self.base_url + "/").split("/", 1)[0] or "common"
        host = f"{self._host}:{self.port}"
        return Response.json(
            200,
            {
                "tenant_discovery_endpoint": f"{self.base_url}/{tenant}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            },
        )

    def _token(self, ctx: _Ctx) -> Response:
        form = ctx.form
        try:
            return Response.json(200, self.token(ctx.tenant, form), {"Cache-Control": "no-store, no-cache"})
        except AadstsError as exc:
            details = {"client_id": form.get("client_id", ""), "tenant": ctx.tenant, **exc.details}
            details["correlation_id"] = ctx.request.header("client-request-id") or ""  # Entra echoes MSAL's id
            return refusal(exc.code, **details)

    def _devicecode(self, ctx: _Ctx) -> Response:
        form = ctx.form
        client_id = form.get("client_id", "")
        if not self.knows_tenant(ctx.tenant):
            return refusal(90002, tenant=ctx.tenant)
        if client_id not in self.apps:
            return refusal(700016, client_id=client_id, tenant=ctx.tenant)
        device_code = secrets.token_urlsafe(48)
        user_code = "".join(secrets.choice(string.ascii_uppercase) for _ in range(9))
        with self.lock:
            self.device_flows[device_code] = DeviceFlow(
                client_id, form.get("scope", "").split(), user_code, time.time() + self.device_code_lifetime
            )
        uri = "https://microsoft.com/devicelogin"
        return Response.json(
            200,
            {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": uri,
                "expires_in": self.device_code_lifetime,
                "interval": self.device_code_interval,
                "message": f"To sign in, use a web browser to open the page {uri} and enter the code {user_code} "
                "to authenticate.",
            },
        )

    def _authorize(self, ctx: _Ctx) -> Response:
        params = ctx.request.params
        redirect_uri, state = params.get("redirect_uri", ""), params.get("state", "")
        client_id = params.get("client_id", "")
        if not self.knows_tenant(ctx.tenant) or client_id not in self.apps or not redirect_uri:
            return Response.html(400, "<html><body>Sign-in error: unknown tenant, client or redirect URI</body></html>")
        decision = (ctx.request.header(DECISION_HEADER) or "approve").lower()
        upn = ctx.request.header(USER_HEADER) or self.browser_user or params.get("login_hint")
        answer: dict[str, str]
        if decision == "decline":
            answer = {
                "error": "access_denied",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                "state": state,
            }
        elif upn is None or upn.lower() not in self.users:
            return Response.html(200, "<html><body>Pick an account</body></html>")  # nobody to sign in: the page waits
        else:
            user = self.users[upn.lower()]
            code = secrets.token_urlsafe(64)
            with self.lock:
                self.codes[code] = _Code(
                    client_id,
                    user,
                    params.get("scope", "").split(),
                    redirect_uri,
                    params.get("code_challenge"),
                    params.get("code_challenge_method", "plain"),
                    params.get("nonce"),
                    time.time() + self.code_lifetime,
                )
            answer = {"code": code, "state": state, "session_state": secrets.token_hex(16)}
        if params.get("response_mode") == "form_post":
            fields = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>' for k, v in answer.items()
            )
            page = (
                f'<html><body onload="document.forms[0].submit()"><form method="POST" '
                f'action="{html.escape(redirect_uri)}">{fields}</form></body></html>'
            )
            return Response.html(200, page)
        joiner = "&" if "?" in redirect_uri else "?"
        return Response(302, b"", None, {"Location": f"{redirect_uri}{joiner}{urlencode(answer)}"})

    def _managed_identity(self, request: Request) -> Response:
        params = request.params
        if request.header("x-identity-header") != self.identity_header:
            return Response.json(401, {"statusCode": 401, "message": "Unauthorized: X-IDENTITY-HEADER is wrong"})
        if params.get("api-version") != "2019-08-01" or not params.get("resource"):
            return Response.json(400, {"statusCode": 400, "message": "api-version 2019-08-01 and resource needed"})
        answer = self.managed_identity_token(params["resource"], params.get("client_id"))
        if answer is None:
            return Response.json(400, {"statusCode": 400, "message": "No managed identity found for the request"})
        return Response.json(200, answer)

    def __enter__(self) -> Self:
        self.start()
        return self


class _Ctx:
    """A request and the tenant its path names."""

    def __init__(self, request: Request, tenant: str) -> None:
        self.request = request
        self.tenant = tenant

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.request.body.decode("utf-8", "replace"), keep_blank_values=True))
