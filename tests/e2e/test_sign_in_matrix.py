"""The sign-in matrix of issue 13: the CLI in a subprocess, signing in with the real azure-identity and MSAL code
against the identity emulator (HTTPS on loopback, ``AZURE_AUTHORITY_HOST`` + ``REQUESTS_CA_BUNDLE``), the Graph
emulator (strict, judging the JWTs' claims) and the Defguard emulator.

Every ``--auth`` mode runs every command; then what a person meets: a browser sign-in that completes, ``-q`` with a
device code, Ctrl-C (and SIGTERM) while a sign-in waits, each of Entra's refusals as one line (and no secret in
MSAL's ``-vv`` output), ``check``'s judgement of real claims, no prompt without a terminal, and a silent second
``fetch-config``. The app-only modes' certificate and federated variants of ``check`` and ``provision`` are in
``test_sign_in_modes.py``; remembered sign-in, ``sign-out`` and the browser fallback in
``test_remembered_sign_in.py``.

The delegated user is alice of the sample organisation (the identity emulator's ``oid`` is her Graph id), with the
Entra roles Attribute Assignment Administrator and Attribute Definition Reader, so that she may run the admin
commands and ``fetch-config`` reads her own attributes once ``provision`` has written them.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from defguard_entra._scopes import COMMAND_SCOPES, Command, scopes_for
from defguard_entra.testing import (
    SAMPLE_GROUP,
    DefguardEmulator,
    GraphEmulator,
    IdentityEmulator,
    Scenario,
    seed_sample_organisation,
)
from helpers import run_in_terminal

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminals and the POSIX scripted browser")

USER = "alice@example.com"
SECRET = "app-S3cret-value-5f4e3d2c1b"
GRAPH = "https://graph.microsoft.com"
#: Every delegated permission any command asks for (``_scopes.py``), consented for the public client.
DELEGATED = tuple(sorted({s for scopes in COMMAND_SCOPES.values() for s in scopes} | {"GroupMember.Read.All"}))
ROLES = ("User.Read.All", "CustomSecAttributeAssignment.ReadWrite.All", "CustomSecAttributeDefinition.Read.All")
ADMIN_ROLES = ("Attribute Assignment Administrator", "Attribute Definition Reader")
DEVICE_PROMPT = "To sign in to Microsoft Entra, open"
RUN_TIMEOUT = 90
COMMANDS: tuple[Command, ...] = ("check", "provision", "status", "export", "fetch-config", "clear")
#: The exit code of each command for the sample organisation, whatever the sign-in (docs/cli.md, "Exit codes"):
#: it has members needing attention (1); ``check`` is ready (0); ``fetch-config`` writes alice's file (0).
EXIT = {"check": 0, "provision": 1, "status": 1, "export": 1, "fetch-config": 0, "clear": 1}
#: ``fetch-config`` with an application sign-in is refused before any request (exit 2).
APP_ONLY = frozenset({"environment", "managed-identity"})


@dataclass
class World:
    idp: IdentityEmulator
    graph: GraphEmulator
    defguard: DefguardEmulator
    scenario: Scenario
    home: Path
    public: Any = None  # the public client users sign in with
    confidential: Any = None  # the app with a secret and application permissions
    static_tokens: list[str] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "DEFGUARD_ENTRA_STATE_DIR": str(self.home / "state"),
            "DEFGUARD_URL": self.defguard.url,
            "DEFGUARD_API_TOKEN": self.defguard.admin_token,
            "DEFGUARD_ENTRA_GRAPH_URL": self.graph.url,
            **self.idp.environment(),  # AZURE_AUTHORITY_HOST, REQUESTS_CA_BUNDLE, AZURE_TENANT_ID
            **extra,
        }

    def secrets(self) -> set[str]:
        """Every secret value this world has seen: the client secret and Defguard's token, each bearer Graph was
        given, and what MSAL sent and got at the token endpoint (codes, verifiers, device codes, refresh
        tokens), and the enrollment tokens Defguard minted."""
        found = {SECRET, self.defguard.admin_token, *self.static_tokens}
        for request in self.graph.requests:
            found.add(request.headers.get("authorization", "").partition(" ")[2])
        for request in self.idp.requests:
            if request.endpoint == "token":
                form = dict(parse_qsl(request.body.decode()))
                found.update(form.get(k, "") for k in ("code", "code_verifier", "device_code", "refresh_token"))
                found.add(form.get("client_secret", ""))
        with self.idp.lock:
            found.update(self.idp.refresh_tokens)
            found.update(self.idp.codes)
        found.update(self.defguard.current_token(name) or "" for name in self.scenario.provisioned)
        return {s for s in found if len(s) >= 8}

    def requested_scopes(self, since: int) -> list[set[str]]:
        """The Graph scopes of each user sign-in started since request ``since`` (``devicecode`` or ``authorize``),
        as permission names."""
        asked = []
        for request in self.idp.requests[since:]:
            if request.endpoint == "devicecode":
                scope = dict(parse_qsl(request.body.decode())).get("scope", "")
            elif request.endpoint == "authorize":
                scope = dict(parse_qsl(request.query)).get("scope", "")
            else:
                continue
            asked.append({s.removeprefix(GRAPH + "/") for s in scope.split() if s.startswith(GRAPH)})
        return asked


@pytest.fixture(scope="module")
def identity() -> Iterator[IdentityEmulator]:
    """One identity emulator for the module (its CA and keys take a quarter of a second to make)."""
    with IdentityEmulator() as idp:
        yield idp


@pytest.fixture
def world(identity: IdentityEmulator, tmp_path: Path) -> Iterator[World]:
    """Fresh Graph and Defguard emulators with the sample organisation, and the identity emulator as new: its log,
    issued tokens, flows, codes, refresh tokens, refusals and managed identities forgotten."""
    idp = identity
    with idp.lock:
        for records in (idp.issued, idp.refusals, idp.identities):
            records.clear()
        for pending in (idp.device_flows, idp.codes, idp.refresh_tokens):
            pending.clear()
    idp.reset_log()
    idp.auto_approve, idp.browser_user, idp.device_code_lifetime = USER, USER, 900
    with (
        GraphEmulator(identity=idp, strict=True) as graph,
        DefguardEmulator("2.0", enrollment_url="https://enroll.example.com") as defguard,
    ):
        scenario = seed_sample_organisation(defguard, graph)
        idp.add_user(USER, oid=scenario.entra_ids["alice"], directory_roles=ADMIN_ROLES)
        world = World(idp, graph, defguard, scenario, tmp_path)
        world.public = idp.add_app("defguard-entra", delegated=DELEGATED)
        world.confidential = idp.add_app("provisioner", secret=SECRET, roles=ROLES)
        yield world


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def _user_token(world: World) -> str:
    """A user's access token for Graph, signed in by device code over HTTPS (what ``az account
    get-access-token`` would give): the input of ``--auth token``."""
    idp, context = world.idp, ssl.create_default_context(cafile=world.idp.ca_file)
    base = f"{idp.url}/{idp.tenant_id}/oauth2/v2.0"
    scope = " ".join(f"{GRAPH}/{s}" for s in DELEGATED)

    def post(path: str, form: dict[str, str]) -> dict[str, Any]:
        request = urllib.request.Request(f"{base}/{path}", data=urlencode(form).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as answer:
                result: dict[str, Any] = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            result = json.loads(exc.read())
        return result

    flow = post("devicecode", {"client_id": world.public.client_id, "scope": scope})
    grant = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": world.public.client_id}
    for _ in range(3):  # auto-approved at the second poll
        answer = post("token", {**grant, "device_code": flow["device_code"]})
        if "access_token" in answer:
            token: str = answer["access_token"]
            world.static_tokens.append(token)
            return token
    raise AssertionError(answer)


def _mode(world: World, mode: str) -> tuple[list[str], dict[str, str], bool]:
    """``--auth`` flags, environment, and whether the run needs a terminal (the modes that prompt)."""
    idp = world.idp
    if mode == "interactive":
        browser = idp.browser_command("follow", USER)
        return ["--auth", mode], {"AZURE_CLIENT_ID": world.public.client_id, "BROWSER": browser, "DISPLAY": ":99"}, True
    if mode == "device-code":
        return ["--auth", mode], {"AZURE_CLIENT_ID": world.public.client_id}, True
    if mode == "environment":
        return ["--auth", mode], {"AZURE_CLIENT_ID": world.confidential.client_id, "AZURE_CLIENT_SECRET": SECRET}, False
    if mode == "managed-identity":
        idp.add_managed_identity(roles=ROLES)
        return ["--auth", mode], idp.managed_identity_environment(), False
    return ["--auth", "token"], {"DEFGUARD_ENTRA_GRAPH_TOKEN": _user_token(world)}, False


def _argv(command: str, tmp_path: Path, group: str = SAMPLE_GROUP) -> list[str]:
    if command == "fetch-config":
        return [command, "--output", str(tmp_path / "provisioning.json")]
    extra = ["--output-dir", str(tmp_path / "export")] if command == "export" else []
    return [command, "--group-name", group, "--no-progress", *extra]


def _run(
    argv: list[str], env: dict[str, str], *, terminal: bool, on_output: Callable[[str, Any], None] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "defguard_entra", *argv]
    if terminal:
        return run_in_terminal(command, env, RUN_TIMEOUT, on_output=on_output)
    return subprocess.run(
        command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT, check=False
    )


def _assert_bearers_only_to_graph(world: World) -> None:
    bearers = {
        r.headers["authorization"].partition(" ")[2] for r in world.graph.requests if "authorization" in r.headers
    }
    assert bearers, "Graph was never called with a bearer"
    issued = {c["uti"] for c in world.idp.issued}
    assert {_claims(b)["uti"] for b in bearers} <= issued  # Graph saw only tokens the identity emulator issued
    for request in world.defguard.requests:
        seen = " ".join(request.headers.values()) + request.body.decode("utf-8", "replace") + request.query
        assert not any(b in seen for b in bearers), "a Graph token reached Defguard"
    for request in world.idp.requests:
        seen = " ".join(request.headers.values()) + request.body.decode("utf-8", "replace") + request.query
        assert not any(b in seen for b in bearers), "a Graph token went back to the sign-in service"


# -- every mode × every command -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["interactive", "device-code", "environment", "managed-identity", "token"])
def test_every_command_signs_in_with_every_mode(world: World, mode: str, tmp_path: Path) -> None:
    """Each command's normal exit code, no traceback, no secret on the console, the bearer to Graph only; for a
    user's sign-in, each command asks for exactly its scopes (``_scopes.py``) and the token carries them."""
    auth, extra, terminal = _mode(world, mode)
    env = world.env(**extra)
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    for command in COMMANDS:
        before = len(world.idp.requests)
        issued_before = len(world.idp.issued)
        result = _run([*_argv(command, tmp_path), *auth], env, terminal=terminal)
        outputs[command] = result
        said = result.stdout + result.stderr
        expected = 2 if command == "fetch-config" and mode in APP_ONLY else EXIT[command]
        assert result.returncode == expected, f"{mode} {command}: {said}"
        assert "Traceback" not in said, said
        if mode in {"interactive", "device-code"}:
            wanted = set(scopes_for(command))
            assert world.requested_scopes(before) == [wanted], (command, world.requested_scopes(before))
            (claims,) = [c for c in world.idp.issued[issued_before:] if "scp" in c]
            assert wanted <= set(claims["scp"].split())
            assert claims["upn"] == USER
            assert (DEVICE_PROMPT in result.stderr) is (mode == "device-code")
        elif mode == "token" or (command == "fetch-config" and mode in APP_ONLY):
            assert not [r for r in world.idp.requests[before:] if r.endpoint == "token"]  # nothing signed in
    if mode in APP_ONLY:
        assert "fetch-config reads the signed-in user's own attributes" in outputs["fetch-config"].stderr
    else:
        written = json.loads((tmp_path / "provisioning.json").read_text(encoding="utf-8"))
        assert json.dumps(written).count(world.defguard.current_token("alice") or "?") == 1  # alice's own token
    assert "permission to write the attributes" in outputs["check"].stdout
    assert (tmp_path / "export").is_dir()
    secrets = world.secrets()
    for name, result in outputs.items():
        for secret in secrets:
            assert secret not in result.stdout + result.stderr, f"{mode} {name} shows a secret"
    _assert_bearers_only_to_graph(world)


