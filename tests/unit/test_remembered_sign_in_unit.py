"""Remembered sign-in without a sign-in service: the record store, the browser → device-code fallback, and
``sign-out`` over a real (plain-file) msal-extensions cache. The flows themselves run against the identity
emulator in tests/e2e/test_remembered_sign_in.py."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from defguard_entra._sign_in_record import CACHE_NAME, RecordKey, RecordStore, default_identity_dir
from defguard_entra._user_sign_in import UserSignIn
from helpers import run_cli

CLIENT = "14d82eec-204b-4c2f-b7e8-296a70dab67e"
OTHER_CLIENT = "00000000-1111-2222-3333-444444444444"


def _record(client_id: str = CLIENT, authority: str = "login.microsoftonline.com", user: str = "alice") -> str:
    """A record as ``AuthenticationRecord.serialize()`` writes it (azure/identity/_auth_record.py, 1.27.0)."""
    from azure.identity import AuthenticationRecord

    record = AuthenticationRecord("tid-1", client_id, authority, f"{user}-oid.tid-1", f"{user}@contoso.com")
    return record.serialize()


KEY = RecordKey("https://login.microsoftonline.com/", "organizations", CLIENT)


# -- the record store ------------------------------------------------------------------------------------------


def test_a_record_round_trips_owner_only_keyed_by_authority_tenant_and_client(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / ".IdentityService")
    store.save(KEY, _record())
    assert store.load(KEY) == _record()
    (path,) = (tmp_path / ".IdentityService").glob("*.record.json")
    if sys.platform != "win32":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert CLIENT not in path.name  # the key is hashed into the name
    assert store.load(RecordKey("login.microsoftonline.com", "organizations", OTHER_CLIENT)) is None
    assert store.load(RecordKey("login.microsoftonline.com", "contoso.onmicrosoft.com", CLIENT)) is None
    assert store.load(RecordKey("login.microsoftonline.us", "organizations", CLIENT)) is None


def test_a_record_of_another_client_or_authority_is_never_stored_or_used(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    with pytest.raises(ValueError, match="not one of"):
        store.save(KEY, _record(client_id=OTHER_CLIENT))  # azure-identity would let it override our client id
    with pytest.raises(ValueError, match="not one of"):
        store.save(KEY, _record(authority="evil.example.com"))
    assert list(tmp_path.iterdir()) == []
    # A file tampered with (or written by another version) under our key is ignored, not obeyed.
    store.save(KEY, _record())
    (path,) = tmp_path.glob("*.record.json")
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved["record"] = _record(client_id=OTHER_CLIENT)
    path.write_text(json.dumps(saved), encoding="utf-8")
    assert store.load(KEY) is None
    path.write_text("{not json", encoding="utf-8")
    assert store.load(KEY) is None


def test_forget_all_removes_only_our_records(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.save(KEY, _record())
    other = RecordKey("login.microsoftonline.com", "organizations", OTHER_CLIENT)
    store.save(other, _record(client_id=OTHER_CLIENT, user="bob"))
    (tmp_path / "msal.cache.nocae").write_text("another tool's cache", encoding="utf-8")
    forgotten = store.forget_all()
    assert sorted(f.username for f in forgotten) == ["alice@contoso.com", "bob@contoso.com"]
    assert {f.client_id for f in forgotten} == {CLIENT, OTHER_CLIENT}
    assert [p.name for p in tmp_path.iterdir()] == ["msal.cache.nocae"]
    assert store.forget_all() == []
    assert RecordStore(tmp_path / "missing").forget_all() == []


def test_the_directory_is_azure_identitys() -> None:
    """``azure/identity/_persistent_cache.py`` (1.27.0): ``%LOCALAPPDATA%\\.IdentityService`` on Windows,
    ``~/.IdentityService`` on macOS and Linux."""
    assert default_identity_dir("linux", {"HOME": "/home/a"}) == Path("/home/a/.IdentityService")
    assert default_identity_dir("darwin", {"HOME": "/Users/a"}) == Path("/Users/a/.IdentityService")
    windows = default_identity_dir("win32", {"LOCALAPPDATA": r"C:\Users\a\AppData\Local", "HOME": "/x"})
    assert str(windows).replace("\\", "/").endswith("AppData/Local/.IdentityService")
    assert default_identity_dir("linux", {}) is None
    assert default_identity_dir("win32", {"HOME": "/x"}) is None


# -- the browser → device-code fallback ------------------------------------------------------------------------


class _RequiredError(Exception):
    """Stands in for azure-identity's AuthenticationRequiredError."""


class _UnavailableError(Exception):
    """Stands in for azure-identity's CredentialUnavailableError."""


class _Credential:
    """A browser or device-code credential made with ``disable_automatic_authentication=True``: ``get_token`` is
    silent or raises ``_RequiredError``; ``authenticate`` prompts (or fails as told)."""

    def __init__(self, name: str, *, cached: bool = False, fail: Exception | None = None) -> None:
        self.name, self.cached, self.fail = name, cached, fail
        self.prompts = 0
        self.closed = False

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        if not self.cached:
            raise _RequiredError
        return AccessToken(f"{self.name}-token", int(time.time()) + 3600)

    def authenticate(self, *, scopes: list[str], **kwargs: Any) -> str:
        self.prompts += 1
        if self.fail is not None:
            raise self.fail
        self.cached = True
        return f"record-of-{self.name}"

    def close(self) -> None:
        self.closed = True


def _sign_in(browser: _Credential | None, device: _Credential, *, remembered: bool = False) -> tuple[UserSignIn, list]:
    said: list[str] = []
    saved: list[str] = []
    credential = UserSignIn(
        browser,
        device,
        remembered=remembered,
        save=saved.append,
        notice=said.append,
        browser_timeout=2,
        unavailable=_UnavailableError,
        required=_RequiredError,
    )
    return credential, [said, saved]


