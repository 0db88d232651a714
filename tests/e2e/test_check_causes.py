"""``check`` names the cause of a failed connection or sign-in, each with its own fix: an unreachable host, a TLS
failure, a proxy's refusal, a missing ``az``, an expired or revoked token, missing consent, a missing Entra role.

Driven for real where this machine can (a closed port, a TLS server with an untrusted certificate, a proxy that
answers 407, ``PATH`` without ``az``, the Graph emulator's 401 and 403); the rest through the classifier with the
exceptions azure-identity really raises.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity import AzureCliCredential, CredentialUnavailableError

from defguard_entra._credentials import CachingCredential, sign_in_cause
from defguard_entra.exceptions import EntraAuthError
from defguard_entra.provisioning.fixes import DEFGUARD_FIXES, GRAPH_FIXES, graph_failure_hint
from defguard_entra.testing import GraphEmulator
from helpers import Org, run_cli

# Words that belong to one cause's fix only: a line must show its own and none of the others'.
GRAPH_MARKS = {
    "unreachable": "DNS, firewall",
    "tls": "TLS inspection",
    "proxy": "407 or no tunnel",
    "tool": "a program that is not installed",
    "token": "sign in again or get a fresh token",
    "consent": "Grant admin consent",
}
DEFGUARD_MARKS = {"unreachable": "check --url", "tls": "--ca-bundle PATH", "proxy": "407 or no tunnel"}


def _check(org: Org, env: dict[str, str], *extra: str) -> Any:
    result = run_cli(["check", "--group-name", org.scenario.group, "--retries", "0", *extra], env)
    assert result.code == 3, result.stdout + result.stderr
    assert org.defguard.admin_token not in result.stdout + result.stderr
    assert org.graph.admin_token not in result.stdout + result.stderr
    return result


def _line(output: str, title: str) -> tuple[str, str]:
    """The checklist line that starts with ``title`` (after the mark) and its hint (the indented lines below)."""
    lines = output.splitlines()
    for n, line in enumerate(lines):
        if line[8:].startswith(title):
            hint = []
            for below in lines[n + 1 :]:
                if not below.startswith("        "):
                    break
                hint.append(below.strip())
            return line, " ".join(hint)
    raise AssertionError(f"no line {title!r} in:\n{output}")


def _assert_cause(hint: str, marks: dict[str, str], cause: str) -> None:
    assert hint.startswith("fix:"), hint
    assert marks[cause] in hint, hint
    for other, mark in marks.items():
        if other != cause:
            assert mark not in hint, f"{other}'s fix in the {cause} hint: {hint}"


def _graph_sign_in(result: Any, cause: str) -> str:
    line, hint = _line(result.stdout, "Microsoft Graph sign-in")
    assert line.startswith("  FAIL"), line
    _assert_cause(hint, GRAPH_MARKS, cause)
    return line


def _defguard_reachable(result: Any, cause: str) -> str:
    line, hint = _line(result.stdout, "Defguard reachable")
    assert line.startswith("  FAIL"), line
    _assert_cause(hint, DEFGUARD_MARKS, cause)
    return line


# -- servers that fail in one way each (loopback only) ---------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def untrusted_tls(tmp_path: Path) -> Iterator[int]:
    """An HTTPS server on loopback whose self-signed certificate nobody trusts."""
    from cryptography import x509  # installed with azure-identity (msal)
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "untrusted test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "server.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server = _Server(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


class _ProxyRefuses(http.server.BaseHTTPRequestHandler):
    """A proxy that wants credentials: 407 to every CONNECT and every forwarded request."""

    seen: list[str] = []  # noqa: RUF012 - per-class record of what was asked

    def _refuse(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(407, "Proxy Authentication Required")
        self.send_header("Proxy-Authenticate", 'Basic realm="corp"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_CONNECT = do_GET = do_POST = _refuse  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_proxy() -> Iterator[tuple[str, list[str]]]:
    _ProxyRefuses.seen = []
    server = _Server(("127.0.0.1", 0), _ProxyRefuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _ProxyRefuses.seen
    finally:
        server.shutdown()
        server.server_close()


# -- unreachable host ------------------------------------------------------------------------------------------


def test_an_unreachable_graph_is_not_told_to_sign_in_again(org: Org) -> None:
    env = org.env | {"DEFGUARD_ENTRA_GRAPH_URL": f"http://127.0.0.1:{_closed_port()}/v1.0"}
    line = _graph_sign_in(_check(org, env), "unreachable")
    assert "cannot reach Microsoft Graph" in line
    assert _line(_check(org, env).stdout, "Defguard reachable")[0].startswith("  ok")


def test_an_unreachable_defguard_is_told_to_check_the_url(org: Org) -> None:
    env = org.env | {"DEFGUARD_URL": f"http://127.0.0.1:{_closed_port()}"}
    line = _defguard_reachable(_check(org, env), "unreachable")
    assert "connection refused" in line


# -- TLS -------------------------------------------------------------------------------------------------------


def test_an_untrusted_defguard_certificate_is_told_to_pass_the_ca_bundle(org: Org, untrusted_tls: int) -> None:
    env = org.env | {"DEFGUARD_URL": f"https://127.0.0.1:{untrusted_tls}"}
    line = _defguard_reachable(_check(org, env), "tls")
    assert "TLS verification" in line


def test_an_untrusted_graph_certificate_is_told_about_tls_inspection(org: Org, untrusted_tls: int) -> None:
    env = org.env | {"DEFGUARD_ENTRA_GRAPH_URL": f"https://127.0.0.1:{untrusted_tls}/v1.0"}
    line = _graph_sign_in(_check(org, env), "tls")
    assert "TLS verification of Microsoft Graph" in line
    assert "CERTIFICATE_VERIFY_FAILED" in line


# -- proxy -----------------------------------------------------------------------------------------------------


def test_a_proxy_refusing_defguard_is_told_about_https_proxy(org: Org, refusing_proxy: tuple[str, list[str]]) -> None:
    proxy, seen = refusing_proxy
    env = org.env | {"DEFGUARD_URL": "https://defguard.example.invalid", "HTTPS_PROXY": proxy}
    line = _defguard_reachable(_check(org, env), "proxy")
    assert "proxy refused" in line
    assert "CONNECT defguard.example.invalid:443" in seen


def test_a_forward_proxy_answering_407_for_defguard_is_a_proxy_refusal(
    org: Org, refusing_proxy: tuple[str, list[str]]
) -> None:
    proxy, seen = refusing_proxy
    env = org.env | {"DEFGUARD_URL": "http://defguard.example.invalid", "HTTP_PROXY": proxy}
    line = _defguard_reachable(_check(org, env, "--allow-insecure-http"), "proxy")
    assert "407" in line
    assert any(request.startswith("GET http://defguard.example.invalid/") for request in seen), seen


def test_a_proxy_refusing_graph_is_told_about_https_proxy(org: Org, refusing_proxy: tuple[str, list[str]]) -> None:
    proxy, seen = refusing_proxy
    env = org.env | {"DEFGUARD_ENTRA_GRAPH_URL": "https://graph.example.invalid/v1.0", "HTTPS_PROXY": proxy}
    line = _graph_sign_in(_check(org, env), "proxy")
    assert "proxy refused" in line
    assert "CONNECT graph.example.invalid:443" in seen
    assert _line(_check(org, env).stdout, "Defguard reachable")[0].startswith("  ok")  # loopback: no proxy


# -- missing tool ----------------------------------------------------------------------------------------------


def test_auth_azure_cli_is_refused_before_any_request(org: Org) -> None:
    """The Azure CLI's first-party app cannot be granted CustomSecAttributeAssignment.* (its Graph permissions are
    Microsoft's: github.com/Azure/azure-cli/issues/22775, /28628), and every command reads or writes them: a usage
    error naming what to use instead, before Graph or Defguard is asked anything."""
    env = org.env
    del env["DEFGUARD_ENTRA_GRAPH_TOKEN"]
    org.graph.reset_log()
    org.defguard.reset_log()
    result = run_cli(["check", "--group-name", org.scenario.group, "--auth", "azure-cli"], env)
    assert result.code == 2
    assert result.stderr.count("\n") == 1
    assert "Azure CLI's own app cannot be granted" in result.stderr
    assert "--auth interactive or device-code" in result.stderr
    assert org.graph.requests == []
    assert org.defguard.requests == []


# -- expired or revoked token ----------------------------------------------------------------------------------


@pytest.mark.parametrize("revoked", [False, True], ids=["expired", "revoked"])
def test_an_expired_or_revoked_graph_token_is_told_to_sign_in_again(org: Org, revoked: bool) -> None:
    org.graph.invalidate_token(org.graph.admin_token, revoked=revoked)
    line = _graph_sign_in(_check(org, org.env), "token")
    assert "401 InvalidAuthenticationToken" in line
    assert ("TokenIssuedBeforeRevocationTimestamp" if revoked else "the token is expired") in line


def test_a_revoked_defguard_token_keeps_its_own_hint(org: Org) -> None:
    env = org.env | {"DEFGUARD_API_TOKEN": "dg-" + "x" * 32}
    result = _check(org, env)
    assert _line(result.stdout, "Defguard reachable")[0].startswith("  ok")
    line, hint = _line(result.stdout, "API token valid")
    assert line.startswith("  FAIL")
    assert "create a new API token" in hint
    assert not any(mark in hint for mark in DEFGUARD_MARKS.values())


# -- missing role ----------------------------------------------------------------------------------------------


def _jwt(graph: GraphEmulator, claims: dict[str, Any], **permissions: Any) -> str:
    """A JWT the emulator maps to a principal with ``permissions`` (Entra's tokens are JWTs, the emulator's not)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    opaque = graph.add_principal("jwt", **permissions)
    token = f"{part({'typ': 'JWT', 'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"
    with graph.lock:
        graph._tokens[token] = graph._tokens[opaque]
    return token


