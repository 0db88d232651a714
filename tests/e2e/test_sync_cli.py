"""The ``sync`` command's CLI: its options, their usage errors (one line, exit 2, nothing sent), its scopes, and
how its report is presented (the actions, the ``held`` line, exit code 4)."""

from __future__ import annotations

import datetime as dt
import io

import pytest

from defguard_entra import cli
from defguard_entra._redact import RedactingFilter
from defguard_entra._scopes import scopes_for
from defguard_entra.cli._console import Console
from defguard_entra.cli._present import EXIT_HELD, ReportRun, exit_code, present
from defguard_entra.models import Outcome, Report, Status
from helpers import Org, run_cli


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-changes", "0"], "error: --max-changes '0' allows no change at all: give a positive number"),
        (["--max-changes", "101%"], "error: --max-changes '101%' is not a percentage from 1% to 100%"),
        (["--max-changes", "0%"], "error: --max-changes '0%' is not a percentage from 1% to 100%"),
        (["--max-changes", "-5"], "error: --max-changes '-5' is not a number of members or a percentage"),
        (["--max-changes", "ten"], "error: --max-changes 'ten' is not a number of members or a percentage"),
        (["--max-changes", "2.5%"], "error: --max-changes '2.5%' is not a number of members or a percentage"),
        (["--refresh-before", "6x"], "error: unknown unit 'x' in --refresh-before '6x'"),
        (["--refresh-before=-1h"], "error: --refresh-before '-1h' is negative"),
        (
            ["--refresh-before", "2d", "--lifetime", "1d"],
            "error: --refresh-before 2d is not shorter than the token lifetime 1d: every run would replace every token",
        ),
        (["--watch", "0s"], "error: --watch interval '0s' is shorter than a second"),
        (["--watch", "soon"], "error: --watch interval 'soon' is not a duration Defguard accepts"),
        (["--user", ""], "error: --user is empty"),
        (["--lifetime", "2x"], "error: --enrollment-token-expiration-time: unknown unit 'x'"),
    ],
)
def test_bad_values_are_one_line_exit_2_and_nothing_is_sent(org: Org, extra: list[str], message: str) -> None:
    org.defguard.reset_log()
    org.graph.reset_log()
    result = run_cli(["sync", "--group-name", org.scenario.group, *extra], org.env)
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message), lines[0]
    assert "Traceback" not in result.stderr
    assert org.defguard.requests == []
    assert org.graph.requests == []


def test_sync_values_are_checked_before_the_api_token_is_read() -> None:
    """``--api-token -`` would read stdin (prompt on a terminal): a bad --max-changes is refused first."""
    result = run_cli(["sync", "--group-name", "G", "--api-token", "-", "--max-changes", "0"], stdin="")
    assert result.code == 2
    assert "--max-changes" in result.stderr
    assert "stdin" not in result.stderr


@pytest.mark.parametrize("value", ["1", "25", "10%", "100%", " 5 % "])
def test_good_max_changes_pass(value: str) -> None:
    from defguard_entra.cli._options import SyncOptions
    from defguard_entra.cli._settings import sync_values

    parsed = sync_values(SyncOptions(max_changes=value, refresh_before="6h", watch="90s")).max_changes
    assert parsed == (f"{int(value.strip(' %'))}%" if "%" in value else int(value))
    assert sync_values(SyncOptions(refresh_before="6h", watch="90s")).watch == dt.timedelta(seconds=90)


def test_sync_help_has_an_example_and_its_options() -> None:
    result = run_cli(["sync", "--help"])
    assert result.code == 0
    text = " ".join(result.stdout.split())
    assert "Example: python -m defguard_entra sync --group-name VPN" in text
    for option in ("--refresh-before", "--max-changes", "--dry-run", "--watch", "--user", "--log-format", "--report"):
        assert option in text, option
    assert "a quarter of the lifetime" in text
    assert "4 held by --max-changes" in text


def test_sync_signs_in_with_what_provision_needs() -> None:
    assert scopes_for("sync") == scopes_for("provision")
    assert "CustomSecAttributeAssignment.ReadWrite.All" in scopes_for("sync")
    assert "GroupMember.Read.All" in scopes_for("sync", "entra")


# -- presenting a sync report --------------------------------------------------------------------------------------


def _report(**changes: object) -> Report:
    now = dt.datetime.now(dt.UTC)
    outcomes = (Outcome("alice", "alice@example.com", Status.PROVISIONED), Outcome("bob", "b@x", Status.CLEARED))
    fields: dict[str, object] = {"plan": {"mint": 1, "clear": 1}}
    fields.update(changes)
    return Report("sync", now, now, "VPN", "defguard", "Defguard", outcomes, **fields)  # type: ignore[arg-type]


def _presented(report: Report) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    present(ReportRun(report), Console(out, err, RedactingFilter(), quiet=False))
    return out.getvalue(), err.getvalue()


def test_a_held_plan_exits_4_and_says_why() -> None:
    held = _report(held="the plan clears 30 of 40 members, more than --max-changes 25 allows: nothing changed")
    assert exit_code(ReportRun(held)) == EXIT_HELD == cli.EXIT_HELD == 4
    out, err = _presented(held)
    assert "warning: held: the plan clears 30 of 40 members" in err
    assert "| mint   |       1 |" in out  # the plan per action, beside the statuses


def test_a_plan_that_was_not_held_keeps_the_usual_codes() -> None:
    assert exit_code(ReportRun(_report())) == 0
    assert exit_code(ReportRun(_report(fatal_error="Defguard went away", held="x"))) == 3
    assert exit_code(ReportRun(_report(interrupted=True, held="x"))) == 130
    out, err = _presented(_report())
    assert "held" not in err
    assert "| action |" in out
