"""Conformance of the identity emulator: the real azure-identity 1.27 and MSAL 1.39 credentials, in-process, over
HTTPS to 127.0.0.1 (the emulator's test CA through ``REQUESTS_CA_BUNDLE``), each behaviour with its source.

Every test here runs with :func:`loopback_only`: a connection to anything but loopback fails the test.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import webbrowser
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import azure.identity as ai
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError

from defguard_entra.testing import GraphEmulator, IdentityEmulator, make_certificate

GRAPH = "https://graph.microsoft.com"
DEFAULT = f"{GRAPH}/.default"
SA = "system:serviceaccount:vpn:provisioner"
ISSUER = "https://oidc.emulator.invalid/cluster"


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


@pytest.fixture
def idp(monkeypatch: pytest.MonkeyPatch, loopback_only: list[str]) -> Iterator[IdentityEmulator]:
    with IdentityEmulator() as emulator:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", emulator.ca_file)
        yield emulator
    assert loopback_only == [], f"the test reached {loopback_only}"


def _kw(idp: IdentityEmulator) -> dict[str, Any]:
    return {"authority": idp.authority, "disable_instance_discovery": True}


def _grants(idp: IdentityEmulator) -> list[str | None]:
    return [dict(parse_qsl(r.body.decode())).get("grant_type") for r in idp.requests_to("token")]


# -- discovery, TLS --------------------------------------------------------------------------------------------


def test_openid_configuration_names_the_endpoints_msal_reads(idp: IdentityEmulator) -> None:
    """MSAL 1.39 ``authority.py``: tenant discovery at ``/{tenant}/v2.0/.well-known/openid-configuration``; it
    reads ``authorization_endpoint``, ``token_endpoint``, ``device_authorization_endpoint`` and ``issuer``, and
    takes the tenant from the token endpoint's path (OpenID Connect page,
    learn.microsoft.com/entra/identity-platform/v2-protocols-oidc)."""
    config = requests.get(f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration", timeout=10).json()
    assert config["token_endpoint"] == f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token"
    assert config["device_authorization_endpoint"].endswith("/oauth2/v2.0/devicecode")
    assert config["issuer"] == f"{idp.url}/{idp.tenant_id}/v2.0"
    keys = requests.get(config["jwks_uri"], timeout=10).json()["keys"]
    assert [k["kid"] for k in keys] == [idp.jwks["keys"][0]["kid"]]
    assert keys[0]["kty"] == "RSA"


def test_it_speaks_only_tls_and_the_ca_file_verifies_it(idp: IdentityEmulator) -> None:
    """The test CA in ``ca_file`` signs the server certificate for 127.0.0.1; without it the handshake fails."""
    assert idp.url.startswith("https://127.0.0.1:")
    assert requests.get(f"{idp.url}/{idp.tenant_id}/discovery/v2.0/keys", verify=idp.ca_file, timeout=10).ok
    session = requests.Session()
    session.trust_env = False  # not REQUESTS_CA_BUNDLE: the system's CAs only
    with pytest.raises(requests.exceptions.SSLError):
        session.get(f"{idp.url}/{idp.tenant_id}/discovery/v2.0/keys", timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(idp.url.replace("https", "http", 1), timeout=10)


def test_unknown_tenant_is_aadsts90002(idp: IdentityEmulator) -> None:
    """Error codes page: AADSTS90002 "Tenant not found"; discovery answers 400 ``invalid_tenant`` (MSAL 1.39
    ``authority.tenant_discovery`` turns any 4xx into "Unable to get authority configuration")."""
    answer = requests.get(f"{idp.url}/no-such-tenant/v2.0/.well-known/openid-configuration", timeout=10)
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "invalid_tenant"
    assert body["error_codes"] == [90002]
    assert body["error_description"].startswith("AADSTS90002: Tenant 'no-such-tenant' not found")
    app = idp.add_app(secret="s")
    with pytest.raises(ClientAuthenticationError, match="Unable to get authority configuration"):
        ai.ClientSecretCredential("no-such-tenant", app.client_id, "s", **_kw(idp)).get_token(DEFAULT)


# -- app-only --------------------------------------------------------------------------------------------------


def test_client_secret_gives_an_app_only_jwt(idp: IdentityEmulator) -> None:
    """Client credentials page (learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow):
    ``scope=<resource>/.default``; access token claims reference: ``aud``, ``iss``, ``tid``, ``oid``, ``appid``,
    ``roles``, ``idtyp: app``, ``iat``/``nbf``/``exp``."""
    app = idp.add_app(secret="s3cret", roles=["User.Read.All", "CustomSecAttributeAssignment.ReadWrite.All"])
    token = ai.ClientSecretCredential(idp.tenant_id, app.client_id, "s3cret", **_kw(idp)).get_token(DEFAULT)
    claims = claims_of(token.token)
    assert claims["aud"] == GRAPH
    assert claims["tid"] == idp.tenant_id
    assert claims["appid"] == app.client_id
    assert claims["iss"] == f"https://sts.windows.net/{idp.tenant_id}/"
    assert claims["idtyp"] == "app"
    assert claims["oid"] == app.object_id
    assert "scp" not in claims
    assert claims["roles"] == ["CustomSecAttributeAssignment.ReadWrite.All", "User.Read.All"]
    assert claims["nbf"] <= claims["iat"] + 1 < claims["exp"]
    assert token.expires_on == claims["exp"]
    assert "instance-discovery" not in idp.request_counts  # disable_instance_discovery=True


def test_wrong_secret_is_aadsts7000215_with_entras_envelope(idp: IdentityEmulator) -> None:
    """Error codes page: AADSTS7000215 "Invalid client secret provided"; the body's fields as its sample shows
    (``error``, ``error_description`` with trace and correlation ids, ``error_codes``, ``timestamp``)."""
    app = idp.add_app(secret="right")
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215: Invalid client secret"):
        ai.ClientSecretCredential(idp.tenant_id, app.client_id, "wrong", **_kw(idp)).get_token(DEFAULT)
    answer = idp.requests_to("token")[-1]
    assert answer.status == 401
    form = {"client_id": app.client_id, "client_secret": "x", "grant_type": "client_credentials", "scope": DEFAULT}
    body = requests.post(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token", data=form, timeout=10).json()
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert {"trace_id", "correlation_id", "timestamp", "error_uri"} <= set(body)
    assert "\r\nTrace ID: " in body["error_description"]
    assert "\r\nCorrelation ID: " in body["error_description"]


@pytest.mark.parametrize("form", ["pem", "pfx", "pem-chain"])
def test_certificate_credential_pem_and_pfx(idp: IdentityEmulator, tmp_path: Path, form: str) -> None:
    """Certificate credentials page (learn.microsoft.com/entra/identity-platform/certificate-credentials): the
    assertion's ``x5t`` (SHA-1) or ``x5t#S256`` names a registered certificate, ``aud`` is the token endpoint;
    azure-identity 1.27 ``certificate.py`` reads PEM (key + cert) and PFX with a password and always gives MSAL the
    SHA-1 thumbprint (so RS256 + ``x5t``); ``send_certificate_chain`` adds the ``x5c`` header."""
    cert = make_certificate()
    app = idp.add_app(certificate=cert, roles=["User.Read.All"])
    path = cert.write_pfx(tmp_path / "app.pfx", "pfx-pass") if form == "pfx" else cert.write_pem(tmp_path / "a.pem")
    credential = ai.CertificateCredential(
        idp.tenant_id,
        app.client_id,
        str(path),
        password="pfx-pass" if form == "pfx" else None,
        send_certificate_chain=form == "pem-chain",
        **_kw(idp),
    )
    assert claims_of(credential.get_token(DEFAULT).token)["roles"] == ["User.Read.All"]
    assertion = dict(parse_qsl(idp.requests_to("token")[-1].body.decode()))["client_assertion"]
    header = json.loads(base64.urlsafe_b64decode(assertion.split(".")[0] + "=="))
    assert header["alg"] == "RS256"
    assert "x5t" in header
    assert ("x5c" in header) is (form == "pem-chain")


def test_msal_ps256_assertion_with_the_sha256_thumbprint(idp: IdentityEmulator) -> None:
    """MSAL 1.39 ``application.py`` ``_build_client``: given the public certificate (no thumbprint) it signs
    PS256 with ``x5t#S256``, which Entra accepts (certificate credentials page)."""
    import msal

    cert = make_certificate()
    app = idp.add_app(certificate=cert, roles=["User.Read.All"])
    key = cert.write_pem(Path(idp.ca_file).with_name("key.pem")).read_text()
    client = msal.ConfidentialClientApplication(
        app.client_id,
        client_credential={"private_key": key, "public_certificate": cert.cert_pem.decode()},
        authority=f"{idp.authority}/{idp.tenant_id}",
        instance_discovery=False,
    )
    result = client.acquire_token_for_client([DEFAULT])
    assert "access_token" in result, result.get("error_description")
    assertion = dict(parse_qsl(idp.requests_to("token")[-1].body.decode()))["client_assertion"]
    header = json.loads(base64.urlsafe_b64decode(assertion.split(".")[0] + "=="))
    assert header["alg"] == "PS256"
    assert "x5t#S256" in header


