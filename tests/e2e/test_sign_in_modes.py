"""The CLI in a subprocess, signing in for real: azure-identity and MSAL against the identity emulator (HTTPS,
``AZURE_AUTHORITY_HOST`` + ``REQUESTS_CA_BUNDLE``), Graph's answers judged from the JWT's claims, for every
app-only mode: ``--auth environment`` with a secret, a PEM or PFX certificate or a federated token file, and
``--auth managed-identity`` (App Service's ``IDENTITY_ENDPOINT``)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from defguard_entra.testing import (
    DefguardEmulator,
    GraphEmulator,
    IdentityEmulator,
    Scenario,
    make_certificate,
    seed_sample_organisation,
)

ROLES = ("User.Read.All", "CustomSecAttributeAssignment.ReadWrite.All", "CustomSecAttributeDefinition.Read.All")
SUBJECT = "system:serviceaccount:vpn:provisioner"


@dataclass
class Setup:
    idp: IdentityEmulator
    graph: GraphEmulator
    defguard: DefguardEmulator
    scenario: Scenario
    base: dict[str, str]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with (
        IdentityEmulator() as idp,
        GraphEmulator(identity=idp, strict=True) as graph,
        DefguardEmulator("2.0", enrollment_url="https://enroll.example.com") as defguard,
    ):
        scenario = seed_sample_organisation(defguard, graph)
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "DEFGUARD_ENTRA_STATE_DIR": str(tmp_path / "state"),
            "DEFGUARD_URL": defguard.url,
            "DEFGUARD_API_TOKEN": defguard.admin_token,
            "AZURE_AUTHORITY_HOST": idp.authority,
            "REQUESTS_CA_BUNDLE": idp.ca_file,
        }
        yield Setup(idp, graph, defguard, scenario, base)


def _cli(setup: Setup, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "defguard_entra", *argv, "--graph-url", setup.graph.url, "--no-progress"],
        env={**setup.base, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _environment(setup: Setup, mode: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    idp = setup.idp
    if mode == "managed-identity":
        idp.add_managed_identity(roles=ROLES)
        return ["--auth", "managed-identity"], idp.managed_identity_environment()
    cert = make_certificate()
    app = idp.add_app(secret="app-s3cret", certificate=cert, roles=ROLES)
    env = {"AZURE_TENANT_ID": idp.tenant_id, "AZURE_CLIENT_ID": app.client_id}
    if mode == "secret":
        env["AZURE_CLIENT_SECRET"] = "app-s3cret"
    elif mode == "pem":
        env["AZURE_CLIENT_CERTIFICATE_PATH"] = str(cert.write_pem(tmp_path / "app.pem"))
    elif mode == "pfx":
        env["AZURE_CLIENT_CERTIFICATE_PATH"] = str(cert.write_pfx(tmp_path / "app.pfx", "pfx-pass"))
        env["AZURE_CLIENT_CERTIFICATE_PASSWORD"] = "pfx-pass"
    else:
        idp.add_federated_credential(app.client_id, "https://oidc.emulator.invalid/cluster", SUBJECT)
        (tmp_path / "token").write_text(idp.federated_token(SUBJECT))
        env["AZURE_FEDERATED_TOKEN_FILE"] = str(tmp_path / "token")
    return ["--auth", "environment"], env


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


@pytest.mark.parametrize("mode", ["secret", "pem", "pfx", "federated", "managed-identity"])
def test_check_and_provision_sign_in_for_real(setup: Setup, mode: str, tmp_path: Path) -> None:
    """``check`` is ready and ``provision`` stores every token, signed in through the real credentials; the bearer
    goes to Graph only, and Graph sees only bearers the identity emulator issued."""
    auth, env = _environment(setup, mode, tmp_path)
    check = _cli(setup, env, "check", "--group-name", setup.scenario.group, *auth)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "permission to write the attributes" in check.stdout
    provision = _cli(setup, env, "provision", "--group-name", setup.scenario.group, *auth)
    assert provision.returncode == 1, provision.stdout + provision.stderr  # the sample has members needing attention
    assert setup.scenario.differences(setup.defguard, setup.graph) == []

    issued = {c["uti"] for c in setup.idp.issued}
    bearers = {
        r.headers["authorization"].partition(" ")[2] for r in setup.graph.requests if "authorization" in r.headers
    }
    assert bearers
    assert {_claims(b)["uti"] for b in bearers} <= issued
    for request in setup.defguard.requests:
        seen = " ".join(request.headers.values()) + request.body.decode("utf-8", "replace")
        assert not any(b in seen for b in bearers), "a Graph token reached Defguard"
    for request in setup.idp.requests:
        seen = " ".join(request.headers.values()) + request.body.decode("utf-8", "replace") + request.query
        assert not any(b in seen for b in bearers), "a Graph token went back to the sign-in service"
    assert "instance-discovery" not in setup.idp.request_counts
    for secret in ("app-s3cret", "pfx-pass", setup.defguard.admin_token, *bearers):
        assert secret not in check.stdout + check.stderr + provision.stdout + provision.stderr


def test_check_judges_the_real_claims_of_an_app_without_the_write_role(setup: Setup) -> None:
    """An app granted only the read permissions: ``check`` reads its token's ``roles`` and fails the write."""
    app = setup.idp.add_app(secret="s", roles=("User.Read.All", "CustomSecAttributeDefinition.Read.All"))
    env = {"AZURE_TENANT_ID": setup.idp.tenant_id, "AZURE_CLIENT_ID": app.client_id, "AZURE_CLIENT_SECRET": "s"}
    result = _cli(setup, env, "check", "--group-name", setup.scenario.group, "--auth", "environment")
    assert result.returncode == 3, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x[8:].startswith("permission to write the attributes"))
    assert line.startswith("  FAIL")
    assert "no CustomSecAttributeAssignment.ReadWrite.All permission" in line


def test_a_wrong_secret_is_one_line_naming_the_aadsts_code(setup: Setup) -> None:
    """Entra's AADSTS7000215 reaches the user as the sign-in failure, without the secret."""
    app = setup.idp.add_app(secret="right", roles=ROLES)
    env = {"AZURE_TENANT_ID": setup.idp.tenant_id, "AZURE_CLIENT_ID": app.client_id, "AZURE_CLIENT_SECRET": "wrong1"}
    result = _cli(setup, env, "check", "--group-name", setup.scenario.group, "--auth", "environment")
    assert result.returncode == 3
    assert "AADSTS7000215" in result.stdout + result.stderr
    assert "wrong1" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
