"""The exception tree survives pickling whole (multiprocessing, a notebook's parallel map, a ``concurrent.futures``
process pool): every field that ``str()`` and handlers read comes back."""

from __future__ import annotations

import pickle

import pytest

from defguard_entra import (
    ClientConfigError,
    DefguardAPIError,
    DefguardAuthError,
    EntraAPIError,
    EntraAuthError,
    PreflightError,
)


@pytest.mark.parametrize(
    ("error", "fields"),
    [
        (
            EntraAPIError(403, "Authorization_RequestDenied", "no", method="PATCH", url="/users/x"),
            ("status", "code", "message", "method", "url"),
        ),
        (EntraAPIError(500, "x", "y"), ("status", "code", "message", "method", "url")),
        (
            DefguardAPIError("POST", "/api/v1/user/a/start_enrollment", 400, "bad", hint="fix it"),
            ("method", "url", "status", "message", "hint"),
        ),
        (DefguardAuthError("GET", "/api/v1/me", 401, "Unauthorized"), ("method", "url", "status", "message")),
        (ClientConfigError("attribute set 'Defguard' holds nothing", "missing"), ("reason",)),
        (PreflightError("no group"), ()),
        (EntraAuthError("no token"), ()),
    ],
)
def test_exceptions_pickle_whole(error: Exception, fields: tuple[str, ...]) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    for field in fields:
        assert getattr(again, field) == getattr(error, field), field
