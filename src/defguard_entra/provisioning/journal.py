"""The journal of tokens in flight and the run lock: per Defguard instance and group, in the per-user state directory.

Every new Defguard token deletes the member's unused ones, so a token minted and then not stored leaves Entra
holding a dead token. Before a batch of tokens is requested, its members are appended to the journal and the file is
synced to disk; once their Entra writes are confirmed (or it is known that nothing was minted), they are marked done.
A run that ends in any way, ``kill -9`` and power loss included, leaves at most the batches then in flight: the next
run of any command on the group reads them as *stale* and repairs them first.

The lock makes a second run on the same instance and group wait briefly, then refuse: two overlapping runs would
cancel each other's tokens. It is an advisory lock on a file (``fcntl.flock``, ``msvcrt.locking`` on Windows), held
by the process for the run and released by the OS if the process dies.

Standard library only; no project imports but the error type.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Self, TypeAlias

from ..exceptions import PreflightError

__all__ = ["Journal", "RunGuard", "RunLock", "default_state_dir", "run_guard", "run_key"]

_APP = "defguard-entra"


def default_state_dir(platform: str, environ: Mapping[str, str]) -> Path | None:
    """The per-user state directory for ``platform`` (a :data:`sys.platform` value) in ``environ``.

    Windows ``%LOCALAPPDATA%\\defguard-entra`` (local, not roaming: the journal and the lock belong to this machine;
    ``%APPDATA%`` when it is unset; either is inside the user profile, whose ACL keeps the files the user's);
    macOS ``~/Library/Application Support/defguard-entra``; other
    Unixes ``$XDG_STATE_HOME/defguard-entra`` (default ``~/.local/state``). ``None`` when nothing says where."""
    if platform.startswith(("win", "cygwin")):
        base = environ.get("LOCALAPPDATA") or environ.get("APPDATA")
        return Path(base) / _APP if base else None
    home = environ.get("HOME")
    if platform == "darwin":
        return Path(home) / "Library" / "Application Support" / _APP if home else None
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):  # noqa: PTH117 - a string check, no file system access
        return Path(xdg) / _APP
    return Path(home) / ".local" / "state" / _APP if home else None


def run_key(defguard_url: str, group_source: str, group_name: str) -> str:
    """A file-name-safe key for one Defguard instance and group (the names themselves stay out of file names)."""
    text = json.dumps([defguard_url.rstrip("/").lower(), group_source, group_name])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The open ``mint`` entries of a journal file, by member."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    open_entries: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: the entries before it stand
        user = entry.get("user") if isinstance(entry, dict) else None
        if not isinstance(user, str):
            continue
        if entry.get("op") == "mint":
            open_entries[user] = entry
        elif entry.get("op") == "done":
            open_entries.pop(user, None)
    return open_entries


class Journal:
    """Members whose token was (or may have been) minted and whose Entra write is not confirmed.

    One JSON object per line, appended: ``{"op": "mint", "user": …}`` before the token request, ``{"op": "done",
    "user": …}`` after. :attr:`stale` is what an earlier run left unfinished. Use as a context manager; on a clean
    close the file is rewritten with only the entries still open (and removed when there are none).
    """

    def __init__(self, directory: Path, key: str, *, group_name: str, defguard_url: str) -> None:
        self.path = _private_dir(directory) / f"journal-{key}.jsonl"
        self._header = {"op": "run", "group": group_name, "defguard": defguard_url}
        self._open: dict[str, dict[str, Any]] = self._read()
        self.stale: frozenset[str] = frozenset(self._open)
        self._handle: IO[str] | None = None

    @staticmethod
    def peek(directory: Path, key: str) -> frozenset[str]:
        """The stale members, read without opening the journal for writing (for read-only commands and dry runs,
        which must not rewrite a file another run may be appending to)."""
        return frozenset(_read_entries(directory / f"journal-{key}.jsonl"))

    def _read(self) -> dict[str, dict[str, Any]]:
        return _read_entries(self.path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _append(self, entries: Iterable[Mapping[str, Any]], *, sync: bool) -> None:
        lines = "".join(json.dumps(dict(e), ensure_ascii=False) + "\n" for e in entries)
        if not lines:
            return
        if self._handle is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._handle = os.fdopen(fd, "a", encoding="utf-8")
        self._handle.write(lines)
        self._handle.flush()
        if sync:
            os.fsync(self._handle.fileno())

    def minting(self, users: Iterable[str]) -> None:
        """Record ``users`` before their tokens are requested; on disk before this returns."""
        at = dt.datetime.now(dt.UTC).isoformat()
        entries = [{"op": "mint", "user": u, "at": at} for u in users]
        for entry in entries:
            self._open[str(entry["user"])] = entry
        self._append(entries, sync=True)

    def done(self, users: Iterable[str]) -> None:
        """Mark ``users`` settled: their write is confirmed, or no token was minted for them, or the attributes were
        cleared. (Not synced: a lost ``done`` only makes a member stale, which the next run repairs.)"""
        names = [u for u in users if u in self._open]
        for name in names:
            del self._open[name]
        self._append(({"op": "done", "user": u} for u in names), sync=False)

    @property
    def open_entries(self) -> frozenset[str]:
        """Members still open now (stale ones not repaired yet, and tokens in flight)."""
        return frozenset(self._open)

    def close(self) -> None:
        """Rewrite the file with only the open entries, atomically (removed when there are none)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if not self._open:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(self._header) + "\n")
            handle.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in self._open.values())
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)


class RunLock:
    """One run per Defguard instance and group on this machine: waits up to ``wait`` seconds, then refuses."""

    def __init__(self, directory: Path, key: str, *, what: str, wait: float = 10.0) -> None:
        self.path = _private_dir(directory) / f"lock-{key}.lock"
        self._what = what
        self._wait = wait
        self._handle: IO[str] | None = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+", encoding="utf-8")
        deadline = time.monotonic() + self._wait
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                holder = handle.read().strip() or "another process"
                handle.close()
                raise PreflightError(
                    f"another run on {self._what} is in progress on this machine ({holder}): wait for it to finish; "
                    "schedulers must not start a run while the previous one is still going (nothing was minted)"
                )
            time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self._handle.seek(0)
            self._handle.truncate()
            _unlock(self._handle)
        self._handle.close()
        self._handle = None


RunGuard: TypeAlias = contextlib.AbstractContextManager[tuple[Journal | None, frozenset[str]]]


@contextlib.contextmanager
def run_guard(
    state_dir: Path | None, defguard_url: str, group_name: str, group_source: str, *, write: bool
) -> Iterator[tuple[Journal | None, frozenset[str]]]:
    """The run lock and the journal for a run that may mint or clear (``write``), or only the stale members for one
    that reads; nothing without a ``state_dir``."""
    if state_dir is None:
        yield None, frozenset()
        return
    key = run_key(defguard_url, group_source, group_name)
    if not write:
        yield None, Journal.peek(state_dir, key)
        return
    with (
        RunLock(state_dir, key, what=f"group {group_name!r} of {defguard_url}"),
        Journal(state_dir, key, group_name=group_name, defguard_url=defguard_url) as journal,
    ):
        yield journal, journal.stale


if sys.platform == "win32":
    import msvcrt

    def _try_lock(handle: IO[str]) -> bool:
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(handle: IO[str]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle: IO[str]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
