"""Sign-in as a new user meets it, with the real azure-identity and MSAL code and no network but loopback: every
failure one line with its cause (exit 3), no prompt without a terminal, Ctrl-C at once, the platform's managed
identity picked by ``auto``.

Microsoft's token endpoints are not reachable here, so the failures tried are those azure-identity meets locally
(construction, certificate files, the managed-identity endpoint on 127.0.0.1); Entra's own refusals go through the
real ``ChainedTokenCredential`` with credentials that raise what azure-identity raises for them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ChainedTokenCredential, CredentialUnavailableError

from defguard_entra._credentials import CachingCredential, build_credential
from defguard_entra.config import AuthMode, GraphSettings
from defguard_entra.exceptions import EntraAuthError
from defguard_entra.testing import make_certificate

SECRET = "s3cr3t-Value-8f7e6d5c4b3a2910"
PFX_PASSWORD = "right-password-1234"


# -- helpers ---------------------------------------------------------------------------------------------------


def _pfx(path: Path, password: str) -> Path:
    """A self-signed certificate and its key as PKCS#12, as a service principal's certificate file is."""
    return make_certificate().write_pfx(path, password)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_endpoint() -> Iterator[socket.socket]:
    """A managed-identity endpoint that accepts connections and never answers (a sign-in that waits)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(20)
        yield sock


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment for the CLI: no AZURE_* of the machine, a home of its own (azure-identity's caches)."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DEFGUARD_URL": f"http://127.0.0.1:{_closed_port()}",  # never contacted: sign-in comes first
        "DEFGUARD_API_TOKEN": "dg-" + "a1B2" * 8,
        "DEFGUARD_ENTRA_STATE_DIR": str(tmp_path / "state"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def _cli(argv: list[str], env: Mapping[str, str], **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "defguard_entra", *argv],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
        **options,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], *secrets: str) -> str:
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for secret in secrets:
        assert secret not in result.stderr + result.stdout
    return lines[0]


def _sign_in(settings: GraphSettings) -> EntraAuthError:
    with pytest.raises(EntraAuthError) as caught:
        build_credential(settings).get_token("https://graph.microsoft.com/.default")
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


def _service_principal(**environment: str) -> GraphSettings:
    return GraphSettings(auth=AuthMode.ENVIRONMENT, tenant_id="t", client_id="c", environment=environment)


# -- every failure: one line, its cause and the fix (in-process, the real credentials) ----------------------------


def test_a_tenant_id_with_invalid_characters_is_one_line_naming_the_fix() -> None:
    """azure-identity 1.27.0 (_internal/__init__.py, validate_tenant_id) raises ValueError when it builds the
    credential."""
    settings = GraphSettings(
        auth=AuthMode.ENVIRONMENT, tenant_id="contoso tenant!", client_id="c", client_secret=SECRET
    )
    error = _sign_in(settings)
    assert "tenant id is not valid" in str(error)
    assert "--tenant-id" in str(error)
    assert SECRET not in str(error)


def test_a_missing_certificate_file_is_one_line(tmp_path: Path) -> None:
    error = _sign_in(_service_principal(AZURE_CLIENT_CERTIFICATE_PATH=str(tmp_path / "missing.pem")))
    assert "cannot read the certificate file" in str(error)
    assert "No such file or directory" in str(error)


def test_a_certificate_that_is_not_one_is_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "cert.pem"
    garbage.write_text("not a certificate")
    error = _sign_in(_service_principal(AZURE_CLIENT_CERTIFICATE_PATH=str(garbage)))
    assert "cannot load the certificate" in str(error)


def test_a_wrong_pfx_password_is_one_line_without_the_password(tmp_path: Path) -> None:
    pfx = _pfx(tmp_path / "cert.pfx", PFX_PASSWORD)
    error = _sign_in(
        _service_principal(AZURE_CLIENT_CERTIFICATE_PATH=str(pfx), AZURE_CLIENT_CERTIFICATE_PASSWORD="wrong-one-5678")
    )
    assert "cannot load the certificate" in str(error)
    assert "AZURE_CLIENT_CERTIFICATE_PASSWORD" in str(error)
    assert "wrong-one-5678" not in str(error)


def test_the_right_pfx_password_builds_the_credential(tmp_path: Path) -> None:
    """The same file with its password loads (the test above fails for the password, not the file)."""
    pfx = _pfx(tmp_path / "cert.pfx", PFX_PASSWORD)
    settings = _service_principal(
        AZURE_CLIENT_CERTIFICATE_PATH=str(pfx), AZURE_CLIENT_CERTIFICATE_PASSWORD=PFX_PASSWORD
    )
    build_credential(settings).close()


def test_a_managed_identity_endpoint_that_is_down_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-identity 1.27.0 reads IDENTITY_ENDPOINT/IDENTITY_HEADER from os.environ only
    (_credentials/app_service.py), so the test sets them there; the settings carry them for ``auto``."""
    endpoint = f"http://127.0.0.1:{_closed_port()}/msi/token"
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", "header-value")
    settings = GraphSettings(environment={"IDENTITY_ENDPOINT": endpoint, "IDENTITY_HEADER": "header-value"})
    assert settings.resolved_auth() is AuthMode.MANAGED_IDENTITY
    error = _sign_in(settings)
    assert f"cannot reach the managed-identity endpoint {endpoint}" in str(error)
    assert "Connection refused" in str(error)
    assert error.cause == "unreachable"


