"""What the Defguard core API answers, read into this project's values and exceptions; no HTTP library here.

:func:`decode` turns one answer into its JSON (or text) or into one of :mod:`.exceptions` (with the retry wait a
429's ``Wait for Ns`` or a ``Retry-After`` asks for); the ``read_*`` functions turn the 1.6.x and 2.x payloads into
:mod:`.models` values. The shapes, messages and versions are those of ``docs/reference/defguard-deployments.md``;
:mod:`._defguard` sends the requests.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs

from ._defguard_auth import DEFGUARD_AUTH_HINTS
from ._retry import Retryable, parse_retry_after
from .exceptions import (
    DefguardAlreadyActivatedError,
    DefguardAPIError,
    DefguardAuthError,
    DefguardUserDisabledError,
    UnexpectedResponseError,
)
from .models import DefguardUser, IssuedToken, Secret, TokenKind

__all__ = [
    "VERSION_HEADER",
    "Answer",
    "count_devices",
    "decode",
    "first_line",
    "issued_token",
    "normalised_url",
    "read_configuration",
    "read_info",
    "read_settings",
    "read_user",
    "read_user_pass",
]

#: The response header that carries the server's version, on every answer (the health check's included).
VERSION_HEADER = "defguard-component-version"
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_WAIT_FOR = re.compile(r"Wait for (\d+(?:\.\d+)?)s")
#: Answers that are about one user, not the token (the server's exact messages, v1.6.6 and v2.0.1).
_USER_DISABLED = "Enrollment user is disabled"
_ALREADY_ACTIVATED = "User account is already activated"


class Answer(Protocol):
    """The parts of an HTTP answer read here (a ``requests.Response`` has them)."""

    @property
    def status_code(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


# -- one answer ------------------------------------------------------------------------------------------------


def decode(method: str, url: str, response: Answer, *, expect_json: bool) -> Any:
    """A 2xx answer's JSON (its text when not ``expect_json``); any other answer raised as our exception, wrapped
    in :class:`~._retry.Retryable` when another try may help."""
    status = response.status_code
    content_type = response.headers.get("Content-Type", "")
    is_json = content_type.split(";")[0].strip().lower() == "application/json"
    if 200 <= status < 300:
        if not expect_json:
            return response.text
        # Defguard 2.x builds its paginated lists without a Content-Type (``Response::new(Body::from(json))``),
        # so a missing type is accepted when the body is JSON; an explicit other type (the web UI's text/html)
        # is the wrong-URL case and is refused.
        if not is_json and (content_type or not _looks_like_json(response.content)):
            raise UnexpectedResponseError(
                method,
                url,
                status,
                f"expected JSON, got {content_type or 'no content type'}",
                hint="the Defguard web UI answered instead of the API: check that --url is the Defguard "
                "core's base URL, without an extra path",
            )
        try:
            return response.json()
        except ValueError:
            raise UnexpectedResponseError(method, url, status, "the JSON body does not parse") from None
    message = _message(response, is_json=is_json)
    if 300 <= status < 400:
        raise DefguardAPIError(
            method,
            url,
            status,
            f"redirect to {response.headers.get('Location', '?')}",
            hint="use the final URL (often https://) as --url",
        )
    if status == 401 and message == _USER_DISABLED:
        raise DefguardUserDisabledError(method, url, status, message)
    if status == 400 and message == _ALREADY_ACTIVATED:
        raise DefguardAlreadyActivatedError(method, url, status, message)
    if status in {401, 403}:
        raise DefguardAuthError(method, url, status, message, hint=DEFGUARD_AUTH_HINTS.get(message))
    error = DefguardAPIError(method, url, status, message)
    if status in _RETRYABLE_STATUS:
        match = _WAIT_FOR.search(message) if status == 429 else None
        wait = float(match.group(1)) if match else parse_retry_after(response.headers.get("Retry-After"))
        # tower_governor truncates its wait to whole seconds, so "Wait for 0s" means "within a second", not
        # "now": the jittered back-off decides instead of every worker retrying at once.
        raise Retryable(error, wait or None)
    raise error


def _looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in {b"{", b"["}


def _message(response: Answer, *, is_json: bool) -> str:
    if is_json:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("msg"), str):
            return str(payload["msg"])
    text = response.text.strip()
    if "<html" in text[:200].lower():
        return f"HTTP {response.status_code} {response.reason} (HTML page)"
    return text[:300] or f"HTTP {response.status_code} {response.reason}"


def first_line(exc: BaseException) -> str:
    """An exception in one line: its message's first line, or its type when it has no message."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- payloads --------------------------------------------------------------------------------------------------


