"""Files that may hold secrets: written atomically, owner-only. The lowest layer: no project imports.

Owner-only means mode 0600 (directories 0700) on Linux, macOS and other POSIX systems. On Windows a mode only sets
or clears the read-only flag: who may read a file is its ACL, which a new file inherits from its folder. The
per-user folders this tool writes to by default (``%LOCALAPPDATA%``, ``%APPDATA%``, both under the user profile)
give full control to the user, ``SYSTEM`` and the local Administrators only, so files there are private to the
user (and to administrators, as on any OS); a file written elsewhere (``--report``, ``--output``,
``--output-dir``) gets that folder's ACL. :func:`mode_bits_private` says which case a platform is.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

__all__ = [
    "csv_bytes",
    "csv_chunks",
    "mode_bits_private",
    "open_to_others",
    "outside_user_profile",
    "write_private_file",
]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """``None`` as an empty cell; text a spreadsheet would run as a formula is prefixed with ``'``."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_chunks(fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """UTF-8 CSV with a header row, LF line ends, and cells safe to open in a spreadsheet, a row at a time."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
        yield buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def csv_bytes(fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    """:func:`csv_chunks` joined."""
    return b"".join(csv_chunks(fields, rows))


def mode_bits_private(platform: str) -> bool:
    """Whether permission bits decide who may read a file on ``platform`` (a :data:`sys.platform` value): true on
    POSIX systems; false on Windows, where the folder's inherited ACL does (see the module's docstring)."""
    return not platform.startswith("win")


def open_to_others(mode: int, platform: str) -> bool:
    """Whether ``mode`` (a ``st_mode``) lets users other than the owner in, where modes say so: always false on
    Windows, whose ``st_mode`` is made up from the read-only flag (``0o666``/``0o777``) and tells nothing."""
    return mode_bits_private(platform) and bool(mode & 0o077)


#: The signed-in user's own folders on Windows (folder redirection may move the last two to a share of theirs).
_PROFILE_VARIABLES = ("USERPROFILE", "LOCALAPPDATA", "APPDATA")


def outside_user_profile(path: PurePath | str, platform: str, environ: Mapping[str, str]) -> bool:
    """On Windows, whether ``path`` (absolute) is outside the user's own folders (``%USERPROFILE%``,
    ``%LOCALAPPDATA%``, ``%APPDATA%``), so that a file written there inherits an ACL that may let other users read
    it (folders made under ``C:\\`` let every local user read by default). Compared without regard to case, as
    Windows does. Always false elsewhere (modes decide there: :func:`open_to_others`), and when ``environ`` names
    no profile folder (nothing to compare with)."""
    if mode_bits_private(platform):
        return False
    folders = [PureWindowsPath(environ.get(name, "").strip().casefold()) for name in _PROFILE_VARIABLES]
    folders = [folder for folder in folders if folder.is_absolute()]
    target = PureWindowsPath(str(path).casefold())
    return bool(folders) and not any(target.is_relative_to(folder) for folder in folders)


def write_private_file(path: Path, content: bytes | Iterable[bytes]) -> None:
    """Write atomically (temp file + rename in the same directory) with owner-only permissions (0600 on POSIX; on
    Windows the file inherits its folder's ACL, private in the user profile: see the module's docstring).

    ``content`` may be an iterable of chunks, so a large report is never held in memory as one string."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, bytes):
                handle.write(content)
            else:
                for chunk in content:
                    handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(0o600)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
