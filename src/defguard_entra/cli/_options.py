"""Typed options: after parsing, the argparse namespace becomes one frozen options object per command.

Field names are the argparse destinations, so :meth:`Options.flags` lists the options of a run under the names
``audit["options"]`` has always used.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from ..config import AuthMode, Cloud
from ..exceptions import ConfigurationError
from ..models import EnrolledPolicy, GroupSource

__all__ = [
    "CheckOptions",
    "ClearOptions",
    "ConsoleFlags",
    "DefguardFlags",
    "DemoOptions",
    "ExportOptions",
    "FetchConfigOptions",
    "GraphFlags",
    "GroupOptions",
    "Options",
    "PaceFlags",
    "ProvisionOptions",
    "SignOutOptions",
    "StatusOptions",
    "SyncOptions",
    "options_from",
]


@attrs.frozen
class ConsoleFlags:
    """``-v``, ``-q``, ``--no-progress``, ``--debug``: every command has them."""

    #: How many ``-v``: 1 info, 2 debug.
    verbose: int = 0
    quiet: bool = False
    no_progress: bool = False
    debug: bool = False
    #: ``--log-format``: ``text`` or ``json`` (one JSON object per line on stderr).
    log_format: str = "text"

    @property
    def json(self) -> bool:
        return self.log_format == "json"


@attrs.frozen
class GraphFlags:
    """The Microsoft Graph options (``--auth``, ``--tenant-id``, …); unset ones are ``None``."""

    auth: AuthMode | None = attrs.field(default=None, converter=attrs.converters.optional(AuthMode))
    tenant_id: str | None = None
    client_id: str | None = None
    cloud: Cloud | None = attrs.field(default=None, converter=attrs.converters.optional(Cloud))
    graph_url: str | None = None
    #: ``--token-cache``: ``auto``, ``unencrypted`` or ``memory``.
    token_cache: str | None = None
    #: ``--browser-timeout``, seconds.
    browser_timeout: float | None = None
    attribute_set_name: str | None = None


@attrs.frozen
class DefguardFlags:
    """The Defguard options (``--url``, ``--api-token``, …) of the commands that contact Defguard."""

    url: str | None = None
    allow_insecure_http: bool = False
    #: The token itself, or ``-``: read it from stdin.
    api_token: str | None = None
    api_token_file: str | None = None
    ca_bundle: str | None = None
    #: Seconds per request.
    timeout: float | None = None


@attrs.frozen
class PaceFlags:
    """``--concurrency``, ``--graph-write-rate``, ``--retries``, ``--max-retry-time``, ``--stall-timeout`` (those a
    command has)."""

    concurrency: int | None = None
    graph_write_rate: float | None = None
    retries: int | None = None
    max_retry_time: float | None = None
    stall_timeout: float | None = None


#: The option groups, by the field that holds them.
_FLAG_GROUPS: dict[str, type[Any]] = {
    "console": ConsoleFlags,
    "graph": GraphFlags,
    "defguard": DefguardFlags,
    "pace": PaceFlags,
}


@attrs.frozen(kw_only=True)
class Options:
    """What every command's options may hold: the flags that feed ``Settings`` and ``--report``.

    ``defguard`` is ``None`` for a command that never contacts Defguard (``fetch-config``, ``demo``)."""

    command: ClassVar[str]
    #: Whether the command checks the stop event (a first Ctrl-C then finishes what is in flight).
    stops_gracefully: ClassVar[bool] = False

    console: ConsoleFlags = ConsoleFlags()
    graph: GraphFlags = GraphFlags()
    defguard: DefguardFlags | None = None
    pace: PaceFlags = PaceFlags()
    enrollment_token_expiration_time: str | None = None
    report: str | None = None

    def __init_subclass__(
        cls, *, command: str | None = None, stops_gracefully: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if command is not None:
            cls.command = command
        if stops_gracefully is not None:
            cls.stops_gracefully = stops_gracefully

    @property
    def graceful(self) -> bool:
        """Whether a first Ctrl-C asks the command to finish what is in flight (it checks the stop event)."""
        return self.stops_gracefully

    def paths(self) -> dict[str, str | None]:
        """The path options by destination, in the order their values are checked."""
        defguard = self.defguard or DefguardFlags()
        return {
            "report": self.report,
            **self._own_paths(),
            "api_token_file": defguard.api_token_file,
            "ca_bundle": defguard.ca_bundle,
        }

    def _own_paths(self) -> dict[str, str | None]:
        return {}

    def flags(self) -> dict[str, Any]:
        """Every option by its argparse destination, the groups flattened: what ``audit["options"]`` draws on."""
        flat: dict[str, Any] = {}
        for name, value in attrs.asdict(self, recurse=False).items():
            if name in _FLAG_GROUPS and value is not None:
                flat.update(attrs.asdict(value, recurse=False))
            elif name not in _FLAG_GROUPS:
                flat[name] = value
        return flat


@attrs.frozen(kw_only=True)
class GroupOptions(Options):
    """The options of a command that works on a group's members (``--group-name``, ``--group-source``)."""

    #: What the command does to the members, for "--group-name is required: … whose members to {verb}".
    verb: ClassVar[str]

    group_name: str | None = None
    group_id: str | None = None
    group_source: GroupSource = "defguard"
    #: ``--user`` (repeatable): only these members; ``None``: every member.
    users: Sequence[str] | None = None

    def __init_subclass__(cls, *, verb: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if verb is not None:
            cls.verb = verb

    def check(self) -> None:
        """Refuse options that contradict each other in this command (after ``--group-name`` is checked)."""


@attrs.frozen(kw_only=True)
class ProvisionOptions(GroupOptions, command="provision", verb="provision", stops_gracefully=True):
    """``provision``: mint a token for each member and store it in Entra."""

    enrolled: EnrolledPolicy = "auto"
    dry_run: bool = False
    only_missing: bool = False
    reveal_tokens: bool = False

    def check(self) -> None:
        if self.dry_run and self.reveal_tokens:
            raise ConfigurationError("--reveal-tokens has nothing to reveal in a --dry-run")


@attrs.frozen(kw_only=True)
class SyncOptions(GroupOptions, command="sync", verb="sync", stops_gracefully=True):
    """``sync``: plan and apply what keeps every member's attributes true (``--watch``: every interval)."""

    enrolled: EnrolledPolicy = "auto"
    dry_run: bool = False
    #: ``--refresh-before``, ``--max-changes`` and ``--watch`` as given; :mod:`._settings` parses them.
    refresh_before: str | None = None
    max_changes: str | None = None
    watch: str | None = None


@attrs.frozen(kw_only=True)
class ExportOptions(GroupOptions, command="export", verb="export"):
    """``export``: one provisioning.json per member (after ``--provision``, if given)."""

    output_dir: str
    deep_links: bool = False
    enrolled: EnrolledPolicy = "auto"
    provision: bool = False
    only_missing: bool = False

    @property
    def graceful(self) -> bool:
        return self.provision

    def _own_paths(self) -> dict[str, str | None]:
        return {"output_dir": self.output_dir}

    def check(self) -> None:
        if not self.provision and (self.only_missing or self.enrollment_token_expiration_time is not None):
            raise ConfigurationError(
                "--only-missing and --enrollment-token-expiration-time apply only with --provision"
            )


@attrs.frozen(kw_only=True)
class StatusOptions(GroupOptions, command="status", verb="show", stops_gracefully=True):
    """``status``: where each member stands (read-only)."""

    enrolled: EnrolledPolicy = "auto"


@attrs.frozen(kw_only=True)
class ClearOptions(GroupOptions, command="clear", verb="clear", stops_gracefully=True):
    """``clear``: set the stored token and URL to null."""

    all_members: bool = False
    dry_run: bool = False


@attrs.frozen(kw_only=True)
class CheckOptions(GroupOptions, command="check", verb="check"):
    """``check``: verify the setup without changing anything."""

    probe_write: bool = False


@attrs.frozen(kw_only=True)
class FetchConfigOptions(Options, command="fetch-config"):
    """``fetch-config``: the signed-in user's provisioning.json."""

    output: str | None = None
    force: bool = False

    def _own_paths(self) -> dict[str, str | None]:
        return {"output": self.output}


@attrs.frozen(kw_only=True)
class SignOutOptions(Options, command="sign-out"):
    """``sign-out``: forget the remembered sign-ins."""


@attrs.frozen(kw_only=True)
class DemoOptions(Options, command="demo", stops_gracefully=True):
    """``demo``: the whole flow against the emulators."""

    defguard_version: str = "2.0"


_BY_COMMAND: dict[str, type[Options]] = {
    cls.command: cls
    for cls in (
        ProvisionOptions,
        SyncOptions,
        DemoOptions,
        FetchConfigOptions,
        ExportOptions,
        StatusOptions,
        ClearOptions,
        CheckOptions,
        SignOutOptions,
    )
}


def options_from(namespace: argparse.Namespace) -> Options:
    """The options object of the parsed command. Every destination the parser set must land in a field: a new
    option that is not modelled here fails loudly instead of being silently ignored."""
    values = dict(vars(namespace))
    cls = _BY_COMMAND[values.pop("command")]
    kwargs: dict[str, Any] = {}
    used: set[str] = set()
    for field in attrs.fields(cls):
        group = _FLAG_GROUPS.get(field.name)
        if group is None:
            if field.name in values:
                kwargs[field.name] = values[field.name]
                used.add(field.name)
            continue
        given = {f.name: values[f.name] for f in attrs.fields(group) if f.name in values}
        if given:
            kwargs[field.name] = group(**given)
            used |= set(given)
    unmodelled = sorted(set(values) - used)
    if unmodelled:
        msg = f"{cls.__name__} has no field for {', '.join(unmodelled)}"
        raise TypeError(msg)
    return cls(**kwargs)
