"""A scripted browser for sign-in tests: ``python -m defguard_entra.testing.identity.browser [options] URL``.

It plays the user at the identity emulator's authorize page, then delivers the answer to the app's ``localhost``
redirect URI: a ``302`` is followed, and a ``response_mode=form_post`` page (azure-identity's
``InteractiveBrowserCredential`` asks for one) has its hidden form posted, as a real browser would.

Modes: ``follow`` signs in (as ``--user``, else the emulator's ``browser_user``) and consents; ``decline`` clicks
"Cancel" on the consent page (``access_denied``, AADSTS65004); ``ignore`` opens and does nothing (a browser that
never comes back). Python's ``webbrowser`` honours ``BROWSER`` as a command run with the URL as its only
argument and waits for it to exit (CPython 3.11 ``webbrowser.GenericBrowser``): so the command returns at once and
a detached child does the work, like a real browser whose launcher exits. Every network wait is bounded.
"""

from __future__ import annotations

import argparse
import html.parser
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlencode

__all__ = ["MODES", "main", "visit"]

MODES = frozenset({"follow", "decline", "ignore"})
TIMEOUT = 30.0
_DECISION_HEADER = "X-Emulator-Decision"
_USER_HEADER = "X-Emulator-User"


class _Form(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = values.get("action")
        elif tag == "input" and values.get("name"):
            self.fields[str(values["name"])] = values.get("value") or ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:  # noqa: ARG002 - never follow
        return None


def visit(url: str, ca_file: str | None, mode: str = "follow", user: str | None = None) -> int:
    """Open ``url`` as the user would; returns 0 when the answer reached the redirect URI."""
    if mode == "ignore":
        return 0
    context = ssl.create_default_context(cafile=ca_file)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())
    headers = {_DECISION_HEADER: "decline" if mode == "decline" else "approve"}
    if user:
        headers[_USER_HEADER] = user
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT) as page:  # noqa: S310
            body = page.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code != 302 or not exc.headers.get("Location"):
            return 1
        target = str(exc.headers["Location"])
        with urllib.request.urlopen(target, timeout=TIMEOUT) as answer:  # noqa: S310 - the app's localhost URI
            answer.read()
        return 0
    form = _Form()
    form.feed(body)
    if not form.action:
        return 1  # a page without a form (nobody to sign in as): a user would be stuck here too
    data = urlencode(form.fields).encode()
    request = urllib.request.Request(form.action, data=data, method="POST")  # noqa: S310
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
        answer.read()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m defguard_entra.testing.identity.browser")
    parser.add_argument("url")
    parser.add_argument("--ca-file", help="the identity emulator's CA (its ca_file)")
    parser.add_argument("--mode", choices=sorted(MODES), default="follow")
    parser.add_argument("--user", help="the UPN to sign in as (default: the emulator's browser_user)")
    parser.add_argument("--foreground", action="store_true", help="do the work in this process (no detached child)")
    args = parser.parse_args(argv)
    if args.foreground:
        try:
            return visit(args.url, args.ca_file, args.mode, args.user)
        except (OSError, ValueError) as exc:
            print(f"scripted browser: {type(exc).__name__}", file=sys.stderr)  # noqa: T201 - a command's own error
            return 1
    command = [sys.executable, "-m", "defguard_entra.testing.identity.browser", "--foreground", "--mode", args.mode]
    if args.ca_file:
        command += ["--ca-file", args.ca_file]
    if args.user:
        command += ["--user", args.user]
    subprocess.Popen(  # noqa: S603 - our own module, no shell
        [*command, args.url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
