"""Remembered sign-in, ``sign-out`` and the browser fallback, with the real azure-identity and MSAL code: the CLI
in a subprocess against the identity emulator (HTTPS on loopback, its test CA in ``REQUESTS_CA_BUNDLE``), the
Graph emulator trusting its JWTs, and the Defguard emulator; ``HOME`` is a temporary directory, so the token
cache and the records azure-identity and the CLI keep in ``~/.IdentityService`` are the test's own.

This machine has no libsecret, as a Linux server or container: the encrypted cache is impossible, so a silent
second run needs the explicit opt-in ``--token-cache unencrypted``; without it, one line says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from defguard_entra.testing import SAMPLE_GROUP, DefguardEmulator, GraphEmulator, seed_sample_organisation
from helpers import run_in_terminal

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the scripted browser is a POSIX shell script")

USER = "admin@contoso.com"
#: What ``status`` asks for (``_scopes.py``), consented for the emulator's app.
DELEGATED = (
    "User.Read",
    "User.Read.All",
    "GroupMember.Read.All",
    "CustomSecAttributeAssignment.Read.All",
    "CustomSecAttributeDefinition.Read.All",
)
RUN_TIMEOUT = 120
NOT_REMEMBERED = "Sign-in is not remembered between runs"
FELL_BACK = "The browser did not answer within 2 seconds: sign in with a device code instead."
DEVICE_PROMPT = "To sign in to Microsoft Entra, open"


class World:
    """The three emulators, one registered public client, one user who approves device codes at once."""

    def __init__(self, idp: Any, graph: GraphEmulator, defguard: DefguardEmulator, home: Path) -> None:
        self.idp, self.graph, self.defguard, self.home = idp, graph, defguard, home
        self.app = idp.add_app(delegated=DELEGATED)
        idp.add_user(USER, directory_roles=["Attribute Assignment Reader", "Attribute Definition Reader"])

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "DEFGUARD_URL": self.defguard.url,
            "DEFGUARD_API_TOKEN": self.defguard.admin_token,
            "DEFGUARD_ENTRA_GRAPH_URL": self.graph.url,
            "AZURE_CLIENT_ID": self.app.client_id,
            **self.idp.environment(),  # AZURE_AUTHORITY_HOST, REQUESTS_CA_BUNDLE, AZURE_TENANT_ID
        }
        env.update(extra)
        return env

    def status(self, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "defguard_entra", "status", "--group-name", SAMPLE_GROUP, *flags]
        return run_in_terminal(argv, self.env(**env), RUN_TIMEOUT)

    def sign_out(self) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "defguard_entra", "sign-out"]
        return run_in_terminal(argv, self.env(), RUN_TIMEOUT)

    def grants(self) -> list[str]:
        """What the identity emulator was asked for, in order: ``devicecode``, ``authorize`` or a token grant."""
        seen = []
        for request in self.idp.requests:
            if request.endpoint == "token":
                form = dict(pair.split("=", 1) for pair in request.body.decode().split("&") if "=" in pair)
                seen.append(form.get("grant_type", "?").rsplit(":", 1)[-1].rsplit("%3A", 1)[-1])
            elif request.endpoint in {"devicecode", "authorize"}:
                seen.append(request.endpoint)
        return seen


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    from defguard_entra.testing import IdentityEmulator

    with (
        IdentityEmulator(auto_approve=USER) as idp,
        GraphEmulator(identity=idp) as graph,
        DefguardEmulator("2.0", enrollment_url="https://enroll.example.com") as defguard,
    ):
        seed_sample_organisation(defguard, graph)
        yield World(idp, graph, defguard, tmp_path)


def _signed_in(proc: subprocess.CompletedProcess[str]) -> None:
    """``status`` of the sample organisation ran (exit 1: some members need attention, by design)."""
    assert proc.returncode in {0, 1}, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_the_second_run_is_silent_with_the_opt_in_cache(world: World) -> None:
    first = world.status("--auth", "device-code", "--token-cache", "unencrypted")
    _signed_in(first)
    assert first.stderr.count(DEVICE_PROMPT) == 1
    assert world.grants() == ["devicecode", "device_code", "device_code"]  # pending, then approved
    (record,) = (world.home / ".IdentityService").glob("defguard-entra.*.record.json")
    assert record.stat().st_mode & 0o777 == 0o600
    assert "refresh" not in record.read_text(encoding="utf-8").lower()  # who signed in, no token
    before = len(world.grants())

    second = world.status("--auth", "device-code", "--token-cache", "unencrypted")
    _signed_in(second)
    assert DEVICE_PROMPT not in second.stderr
    new = world.grants()[before:]
    assert set(new) <= {"refresh_token"}, new  # from the cache: no prompt, at most a refresh
    assert "devicecode" not in new


def test_a_record_is_never_reused_for_another_client(world: World) -> None:
    _signed_in(world.status("--auth", "device-code", "--token-cache", "unencrypted"))
    other = world.idp.add_app("other", delegated=DELEGATED)
    before = len(world.grants())
    again = world.status("--auth", "device-code", "--token-cache", "unencrypted", AZURE_CLIENT_ID=other.client_id)
    _signed_in(again)
    assert again.stderr.count(DEVICE_PROMPT) == 1  # the other client's user signs in for it
    assert world.grants()[before] == "devicecode"
    assert len(list((world.home / ".IdentityService").glob("defguard-entra.*.record.json"))) == 2


def test_sign_out_forgets_and_the_next_run_prompts_again(world: World) -> None:
    _signed_in(world.status("--auth", "device-code", "--token-cache", "unencrypted"))
    out = world.sign_out()
    assert out.returncode == 0, out.stderr
    assert f"forgot the sign-in of {USER}" in out.stdout
    assert f"removed from the token cache: {USER}" in out.stdout
    assert not list((world.home / ".IdentityService").glob("defguard-entra*"))
    before = len(world.grants())
    again = world.status("--auth", "device-code", "--token-cache", "unencrypted")
    _signed_in(again)
    assert again.stderr.count(DEVICE_PROMPT) == 1
    assert world.grants()[before] == "devicecode"
    second = world.sign_out()
    assert second.returncode == 0
    assert "forgot the sign-in" in second.stdout


def test_a_browser_that_never_answers_falls_back_to_the_device_code(world: World) -> None:
    browser = world.idp.browser_command("ignore")  # opens, never redirects: `gio open` without a browser
    started = time.monotonic()
    proc = world.status("--auth", "interactive", "--browser-timeout", "2", BROWSER=browser, DISPLAY=":99")
    elapsed = time.monotonic() - started
    _signed_in(proc)
    assert proc.stderr.count(FELL_BACK) == 1
    assert proc.stderr.index(FELL_BACK) < proc.stderr.index(DEVICE_PROMPT)
    assert "devicecode" in world.grants()
    assert elapsed < 60, elapsed  # not azure-identity's 300 s, nor ours of 60


def test_without_the_opt_in_one_line_says_sign_in_is_not_remembered(world: World) -> None:
    first = world.status("--auth", "device-code")
    _signed_in(first)
    assert first.stderr.count(NOT_REMEMBERED) == 1
    assert "--token-cache unencrypted" in first.stderr
    assert "allow_unencrypted_storage" not in first.stderr  # azure-identity's advice: not an option of ours
    assert not list((world.home / ".IdentityService").glob("defguard-entra*"))  # nothing on disk
    second = world.status("--auth", "device-code")
    _signed_in(second)
    assert second.stderr.count(DEVICE_PROMPT) == 1  # as promised: prompted again
