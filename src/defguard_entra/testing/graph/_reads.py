"""The read endpoints: users, ``/me``, groups and their (transitive) members, attribute definitions and sets.

Paging follows https://learn.microsoft.com/graph/paging (``@odata.nextLink`` with an opaque ``$skiptoken``); what a
filter may do without advanced query parameters follows https://learn.microsoft.com/graph/aad-advanced-queries.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from defguard_entra.testing._server import Request, Response

from ._directory import (
    DEFINITION_PROPS,
    GROUP_DEFAULT,
    GROUP_PROPS,
    MEMBER_PROPS,
    SET_PROPS,
    USER_DEFAULT,
    USER_PROPS,
    Group,
    Principal,
    Prop,
    User,
    lookup,
)
from ._filter import BoolOp, Comparison, FilterEngine, FilterNode, InList, Lambda
from ._query import (
    KNOWN_OPTIONS,
    Options,
    check_advanced,
    decode_skiptoken,
    encode_skiptoken,
    filter_engine,
    ordered,
    parse_options,
    resolve_select,
    resource_units,
    select_fields,
)
from ._tenant import Tenant
from ._wire import (
    ADVANCED_HINT,
    CSA_READ_TYPE,
    GROUP_TYPE,
    INSUFFICIENT,
    USER_TYPE,
    GraphError,
    bad_request,
    no_resource,
    ok,
    unsupported,
)

__all__ = ["EntitySet", "ReadHandlers"]


@dataclass(frozen=True, slots=True)
class EntitySet:
    """A collection the generic handlers serve: ``GET /<path>`` (filter, order, page) and ``GET /<path>/{key}``."""

    path: str  # the entity set in ``@odata.context``: ``users``, ``directory/attributeSets``
    resource: str  # its type in error messages: ``microsoft.graph.<resource>``
    permission: str  # the Principal flag reading it needs
    props: Mapping[str, Prop]
    list_units: int  # the resource units of a list page before the $select and $top discounts
    matching: Callable[[FilterEngine | None], list[Any]]  # the records a filter selects, in list order
    find: Callable[[str], Any]  # the record a key names, or None
    render: Callable[[Any, tuple[str, ...] | None, Principal], dict[str, Any]]
    list_options: Collection[str] = KNOWN_OPTIONS  # the query options its list accepts


def _directory_set(path: str, resource: str, props: Mapping[str, Prop], records: Mapping[str, Any]) -> EntitySet:
    """Attribute definitions or sets (by id): scanned, never ordered nor searched, read with ``read_definitions``."""
    return EntitySet(
        path,
        resource,
        "read_definitions",
        props,
        1,
        lambda engine: [r for r in records.values() if engine is None or engine.matches(r)],
        lambda key: records.get(key) or next((r for r in records.values() if r.id.lower() == key.lower()), None),
        lambda record, select, _principal: select_fields(record.to_json(), select),
        KNOWN_OPTIONS - {"$orderby", "$search"},
    )


class ReadHandlers(Tenant):
    """The read endpoints over the tenant's directory."""

    # set by GraphEmulator.__init__
    page_size: int
    empty_pages: bool

    if TYPE_CHECKING:

        @property
        def url(self) -> str: ...

    # -- users, groups, attribute definitions and sets: list and get -----------------------------------------------

    @cached_property
    def _entity_sets(self) -> dict[str, EntitySet]:
        """The collections by path: users and groups come from their indexes, definitions and sets from a scan."""
        sets = (
            EntitySet(
                "users", "user", "read_users", USER_PROPS, 2, self._matching_users, self._find_user, self._render_user
            ),
            EntitySet(
                "groups",
                "group",
                "read_groups",
                GROUP_PROPS,
                2,
                self._matching_groups,
                self._find_group,
                lambda group, select, _principal: self._render_group(group, select),
            ),
            _directory_set(
                "directory/customSecurityAttributeDefinitions",
                "customSecurityAttributeDefinition",
                DEFINITION_PROPS,
                self._definitions,
            ),
            _directory_set("directory/attributeSets", "attributeSet", SET_PROPS, self._sets),
        )
        return {entity_set.path: entity_set for entity_set in sets}

    def _list(self, request: Request, entity_set: EntitySet) -> Response:
        principal = self._require(request, entity_set.permission)
        options = parse_options(request, entity_set.list_options)
        select = resolve_select(options.select, entity_set.props, entity_set.resource)
        engine = filter_engine(options, entity_set.props, entity_set.resource)
        check_advanced(request, options, engine)
        if engine is not None and engine.analysis.csa and not principal.read_attributes:
            # Filtering on a value is reading it: CustomSecAttributeAssignment.Read.All. Graph's exact answer to a
            # caller without it is not verified (a 403 is assumed; the client raises on it).
            raise GraphError(403, "Authorization_RequestDenied", INSUFFICIENT)
        with self.lock:
            items = ordered(entity_set.matching(engine), options.orderby, entity_set.props, entity_set.resource)
            return self._page(
                request,
                options,
                items,
                lambda item: entity_set.render(item, select, principal),
                context=self._context(entity_set.path, select),
                resource_units=resource_units(entity_set.list_units, options),
            )

    def _get(self, request: Request, entity_set: EntitySet, key: str) -> Response:
        principal = self._require(request, entity_set.permission)
        return self._entity(request, principal, entity_set, key)

    def _entity(self, request: Request, principal: Principal, entity_set: EntitySet, key: str) -> Response:
        options = parse_options(request, {"$select"})
        select = resolve_select(options.select, entity_set.props, entity_set.resource)
        with self.lock:
            record = entity_set.find(key)
            if record is None:
                raise no_resource(key)
            body = {"@odata.context": self._context(entity_set.path, select, "/$entity")}
            body.update(entity_set.render(record, select, principal))
        return ok(body, 1)

    def _get_me(self, request: Request) -> Response:
        principal = self._principal(request)
        if principal.user is None:
            raise bad_request("/me request is only valid with delegated authentication flow.")
        return self._entity(request, principal, self._entity_sets["users"], principal.user)

    # -- paging ------------------------------------------------------------------------------------------------

    def _next_link(self, request: Request, offset: int) -> str:
        path = "/" + "/".join(s for s in request.raw_path.split("/") if s)
        kept = [p for p in request.query.split("&") if p and unquote(p.partition("=")[0]) != "$skiptoken"]
        kept.append(f"$skiptoken={encode_skiptoken(offset)}")
        return f"{self.base_url}{path}?{'&'.join(kept)}"

    def _page(
        self,
        request: Request,
        options: Options,
        items: Sequence[Any],
        render: Callable[[Any], dict[str, Any]],
        *,
        context: str,
        resource_units: int,
    ) -> Response:
        top = options.top or self.page_size
        body: dict[str, Any] = {"@odata.context": context}
        first = options.skiptoken is None
        if options.count and options.advanced and first:
            body["@odata.count"] = len(items)
        if self.empty_pages and first:
            page: Sequence[Any] = ()
            next_offset: int | None = 0
        else:
            offset = 0 if first else decode_skiptoken(options.skiptoken or "")
            page = items[offset : offset + top]
            next_offset = offset + top if offset + top < len(items) else None
        if next_offset is not None:
            body["@odata.nextLink"] = self._next_link(request, next_offset)
        body["value"] = [render(item) for item in page]
        return ok(body, resource_units)

    def _context(self, entity_set: str, select: tuple[str, ...] | None, suffix: str = "") -> str:
        selected = f"({','.join(select)})" if select else ""
        return f"{self.url}/$metadata#{entity_set}{selected}{suffix}"

    # -- users -----------------------------------------------------------------------------------------------------

    def _user_candidates(self, node: FilterNode) -> list[User] | None:
        """A superset of the users matching ``node`` from the indexes, or ``None`` when a scan is needed."""
        if isinstance(node, Comparison | InList) and len(node.path) == 1:
            values = (node.value,) if isinstance(node, Comparison) else node.values
            if isinstance(node, Comparison) and node.op != "eq":
                return None
            field_name = node.path[0].lower()
            if field_name not in {"mail", "userprincipalname", "id"} or not all(isinstance(v, str) for v in values):
                return None
            found: list[User] = []
            for value in values:
                key = value.lower()
                if field_name == "mail":
                    found.extend(lookup(self._by_mail, key))
                else:
                    user = (self._by_upn if field_name == "userprincipalname" else self._users).get(key)
                    if user is not None:
                        found.append(user)
            return found
        if isinstance(node, Lambda) and node.path[0].lower() == "othermails" and node.kind == "any":
            body = node.body
            if isinstance(body, Comparison) and body.op == "eq" and isinstance(body.value, str):
                return list(lookup(self._by_other_mail, body.value.lower()))
            if isinstance(body, InList) and all(isinstance(v, str) for v in body.values):
                return [u for v in body.values for u in lookup(self._by_other_mail, v.lower())]
            return None
        if isinstance(node, BoolOp):
            left = self._user_candidates(node.left)
            if node.op == "and":
                return left if left is not None else self._user_candidates(node.right)
            right = self._user_candidates(node.right)
            return None if left is None or right is None else left + right
        return None

    def _matching_users(self, engine: FilterEngine | None) -> list[User]:
        if engine is None:
            return self._user_order
        candidates = self._user_candidates(engine.node)
        if candidates is None:
            return [u for u in self._user_order if engine.matches(u)]
        unique = {id(u): u for u in candidates}.values()
        return sorted((u for u in unique if engine.matches(u)), key=lambda u: u.seq)

    def _csa_json(self, record: User) -> dict[str, Any] | None:
        if not record.csa:
            return None
        out: dict[str, Any] = {}
        for set_name, values in record.csa.items():
            rendered: dict[str, Any] = {"@odata.type": CSA_READ_TYPE}
            for name, value in values.items():
                definition = self._definitions.get(f"{set_name}_{name}")
                if definition is not None and (definition.is_collection or definition.type == "Integer"):
                    inner = "Int32" if definition.type == "Integer" else "String"
                    rendered[f"{name}@odata.type"] = f"#Collection({inner})" if definition.is_collection else "#Int32"
                rendered[name] = list(value) if isinstance(value, list) else value
            out[set_name] = rendered
        return out

    def _render_user(
        self, record: User, select: tuple[str, ...] | None, principal: Principal, *, typed: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.type": USER_TYPE} if typed else {}
        if typed and not principal.read_users:
            out["id"] = record.id
            return out
        for name in USER_DEFAULT if select is None else select:
            prop = USER_PROPS.get(name.lower())
            if prop is None:
                continue
            if prop.kind == "csa":
                out[prop.name] = self._csa_json(record) if principal.read_attributes else None
            else:
                out[prop.name] = prop.get(record)
        return out

    # -- groups ------------------------------------------------------------------------------------------------------

    @staticmethod
    def _render_group(group: Group, select: tuple[str, ...] | None, *, typed: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.type": GROUP_TYPE} if typed else {}
        for name in GROUP_DEFAULT if select is None else select:
            prop = GROUP_PROPS.get(name.lower())
            if prop is not None:
                out[prop.name] = prop.get(group)
        return out

    def _matching_groups(self, engine: FilterEngine | None) -> list[Group]:
        groups: list[Group] = self._group_order
        if engine is not None:
            node = engine.node
            if (
                isinstance(node, Comparison)
                and node.op == "eq"
                and node.path[0].lower() == "displayname"
                and isinstance(node.value, str)
            ):
                groups = list(self._groups_by_name.get(node.value.lower(), ()))
            else:
                groups = [g for g in groups if engine.matches(g)]
        return groups

    def _find_group(self, group_id: str) -> Group | None:
        return self._groups.get(group_id.lower())

    def _require_group(self, group_id: str) -> Group:
        group = self._find_group(group_id)
        if group is None:
            raise no_resource(group_id)
        return group

    def _flatten(self, group: Group, *, transitive: bool) -> list[User | Group]:
        if not transitive:
            return group.members
        cache_key = (group.id.lower(), transitive)
        cached = self._member_cache.get(cache_key)
        if cached is not None and cached[0] == self._membership_version:
            return cached[1]
        seen: set[str] = {group.id.lower()}
        out: list[User | Group] = []
        queue = [group]
        while queue:
            current = queue.pop(0)
            for member in current.members:
                key = member.id.lower()
                if key in seen:
                    continue
                seen.add(key)
                out.append(member)
                if isinstance(member, Group):
                    queue.append(member)
        self._member_cache[cache_key] = (self._membership_version, out)
        return out

    def _list_members(self, request: Request, group_id: str, *, transitive: bool, cast: str | None) -> Response:
        principal = self._require(request, "read_groups")
        options = parse_options(request, KNOWN_OPTIONS - {"$orderby"})
        props = USER_PROPS if cast == "user" else GROUP_PROPS if cast == "group" else MEMBER_PROPS
        select = resolve_select(options.select, props, cast or "directoryObject")
        engine = filter_engine(options, props, cast or "directoryObject")
        if engine is not None and not options.advanced:
            raise unsupported(f"Filtering group members is not supported{ADVANCED_HINT}.")
        check_advanced(request, options, engine)
        with self.lock:
            group = self._require_group(group_id)
            members: Sequence[User | Group] = self._flatten(group, transitive=transitive)
            if cast is not None:
                wanted = User if cast == "user" else Group
                members = [m for m in members if isinstance(m, wanted)]
            if engine is not None:
                members = [m for m in members if engine.matches(m)]

            def render(member: User | Group) -> dict[str, Any]:
                if isinstance(member, User):
                    return self._render_user(member, select, principal, typed=True)
                return self._render_group(member, select, typed=True)

            entity_set = {"user": "users", "group": "groups"}.get(cast or "", "directoryObjects")
            units = resource_units(5 if transitive else 3, options)
            return self._page(
                request, options, members, render, context=self._context(entity_set, select), resource_units=units
            )