def test_a_browser_that_never_redirects_falls_back_to_the_device_code() -> None:
    timed_out = ClientAuthenticationError("Timed out after waiting 2 seconds for the user to authenticate")
    browser, device = _Credential("browser", fail=timed_out), _Credential("device")
    credential, (said, saved) = _sign_in(browser, device)
    assert credential.get_token("scope").token == "device-token"
    assert said == ["The browser did not answer within 2 seconds: sign in with a device code instead."]
    assert saved == ["record-of-device"]
    assert credential.method == "device-code"
    assert credential.get_token("scope").token == "device-token"
    assert (browser.prompts, device.prompts) == (1, 1)  # the second call is silent
    credential.close()
    assert browser.closed
    assert device.closed


def test_no_browser_means_the_device_code_and_other_errors_are_not_swallowed() -> None:
    credential, (said, _) = _sign_in(
        _Credential("browser", fail=_UnavailableError("no browser")), _Credential("device")
    )
    assert credential.get_token("scope").token == "device-token"
    assert said == ["A browser cannot be opened here: sign in with a device code instead."]
    declined = ClientAuthenticationError("AADSTS65004: User declined to consent")
    device = _Credential("device")
    credential, _ = _sign_in(_Credential("browser", fail=declined), device)
    with pytest.raises(ClientAuthenticationError, match="AADSTS65004"):
        credential.get_token("scope")
    assert device.prompts == 0


def test_a_remembered_sign_in_is_silent_and_an_expired_one_prompts_again() -> None:
    browser = _Credential("browser", cached=True)
    credential, (said, saved) = _sign_in(browser, _Credential("device"), remembered=True)
    assert credential.get_token("scope").token == "browser-token"
    assert (browser.prompts, said, saved) == (0, [], [])
    expired = _Credential("browser", cached=False)
    credential, (_, saved) = _sign_in(expired, _Credential("device"), remembered=True)
    assert credential.get_token("scope").token == "browser-token"
    assert expired.prompts == 1
    assert saved == ["record-of-browser"]


# -- the CLI: flags, and sign-out over a real msal-extensions cache ---------------------------------------------


def test_a_bad_token_cache_mode_is_one_line_before_anything_else() -> None:
    result = run_cli(["fetch-config", "--auth", "device-code"], env={"DEFGUARD_ENTRA_TOKEN_CACHE": "plain"})
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        "error: DEFGUARD_ENTRA_TOKEN_CACHE='plain' is not a token cache mode: use auto, unencrypted, memory"
    ]
    result = run_cli(["fetch-config", "--browser-timeout", "0"])
    assert result.code == 2
    assert "--browser-timeout 0 is not allowed" in result.stderr


def test_sign_out_with_nothing_remembered_exits_0(tmp_path: Path) -> None:
    result = run_cli(["sign-out"], env={"HOME": str(tmp_path), "LOCALAPPDATA": str(tmp_path)})
    assert result.code == 0, result.stderr
    assert "nothing to forget" in result.stdout
    assert not (tmp_path / ".IdentityService").exists()  # nothing created either


def _plain_cache(is_cae: bool) -> Any:
    """This tool's named cache as azure-identity opens it, in a plain file (this machine has no libsecret)."""
    from azure.identity import TokenCachePersistenceOptions
    from azure.identity._persistent_cache import _load_persistent_cache

    options = TokenCachePersistenceOptions(name=CACHE_NAME, allow_unencrypted_storage=True)
    return _load_persistent_cache(options, is_cae=is_cae)


@pytest.mark.skipif(sys.platform != "linux", reason="the plain-file cache is what Linux without libsecret uses")
def test_sign_out_forgets_records_accounts_and_tokens_but_not_other_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # azure-identity finds its directory through ~
    directory = tmp_path / ".IdentityService"
    RecordStore(directory).save(KEY, _record())
    cache = _plain_cache(is_cae=True)
    kind = cache.CredentialType
    account = {
        "home_account_id": "alice-oid.tid-1",
        "environment": "login.microsoftonline.com",
        "realm": "tid-1",
        "local_account_id": "alice-oid",
        "username": "alice@contoso.com",
        "authority_type": "MSSTS",
    }
    refresh = {
        "credential_type": kind.REFRESH_TOKEN,
        "secret": "refresh-secret-value",
        "home_account_id": "alice-oid.tid-1",
        "environment": "login.microsoftonline.com",
        "client_id": CLIENT,
        "target": "User.Read",
    }
    cache.modify(kind.ACCOUNT, account, account)
    cache.modify(kind.REFRESH_TOKEN, refresh, refresh)
    cache_file = directory / f"{CACHE_NAME}.cae"
    assert "refresh-secret-value" in cache_file.read_text(encoding="utf-8")
    other_tool = directory / "msal.cache.nocae"
    other_tool.write_text("the Azure CLI's cache", encoding="utf-8")

    result = run_cli(["sign-out"], env={"HOME": str(tmp_path)})
    assert result.code == 0, result.stderr
    assert f"forgot the sign-in of alice@contoso.com (client {CLIENT}, tenant organizations)" in result.stdout
    assert "removed from the token cache: alice@contoso.com" in result.stdout
    assert not cache_file.exists()
    assert not list(directory.glob("*.record.json"))
    assert other_tool.read_text(encoding="utf-8") == "the Azure CLI's cache"
    assert "refresh-secret-value" not in result.stdout + result.stderr
    again = run_cli(["sign-out"], env={"HOME": str(tmp_path)})
    assert again.code == 0
    assert "nothing to forget" in again.stdout
