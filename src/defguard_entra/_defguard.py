"""DefguardClient: the Defguard core REST API over ``requests`` (the only module that imports it).

One chokepoint (:meth:`DefguardClient._call`) builds every URL (exactly one ``/`` between parts, every path
segment quoted), sends auth and User-Agent per request (never written into a borrowed session), applies the
timeout, retries what is worth retrying (with ``stamina``, honouring Defguard 2.x's ``Wait for Ns``), and maps
every failure to this project's exceptions. Works with both API lines (1.6.x and 2.x): see ``defguard-api.md``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self
from urllib.parse import quote

import requests
import stamina
from requests.adapters import HTTPAdapter

from ._durations import format_for_defguard
from ._retry import Retryable, RetryPolicy, parse_retry_after
from ._version import __version__
from .config import validate_defguard_url
from .exceptions import (
    DefguardAPIError,
    DefguardAuthError,
    DefguardUnreachableError,
    UnexpectedResponseError,
)
from .models import DefguardGroup, DefguardServer, DefguardUser, IssuedToken, Secret, TokenKind

__all__ = ["DefguardClient"]

log = logging.getLogger(__name__)

USER_AGENT = f"defguard-entra/{__version__} (+python-requests/{requests.__version__})"
VERSION_HEADER = "defguard-component-version"
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_WAIT_FOR = re.compile(r"Wait for (\d+(?:\.\d+)?)s")

_AUTH_HINTS = {
    "Session is required": (
        "the API token was ignored: Defguard honours API tokens only with an active Business license "
        "(1.6.x: or under the free limits), so the server fell back to asking for a browser session"
    ),
    "Invalid API token": "the token is unknown, revoked, or its owner is disabled: create a new one in Defguard",
    "Invalid auth header": "the token is malformed: it should look like dg-<32 letters and digits>",
    "Token authentication is not allowed for normal users": (
        "the token's owner is no longer a Defguard admin: use a token of an admin user"
    ),
}


class DefguardClient:
    """A synchronous client of the Defguard core API, usable as a context manager.

    ``session`` may be injected (it is then borrowed: never closed, never given our headers); ``ca_bundle`` is a
    path to a PEM file for a private CA (TLS verification cannot be turned off). ``pool_size`` sizes the
    connection pool of a session we create, for parallel token requests; ``proxy`` is the proxy URL to use
    (environment variables are not consulted: see :func:`defguard_entra.config.proxy_for`).
    """

    def __init__(
        self,
        url: str,
        token: Secret | str,
        *,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        ca_bundle: str | None = None,
        retry: RetryPolicy | None = None,
        pool_size: int = 16,
        proxy: str | None = None,
    ) -> None:
        self._base = validate_defguard_url(url)
        self._token = token if isinstance(token, Secret) else Secret(token)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # requests re-reads proxy, netrc and CA variables from the environment on every request (~1 ms each,
            # 40 % of a token request's client CPU); the CLI reads them once and passes ``proxy`` instead.
            session.trust_env = False
            if proxy:
                session.proxies = {"http": proxy, "https": proxy}
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(4, pool_size))
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session
        self._timeout = timeout
        self._verify: bool | str = ca_bundle or True
        self.retry = retry if retry is not None else RetryPolicy()
        self._server: DefguardServer | None = None
        self._page_workers = max(1, min(8, pool_size))
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self._base

    # -- API -------------------------------------------------------------------------------------------------

    def server(self) -> DefguardServer:
        """The server's version (from the unauthenticated health check); cached."""
        if self._server is None:
            self._call("GET", "health", auth=False, expect_json=False)
        if self._server is None:
            raise UnexpectedResponseError(
                "GET",
                self._endpoint("health"),
                200,
                f"no {VERSION_HEADER} header",
                hint="this does not look like a Defguard core: check --url",
            )
        return self._server

    def me(self) -> DefguardUser:
        """The API token's owner; the cheapest way to check the token."""
        return DefguardUser.from_api(self._call("GET", "me"))

    def groups(self) -> list[DefguardGroup]:
        """Every group with its members (``/group-info``: same on 1.6.x and 2.x)."""
        return [DefguardGroup.from_api(row) for row in self._call("GET", "group-info")]

    def find_group(self, name: str) -> DefguardGroup | None:
        """The group whose name equals ``name`` exactly (case-sensitive), or ``None``."""
        for group in self.groups():
            if group.name == name:
                return group
        return None

    def iter_users(self) -> Iterator[DefguardUser]:
        """Every user, disabled ones included: one request on 1.6.x, one per 100 users on 2.x.

        On 2.x the first page says how many there are; the others are fetched a few at a time in parallel (a
        5,000-user directory is 50 round trips), then ``next_page`` is followed in case the list grew meanwhile.
        """
        seen: set[Any] = set()
        first = self._users_page(1)
        if isinstance(first, list):  # 1.6.x: the whole list, no paging
            pages: list[Any] = [first]
        else:
            total = (first.get("pagination") or {}).get("total_pages")
            rest = range(2, total + 1) if isinstance(total, int) and total > 1 else range(0)
            with ThreadPoolExecutor(max_workers=max(1, min(self._page_workers, len(rest)))) as pool:
                pages = [first, *pool.map(self._users_page, rest)]
        page = len(pages)
        while True:
            for payload in pages:
                rows = payload if isinstance(payload, list) else payload.get("data") or []
                for row in rows:
                    key = row.get("id", row.get("username"))
                    if key in seen:  # 2.x pages use LIMIT/OFFSET without ORDER BY
                        continue
                    seen.add(key)
                    yield DefguardUser.from_api(row)
            last = pages[-1]
            next_page = None if isinstance(last, list) else (last.get("pagination") or {}).get("next_page")
            if not isinstance(next_page, int) or next_page <= page:
                return
            page = next_page
            pages = [self._users_page(page)]

    def _users_page(self, page: int) -> Any:
        return self._call("GET", "user", params={"page": str(page), "per_page": "100"})

    def users(self) -> dict[str, DefguardUser]:
        """Every user by username."""
        return {u.username: u for u in self.iter_users()}

    def start_enrollment(self, username: str, lifetime: dt.timedelta | None = None) -> IssuedToken:
        """Mint an enrollment token (no e-mail is sent). Deletes the user's earlier unused tokens."""
        body: dict[str, Any] = {"email": None, "send_enrollment_notification": False}
        if lifetime is not None:
            body["token_expiration_time"] = format_for_defguard(lifetime)
        started = dt.datetime.now(dt.UTC)
        payload, retries = self._call_counted("POST", "user", username, "start_enrollment", json=body)
        expires = started + lifetime if lifetime is not None else None
        return self._issued(payload, TokenKind.ENROLLMENT, expires, retries)

    def start_desktop(self, username: str) -> IssuedToken:
        """Mint a desktop-configuration token for an enrolled user (the server's default lifetime applies)."""
        payload, retries = self._call_counted(
            "POST", "user", username, "start_desktop", json={"email": None, "send_enrollment_notification": False}
        )
        return self._issued(payload, TokenKind.DESKTOP, None, retries)

    # -- the chokepoint --------------------------------------------------------------------------------------

    def _endpoint(self, *segments: str) -> str:
        return "/".join([self._base, "api/v1", *(quote(s, safe="") for s in segments)])

    def _issued(self, payload: Any, kind: TokenKind, expires: dt.datetime | None, retries: int) -> IssuedToken:
        try:
            token, url = str(payload["enrollment_token"]), str(payload["enrollment_url"])
        except (KeyError, TypeError):
            raise UnexpectedResponseError(
                "POST", self._base, 201, "no enrollment_token/enrollment_url in the answer"
            ) from None
        return IssuedToken(Secret(token), url, kind, expires, retries)

    def _call(self, method: str, *segments: str, **options: Any) -> Any:
        """:meth:`_call_counted` without the retry count."""
        return self._call_counted(method, *segments, **options)[0]

    def _call_counted(
        self,
        method: str,
        *segments: str,
        auth: bool = True,
        expect_json: bool = True,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> tuple[Any, int]:
        """Send with retries; the decoded body and how many retries it took."""
        url = self._endpoint(*segments)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token.value}"
        try:
            for attempt in stamina.retry_context(**self.retry.stamina_options()):
                with attempt:
                    return self._once(method, url, headers, params, json, expect_json=expect_json), attempt.num - 1
        except Retryable as exc:  # attempts or time ran out
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        body: Any,
        *,
        expect_json: bool,
    ) -> Any:
        timeout = (min(10.0, self._timeout), self._timeout)
        payload = body if method != "GET" else None
        try:
            if self._owns_session:
                # Our own session has no cookies, hooks, auth or default headers to merge, so the request goes
                # straight to the connection adapter: Session.request's merging costs ~0.3 ms of CPU per call,
                # a quarter of a token request's client cost. A borrowed session keeps its full behaviour.
                prepared = requests.PreparedRequest()
                prepared.prepare(method=method, url=url, headers=dict(headers), params=params, json=payload)
                response = self._session.get_adapter(url).send(
                    prepared, timeout=timeout, verify=self._verify, proxies=self._session.proxies
                )
                _ = response.content  # read now: releases the connection to the pool
            else:
                response = self._session.request(
                    method,
                    url,
                    headers=headers,
                    params=params,
                    json=payload,
                    timeout=timeout,
                    verify=self._verify,
                    allow_redirects=False,
                )
        except requests.exceptions.SSLError as exc:
            raise DefguardUnreachableError(
                f"TLS verification of {self._base} failed: {_first_line(exc)} (for a private CA, pass --ca-bundle PATH)"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            error = DefguardUnreachableError(f"cannot reach Defguard at {self._base}: {_first_line(exc)}")
            raise Retryable(error, None) from None
        except requests.RequestException as exc:
            raise DefguardUnreachableError(f"request to Defguard failed: {_first_line(exc)}") from None
        version = response.headers.get(VERSION_HEADER)
        if version and self._server is None:
            with self._lock:
                self._server = DefguardServer(version)
        return self._decode(method, url, response, expect_json=expect_json)

    def _decode(self, method: str, url: str, response: requests.Response, *, expect_json: bool) -> Any:
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
        if status in {401, 403}:
            raise DefguardAuthError(method, url, status, message, hint=_AUTH_HINTS.get(message))
        error = DefguardAPIError(method, url, status, message)
        if status in _RETRYABLE_STATUS:
            match = _WAIT_FOR.search(message) if status == 429 else None
            wait = float(match.group(1)) if match else parse_retry_after(response.headers.get("Retry-After"))
            raise Retryable(error, wait)
        raise error


def _looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in {b"{", b"["}


def _message(response: requests.Response, *, is_json: bool) -> str:
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


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
