"""The CLI's front door: help, version, the implied command, demo, and the README's two set-up commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from defguard_entra import __version__
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_version_and_help() -> None:
    result = run_cli(["--version"])
    assert result.code == 0
    assert __version__ in result.stdout
    result = run_cli(["--help"])
    assert result.code == 0
    assert "provision" in result.stdout
    assert "demo" in result.stdout


def test_no_arguments_prints_help_and_exits_2() -> None:
    result = run_cli([])
    assert result.code == 2
    assert "usage:" in result.stdout


def test_provision_is_implied_for_the_powershell_form() -> None:
    result = run_cli(["-GroupName", "G", "-Url", "notaurl"])
    assert result.code == 2
    assert "--url" in result.stderr


@pytest.mark.parametrize("version", ["1.6", "2.0"])
def test_demo_in_process(version: str, tmp_path) -> None:
    result = run_cli(["demo", "--defguard-version", version, "--report", str(tmp_path / "d.json")])
    assert result.code == 0, result.stdout + result.stderr
    assert "Check: every provisioned member's Entra attributes hold exactly the token" in result.stdout
    assert (tmp_path / "d.json").exists()


def test_python_m_help_and_demo(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "defguard_entra", "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0
    assert "usage: defguard-entra" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "defguard_entra", "demo", "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "What happened" in proc.stdout
    # python -m ends with os._exit: the demo's directories (the emulators' CA key among them) must be removed by the
    # demo itself, never left to a finalizer at exit
    assert list(tmp_path.iterdir()) == []


#: ``python -m defguard_entra`` with an exit handler of its own registered first: the handler runs only if the
#: interpreter's normal teardown does. With ``FAKE_MAIN`` set, ``cli.main`` is replaced by one that leaves its
#: output in the streams' buffers (on a pipe, both are block-buffered) and returns 3.
_MODULE_WITH_AN_EXIT_HANDLER = """
import atexit, os, runpy, sys
atexit.register(lambda: sys.__stderr__.write("teardown ran\\n"))
if os.environ.get("FAKE_MAIN"):
    import defguard_entra.cli
    def main():
        sys.stdout.write("left in the buffer\\n")
        sys.stderr.write("this too\\n")
        return 3
    defguard_entra.cli.main = main
sys.argv = ["defguard_entra", *sys.argv[1:]]
runpy.run_module("defguard_entra", run_name="__main__", alter_sys=True)
"""


def _python_m(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    width = str(shutil.get_terminal_size().columns)  # what argparse wraps the help to, here and in the child
    return subprocess.run(
        [sys.executable, "-c", _MODULE_WITH_AN_EXIT_HANDLER, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        # buffered as on a user's machine (PYTHONUNBUFFERED would hide a missing flush)
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "COLUMNS": width, **env},
    )


@pytest.mark.parametrize(
    ("argv", "code", "stream", "text"),
    [
        (["--help"], 0, "stdout", "usage: defguard-entra"),
        (["provision", "--group-name", "G", "--url", "notaurl"], 2, "stderr", "--url"),
    ],
)
def test_python_m_skips_the_interpreters_teardown_and_keeps_output_and_exit_code(
    argv: list[str], code: int, stream: str, text: str
) -> None:
    # __main__ ends with os._exit: the teardown costs 0.1 s of every run (docs/performance.md, "Client CPU")
    proc = _python_m(argv)
    assert proc.returncode == code, proc.stderr
    assert text in getattr(proc, stream)
    assert "teardown ran" not in proc.stderr
    if stream == "stdout":
        assert proc.stdout == run_cli(argv).stdout  # every byte, as the in-process run writes it


def test_python_m_flushes_what_main_left_buffered_before_it_exits() -> None:
    # The console flushes every write; this is the entry point's own guarantee, for any writer that does not.
    proc = _python_m([], FAKE_MAIN="1")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "left in the buffer\n", "this too\n")


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second() -> None:
    demo, tests = _readme_commands()
    assert demo.endswith("-m defguard_entra demo")
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f"TEST_COMMAND='{tests}'" in ci


def test_serve_prints_working_credentials_for_admin_and_end_user(tmp_path) -> None:
    """What `serve` prints is enough to run provision, then fetch-config as alice, by hand."""
    import os
    import shlex
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "defguard_entra.testing", "serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFGUARD_", "AZURE_"))}
        alice_token = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip().startswith("export "):
                key, _, value = line.strip()[len("export ") :].partition("=")
                env[key] = shlex.split(value)[0]
            elif "DEFGUARD_ENTRA_GRAPH_TOKEN=" in line and "fetch-config" in line:
                alice_token = shlex.split(line.strip())[0].partition("=")[2]
            elif line.startswith("Ctrl-C"):
                break
        assert alice_token
        provision = subprocess.run(
            [sys.executable, "-m", "defguard_entra", "provision", "--group-name", "VPN Users", "-q"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert provision.returncode == 1, provision.stderr  # the sample organisation has members needing attention
        target = tmp_path / "provisioning.json"
        fetch = subprocess.run(
            [sys.executable, "-m", "defguard_entra", "fetch-config", "--output", str(target)],
            env={**env, "DEFGUARD_ENTRA_GRAPH_TOKEN": alice_token},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert fetch.returncode == 0, fetch.stderr
        assert set(json.loads(target.read_text())) == {"enrollment_url", "enrollment_token"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# -- typed options -------------------------------------------------------------------------------------------------

_EVERY_COMMAND = [
    ["provision", "--group-name", "G", "--dry-run", "--retries", "2", "-v"],
    ["demo", "--defguard-version", "1.6", "-q"],
    ["fetch-config", "--output", "p.json", "--force", "--tenant-id", "t"],
    ["export", "--group-name", "G", "--output-dir", "out", "--provision", "--concurrency", "4"],
    ["status", "--group-name", "G", "--enrolled", "desktop", "--report", "s.csv"],
    ["clear", "--group-name", "G", "--all", "--graph-write-rate", "5"],
    ["check", "--group-name", "G", "--probe-write", "--timeout", "9"],
    ["sign-out", "-q"],
    ["sync", "--group-name", "G", "--max-changes", "5%", "--watch", "1h", "--user", "a", "--log-format", "json"],
]


@pytest.mark.parametrize("argv", _EVERY_COMMAND, ids=lambda argv: argv[0])
def test_every_parsed_option_lands_in_the_typed_options(argv: list[str]) -> None:
    """The namespace becomes one frozen options object per command; no value is dropped or renamed on the way."""
    from defguard_entra.cli import COMMANDS, build_parser
    from defguard_entra.cli._options import options_from

    assert {argv[0] for argv in _EVERY_COMMAND} == set(COMMANDS)
    namespace = build_parser().parse_args(argv)
    options = options_from(namespace)
    assert options.command == argv[0]
    flags = options.flags()
    for name, value in vars(namespace).items():
        if name != "command":
            assert flags[name] == value, name


def test_an_option_the_options_classes_do_not_model_fails_loudly() -> None:
    import argparse

    from defguard_entra.cli._options import options_from

    with pytest.raises(TypeError, match="no field for surprise"):
        options_from(argparse.Namespace(command="check", group_name="G", surprise=1))


def test_exit_codes_come_from_the_returned_data() -> None:
    from defguard_entra.cli._present import DemoRun, exit_code

    assert exit_code(DemoRun(ok=True)) == 0
    assert exit_code(DemoRun(ok=False)) == 1
    assert exit_code(DemoRun(ok=False, interrupted=True)) == 130
