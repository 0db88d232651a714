"""Entra groups for :class:`~defguard_entra._entra.AsyncEntraClient`: by display name, by object id, by the
start of a name (the candidates a not-found name is compared with), and a group's users. No SDK here: the client
supplies the requests (``_url``, ``_get_all``, ``_get_json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from . import _lookup, _odata
from .exceptions import EntraAPIError
from .models import EntraGroup, EntraUser

__all__ = ["GroupQueries"]


class GroupQueries:
    """The group reads of the Graph client (a base class: the client implements the three request methods)."""

    def _url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        raise NotImplementedError

    async def _get_all(self, url: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _get_json(self, url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        raise NotImplementedError

    async def find_groups(self, display_name: str) -> list[EntraGroup]:
        """Groups whose displayName equals ``display_name`` (names are not unique in Entra)."""
        url = self._url("/groups", {"$filter": _odata.eq("displayName", display_name), "$select": "id,displayName"})
        return [EntraGroup.from_api(row) for row in await self._get_all(url) if "id" in row]

    async def group(self, group_id: str) -> EntraGroup | None:
        """The group with object id ``group_id`` (``GET /groups/{id}``), or ``None`` when Graph has none (404)."""
        url = self._url(f"/groups/{quote(group_id, safe='')}", {"$select": "id,displayName"})
        try:
            row = await self._get_json(url)
        except EntraAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return EntraGroup.from_api(row) if "id" in row else None

    async def groups_starting_with(self, prefix: str) -> list[EntraGroup]:
        """Up to 999 groups whose displayName starts with ``prefix`` (Graph compares case-insensitively), one page:
        the candidates a not-found group name is compared with."""
        url = self._url(
            "/groups",
            {
                "$filter": f"startswith(displayName,{_odata.literal(prefix)})",
                "$select": "id,displayName",
                "$top": "999",
            },
        )
        page = await self._get_json(url)
        return [EntraGroup.from_api(row) for row in page.get("value") or [] if isinstance(row, dict) and "id" in row]

    async def group_members(self, group_id: str, *, transitive: bool = True) -> list[EntraUser]:
        """The users in a group (nested groups flattened when ``transitive``), each once."""
        relation = "transitiveMembers" if transitive else "members"
        url = self._url(
            f"/groups/{quote(group_id, safe='')}/{relation}", {"$select": _lookup.USER_SELECT, "$top": "999"}
        )
        seen: dict[str, EntraUser] = {}
        for row in await self._get_all(url):
            if row.get("@odata.type", "#microsoft.graph.user") != "#microsoft.graph.user" or "id" not in row:
                continue
            seen.setdefault(str(row["id"]), EntraUser.from_api(row))
        return list(seen.values())