def test_a_refused_definition_read_with_the_scope_names_the_missing_role(org: Org) -> None:
    alice = org.scenario.entra_ids["alice"]
    claims = {"scp": "User.Read.All CustomSecAttributeDefinition.Read.All", "upn": "alice@example.com"}
    env = org.env | {"DEFGUARD_ENTRA_GRAPH_TOKEN": _jwt(org.graph, claims, user=alice, read_definitions=False)}
    result = _check(org, env)
    line, hint = _line(result.stdout, "permission to read attribute definitions")
    assert line.startswith("  warn")  # optional: check goes on
    assert "403" in line
    assert "what is missing is the Entra role Attribute Definition Reader" in hint
    assert "delegated scope CustomSecAttributeDefinition.Read.All" in hint


def test_a_refused_definition_read_without_the_scope_names_the_permission(org: Org) -> None:
    env = org.env | {"DEFGUARD_ENTRA_GRAPH_TOKEN": org.graph.add_principal("limited", read_definitions=False)}
    result = run_cli(["check", "--group-name", org.scenario.group, "--retries", "0"], env)
    assert result.code == 0, result.stdout  # the permission is optional: ready, with the warning
    _, hint = _line(result.stdout, "permission to read attribute definitions")
    assert "grant CustomSecAttributeDefinition.Read.All" in hint
    assert "what is missing" not in hint


