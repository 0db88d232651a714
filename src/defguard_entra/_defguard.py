"""DefguardClient: the Defguard core REST API over ``requests`` (the only module that imports it).

One chokepoint (:meth:`DefguardClient._call`) builds every URL (exactly one ``/`` between parts, every path
segment quoted), sends auth and User-Agent per request (never written into a borrowed session), applies the
timeout, retries what is worth retrying (with ``stamina``, honouring Defguard 2.x's ``Wait for Ns``), and maps
every failure to this project's exceptions. Works with both API lines (1.6.x and 2.x): see
``docs/reference/defguard-deployments.md``. What the answers mean is :mod:`._defguard_wire`'s; how fast and how long
to try, :mod:`._defguard_pace`'s.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import attrs
import requests
import stamina
from requests.adapters import HTTPAdapter

from ._defguard_activity import activity_query, activity_unavailable, read_activity_log
from ._defguard_pace import OVERLOAD_STATUS, Gate, Pacer, Tries, Unreachable, connection_cause
from ._defguard_wire import (
    VERSION_HEADER,
    count_devices,
    decode,
    first_line,
    issued_token,
    read_configuration,
    read_info,
    read_settings,
    read_user,
    read_user_pass,
)
from ._durations import format_for_defguard
from ._retry import Activity, Retryable, RetryPolicy
from ._version import __version__
from .config import validate_defguard_url
from .exceptions import (
    DefguardAPIError,
    DefguardAuthError,
    DefguardNotSentError,
    DefguardUnreachableError,
    UnexpectedResponseError,
)
from .models import DefguardDeployment, DefguardGroup, DefguardServer, DefguardUser, IssuedToken, Secret, TokenKind

if TYPE_CHECKING:
    from .models import ActivityKind, ActivityLog

__all__ = ["DefguardClient"]

log = logging.getLogger(__name__)

USER_AGENT = f"defguard-entra/{__version__} (+python-requests/{requests.__version__})"
#: Full re-reads of 2.x's unordered user pages when fewer distinct users came back than ``total_items``.
_USER_LIST_PASSES = 3


def _refused(exc: Retryable) -> bool:
    return isinstance(exc.error, DefguardAPIError) and exc.error.status == 429


def _overloaded(exc: Retryable) -> bool:
    """The server (or a proxy in front of it) said it has too much to do (see :class:`~._defguard_pace.Gate`)."""
    if isinstance(exc, Unreachable):
        return exc.kind == "timeout"
    return isinstance(exc.error, DefguardAPIError) and exc.error.status in OVERLOAD_STATUS


class DefguardClient:
    """A synchronous client of the Defguard core API, usable as a context manager.

    ``session`` may be injected (it is then borrowed: never closed, never given our headers); ``ca_bundle`` is a
    path to a PEM file for a private CA (TLS verification cannot be turned off). ``pool_size`` is the most token
    requests in flight at once (the ceiling of their adaptive limit, :class:`~._defguard_pace.Gate`, which starts at
    16 or less) and sizes the connection pool of a session we create; ``proxy`` is the proxy URL to use
    (environment variables are not consulted: see :func:`defguard_entra.config.proxy_for`). ``clock`` is "now" for
    the expiry of minted tokens (default: the system clock; tests share a :class:`defguard_entra.testing.Clock`).
    """

    activity_page_cap = 100
    """The most pages :meth:`activity_log` reads (10,000 rows on 2.x, 5,000 on 1.6) before it says it stopped."""

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
        clock: Callable[[], dt.datetime] | None = None,
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
        self._pacer = Pacer()
        self.gate = Gate(pool_size)
        """The adaptive limit of token requests in flight (its ``peak`` and ``halvings`` say what it did)."""
        self._clock = clock if clock is not None else functools.partial(dt.datetime.now, dt.UTC)
        self.activity = Activity()
        """When Defguard last answered (for the run's watchdog)."""

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

    @property
    def patience(self) -> float:
        """The longest one try of a request may legitimately go without an answer: connect and read timeouts."""
        return min(10.0, self._timeout) + self._timeout

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
            yield from read_user_pass(self._users_page, self._page_workers, seen, totals)
            total = totals[-1] if totals else None
            if not isinstance(total, int) or len(seen) >= total:
                return
            log.info("Defguard listed %d of %d users (unordered pages): reading the pages again", len(seen), total)

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
        return count_devices(self._call("GET", "device"))

    def user(self, username: str) -> DefguardUser | None:
        """One user with its device count (``GET /api/v1/user/{username}``), or ``None`` if there is none."""
        try:
            details = self._call("GET", "user", username)
        except DefguardAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return read_user(details, self._endpoint("user", username))

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
            openid, ldap = read_info(self._call("GET", "info"))
        except DefguardAuthError:
            raise
        except DefguardAPIError as exc:
            problems.append(f"GET /api/v1/info: {exc.status} {exc.message}")
        try:
            if self.server().major >= 2:
                url, lifetime, problem = read_settings(self._call("GET", "settings"))
                if problem:
                    problems.append(problem)
            else:
                url = read_configuration(self._call("GET", "support", "configuration"))
            if url is None and not problems:
                problems.append("the enrollment URL is not in the server's answer")
        except DefguardAuthError:
            raise
        except DefguardAPIError as exc:
            problems.append(f"the enrollment settings: {exc.status} {exc.message}")
        if lifetime is not None:
            self._server_lifetime = lifetime
        return DefguardDeployment(url, lifetime, openid, ldap, tuple(problems))

    def start_enrollment(
        self, username: str, lifetime: dt.timedelta | None = None, *, proceed: Callable[[], bool] | None = None
    ) -> IssuedToken:
        """Mint an enrollment token (no e-mail is sent). Deletes the user's earlier unused tokens.

        ``proceed`` is asked before every retry: ``False`` ends the tries with the last failure (a run that was
        stopped must not mint, minutes later, a token that replaces the one a later run stored)."""
        body: dict[str, Any] = {"email": None, "send_enrollment_notification": False}
        if lifetime is not None:
            body["token_expiration_time"] = format_for_defguard(lifetime)
        started = self._clock()
        payload, retries = self._call_counted(
            "POST", "user", username, "start_enrollment", json=body, proceed=proceed, gated=True
        )
        lifetime = lifetime if lifetime is not None else self._server_lifetime
        expires = started + lifetime if lifetime is not None else None
        return issued_token(payload, TokenKind.ENROLLMENT, expires, retries, base=self._base)

    def start_desktop(self, username: str, *, proceed: Callable[[], bool] | None = None) -> IssuedToken:
        """Mint a desktop-activation token (the server's default lifetime always applies; its expiry is known once
        :meth:`deployment` has read that lifetime, on 2.x). Deletes the user's earlier unused tokens."""
        started = self._clock()
        payload, retries = self._call_counted(
            "POST",
            "user",
            username,
            "start_desktop",
            json={"email": None, "send_enrollment_notification": False},
            proceed=proceed,
            gated=True,
        )
        lifetime = self._server_lifetime
        expires = started + lifetime if lifetime else None
        return issued_token(payload, TokenKind.DESKTOP, expires, retries, base=self._base)

    def activity_log(self, *, since: dt.datetime, kinds: Collection[ActivityKind] | None = None) -> ActivityLog:
        """Defguard's activity log since ``since`` (aware), of ``kinds`` (``None``: every event), every page.

        Filtered by the server on time and event type (both lines), read newest first and returned oldest first.
        Not readable by this server or token (refused, no such endpoint, more than :attr:`activity_page_cap`
        pages) → ``ActivityLog(available=False, problem=...)``; a server that keeps failing raises
        :class:`~defguard_entra.DefguardError` as every call does. See ``docs/reference/defguard-activity-log.md``.
        """
        query = activity_query(since, kinds)  # a naive ``since``: ConfigurationError

        def page(number: int) -> Any:
            return self._call("GET", "activity_log", params=[*query, ("page", str(number))])

        try:
            return read_activity_log(page, self._endpoint("activity_log"), max(1, self.activity_page_cap), kinds)
        except DefguardAPIError as exc:
            unavailable = activity_unavailable(exc)
            if unavailable is None:
                raise
            log.info("%s", unavailable.problem)
            return unavailable

    # -- the chokepoint --------------------------------------------------------------------------------------

    def _endpoint(self, *segments: str) -> str:
        return "/".join([self._base, "api/v1", *(quote(s, safe="") for s in segments)])

    def _call(self, method: str, *segments: str, **options: Any) -> Any:
        """:meth:`_call_counted` without the retry count."""
        return self._call_counted(method, *segments, **options)[0]

    def _call_counted(
        self,
        method: str,
        *segments: str,
        auth: bool = True,
        expect_json: bool = True,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        json: Any = None,
        proceed: Callable[[], bool] | None = None,
        gated: bool = False,
    ) -> tuple[Any, int]:
        """Send with retries (each one only while ``proceed()`` holds); the decoded body and the retries it took.
        ``gated``: a token request, each try of which takes a place under :attr:`gate` first (a try that had to
        wait for its place is sent only while ``proceed()`` holds)."""
        url = self._endpoint(*segments)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token.value}"
        tries = Tries(self._pacer)
        last: Retryable | None = None
        try:
            for attempt in stamina.retry_context(**self.retry.stamina_options()):
                with attempt:
                    if last is not None and proceed is not None and not proceed():
                        raise last.error
                    if gated and self.gate.enter() and proceed is not None and not proceed():
                        self.gate.leave()
                        raise DefguardNotSentError(f"not sent: the run stopped while {url} waited for its turn")
                    took: float | None = None
                    overload = False
                    try:
                        self._pacer.wait()
                        sent = time.monotonic()
                        answer = self._once(method, url, headers, params, json, expect_json=expect_json)
                        took = time.monotonic() - sent
                        self._pacer.succeeded()
                        return answer, attempt.num - 1
                    except DefguardAPIError:  # an answer not worth retrying (a 404, a 400): let through too
                        self._pacer.succeeded()
                        raise
                    except Retryable as exc:
                        overload = _overloaded(exc)
                        if not isinstance(exc, Unreachable):  # an HTTP answer, possibly asking for a wait
                            self.activity.beat(exc.wait)
                            if not _refused(exc):
                                self._pacer.succeeded()  # the rate limiter let it through
                        tries.failed(exc)
                        last = exc
                        raise
                    finally:
                        if gated:
                            self.gate.leave(took, overload=overload)
        except Retryable as exc:  # attempts or time ran out
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None,
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
                # a quarter of a token request's client cost. A borrowed session keeps its full behaviour. Only
                # the parts of PreparedRequest.prepare that apply are run: its empty cookie jar, auth and hooks
                # cost 22 of its 65 us per call (5,000 calls timed).
                prepared = requests.PreparedRequest()
                prepared.prepare_method(method)
                prepared.prepare_url(url, params)
                prepared.prepare_headers(dict(headers))
                prepared.prepare_body(None, None, payload)
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
                f"TLS verification of {self._base} failed: {first_line(exc)} (for a private CA, pass --ca-bundle PATH)",
                cause="tls",
            ) from None
        except requests.exceptions.ProxyError as exc:
            error = DefguardUnreachableError(
                f"the proxy refused the connection to {self._base}: {first_line(exc)}", cause="proxy"
            )
            raise Unreachable(error, "other") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            cause, kind = connection_cause(exc, timed_out=isinstance(exc, requests.Timeout), timeout=self._timeout)
            error = DefguardUnreachableError(f"cannot reach Defguard at {self._base}: {cause}", cause="unreachable")
            raise Unreachable(error, kind) from None
        except requests.RequestException as exc:
            raise DefguardUnreachableError(f"request to Defguard failed: {first_line(exc)}") from None
        self.activity.beat()
        version = response.headers.get(VERSION_HEADER)
        if version and self._server is None:
            with self._lock:
                self._server = DefguardServer(version)
        return decode(method, url, response, expect_json=expect_json)
