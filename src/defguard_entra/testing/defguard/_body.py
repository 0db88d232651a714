"""The JSON body of the token endpoints as the server reads it: axum's ``Json`` extractor over serde_json, with
serde_path_to_error's paths, deserialising ``StartEnrollmentRequest`` (v1.6.6 and v2.0.1
``crates/defguard_core/src/handlers/mod.rs``). The rejections (415, 413 on 2.x, 400, 422) and their ``text/plain``
messages are the server's, to the line and column.
"""

from __future__ import annotations

import decimal
import json
from typing import Any, Final

from defguard_entra.testing._server import Request

from ._wire import U64, Version, plain

__all__ = ["parse_start_body"]

# -- the JSON body of the token endpoints (axum's Json extractor over serde_json) ----------------------------------


_BODY_LIMIT_V2: Final = 256 * 1024
_STRUCT_NAME: Final = "struct StartEnrollmentRequest"
_SEQ_FIELDS: Final = ("send_enrollment_notification", "email", "token_expiration_time")


def _is_json_content_type(value: str | None) -> bool:
    """axum's check: a parseable mime type ``application/json`` or ``application/<anything>+json``."""
    if value is None:
        return False
    essence = value.split(";", 1)[0].strip().lower()
    kind, _, subtype = essence.partition("/")
    if not kind or not subtype or " " in essence:
        return False
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


class _JsonSyntaxError(Exception):
    def __init__(self, message: str, index: int, *, eof: bool = False, path: str | None = None) -> None:
        super().__init__(message)
        self.message, self.index, self.eof, self.path = message, index, eof, path


class _JsonDataError(Exception):
    def __init__(self, message: str, index: int, path: str | None = None) -> None:
        super().__init__(message)
        self.message, self.index, self.path = message, index, path


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _checked_float(text: str) -> float:
    value = float(text)
    if value in {float("inf"), float("-inf")}:
        raise OverflowError(text)
    return value


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_checked_float, strict=True)
_JSON_WS: Final = " \t\n\r"


