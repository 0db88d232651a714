"""Windows (and macOS) readiness, checked on this Linux machine: what the code decides per platform is a pure
function of ``sys.platform`` and the environment, tested here for every platform; what touches this machine's file
system runs for real in folders whose names have spaces and non-ASCII characters."""

from __future__ import annotations

import io
import json
import logging
import signal
import stat
import threading
from pathlib import Path

import pytest

from defguard_entra._desktop_client import WriteOutcome, default_provisioning_path, write_provisioning_file
from defguard_entra._export import ExportManifest
from defguard_entra._files import mode_bits_private, open_to_others, outside_user_profile, write_private_file
from defguard_entra._redact import RedactingFilter
from defguard_entra.cli import _signals
from defguard_entra.cli._console import (
    Console,
    install_signal_handlers,
    interrupt_on_sigterm,
    interrupt_signal_names,
    setup_logging,
    stop_signal_names,
    write,
)
from defguard_entra.cli._present import ExportRun, _present_export
from defguard_entra.models import ProvisioningConfig, Secret
from defguard_entra.provisioning.journal import Journal, RunLock, default_state_dir, run_key

TOKEN = "Zq8Rk2LmP0xY7wVb4NcT1sHd9GfJ3aEu"
CONFIG = ProvisioningConfig("https://enroll.example.com/", Secret(TOKEN))
#: A Windows user whose profile folder has a space and non-ASCII letters (and one outside Latin-1).
PROFILE = Path("Users") / "Jürgen Müller-Łukasz"


# -- signals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "stop", "interrupt"),
    [
        ("win32", ("SIGINT", "SIGBREAK"), ("SIGBREAK",)),  # Ctrl-C, Ctrl-Break; no SIGHUP, SIGTERM cannot be sent
        ("linux", ("SIGINT", "SIGTERM", "SIGHUP"), ("SIGTERM",)),
        ("darwin", ("SIGINT", "SIGTERM", "SIGHUP"), ("SIGTERM",)),
        ("freebsd14", ("SIGINT", "SIGTERM", "SIGHUP"), ("SIGTERM",)),
        ("cygwin", ("SIGINT", "SIGTERM", "SIGHUP"), ("SIGTERM",)),  # POSIX signals under Cygwin
    ],
)
def test_signals_chosen_per_platform(platform: str, stop: tuple[str, ...], interrupt: tuple[str, ...]) -> None:
    assert stop_signal_names(platform) == stop
    assert interrupt_signal_names(platform) == interrupt
    assert "SIGINT" not in interrupt  # Ctrl-C is Python's own KeyboardInterrupt already


def test_only_signals_this_interpreter_has_are_installed() -> None:
    assert _signals._STOP_SIGNALS == (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # this machine is Linux
    assert not hasattr(signal, "SIGBREAK")
    assert _signals._signals(stop_signal_names("win32")) == (signal.SIGINT,)  # SIGBREAK looked up, not assumed


def test_stop_handlers_are_installed_on_every_stop_signal_and_restored() -> None:
    assert threading.current_thread() is threading.main_thread()
    before = {sig: signal.getsignal(sig) for sig in _signals._STOP_SIGNALS}
    stop = threading.Event()
    err = io.StringIO()
    restore = install_signal_handlers(stop, Console(io.StringIO(), err, RedactingFilter(), quiet=False))
    try:
        handlers = {sig: signal.getsignal(sig) for sig in _signals._STOP_SIGNALS}
        assert all(handlers[sig] is not before[sig] for sig in handlers)
        assert len(set(map(id, handlers.values()))) == 1  # one handler counts them all
        handler = handlers[signal.SIGHUP]
        assert callable(handler)
        handler(signal.SIGHUP, None)
        assert stop.is_set()
        assert "stopping: finishing the writes in flight" in err.getvalue()
    finally:
        restore()
    assert {sig: signal.getsignal(sig) for sig in _signals._STOP_SIGNALS} == before


def test_interrupt_handler_turns_sigterm_into_ctrl_c_and_leaves_sighup_alone() -> None:
    before_term, before_hup = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    restore = interrupt_on_sigterm()
    try:
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        assert handler is not before_term
        assert signal.getsignal(signal.SIGHUP) is before_hup
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGTERM, None)
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is before_term


