"""The user's machine: provisioning.json paths per OS, exact bytes, owner-only atomic writes, and ``fetch-config``
end to end (the real CLI and msgraph stack against the Graph emulator over 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from defguard_entra import ClientConfigError, ConfigurationError, ProvisioningConfig, Secret, Settings
from defguard_entra._desktop_client import (
    WriteOutcome,
    afetch_provisioning_config,
    config_from_attributes,
    deep_link,
    default_provisioning_path,
    fetch_provisioning_config,
    provisioning_json,
    write_provisioning_file,
)
from defguard_entra._export import member_directory_name
from defguard_entra.config import AuthMode, GraphSettings
from defguard_entra.testing import Faults, GraphEmulator
from helpers import run_cli

TOKEN = "Zq8Rk2LmP0xY7wVb4NcT1sHd9GfJ3aEu"  # 32 alphanumerics, like Defguard's
URL = "https://enroll.example.com/"
CONFIG = ProvisioningConfig(URL, Secret(TOKEN))
EXPECTED_BYTES = (
    b'{\n  "enrollment_url": "https://enroll.example.com/",\n  "enrollment_token": "' + TOKEN.encode() + b'"\n}\n'
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- paths per OS (the CLI passes sys.platform and os.environ) ------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "environ", "expected"),
    [
        ("win32", {"APPDATA": "{tmp}/Roaming", "HOME": "{tmp}/ignored"}, "Roaming/net.defguard/provisioning.json"),
        (  # sandboxed: inside the app's container (DefGuard/client src-tauri/Client.entitlements)
            "darwin",
            {"HOME": "{tmp}/alice"},
            "alice/Library/Containers/net.defguard/Data/Library/Application Support/net.defguard/provisioning.json",
        ),
        ("linux", {"HOME": "{tmp}/alice"}, "alice/.local/share/net.defguard/provisioning.json"),
        ("linux", {"HOME": "{tmp}/alice", "XDG_DATA_HOME": "{tmp}/xdg"}, "xdg/net.defguard/provisioning.json"),
        (  # a relative XDG_DATA_HOME is ignored, as the client's `dirs` crate does
            "linux",
            {"HOME": "{tmp}/alice", "XDG_DATA_HOME": "relative/dir"},
            "alice/.local/share/net.defguard/provisioning.json",
        ),
        ("freebsd14", {"HOME": "{tmp}/alice"}, "alice/.local/share/net.defguard/provisioning.json"),
    ],
)
def test_default_path_per_os(tmp_path: Path, platform: str, environ: dict[str, str], expected: str) -> None:
    env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in environ.items()}
    assert default_provisioning_path(platform, env) == tmp_path / expected


@pytest.mark.parametrize(
    ("platform", "environ", "message"),
    [
        ("win32", {}, "APPDATA is not set"),
        ("win32", {"APPDATA": r"C:\Windows\System32\config\systemprofile\AppData\Roaming"}, "SYSTEM profile"),
        ("linux", {}, "HOME is not set"),
        ("darwin", {"HOME": ""}, "HOME is not set"),
        ("linux", {"HOME": "/root"}, "root's"),
        ("darwin", {"HOME": "/var/root"}, "root's"),
    ],
)
def test_default_path_refuses_unknown_or_wrong_profiles(platform: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        default_provisioning_path(platform, environ)
    assert "--output PATH" in str(info.value) or "export" in str(info.value)


# -- the file ------------------------------------------------------------------------------------------------


def test_file_bytes_are_exact() -> None:
    content = provisioning_json(CONFIG)
    assert content == EXPECTED_BYTES
    assert not content.startswith(b"\xef\xbb\xbf")
    assert list(json.loads(content)) == ["enrollment_url", "enrollment_token"]


def test_write_new_file_and_directory_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "data" / "net.defguard" / "provisioning.json"
    assert write_provisioning_file(CONFIG, target) is WriteOutcome.WRITTEN
    assert target.read_bytes() == EXPECTED_BYTES
    assert _mode(target) == 0o600
    assert _mode(target.parent) == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["provisioning.json"]  # no temp file left behind


def test_second_write_is_a_no_op(tmp_path: Path) -> None:
    target = tmp_path / "provisioning.json"
    write_provisioning_file(CONFIG, target)
    before = target.stat()
    assert write_provisioning_file(CONFIG, target) is WriteOutcome.UNCHANGED
    after = target.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert target.read_bytes() == EXPECTED_BYTES


def test_different_file_is_kept_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "provisioning.json"
    other = b'{"enrollment_url": "https://old.example.com/", "enrollment_token": "old"}'
    target.write_bytes(other)
    with pytest.raises(ClientConfigError, match="--force") as info:
        write_provisioning_file(CONFIG, target)
    assert info.value.reason == "exists"
    assert TOKEN not in str(info.value)
    assert target.read_bytes() == other
    assert write_provisioning_file(CONFIG, target, force=True) is WriteOutcome.REPLACED
    assert target.read_bytes() == EXPECTED_BYTES
    assert _mode(target) == 0o600


def test_same_pair_written_by_the_powershell_script_counts_as_identical(tmp_path: Path) -> None:
    target = tmp_path / "provisioning.json"
    bom = b"\xef\xbb\xbf" + json.dumps({"enrollment_url": URL, "enrollment_token": TOKEN}).encode() + b"\r\n"
    target.write_bytes(bom)
    target.chmod(0o644)
    assert write_provisioning_file(CONFIG, target) is WriteOutcome.UNCHANGED
    assert target.read_bytes() == bom
    assert _mode(target) == 0o600  # tightened


def test_a_directory_in_the_way_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a directory"):
        write_provisioning_file(CONFIG, tmp_path)


def test_empty_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError):
        write_provisioning_file(ProvisioningConfig(URL, Secret("")), tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    ("values", "reason", "message"),
    [
        (None, "missing", "holds no EnrollmentUrl and no EnrollmentToken"),
        ({}, "missing", "holds no EnrollmentUrl"),
        ({"EnrollmentUrl": URL}, "incomplete", "holds EnrollmentUrl but no EnrollmentToken"),
        ({"EnrollmentToken": TOKEN}, "incomplete", "holds EnrollmentToken but no EnrollmentUrl"),
        ({"EnrollmentToken": TOKEN, "EnrollmentUrl": "  "}, "incomplete", "but no EnrollmentUrl"),
        ({"EnrollmentToken": TOKEN, "EnrollmentUrl": "enroll.example.com"}, "incomplete", "not an http(s) URL"),
        ({"EnrollmentToken": 5, "EnrollmentUrl": 6}, "incomplete", "not as text"),
    ],
)
def test_config_from_attributes_refuses_missing_and_incomplete(values: dict | None, reason: str, message: str) -> None:
    with pytest.raises(ClientConfigError) as info:
        config_from_attributes(values, "Defguard")
    assert info.value.reason == reason
    assert message in str(info.value)
    assert TOKEN not in str(info.value)


def test_config_from_attributes() -> None:
    config = config_from_attributes({"EnrollmentToken": TOKEN, "EnrollmentUrl": URL}, "Defguard")
    assert config == CONFIG
    assert TOKEN not in repr(config)


def test_deep_link() -> None:
    link = deep_link(CONFIG)
    assert link == f"defguard://addinstance?token={TOKEN}&url=https%3A%2F%2Fenroll.example.com%2F"
    query = parse_qs(urlsplit(link).query)
    assert query == {"token": [TOKEN], "url": [URL]}


@pytest.mark.parametrize(
    ("upn", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        ("jane_contoso.com#EXT#@tenant.onmicrosoft.com", "jane_contoso.com%23EXT%23@tenant.onmicrosoft.com"),
        ("o'neil@example.com", "o%27neil@example.com"),
        ("a+b@example.com", "a+b@example.com"),
        ("zoë@example.com", "zo%C3%AB@example.com"),
    ],
)
def test_member_directory_name(upn: str, expected: str) -> None:
    assert member_directory_name(upn) == expected


@pytest.mark.parametrize(
    "upn", ["", "  ", "..", ".", "../etc@example.com", "a/b@example.com", "a\\b@x", ".x@y", "x\n@y"]
)
def test_member_directory_name_refuses_unsafe_names(upn: str) -> None:
    with pytest.raises(ValueError):
        member_directory_name(upn)


def test_fetch_config_scopes_are_least_privilege() -> None:
    from defguard_entra._credentials import graph_scopes
    from defguard_entra._scopes import scopes_for

    fetch_config_scopes = scopes_for("fetch-config")
    assert fetch_config_scopes == ("User.Read", "CustomSecAttributeAssignment.Read.All")
    assert graph_scopes(GraphSettings(auth=AuthMode.INTERACTIVE), fetch_config_scopes) == [
        "https://graph.microsoft.com/User.Read",
        "https://graph.microsoft.com/CustomSecAttributeAssignment.Read.All",
    ]


# -- fetch-config end to end --------------------------------------------------------------------------------


@pytest.fixture
def user_env(graph: GraphEmulator, tmp_path: Path) -> dict[str, str]:
    """Alice, provisioned, signed in with a delegated token that may read attributes; HOME in tmp."""
    graph.define_attribute_set("Defguard")
    graph.add_user(
        "alice@example.com",
        mail="alice@example.com",
        attributes={"Defguard": {"EnrollmentToken": TOKEN, "EnrollmentUrl": URL}},
    )
    token = graph.add_principal("alice", user="alice@example.com", read_attributes=True)
    home = tmp_path / "home"
    home.mkdir()
    return {"DEFGUARD_ENTRA_GRAPH_URL": graph.url, "DEFGUARD_ENTRA_GRAPH_TOKEN": token, "HOME": str(home)}


def _linux_file(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".local" / "share" / "net.defguard" / "provisioning.json"


def test_fetch_config_writes_the_file_and_a_second_run_is_identical(
    user_env: dict[str, str], graph: GraphEmulator
) -> None:
    result = run_cli(["fetch-config"], user_env)
    assert result.code == 0, result.stderr
    target = _linux_file(user_env)
    assert target.read_bytes() == EXPECTED_BYTES
    assert json.loads(target.read_text(encoding="utf-8")) == {"enrollment_url": URL, "enrollment_token": TOKEN}
    assert _mode(target) == 0o600
    assert _mode(target.parent) == 0o700
    assert f"wrote {target}" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    me = graph.requests_to("me")
    assert me
    assert "customSecurityAttributes" in me[0].query

    again = run_cli(["fetch-config"], user_env)
    assert again.code == 0, again.stderr
    assert "already holds this configuration" in again.stdout
    assert target.read_bytes() == EXPECTED_BYTES
    assert TOKEN not in again.stdout + again.stderr


def test_fetch_config_honours_xdg_data_home(user_env: dict[str, str], tmp_path: Path) -> None:
    env = {**user_env, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert run_cli(["fetch-config", "-q"], env).code == 0
    assert (tmp_path / "xdg" / "net.defguard" / "provisioning.json").read_bytes() == EXPECTED_BYTES
    assert not _linux_file(user_env).exists()


def test_fetch_config_output_path(user_env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "custom.json"
    result = run_cli(["fetch-config", "--output", str(target)], user_env)
    assert result.code == 0, result.stderr
    assert target.read_bytes() == EXPECTED_BYTES
    assert _mode(target) == 0o600


def test_fetch_config_reads_the_configured_attribute_set(user_env: dict[str, str], graph: GraphEmulator) -> None:
    """The PowerShell reader hard-codes 'Defguard'; a non-default set must work (and 'Defguard' then be empty)."""
    graph.define_attribute_set("CorpVpn")
    graph.add_user(
        "bob@example.com", attributes={"CorpVpn": {"EnrollmentToken": "b" * 32, "EnrollmentUrl": "https://vpn.corp/"}}
    )
    env = {**user_env, "DEFGUARD_ENTRA_GRAPH_TOKEN": graph.add_principal("bob", user="bob@example.com")}
    assert run_cli(["fetch-config"], env).code == 1  # nothing in the default set
    result = run_cli(["fetch-config", "--attribute-set-name", "CorpVpn"], env)
    assert result.code == 0, result.stderr
    assert json.loads(_linux_file(env).read_text()) == {
        "enrollment_url": "https://vpn.corp/",
        "enrollment_token": "b" * 32,
    }


def _assert_both_causes(stderr: str) -> None:
    assert stderr.startswith("error: ")
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "none are assigned yet" in stderr
    assert "Attribute Assignment Reader" in stderr
    assert "CustomSecAttributeAssignment.Read.All" in stderr
    assert "no file was written" in stderr


def test_fetch_config_not_assigned(user_env: dict[str, str], graph: GraphEmulator) -> None:
    graph.add_user("carol@example.com")
    env = {**user_env, "DEFGUARD_ENTRA_GRAPH_TOKEN": graph.add_principal("carol", user="carol@example.com")}
    result = run_cli(["fetch-config"], env)
    assert result.code == 1
    _assert_both_causes(result.stderr)
    assert "carol@example.com" in result.stderr  # who is signed in: the wrong account is a common cause
    assert not _linux_file(env).parent.exists()


def test_fetch_config_not_permitted_looks_the_same(user_env: dict[str, str], graph: GraphEmulator) -> None:
    """Graph answers null when the caller lacks the role: same exit code and message as "not assigned"."""
    env = {
        **user_env,
        "DEFGUARD_ENTRA_GRAPH_TOKEN": graph.add_principal(
            "alice-no-role", user="alice@example.com", read_attributes=False
        ),
    }
    result = run_cli(["fetch-config"], env)
    assert result.code == 1
    _assert_both_causes(result.stderr)
    assert not _linux_file(env).exists()
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"EnrollmentUrl": URL}, "holds EnrollmentUrl but no EnrollmentToken"),
        ({"EnrollmentToken": TOKEN}, "holds EnrollmentToken but no EnrollmentUrl"),
        ({"EnrollmentToken": TOKEN, "EnrollmentUrl": "not a url"}, "is not an http(s) URL"),
    ],
)
def test_fetch_config_incomplete_pair_is_refused(
    user_env: dict[str, str], graph: GraphEmulator, values: dict[str, str], message: str
) -> None:
    graph.set_attributes("alice@example.com", "Defguard", {"EnrollmentToken": None, "EnrollmentUrl": None})
    graph.set_attributes("alice@example.com", "Defguard", values)
    result = run_cli(["fetch-config"], user_env)
    assert result.code == 1
    assert message in result.stderr
    assert "run provision again" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not _linux_file(user_env).exists()
    assert TOKEN not in result.stdout + result.stderr


def test_fetch_config_keeps_a_different_file_unless_forced(user_env: dict[str, str]) -> None:
    target = _linux_file(user_env)
    target.parent.mkdir(parents=True)
    old = b'{"enrollment_url": "https://old.example.com/", "enrollment_token": "OldOldOldOldOldOldOldOldOldOld12"}'
    target.write_bytes(old)
    result = run_cli(["fetch-config"], user_env)
    assert result.code == 1
    assert "already exists with a different configuration" in result.stderr
    assert "--force" in result.stderr
    assert target.read_bytes() == old
    forced = run_cli(["fetch-config", "--force"], user_env)
    assert forced.code == 0, forced.stderr
    assert f"replaced {target}" in forced.stdout
    assert target.read_bytes() == EXPECTED_BYTES
    assert "OldOldOld" not in result.stderr + forced.stdout + forced.stderr


@pytest.mark.parametrize("setup", ["bad-token", "app-only-token", "graph-down"])
def test_fetch_config_sign_in_or_graph_failure_exits_3(
    user_env: dict[str, str], graph: GraphEmulator, setup: str
) -> None:
    env = dict(user_env)
    argv = ["fetch-config"]
    if setup == "bad-token":
        env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = "not-a-real-token"
        expected = "Graph refused the access token"
    elif setup == "app-only-token":
        env["DEFGUARD_ENTRA_GRAPH_TOKEN"] = graph.admin_token  # an application: /me is a 400
        expected = "only valid with delegated authentication"
    else:
        graph.faults = Faults({503: 1.0}, endpoints={"me"})
        graph.retry_after = 0
        expected = "503"
        argv += ["-q"]
    result = run_cli(argv, env)
    assert result.code == 3, result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not _linux_file(env).exists()


@pytest.mark.parametrize(
    "case",
    [
        (["--output", "{tmp}"], {}, "is a directory"),
        (["--output", "{tmp}/missing/dir/p.json"], {}, "does not exist"),
        (["--attribute-set-name", "Def guard"], {}, "--attribute-set-name"),
        (["--auth", "environment"], {}, "signs in as an application"),
        (["--auth", "managed-identity"], {}, "signs in as an application"),
        ([], {"HOME": ""}, "HOME is not set"),
        ([], {"HOME": "/root"}, "root's"),
        (["--graph-url", "http://graph.example.com/v1.0"], {}, "--graph-url"),
        (["--group-name", "G"], {}, "unrecognized arguments"),
        (["--output"], {}, "expected one argument"),
    ],
)
def test_fetch_config_usage_errors_exit_2_before_any_request(
    user_env: dict[str, str], graph: GraphEmulator, tmp_path: Path, case: tuple[list[str], dict[str, str], str]
) -> None:
    args, env_change, message = case
    env = {**user_env, **env_change}
    argv = ["fetch-config", *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    result = run_cli(argv, env)
    assert result.code == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert graph.requests == []


def test_fetch_config_never_logs_the_token(user_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    result = run_cli(["fetch-config", "-vv"], user_env)
    assert result.code == 0, result.stderr
    everything = result.stdout + result.stderr + caplog.text
    assert TOKEN not in everything
    assert user_env["DEFGUARD_ENTRA_GRAPH_TOKEN"] not in everything


def test_fetch_config_through_python_m(user_env: dict[str, str]) -> None:
    import subprocess
    import sys

    env = {**user_env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        [sys.executable, "-m", "defguard_entra", "fetch-config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert _linux_file(user_env).read_bytes() == EXPECTED_BYTES
    assert TOKEN not in proc.stdout + proc.stderr


# -- the library API, as an installer script would use it ----------------------------------------------------


def test_library_fetch_and_write(user_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env(user_env)
    config = fetch_provisioning_config(settings)
    assert config == CONFIG
    target = default_provisioning_path("win32", {"APPDATA": str(tmp_path / "Roaming")})
    assert write_provisioning_file(config, target) is WriteOutcome.WRITTEN
    assert target == tmp_path / "Roaming" / "net.defguard" / "provisioning.json"
    assert target.read_bytes() == EXPECTED_BYTES


def test_library_fetch_twice_from_one_process(user_env: dict[str, str]) -> None:
    settings = Settings.from_env(user_env)
    assert fetch_provisioning_config(settings) == fetch_provisioning_config(settings)


def test_library_async_read(user_env: dict[str, str]) -> None:
    from defguard_entra._credentials import build_credential
    from defguard_entra._entra import AsyncEntraClient

    settings = Settings.from_env(user_env)

    async def read() -> ProvisioningConfig:
        async with AsyncEntraClient(settings.graph, build_credential(settings.graph)) as entra:
            return await afetch_provisioning_config(entra, "Defguard")

    assert asyncio.run(read()) == CONFIG


def test_library_fetch_is_the_blocking_twin_of_its_async_form() -> None:
    """One loop thread per call, stopped afterwards; the public name, signature and docstring unchanged."""
    import inspect

    assert fetch_provisioning_config.__name__ == "fetch_provisioning_config"
    assert str(inspect.signature(fetch_provisioning_config)) == (
        "(settings: 'Settings', *, credential: 'Any' = None, prompt: 'Any' = None) -> 'ProvisioningConfig'"
    )
    doc = inspect.getdoc(fetch_provisioning_config) or ""
    assert doc.startswith("Sign in as the current user (``settings.graph``) and read their pair")
    assert not inspect.iscoroutinefunction(fetch_provisioning_config)


def test_library_fetch_closes_the_credential_it_built_and_stops_its_thread(
    user_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from defguard_entra import _credentials

    built: list[_credentials.CachingCredential] = []
    closed: list[bool] = []
    real = _credentials.build_credential

    def build(settings: GraphSettings, **kwargs: object) -> _credentials.CachingCredential:
        credential = real(settings, **kwargs)
        monkeypatch.setattr(credential, "close", lambda: closed.append(True))
        built.append(credential)
        return credential

    monkeypatch.setattr(_credentials, "build_credential", build)
    before = {t.name for t in threading.enumerate()}
    assert fetch_provisioning_config(Settings.from_env(user_env)) == CONFIG
    assert len(built) == 1
    assert closed == [True]
    assert {t.name for t in threading.enumerate()} - before == set()


def test_library_fetch_refuses_application_sign_in_before_any_request(user_env: dict[str, str]) -> None:
    settings = Settings.from_env(user_env)
    app = Settings(graph=GraphSettings(auth=AuthMode.MANAGED_IDENTITY, graph_url=settings.graph.graph_url))
    with pytest.raises(ConfigurationError, match="signs in as an application"):
        fetch_provisioning_config(app)
