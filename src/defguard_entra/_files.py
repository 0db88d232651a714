"""Files that may hold secrets: written atomically, owner-only. The lowest layer: no project imports."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["csv_bytes", "csv_chunks", "write_private_file"]

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


def write_private_file(path: Path, content: bytes | Iterable[bytes]) -> None:
    """Write atomically (temp file + rename in the same directory) with owner-only permissions (0600).

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
