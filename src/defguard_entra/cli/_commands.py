"""One handler per command: validate the options, call the library, and RETURN what it gave (presenting it and the
exit code are :mod:`._present`'s). Every command that reads a group goes through one path: :func:`_session`
(settings → checks → redaction → the service, opened with the command's Graph scopes)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from .._desktop_client import (
    check_output_file,
    default_provisioning_path,
    fetch_provisioning_config,
    require_user_sign_in,
    write_provisioning_file,
)
from .._export import check_output_dir, write_export
from .._files import outside_user_profile
from .._redact import RedactingFilter
from .._scopes import Command, scopes_for
from ..config import AuthMode, GraphSettings, Settings, validate_group_id
from ..exceptions import ConfigurationError, EntraAuthError
from ..models import Checklist, Report
from ._console import Console, ProgressLine, interrupted_at_once
from ._options import (
    CheckOptions,
    ClearOptions,
    ExportOptions,
    FetchConfigOptions,
    GroupOptions,
    Options,
    ProvisionOptions,
    SignOutOptions,
    StatusOptions,
    SyncOptions,
)
from ._present import ExportRun, FetchRun, ReportRun, Result, SignOutRun, present
from ._render import check_report_path
from ._settings import identity_dir, load_settings, state_dir, sync_values

if TYPE_CHECKING:
    from ..provisioning import ProvisioningService

__all__ = ["Context", "Prepared", "audited_fatal", "run"]


@attrs.define
class Context:
    """What a command runs with: the environment, stdin, the console, the redaction filter, the stop event; and,
    once they are loaded, the run's settings (a report of a run that could not start tells what was known)."""

    environ: Mapping[str, str]
    stdin: TextIO
    console: Console
    redactor: RedactingFilter
    stop: threading.Event
    settings: Settings | None = None


def run(options: Options, ctx: Context) -> Result:
    """Run the command ``options`` are for (every command but ``demo``, which is :mod:`._demo`'s)."""
    if isinstance(options, ProvisionOptions):
        return provision(options, ctx)
    if isinstance(options, SyncOptions):
        return sync(options, ctx)
    if isinstance(options, StatusOptions):
        return status(options, ctx)
    if isinstance(options, ClearOptions):
        return clear(options, ctx)
    if isinstance(options, CheckOptions):
        return check(options, ctx)
    if isinstance(options, ExportOptions):
        return export(options, ctx, on_provisioned=lambda run: present(run, ctx.console))
    if isinstance(options, FetchConfigOptions):
        return fetch_config(options, ctx)
    if isinstance(options, SignOutOptions):
        return sign_out(ctx)
    msg = f"no handler for {options.command}"
    raise TypeError(msg)


# -- the shared path ---------------------------------------------------------------------------------------------


@attrs.frozen
class Prepared:
    """A group command's checked settings and paths (what :func:`_prepare` returns)."""

    settings: Settings
    group_name: str | None
    report_path: Path | None
    output_dir: Path | None
    group_id: str | None = None


def _prepare(options: GroupOptions, ctx: Context) -> Prepared:
    """Settings and the output paths, validated before any request; secrets registered with the redactor."""
    settings = ctx.settings = load_settings(options, ctx.environ, ctx.stdin, ctx.console.warn, ctx.console.stderr)
    if options.group_id is not None and options.group_name is not None:
        raise ConfigurationError("--group-name and --group-id both name the group: give one of them")
    if options.group_id is not None:
        validate_group_id(options.group_id, options.group_source)
    elif not options.group_name or not options.group_name.strip():
        raise ConfigurationError(f"--group-name is required: the name of the group whose members to {options.verb}")
    options.check()
    report_path = check_report_path(options.report) if options.report else None
    output_dir = check_output_dir(options.output_dir) if isinstance(options, ExportOptions) else None
    settings.require_defguard()
    if settings.defguard_token is not None:
        ctx.redactor.add(settings.defguard_token.value)
    if settings.graph.static_token is not None:
        ctx.redactor.add(settings.graph.static_token.value)
    return Prepared(settings, options.group_name, report_path, output_dir, options.group_id)


@contextlib.contextmanager
def _session(options: GroupOptions, ctx: Context, *, scopes: Command) -> Iterator[tuple[ProvisioningService, Prepared]]:
    """:func:`_prepare`, then the service, signed in to Graph with the scopes of the command ``scopes``."""
    prepared = _prepare(options, ctx)
    require_terminal_to_prompt(prepared.settings.graph, ctx)
    from ..provisioning import ProvisioningService  # noqa: PLC0415 - the HTTP and Microsoft stacks load only to run

    with ProvisioningService.from_settings(
        prepared.settings,
        prompt=ctx.console.notice,  # the device-code instructions: shown with -q too
        delegated_scopes=scopes_for(scopes, options.group_source),
        state_dir=state_dir(ctx.environ),
    ) as service:
        if options.graceful:  # sign in first, where Ctrl-C stops at once (it has nothing in flight to finish)
            with interrupted_at_once():
                service.sign_in()
        yield service, prepared


