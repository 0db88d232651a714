"""What a sign-in puts on the console: azure-identity's and MSAL's lines only at ``-vv``, and there redacted; our
one line instead of azure-identity's "cache encryption is impossible"; the device-code instructions with ``-q``."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from msal.token_cache import TokenCache

from defguard_entra import RedactingFilter
from defguard_entra._credentials import NOT_REMEMBERED, MemoryCacheFallback
from defguard_entra._scopes import COMMAND_SCOPES, OPTIONAL_SCOPES
from defguard_entra.cli._console import Console, setup_logging

AUTH_CODE = "0.AXoA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvWxYz-_abc.def"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
DEVICE_CODE = "DAQABAAEAAAD--DLA3VO7QrddgJg7WevrQvKabc123"
REFRESH = "0.ARwA6WgJJ9X2qk-refresh-token-value-123456"


@pytest.fixture
def console_log() -> Iterator[tuple[io.StringIO, Any]]:
    stream = io.StringIO()
    handlers: list[logging.Handler] = []

    def setup(verbose: int, *, quiet: bool = False) -> None:
        handlers.append(setup_logging(verbose, stream, RedactingFilter(), quiet=quiet))

    yield stream, setup
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
    for name in ("azure", "msal", "httpx", "urllib3", "kiota_http", "stamina"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _sdk_lines() -> None:
    # the warnings azure-identity 1.27.0 logs on a failed sign-in (_internal/decorators.py, _credentials/chained.py)
    logging.getLogger("azure.identity._internal.decorators").warning(
        "DeviceCodeCredential.get_token failed: Authentication failed: AADSTS70016\nTrace ID: 1\nCorrelation ID: 2"
    )
    logging.getLogger("azure.identity._credentials.chained").warning("ChainedTokenCredential failed to retrieve")
    logging.getLogger("msal.application").warning("Region configured (x) != region detected (y)")
    logging.getLogger("msal_extensions.persistence").warning("persistence warning")


@pytest.mark.parametrize("verbose", [0, 1])
def test_sign_in_sdks_stay_off_the_console_below_vv(console_log: Any, verbose: int) -> None:
    stream, setup = console_log
    setup(verbose)
    _sdk_lines()
    logging.getLogger("defguard_entra._credentials").warning("ours")
    assert stream.getvalue() == "WARNING defguard_entra._credentials: ours\n"


def test_at_vv_the_sdks_lines_show(console_log: Any) -> None:
    stream, setup = console_log
    setup(2)
    _sdk_lines()
    assert "DeviceCodeCredential.get_token failed" in stream.getvalue()
    assert "persistence warning" in stream.getvalue()


def test_msal_token_cache_debug_event_is_redacted_at_vv(console_log: Any) -> None:
    """msal 1.39.0 (token_cache.py, ``TokenCache.add``) logs the token request's data at DEBUG, masking the
    password, secret, refresh token and assertion but not the authorization code, PKCE verifier or device code."""
    stream, setup = console_log
    setup(2)
    TokenCache().add(
        {
            "client_id": "14d82eec-204b-4c2f-b7e8-296a70dab67e",
            "scope": ["User.Read.All"],
            "token_endpoint": "https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
            "data": {"code": AUTH_CODE, "code_verifier": VERIFIER, "device_code": DEVICE_CODE},
            "response": {"token_type": "Bearer", "refresh_token": REFRESH},
        }
    )
    text = stream.getvalue()
    assert "event=" in text  # the real line was logged
    for secret in (AUTH_CODE, VERIFIER, DEVICE_CODE, REFRESH):
        assert secret not in text


@pytest.mark.parametrize(
    "line",
    [
        # msal 1.39.0 oauth2cli/authcode.py: the redirect the local server receives, as a dict and as its request line
        f"Got auth response: {{'code': '{AUTH_CODE}', 'state': 'aBcD', 'session_state': 'x', 'client_info': 'y'}}",
        f'"GET /?code={AUTH_CODE}&state=aBcD&session_state=x HTTP/1.1" 200 -',
        # an authorization URL and a token request body
        f"https://login.microsoftonline.com/o/oauth2/v2.0/authorize?code_challenge={VERIFIER}&code_challenge_method=S256",
        f"grant_type=refresh_token&refresh_token={REFRESH}&client_id=c",
        f"client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion={VERIFIER}",
        f'{{"user_code": "GH7K2LQPX", "device_code": "{DEVICE_CODE}", "id_token": "{REFRESH}"}}',
        f"client_secret={VERIFIER}",
    ],
)
def test_oauth_values_are_masked_in_every_format(line: str) -> None:
    out = RedactingFilter().redact(line)
    for secret in (AUTH_CODE, VERIFIER, DEVICE_CODE, REFRESH, "GH7K2LQPX"):
        assert secret not in out, out


def test_what_is_not_a_secret_stays_readable() -> None:
    f = RedactingFilter()
    for text in (
        '{"code": "Request_ResourceNotFound", "message": "gone"}',  # an OData error
        "To sign in to Microsoft Entra, open https://microsoft.com/devicelogin and enter the code GH7K2LQPX",
        "error_code=AADSTS70016 code_challenge_method=S256",
    ):
        assert f.redact(text) == text


def test_no_encrypted_store_is_one_line_of_ours_once(caplog: pytest.LogCaptureFixture) -> None:
    """azure-identity 1.27.0 (_persistent_cache.py) raises "Cache encryption is impossible…" on Linux without a
    usable libsecret; the fallback says it in our words, once, and signs in with a memory cache."""

    class Inner:
        def __init__(self, persist: bool) -> None:
            self.persist = persist

        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            if self.persist:
                msg = "Cache encryption is impossible because libsecret dependencies are not installed"
                raise ValueError(msg)
            return "token"

    fallback = MemoryCacheFallback(Inner)
    with caplog.at_level(logging.INFO, logger="defguard_entra"):
        assert fallback.get_token("s") == "token"
        assert fallback.get_token("s") == "token"
    lines = [r for r in caplog.records if r.name == "defguard_entra._credentials"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert lines[0].getMessage() == NOT_REMEMBERED
    assert "allow_unencrypted_storage" not in caplog.text


def test_device_code_instructions_show_with_quiet() -> None:
    err = io.StringIO()
    console = Console(io.StringIO(), err, RedactingFilter(), quiet=True)
    console.info("progress")
    console.notice("To sign in to Microsoft Entra, open https://microsoft.com/devicelogin and enter the code ABCD1234")
    assert err.getvalue() == (
        "To sign in to Microsoft Entra, open https://microsoft.com/devicelogin and enter the code ABCD1234\n"
    )


def test_the_definitions_scope_is_optional() -> None:
    """Not asked for: a tenant that did not consent it can still sign in (Entra adds every consented scope of the
    resource to the token anyway), and the run goes on with a note where the definitions cannot be read."""
    for scopes in COMMAND_SCOPES.values():
        assert not set(OPTIONAL_SCOPES) & set(scopes)
