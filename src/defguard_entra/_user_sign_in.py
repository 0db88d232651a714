"""A user's sign-in: silent from the token cache when an earlier sign-in is remembered, else the browser, and a
device code when the browser cannot be opened or does not answer in time.

Built by :mod:`._credentials` from azure-identity's ``InteractiveBrowserCredential`` and ``DeviceCodeCredential``
(created with ``disable_automatic_authentication=True``, so ``get_token`` never prompts by itself: it is silent
from the cache or raises ``AuthenticationRequiredError``); this module only composes them, so it never imports
azure-identity (the exception classes are handed in).

Why not azure-identity's ``ChainedTokenCredential``: it moves on only when a credential is *unavailable*; a browser
that opened nothing (``webbrowser`` reports success for ``gio open`` with a display but no browser) ends in a
``ClientAuthenticationError`` after the browser credential's ``timeout`` (``azure/identity/_credentials/browser.py``,
1.27.0), and the chain stops there. ``authenticate`` returns the ``AuthenticationRecord`` that is saved so the next
run is silent (Microsoft Learn, "Persist user authentication record", azure-identity for Python).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

__all__ = ["BROWSER_TIMED_OUT", "UserSignIn"]

log = logging.getLogger(__name__)

#: The start of the browser credential's error when no redirect came within its ``timeout`` (browser.py, 1.27.0).
BROWSER_TIMED_OUT = "Timed out after waiting"


class UserSignIn:
    """``get_token`` for a user: silent while a sign-in is remembered; else ``authenticate`` with the browser, then
    the device code. Each new sign-in's record goes to ``save`` (when given). Thread-safe: one prompt at a time."""

    def __init__(
        self,
        browser: Any,
        device: Any,
        *,
        remembered: bool,
        save: Callable[[Any], None] | None,
        notice: Callable[[str], None],
        browser_timeout: float,
        unavailable: type[Exception],
        required: type[Exception],
    ) -> None:
        self._browser, self._device = browser, device
        #: The credential whose cache holds the sign-in (with a persistent cache both share it; in memory, not).
        self._active = browser if browser is not None else device
        self._signed_in = remembered
        self._save, self._notice, self._timeout = save, notice, browser_timeout
        self._unavailable, self._required = unavailable, required
        self._lock = threading.Lock()
        #: How the last interactive sign-in went: ``browser``, ``device-code`` (tests and the report read it).
        self.method: str | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        with self._lock:
            if self._signed_in:
                try:
                    token: AccessToken = self._active.get_token(*scopes, **kwargs)
                except self._required:
                    log.info("the remembered sign-in needs the user again (refresh token expired or revoked)")
                else:
                    return token
            record = self._authenticate(scopes, kwargs)
            self._signed_in = True
            if self._save is not None:
                try:
                    self._save(record)
                except (OSError, ValueError) as exc:
                    log.warning("could not remember the sign-in for the next run: %s", exc)
            return cast("AccessToken", self._active.get_token(*scopes, **kwargs))  # silent: authenticate cached it

    def _authenticate(self, scopes: Sequence[str], kwargs: dict[str, Any]) -> Any:
        options = {k: kwargs[k] for k in ("claims", "tenant_id", "enable_cae") if kwargs.get(k)}
        if self._browser is not None:
            try:
                record = self._browser.authenticate(scopes=list(scopes), **options)
            except self._unavailable as exc:  # no browser, no free port: a device code, as a chain would
                log.info("the browser sign-in is unavailable: %s", exc)
                self._notice("A browser cannot be opened here: sign in with a device code instead.")
            except ClientAuthenticationError as exc:
                if BROWSER_TIMED_OUT not in (exc.message or str(exc)):
                    raise
                self._notice(
                    f"The browser did not answer within {self._timeout:g} seconds: sign in with a device code instead."
                )
            else:
                self._active, self.method = self._browser, "browser"
                return record
        record = self._device.authenticate(scopes=list(scopes), **options)
        self._active, self.method = self._device, "device-code"
        return record

    def close(self) -> None:
        for credential in (self._browser, self._device):
            close = getattr(credential, "close", None)
            if callable(close):
                close()

    def __repr__(self) -> str:
        return f"UserSignIn(browser={self._browser is not None})"