class _Refusing:
    """Raises what azure-identity's MSAL credentials raise for Entra's answer (interactive.py: the
    ``ClientAuthenticationError`` carrying MSAL's ``error_description``, trace ids on the following lines)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise self.error


def test_the_chain_summary_gives_the_inner_cause_with_its_aadsts_meaning() -> None:
    """ChainedTokenCredential (azure-identity 1.27.0, _credentials/chained.py) puts "failed to retrieve a token"
    first and each credential's failure on a ``\\t<Name>: <message>`` line: the cause is the last one tried."""
    consent = ClientAuthenticationError(
        message=(
            "Authentication failed: AADSTS65001: The user or administrator has not consented to use the application "
            "with ID '14d82eec-204b-4c2f-b7e8-296a70dab67e'. Send an interactive authorization request for this user "
            "and resource.\r\nTrace ID: 0f5b\r\nCorrelation ID: 8c1a\r\nTimestamp: 2025-01-01 00:00:00Z"
        )
    )
    chain = ChainedTokenCredential(
        _Refusing(CredentialUnavailableError("Failed to open a browser")), _Refusing(consent)
    )
    with pytest.raises(EntraAuthError) as caught:
        CachingCredential(chain).get_token("scope")
    message = str(caught.value)
    assert "ChainedTokenCredential" not in message
    assert "AADSTS65001 (consent is missing)" in message
    assert "has not consented" in message
    assert "fix: an administrator grants consent" in message
    assert "Trace ID" not in message
    assert caught.value.cause == "consent"


def test_an_unexpected_sdk_error_is_one_line_too() -> None:
    with pytest.raises(EntraAuthError, match=r"RuntimeError: broken pipe state"):
        CachingCredential(_Refusing(RuntimeError("broken pipe state\nmore"))).get_token("scope")


def test_auto_picks_the_platforms_managed_identity() -> None:
    """App Service, Functions, Container Apps and Arc set IDENTITY_ENDPOINT; Cloud Shell and older App Service
    MSI_ENDPOINT (Microsoft Learn, "How to use managed identities for App Service and Azure Functions";
    azure-identity 1.27.0 _credentials/managed_identity.py picks its source from the same variables)."""
    assert GraphSettings(environment={"IDENTITY_ENDPOINT": "http://x"}).resolved_auth() is AuthMode.MANAGED_IDENTITY
    assert GraphSettings(environment={"MSI_ENDPOINT": "http://x"}).resolved_auth() is AuthMode.MANAGED_IDENTITY
    assert GraphSettings().resolved_auth() is AuthMode.INTERACTIVE  # a VM: no variable, no probe
    workload = {"AZURE_FEDERATED_TOKEN_FILE": "/var/run/token", "IDENTITY_ENDPOINT": "http://x"}
    assert (
        GraphSettings(tenant_id="t", client_id="c", environment=workload).resolved_auth() is AuthMode.ENVIRONMENT
    )  # workload identity stays the service principal it is


# -- through the CLI: exit 3, one line, no traceback, no secret ---------------------------------------------------


def test_cli_invalid_tenant_is_exit_3_in_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, AZURE_TENANT_ID="bad tenant!", AZURE_CLIENT_ID="c", AZURE_CLIENT_SECRET=SECRET)
    line = _one_line_error(_cli(["status", "--group-name", "VPN"], env), SECRET)
    assert "tenant id is not valid" in line


