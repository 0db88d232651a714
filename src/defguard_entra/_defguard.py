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
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self
from urllib.parse import quote, urlsplit

import attrs
import requests
import stamina
from requests.adapters import HTTPAdapter

from ._defguard_auth import DEFGUARD_AUTH_HINTS
from ._durations import format_for_defguard
from ._retry import Retryable, RetryPolicy, parse_retry_after
from ._version import __version__
from .config import validate_defguard_url
from .exceptions import (
    DefguardAlreadyActivatedError,
    DefguardAPIError,
    DefguardAuthError,
    DefguardUnreachableError,
    DefguardUserDisabledError,
    UnexpectedResponseError,
)
from .models import DefguardDeployment, DefguardGroup, DefguardServer, DefguardUser, IssuedToken, Secret, TokenKind

__all__ = ["DefguardClient"]

log = logging.getLogger(__name__)

USER_AGENT = f"defguard-entra/{__version__} (+python-requests/{requests.__version__})"
VERSION_HEADER = "defguard-component-version"
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_WAIT_FOR = re.compile(r"Wait for (\d+(?:\.\d+)?)s")
#: A 500 is Defguard's answer to a database or model error, usually permanent (2.x answers it to every token request
#: while its public proxy URL does not parse): one more try, not a whole back-off.
_SERVER_ERROR_TRIES = 2
#: How long a refused connection (or an unknown host) is retried: a dead server is declared dead in seconds.
_REFUSED_GIVE_UP = 2.0
#: Tries of one request that time out (each costs a whole --timeout).
_TIMEOUT_TRIES = 2
#: Full re-reads of 2.x's unordered user pages when fewer distinct users came back than ``total_items``.
_USER_LIST_PASSES = 3
#: Answers that are about one user, not the token (the server's exact messages, v1.6.6 and v2.0.1).
_USER_DISABLED = "Enrollment user is disabled"
_ALREADY_ACTIVATED = "User account is already activated"


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
        self._server_lifetime: dt.timedelta | None = None
        self._pacer = _Pacer()

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
        The pages are unordered (LIMIT/OFFSET without ORDER BY), so a user updated between two page reads can be
        skipped: when fewer distinct users came back than ``total_items``, the pages are read again (at most
        ``_USER_LIST_PASSES`` times in all). Users come without device counts on 1.6 (see :meth:`users`).
        """
        seen: set[Any] = set()
        for _ in range(_USER_LIST_PASSES):
            totals: list[Any] = []
            yield from self._user_pass(seen, totals)
            total = totals[-1] if totals else None
            if not isinstance(total, int) or len(seen) >= total:
                return
            log.info("Defguard listed %d of %d users (unordered pages): reading the pages again", len(seen), total)

    def _user_pass(self, seen: set[Any], totals: list[Any]) -> Iterator[DefguardUser]:
        """One read of every page: the users not in ``seen`` yet; each page's ``total_items`` goes to ``totals``."""
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
                if not isinstance(payload, list):
                    totals.append((payload.get("pagination") or {}).get("total_items"))
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
        """Every user by username, each with its device count (2.x: from the user list; 1.6: one more request,
        ``GET /api/v1/device``, whose rows name their owner by ``user_id``)."""
        users = {u.username: u for u in self.iter_users()}
        if any(u.devices is None for u in users.values()):
            counts = self.device_counts()
            users = {
                name: u if u.devices is not None else attrs.evolve(u, devices=counts.get(u.id, 0) if u.id else None)
                for name, u in users.items()
            }
        return users

    def device_counts(self) -> dict[int, int]:
        """User devices per user id, from ``GET /api/v1/device`` (admin; network devices are not counted)."""
        counts: dict[int, int] = {}
        rows = self._call("GET", "device")
        for row in rows if isinstance(rows, list) else []:
            owner = row.get("user_id") if isinstance(row, Mapping) else None
            if isinstance(owner, int) and row.get("device_type", "user") == "user":
                counts[owner] = counts.get(owner, 0) + 1
        return counts

    def user(self, username: str) -> DefguardUser | None:
        """One user with its device count (``GET /api/v1/user/{username}``), or ``None`` if there is none."""
        try:
            details = self._call("GET", "user", username)
        except DefguardAPIError as exc:
            if exc.status == 404:
                return None
            raise
        row = details.get("user") if isinstance(details, Mapping) else None
        if not isinstance(row, Mapping):
            raise UnexpectedResponseError("GET", self._endpoint("user", username), 200, "no user in the answer")
        user = DefguardUser.from_api(row)
        if user.devices is None and isinstance(details.get("devices"), list):  # 1.6: devices beside the user
            user = attrs.evolve(user, devices=len(details["devices"]))
        return user

    def deployment(self) -> DefguardDeployment:
        """The enrollment URL and default token lifetime (1.6: ``GET /api/v1/support/configuration``; 2.x:
        ``GET /api/v1/settings``), and whether an OpenID provider is configured (``GET /api/v1/info``).

        An API token that is refused raises :class:`DefguardAuthError`; anything else that cannot be read is
        left ``None`` and named in ``problems``. The lifetime read here is used for the expiry of tokens minted
        without an explicit lifetime."""
        problems: list[str] = []
        url: str | None = None
        lifetime: dt.timedelta | None = None
        openid: bool | None = None
        ldap: bool | None = None
        try:
            info = self._call("GET", "info")
        except DefguardAuthError:
            raise
        except DefguardAPIError as exc:
            problems.append(f"GET /api/v1/info: {exc.status} {exc.message}")
        else:
            if isinstance(info, Mapping):
                value = info.get("external_openid_enabled")
                openid = value if isinstance(value, bool) else None
                ldap_info = info.get("ldap_info")
                enabled = ldap_info.get("enabled") if isinstance(ldap_info, Mapping) else None
                ldap = enabled if isinstance(enabled, bool) else None
        try:
            if self.server().major >= 2:
                settings = self._call("GET", "settings")
                raw = settings.get("public_proxy_url") if isinstance(settings, Mapping) else None
                url = _normalised_url(raw) if isinstance(raw, str) else None
                hours = settings.get("enrollment_token_timeout_hours") if isinstance(settings, Mapping) else None
                if isinstance(hours, int) and not isinstance(hours, bool) and hours >= 0:
                    lifetime = dt.timedelta(hours=hours)
                if isinstance(raw, str) and url is None:
                    problems.append(f"public proxy URL {raw!r} is not a URL")
                    url = raw
            else:
                dump = self._call("GET", "support", "configuration")
                config = dump.get("config") if isinstance(dump, Mapping) else None
                raw = config.get("enrollment_url") if isinstance(config, Mapping) else None
                url = raw if isinstance(raw, str) else None
            if url is None and not problems:
                problems.append("the enrollment URL is not in the server's answer")
        except DefguardAuthError:
            raise
        except DefguardAPIError as exc:
            problems.append(f"the enrollment settings: {exc.status} {exc.message}")
        if lifetime is not None:
            self._server_lifetime = lifetime
        return DefguardDeployment(url, lifetime, openid, ldap, tuple(problems))

    def start_enrollment(self, username: str, lifetime: dt.timedelta | None = None) -> IssuedToken:
        """Mint an enrollment token (no e-mail is sent). Deletes the user's earlier unused tokens."""
        body: dict[str, Any] = {"email": None, "send_enrollment_notification": False}
        if lifetime is not None:
            body["token_expiration_time"] = format_for_defguard(lifetime)
        started = dt.datetime.now(dt.UTC)
        payload, retries = self._call_counted("POST", "user", username, "start_enrollment", json=body)
        lifetime = lifetime if lifetime is not None else self._server_lifetime
        expires = started + lifetime if lifetime is not None else None
        return self._issued(payload, TokenKind.ENROLLMENT, expires, retries)

    def start_desktop(self, username: str) -> IssuedToken:
        """Mint a desktop-activation token (the server's default lifetime always applies; its expiry is known once
        :meth:`deployment` has read that lifetime, on 2.x). Deletes the user's earlier unused tokens."""
        started = dt.datetime.now(dt.UTC)
        payload, retries = self._call_counted(
            "POST", "user", username, "start_desktop", json={"email": None, "send_enrollment_notification": False}
        )
        lifetime = self._server_lifetime
        return self._issued(payload, TokenKind.DESKTOP, started + lifetime if lifetime else None, retries)

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
        server_errors = timeouts = 0
        started = time.monotonic()
        try:
            for attempt in stamina.retry_context(**self.retry.stamina_options()):
                with attempt:
                    try:
                        self._pacer.wait()
                        answer = self._once(method, url, headers, params, json, expect_json=expect_json)
                        self._pacer.succeeded()
                        return answer, attempt.num - 1
                    except _Unreachable as exc:
                        # A refused connection or an unknown host is an answer: a few quick tries, not minutes.
                        # A server that accepts and never answers costs a whole timeout per try: two at most.
                        timeouts += exc.kind == "timeout"
                        if timeouts >= _TIMEOUT_TRIES or (
                            exc.kind == "refused" and time.monotonic() - started >= _REFUSED_GIVE_UP
                        ):
                            raise exc.error from None
                        raise
                    except Retryable as exc:
                        if isinstance(exc.error, DefguardAPIError) and exc.error.status == 429:
                            self._pacer.refused(exc.wait)
                        if isinstance(exc.error, DefguardAPIError) and exc.error.status == 500:
                            server_errors += 1
                            if server_errors >= _SERVER_ERROR_TRIES:
                                raise exc.error from None
                        raise
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
            cause, kind = _connection_cause(exc, self._timeout)
            error = DefguardUnreachableError(f"cannot reach Defguard at {self._base}: {cause}")
            raise _Unreachable(error, kind) from None
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


