"""The Defguard adapter's pure parts, without a server: reading answers, pacing, giving up, and who imports them."""

from __future__ import annotations

import ast
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from defguard_entra._defguard_pace import Pacer, Tries, Unreachable, connection_cause
from defguard_entra._defguard_wire import (
    count_devices,
    decode,
    first_line,
    issued_token,
    normalised_url,
    read_configuration,
    read_info,
    read_settings,
    read_user,
    read_user_pass,
)
from defguard_entra._retry import Retryable
from defguard_entra.exceptions import (
    DefguardAlreadyActivatedError,
    DefguardAPIError,
    DefguardAuthError,
    DefguardUnreachableError,
    DefguardUserDisabledError,
    UnexpectedResponseError,
)
from defguard_entra.models import TokenKind

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "defguard_entra"
URL = "https://dg.example.com/api/v1/user"


@attrs.frozen
class _Answer:
    status_code: int
    content: bytes = b""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    reason: str = "Reason"

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


def _json(status: int, payload: Any, **headers: str) -> _Answer:
    return _Answer(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})


# -- decode ----------------------------------------------------------------------------------------------------------


def test_a_2xx_answer_is_its_json_even_without_a_content_type() -> None:
    assert decode("GET", URL, _json(200, {"a": 1}), expect_json=True) == {"a": 1}
    assert decode("GET", URL, _Answer(200, b' [{"a": 1}]'), expect_json=True) == [{"a": 1}]
    assert decode("GET", URL, _Answer(200, b"alive"), expect_json=False) == "alive"


def test_the_web_ui_answering_is_refused_with_a_hint() -> None:
    with pytest.raises(UnexpectedResponseError) as caught:
        decode("GET", URL, _Answer(200, b"<html></html>", {"Content-Type": "text/html"}), expect_json=True)
    assert caught.value.message == "expected JSON, got text/html"
    assert "--url" in (caught.value.hint or "")
    with pytest.raises(UnexpectedResponseError, match="does not parse"):
        decode("GET", URL, _Answer(200, b"{oops", {"Content-Type": "application/json"}), expect_json=True)


@pytest.mark.parametrize(
    ("status", "msg", "error"),
    [
        (401, "Enrollment user is disabled", DefguardUserDisabledError),
        (400, "User account is already activated", DefguardAlreadyActivatedError),
        (401, "Session is required", DefguardAuthError),
        (403, "requires privileged access", DefguardAuthError),
        (404, "user not found", DefguardAPIError),
    ],
)
def test_error_answers_map_to_their_exception(status: int, msg: str, error: type[DefguardAPIError]) -> None:
    with pytest.raises(error) as caught:
        decode("POST", URL, _json(status, {"msg": msg}), expect_json=True)
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.message, caught.value.url) == (status, msg, URL)


def test_a_redirect_names_its_target() -> None:
    with pytest.raises(DefguardAPIError) as caught:
        decode("GET", URL, _Answer(301, b"", {"Location": "https://x/"}), expect_json=True)
    assert caught.value.message == "redirect to https://x/"


@pytest.mark.parametrize(
    ("answer", "wait"),
    [
        (_json(429, {"msg": "Too Many Requests! Wait for 2s"}), 2.0),
        (_json(429, {"msg": "Too Many Requests! Wait for 0s"}), None),  # "within a second": the back-off decides
        (_Answer(503, b"busy", {"Retry-After": "1.5"}), 1.5),
        (_Answer(500, b""), None),
    ],
)
def test_retryable_answers_carry_the_wait_asked_for(answer: _Answer, wait: float | None) -> None:
    with pytest.raises(Retryable) as caught:
        decode("GET", URL, answer, expect_json=True)
    assert isinstance(caught.value.error, DefguardAPIError)
    assert caught.value.error.status == answer.status_code
    assert caught.value.wait == wait


def test_an_error_page_is_named_not_quoted() -> None:
    with pytest.raises(DefguardAPIError) as caught:
        decode("GET", URL, _Answer(404, b"<html><body>nope</body></html>", reason="Not Found"), expect_json=True)
    assert caught.value.message == "HTTP 404 Not Found (HTML page)"
    with pytest.raises(DefguardAPIError) as caught:
        decode("GET", URL, _Answer(418, b"", reason="I'm a teapot"), expect_json=True)
    assert caught.value.message == "HTTP 418 I'm a teapot"


# -- payloads --------------------------------------------------------------------------------------------------------