# -- a person at the terminal -------------------------------------------------------------------------------------


def test_a_browser_sign_in_completes(world: World, tmp_path: Path) -> None:
    """The scripted browser (``follow``) signs alice in and posts the answer to azure-identity's ``localhost``
    redirect URI: one ``authorize``, one authorization-code grant with its PKCE verifier, no device code, no
    fallback, and the port released (the run ends well inside the browser timeout)."""
    auth, extra, _ = _mode(world, "interactive")
    started = time.monotonic()
    result = _run([*_argv("status", tmp_path), *auth, "--browser-timeout", "30"], world.env(**extra), terminal=True)
    assert result.returncode == EXIT["status"], result.stderr
    assert time.monotonic() - started < 25
    assert world.idp.request_counts["authorize"] == 1
    assert "devicecode" not in world.idp.request_counts
    (grant,) = [dict(parse_qsl(r.body.decode())) for r in world.idp.requests_to("token")]
    assert grant["grant_type"] == "authorization_code"
    assert grant["code_verifier"]
    assert "did not answer" not in result.stderr
    assert DEVICE_PROMPT not in result.stderr


def test_quiet_keeps_the_device_code_instructions(world: World, tmp_path: Path) -> None:
    auth, extra, _ = _mode(world, "device-code")
    result = _run([*_argv("status", tmp_path), *auth, "-q"], world.env(**extra), terminal=True)
    assert result.returncode == EXIT["status"], result.stderr
    assert result.stderr.count(DEVICE_PROMPT) == 1
    assert "enter the code" in result.stderr