def _normalised_url(raw: str) -> str | None:
    """A URL as the ``url`` crate serialises it for the token endpoints: an http(s) URL with an empty path gains a
    trailing ``/``. ``None`` when it does not parse as an absolute URL."""
    parts = urlsplit(raw.strip())
    if not parts.scheme or not parts.netloc:
        return None
    return raw.strip() + "/" if parts.scheme in {"http", "https"} and not parts.path else raw.strip()


#: The longest a worker waits for its turn under the shared pace (whatever has queued up before it).
_MAX_PACE_WAIT = 10.0


class _Pacer:
    """One pace for every worker thread: Defguard 2.x's rate limiter keeps one bucket per client IP for all
    ``/api/v1`` requests, so a 429 means every worker must slow down, not only the one that got it.

    Requests are spaced by ``interval`` (0 until the first 429): a refusal doubles it (from 5 ms, at most 5 s) and
    holds everyone for the reported wait, or one interval when it says ``Wait for 0s``; each success shortens it by
    2 %, so the pace settles just under the server's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.interval = 0.0
        self._next = 0.0
        self._last_cut = 0.0

    def wait(self) -> None:
        with self._lock:
            if self.interval <= 0 and self._next <= 0:
                return
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + self.interval
        if at > now:
            time.sleep(min(at - now, _MAX_PACE_WAIT))

    def refused(self, wait: float | None) -> None:
        with self._lock:
            now = time.monotonic()
            # Refusals of requests sent together are one signal: slow down once per interval, not once each.
            if now - self._last_cut >= max(self.interval, 0.005):
                self._last_cut = now
                grow = 2.0 if self.interval < 0.02 else 1.25  # find the pace fast, then approach it gently
                self.interval = min(max(self.interval * grow, 0.005), 5.0)
            self._next = max(self._next, now + (wait or self.interval))

    def succeeded(self) -> None:
        if self.interval <= 0:
            return
        with self._lock:
            self.interval *= 0.99
            if self.interval < 0.001:
                self.interval = 0.0


class _Unreachable(Retryable):
    """No HTTP answer: ``kind`` is ``refused`` (connection refused, host not found) or ``timeout``."""

    def __init__(self, error: Exception, kind: str) -> None:
        super().__init__(error, None)
        self.kind = kind


def _connection_cause(exc: requests.RequestException, timeout: float) -> tuple[str, str]:
    """urllib3's nested message → what happened, in a few words, and its kind (see :class:`_Unreachable`)."""
    text = str(exc)
    if isinstance(exc, requests.Timeout) or "timed out" in text.lower():
        return f"no answer within {timeout:g} s (the server accepts connections but does not respond)", "timeout"
    if "Name or service not known" in text or "NameResolutionError" in text or "getaddrinfo" in text:
        return "the host name is not known (check --url)", "refused"
    if "Connection refused" in text or "[Errno 111]" in text or "WinError 10061" in text:
        return "connection refused (is Defguard running, and is the port in --url right?)", "refused"
    if "Connection reset" in text or "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the connection was closed without an answer", "dropped"
    return _first_line(exc), "other"


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