def test_cli_wrong_pfx_password_is_exit_3_in_one_line(tmp_path: Path) -> None:
    pfx = _pfx(tmp_path / "cert.pfx", PFX_PASSWORD)
    env = _env(
        tmp_path,
        AZURE_TENANT_ID="contoso.onmicrosoft.com",
        AZURE_CLIENT_ID="c",
        AZURE_CLIENT_CERTIFICATE_PATH=str(pfx),
        AZURE_CLIENT_CERTIFICATE_PASSWORD="wrong-one-5678",
    )
    line = _one_line_error(_cli(["provision", "--group-name", "VPN"], env), "wrong-one-5678")
    assert "cannot load the certificate" in line


def test_cli_missing_certificate_is_exit_3_in_one_line(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        AZURE_TENANT_ID="contoso.onmicrosoft.com",
        AZURE_CLIENT_ID="c",
        AZURE_CLIENT_CERTIFICATE_PATH=str(tmp_path / "nope.pem"),
    )
    assert "cannot read the certificate file" in _one_line_error(_cli(["check", "--group-name", "VPN"], env))


def test_cli_auto_with_a_managed_identity_endpoint_down_is_exit_3_in_one_line(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}/msi/token"
    env = _env(tmp_path, IDENTITY_ENDPOINT=endpoint, IDENTITY_HEADER="header-8f7e6d5c4b3a")
    line = _one_line_error(_cli(["status", "--group-name", "VPN"], env), "header-8f7e6d5c4b3a")
    assert f"cannot reach the managed-identity endpoint {endpoint}" in line


@pytest.mark.parametrize("auth", [[], ["--auth", "interactive"], ["--auth", "device-code"]], ids=str)
@pytest.mark.parametrize("command", ["provision", "status", "check"])
def test_no_prompt_without_a_terminal(tmp_path: Path, auth: list[str], command: str) -> None:
    """Unattended (stdin and stderr are no terminal): fail at once, before any request, naming the modes that
    need nobody."""
    started = time.monotonic()
    line = _one_line_error(_cli([command, "--group-name", "VPN", "-q", *auth], _env(tmp_path)))
    assert time.monotonic() - started < 20
    assert "is not a terminal" in line
    for mode in ("--auth environment", "--auth managed-identity", "--auth token"):
        assert mode in line


def test_fetch_config_without_a_terminal_fails_at_once(tmp_path: Path) -> None:
    line = _one_line_error(_cli(["fetch-config", "--output", str(tmp_path / "p.json")], _env(tmp_path)))
    assert "would prompt for a Microsoft sign-in" in line
    assert not (tmp_path / "p.json").exists()


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_during_sign_in_exits_130_at_once(
    tmp_path: Path, silent_endpoint: socket.socket, sig: signal.Signals
) -> None:
    """``provision`` stops gracefully once members are in flight, but a sign-in has nothing to finish: the first
    signal ends it (exit 130, no traceback), though the sign-in request is still waiting for its answer."""
    endpoint = f"http://127.0.0.1:{silent_endpoint.getsockname()[1]}/msi/token"
    env = _env(tmp_path, IDENTITY_ENDPOINT=endpoint, IDENTITY_HEADER="h")
    process = subprocess.Popen(
        [sys.executable, "-m", "defguard_entra", "provision", "--group-name", "VPN"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        connection, _ = silent_endpoint.accept()  # the sign-in has asked the endpoint, and waits
        with connection:
            time.sleep(0.3)
            sent = time.monotonic()
            process.send_signal(sig)
            _, stderr = process.communicate(timeout=15)
            took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert took < 5, took
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted"


# -- the optional definitions scope ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "provision", "check"])
def test_without_the_definitions_permission_the_run_goes_on_with_a_note(org: Any, command: str) -> None:
    """CustomSecAttributeDefinition.Read.All is optional (never asked for): Graph answers 403 on the definitions,
    and the command goes on saying what it could not check and what would allow it."""
    from helpers import run_cli

    token = org.graph.add_principal("no-definitions", read_definitions=False)
    env = org.env | {"DEFGUARD_ENTRA_GRAPH_TOKEN": token}
    result = run_cli([command, "--group-name", org.scenario.group], env)
    output = result.stdout + result.stderr
    # not fatal (3): check finds the sample organisation ready; status and provision report its odd members (1)
    assert result.code == (0 if command == "check" else 1), output
    assert "CustomSecAttributeDefinition.Read.All" in output
    assert "Attribute Definition Reader" in output