def _signal_when(text: str, sig: signal.Signals) -> tuple[Callable[[str, Any], None], list[float]]:
    """An ``on_output`` that sends ``sig`` once ``text`` shows on stderr; the time it was sent goes to the list."""
    sent: list[float] = []

    def on_output(said: str, proc: Any) -> None:
        if text in said and not sent:
            sent.append(time.monotonic())
            proc.send_signal(sig)

    return on_output, sent


def _interrupted(result: subprocess.CompletedProcess[str], sent: list[float]) -> None:
    assert sent, result.stderr
    assert result.returncode == 130, result.stderr
    assert time.monotonic() - sent[0] < 10
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: interrupted"


@pytest.mark.parametrize(
    ("command", "sig"),
    [("provision", signal.SIGINT), ("status", signal.SIGINT), ("provision", signal.SIGTERM)],
    ids=["provision-ctrl-c", "status-ctrl-c", "provision-sigterm"],
)
def test_an_interrupt_while_the_device_code_waits_exits_130(
    world: World, tmp_path: Path, command: str, sig: signal.Signals
) -> None:
    world.idp.auto_approve = None  # nobody enters the code
    auth, extra, _ = _mode(world, "device-code")
    on_output, sent = _signal_when(DEVICE_PROMPT, sig)
    result = _run([*_argv(command, tmp_path), *auth], world.env(**extra), terminal=True, on_output=on_output)
    _interrupted(result, sent)
    assert not world.idp.requests_to("token") or all(r.status == 400 for r in world.idp.requests_to("token"))
    assert not [r for r in world.defguard.requests if "start_enrollment" in r.raw_path]