# -- owner-only files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "private"), [("win32", False), ("linux", True), ("darwin", True), ("freebsd14", True)]
)
def test_mode_bits_decide_privacy_only_on_posix(platform: str, private: bool) -> None:
    assert mode_bits_private(platform) is private
    # what os.stat reports on Windows for a folder: made up from the read-only flag, so it proves nothing
    assert open_to_others(stat.S_IFDIR | 0o777, platform) is private
    assert open_to_others(stat.S_IFREG | 0o644, platform) is private
    assert open_to_others(stat.S_IFREG | 0o600, platform) is False
    assert open_to_others(stat.S_IFDIR | 0o700, platform) is False


WINDOWS_USER = {
    "USERPROFILE": r"C:\Users\Jürgen Müller",
    "LOCALAPPDATA": r"C:\Users\Jürgen Müller\AppData\Local",
    "APPDATA": r"\\files.corp.example\Redirected$\jmuller\AppData\Roaming",  # folder redirection to a share
}


@pytest.mark.parametrize(
    ("path", "outside"),
    [
        (r"C:\Users\Jürgen Müller\Documents\export 2026", False),
        (r"c:\users\JÜRGEN MÜLLER\Desktop\out", False),  # Windows paths ignore case
        (r"C:\Users\Jürgen Müller\AppData\Local\defguard-entra", False),
        (r"\\files.corp.example\Redirected$\jmuller\AppData\Roaming\net.defguard", False),
        (r"C:\Exports\VPN", True),  # folders made under C:\ let every local user read
        (r"C:\Users\Public\Documents", True),
        (r"C:\Users\Jürgen Müller2\out", True),  # a sibling whose name starts alike
        (r"D:\Jürgen Müller\out", True),
        (r"\\files.corp.example\Shared\vpn", True),
    ],
)
def test_outside_the_windows_user_profile(path: str, outside: bool) -> None:
    assert outside_user_profile(path, "win32", WINDOWS_USER) is outside
    assert outside_user_profile(path, "linux", WINDOWS_USER) is False  # modes decide there


def test_outside_the_profile_is_not_guessed_without_one() -> None:
    assert outside_user_profile(r"C:\Exports\VPN", "win32", {}) is False
    assert outside_user_profile(r"C:\Exports\VPN", "win32", {"USERPROFILE": "relative"}) is False


def test_export_warns_about_a_folder_outside_the_windows_profile(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir(mode=0o700)
    out.chmod(0o700)
    manifest = ExportManifest(out, "VPN", "defguard", "Defguard", ())
    err = io.StringIO()
    console = Console(io.StringIO(), err, RedactingFilter(), quiet=True)
    _present_export(ExportRun(out, manifest), console)
    assert err.getvalue() == ""
    _present_export(ExportRun(out, manifest, outside_profile=True), console)
    assert err.getvalue() == (
        f"warning: {out} is outside your user profile: on Windows the files inside take that folder's permissions, "
        "which may let other local users read them; export under %USERPROFILE%, or restrict the folder to yourself\n"
    )


def test_private_file_in_a_folder_with_spaces_and_non_ascii_letters(tmp_path: Path) -> None:
    folder = tmp_path / PROFILE / "Documents" / "Rapports défguard"
    folder.mkdir(parents=True)
    path = folder / "rapport d’équipe 2026.json"
    write_private_file(path, [b"{", b'"ok": true', b"}"])
    assert json.loads(path.read_bytes()) == {"ok": True}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temp file left behind


# -- per-user directories ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "environ", "expected"),
    [
        (  # local, not roaming: the journal and the lock belong to this machine
            "win32",
            {"LOCALAPPDATA": "{p}/AppData/Local", "APPDATA": "{p}/AppData/Roaming", "HOME": "{p}/ignored"},
            "{p}/AppData/Local/defguard-entra",
        ),
        ("win32", {"APPDATA": "{p}/AppData/Roaming"}, "{p}/AppData/Roaming/defguard-entra"),
        ("win32", {"LOCALAPPDATA": "", "APPDATA": "{p}/AppData/Roaming"}, "{p}/AppData/Roaming/defguard-entra"),
        ("darwin", {"HOME": "{p}"}, "{p}/Library/Application Support/defguard-entra"),
        ("linux", {"HOME": "{p}"}, "{p}/.local/state/defguard-entra"),
        ("linux", {"HOME": "{p}", "XDG_STATE_HOME": "{p}/état"}, "{p}/état/defguard-entra"),
        ("linux", {"HOME": "{p}", "XDG_STATE_HOME": "relative"}, "{p}/.local/state/defguard-entra"),
    ],
)
def test_state_dir_per_platform(tmp_path: Path, platform: str, environ: dict[str, str], expected: str) -> None:
    profile = str(tmp_path / PROFILE)
    env = {k: v.replace("{p}", profile) for k, v in environ.items()}
    assert default_state_dir(platform, env) == Path(expected.replace("{p}", profile))