#: The sign-in modes that may prompt (a browser, or a device code to enter).
_PROMPTING = frozenset({AuthMode.INTERACTIVE, AuthMode.DEVICE_CODE})


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def require_terminal_to_prompt(graph: GraphSettings, ctx: Context) -> None:
    """No sign-in prompt without someone to answer it: an interactive or device-code sign-in (also ``auto`` when it
    comes to that) needs a terminal on stdin and stderr; otherwise fail at once, before any request, naming the
    modes that need nobody (an unattended run would otherwise wait for a browser or a code until it expires)."""
    mode = graph.resolved_auth()
    if mode not in _PROMPTING or (_isatty(ctx.stdin) and _isatty(ctx.console.stderr)):
        return
    which = "stdin" if not _isatty(ctx.stdin) else "stderr"
    how = f"--auth {graph.auth.value}" + (f" (resolved to {mode.value})" if graph.auth is AuthMode.AUTO else "")
    raise EntraAuthError(
        f"{how} would prompt for a Microsoft sign-in, but {which} is not a terminal: for an unattended run use "
        "--auth environment (AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET or a certificate), "
        "--auth managed-identity, or --auth token (DEFGUARD_ENTRA_GRAPH_TOKEN)"
    )


def _progress(options: Options, ctx: Context, label: str) -> ProgressLine | None:
    if options.console.no_progress or options.console.quiet or options.console.json:
        return None
    return ProgressLine(ctx.console.stderr, label, ctx.stop)


#: The flags ``audit["options"]`` leaves out: not options of the run (or, ``api_token``, a secret).
_NOT_OPTIONS = frozenset({"command", "api_token", "verbose", "quiet", "no_progress", "debug", "log_format"})


def _audited(report: Report, options: Options, settings: Settings, environ: Mapping[str, str]) -> Report:
    """The report with the options of this run in ``audit["options"]`` (never a secret: the API token's value is
    left out, only where it came from is recorded; nor an internal flag such as how the command stops)."""
    secrets = {s.value for s in (settings.defguard_token, settings.graph.static_token) if s is not None}
    given: dict[str, Any] = {
        key: value
        for key, value in sorted(options.flags().items())
        if key not in _NOT_OPTIONS and value not in (None, False) and not (isinstance(value, str) and value in secrets)
    }
    defguard = options.defguard
    literal = defguard.api_token if defguard is not None else None
    source: str | None
    if literal == "-":
        source = "stdin"
    elif literal is not None:
        source = "command line"
    elif defguard is not None and defguard.api_token_file:
        source = "file"
    else:
        source = "environment" if environ.get("DEFGUARD_API_TOKEN") else None
    given.update(
        command=report.command,
        api_token_source=source,
        defguard_url=settings.defguard_url,
        graph_url=settings.graph.base_url,
        graph_auth=settings.graph.resolved_auth().value,
        attribute_set=settings.attribute_set,
    )
    return attrs.evolve(report, audit={**report.audit, "options": {**report.audit.get("options", {}), **given}})


def audited_fatal(report: Report, options: Options, ctx: Context) -> Report:
    """The report of a run that could not start, with the options of this run as every report has them (once the
    settings were loaded; before that, the report is left as it is)."""
    return report if ctx.settings is None else _audited(report, options, ctx.settings, ctx.environ)


# -- the commands ------------------------------------------------------------------------------------------------


def _provision(
    service: ProvisioningService, options: ProvisionOptions | ExportOptions, prepared: Prepared, ctx: Context
) -> Report:
    """``provision`` of the group: the command itself, and ``export --provision`` before it exports."""
    return service.provision(
        prepared.group_name,
        group_id=prepared.group_id,
        group_source=options.group_source,
        lifetime=prepared.settings.token_lifetime,
        enrolled=options.enrolled,
        dry_run=isinstance(options, ProvisionOptions) and options.dry_run,
        only_missing=options.only_missing,
        users=options.users,
        progress=_progress(options, ctx, "provisioning"),
        stop=ctx.stop,
    )


def provision(options: ProvisionOptions, ctx: Context) -> ReportRun:
    with _session(options, ctx, scopes="provision") as (service, prepared):
        report = _provision(service, options, prepared, ctx)
    report = _audited(report, options, prepared.settings, ctx.environ)
    return ReportRun(report, prepared.report_path, reveal_tokens=options.reveal_tokens)


