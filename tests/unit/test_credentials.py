"""Sign-in plumbing that can be exercised without a tenant: token caching, static tokens, cache fallback."""

from __future__ import annotations

import time
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from defguard_entra._credentials import CachingCredential, MemoryCacheFallback, StaticTokenCredential, graph_scopes
from defguard_entra.config import AuthMode, Cloud, GraphSettings
from defguard_entra.exceptions import EntraAuthError
from defguard_entra.models import Secret


class _Azure:
    """Stands in for an azure-identity credential (we never reach a real sign-in service in tests)."""

    def __init__(self, *, persist: bool, fail: Exception | None = None) -> None:
        self.persist, self.fail, self.calls, self.closed = persist, fail, 0, False

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return AccessToken(f"tok-{self.calls}", int(time.time()) + 3600)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    "error",
    [
        ValueError("Cache encryption is impossible because libsecret dependencies are not installed"),
        ClientAuthenticationError("ChainedTokenCredential failed: Cache encryption is impossible because ..."),
    ],
)
def test_no_encrypted_cache_falls_back_to_memory(error: Exception) -> None:
    made: list[_Azure] = []

    def make(persist: bool) -> _Azure:
        made.append(_Azure(persist=persist, fail=error if persist else None))
        return made[-1]

    credential = MemoryCacheFallback(make)
    assert credential.get_token("scope").token == "tok-1"
    assert credential.persistent is False
    assert [c.persist for c in made] == [True, False]
    assert made[0].closed


def test_other_sign_in_errors_are_not_swallowed() -> None:
    credential = MemoryCacheFallback(lambda persist: _Azure(persist=persist, fail=ClientAuthenticationError("denied")))
    with pytest.raises(ClientAuthenticationError):
        credential.get_token("scope")
    assert credential.persistent is True


def test_caching_credential_reuses_a_token_and_maps_errors() -> None:
    inner = _Azure(persist=False)
    credential = CachingCredential(inner)
    assert credential.get_token("a").token == credential.get_token("a").token
    assert inner.calls == 1
    failing = CachingCredential(_Azure(persist=False, fail=ClientAuthenticationError("AADSTS50076: MFA required")))
    with pytest.raises(EntraAuthError, match="AADSTS50076"):
        failing.get_token("a")


def test_static_token_never_shows_in_repr() -> None:
    credential = StaticTokenCredential(Secret("eyJ0eXAi.secret.value"))
    assert "secret" not in repr(credential)
    assert credential.get_token("x").token == "eyJ0eXAi.secret.value"


def test_scopes_least_privilege_for_users_default_for_apps() -> None:
    delegated = GraphSettings(auth=AuthMode.INTERACTIVE)
    assert graph_scopes(delegated, ["User.Read.All"]) == ["https://graph.microsoft.com/User.Read.All"]
    app = GraphSettings(auth=AuthMode.ENVIRONMENT, cloud=Cloud.USGOV)
    assert graph_scopes(app, ["User.Read.All"]) == ["https://graph.microsoft.us/.default"]
    china = GraphSettings(auth=AuthMode.DEVICE_CODE, cloud=Cloud.CHINA)
    assert graph_scopes(china, ["User.Read"]) == ["https://microsoftgraph.chinacloudapi.cn/User.Read"]


# -- the service principal's secret (AZURE_CLIENT_SECRET) ----------------------------------------------------------


def test_client_secret_is_a_secret_that_repr_never_shows() -> None:
    from defguard_entra.config import Settings

    secret = "s3cr3t-client-value"
    settings = Settings.from_env({"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": secret})
    assert settings.graph.client_secret == Secret(secret)
    assert "AZURE_CLIENT_SECRET" not in settings.graph.environment  # held once, as a Secret
    assert settings.graph.resolved_auth() is AuthMode.ENVIRONMENT
    assert secret not in repr(settings) + str(settings) + repr(settings.graph)
    assert Settings.from_env({"AZURE_CLIENT_SECRET": ""}).graph.client_secret is None


def test_client_secret_accepts_a_plain_string_or_the_environment_mapping() -> None:
    assert GraphSettings(client_secret="plain").client_secret == Secret("plain")
    assert GraphSettings(client_secret=Secret("kept")).client_secret == Secret("kept")
    assert GraphSettings(client_secret="").client_secret is None
    moved = GraphSettings(environment={"AZURE_CLIENT_SECRET": "from-env", "AZURE_TENANT_ID": "t"})
    assert moved.client_secret == Secret("from-env")
    assert dict(moved.environment) == {"AZURE_TENANT_ID": "t"}
    explicit = GraphSettings(client_secret="explicit", environment={"AZURE_CLIENT_SECRET": "from-env"})
    assert explicit.client_secret == Secret("explicit")  # the explicit one wins
    assert "from-env" not in repr(moved) + repr(explicit)


def test_build_credential_unwraps_the_client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.identity

    from defguard_entra._credentials import build_credential

    seen: list[tuple[Any, ...]] = []

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(args)

    monkeypatch.setattr(azure.identity, "ClientSecretCredential", Recorder)
    settings = GraphSettings(auth=AuthMode.ENVIRONMENT, tenant_id="t", client_id="c", client_secret="the-secret")
    credential = build_credential(settings)
    assert isinstance(credential.inner, Recorder)
    assert seen == [("t", "c", "the-secret")]  # the plain value, for azure-identity only