def read_user_pass(
    fetch: Callable[[int], Any], workers: int, seen: set[Any], totals: list[Any]
) -> Iterator[DefguardUser]:
    """One read of every page of ``GET /api/v1/user`` (``fetch(page)``; 2.x's pages after the first by up to
    ``workers`` threads, see :meth:`~._defguard.DefguardClient.iter_users`): the users not in ``seen`` yet; each
    page's ``total_items`` goes to ``totals``."""
    first = fetch(1)
    if isinstance(first, list):  # 1.6.x: the whole list, no paging
        pages: list[Any] = [first]
    else:
        total = _pagination(first, "total_pages")
        rest = range(2, total + 1) if isinstance(total, int) and total > 1 else range(0)
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(rest)))) as pool:
            pages = [first, *pool.map(fetch, rest)]
    page = len(pages)
    while True:
        for payload in pages:
            rows = payload if isinstance(payload, list) else payload.get("data") or []
            if not isinstance(payload, list):
                totals.append(_pagination(payload, "total_items"))
            for row in rows:
                key = row.get("id", row.get("username"))
                if key in seen:  # 2.x pages use LIMIT/OFFSET without ORDER BY
                    continue
                seen.add(key)
                yield DefguardUser.from_api(row)
        next_page = _pagination(pages[-1], "next_page")
        if not isinstance(next_page, int) or next_page <= page:
            return
        page = next_page
        pages = [fetch(page)]


def _pagination(payload: Any, key: str) -> Any:
    """``key`` of a 2.x user page's ``pagination``; ``None`` for 1.6.x's unpaged list."""
    return None if isinstance(payload, list) else (payload.get("pagination") or {}).get(key)


def read_user(details: Any, url: str) -> DefguardUser:
    """``GET /api/v1/user/{username}`` → the user, with its device count (1.6: the devices beside the user)."""
    row = details.get("user") if isinstance(details, Mapping) else None
    if not isinstance(row, Mapping):
        raise UnexpectedResponseError("GET", url, 200, "no user in the answer")
    user = DefguardUser.from_api(row)
    if user.devices is None and isinstance(details.get("devices"), list):  # 1.6: devices beside the user
        user = attrs.evolve(user, devices=len(details["devices"]))
    return user


def count_devices(rows: Any) -> dict[int, int]:
    """``GET /api/v1/device`` → user devices per user id (network devices are not counted)."""
    counts: dict[int, int] = {}
    for row in rows if isinstance(rows, list) else []:
        owner = row.get("user_id") if isinstance(row, Mapping) else None
        if isinstance(owner, int) and row.get("device_type", "user") == "user":
            counts[owner] = counts.get(owner, 0) + 1
    return counts


def read_info(info: Any) -> tuple[bool | None, bool | None]:
    """``GET /api/v1/info`` → whether an OpenID provider is configured and whether LDAP is on (``None``: not said)."""
    if not isinstance(info, Mapping):
        return None, None
    value = info.get("external_openid_enabled")
    ldap_info = info.get("ldap_info")
    enabled = ldap_info.get("enabled") if isinstance(ldap_info, Mapping) else None
    return (value if isinstance(value, bool) else None), (enabled if isinstance(enabled, bool) else None)


def read_settings(settings: Any) -> tuple[str | None, dt.timedelta | None, str | None]:
    """2.x ``GET /api/v1/settings`` → the enrollment URL (as the token endpoints will send it), the default token
    lifetime, and what is wrong with the URL, if anything (the URL is then given as stored)."""
    raw = settings.get("public_proxy_url") if isinstance(settings, Mapping) else None
    url = normalised_url(raw) if isinstance(raw, str) else None
    hours = settings.get("enrollment_token_timeout_hours") if isinstance(settings, Mapping) else None
    lifetime = None
    if isinstance(hours, int) and not isinstance(hours, bool) and hours >= 0:
        lifetime = dt.timedelta(hours=hours)
    if isinstance(raw, str) and url is None:
        return raw, lifetime, f"public proxy URL {raw!r} is not a URL"
    return url, lifetime, None


def read_configuration(dump: Any) -> str | None:
    """1.6 ``GET /api/v1/support/configuration`` → the enrollment URL."""
    config = dump.get("config") if isinstance(dump, Mapping) else None
    raw = config.get("enrollment_url") if isinstance(config, Mapping) else None
    return raw if isinstance(raw, str) else None


def normalised_url(raw: str) -> str | None:
    """A URL as the ``url`` crate serialises it for the token endpoints: an http(s) URL with an empty path gains a
    trailing ``/``. ``None`` when it does not parse as an absolute URL."""
    parts = urlsplit(raw.strip())
    if not parts.scheme or not parts.netloc:
        return None
    return raw.strip() + "/" if parts.scheme in {"http", "https"} and not parts.path else raw.strip()


def issued_token(payload: Any, kind: TokenKind, expires: dt.datetime | None, retries: int, *, base: str) -> IssuedToken:
    """A token endpoint's answer → the token it minted (``base``: the server's URL, for the error)."""
    try:
        token, url = str(payload["enrollment_token"]), str(payload["enrollment_url"])
    except (KeyError, TypeError):
        raise UnexpectedResponseError("POST", base, 201, "no enrollment_token/enrollment_url in the answer") from None
    return IssuedToken(Secret(token), url, kind, expires, retries)