def _rust_debug_str(text: str) -> str:
    out = []
    for char in text:
        if char in {'"', "\\"}:
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif char == "\0":
            out.append("\\0")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _rust_float(value: float) -> str:
    text = format(decimal.Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"


def _unexpected(value: Any) -> str:
    """serde's ``Unexpected`` display for a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        if -(2**63) <= value <= U64:
            return f"integer `{value}`"
        return f"floating point `{_rust_float(float(value))}`"
    if isinstance(value, float):
        return f"floating point `{_rust_float(value)}`"
    if isinstance(value, str):
        return f"string {_rust_debug_str(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


class _BodyParser:
    """Deserialises ``StartEnrollmentRequest`` like serde_json + serde_path_to_error, first error wins."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.fields: dict[str, Any] = {}

    def skip_ws(self, index: int) -> int:
        text, size = self.text, len(self.text)
        while index < size and text[index] in _JSON_WS:
            index += 1
        return index

    def value(self, index: int, path: str | None) -> tuple[Any, int]:
        """One JSON value at ``index``: (value, end index)."""
        try:
            value, end = _DECODER.raw_decode(self.text, index)
        except json.JSONDecodeError as exc:
            raise self._syntax_from(exc, path) from None
        except OverflowError:  # a float past f64
            raise _JsonSyntaxError("number out of range", index, path=path) from None
        except ValueError:  # NaN, Infinity: not JSON
            raise _JsonSyntaxError("expected value", index, path=path) from None
        except RecursionError:
            raise _JsonSyntaxError("recursion limit exceeded", index, path=path) from None
        if "\\u" in self.text[index:end].lower() and _has_surrogate(value):
            raise _JsonSyntaxError("lone leading surrogate in hex escape", end - 1, path=path)
        return value, end

    def _syntax_from(self, exc: json.JSONDecodeError, path: str | None) -> _JsonSyntaxError:
        at_end = exc.pos >= len(self.text)
        message = exc.msg
        if message.startswith("Unterminated string"):
            return _JsonSyntaxError("EOF while parsing a string", len(self.text), eof=True, path=path)
        if at_end:
            return _JsonSyntaxError("EOF while parsing a value", len(self.text), eof=True, path=path)
        translated = {
            "Expecting value": "expected value",
            "Expecting property name enclosed in double quotes": "key must be a string",
            "Expecting ':' delimiter": "expected `:`",
            "Expecting ',' delimiter": "expected `,` or `}`",
            "Invalid control character at": "control character (\\u0000-\\u001F) found while parsing a string",
        }.get(message)
        if translated is None:
            translated = "invalid escape" if "escape" in message else "trailing comma"
        return _JsonSyntaxError(translated, exc.pos, path=path)

    def field(self, name: str, value: Any, start: int, end: int, path: str) -> None:
        if name == "send_enrollment_notification":
            if not isinstance(value, bool):
                raise self._invalid(value, "a boolean", start, end, path)
        elif value is not None and not isinstance(value, str):
            raise self._invalid(value, "a string", start, end, path)
        self.fields[name] = value

    def _invalid(self, value: Any, expected: str, start: int, end: int, path: str | None) -> _JsonDataError:
        index = start if isinstance(value, (list, dict)) else end
        return _JsonDataError(f"invalid type: {_unexpected(value)}, expected {expected}", index, path)

    def parse(self) -> tuple[bool, str | None, str | None]:
        text = self.text
        index = self.skip_ws(0)
        if index >= len(text):
            raise _JsonSyntaxError("EOF while parsing a value", len(text), eof=True)
        if text[index] == "{":
            end = self.parse_object(index + 1)
        elif text[index] == "[":
            end = self.parse_array(index + 1)
        else:
            value, end = self.value(index, None)
            raise self._invalid(value, _STRUCT_NAME, index, end, None)
        end = self.skip_ws(end)
        if end < len(text):
            raise _JsonSyntaxError("trailing characters", end)
        return (
            bool(self.fields.get("send_enrollment_notification", False)),
            self.fields.get("email"),
            self.fields.get("token_expiration_time"),
        )

    def parse_object(self, index: int) -> int:
        text = self.text
        first = True
        while True:
            index = self.skip_ws(index)
            if index >= len(text):
                raise _JsonSyntaxError("EOF while parsing an object", len(text), eof=True)
            char = text[index]
            if char == "}":
                if not first:
                    raise _JsonSyntaxError("trailing comma", index)
                return index + 1
            if char != '"':
                raise _JsonSyntaxError("key must be a string", index)
            key, index = self.value(index, None)
            after_key = self.skip_ws(index)
            if key in _SEQ_FIELDS and key in self.fields:
                raise _JsonDataError(f"duplicate field `{key}`", after_key)
            if after_key >= len(text):
                raise _JsonSyntaxError("EOF while parsing an object", len(text), eof=True)
            if text[after_key] != ":":
                raise _JsonSyntaxError("expected `:`", after_key)
            start = self.skip_ws(after_key + 1)
            value, index = self.value(start, key)
            if key in _SEQ_FIELDS:
                self.field(key, value, start, index, key)
            index = self.skip_ws(index)
            if index >= len(text):
                raise _JsonSyntaxError("EOF while parsing an object", len(text), eof=True)
            if text[index] == "}":
                return index + 1
            if text[index] != ",":
                raise _JsonSyntaxError("expected `,` or `}`", index)
            index += 1
            first = False
            if self.skip_ws(index) < len(text) and text[self.skip_ws(index)] == "}":
                raise _JsonSyntaxError("trailing comma", self.skip_ws(index))

    def parse_array(self, index: int) -> int:
        """The sequence form serde derives for a struct: fields by position."""
        text = self.text
        for position, name in enumerate(_SEQ_FIELDS):
            index = self.skip_ws(index)
            if index >= len(text):
                raise _JsonSyntaxError("EOF while parsing a list", len(text), eof=True)
            if text[index] == "]":
                if position == 0:  # send_enrollment_notification has a default; email has none
                    position = 1  # noqa: PLW2901
                raise _JsonDataError(
                    f"invalid length {position}, expected {_STRUCT_NAME} with {len(_SEQ_FIELDS)} elements",
                    index + 1,
                )
            if position:
                if text[index] != ",":
                    raise _JsonSyntaxError("expected `,` or `]`", index)
                index = self.skip_ws(index + 1)
                if index < len(text) and text[index] == "]":
                    raise _JsonSyntaxError("trailing comma", index)
            value, end = self.value(index, str(position))
            self.field(name, value, index, end, str(position))
            index = end
        index = self.skip_ws(index)
        if index >= len(text):
            raise _JsonSyntaxError("EOF while parsing a list", len(text), eof=True)
        if text[index] == "]":
            return index + 1
        if text[index] == ",":
            nxt = self.skip_ws(index + 1)
            if nxt < len(text) and text[nxt] == "]":
                raise _JsonSyntaxError("trailing comma", nxt)
            raise _JsonSyntaxError("trailing characters", nxt)
        raise _JsonSyntaxError("trailing characters", index)


def _position(text: str, index: int, *, peek: bool) -> str:
    """serde_json's ``at line L column C`` (columns count bytes; a peeked error points one past the offender)."""
    line = text.count("\n", 0, index) + 1
    line_start = text.rfind("\n", 0, index) + 1
    column = len(text[line_start:index].encode("utf-8")) + (1 if peek else 0)
    return f" at line {line} column {column}"


def parse_start_body(request: Request, version: Version) -> tuple[bool, str | None, str | None]:
    """The ``Json<StartEnrollmentRequest>`` extractor: 415, (413 on 2.x), 400, 422, as ``text/plain``."""
    if not _is_json_content_type(request.header("content-type")):
        raise plain(415, "Expected request with `Content-Type: application/json`")
    if version == "2.0" and len(request.body) > _BODY_LIMIT_V2:
        raise plain(413, "Failed to buffer the request body: length limit exceeded")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = request.body[: exc.start].decode("utf-8")
        raise plain(
            400,
            "Failed to parse the request body as JSON: invalid unicode code point"
            + _position(prefix, len(prefix), peek=True),
        ) from None
    try:
        return _BodyParser(text).parse()
    except _JsonSyntaxError as exc:
        where = _position(text, exc.index, peek=not exc.eof)
        detail = f"{exc.path}: " if exc.path else ""
        raise plain(400, f"Failed to parse the request body as JSON: {detail}{exc.message}{where}") from None
    except _JsonDataError as exc:
        where = _position(text, exc.index, peek=False)
        detail = f"{exc.path}: " if exc.path else ""
        raise plain(
            422, f"Failed to deserialize the JSON body into the target type: {detail}{exc.message}{where}"
        ) from None
