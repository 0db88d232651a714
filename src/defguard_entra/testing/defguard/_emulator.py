"""The Defguard emulator's HTTP side: construction and settings, routing (with the rate limiter), faults."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from defguard_entra.testing._server import Faults, Handler, Load, Request, Response

from ._activity import ActivityHandlers
from ._seeding import Seeding
from ._wire import ResponseError, msg_response, parse_version

__all__ = ["DefguardEmulator", "RateLimit"]


class RateLimit:
    """Defguard 2.x's optional rate limiter: tower_governor 0.8 (``DEFGUARD_RATELIMIT_PERSECOND`` and
    ``DEFGUARD_RATELIMIT_BURST``; v2.0.1 ``crates/defguard_core/src/lib.rs`` 640-676).

    ``per_second(n)`` sets the *period*: one request every ``period`` seconds, after a burst of ``burst``; one
    bucket per client IP (``SmartIpKeyExtractor``) for every ``/api/v1`` request, reads included. The 429 says
    ``Too Many Requests! Wait for {n}s`` with the wait truncated to whole seconds (often ``0``), in
    ``x-ratelimit-after`` and ``retry-after`` too, and carries no Content-Type (tower_governor ``src/errors.rs``).
    The real server's shortest period is one second; shorter ones are allowed here so tests run fast.
    """

    def __init__(self, period: float, burst: int) -> None:
        if period <= 0 or burst < 1:
            raise ValueError("a rate limit needs period > 0 and burst >= 1")
        self.period = period
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # client IP -> (tokens, stamp)
        self.refused = 0

    def take(self, client: str, now: float) -> float | None:
        """``None`` when the request may go, else the seconds until it could (callers hold the emulator lock)."""
        tokens, stamp = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) / self.period)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return None
        self._buckets[client] = (tokens, now)
        self.refused += 1
        return (1.0 - tokens) * self.period


# -- the emulator --------------------------------------------------------------------------------------------------


class DefguardEmulator(ActivityHandlers, Seeding):
    """Defguard core (1.6.x or 2.x) as far as ``defguard-entra`` uses it; a context manager like its base.

    Endpoint names (for counts, logs and fault filters): ``health``, ``me``, ``group-info``, ``group-list``,
    ``group``, ``user-list``, ``user``, ``start_enrollment``, ``start_desktop``, ``activity_log``, ``web-ui``
    (``GET`` on an unknown path), ``method-not-allowed``, and ``not-emulated`` (a method the real server has on that
    route but this emulator does not implement; it answers 501).

    Deployment states (``docs/reference/defguard-deployments.md`` names the source of each): ``openid_provider``
    (an external OpenID provider is configured: ``GET /api/v1/info``), users created by directory sync
    (:meth:`prefetch_user`) or by SSO sign-in (:meth:`sso_sign_in`), devices (:meth:`add_device`), the license
    ``license_overdue_days`` past its end (2.x closes the API-token gate after 14 days), and ``page_churn``: the
    chance that, between two page reads of ``GET /api/v1/user`` (2.x), some user is updated and so moves in the
    unordered list, which can make a later page skip a user.

    ``load`` (:class:`~defguard_entra.testing.Load`) plays a server that queues the requests beyond its database
    pool (Defguard 2.0.1 ``max_connections(5)``) or a proxy in front that refuses them with 503 (nginx
    ``limit_conn``).

    Two more options: ``ldap_remote_enrollment_enabled`` (the 2.x setting behind ``enrolled`` for LDAP users, v2.0.1
    ``crates/defguard_common/src/db/models/settings.rs``) and ``paginated_content_type``. v2.0.0 builds paginated
    responses (``GET /user``, ``GET /group``) with ``Response::new(Body::from(json))``, which carries no
    ``Content-Type`` at all; v2.0.1 wraps them in ``Json``, which sends ``application/json``
    (``crates/defguard_core/src/handlers/pagination.rs``, ``into_response``). JSON is the default, and
    ``paginated_content_type=None`` reproduces the bare response.

    ``clock`` (a callable returning an aware datetime, e.g. :class:`~defguard_entra.testing.Clock`) is every "now"
    of the emulator: token expiry and ``expires_at``, device creation, activity-log timestamps (default: the system
    clock). The activity log (``GET /api/v1/activity_log``, endpoint name ``activity_log``) is kept for both lines
    with the rows the token actions write (:meth:`mint_as`, :meth:`sso_activate`, :meth:`open_enrollment`,
    :meth:`redeem`, :meth:`activity_log`); ``activity_log_endpoint=False`` plays a server without that endpoint
    (its web UI answers the path).
    """

    server_header = "defguard-core-emulator"

    def __init__(
        self,
        version: str = "1.6",
        *,
        enrollment_url: str = "http://localhost:8080",
        license_gate: bool = True,
        default_token_lifetime: dt.timedelta = dt.timedelta(hours=24),
        component_version: str | None = None,
        faults: Faults | None = None,
        shuffle: bool = False,
        seed: int = 0,
        ldap_remote_enrollment_enabled: bool = False,
        paginated_content_type: str | None = "application/json",
        openid_provider: bool = False,
        license_overdue_days: float | None = None,
        page_churn: float = 0.0,
        rate_limit: RateLimit | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        activity_log_endpoint: bool = True,
        load: Load | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults, load=load)
        self.version = parse_version(version)
        if component_version is None:
            semver = str(version).strip()
            if not re.fullmatch(r"\d+\.\d+\.\d+", semver):
                semver = "1.6.6" if self.version == "1.6" else "2.0.1"
            sha = hashlib.sha1(f"defguard-core v{semver}".encode(), usedforsecurity=False).hexdigest()
            component_version = f"{semver}+{sha}"
        if default_token_lifetime < dt.timedelta(0):
            raise ValueError("default_token_lifetime must not be negative")
        self._settings: dict[str, Any] = {
            "enrollment_url": enrollment_url,
            "license_gate": license_gate,
            "default_token_lifetime": default_token_lifetime,
            "component_version": component_version,
            "faults": self.faults,
            "shuffle": shuffle,
            "seed": seed,
            "ldap_remote_enrollment_enabled": ldap_remote_enrollment_enabled,
            "paginated_content_type": paginated_content_type,
            "openid_provider": openid_provider,
            "license_overdue_days": license_overdue_days,
            "page_churn": page_churn,
            "rate_limit": rate_limit,
            "clock": clock,
            "activity_log_endpoint": activity_log_endpoint,
        }
        self._enrollment_url_raw = ""
        self._enrollment_url: str | None = None
        self._setup()

    def _setup(self, *, again: bool = False) -> None:
        """(Re)apply the constructor's settings and seed the initial data: the admin group, user and token."""
        self._setup_state(self._settings, again=again)
        self.rate_limit: RateLimit | None = self._settings["rate_limit"]
        self.add_group("admin", is_admin=True)
        self.add_user(
            "admin",
            email="admin@example.com",
            first_name="DefGuard",
            last_name="Administrator",
            enrolled=True,
            is_admin=True,
        )
        self.admin_username = "admin"
        self.admin_token = self.add_api_token("admin")

    def reset(self) -> None:
        """Return to the state right after construction without restarting the server: the same settings,
        fresh data (only ``admin``, with a new :attr:`admin_token`), an empty request log.

        Handy for sharing one running emulator between tests."""
        with self.lock:
            self._setup(again=True)
            self.reset_log()

    # -- configuration -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash (same as :attr:`base_url`)."""
        return self.base_url

    def extra_headers(self) -> dict[str, str]:
        return {"defguard-component-version": self.component_version}

    # -- routing ---------------------------------------------------------------------------------------------

    def resolve(self, request: Request) -> tuple[str, Handler]:
        endpoint, handler = self._resolve(request)
        limit = self.rate_limit
        if limit is None or not request.raw_path.startswith("/api/v1/") or self.version != "2.0":
            return endpoint, handler
        client = (request.header("x-forwarded-for") or "").split(",")[0].strip() or "127.0.0.1"
        with self.lock:
            wait = limit.take(client, time.monotonic())
        if wait is None:
            return endpoint, handler
        seconds = str(int(wait))  # truncated, as tower_governor's u64 wait_time
        refusal = Response(
            429,
            f"Too Many Requests! Wait for {seconds}s".encode(),
            None,
            {"x-ratelimit-after": seconds, "retry-after": seconds},
        )
        return endpoint, lambda _r: refusal

    def _resolve(self, request: Request) -> tuple[str, Handler]:
        segments = request.raw_path.split("/")
        if len(segments) >= 4 and segments[0] == "" and segments[1] == "api" and segments[2] == "v1":
            rest = segments[3:]
            head = rest[0]
            if len(rest) == 1:
                if head == "health":
                    return self._route(request, "health", {"GET": self._health}, ("GET",))
                if head == "me":
                    return self._route(request, "me", {"GET": self._me}, ("GET",))
                if head == "user":
                    return self._route(request, "user-list", {"GET": self._list_users}, ("GET", "POST"))
                if head == "group":
                    return self._route(request, "group-list", {"GET": self._list_groups}, ("GET", "POST"))
                if head == "group-info":
                    return self._route(request, "group-info", {"GET": self._group_info_list}, ("GET",))
                if head == "info":
                    return self._route(request, "info", {"GET": self._info}, ("GET",))
                if head == "activity_log" and self.activity_log_endpoint:
                    return self._route(request, "activity_log", {"GET": self._activity_log}, ("GET",))
                if head == "device":
                    return self._route(request, "device-list", {"GET": self._list_devices}, ("GET",))
                if head == "settings":
                    handlers: dict[str, Handler] = {"GET": self._settings_dump} if self.version == "2.0" else {}
                    return self._route(request, "settings", handlers, ("GET", "PUT", "PATCH"))
            elif len(rest) == 2 and head == "support" and rest[1] == "configuration":
                dump: dict[str, Handler] = {"GET": self._support_configuration} if self.version == "1.6" else {}
                return self._route(request, "support-configuration", dump, ("GET",))
            elif len(rest) == 2 and rest[1]:
                param = rest[1]
                if head == "user":
                    if param == "available":  # static segments win over {username}
                        return self._route(request, "user", {}, ("POST",))
                    if param == "change_password":
                        return self._route(request, "user", {}, ("PUT",))
                    return self._route(
                        request, "user", {"GET": lambda r: self._get_user(r, param)}, ("GET", "PUT", "DELETE")
                    )
                if head == "group":
                    return self._route(
                        request, "group", {"GET": lambda r: self._get_group(r, param)}, ("GET", "PUT", "DELETE")
                    )
            elif len(rest) == 3 and head == "user" and rest[1]:
                param = rest[1]
                if rest[2] == "start_enrollment":
                    return self._route(
                        request, "start_enrollment", {"POST": lambda r: self._start(r, param, "enrollment")}, ("POST",)
                    )
                if rest[2] == "start_desktop":
                    return self._route(
                        request, "start_desktop", {"POST": lambda r: self._start(r, param, "desktop")}, ("POST",)
                    )
        # the web UI's catch-all `GET /{*path}`
        return self._route(request, "web-ui", {"GET": self._web_ui}, ("GET",))

    def _route(
        self, request: Request, endpoint: str, handlers: dict[str, Handler], methods: tuple[str, ...]
    ) -> tuple[str, Handler]:
        method = "GET" if request.method == "HEAD" else request.method
        handler = handlers.get(method)
        if handler is not None:
            return endpoint, self._guarded(handler)
        if method in methods:
            return "not-emulated", lambda _r: Response.text(501, f"{request.method} is not emulated here")
        allowed = []
        for name in methods:
            allowed.append(name)
            if name == "GET":
                allowed.append("HEAD")
        allow = ",".join(allowed)
        return "method-not-allowed", lambda _r: Response.empty(405, {"allow": allow})

    @staticmethod
    def _guarded(handler: Handler) -> Handler:
        def run(request: Request) -> Response:
            try:
                return handler(request)
            except ResponseError as exc:
                return exc.response

        return run

    # -- faults ------------------------------------------------------------------------------------------------

    def fault_response(self, status: int, request: Request, endpoint: str) -> Response:
        del request, endpoint
        if status == 429:
            wait = min(int(self.faults.uniform(0.0, 3.0)), 2)
            headers = {"retry-after": str(wait), "x-ratelimit-after": str(wait)}
            return Response.text(429, f"Too Many Requests! Wait for {wait}s", headers)
        if status == 500:
            return msg_response(500, "Internal Server Error")
        if status in {502, 503, 504}:
            phrase = f"{status} {HTTPStatus(status).phrase}"
            return Response.html(
                status,
                f"<html><head><title>{phrase}</title></head><body><center><h1>{phrase}</h1></center></body></html>",
            )
        if status == 408:
            return Response.empty(408)  # tower-http's TimeoutLayer: no body
        if status == 413:
            return Response.text(413, "Failed to buffer the request body: length limit exceeded")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return msg_response(status, phrase)