@pytest.mark.parametrize("command", ["provision", "status"])
def test_ctrl_c_while_the_browser_sign_in_waits_exits_130(world: World, tmp_path: Path, command: str) -> None:
    """The browser opens and never comes back (``ignore``); Ctrl-C long before the fallback to a device code."""
    opened = "scripted browser opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "{opened}" >&2\nexec "{world.idp.browser_command("ignore")}" "$1"\n')
    browser.chmod(0o755)
    extra = {"AZURE_CLIENT_ID": world.public.client_id, "BROWSER": str(browser), "DISPLAY": ":99"}
    on_output, sent = _signal_when(opened, signal.SIGINT)
    argv = [*_argv(command, tmp_path), "--auth", "interactive", "--browser-timeout", "60"]
    result = _run(argv, world.env(**extra), terminal=True, on_output=on_output)
    _interrupted(result, sent)
    assert DEVICE_PROMPT not in result.stderr
    assert "devicecode" not in world.idp.request_counts


# -- Entra's refusals: one line each --------------------------------------------------------------------------------


def _one_error_line(result: subprocess.CompletedProcess[str], *allowed: str) -> str:
    """Exit 3, one ``error:`` line, and no other line on stderr but the prompts in ``allowed``."""
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    others = [line for line in lines if line not in errors and not any(a in line for a in allowed)]
    assert others == [], result.stderr  # no azure-identity/MSAL warning, trace id or raw JSON
    assert "Trace ID" not in errors[0]
    assert "{" not in errors[0]
    return errors[0]


