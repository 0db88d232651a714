"""The read endpoints of the Defguard emulator: ``/me``, users, groups, ``/info``, devices, the configuration dumps,
the health check and the web UI's catch-all."""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import parse_qsl

from defguard_entra.testing._server import Request, Response

from ._state import DefguardState
from ._wire import U32, decode_segment, fail, parse_i64, parse_u32, plain

__all__ = ["ApiHandlers"]


_WEB_UI: Final = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>defguard</title></head>'
    '<body><div id="root"></div><script type="module" src="/assets/index.js"></script></body></html>'
)


class ApiHandlers(DefguardState):
    """The handlers of the read endpoints."""

    def _web_ui(self, request: Request) -> Response:
        del request
        return Response.html(200, _WEB_UI)

    def _health(self, request: Request) -> Response:
        del request
        return Response.text(200, "alive")

    def _me(self, request: Request) -> Response:
        owner = self._authenticate(request)
        with self.lock:
            return Response.json(200, self._user_info(owner))

    def _pagination(self, request: Request) -> tuple[int, int]:
        page: int | None = None
        per_page: int | None = None
        for key, value in parse_qsl(request.query, keep_blank_values=True):
            if key not in {"page", "per_page"}:
                continue
            if (page if key == "page" else per_page) is not None:
                raise plain(400, f"Failed to deserialize query string: duplicate field `{key}`")
            try:
                number = parse_u32(value)
            except ValueError as exc:
                raise plain(400, f"Failed to deserialize query string: {exc}") from None
            if key == "page":
                page = number
            else:
                per_page = number
        return max(page or 1, 1), min(max(50 if per_page is None else per_page, 1), 100)

    def _paginated(self, items: list[Any], total: int, page: int, per_page: int, *, untyped: bool = False) -> Response:
        """A page in ``PaginatedApiResponse``'s shape; ``untyped``: sent with no Content-Type (1.6's activity log)."""
        total_pages = -(-total // per_page)
        payload = {
            "data": items,
            "pagination": {
                "current_page": page,
                "page_size": per_page,
                "total_items": total,
                "total_pages": total_pages,
                "next_page": page + 1 if page < total_pages else None,
            },
        }
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return Response(200, body, None if untyped else self.paginated_content_type)

    def _list_users(self, request: Request) -> Response:
        self._authenticate(request)
        if self.version == "1.6":
            with self.lock:
                names = self._listed(self._order)
                return Response.json(200, [self._user_info(self._users[name]) for name in names])
        page, per_page = self._pagination(request)
        offset = ((page - 1) * per_page) & U32  # u32 arithmetic in the server
        with self.lock:
            if self.page_churn and self._order and self._churn_rng.random() < self.page_churn:
                self._touch(self._users[self._churn_rng.choice(self._order)])
            order = self._user_order()
            rows = [self._user_info(self._users[name]) for name in order[offset : offset + per_page]]
            total = len(order)
        return self._paginated(rows, total, page, per_page)

    def _get_user(self, request: Request, raw: str) -> Response:
        self._authenticate(request)
        username = decode_segment(raw, "username")
        with self.lock:
            user = self._users.get(username)
            if user is None:
                raise fail(404, f"user {username} not found")
            info = self._user_info(user)
            devices = [{**d.to_api(), "networks": []} for d in self._user_devices(user)]
        if self.version == "1.6":
            details = {"user": info, "devices": devices, "biometric_enabled_devices": [], "security_keys": []}
        else:
            details = {"user": info, "biometric_enabled_devices": [], "security_keys": []}
        return Response.json(200, details)

    def _list_groups(self, request: Request) -> Response:
        self._authenticate(request)
        if self.version == "1.6":
            with self.lock:
                return Response.json(200, {"groups": self._listed(list(self._groups))})
        page, per_page = self._pagination(request)
        offset = ((page - 1) * per_page) & U32
        with self.lock:
            if not self.shuffle:
                names = list(self._groups)
            else:
                if self._shuffled_groups is None:
                    self._shuffled_groups = self._listed(list(self._groups))
                names = self._shuffled_groups
        return self._paginated(names[offset : offset + per_page], len(names), page, per_page)

    def _get_group(self, request: Request, raw: str) -> Response:
        self._authenticate(request)
        if self.version == "1.6":
            name = decode_segment(raw, "name")
            with self.lock:
                group = self._groups.get(name)
                if group is None:
                    raise fail(404, f"Group {name} not found")
                return Response.json(200, self._group_info(group, sort=False))
        text = decode_segment(raw, "id")
        group_id = parse_i64(text)
        if group_id is None:
            raise plain(400, f"Invalid URL: Cannot parse `{text}` to a `i64`")
        with self.lock:
            found = self._group_ids.get(group_id)
            if found is None:
                raise fail(404, f"Group {group_id} not found")
            return Response.json(200, self._group_info(self._groups[found], sort=False))

    def _group_info_list(self, request: Request) -> Response:
        self._authenticate(request)
        with self.lock:
            groups = [self._groups[name] for name in self._listed(list(self._groups))]
            return Response.json(200, [self._group_info(group, sort=True) for group in groups])

    def _info(self, request: Request) -> Response:
        """``GET /api/v1/info`` (``crates/defguard_core/src/handlers/app_info.rs``: v1.6.6 with
        ``license_info``, v2.0.1 without); any session, an admin's API token included."""
        self._authenticate(request)
        info: dict[str, Any] = {
            "version": self.component_version.partition("+")[0],
            "network_present": True,
            "smtp_enabled": False,
            "ldap_info": {"enabled": False, "ad": False},
            "external_openid_enabled": self.openid_provider,
        }
        if self.version == "1.6":
            info["license_info"] = {
                "enterprise": True,
                "limits_exceeded": {
                    "user": False,
                    "device": False,
                    "wireguard_network": False,
                    "network_device": False,
                },
                "any_limit_exceeded": False,
                "is_enterprise_free": False,
                "tier": "Business",
            }
        return Response.json(200, info)

    def _list_devices(self, request: Request) -> Response:
        """``GET /api/v1/device`` (admin): every device, network ones too, unordered, not paginated; the owner is
        only ``user_id`` (v1.6.6 ``handlers/wireguard.rs`` 1266, v2.0.1 1261)."""
        self._authenticate(request)
        with self.lock:
            devices = list(self._devices.values())
            if self.shuffle:
                self._rng.shuffle(devices)
            return Response.json(200, [d.to_api() for d in devices])

    def _normalised_enrollment_url(self) -> str:
        return self._enrollment_url or self._enrollment_url_raw

    def _support_configuration(self, request: Request) -> Response:
        """1.6 ``GET /api/v1/support/configuration`` (admin; ``crates/defguard_core/src/support.rs``
        ``dump_config``): the server config carries ``enrollment_url`` as the ``url`` crate serialises it."""
        self._authenticate(request)
        with self.lock:
            users = [self._user_info(user) for user in self._users.values()]
        # DEFGUARD_ENROLLMENT_TOKEN_TIMEOUT is #[serde(skip_serializing)] (defguard_common/src/config.rs): absent
        config = {"enrollment_url": self._normalised_enrollment_url(), "grpc_port": 50055}
        return Response.json(
            200,
            {
                "settings": {"instance_name": "Defguard"},
                "networks": [],
                "version": self.component_version,
                "devices": {},
                "users": users,
                "config": config,
            },
        )

    def _settings_dump(self, request: Request) -> Response:
        """2.x ``GET /api/v1/settings`` (admin): ``public_proxy_url`` as stored (no trailing slash added) and
        ``enrollment_token_timeout_hours`` (v2.0.1 ``crates/defguard_common/src/db/models/settings.rs``)."""
        self._authenticate(request)
        hours = int(self.default_token_lifetime.total_seconds() // 3600)
        return Response.json(
            200,
            {
                "instance_name": "Defguard",
                "defguard_url": self.base_url,
                "public_proxy_url": self._enrollment_url_raw,
                "enrollment_token_timeout_hours": hours,
                "password_reset_token_timeout_hours": 24,
                "enrollment_session_timeout_minutes": 10,
                "openid_create_account": True,
                "ldap_enabled": False,
            },
        )