def test_user_pages_are_read_once_each_without_repeats() -> None:
    pages = {
        1: {"data": [{"id": 1, "username": "a"}], "pagination": {"total_pages": 2, "total_items": 3}},
        2: {"data": [{"id": 1, "username": "a"}, {"id": 2, "username": "b"}], "pagination": {"next_page": 3}},
        3: {"data": [{"id": 3, "username": "c"}], "pagination": {"total_items": 3}},
    }
    seen: set[Any] = set()
    totals: list[Any] = []
    users = list(read_user_pass(pages.__getitem__, 4, seen, totals))
    assert [u.username for u in users] == ["a", "b", "c"]
    assert totals == [3, None, 3]
    totals = []
    assert [u.username for u in read_user_pass(lambda _: [{"id": 9, "username": "z"}], 4, set(), totals)] == ["z"]
    assert totals == []  # 1.6.x: one unpaged list, no totals


def test_user_details_devices_and_info() -> None:
    user = read_user({"user": {"id": 1, "username": "a"}, "devices": [{}, {}]}, URL)
    assert (user.username, user.devices) == ("a", 2)
    with pytest.raises(UnexpectedResponseError, match="no user in the answer"):
        read_user({"devices": []}, URL)
    rows = [{"user_id": 1}, {"user_id": 1, "device_type": "network"}, {"user_id": 2}, "junk"]
    assert count_devices(rows) == {1: 1, 2: 1}
    assert count_devices({"not": "a list"}) == {}
    assert read_info({"external_openid_enabled": True, "ldap_info": {"enabled": False}}) == (True, False)
    assert read_info([]) == (None, None)


def test_enrollment_settings_of_both_lines() -> None:
    assert read_settings({"public_proxy_url": "https://e.example.com", "enrollment_token_timeout_hours": 24}) == (
        "https://e.example.com/",
        dt.timedelta(hours=24),
        None,
    )
    assert read_settings({"public_proxy_url": "not a url", "enrollment_token_timeout_hours": True}) == (
        "not a url",
        None,
        "public proxy URL 'not a url' is not a URL",
    )
    assert read_configuration({"config": {"enrollment_url": "https://e.example.com/"}}) == "https://e.example.com/"
    assert read_configuration({"config": {}}) is None
    assert normalised_url(" https://e.example.com/path ") == "https://e.example.com/path"
    assert normalised_url("mailto:x") is None


def test_an_issued_token_needs_both_values() -> None:
    token = issued_token(
        {"enrollment_token": "t" * 32, "enrollment_url": "https://e/"}, TokenKind.DESKTOP, None, 2, base="b"
    )
    assert (token.token.value, token.url, token.retries) == ("t" * 32, "https://e/", 2)
    with pytest.raises(UnexpectedResponseError) as caught:
        issued_token({"enrollment_token": "t"}, TokenKind.ENROLLMENT, None, 0, base="https://dg")
    assert (caught.value.method, caught.value.url, caught.value.status) == ("POST", "https://dg", 201)


# -- pace and giving up ----------------------------------------------------------------------------------------------


def _api(status: int) -> Retryable:
    return Retryable(DefguardAPIError("GET", URL, status, "x"))


def test_a_500_is_tried_twice_and_a_timeout_twice() -> None:
    tries = Tries(Pacer())
    tries.failed(_api(500))
    with pytest.raises(DefguardAPIError):
        tries.failed(_api(500))
    error = DefguardUnreachableError("cannot reach Defguard")
    tries.failed(Unreachable(error, "timeout"))
    with pytest.raises(DefguardUnreachableError):
        tries.failed(Unreachable(error, "timeout"))


def test_a_429_is_told_to_the_shared_pace() -> None:
    pacer = Pacer()
    Tries(pacer).failed(_api(429))
    assert pacer.interval > 0


@pytest.mark.parametrize(
    ("text", "timed_out", "kind"),
    [
        ("HTTPSConnectionPool: Read timed out.", False, "timeout"),
        ("anything", True, "timeout"),
        ("NameResolutionError: Name or service not known", False, "refused"),
        ("[Errno 111] Connection refused", False, "refused"),
        ("('Connection aborted.', RemoteDisconnected())", False, "dropped"),
        ("first line\nsecond", False, "other"),
    ],
)
def test_connection_causes(text: str, timed_out: bool, kind: str) -> None:
    cause, found = connection_cause(OSError(text), timed_out=timed_out, timeout=3)
    assert found == kind
    if kind == "other":
        assert cause == "first line"
    assert first_line(ValueError()) == "ValueError"


def test_only_the_defguard_adapter_imports_its_parts() -> None:
    parts = {"_defguard_wire", "_defguard_pace"}
    adapter = {"_defguard", *parts}
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = [alias.name for alias in node.names]
            if isinstance(node, ast.ImportFrom):
                names += [node.module or ""]
            if parts & {n.split(".")[-1] for n in names}:
                importers.add(path.relative_to(PACKAGE).with_suffix("").as_posix())
    assert importers
    assert importers <= adapter
