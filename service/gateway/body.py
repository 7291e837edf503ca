"""A request body as the gateway personality hands it to a kernel: decoded once, checked, bounded.

Stock notebook-http decodes only a body whose Content-Type is exactly ``application/json`` and
passes anything it cannot decode on as a string, which the notebook then decodes again (a JSON
string holding JSON was decoded twice). Here the gateway decides, before any kernel is involved:

* a JSON body (``application/json`` or ``…+json``, any parameters) is decoded once; malformed
  JSON, bytes that are not UTF-8, a ``charset`` other than UTF-8, numbers Python will not read
  and nesting deeper than ``MAX_JSON_DEPTH`` are the client's errors (400 or 415);
* form bodies become ``{field: [values]}`` and other bodies text, as in stock notebook-http;
* a body of bytes that are not UTF-8, sent without a type or with a type that is not text
  (``application/octet-stream``, ``image/png``, or none, as Triton's client sends its binary
  tensors), reaches the cell base64-encoded, with ``REQUEST["body_encoding"]`` ``"base64"``:
  stock notebook-http could not pass it at all. A body declared as text or JSON must be UTF-8.

Every step is linear in the body's size, and deep nesting is refused in the gateway, so no
kernel ever meets a body deep enough to reach Python's recursion limit.

``request_json`` gives the body as the JSON text ``REQUEST`` carries: a JSON body's own text,
once it is checked. Decoded, a body takes about ten times its size in Python objects (a 4 MB
body of numbers, 38 MB), and encoding it again costs the gateway time; as its text, a request
waiting for a kernel holds about its own size.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from gradbook_service.gateway.errors import ServiceError
from gradbook_service.gateway.settings import MAX_JSON_DEPTH
from kernel_gateway.notebook_http.request_utils import parse_args

FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
ENCODING = "body_encoding"  # the REQUEST key saying the body is bytes, base64-encoded
UTF8 = ("utf-8", "utf8")
JSON = "application/json"


def is_json(content_type: str) -> bool:
    """Whether ``content_type`` names JSON: ``application/json`` or a ``+json`` type, with any
    parameters."""
    media_type = content_type.split(";")[0].strip().lower()
    return media_type == JSON or (media_type.startswith("application/") and
                                  media_type.endswith("+json"))


def decode(content_type: str, raw: bytes, form_fields: dict[str, list[bytes]]) -> Any:
    """The body for ``REQUEST``: the JSON value, the form's fields, the text, or bytes that are
    not text as base64.

    ``form_fields`` are the fields tornado parsed from a form body (``body_arguments``).
    """
    return _decode(content_type, raw, form_fields)[0]


def request_json(content_type: str, raw: bytes,
                 form_fields: dict[str, list[bytes]]) -> tuple[str, bool]:
    """The body for ``REQUEST`` as JSON text (what ``json.dumps(decode(…))`` would give, up to
    spacing): a JSON body's own text once checked, so the decoded value is let go at once; and
    whether it is bytes, base64-encoded."""
    value, text, is_bytes = _decode(content_type, raw, form_fields)
    return (json.dumps(value) if text is None else text), is_bytes


def _decode(content_type: str, raw: bytes,
            form_fields: dict[str, list[bytes]]) -> tuple[Any, str | None, bool]:
    """The body's value, its text when that is JSON already, and whether the value is bytes,
    base64-encoded."""
    media_type, *parameters = (part.strip() for part in content_type.split(";"))
    media_type = media_type.lower()
    charset = _charset(parameters)
    if charset is not None and charset not in UTF8:
        raise ServiceError(415, f"send the body as UTF-8; charset {charset[:40]!r} is not read")
    try:
        if media_type in FORMS:
            return parse_args(form_fields), None, False
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if media_type.startswith("text/") or is_json(content_type) or media_type in FORMS:
            raise ServiceError(400, f"the body is not valid UTF-8 (byte {err.start})") from None
        return base64.b64encode(raw).decode("ascii"), None, True
    if not text or not is_json(content_type):
        return text, None, False
    return json_value(text), text, False


def json_value(text: str) -> Any:
    """``text`` decoded as JSON with the gateway's checks, each failure a 400 saying why: for a
    body a protocol sends as JSON without saying so (Triton's client sends no Content-Type)."""
    value = _parse_json(text)
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise ServiceError(400, f"the body nests JSON more than {MAX_JSON_DEPTH} levels deep")
    return value


def _charset(parameters: list[str]) -> str | None:
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ServiceError(400, f"the request body is not valid JSON: {err}") from None
    except RecursionError:  # far deeper than MAX_JSON_DEPTH; json's C parser stops cleanly
        raise ServiceError(
            400, f"the body nests JSON more than {MAX_JSON_DEPTH} levels deep"
        ) from None
    except ValueError:  # an integer of more than 4300 digits (sys.int_info.default_max_str_digits)
        raise ServiceError(400, "the body holds a number with too many digits") from None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` levels in ``value``; visits each
    element once, level by level, without recursion."""
    level = [value] if isinstance(value, (list, dict)) else []
    for _ in range(limit):
        children = (c for v in level for c in (v.values() if isinstance(v, dict) else v))
        level = [c for c in children if isinstance(c, (list, dict))]
        if not level:
            return False
    return bool(level)