def test_consent_missing_is_one_line(world: World, tmp_path: Path) -> None:
    """An app with only User.Read consented: the device-code grant is AADSTS65001."""
    app = world.idp.add_app("unconsented", delegated=("User.Read",))
    argv = [*_argv("status", tmp_path), "--auth", "device-code", "--token-cache", "memory"]
    result = _run(argv, world.env(AZURE_CLIENT_ID=app.client_id), terminal=True)
    line = _one_error_line(result, DEVICE_PROMPT)
    assert "AADSTS65001 (consent is missing)" in line
    assert "fix: " in line


def test_a_declined_consent_is_one_line(world: World, tmp_path: Path) -> None:
    extra = {
        "AZURE_CLIENT_ID": world.public.client_id,
        "BROWSER": world.idp.browser_command("decline", USER),
        "DISPLAY": ":99",
    }
    argv = [*_argv("status", tmp_path), "--auth", "interactive", "--token-cache", "memory"]
    line = _one_error_line(_run(argv, world.env(**extra), terminal=True))
    assert "AADSTS65004 (the user declined consent)" in line
    assert not world.idp.requests_to("token")


def test_an_expired_device_code_is_one_line(world: World, tmp_path: Path) -> None:
    world.idp.auto_approve = None

    def expire(said: str, _proc: Any) -> None:
        if DEVICE_PROMPT in said:
            world.idp.expire_device_codes()

    argv = [*_argv("status", tmp_path), "--auth", "device-code", "--token-cache", "memory"]
    result = _run(argv, world.env(AZURE_CLIENT_ID=world.public.client_id), terminal=True, on_output=expire)
    line = _one_error_line(result, DEVICE_PROMPT)
    assert "AADSTS70020" in line
    assert "expired" in line
    assert "fix: " in line


def test_a_device_code_nobody_enters_is_one_line(world: World, tmp_path: Path) -> None:
    """MSAL stops polling once the code's ``expires_in`` has passed (``oauth2cli/oauth2.py``, 1.39) and
    azure-identity says "Timed out waiting for user to authenticate" (``_credentials/device_code.py``, 1.27): the
    line says what happened and what to do, though Entra sent no code."""
    world.idp.auto_approve = None
    world.idp.device_code_lifetime = 2  # announced; the emulator keeps the code alive, so MSAL gives up first

    def keep_alive(said: str, _proc: Any) -> None:
        if DEVICE_PROMPT in said:
            with world.idp.lock:
                for flow in world.idp.device_flows.values():
                    flow.expires_at = time.time() + 60

    argv = [*_argv("status", tmp_path), "--auth", "device-code", "--token-cache", "memory"]
    result = _run(argv, world.env(AZURE_CLIENT_ID=world.public.client_id), terminal=True, on_output=keep_alive)
    assert {r.status for r in world.idp.requests_to("token")} == {400}
    line = _one_error_line(result, DEVICE_PROMPT)
    assert "the device code expired before the sign-in finished" in line
    assert "fix: run again and enter the code in time" in line


@pytest.mark.parametrize("mode", ["environment", "device-code"])
def test_an_unknown_tenant_is_one_line(world: World, tmp_path: Path, mode: str) -> None:
    auth, extra, terminal = _mode(world, mode)
    env = world.env(**extra, AZURE_TENANT_ID="0d8f1d7e-0000-4000-8000-000000000000")
    line = _one_error_line(_run([*_argv("status", tmp_path), *auth, "--token-cache", "memory"], env, terminal=terminal))
    assert "AADSTS90002 (the tenant is not found)" in line
    assert SECRET not in line


@pytest.mark.parametrize("mode", ["device-code", "interactive", "environment"])
def test_msal_debug_output_shows_no_secret(world: World, tmp_path: Path, mode: str) -> None:
    """``-vv`` shows MSAL's and azure-identity's debug lines, with every code, verifier, token and secret the
    emulator saw masked (searched by value)."""
    auth, extra, terminal = _mode(world, mode)
    result = _run([*_argv("status", tmp_path), *auth, "-vv"], world.env(**extra), terminal=terminal)
    assert result.returncode == EXIT["status"], result.stderr
    assert "DEBUG msal" in result.stderr  # the debug output is there
    secrets = world.secrets()
    assert len(secrets) >= 3
    for secret in secrets:
        assert secret not in result.stderr + result.stdout, "a secret in the -vv output"


# -- check judges the real claims -----------------------------------------------------------------------------------


def _check_line(result: subprocess.CompletedProcess[str], title: str) -> str:
    return next(x for x in result.stdout.splitlines() if x[8:].startswith(title))


