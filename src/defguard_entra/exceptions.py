"""The exception hierarchy: one root, a branch per service.

Per-member problems (no Entra match, an ambiguous match, a failed write) are not exceptions: they are
:class:`~defguard_entra.models.Outcome` values in the report. Exceptions are for what stops a whole run.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = [
    "ClientConfigError",
    "ConfigurationError",
    "DefguardAPIError",
    "DefguardAlreadyActivatedError",
    "DefguardAuthError",
    "DefguardEntraError",
    "DefguardError",
    "DefguardNotSentError",
    "DefguardUnreachableError",
    "DefguardUserDisabledError",
    "EntraAPIError",
    "EntraAuthError",
    "EntraError",
    "PreflightError",
    "ServiceStateError",
    "UnexpectedResponseError",
]


class DefguardEntraError(Exception):
    """Root of every error this library raises on purpose."""


class ConfigurationError(DefguardEntraError):
    """Settings, flags or environment are wrong; raised before any request is sent."""


class ClientConfigError(DefguardEntraError):
    """No ``provisioning.json`` was written (``fetch-config``, :func:`write_provisioning_file`).

    ``reason`` says why: ``"missing"`` (Graph returned no values: not assigned yet, or the caller may not read
    them; Graph answers both the same way), ``"incomplete"`` (only one of the URL and token, or an invalid URL) or
    ``"exists"`` (a file with different content is in the way and ``force`` was not given). The message never
    contains the token.
    """

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (str(self), self.reason))


class PreflightError(DefguardEntraError):
    """A precondition of the run does not hold (group missing, attribute set missing, …); nothing was changed."""


class ServiceStateError(DefguardEntraError, RuntimeError):
    """A service used in a way its state does not allow: closed already, or driven from two event loops (the sync
    forms run on a private loop; the async forms on the caller's): use one style per service instance."""


class DefguardError(DefguardEntraError):
    """Anything that went wrong talking to Defguard."""


#: What stopped a request before the service could judge it (``cause`` of :class:`DefguardUnreachableError` and
#: :class:`EntraError`): ``unreachable`` (DNS, refused, timeout), ``tls`` (certificate), ``proxy`` (the proxy
#: refused: 407 or no tunnel), ``tool`` (a sign-in tool such as ``az`` is missing), ``token`` (expired or revoked
#: token or secret, not signed in), ``consent`` (no consent for the app or scope), ``None`` when not known.
CAUSES = ("unreachable", "tls", "proxy", "tool", "token", "consent")


class DefguardUnreachableError(DefguardError):
    """Network, TLS or timeout failure: no HTTP answer from Defguard; ``cause`` says which (see :data:`CAUSES`)."""

    cause: str | None = None

    def __init__(self, *args: object, cause: str | None = None) -> None:
        super().__init__(*args)
        if cause is not None:
            self.cause = cause


class DefguardNotSentError(DefguardError):
    """A token request that was never sent: the caller's ``proceed()`` said stop while it waited for its place
    among the requests in flight (a run halted meanwhile). Nothing changed on the server."""


class DefguardAPIError(DefguardError):
    """Defguard answered with an error status.

    ``status`` is the HTTP status, ``message`` the server's ``msg`` (or the text body), ``method`` and ``url``
    what was asked (the URL never carries a secret).
    """

    def __init__(self, method: str, url: str, status: int, message: str, hint: str | None = None) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"Defguard {self.method} {self.url} → {self.status}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def __reduce__(self) -> tuple[type, tuple[str, str, int, str, str | None]]:
        return (type(self), (self.method, self.url, self.status, self.message, self.hint))


class DefguardAuthError(DefguardAPIError):
    """401/403: the API token is unknown, revoked, not an admin's, or ignored (license gate off)."""


class DefguardUserDisabledError(DefguardAPIError):
    """401 ``Enrollment user is disabled`` from a token request: about that one user (disabled since the user list
    was read, e.g. by directory sync), not about the API token."""


class DefguardAlreadyActivatedError(DefguardAPIError):
    """400 ``User account is already activated`` from ``start_enrollment``: Defguard counts the user as activated
    (1.6: has a password; 2.x: ``is_enrolled()``). Nothing changed on the server; ``start_desktop`` still works."""


class UnexpectedResponseError(DefguardAPIError):
    """A 2xx answer that is not JSON: usually the web UI answering a wrong path (check the URL)."""


class EntraError(DefguardEntraError):
    """Anything that went wrong talking to Microsoft Graph; ``cause`` is one of :data:`CAUSES` when known."""

    cause: str | None = None

    def __init__(self, *args: object, cause: str | None = None) -> None:
        super().__init__(*args)
        if cause is not None:
            self.cause = cause


class EntraAuthError(EntraError):
    """No access token could be acquired for Microsoft Graph, or Graph refused it (401)."""


class EntraAPIError(EntraError):
    """Graph answered with an error: ``status``, and ``code``/``message`` from the OData error envelope."""

    def __init__(self, status: int, code: str, message: str, *, method: str = "", url: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        self.method = method
        self.url = url
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.url} → " if self.method else ""
        return f"Graph {where}{self.status} {self.code}: {self.message}"

    def __reduce__(self) -> tuple[Any, tuple[int, str, str]]:
        # Pickled whole (multiprocessing, a notebook's parallel map): ``method`` and ``url`` are keyword-only.
        return (functools.partial(type(self), method=self.method, url=self.url), (self.status, self.code, self.message))