def test_a_refused_probe_write_with_the_scope_names_the_missing_role(org: Org) -> None:
    alice = org.scenario.entra_ids["alice"]
    claims = {
        "scp": "User.Read.All CustomSecAttributeDefinition.Read.All CustomSecAttributeAssignment.ReadWrite.All",
        "upn": "alice@example.com",
    }
    env = org.env | {"DEFGUARD_ENTRA_GRAPH_TOKEN": _jwt(org.graph, claims, user=alice, write_attributes=False)}
    result = _check(org, env, "--probe-write")
    line, hint = _line(result.stdout, "permission to write attribute set")
    assert line.startswith("  FAIL"), result.stdout
    assert "what is missing is the Entra role Attribute Assignment Administrator" in hint
    assert [r for r in org.graph.requests if r.method == "PATCH" and r.status == 200] == []


# -- the classifier, with the exceptions azure-identity raises -------------------------------------------------


class _Raises:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise self.exc


def _cause_of(exc: Exception) -> str | None:
    with pytest.raises(EntraAuthError) as caught:
        CachingCredential(_Raises(exc)).get_token("https://graph.microsoft.com/.default")
    return caught.value.cause


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (
            ClientAuthenticationError(
                message="AADSTS65001: The user or administrator has not consented to use the application with ID "
                "'14d82eec-204b-4c2f-b7e8-296a70dab67e' named 'Microsoft Graph Command Line Tools'. Send an "
                "interactive authorization request for this user and resource."
            ),
            "consent",
        ),
        (ClientAuthenticationError(message="AADSTS90094: The grant requires admin permission."), "consent"),
        (
            ClientAuthenticationError(
                message="AADSTS700082: The refresh token has expired due to inactivity. The token was issued on "
                "2026-01-01T00:00:00Z and was inactive for 90.00:00:00."
            ),
            "token",
        ),
        (
            ClientAuthenticationError(
                message="AADSTS7000222: The provided client secret keys for app '…' are expired."
            ),
            "token",
        ),
        (CredentialUnavailableError(message="Azure CLI not found on path"), "tool"),
        (CredentialUnavailableError(message="Please run 'az login' to set up an account"), "token"),
        (
            ServiceRequestError(
                "HTTPSConnectionPool(host='login.microsoftonline.com', port=443): Max retries exceeded with url: "
                "/organizations/v2.0/.well-known/openid-configuration (Caused by NewConnectionError('Failed to "
                "establish a new connection: [Errno -2] Name or service not known'))"
            ),
            "unreachable",
        ),
        (
            ServiceRequestError(
                "HTTPSConnectionPool(host='login.microsoftonline.com', port=443): Max retries exceeded (Caused by "
                "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                "self-signed certificate in certificate chain')))"
            ),
            "tls",
        ),
        (
            ServiceRequestError(
                "HTTPSConnectionPool(host='login.microsoftonline.com', port=443): Max retries exceeded (Caused by "
                "ProxyError('Unable to connect to proxy', OSError('Tunnel connection failed: 407 Proxy "
                "Authentication Required')))"
            ),
            "proxy",
        ),
        (ClientAuthenticationError(message="AADSTS50076: you must use multi-factor authentication"), None),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_sign_in_errors_get_their_cause(exc: Exception, cause: str | None) -> None:
    assert _cause_of(exc) == cause


def test_the_azure_cli_credential_really_says_az_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _cause_of_real(AzureCliCredential()) == "tool"


def _cause_of_real(credential: Any) -> str | None:
    with pytest.raises(EntraAuthError) as caught:
        CachingCredential(credential).get_token("https://graph.microsoft.com/.default")
    assert "Azure CLI not found on path" in str(caught.value)
    return caught.value.cause


def test_every_cause_has_its_own_fix() -> None:
    assert set(GRAPH_FIXES) == set(GRAPH_MARKS)
    assert len(set(GRAPH_FIXES.values())) == len(GRAPH_FIXES)
    assert len(set(DEFGUARD_FIXES.values())) == len(DEFGUARD_FIXES)
    for cause, mark in GRAPH_MARKS.items():
        assert mark in graph_failure_hint(cause)
    assert graph_failure_hint(None) == GRAPH_FIXES["token"]
    assert sign_in_cause("AADSTS65004: User declined to consent to access the app.") == "consent"
