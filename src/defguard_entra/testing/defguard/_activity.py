"""The activity log of the Defguard emulator: ``GET /api/v1/activity_log`` (both lines) and the token actions that
write its rows (or, for an SSO self-activation, write none). The sources are named per method; the whole picture
is ``docs/reference/defguard-activity-log.md``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
from typing import Any, Final
from urllib.parse import parse_qsl

from defguard_entra.testing._server import Request, Response

from ._enrollment import EnrollmentHandlers
from ._handlers import ApiHandlers
from ._state import TokenKind, User
from ._wire import U32, parse_u32, plain

__all__ = ["ActivityHandlers"]

#: ``enrollment_session_timeout``: 10 minutes by default (v1.6.6 ``crates/defguard_common/src/config.rs``; v2.0.1
#: ``enrollment_session_timeout_minutes`` in ``crates/defguard_common/src/db/models/settings.rs``).
SESSION_TIMEOUT: Final = dt.timedelta(minutes=10)
#: 1.6's fixed page size (v1.6.6 ``handlers/mod.rs`` ``DEFAULT_API_PAGE_SIZE``).
_PAGE_SIZE_16: Final = 50
#: ``ActivityLogModule``: a PostgreSQL enum, so ``ORDER BY module`` follows its declaration order.
_MODULES: Final = ("defguard", "client", "vpn", "enrollment")
_SORT_KEYS: Final = ("timestamp", "username", "location", "ip", "event", "module", "device")
_CLIENT_DEVICE: Final = "Defguard desktop client"
_WEB_UI_DEVICE: Final = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"


def _chrono_naive(moment: dt.datetime) -> str:
    """A UTC instant as chrono serialises a ``NaiveDateTime``: no offset, the fraction in 3 or 6 digits, none when
    zero (PostgreSQL keeps microseconds)."""
    naive = moment.astimezone(dt.UTC).replace(tzinfo=None)
    text = naive.strftime("%Y-%m-%dT%H:%M:%S")
    if naive.microsecond % 1000 == 0 and naive.microsecond:
        return f"{text}.{naive.microsecond // 1000:03d}"
    return f"{text}.{naive.microsecond:06d}" if naive.microsecond else text


def _like(term: str) -> re.Pattern[str]:
    """PostgreSQL's ``ILIKE '%term%'``: ``%`` any run, ``_`` one character, ``\\`` escapes."""
    parts: list[str] = []
    chars = iter(term)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "\\")))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile(".*" + "".join(parts) + ".*", re.IGNORECASE | re.DOTALL)


