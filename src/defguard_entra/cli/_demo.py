"""``demo``: the whole flow against the built-in emulators, explained. It runs ``provision`` and ``fetch-config``
through the same handlers and presenters as the real commands, then says what happened to each member."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from ._commands import Context, run
from ._options import DemoOptions, Options, options_from
from ._parser import build_parser
from ._present import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, DemoRun, exit_code, present
from ._render import check_report_path, command_line, shown_name

if TYPE_CHECKING:
    from ..testing import DefguardEmulator, GraphEmulator

__all__ = ["demo"]

_DEMO_EXPLAIN = {
    "already_enrolled": "has a device in Defguard: skipped, nothing to do (--enrolled desktop would give a "
    "desktop-activation token for another device)",
    "disabled": "disabled in Defguard: skipped, no token minted",
    "no_email": "no e-mail in Defguard, so no way to find them in Entra: skipped",
    "not_found": "no Entra user with that mail, UPN or other mail: no token minted (their old one survives)",
    "ambiguous": "two Entra users share the address: reported instead of guessing, no token minted",
}


def _parse(argv: Sequence[str]) -> Options:
    return options_from(build_parser().parse_args(argv))


def _run(argv: Sequence[str], ctx: Context, *, show: bool = True) -> int:
    """Run one command as ``main`` would (without its error handling: an error ends the demo), presented unless
    ``show`` is false."""
    result = run(_parse(argv), ctx)
    if show:
        present(result, ctx.console)
    return exit_code(result)


def _end_user_step(ctx: Context, defguard: DefguardEmulator, graph: GraphEmulator, entra_id: str) -> str | None:
    """Step 5 of the documented flow: on alice's machine, read her attributes and write provisioning.json."""
    from ..testing import environment  # noqa: PLC0415

    token = graph.add_principal(
        "alice-laptop", user=entra_id, read_users=False, write_attributes=False, read_definitions=False
    )
    with tempfile.TemporaryDirectory(prefix="defguard-entra-demo-") as tmp:
        target = Path(tmp) / "provisioning.json"
        # -q, and not presented: the file goes into a temporary directory the demo removes, so no "wrote …"
        argv = ["fetch-config", "--output", str(target), "-q"]
        ctx.console.info(
            f"demo: on alice's machine, signed in as alice:  {command_line(argv)}  (a temporary directory, "
            "removed when the demo ends)"
        )
        env = {**environment(defguard, graph), "DEFGUARD_ENTRA_GRAPH_TOKEN": token}
        if _run(argv, attrs.evolve(ctx, environ=env), show=False) != EXIT_OK or not target.exists():
            return None
        written: dict[str, str] = json.loads(target.read_text(encoding="utf-8"))
        return written.get("enrollment_token")


def demo(options: DemoOptions, ctx: Context) -> DemoRun:
    from ..testing import environment, running_emulators  # noqa: PLC0415

    console = ctx.console
    if options.report:  # before anything starts, as every command checks its arguments
        check_report_path(options.report)
    with running_emulators(options.defguard_version) as (defguard, graph, scenario):
        assert scenario is not None
        console.info(
            f"demo: Defguard {defguard.version} emulator at {defguard.url}, Microsoft Graph emulator at "
            f"{graph.url}; group {shown_name(scenario.group)} has {len(scenario.expected)} members"
        )
        argv = ["provision", "--group-name", scenario.group, "--enrollment-token-expiration-time", "1d"]
        argv += ["--report", options.report] if options.report else []
        argv += (
            ["-v"] * options.console.verbose
            + (["--quiet"] if options.console.quiet else [])
            + (["--no-progress"] if options.console.no_progress else [])
        )
        console.info(f"demo: running  {command_line(argv)}  against them (real HTTP on 127.0.0.1)")
        code = _run(argv, attrs.evolve(ctx, environ=environment(defguard, graph)))
        as_expected = not scenario.differences(defguard, graph)
        if code == EXIT_INTERRUPTED:
            return DemoRun(ok=False, interrupted=True)
        end_user = _end_user_step(ctx, defguard, graph, scenario.entra_ids["alice"])
        end_user_ok = end_user == defguard.current_token("alice")
    ok = code == EXIT_FAILED and as_expected and end_user_ok  # the org has members needing attention
    if console.quiet:  # -q: no explanation, as no summary elsewhere; only a failure is said
        if not ok:
            console.error("the result differs from what the sample organisation expects")
        return DemoRun(ok=ok)
    console.out("\nWhat happened:")
    by_kind: dict[tuple[str, str], list[str]] = {}
    for name, kind in sorted(scenario.token_kinds.items()):
        by_kind.setdefault((scenario.kinds_of_user[name], kind), []).append(name)
    for (origin, kind), names in by_kind.items():
        token = "an enrollment token" if kind == "enrollment" else "a desktop-activation token"
        console.out(f"  {'provisioned':<17} {', '.join(names)}: {origin}; got {token}, stored in Entra")
    for status, meaning in _DEMO_EXPLAIN.items():
        names = sorted(n for n, s in scenario.expected.items() if s == status)
        console.out(f"  {status:<17} {', '.join(names)}: {meaning}")
    console.out(
        "  end user          alice: fetch-config, signed in as alice, wrote the desktop client's provisioning.json "
        "(owner-only, in a temporary directory the demo removed) with her URL and token"
        f"{'' if end_user_ok else ' - FAILED'}"
    )
    verdict = (
        "every provisioned member's Entra attributes hold exactly the token Defguard considers valid; no other "
        "member was touched"
        if ok
        else "the result differs from what the sample organisation expects"
    )
    console.out(f"\nCheck: {verdict}.")
    console.out(
        "provision itself exits 1 on this organisation: not_found, ambiguous and no_email members need an "
        "admin's attention. The demo exits 0 because that is the expected outcome."
    )
    return DemoRun(ok=ok)