def test_check_sees_a_user_without_the_attribute_assignment_role(world: World, tmp_path: Path) -> None:
    """The token's ``wids`` lack Attribute Assignment Administrator/Reader: both attribute lines say so (a role
    scoped to the attribute set never shows in ``wids``, so "not verified", not a failure)."""
    world.idp.add_user("bob@example.com", oid=world.scenario.entra_ids.get("bob"), directory_roles=())
    world.idp.auto_approve = "bob@example.com"
    argv = [*_argv("check", tmp_path), "--auth", "device-code", "--token-cache", "memory"]
    result = _run(argv, world.env(AZURE_CLIENT_ID=world.public.client_id), terminal=True)
    assert result.returncode == 0, result.stdout + result.stderr  # ready, with unverified lines
    write = _check_line(result, "permission to write the attributes")
    assert write.lower().startswith("  warn"), write
    assert "the Entra role Attribute Assignment Administrator does not show in the token" in write
    read = _check_line(result, "permission to read the attributes")
    assert read.lower().startswith("  warn"), read
    assert "Attribute Assignment Reader does not show" in read


def test_check_sees_the_role_of_a_user_who_holds_it(world: World, tmp_path: Path) -> None:
    argv = [*_argv("check", tmp_path), "--auth", "device-code", "--token-cache", "memory"]
    result = _run(argv, world.env(AZURE_CLIENT_ID=world.public.client_id), terminal=True)
    assert result.returncode == 0, result.stdout + result.stderr
    write = _check_line(result, "permission to write the attributes")
    assert write.lower().startswith("  ok"), write
    assert "the Entra role Attribute Assignment Administrator" in write


def test_check_sees_an_app_without_the_read_permission(world: World, tmp_path: Path) -> None:
    app = world.idp.add_app("reader-less", secret=SECRET, roles=("User.Read.All",))
    env = world.env(AZURE_CLIENT_ID=app.client_id, AZURE_CLIENT_SECRET=SECRET)
    result = _run([*_argv("check", tmp_path), "--auth", "environment"], env, terminal=False)
    assert result.returncode == 3, result.stdout + result.stderr
    read = _check_line(result, "permission to read the attributes")
    assert read.lower().startswith("  fail"), read
    assert "the application has no CustomSecAttributeAssignment.Read.All permission" in read


# -- unattended, and remembered ---------------------------------------------------------------------------------------


def test_auto_without_a_terminal_fails_before_any_request(world: World, tmp_path: Path) -> None:
    """Nothing configured (``auto`` resolves to interactive), stdin not a terminal: exit 3 at once, and neither
    the identity emulator nor Graph nor Defguard saw a request."""
    started = time.monotonic()
    result = _run(_argv("status", tmp_path), world.env(), terminal=False)
    line = _one_error_line(result)
    assert time.monotonic() - started < 15
    assert "is not a terminal" in line
    assert world.idp.requests == []
    assert world.graph.requests == []
    assert world.defguard.requests == []


def test_fetch_config_is_silent_the_second_time(world: World, tmp_path: Path) -> None:
    """With ``--token-cache unencrypted`` (this machine has no keyring), the second ``fetch-config`` signs in
    from the cache: no prompt, no device code, at most a refresh."""
    provision = _run(
        _argv("provision", tmp_path), world.env(DEFGUARD_ENTRA_GRAPH_TOKEN=_user_token(world)), terminal=False
    )
    assert provision.returncode == EXIT["provision"], provision.stderr
    argv = [*_argv("fetch-config", tmp_path), "--auth", "device-code", "--token-cache", "unencrypted", "--force"]
    env = world.env(AZURE_CLIENT_ID=world.public.client_id)
    first = _run(argv, env, terminal=True)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(DEVICE_PROMPT) == 1
    before = len(world.idp.requests)
    second = _run(argv, env, terminal=True)
    assert second.returncode == 0, second.stderr
    assert DEVICE_PROMPT not in second.stderr
    new = world.idp.requests[before:]
    assert "devicecode" not in {r.endpoint for r in new}
    grants = {dict(parse_qsl(r.body.decode())).get("grant_type") for r in new if r.endpoint == "token"}
    assert grants <= {"refresh_token"}, grants
    written = (tmp_path / "provisioning.json").read_text(encoding="utf-8")
    assert (world.defguard.current_token("alice") or "?") in written