class ActivityHandlers(EnrollmentHandlers, ApiHandlers):
    """``GET /api/v1/activity_log`` and the scenario helpers around tokens (every helper takes the lock)."""

    # -- the endpoint ----------------------------------------------------------------------------------------

    def _activity_log(self, request: Request) -> Response:
        """``get_activity_log_events`` (v1.6.6 and v2.0.1 ``crates/defguard_core/src/handlers/activity_log.rs``):
        any session (an admin's API token here; non-admin sessions would see only their own rows), no licence check
        of its own (only the API-token gate), filters ``from``/``until`` (RFC 3339), ``username``, ``location``,
        ``event``, ``module`` (repeatable), ``search``, sorting ``sort_by``/``sort_order`` (default ``timestamp``
        ``desc``; 2.x breaks ties by ``id``). Paging: 1.6 takes ``page`` only, 50 rows a page, and sends no
        Content-Type (``Response::new(Body::from(json))``); 2.x takes ``page`` and ``per_page`` (1-100, default 50)
        and sends JSON (``pagination.rs`` ``into_response``)."""
        self._authenticate(request)
        pairs = parse_qsl(request.query, keep_blank_values=True)
        if self.version == "1.6":
            page, per_page = self._page_16(pairs), _PAGE_SIZE_16
        else:
            page, per_page = self._pagination(request)
        filters = self._filters(pairs)
        with self.lock:
            rows = [row for row in self._activity if self._matches(row, filters)]
        rows = self._sorted(rows, pairs)
        offset = ((page - 1) * per_page) & U32
        data = [self._api_row(row) for row in rows[offset : offset + per_page]]
        return self._paginated(data, len(rows), page, per_page, untyped=self.version == "1.6")

    @staticmethod
    def _page_16(pairs: list[tuple[str, str]]) -> int:
        pages = [value for key, value in pairs if key == "page"]
        if len(pages) > 1:
            raise plain(400, "Failed to deserialize query string: duplicate field `page`")
        try:
            return parse_u32(pages[0]) if pages else 1
        except ValueError as exc:
            raise plain(400, f"Failed to deserialize query string: {exc}") from None

    @staticmethod
    def _instant(pairs: list[tuple[str, str]], key: str) -> dt.datetime | None:
        values = [value for name, value in pairs if name == key]
        if len(values) > 1:
            raise plain(400, f"Failed to deserialize query string: duplicate field `{key}`")
        if not values:
            return None
        try:
            moment = dt.datetime.fromisoformat(values[0].replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:  # chrono's DateTime<Utc> needs an offset
            raise plain(400, "Failed to deserialize query string: input contains invalid characters")
        return moment.astimezone(dt.UTC)

    def _filters(self, pairs: list[tuple[str, str]]) -> tuple[Any, ...]:
        """``FilterParams``, parsed and checked before any row is read (a bad one is a 400)."""
        since, until = self._instant(pairs, "from"), self._instant(pairs, "until")
        wanted = {key: [value for name, value in pairs if name == key] for key in ("username", "location", "event")}
        modules = [value for name, value in pairs if name == "module"]
        for value in modules:
            if value not in _MODULES:
                expected = ", ".join(f"`{m}`" for m in _MODULES)
                raise plain(
                    400, f"Failed to deserialize query string: unknown variant `{value}`, expected one of {expected}"
                )
        wanted["module"] = modules
        terms = [value for name, value in pairs if name == "search"]
        return since, until, {k: v for k, v in wanted.items() if v}, _like(terms[-1]) if terms else None

    @staticmethod
    def _matches(row: dict[str, Any], filters: tuple[Any, ...]) -> bool:
        since, until, wanted, search = filters
        if (since is not None and row["timestamp"] < since) or (until is not None and row["timestamp"] > until):
            return False
        if any(row[key] not in values for key, values in wanted.items()):
            return False
        if search is not None:
            fields = (row["username"], row["location"], row["module"], row["event"], row["device"], row["description"])
            text = "".join(f"{value or ''} " for value in fields)  # CONCAT treats NULL as ''
            if not search.fullmatch(text):
                return False
        return True

    def _sorted(self, rows: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        params = dict(pairs)
        key = params.get("sort_by", "timestamp")
        order = params.get("sort_order", "desc")
        if key not in _SORT_KEYS:
            raise plain(400, f"Failed to deserialize query string: unknown variant `{key}`")
        if order not in {"asc", "desc"}:
            raise plain(400, f"Failed to deserialize query string: unknown variant `{order}`, expected `asc` or `desc`")

        def value(row: dict[str, Any]) -> tuple[Any, ...]:
            item = row[key]
            if key == "module":
                item = _MODULES.index(item)
            elif key == "ip" and item is not None:
                item = (ipaddress.ip_address(item).version, ipaddress.ip_address(item))
            # PostgreSQL: NULLs sort as if larger than any value (last ascending, first descending)
            tie = row["id"] if self.version == "2.0" else 0  # 1.6 has no tie-breaker (kept in insertion order)
            return (item is None, item if item is not None else 0, tie)

        return sorted(rows, key=value, reverse=order == "desc")

    def _api_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """``ApiActivityLogEvent``: no ``metadata``; ``ip`` an ``IpNetwork`` (non-null on 1.6, optional on 2.x)."""
        ip = row["ip"]
        network = f"{ip}/{32 if ipaddress.ip_address(ip).version == 4 else 128}" if ip else None
        return {
            "id": row["id"],
            "timestamp": _chrono_naive(row["timestamp"]),
            "user_id": row["user_id"],
            "username": row["username"],
            "location": row["location"],
            "ip": network,
            "event": row["event"],
            "module": row["module"],
            "device": row["device"],
            "description": row["description"],
        }

    # -- the scenario helpers --------------------------------------------------------------------------------

    def activity_log(self) -> list[dict[str, Any]]:
        """The rows as stored, oldest first (``timestamp`` an aware UTC datetime; ``metadata`` kept, which the API
        does not return)."""
        with self.lock:
            return [dict(row) for row in self._activity]

    def mint_as(self, admin_username: str, username: str, *, desktop: bool = False) -> str:
        """Another admin mints a token for ``username`` in the web UI (``start_enrollment``, or
        ``start_desktop`` with ``desktop=True``, with the server's default lifetime): the user's unused tokens are
        deleted and the row is under the admin's name. Raises ``ValueError`` where the endpoint refuses (an
        activated user for an enrollment token, a disabled user); returns the token."""
        with self.lock:
            admin, user = self._user(admin_username), self._user(username)
            kind: TokenKind = "desktop" if desktop else "enrollment"
            if not desktop and (user.has_password if self.version == "1.6" else self._is_enrolled(user)):
                raise ValueError("User account is already activated")
            if not user.is_active:
                raise ValueError("Enrollment user is disabled")
            seconds = int(self.default_token_lifetime.total_seconds())
            record = self._mint(user, kind, seconds, user.email if desktop else None, admin.username)
            if not desktop:
                user.enrollment_pending = True
                self._touch(user)
            self._log_token_added(admin, user, kind, device=_WEB_UI_DEVICE)
            return record.token

    def sso_activate(self, username: str) -> str:
        """The user signs in by SSO on the enrollment page to activate the desktop client: the user gains an
        OpenID subject (as :meth:`sso_sign_in`), every unused token of the user is deleted and a new one is minted
        with the default lifetime, and **no** activity-log row is written (v1.6.6 ``crates/defguard_core/src/grpc/
        mod.rs`` ``AuthCallback`` ~461; v2.0.1 ``crates/defguard_proxy_manager/src/handler.rs`` ~861: no event is
        emitted). Raises ``ValueError`` for a disabled user (``user_from_claims``); returns the token."""
        with self.lock:
            user = self._user(username)
            if not user.is_active:
                raise ValueError("User is disabled")
            user.openid = True
            user.openid_sub = user.openid_sub or f"sub-{user.id}"
            seconds = int(self.default_token_lifetime.total_seconds())
            record = self._mint(user, "desktop", seconds, user.email, user.username)
            self._touch(user)
            return record.token

    def open_enrollment(self, token: str) -> None:
        """The client (or the enrollment page) opens ``token``: the proxy's enrollment start. The token's session
        starts (``used_at`` is set: from then on Defguard deletes it no more and it is used once the session times
        out, 10 minutes), and an ``enrollment_started`` row is written under the member's name (v1.6.6
        ``crates/defguard_core/src/grpc/enrollment.rs`` 134-300 and ``db/models/enrollment.rs`` ``start_session``;
        v2.0.1 ``crates/defguard_proxy_manager/src/servers/enrollment.rs`` 150-290). Opening it again within the
        session writes another row. Raises ``ValueError`` for an unknown (or deleted), expired or used token, or a
        disabled user."""
        with self.lock:
            self._start_session(token)

    def _start_session(self, token: str) -> tuple[User, bool]:
        """``start_session`` and its row (callers hold the lock); the user and whether this opened a new session."""
        now = self._now()
        record = self._tokens.get(token)
        if record is None:
            raise ValueError("invalid token")
        user = self._users[record.username]
        if not user.is_active:
            raise ValueError("user is disabled")
        if record.expired(now):
            raise ValueError("token expired")
        if record.completed_at is not None or (record.used_at is not None and now > record.used_at + SESSION_TIMEOUT):
            raise ValueError("token already used")
        opened = record.used_at is None
        if opened:
            self._tokens[token] = dataclasses.replace(record, used_at=now)
        self._log_event(
            user, "enrollment_started", "enrollment", "User started enrollment process", device=_CLIENT_DEVICE
        )
        return user, opened

    def redeem(self, token: str, *, device: bool = True) -> None:
        """The whole enrollment with ``token``: the proxy's start (unless :meth:`open_enrollment` opened this
        session already), then, for a ``start_enrollment`` token, activating the user (a password, no longer
        pending: an ``enrollment_completed`` row under the member, v1.6.6 ``grpc/enrollment.rs`` ``activate_user``
        487, v2.0.1 ``servers/enrollment.rs`` 513) and, with ``device`` (the desktop client's flow), adding the
        client's device (an ``enrollment_device_added`` row). A desktop-activation token only adds the device.

        Raises ``ValueError`` for an unknown (or deleted), expired or already used token."""
        with self.lock:
            record = self._tokens.get(token)
            if record is not None and record.used_at is not None and record.completed_at is None:
                user = self._users[record.username]  # opened: the session goes on (or has timed out)
                if self._now() > record.used_at + SESSION_TIMEOUT:
                    raise ValueError("token already used")
            else:
                user, _ = self._start_session(token)
            record = self._tokens[token]
            now = self._now()
            self._tokens[token] = dataclasses.replace(record, completed_at=now)
            if record.kind == "enrollment":
                user.has_password = True
                user.enrollment_pending = False
                user.ldap_remote_enrollment_completed = True
                self._log_event(
                    user,
                    "enrollment_completed",
                    "enrollment",
                    "User completed enrollment process",
                    device=_CLIENT_DEVICE,
                )
            if device:
                added = self._add_device(user, None, "user")
                self._log_event(
                    user,
                    "enrollment_device_added",
                    "enrollment",
                    f"Added device {added.name} during enrollment",
                    device=_CLIENT_DEVICE,
                )
            self._touch(user)

    def token_accepted(self, token: str) -> bool:
        """Whether Defguard would accept ``token`` now: it exists (not deleted), is unused and has not expired by
        the emulator's clock."""
        with self.lock:
            record = self._tokens.get(token)
            return record is not None and record.used_at is None and not record.expired(self._now())
