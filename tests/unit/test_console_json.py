"""The console's JSON lines (``--log-format json``) and a write a signal handler makes while another is under way."""

from __future__ import annotations

import io
import json
import logging

from defguard_entra._redact import RedactingFilter
from defguard_entra.cli._console import Console, json_line, setup_logging, write

SECRET = "s3cr3t-" + "x" * 30


def test_json_lines_are_redacted_in_every_value() -> None:
    redactor = RedactingFilter([SECRET])
    line = json_line({"event": "log", "message": f"token {SECRET} refused", "nested": {"a": 1}}, redactor)
    data = json.loads(line)
    assert SECRET not in line
    assert data["event"] == "log"
    assert data["nested"] == {"a": 1}
    assert data["time"].endswith("Z")


def test_console_messages_become_log_events() -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err, RedactingFilter([SECRET]), quiet=True, json_lines=True)
    console.info("hidden by -q")
    console.warn(f"careful with {SECRET}")
    console.error("broken")
    console.notice("enter the code")
    events = [json.loads(line) for line in err.getvalue().splitlines()]
    assert [(e["level"], e["event"]) for e in events] == [("warning", "log"), ("error", "log"), ("notice", "log")]
    assert SECRET not in err.getvalue()
    assert out.getvalue() == ""


def test_log_records_become_json_with_the_secret_redacted() -> None:
    err = io.StringIO()
    handler = setup_logging(1, err, RedactingFilter([SECRET]), quiet=False, json_lines=True)
    try:
        logging.getLogger("defguard_entra.test").info("minted %s", SECRET)
    finally:
        logging.getLogger().removeHandler(handler)
    (event,) = [json.loads(line) for line in err.getvalue().splitlines()]
    assert event["level"] == "info"
    assert event["logger"] == "defguard_entra.test"
    assert event["message"].startswith("minted ")
    assert SECRET not in err.getvalue()


class _Reentered(io.StringIO):
    """A stream whose next write fails as a buffered stream does when a signal handler writes during a write."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = 1

    def write(self, s: str) -> int:
        if self.refuse:
            self.refuse -= 1
            msg = "reentrant call inside <_io.BufferedWriter name='<stderr>'>"
            raise RuntimeError(msg)
        return super().write(s)


def test_a_write_refused_as_reentrant_is_written_after_the_next_line() -> None:
    stream = _Reentered()
    assert write(stream, "from the signal handler") is False  # nothing raised into the interrupted code
    assert stream.getvalue() == ""
    assert write(stream, "the interrupted line") is True
    assert stream.getvalue().splitlines() == ["the interrupted line", "from the signal handler"]
