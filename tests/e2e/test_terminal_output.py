"""Output that fits the terminal, honest progress and endings, complete help, and a demo that says what it runs
(issue 16). The CLI runs against the emulators, on a pseudo-terminal where a terminal matters."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from defguard_entra.cli import COMMANDS, build_parser, main
from defguard_entra.cli._console import Console, ProgressLine
from defguard_entra.cli._parser import subparsers
from defguard_entra.cli._render import format_summary, shown_name
from defguard_entra.models import Outcome, Report, Status
from defguard_entra.testing import DefguardEmulator, Faults, GraphEmulator, environment, seed_sample_organisation
from helpers import Org, Result, run_cli

ROOT = Path(__file__).resolve().parents[2]
ANSI = "\x1b["
LONG_WHY = "the Entra user could not be written: " + "a reason that goes on and on " * 10


@pytest.fixture
def org2(defguard2: DefguardEmulator, graph: GraphEmulator) -> Org:
    org = Org(defguard2, graph, seed_sample_organisation(defguard2, graph))
    # a member whose "why" is long: not found in Entra, with a long address
    defguard2.add_user("longmail", email="a.very.long.address.for.wrapping.tests@subdomain.example.com")
    defguard2.add_user("oconnor", email=LONG_WHY.replace(" ", "-")[:60] + "@example.com")
    defguard2.add_group("Wide", ["longmail", "oconnor", *org.scenario.expected])
    return org


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


def _on_a_terminal(argv: list[str], env: dict[str, str], *, columns: int | None) -> Result:
    """Run the CLI in-process with stdout on a pseudo-terminal (``stty cols`` = ``columns``); stderr captured."""
    fcntl, pty = pytest.importorskip("fcntl"), pytest.importorskip("pty")  # POSIX only
    termios, tty = pytest.importorskip("termios"), pytest.importorskip("tty")
    master, slave = pty.openpty()
    tty.setraw(slave)  # no \n → \r\n translation: the bytes read are the bytes written
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    err = io.StringIO()
    with os.fdopen(slave, "w", encoding="utf-8") as stdout:
        assert stdout.isatty()
        code = main(argv, environ=env, stdin=io.StringIO(""), stdout=stdout, stderr=err)
    reader.join(timeout=10)
    os.close(master)
    return Result(code, b"".join(chunks).decode("utf-8"), err.getvalue())


# -- output that fits the terminal ---------------------------------------------------------------------------


@pytest.mark.parametrize("width", [40, 200])
def test_tables_fit_columns_and_the_report_keeps_the_full_text(org2: Org, tmp_path: Path, width: int) -> None:
    report = tmp_path / "r.json"
    result = run_cli(
        ["provision", "--group-name", "Wide", "--no-progress", "--report", str(report)],
        {**org2.env, "COLUMNS": str(width)},
    )
    assert result.code == 1, result.stderr
    lines = _lines(result.stdout)
    assert max(len(line) for line in lines) <= width, "\n".join(line for line in lines if len(line) > width)
    why = {u["username"]: u["error"] for u in json.loads(report.read_text())["users"]}
    assert len(why["oconnor"]) > 60  # the report holds the whole reason …
    shown = "".join(line for line in lines if line.startswith("|"))
    for word in why["oconnor"].split()[:5]:
        assert word in shown  # … and the table shows it, wrapped rather than dropped
    if width == 200:  # wide enough: every row on one line, as before
        assert any("longmail" in line and "not_found" in line for line in lines)


def test_without_columns_a_pipe_gets_unwrapped_lines(org2: Org) -> None:
    result = run_cli(["provision", "--group-name", "Wide", "--no-progress"], org2.env)
    assert result.code == 1
    assert any(len(line) > 120 for line in _lines(result.stdout))  # nothing is cut that a script might read
    assert ANSI not in result.stdout + result.stderr


@pytest.mark.parametrize("columns", [40, 200])
def test_on_a_terminal_its_width_is_the_limit_and_colour_is_allowed(org2: Org, columns: int) -> None:
    env = {k: v for k, v in org2.env.items() if k not in {"COLUMNS", "NO_COLOR", "TERM"}}
    result = _on_a_terminal(["provision", "--group-name", "Wide", "--no-progress"], env, columns=columns)
    assert result.code == 1, result.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert max(len(line) for line in _lines(plain)) <= columns
    assert ANSI in result.stdout  # the table headers are highlighted on a terminal
    assert "status" in plain


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}], ids=["NO_COLOR", "TERM=dumb"])
@pytest.mark.parametrize("columns", [40, 200])
def test_no_colour_with_no_color_or_a_dumb_terminal(org2: Org, env: dict[str, str], columns: int) -> None:
    result = _on_a_terminal(["provision", "--group-name", "Wide", "--no-progress"], {**org2.env, **env}, columns=40)
    assert result.code == 1, result.stderr
    assert ANSI not in result.stdout + result.stderr
    assert max(len(line) for line in _lines(result.stdout)) <= 40
    piped = run_cli(["provision", "--group-name", "Wide", "--no-progress"], {**org2.env, "COLUMNS": str(columns)})
    assert ANSI not in piped.stdout + piped.stderr  # not a terminal: never colour


def test_statuses_in_one_order_everywhere(org2: Org, tmp_path: Path) -> None:
    order = [s.value for s in Status]

    def in_order(names: list[str]) -> bool:
        known = [n for n in names if n in order]
        return known == sorted(known, key=order.index) and len(known) >= 2

    result = run_cli(["provision", "--group-name", "Wide", "--no-progress"], org2.env)
    table = result.stdout.split("\n| status ")[1].split("\n-", 2)[1]
    assert in_order(re.findall(r"^\| (\w+)", table, re.MULTILINE))
    export = run_cli(["export", "--group-name", "Wide", "--output-dir", str(tmp_path / "out")], org2.env)
    summary = export.stdout.split("\n| status ")[1].split("\n-", 2)[1]
    rows = re.findall(r"^\| (\w+)", summary, re.MULTILINE)
    assert rows[0] == "exported"
    assert in_order(rows[1:]) or len(rows[1:]) < 2
    for name, parser in subparsers(build_parser()).items():
        text = parser.format_help().replace("\n", " ")
        if "Statuses:" in text:
            statuses = re.sub(r"\([^)]*\)", "", text.split("Statuses:", 1)[1].split(". ", 1)[0])
            listed = re.findall(r"\b([a-z]+(?:_[a-z]+)*)\b", statuses)
            assert in_order(listed), name
    docs = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8").split("## Statuses", 1)[1]
    assert re.findall(r"^\| `(\w+)` \|", docs, re.MULTILINE)[: len(order)] == order


def _report(group: str, problems: int = 1) -> Report:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    outcomes = tuple(Outcome(f"u{n}", f"u{n}@example.com", Status.NOT_FOUND, error="gone") for n in range(problems))
    return Report("provision", now, now, group, "defguard", "Defguard", outcomes)


@pytest.mark.parametrize(
    ("typed", "shown"),
    [
        ("Staff", "Staff"),
        ("VPN Users", '"VPN Users"'),
        ("VPN Users ", '"VPN Users "'),
        ('O\'Brien "team"', '“O\'Brien "team"”'),
        ('say "hi"', "'say \"hi\"'"),
        ("Équipe VPN / Paris", '"Équipe VPN / Paris"'),
        ("a\nb", '"a\\nb"'),
    ],
)
def test_names_are_shown_as_typed(typed: str, shown: str) -> None:
    assert shown_name(typed) == shown
    assert f"of group {shown}:" in format_summary(_report(typed))


def test_a_huge_name_is_shortened_with_an_ellipsis() -> None:
    name = "x" * 100_000
    title = format_summary(_report(name)).split("\n", 1)[0]
    assert len(title) < 120
    assert "…" in title
    assert title.startswith("provision of group " + "x" * 50)


def test_the_overflow_line_names_the_report_it_points_at(tmp_path: Path) -> None:
    report = _report("G", problems=30)
    without = format_summary(report).rsplit("\n", 1)[1]
    assert without == "… and 5 more: see the report (--report PATH)"
    path = tmp_path / "r.json"
    given = format_summary(report, report_path=path).rsplit("\n", 1)[1]
    assert given == f"… and 5 more: see {path}"
    assert "--report PATH" not in given


# -- honest progress and endings -------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_warning_after_a_terminal_progress_line_starts_on_its_own_line() -> None:
    from defguard_entra._redact import RedactingFilter

    err = _Terminal()
    console = Console(io.StringIO(), err, RedactingFilter(), quiet=False)
    stop = threading.Event()
    progress = ProgressLine(err, "provisioning", stop)
    progress(200, 2000)
    stop.set()
    console.warn("stopping: finishing the writes in flight, then writing the report")
    progress(240, 2000)
    console.warn("interrupted")
    text = err.getvalue()
    expected = [
        "\rprovisioning: 200/2000 (10%)",
        "warning: stopping: finishing the writes in flight, then writing the report",
        "\rprovisioning: 240/2000 done, stopping: 1760 not started",
        "warning: interrupted",
        "",
    ]
    assert text.split("\n") == expected
    assert "100%" not in text


def test_after_an_interruption_progress_counts_only_members_worked_on(
    defguard2: DefguardEmulator, graph: GraphEmulator
) -> None:
    from defguard_entra import ProvisioningService, Settings

    graph.define_attribute_set("Defguard")
    names = [f"user{n:03}" for n in range(300)]
    for name in names:
        defguard2.add_user(name, email=f"{name}@example.com")
        graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
    defguard2.add_group("Many", names)
    stop = threading.Event()
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        stop.set()

    with ProvisioningService.from_settings(Settings.from_env(environment(defguard2, graph))) as service:
        report = service.provision("Many", progress=progress, stop=stop)
    assert report.interrupted
    worked_on = len(names) - len(report.by_status("interrupted"))
    assert calls[-1] == (worked_on, len(names))
    assert worked_on < len(names)


def test_an_interrupted_run_says_what_was_left_and_the_command_that_finishes(tmp_path: Path) -> None:
    latency = Faults(latency=0.05)
    with (
        DefguardEmulator("2.0", enrollment_url="https://enroll.example.com", faults=latency) as defguard,
        GraphEmulator(faults=Faults(latency=0.05)) as graph,
    ):
        graph.define_attribute_set("Defguard")
        names = [f"user{n:03}" for n in range(200)]
        for name in names:
            defguard.add_user(name, email=f"{name}@example.com")
            graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
        defguard.add_group("Night Shift", names)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environment(defguard, graph)}
        report = tmp_path / "interrupted.json"
        argv = ["provision", "--group-name", "Night Shift", "--concurrency", "2", "--report", str(report)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "defguard_entra", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while defguard.issued_count < 5:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the run never started minting"
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, stderr
    left = sum(1 for u in json.loads(report.read_text())["users"] if u["status"] == "interrupted")
    assert left
    assert f"{len(names)}/{len(names)}" not in stderr
    assert "100%" not in stderr
    lines = _lines(stderr)
    assert lines[-1] == (
        f"warning: interrupted: {left:,} of {len(names)} members not done. To finish the job, run (with the same "
        'other options):  python -m defguard_entra provision --group-name "Night Shift" --only-missing'
    )
    assert any(line.startswith("warning: stopping") for line in lines)


# -- help that is complete -------------------------------------------------------------------------------------


def _help(command: str) -> str:
    result = run_cli([command, "--help"], {"COLUMNS": "200"})
    assert result.code == 0
    return result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_lists_its_exit_codes_and_statuses(command: str) -> None:
    text = _help(command)
    assert "Exit codes:" in text
    if command in {"provision", "demo", "status", "clear", "export"}:
        assert "statuses" in text.lower()
        assert "interrupted" in text or command == "demo"
    assert "130 interrupted" in text or command in {"check", "fetch-config"}


@pytest.mark.parametrize("command", ["provision", "status", "clear", "check", "export"])
def test_the_usage_line_shows_group_name_as_required(command: str) -> None:
    usage = _help(command).split("\n\n", 1)[0]
    assert "--group-name NAME" in usage
    assert "[--group-name NAME]" not in usage
    extra = ["--output-dir", "out"] if command == "export" else []
    missing = run_cli(
        [command, *extra], {"DEFGUARD_URL": "https://defguard.example.com", "DEFGUARD_API_TOKEN": "t" * 40}
    )
    assert missing.code == 2
    assert "--group-name is required" in missing.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_no_progress_is_offered_only_where_there_is_progress(command: str) -> None:
    offered = "--no-progress" in _help(command)
    assert offered == (command in {"provision", "sync", "clear", "export", "demo"})


def test_no_progress_is_still_accepted_where_it_is_not_offered(org2: Org) -> None:
    result = run_cli(["status", "--group-name", org2.scenario.group, "--no-progress"], org2.env)
    assert result.code == 1, result.stderr


def test_quiet_means_the_same_everywhere() -> None:
    helps = {re.sub(r"\s+", " ", _help(c).split("-q, --quiet", 1)[1].split("--", 1)[0]).strip() for c in COMMANDS}
    assert len(helps) == 1


# -- demo ------------------------------------------------------------------------------------------------------


def test_demo_quiet_prints_no_explanation() -> None:
    result = run_cli(["demo", "-q"])
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_demo_announces_exactly_the_command_lines_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from defguard_entra.cli import _demo
    from defguard_entra.cli._render import command_line

    ran: list[list[str]] = []
    parse = _demo._parse

    def recording(argv: list[str]) -> object:
        ran.append(list(argv))
        return parse(argv)

    monkeypatch.setattr(_demo, "_parse", recording)
    result = run_cli(["demo", "--no-progress"])
    assert result.code == 0, result.stderr
    assert [argv[0] for argv in ran] == ["provision", "fetch-config"]
    for argv in ran:
        assert f"  {command_line(argv)}  " in result.stderr
    assert "wrote /" not in result.stdout + result.stderr  # the temporary provisioning.json is not reported


def test_demo_checks_report_before_starting_the_emulators(monkeypatch: pytest.MonkeyPatch) -> None:
    import defguard_entra.testing

    def never(*args: object, **kwargs: object) -> Iterator[None]:
        raise AssertionError("the emulators were started")

    monkeypatch.setattr(defguard_entra.testing, "running_emulators", never)
    result = run_cli(["demo", "--report", "/nonexistent/dir/r.json"])
    assert result.code == 2
    assert "does not exist" in result.stderr
    assert run_cli(["demo", "--report", "r.txt"]).code == 2