def test_an_unregistered_certificate_is_aadsts700027(idp: IdentityEmulator, tmp_path: Path) -> None:
    """Error codes page: AADSTS700027, the client assertion failed signature validation (or names a certificate
    the app does not have)."""
    app = idp.add_app(certificate=make_certificate())
    other = make_certificate().write_pem(tmp_path / "other.pem")
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        ai.CertificateCredential(idp.tenant_id, app.client_id, str(other), **_kw(idp)).get_token(DEFAULT)


def test_workload_identity_exchanges_the_federated_token(idp: IdentityEmulator, tmp_path: Path) -> None:
    """Workload identity federation (learn.microsoft.com/entra/workload-id/workload-identity-federation):
    ``client_assertion`` = the external token, matched to a federated credential by ``iss``, ``sub`` and
    ``aud: api://AzureADTokenExchange``; AADSTS70021 when none matches. azure-identity 1.27
    ``workload_identity.py`` reads the token file on each request."""
    app = idp.add_app(roles=["User.Read.All"])
    idp.add_federated_credential(app.client_id, ISSUER, SA)
    token_file = tmp_path / "token"
    token_file.write_text(idp.federated_token(SA))
    credential = ai.WorkloadIdentityCredential(
        tenant_id=idp.tenant_id, client_id=app.client_id, token_file_path=str(token_file), **_kw(idp)
    )
    assert claims_of(credential.get_token(DEFAULT).token)["appid"] == app.client_id
    token_file.write_text(idp.federated_token("system:serviceaccount:other:sa"))
    stranger = ai.WorkloadIdentityCredential(
        tenant_id=idp.tenant_id, client_id=app.client_id, token_file_path=str(token_file), **_kw(idp)
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS70021"):
        stranger.get_token(DEFAULT)


def test_app_service_managed_identity(idp: IdentityEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """App Service "REST endpoint reference": ``GET IDENTITY_ENDPOINT?api-version=2019-08-01&resource=…`` with
    ``X-IDENTITY-HEADER``; the answer's ``expires_on`` is epoch seconds (MSAL 1.39 ``managed_identity.py``
    ``_obtain_token_on_app_service``)."""
    identity = idp.add_managed_identity(roles=["User.Read.All"])
    for name, value in idp.managed_identity_environment().items():
        monkeypatch.setenv(name, value)
    token = ai.ManagedIdentityCredential().get_token(DEFAULT)
    claims = claims_of(token.token)
    assert claims["oid"] == identity.object_id
    assert claims["roles"] == ["User.Read.All"]
    request = idp.requests_to("managed-identity")[-1]
    assert dict(parse_qsl(request.query)) == {"api-version": "2019-08-01", "resource": GRAPH}
    wrong = requests.get(f"{idp.url}/msi/token", params={"api-version": "2019-08-01", "resource": GRAPH}, timeout=10)
    assert wrong.status_code == 401


def test_refuse_answers_the_next_request_with_the_code(idp: IdentityEmulator) -> None:
    """Error codes page: AADSTS65001 (consent missing) as ``invalid_grant``; asked for with ``refuse``."""
    app = idp.add_app(secret="s")
    idp.refuse(65001, grant_type="client_credentials")
    credential = ai.ClientSecretCredential(idp.tenant_id, app.client_id, "s", **_kw(idp))
    with pytest.raises(ClientAuthenticationError, match="AADSTS65001: The user or administrator has not consented"):
        credential.get_token(DEFAULT)
    # only once (a new credential: MSAL 1.39 throttled_http_client.py replays an invalid_grant answer for a while)
    assert ai.ClientSecretCredential(idp.tenant_id, app.client_id, "s", **_kw(idp)).get_token(DEFAULT).token


# -- delegated -------------------------------------------------------------------------------------------------


def _public_app(idp: IdentityEmulator) -> Any:
    idp.add_user(
        "alice@example.com",
        oid="00000000-0000-4000-8000-00000000a11c",
        directory_roles=["Attribute Assignment Administrator"],
    )
    return idp.add_app("cli", delegated=["User.Read.All", "CustomSecAttributeAssignment.ReadWrite.All"])


def test_device_code_until_approved(idp: IdentityEmulator) -> None:
    """Device code page (learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code): ``devicecode`` answers
    ``user_code``, ``device_code``, ``verification_uri``, ``interval``; polls get ``authorization_pending``
    (AADSTS70016) until the user approves. MSAL builds the account from ``id_token`` and ``client_info``
    (azure-identity's ``AuthenticationRecord`` carries the ``preferred_username``)."""
    app = _public_app(idp)
    shown: list[tuple[str, str]] = []

    def prompt(uri: str, code: str, _expires: Any) -> None:
        shown.append((uri, code))
        threading.Timer(1.5, idp.approve, args=("alice@example.com",)).start()

    credential = ai.DeviceCodeCredential(
        client_id=app.client_id, tenant_id=idp.tenant_id, prompt_callback=prompt, **_kw(idp)
    )
    record = credential.authenticate(scopes=[f"{GRAPH}/User.Read.All"])
    assert record.username == "alice@example.com"
    assert record.tenant_id == idp.tenant_id
    assert shown
    assert shown[0][0] == "https://microsoft.com/devicelogin"
    assert len(shown[0][1]) == 9
    statuses = [r.status for r in idp.requests_to("token")]
    assert statuses[0] == 400
    assert statuses[-1] == 200
    claims = claims_of(credential.get_token(f"{GRAPH}/User.Read.All").token)
    assert claims["scp"] == "CustomSecAttributeAssignment.ReadWrite.All User.Read.All"
    assert claims["upn"] == "alice@example.com"
    assert claims["oid"] == "00000000-0000-4000-8000-00000000a11c"
    assert claims["wids"] == ["58a13ea3-c632-46ae-9ee0-9c0d43cd7f3d"]
    assert claims["idtyp"] == "user"


def test_expired_device_code_is_aadsts70020(idp: IdentityEmulator) -> None:
    """Device code page: ``expired_token`` once the code's ``expires_in`` has passed (AADSTS70020)."""
    app = _public_app(idp)
    credential = ai.DeviceCodeCredential(
        client_id=app.client_id,
        tenant_id=idp.tenant_id,
        prompt_callback=lambda *_: idp.expire_device_codes(),
        **_kw(idp),
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS70020"):
        credential.get_token(f"{GRAPH}/User.Read.All")


def test_a_scope_not_consented_is_aadsts65001(idp: IdentityEmulator) -> None:
    """Error codes page: AADSTS65001, the app has no consent for the scope asked for."""
    app = _public_app(idp)
    idp.auto_approve = "alice@example.com"
    credential = ai.DeviceCodeCredential(
        client_id=app.client_id, tenant_id=idp.tenant_id, prompt_callback=lambda *_: None, **_kw(idp)
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS65001"):
        credential.get_token(f"{GRAPH}/GroupMember.Read.All")


def test_refresh_token_is_used_when_the_access_token_is_near_expiry(
    idp: IdentityEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auth code flow page, "Refresh the access token"; MSAL 1.39 ``application.py`` treats an access token
    expiring within 5 minutes as stale and redeems the refresh token silently (no second prompt)."""
    app = _public_app(idp)
    idp.auto_approve = "alice@example.com"
    idp.token_lifetime = 240
    prompts: list[str] = []
    credential = ai.DeviceCodeCredential(
        client_id=app.client_id,
        tenant_id=idp.tenant_id,
        prompt_callback=lambda _u, c, _e: prompts.append(c),
        **_kw(idp),
    )
    first = credential.get_token(f"{GRAPH}/User.Read.All")
    second = credential.get_token(f"{GRAPH}/User.Read.All")
    assert len(prompts) == 1
    assert first.token != second.token
    assert _grants(idp)[-1] == "refresh_token"
    idp.revoke_refresh_tokens()
    form = dict(parse_qsl(idp.requests_to("token")[-1].body.decode()))
    answer = requests.post(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token", data=form, timeout=10).json()
    assert answer["error"] == "invalid_grant"
    assert answer["error_codes"] == [700082]


def test_browser_sign_in_with_pkce(idp: IdentityEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Auth code flow page: ``authorize`` → ``code`` and ``state`` at the redirect URI (azure-identity 1.27
    ``browser.py`` asks ``response_mode=form_post``), the code redeemed with the PKCE ``code_verifier`` whose
    S256 hash was the ``code_challenge``; the ID token carries MSAL's ``nonce``."""
    app = _public_app(idp)
    monkeypatch.setattr(webbrowser, "open", idp.open_browser(user="alice@example.com"))
    credential = ai.InteractiveBrowserCredential(
        client_id=app.client_id, tenant_id=idp.tenant_id, timeout=30, **_kw(idp)
    )
    claims = claims_of(credential.get_token(f"{GRAPH}/User.Read.All").token)
    assert claims["upn"] == "alice@example.com"
    authorize = dict(parse_qsl(idp.requests_to("authorize")[-1].query))
    assert authorize["code_challenge_method"] == "S256"
    assert authorize["response_mode"] == "form_post"
    redeem = dict(parse_qsl(idp.requests_to("token")[-1].body.decode()))
    assert redeem["grant_type"] == "authorization_code"
    assert redeem["code_verifier"]


def test_a_wrong_code_verifier_is_aadsts501481(idp: IdentityEmulator) -> None:
    """Error codes page: AADSTS501481, the code verifier does not match the code challenge."""
    app = _public_app(idp)
    params = {
        "client_id": app.client_id,
        "response_type": "code",
        "redirect_uri": "http://localhost:1/",
        "scope": f"{GRAPH}/User.Read.All",
        "state": "s",
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
        "login_hint": "alice@example.com",
    }
    redirect = requests.get(
        f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/authorize", params=params, allow_redirects=False, timeout=10
    )
    assert redirect.status_code == 302
    code = dict(parse_qsl(redirect.headers["Location"].split("?", 1)[1]))["code"]
    form = {
        "client_id": app.client_id,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://localhost:1/",
        "code_verifier": "not-the-one",
        "scope": params["scope"],
    }
    body = requests.post(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token", data=form, timeout=10).json()
    assert body["error_codes"] == [501481]
    again = requests.post(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token", data=form, timeout=10).json()
    assert again["error_codes"] == [70000]  # a code is redeemed once


def test_declining_in_the_browser_is_aadsts65004(idp: IdentityEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Error codes page: AADSTS65004, the user declined consent; the redirect carries ``error=access_denied``."""
    app = _public_app(idp)
    monkeypatch.setattr(webbrowser, "open", idp.open_browser(mode="decline"))
    credential = ai.InteractiveBrowserCredential(
        client_id=app.client_id, tenant_id=idp.tenant_id, timeout=30, **_kw(idp)
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS65004"):
        credential.get_token(f"{GRAPH}/User.Read.All")


def test_a_browser_that_never_comes_back_times_out(idp: IdentityEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``ignore`` mode opens and does nothing: azure-identity waits ``timeout`` seconds and gives up."""
    app = _public_app(idp)
    monkeypatch.setattr(webbrowser, "open", idp.open_browser(mode="ignore"))
    credential = ai.InteractiveBrowserCredential(
        client_id=app.client_id, tenant_id=idp.tenant_id, timeout=1, **_kw(idp)
    )
    with pytest.raises(ClientAuthenticationError, match="Timed out"):
        credential.get_token(f"{GRAPH}/User.Read.All")


def test_the_browser_variable_runs_the_scripted_browser(idp: IdentityEmulator) -> None:
    """CPython 3.11 ``webbrowser``: ``BROWSER`` names a command run with the URL as its only argument, and
    ``open`` returns whether it exited 0; the scripted browser posts the form to the redirect URI."""
    app = _public_app(idp)
    received: list[dict[str, str]] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(dict(parse_qsl(self.rfile.read(length).decode())))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.handle_request, daemon=True).start()
    redirect_uri = f"http://localhost:{server.server_address[1]}"
    query = urlencode(
        {
            "client_id": app.client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": f"{GRAPH}/User.Read.All",
            "state": "st4te",
            "response_mode": "form_post",
        }
    )
    url = f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/authorize?{query}"
    code = "import sys, webbrowser; sys.exit(0 if webbrowser.open(sys.argv[1]) else 3)"
    env = {"BROWSER": idp.browser_command(user="alice@example.com"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code, url], env=env, timeout=30, check=False)
    assert proc.returncode == 0
    for _ in range(100):
        if received:
            break
        threading.Event().wait(0.1)
    server.server_close()
    assert received
    assert received[0]["state"] == "st4te"
    assert received[0]["code"]


# -- Graph accepts the tokens ------------------------------------------------------------------------------------


def test_graph_verifies_the_jwt_and_maps_its_claims(idp: IdentityEmulator) -> None:
    """Graph validates signature, audience and lifetime (access tokens page, "Validate tokens"), answers 401
    ``InvalidAuthenticationToken`` otherwise, and 403 ``Authorization_RequestDenied`` for a token without the
    permission (learn.microsoft.com/graph/errors)."""
    reader = idp.add_app(secret="r", roles=["User.Read.All"])
    nobody = idp.add_app(secret="n")
    with GraphEmulator(identity=idp) as graph:
        graph.add_user("bob@example.com")

        def users(token: str) -> requests.Response:
            return requests.get(f"{graph.url}/users", headers={"Authorization": f"Bearer {token}"}, timeout=10)

        good = ai.ClientSecretCredential(idp.tenant_id, reader.client_id, "r", **_kw(idp)).get_token(DEFAULT)
        assert users(good.token).status_code == 200
        weak = ai.ClientSecretCredential(idp.tenant_id, nobody.client_id, "n", **_kw(idp)).get_token(DEFAULT)
        assert users(weak.token).json()["error"]["code"] == "Authorization_RequestDenied"
        claims = {**claims_of(good.token), "aud": "https://management.azure.com"}
        assert "Invalid audience" in users(idp.signer.sign(claims)).json()["error"]["message"]
        claims = {**claims_of(good.token), "exp": claims["iat"] - 3600}
        assert users(idp.signer.sign(claims)).status_code == 401
        with IdentityEmulator(idp.tenant_id) as stranger:
            forged = stranger.signer.sign(claims_of(good.token))
        assert "Invalid signature" in users(forged).json()["error"]["message"]
        assert graph.admin_token
        assert users(graph.admin_token).status_code == 200


def test_delegated_writes_need_the_attribute_assignment_role(idp: IdentityEmulator) -> None:
    """``PATCH /users/{id}`` with custom security attributes, delegated: ``CustomSecAttributeAssignment.ReadWrite.All``
    *and* the Attribute Assignment Administrator role (user-update page; role ids from the built-in roles page)."""
    app = idp.add_app("cli", delegated=["User.Read.All", "CustomSecAttributeAssignment.ReadWrite.All"])
    with GraphEmulator(identity=idp) as graph:
        graph.define_attribute_set()
        uid = graph.add_user("carol@example.com")
        body = {
            "customSecurityAttributes": {
                "Defguard": {
                    "@odata.type": "#Microsoft.DirectoryServices.CustomSecurityAttributeValue",
                    "EnrollmentUrl": "https://e",
                }
            }
        }
        for upn, roles, status in (
            ("plain@example.com", [], 403),
            ("admin@example.com", ["Attribute Assignment Administrator"], 204),
        ):
            user = idp.add_user(upn, directory_roles=roles)
            claims = idp._user_claims(app, user, GRAPH)
            answer = requests.patch(
                f"{graph.url}/users/{uid}",
                json=body,
                timeout=10,
                headers={"Authorization": f"Bearer {idp.signer.sign(claims)}"},
            )
            assert answer.status_code == status, answer.text


def test_strict_batch_refuses_absolute_urls_and_ignores_depends_on(idp: IdentityEmulator) -> None:
    """JSON batching page (learn.microsoft.com/graph/json-batching): ``url`` is the item's *relative* URL and the
    dependency property is ``dependsOn``. Not verified: the exact error text for an absolute URL."""
    with GraphEmulator(strict=True) as graph:
        headers = {"Authorization": f"Bearer {graph.admin_token}"}
        absolute = {"requests": [{"id": "1", "method": "GET", "url": f"{GRAPH}/v1.0/users"}]}
        assert requests.post(f"{graph.url}/$batch", json=absolute, headers=headers, timeout=10).status_code == 400
        loose = {
            "requests": [
                {"id": "1", "method": "GET", "url": "/users"},
                {"id": "2", "method": "GET", "url": "/users", "depends_on": ["9"]},
            ]
        }
        answer = requests.post(f"{graph.url}/$batch", json=loose, headers=headers, timeout=10)
        assert answer.status_code == 200
        assert {r["status"] for r in answer.json()["responses"]} == {200}