@pytest.mark.parametrize("platform", ["win32", "linux", "darwin"])
def test_no_state_dir_when_nothing_says_where(platform: str) -> None:
    assert default_state_dir(platform, {}) is None


def test_journal_and_lock_in_a_profile_with_spaces_and_non_ascii_letters(tmp_path: Path) -> None:
    environ = {"LOCALAPPDATA": str(tmp_path / PROFILE / "AppData" / "Local")}
    directory = default_state_dir("win32", environ)
    assert directory is not None
    assert not directory.exists()
    key = run_key("https://défguard.example.com", "defguard", "Équipe VPN / Paris")
    with (
        RunLock(directory, key, what="provision"),
        Journal(
            directory, key, group_name="Équipe VPN / Paris", defguard_url="https://défguard.example.com"
        ) as journal,
    ):
        journal.minting(["jürgen", "łukasz"])
        journal.done(["jürgen"])
    assert Journal.peek(directory, key) == frozenset({"łukasz"})
    assert all(name.isascii() for name in (p.name for p in directory.iterdir()))  # names stay out of file names


def test_client_data_dir_in_a_profile_with_spaces_and_non_ascii_letters(tmp_path: Path) -> None:
    # the client's own rule (DefGuard/client src-tauri/src/lib.rs app_data_dir): dirs::data_dir() + net.defguard,
    # which on Windows is the roaming %APPDATA%
    roaming = tmp_path / PROFILE / "AppData" / "Roaming"
    environ = {"APPDATA": str(roaming), "LOCALAPPDATA": str(tmp_path / PROFILE / "AppData" / "Local")}
    target = default_provisioning_path("win32", environ)
    assert target == roaming / "net.defguard" / "provisioning.json"
    assert write_provisioning_file(CONFIG, target) is WriteOutcome.WRITTEN
    assert json.loads(target.read_text(encoding="utf-8"))["enrollment_token"] == TOKEN
    assert write_provisioning_file(CONFIG, target) is WriteOutcome.UNCHANGED


# -- console code pages ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        # cp1252 (Windows' ANSI code page in Western Europe) has the ellipsis and typographic quotes: they stay
        ("cp1252", "Zürich … ‘VPN’ – 2 -> 3 >= 1 ok µs"),
        # cp437 (the OEM code page of a console) has ü, µ and ≥ but neither the ellipsis nor the quotes
        ("cp437", "Zürich ... 'VPN' - 2 -> 3 ≥ 1 ok µs"),
    ],
)
def test_text_degrades_to_a_windows_code_page(encoding: str, expected: str) -> None:
    text = "Zürich … ‘VPN’ – 2 → 3 ≥ 1 ✓ µs"
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding=encoding, errors="strict", write_through=True)
    assert write(stream, text)
    assert raw.getvalue().decode(encoding) == expected + "\n"


def test_log_lines_on_a_cp1252_console() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="cp1252", errors="strict", write_through=True)
    handler = setup_logging(1, stream, RedactingFilter(), quiet=False)
    try:
        logging.getLogger("defguard_entra.test").info("group ‘Équipe → Paris’ …")
    finally:
        logging.getLogger().removeHandler(handler)
    assert raw.getvalue().decode("cp1252") == "INFO defguard_entra.test: group ‘Équipe -> Paris’ …\n"