def sync(options: SyncOptions, ctx: Context) -> ReportRun:
    """One ``sync`` of the group (``--watch`` repeats this whole handler, :mod:`._watch`)."""
    values = sync_values(options)
    with _session(options, ctx, scopes="sync") as (service, prepared):
        report = service.sync(
            prepared.group_name,
            group_id=prepared.group_id,
            group_source=options.group_source,
            lifetime=prepared.settings.token_lifetime,
            enrolled=options.enrolled,
            refresh_before=values.refresh_before,
            max_changes=values.max_changes,
            dry_run=options.dry_run,
            users=options.users,
            progress=_progress(options, ctx, "syncing"),
            stop=ctx.stop,
        )
    report = _audited(report, options, prepared.settings, ctx.environ)
    return ReportRun(report, prepared.report_path)


def status(options: StatusOptions, ctx: Context) -> ReportRun:
    with _session(options, ctx, scopes="status") as (service, prepared):
        report = service.status(
            prepared.group_name,
            group_id=prepared.group_id,
            group_source=options.group_source,
            enrolled=options.enrolled,
            users=options.users,
            stop=ctx.stop,
        )
    report = _audited(report, options, prepared.settings, ctx.environ)
    return ReportRun(report, prepared.report_path, table=True)


def clear(options: ClearOptions, ctx: Context) -> ReportRun:
    with _session(options, ctx, scopes="clear") as (service, prepared):
        report = service.clear(
            prepared.group_name,
            group_id=prepared.group_id,
            group_source=options.group_source,
            all_members=options.all_members,
            dry_run=options.dry_run,
            users=options.users,
            progress=_progress(options, ctx, "clearing"),
            stop=ctx.stop,
        )
    report = _audited(report, options, prepared.settings, ctx.environ)
    return ReportRun(report, prepared.report_path)


def check(options: CheckOptions, ctx: Context) -> Checklist:
    with _session(options, ctx, scopes="check") as (service, prepared):
        return service.check(
            prepared.group_name,
            group_id=prepared.group_id,
            group_source=options.group_source,
            probe_write=options.probe_write,
        )


def export(options: ExportOptions, ctx: Context, *, on_provisioned: Callable[[ReportRun], None]) -> ExportRun:
    """``export`` (with ``--provision``, provision first in the same session: ``on_provisioned`` presents that run
    as soon as it ends, before the export starts)."""
    with _session(options, ctx, scopes="provision" if options.provision else "export") as (service, prepared):
        assert prepared.output_dir is not None
        provisioned = None
        if options.provision:
            provisioned = _provision(service, options, prepared, ctx)
            provision_run = ReportRun(provisioned)
            on_provisioned(provision_run)
            if provisioned.fatal_error or provisioned.interrupted:
                return ExportRun(prepared.output_dir, None, provisioned=provision_run)
        report = service.export(
            prepared.group_name,
            group_id=prepared.group_id,
            group_source=options.group_source,
            enrolled=options.enrolled,
            users=options.users,
            after=provisioned,
        )
    manifest = write_export(report, prepared.output_dir, deep_links=options.deep_links)
    outside = outside_user_profile(prepared.output_dir.absolute(), sys.platform, ctx.environ)
    return ExportRun(prepared.output_dir, manifest, report.notes, outside_profile=outside)


def fetch_config(options: FetchConfigOptions, ctx: Context) -> FetchRun:
    """On the user's machine: read the signed-in user's attributes and write the client's provisioning.json."""
    settings = load_settings(options, ctx.environ, ctx.stdin, ctx.console.warn, ctx.console.stderr)
    require_user_sign_in(settings.graph)
    require_terminal_to_prompt(settings.graph, ctx)
    target = (
        check_output_file(options.output) if options.output else default_provisioning_path(sys.platform, ctx.environ)
    )
    if target.is_dir():
        raise ConfigurationError(f"{str(target)!r} is a directory: remove it or pass --output PATH")
    if settings.graph.static_token is not None:
        ctx.redactor.add(settings.graph.static_token.value)
    config = fetch_provisioning_config(settings, prompt=ctx.console.notice)
    ctx.redactor.add(config.enrollment_token.value)
    outcome = write_provisioning_file(config, target, force=options.force)
    return FetchRun(target, outcome, config.enrollment_url)


def sign_out(ctx: Context) -> SignOutRun:
    """Forget the remembered sign-ins: records, cached accounts and tokens of this tool's own cache."""
    from .._credentials import sign_out as forget  # noqa: PLC0415 - azure-identity loads only to run

    directory = identity_dir(ctx.environ)
    return SignOutRun(forget(directory), directory)
