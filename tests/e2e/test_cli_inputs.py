"""Input the CLI must survive: secrets in usage errors, PowerShell habits, token files and prompts,
odd numbers, http://, NUL bytes and control characters, and consoles that cannot show everything or go away.

Everything drives the real CLI: in-process through :func:`helpers.run_cli` (or :func:`defguard_entra.cli.main`
with injected streams), or as ``python -m defguard_entra`` for encodings and broken pipes.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from defguard_entra import ConfigurationError, Settings
from defguard_entra.cli import _settings as cli_settings
from defguard_entra.cli import main
from defguard_entra.testing import DefguardEmulator, GraphEmulator, seed_sample_organisation
from helpers import Org, Result, run_cli

API_TOKEN = "dg-" + "Q7x" * 10 + "Zp"  # dg- and 32 alphanumerics, like a real one
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA"
RANDOM = "Xk29vQm7LpZ4aB8nRt3YwH6c"  # a client secret or API key of some other shape
PASSWORD = "hunter2"  # short: masked as a whole word


@pytest.fixture
def org2(defguard2: DefguardEmulator, graph: GraphEmulator) -> Org:
    """The sample organisation on Defguard 2.0 only (these tests are about the CLI, not the server line)."""
    return Org(defguard2, graph, seed_sample_organisation(defguard2, graph))


def _no_requests(org: Org) -> None:
    assert org.defguard.requests == []
    assert org.graph.requests == []


def _one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _env_without_token(org: Org) -> dict[str, str]:
    return {k: v for k, v in org.env.items() if k != "DEFGUARD_API_TOKEN"}


# -- 1. usage errors never echo a secret ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "secret"),
    [
        (["-apitoken", API_TOKEN, "--bogus"], API_TOKEN),
        (["-ApiToken:" + API_TOKEN, "--bogus"], API_TOKEN),
        (["-APITOKEN=" + API_TOKEN, "stray"], API_TOKEN),
        (["--apitoken", API_TOKEN], API_TOKEN),
        (["--apitoken=" + API_TOKEN], API_TOKEN),
        (["--ApiToken", API_TOKEN, "extra", "words"], API_TOKEN),
        (["--timeout", API_TOKEN], API_TOKEN),
        (["--timeout", RANDOM], RANDOM),
        (["--concurrency", RANDOM], RANDOM),
        (["--auth", RANDOM], RANDOM),
        (["--graph-token", JWT], JWT),
        (["--graph-token=" + JWT], JWT),
        (["-GraphToken:" + JWT], JWT),
        (["--client-secret", RANDOM], RANDOM),
        (["status", "--group-name", "G", "--CLIENT-SECRET=" + RANDOM], RANDOM),
        (["--password", PASSWORD], PASSWORD),
        (["-Password:" + PASSWORD], PASSWORD),
        (["provision", "--group-name", "G", "--api-token", PASSWORD, PASSWORD], PASSWORD),
        (["provision", "--group-name", "G", "--secret", PASSWORD], PASSWORD),
        (["provision", "--group-name", "G", "stray", RANDOM], RANDOM),
        (["provision", "--group-name", "G", API_TOKEN], API_TOKEN),
        (["-ApiTokn:" + API_TOKEN], API_TOKEN),
        ([API_TOKEN], API_TOKEN),  # pasted where the command goes
        ([RANDOM, "--group-name", "G"], RANDOM),
        (["--token", RANDOM], RANDOM),
        (["-Url", RANDOM, "-GroupName", "G"], RANDOM),  # -Url and -ApiToken swapped: the error names --url
        (["-Url", API_TOKEN, "-GroupName", "G"], API_TOKEN),
        (["-GroupName", "G", "-EnrollmentTokenExpirationTime", RANDOM], RANDOM),
        (["-GroupName", "G", "--graph-url", RANDOM], RANDOM),
        (["status", "--api-token"], "--api-token"),  # nothing to mask, but a one-line error all the same
    ],
)
def test_usage_errors_never_echo_a_secret(org2: Org, argv: list[str], secret: str) -> None:
    result = run_cli(argv, _env_without_token(org2))
    assert result.code == 2, result.stderr
    line = _one_error_line(result)
    if secret != "--api-token":
        assert secret not in result.stdout + result.stderr
    else:
        assert "expected one argument" in line
    _no_requests(org2)


def test_a_secret_option_value_is_masked_even_in_an_error_about_another_word(org2: Org) -> None:
    result = run_cli(["status", "--group-name", "G", "-vv", "--bogus=" + RANDOM, "--password", PASSWORD])
    assert result.code == 2
    assert RANDOM not in result.stderr
    assert PASSWORD not in result.stderr
    assert "--bogus" in result.stderr


def test_a_literal_token_in_every_accepted_form_stays_out_of_the_output(org2: Org) -> None:
    token = org2.defguard.admin_token
    env = _env_without_token(org2)
    for form in (["-ApiToken:" + token], ["-apitoken", token], ["--API-TOKEN=" + token], ["--api-token:" + token]):
        result = run_cli(["status", "-GroupName", org2.scenario.group, *form, "-vv"], env)
        assert result.code == 1, (form, result.stderr)
        assert "visible to other local users" in result.stderr
        assert token not in result.stdout + result.stderr


# -- 2. PowerShell habits ---------------------------------------------------------------------------------------


def _status(org: Org, argv: list[str]) -> Result:
    return run_cli(["status", *argv, "--no-progress"], _env_without_token(org))


@pytest.mark.parametrize(
    "spelling",
    [
        ["-Url", "{url}", "-ApiToken", "{token}", "-GroupName", "{group}"],
        ["-url", "{url}", "-apitoken", "{token}", "-groupname", "{group}"],
        ["-URL", "{url}", "-APITOKEN", "{token}", "-GROUPNAME", "{group}"],
        ["-Url:{url}", "-ApiToken:{token}", "-GroupName:{group}"],
        ["-url={url}", "-apiToken={token}", "-groupName:{group}", "-attributesetname", "Defguard"],
        ["--URL", "{url}", "--Api-Token={token}", "--GROUP-NAME", "{group}", "-AttributeSetName:Defguard"],
        ["--url", "{url}", "--api-token", "{token}", "--group-name", "{group}", "-v"],
    ],
)
def test_powershell_spellings_mean_the_documented_options(org2: Org, spelling: list[str]) -> None:
    values = {"url": org2.defguard.url, "token": org2.defguard.admin_token, "group": org2.scenario.group}
    argv = [word.format(**values) for word in spelling]
    expected = _status(org2, ["--url", values["url"], "--api-token", values["token"], "--group-name", values["group"]])
    result = _status(org2, argv)
    assert result.code == expected.code == 1, result.stderr
    assert _untimed(result.stdout) == _untimed(expected.stdout)
    assert values["token"] not in result.stdout + result.stderr


def _untimed(text: str) -> str:
    return re.sub(r"\d+(\.\d+)? seconds", "N seconds", text)


def test_implied_provision_with_colon_values_and_a_lifetime(org2: Org) -> None:
    token = org2.defguard.admin_token
    argv = [
        f"-Url:{org2.defguard.url}",
        f"-ApiToken:{token}",
        f"-GroupName:{org2.scenario.group}",
        "-AttributeSetName:Defguard",
        "-EnrollmentTokenExpirationTime:1d",
        "--no-progress",
    ]
    result = run_cli(argv, _env_without_token(org2))
    assert result.code == 1, result.stderr  # the sample organisation has members needing attention
    assert "provision of group" in result.stdout
    assert org2.defguard.current_token("alice") is not None
    assert token not in result.stdout + result.stderr
    minted = org2.defguard.requests_to("start_enrollment")
    assert minted
    assert all(r.json().get("token_expiration_time") == "86400s" for r in minted)


def test_the_powershell_example_as_written_still_implies_provision(org2: Org) -> None:
    argv = ["-Url", org2.defguard.url, "-ApiToken", org2.defguard.admin_token, "-GroupName", org2.scenario.group]
    result = run_cli(argv, _env_without_token(org2))
    assert result.code == 1, result.stderr
    assert org2.defguard.current_token("alice") is not None


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["-G", "VPN Users"], "did you mean --group-name / -GroupName?"),
        (["-Grp", "VPN Users"], "did you mean --group-name / -GroupName?"),
        (["-Enr", "1d"], "did you mean --enrollment-token-expiration-time / -EnrollmentTokenExpirationTime?"),
        (["-Ur", "https://x"], "did you mean --url / -Url?"),
        (["-ApiTok:" + API_TOKEN], "did you mean --api-token / -ApiToken?"),
        (["-Verbose"], "did you mean --verbose?"),
        (["-dry-run"], "did you mean --dry-run?"),
        (["--group", "G"], "did you mean --group-name / -GroupName?"),
        (["--apitoken", API_TOKEN], "did you mean --api-token / -ApiToken?"),
        (["fetch-config", "-Url", "https://x"], "fetch-config does not take --url"),
        (["status", "--group-name", "G", "--all"], "status does not take --all; clear does"),
        (["status", "-EnrollmentTokenExpirationTime", "1d"], "status does not take --enrollment-token-expiration"),
        (["--graph-token", JWT], "DEFGUARD_ENTRA_GRAPH_TOKEN"),
        (["-GroupName", "G", "--dry-run:yes"], "takes no value"),
    ],
)
def test_unknown_single_dash_words_are_refused_with_a_suggestion(org2: Org, argv: list[str], hint: str) -> None:
    result = run_cli(argv, org2.env)
    assert result.code == 2
    line = _one_error_line(result)
    assert hint in line
    assert API_TOKEN not in line
    assert JWT not in line
    _no_requests(org2)


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("statsu", "unknown command 'statsu': did you mean 'status'?"),
        ("Provision", "unknown command 'Provision': did you mean 'provision'?"),
        ("STATUS", "unknown command 'STATUS': did you mean 'status'?"),
        ("exprot", "unknown command 'exprot': did you mean 'export'?"),
        ("help", "unknown command 'help': for help run defguard-entra --help"),
        ("frobnicate", "unknown command 'frobnicate': the commands are provision, demo"),
    ],
)
def test_unknown_commands_say_what_was_meant(org2: Org, word: str, message: str) -> None:
    result = run_cli([word, "--group-name", "G"], org2.env)
    assert result.code == 2
    line = _one_error_line(result)
    assert message in line
    assert "unrecognized arguments" not in line
    _no_requests(org2)


def test_short_flags_and_option_values_pass_untouched(org2: Org) -> None:
    # -vv is a cluster of short flags; "-1" is --retries' value, not an option; "-" is --api-token's
    result = run_cli(["status", "--group-name", "G", "-vv", "--retries", "-1"], org2.env)
    assert result.code == 2
    assert "--retries must be 0 or more" in result.stderr
    result = run_cli(
        ["status", "-GroupName", org2.scenario.group, "-ApiToken", "-", "-q"],
        _env_without_token(org2),
        stdin=org2.defguard.admin_token + "\n",
    )
    assert result.code == 1, result.stderr


# -- 3. where the API token comes from ---------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_with_stdin(argv: list[str], env: dict[str, str], stdin: io.StringIO) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, environ=env, stdin=stdin, stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())


def test_api_token_dash_on_a_terminal_prompts_without_echo(org2: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    token = org2.defguard.admin_token
    prompts: list[str] = []

    def fake_getpass(prompt: str = "", stream: io.TextIOBase | None = None) -> str:
        prompts.append(prompt)
        assert stream is not None
        stream.write(prompt)  # getpass writes its prompt to the stream it is given: stderr, not stdout
        return token

    monkeypatch.setattr(cli_settings.getpass, "getpass", fake_getpass)
    argv = ["status", "--group-name", org2.scenario.group, "--api-token", "-", "--no-progress"]
    result = _run_with_stdin(argv, _env_without_token(org2), _Terminal())
    assert result.code == 1, result.stderr
    assert prompts == ["Defguard API token (input hidden): "]
    assert "Defguard API token (input hidden)" in result.stderr
    assert "Defguard API token" not in result.stdout
    assert token not in result.stdout + result.stderr


def test_api_token_dash_on_a_terminal_with_nothing_entered(org2: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_input(prompt: str = "", stream: object = None) -> str:
        raise EOFError

    monkeypatch.setattr(cli_settings.getpass, "getpass", no_input)
    argv = ["status", "--group-name", "G", "--api-token", "-"]
    result = _run_with_stdin(argv, _env_without_token(org2), _Terminal())
    assert result.code == 2
    assert "no token entered" in _one_error_line(result)
    monkeypatch.setattr(cli_settings.getpass, "getpass", lambda prompt="", stream=None: "   ")
    result = _run_with_stdin(argv, _env_without_token(org2), _Terminal())
    assert result.code == 2
    assert "--api-token -" in _one_error_line(result)
    _no_requests(org2)


@pytest.mark.parametrize("state", ["empty", "blank", "closed", "none"])
def test_api_token_dash_with_no_stdin(org2: Org, state: str) -> None:
    stdin = io.StringIO({"empty": "", "blank": "\n\n", "closed": "x", "none": ""}[state])
    if state == "closed":
        stdin.close()
    out, err = io.StringIO(), io.StringIO()
    argv = ["status", "--group-name", "G", "--api-token", "-"]
    if state == "none":
        code = main(argv, environ=_env_without_token(org2), stdin=None, stdout=out, stderr=err)
        # stdin=None means sys.stdin: pytest's is not a terminal and is empty
    else:
        code = main(argv, environ=_env_without_token(org2), stdin=stdin, stdout=out, stderr=err)
    result = Result(code, out.getvalue(), err.getvalue())
    assert result.code == 2, result.stderr
    assert "--api-token -" in _one_error_line(result)
    _no_requests(org2)


def _token_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "token.txt"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "encode",
    [
        lambda t: t.encode(),
        lambda t: (t + "\n").encode(),
        lambda t: (t + "\r\n").encode(),
        lambda t: ("  \r\n" + t + "  \r\n\r\n").encode(),
        lambda t: codecs.BOM_UTF8 + (t + "\r\n").encode(),
        lambda t: codecs.BOM_UTF16_LE + (t + "\r\n").encode("utf-16-le"),  # Windows PowerShell 5.1 Out-File, >
        lambda t: codecs.BOM_UTF16_BE + (t + "\r\n").encode("utf-16-be"),
    ],
    ids=["plain", "lf", "crlf", "padded", "utf8-bom", "utf16-le-bom", "utf16-be-bom"],
)
def test_token_files_as_editors_and_powershell_write_them(org2: Org, tmp_path: Path, encode) -> None:
    token = org2.defguard.admin_token
    path = _token_file(tmp_path, encode(token))
    result = run_cli(
        ["status", "--group-name", org2.scenario.group, "--api-token-file", str(path), "-q"], _env_without_token(org2)
    )
    assert result.code == 1, result.stderr
    assert token not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"dg-\xe9\xe8\xff" + API_TOKEN.encode(), "is not UTF-8 or UTF-16 text"),
        (b"\x80\x81\x82\x83", "is not UTF-8 or UTF-16 text"),
        (codecs.BOM_UTF16_LE + b"\x00\xd8", "is not UTF-8 or UTF-16 text"),  # a lone surrogate
        ((API_TOKEN + "\r\n").encode("utf-16-le"), "UTF-16 without a byte order mark"),
        (b"", "is empty"),
        (b"\r\n  \n", "is empty"),
        (f"{API_TOKEN}\n{RANDOM}\n".encode(), "has 2 non-empty lines"),
        (f"# my token\r\n{API_TOKEN}\r\n".encode(), "has 2 non-empty lines"),
        ((API_TOKEN + "é").encode(), "non-ASCII"),
        (("\u201c" + API_TOKEN + "\u201d").encode(), "non-ASCII"),  # smart quotes from a document
        ((API_TOKEN[:10] + "\u00a0" + API_TOKEN[10:]).encode(), "non-ASCII"),
        ((API_TOKEN[:10] + "\x07" + API_TOKEN[10:]).encode(), "control character"),
        ((API_TOKEN[:10] + " " + API_TOKEN[10:]).encode(), "space"),
    ],
)
def test_bad_token_files_are_refused_without_echo(org2: Org, tmp_path: Path, data: bytes, message: str) -> None:
    path = _token_file(tmp_path, data)
    result = run_cli(["status", "--group-name", "G", "--api-token-file", str(path)], _env_without_token(org2))
    assert result.code == 2, result.stderr
    line = _one_error_line(result)
    assert message in line
    assert "--api-token-file" in line
    assert str(path) in line
    for secret in (API_TOKEN, API_TOKEN[:10], API_TOKEN[10:], RANDOM, "my token"):
        assert secret not in result.stdout + result.stderr
    _no_requests(org2)


def test_a_token_file_that_is_not_one(org2: Org, tmp_path: Path) -> None:
    big = _token_file(tmp_path, b"A" * 70_000)
    result = run_cli(["status", "--group-name", "G", "--api-token-file", str(big)], _env_without_token(org2))
    assert result.code == 2
    assert "larger than 64 KiB" in _one_error_line(result)
    result = run_cli(["status", "--group-name", "G", "--api-token-file", str(tmp_path)], _env_without_token(org2))
    assert result.code == 2
    assert "--api-token-file" in _one_error_line(result)


@pytest.mark.parametrize(
    "bad",
    [API_TOKEN + "é", API_TOKEN[:8] + "\u00a0" + API_TOKEN[8:], API_TOKEN[:8] + "\x1b" + API_TOKEN[8:]],
    ids=["accent", "nbsp", "escape"],
)
def test_non_ascii_tokens_are_refused_from_every_source(org2: Org, bad: str) -> None:
    env = _env_without_token(org2)
    runs = {
        "DEFGUARD_API_TOKEN": run_cli(["status", "--group-name", "G"], {**env, "DEFGUARD_API_TOKEN": bad}),
        "--api-token": run_cli(["status", "--group-name", "G", "--api-token", bad], env),
        "--api-token -": run_cli(["status", "--group-name", "G", "--api-token", "-"], env, stdin=bad + "\n"),
    }
    for source, result in runs.items():
        assert result.code == 2, (source, result.stderr)
        line = _one_error_line(result)
        assert source in line
        assert API_TOKEN[8:] not in result.stdout + result.stderr
        assert API_TOKEN[:8] + "\u00a0" not in result.stderr
    _no_requests(org2)


# -- 4. numbers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--timeout", "inf"),
        ("--timeout", "nan"),
        ("--timeout", "-1"),
        ("--timeout", "0"),
        ("--timeout", "1e999"),
        ("--timeout", "1e300"),
        ("--max-retry-time", "inf"),
        ("--max-retry-time", "NaN"),
        ("--max-retry-time", "0"),
        ("--max-retry-time", "-5"),
        ("--graph-write-rate", "inf"),
        ("--graph-write-rate", "nan"),
        ("--graph-write-rate", "-1"),
        ("--graph-write-rate", "-inf"),
        ("--graph-write-rate", "-1e3"),
    ],
)
def test_numbers_must_be_finite_and_positive(org2: Org, option: str, value: str) -> None:
    result = run_cli(["provision", "--group-name", org2.scenario.group, option, value], org2.env)
    assert result.code == 2, result.stderr
    line = _one_error_line(result)
    assert option in line
    assert "give" in line
    _no_requests(org2)


def test_graph_write_rate_zero_still_means_no_limit(org2: Org) -> None:
    result = run_cli(["provision", "--group-name", org2.scenario.group, "--graph-write-rate", "0", "-q"], org2.env)
    assert result.code == 1, result.stderr
    assert org2.graph.write_count > 0


def test_the_library_refuses_the_same_numbers() -> None:
    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ConfigurationError, match="--timeout"):
            Settings(timeout=bad).validate()
    for bad in (float("inf"), float("nan"), -0.5):
        with pytest.raises(ConfigurationError, match="--graph-write-rate"):
            Settings(graph_write_rate=bad).validate()
    assert Settings(graph_write_rate=0).validate().graph_write_rate == 0


# -- 5. http:// -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["provision", "status", "clear", "check", "export"])
def test_http_to_a_remote_defguard_is_refused(org2: Org, tmp_path: Path, command: str) -> None:
    extra = ["--output-dir", str(tmp_path / "out")] if command == "export" else []
    result = run_cli([command, "--group-name", "G", "--url", "http://defguard.example.com", *extra], org2.env)
    assert result.code == 2, result.stderr
    line = _one_error_line(result)
    assert "http://" in line
    assert "--allow-insecure-http" in line
    env = {**org2.env, "DEFGUARD_URL": "http://10.0.0.5:8000"}
    result = run_cli([command, "--group-name", "G", *extra], env)
    assert result.code == 2
    assert "--allow-insecure-http" in _one_error_line(result)
    _no_requests(org2)


def test_allow_insecure_http_warns_and_goes_ahead(org2: Org) -> None:
    # .invalid never resolves (RFC 6761): the run gets as far as trying to connect, then stops with exit 3
    argv = ["check", "--group-name", "G", "--url", "http://defguard.invalid", "--allow-insecure-http"]
    result = run_cli([*argv, "--retries", "0", "--timeout", "2"], org2.env)
    assert result.code == 3, result.stderr
    assert "warning: --allow-insecure-http: the API token and the enrollment tokens go to http://defguard.invalid" in (
        result.stderr
    )
    assert org2.defguard.admin_token not in result.stdout + result.stderr


def test_loopback_http_needs_no_flag(org2: Org) -> None:
    result = run_cli(["status", "--group-name", org2.scenario.group, "-q"], org2.env)
    assert result.code == 1, result.stderr
    assert "insecure" not in result.stderr
    for url in (
        "http://127.0.0.1:8000",
        "http://127.8.9.10",
        "http://[::1]:8080/",
        "http://localhost",
        "http://LOCALHOST.",
    ):
        assert Settings(defguard_url=url).validate().defguard_url == url
    with pytest.raises(ConfigurationError, match="--allow-insecure-http"):
        Settings(defguard_url="http://defguard.example.com").validate()
    with pytest.raises(ConfigurationError, match="--allow-insecure-http"):
        Settings(defguard_url="http://128.0.0.1").validate()
    assert Settings(defguard_url="http://defguard.example.com", allow_insecure_http=True).validate()


def test_fetch_config_does_not_care_about_defguard_url(graph: GraphEmulator, tmp_path: Path) -> None:
    env = {"DEFGUARD_URL": "http://defguard.example.com", "DEFGUARD_ENTRA_GRAPH_URL": graph.url, "HOME": str(tmp_path)}
    result = run_cli(["fetch-config", "--output", str(tmp_path / "p.json"), "--auth", "token"], env)
    assert "--allow-insecure-http" not in result.stderr
    assert "DEFGUARD_ENTRA_GRAPH_TOKEN" in result.stderr  # it got past the settings, to the sign-in


# -- 6. NUL bytes, long and odd group names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["provision", "--group-name", "G", "--report", "r\0.json"], "--report"),
        (["status", "--group-name", "G", "--report", "\0"], "--report"),
        (["clear", "--group-name", "G", "--report", "a\0b.csv"], "--report"),
        (["provision", "--group-name", "G", "--api-token-file", "tok\0en"], "--api-token-file"),
        (["check", "--group-name", "G", "--ca-bundle", "ca\0.pem"], "--ca-bundle"),
        (["export", "--group-name", "G", "--output-dir", "out\0dir"], "--output-dir"),
        (["fetch-config", "--output", "p\0.json"], "--output"),
    ],
)
def test_a_nul_byte_in_a_path_is_a_usage_error(org2: Org, argv: list[str], option: str) -> None:
    result = run_cli(argv, org2.env)
    assert result.code == 2, result.stderr
    line = _one_error_line(result)
    assert f"{option} contains a NUL byte" in line
    _no_requests(org2)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("V" * 1001, "1,001 characters long"),
        ("x" * 100_000, "100,000 characters long"),
        ("VPN\nUsers", "control character (U+000A at position 4)"),
        ("VPN Users\r", "control character (U+000D"),
        ("VPN\tUsers", "control character (U+0009"),
        ("\x1b[2JVPN", "control character (U+001B at position 1)"),
        ("VPN\x00", "control character (U+0000"),
        ("VPN\x85", "control character (U+0085"),
    ],
)
def test_group_names_that_are_not_names(org2: Org, name: str, message: str) -> None:
    for argv in (["provision", "--group-name", name], ["status", f"-GroupName:{name}"], ["-groupname", name]):
        result = run_cli(argv, org2.env)
        assert result.code == 2, result.stderr
        line = _one_error_line(result)
        assert message in line
        assert len(line) < 300
    _no_requests(org2)


def test_a_group_name_of_1000_characters_is_looked_up(org2: Org) -> None:
    result = run_cli(["status", "--group-name", "é" * 1000], org2.env)
    assert result.code == 3, result.stderr  # not found, but asked for
    assert org2.defguard.requests


# -- 7. consoles that cannot show everything, or go away ---------------------------------------------------------


def _subprocess_env(org: Org, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFGUARD_", "AZURE_", "PYTHONIOENCODING"))}
    return {**env, **org.env, **extra}


def _python_m(*argv: str, **kwargs) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "defguard_entra", *argv], check=False, timeout=120, **kwargs)


@pytest.fixture
def provisioned(org2: Org) -> Org:
    """Tokens stored, so that status prints masked tokens (``abcd…``)."""
    assert run_cli(["provision", "--group-name", org2.scenario.group, "-q"], org2.env).code == 1
    return org2


@pytest.mark.parametrize("encoding", ["ascii", "cp437", "cp850", "latin-1"])
def test_a_console_without_the_ellipsis(provisioned: Org, encoding: str) -> None:
    org = provisioned
    expected = run_cli(["status", "--group-name", org.scenario.group, "--no-progress"], org.env)
    assert "…" in expected.stdout
    proc = _python_m(
        "status", "--group-name", org.scenario.group, "--no-progress",
        capture_output=True, env=_subprocess_env(org, PYTHONIOENCODING=f"{encoding}:strict"),
    )  # fmt: skip
    stdout, stderr = proc.stdout.decode(encoding), proc.stderr.decode(encoding)
    assert proc.returncode == expected.code == 1, stderr
    assert "Traceback" not in stderr
    assert "UnicodeEncodeError" not in stderr
    assert _untimed(stdout) == _untimed(expected.stdout.replace("…", "..."))
    assert org.defguard.admin_token not in stdout + stderr


@pytest.mark.parametrize("encoding", ["ascii", "cp437"])
def test_help_and_errors_on_a_console_without_the_ellipsis(org2: Org, encoding: str) -> None:
    env = _subprocess_env(org2, PYTHONIOENCODING=f"{encoding}:strict")
    proc = _python_m("--help", capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert b"dg-... -GroupName" in proc.stdout
    proc = _python_m("provision", "--help", capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr
    # a non-ASCII group name in an error and in the log lines (-vv) of a run
    proc = _python_m("status", "--group-name", "Zürich…", "-vv", capture_output=True, env=env)
    assert proc.returncode == 3
    stderr = proc.stderr.decode(encoding)
    assert "Traceback" not in stderr
    assert "Logging error" not in stderr
    assert "error: " in stderr
    assert "..." in stderr


def test_a_broken_stdout_in_process_keeps_the_exit_code(org2: Org) -> None:
    class Gone(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    err = io.StringIO()
    argv = ["provision", "--group-name", org2.scenario.group]
    code = main(argv, environ=org2.env, stdin=io.StringIO(), stdout=Gone(), stderr=Gone())
    assert code == 1
    assert org2.defguard.current_token("alice") is not None
    code = main(["status", "--group-name", org2.scenario.group], environ=org2.env, stdout=Gone(), stderr=err)
    assert code == 1
    assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize("which", ["stdout", "stderr", "both"])
def test_a_reader_that_went_away(org2: Org, which: str) -> None:
    """``| head``: the pipe's reader is gone before the run prints; the run completes with its own exit code."""
    read, write = os.pipe()
    os.close(read)
    try:
        streams = {
            "stdout": write if which in {"stdout", "both"} else subprocess.DEVNULL,
            "stderr": write if which in {"stderr", "both"} else subprocess.PIPE,
        }
        proc = _python_m("provision", "--group-name", org2.scenario.group, env=_subprocess_env(org2), **streams)
    finally:
        os.close(write)
    assert proc.returncode == 1, proc.stderr
    assert not proc.stderr or b"Traceback" not in proc.stderr
    assert not proc.stderr or b"Exception ignored" not in proc.stderr
    assert org2.defguard.current_token("alice") is not None


def test_closed_stdout_and_stderr(org2: Org) -> None:
    script = (
        f'"{sys.executable}" -m defguard_entra provision --group-name "{org2.scenario.group}" >&- 2>&-; echo "rc=$?"'
    )
    proc = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, check=False, timeout=120, env=_subprocess_env(org2)
    )
    assert proc.stdout.strip() == "rc=1", proc.stdout + proc.stderr
    assert org2.defguard.current_token("alice") is not None
