"""The token endpoints of the Defguard emulator: ``start_enrollment`` and ``start_desktop``, in the server's check
order, and the minting of enrollment tokens."""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from defguard_entra.testing._server import DROP, Request, Response

from ._body import parse_start_body
from ._humantime import HumantimeError, PanicError, expiry, parse_duration
from ._state import DefguardState, EnrollmentToken, TokenKind, User
from ._wire import decode_segment, fail, random_token

__all__ = ["EnrollmentHandlers"]


_MAIL_SUBJECTS: Final = {"enrollment": "Defguard user enrollment", "desktop": "Defguard desktop client configuration"}
_DROP: Final[Response] = DROP  # the base class closes the connection without answering


class EnrollmentHandlers(DefguardState):
    """``POST /api/v1/user/{username}/start_enrollment`` and ``…/start_desktop``."""

    def _mint(self, user: User, kind: TokenKind, seconds: int, email: str | None, admin: str) -> EnrollmentToken:
        """The last steps of both endpoints: delete every unused token of the user, then create the new one
        (``Token::delete_unused_user_tokens``: v1.6.6 ``crates/defguard_core/src/db/models/enrollment.rs``, v2.0.1
        ``crates/defguard_core/src/enrollment_management.rs``)."""
        now = self._now()
        expires_at = expiry(now, seconds)  # may raise PanicError before anything changes
        kept = []
        for token in user.tokens:
            if self._tokens[token].used_at is None:
                del self._tokens[token]
            else:
                kept.append(token)
        value = random_token()
        record = EnrollmentToken(value, user.username, user.id, kind, email, admin, now, expires_at)
        self._tokens[value] = record
        self._kinds[value] = kind
        kept.append(value)
        user.tokens = kept
        self._issued += 1
        return record

    def _log_token_added(
        self, actor: User, subject: User, kind: TokenKind, *, request: Request | None = None, device: str = ""
    ) -> None:
        """The row a minted token writes, under the admin who minted it: ``start_enrollment`` emits
        ``EnrollmentTokenAdded`` (module ``enrollment``), ``start_desktop`` ``ClientConfigurationTokenAdded``
        (module ``defguard``), each described with the subject's username (v1.6.6 ``handlers/user.rs`` 471 and 575,
        v2.0.1 517 and 621; ``crates/defguard_event_router/src/handlers/api.rs``;
        ``crates/defguard_event_logger/src/description.rs``)."""
        if kind == "enrollment":
            event, module, text = "enrollment_token_added", "enrollment", "enrollment token"
        else:
            event, module, text = "client_configuration_token_added", "defguard", "client configuration token"
        description = f"Added {text} for user {subject.username}"
        self._log_event(actor, event, module, description, subject=subject, request=request, device=device)

    def _check_client_ip(self, request: Request) -> None:
        """2.x reads the client address from X-Forwarded-For / Forwarded; a malformed one is a 500."""
        forwarded_for = request.header("x-forwarded-for")
        if forwarded_for is not None:
            for item in forwarded_for.split(","):
                try:
                    ipaddress.ip_address(item.strip())
                except ValueError:
                    raise fail(500, "Internal server error") from None
        forwarded = request.header("forwarded")
        if forwarded is not None:
            addresses = []
            for element in re.split(r"[,;]", forwarded):
                key, _, value = element.strip().partition("=")
                if key.strip().lower() == "for":
                    value = value.strip().strip('"')
                    if value.startswith("["):
                        value = value[1 : value.find("]")]
                    elif value.count(":") == 1:
                        value = value.split(":", 1)[0]
                    addresses.append(value)
            try:
                for address in addresses or [""]:
                    ipaddress.ip_address(address)
            except ValueError:
                raise fail(500, "Internal server error") from None

    def _start(self, request: Request, raw: str, kind: TokenKind) -> Response:
        """``start_enrollment`` and ``start_desktop`` (``start_remote_desktop_configuration``) in the server's
        check order (v1.6.6 ``crates/defguard_core/src/handlers/user.rs`` 394 and 512, v2.0.1 439 and 558)."""
        admin = self._authenticate(request)
        if request.header("user-agent") is None:
            raise fail(400, "Missing UserAgent header")
        if self.version == "2.0":
            self._check_client_ip(request)
        username = decode_segment(raw, "username")
        send, email, expiration = parse_start_body(request, self.version)
        if kind == "enrollment" and send and email is None:
            raise fail(400, "Email notification is enabled, but email was not provided")
        with self.lock:
            if username not in self._users:
                raise fail(404, f"user {username} not found")
        seconds = int(self.default_token_lifetime.total_seconds())
        if kind == "enrollment" and expiration is not None:
            try:
                seconds = parse_duration(expiration)[0]
            except HumantimeError:
                raise fail(400, "Failed to parse token expiration time") from None
            except PanicError:
                return _DROP
        url = self._enrollment_url
        if url is None:  # 2.x: public_proxy_url does not parse
            raise fail(500, "Internal server error")
        with self.lock:
            user = self._users.get(username)
            if user is None:
                raise fail(404, f"user {username} not found")
            if kind == "enrollment":
                activated = user.has_password if self.version == "1.6" else self._is_enrolled(user)
                if activated:
                    raise fail(400, "User account is already activated")
            if not user.is_active:
                raise fail(401, "Enrollment user is disabled")
            if kind == "desktop" and email is None:
                email = user.email
            try:
                record = self._mint(user, kind, seconds, email, admin.username)
            except PanicError:
                return _DROP  # the handler panics: no answer, the connection closes
            if kind == "enrollment":
                user.enrollment_pending = True
                self._touch(user)
            self._log_token_added(admin, user, kind, request=request)
            if send and email:
                self.mails.append(
                    {"to": email, "subject": _MAIL_SUBJECTS[kind], "username": user.username, "token": record.token}
                )
        return Response.json(201, {"enrollment_token": record.token, "enrollment_url": url})
