"""A local stand-in for the Clarify JSON-RPC API (``integration.insert`` and ``integration.saveSignals``).

:class:`ClarifySandbox` serves ``POST /v1/rpc`` and ``POST /v1/oauth/token`` on ``127.0.0.1`` and keeps
what it receives in memory so tests can read it back (:meth:`ClarifySandbox.points`,
:meth:`ClarifySandbox.signal`). It is written from the documented behaviour of the API
(``reference/clarify-api.md``), never from the provider's client code. Where the documentation is
silent or marked "unconfirmed", the sandbox is *strict*: it rejects what the real service might
reject, so a client that passes here does not depend on lenient server behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import dataclasses
import functools
import hashlib
import hmac
import http
import json
import math
import re
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec
import numpy as np
from aiohttp import web

from airflow_provider_clarify.testing._server import RECORD, SandboxServer

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_clarify.testing._server import RecordedRequest, _Fault

_T = TypeVar("_T")

#: API versions the sandbox answers to; requests without ``X-API-Version`` get the latest stable one.
API_VERSIONS = ("1.0", "1.1beta1", "1.1beta2", "1.1")
DEFAULT_API_VERSION = "1.1"
#: Name of the saveSignals map parameter per version (renamed in 1.1beta2).
_SIGNALS_PARAM = {
    "1.0": "inputs",
    "1.1beta1": "inputs",
    "1.1beta2": "signalsByInput",
    "1.1": "signalsByInput",
}
#: Documented methods, keyed by their lower-case spelling (matching is case-insensitive: 1.0 spelled them
#: ``integration.Insert``/``integration.SaveSignals``).
_METHODS = {m.lower(): m for m in ("integration.insert", "integration.saveSignals")}

DEFAULT_INTEGRATION_ID = "sandb0c1ar1f00000001"
DEFAULT_PASSWORD = "sandbox-basic-password"  # noqa: S105 - a test-only credential of a local server
DEFAULT_CLIENT_ID = "sandbox-client-id"
DEFAULT_CLIENT_SECRET = "sandbox-client-secret"  # noqa: S105 - a test-only credential of a local server
OAUTH_SCOPE = "invoke:integration"

# JSON-RPC error codes (standard ones plus the Clarify-specific "forbidden").
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
FORBIDDEN = -32003

_INTEGRATION_RE = re.compile(r"[a-v0-9]{20}", re.ASCII)
# The documented patterns are ``^[a-zA-Z0-9-_:.#+/]{1,128}$`` (input keys) and ``^[A-Za-z0-9-_/]{1,40}$``
# (label/annotation keys). Taken literally, ``9-_`` is a character *range* that also admits ``;<=>?@[\]^``;
# every source describes the set as letters, digits and the listed punctuation, so the sandbox accepts only
# that narrower set.
_INPUT_KEY_RE = re.compile(r"[a-zA-Z0-9\-_:.#+/]{1,128}", re.ASCII)
# Label and annotation keys: sources give 128 or 40 characters; the sandbox enforces the safer 40.
_META_KEY_RE = re.compile(r"[A-Za-z0-9\-_/]{1,40}", re.ASCII)
_ENUM_KEY_RE = re.compile(r"0|[1-9][0-9]{0,3}", re.ASCII)
_TIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))?",
    re.ASCII,
)
# RFC 3339 (appendix A) durations without the variable units years and months.
_FIXED_DURATION_RE = re.compile(
    r"P(?:[0-9]+W|(?:[0-9]+D)?(?:T(?:[0-9]+H)?(?:[0-9]+M)?(?:[0-9]+(?:\.[0-9]{1,9})?S)?)?)", re.ASCII
)

_NAME_MAX = 100  # sources say 128 (SDK docstrings) or 100 (Node-RED); the sandbox enforces the safer 100
_DESCRIPTION_MAX = 1000
_ENG_UNIT_MAX = 255
_ENUM_LABEL_MAX = 128
_VALUE_TYPES = ("numeric", "enum")
_SOURCE_TYPES = ("measurement", "aggregation", "prediction")
_SAVE_FIELDS = frozenset(
    (
        "name",
        "description",
        "labels",
        "annotations",
        "engUnit",
        "valueType",
        "type",
        "enumValues",
        "sourceType",
        "sampleInterval",
        "gapDetection",
    )
)
_MAX_ERRORS = 100  # keep error bodies small however broken the request is
_OFFLOAD_BYTES = 1024 * 1024  # bodies above this are parsed and validated off the event loop
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)  # naive wall-clock arithmetic; the offset is applied separately
_ONE_US = timedelta(microseconds=1)


class _RpcError(Exception):
    """A JSON-RPC error answered with HTTP 200."""

    def __init__(self, code: int, message: str, params: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.params = params or {}


def _invalid_params(params: dict[str, list[str]]) -> _RpcError:
    return _RpcError(INVALID_PARAMS, "Invalid params", params)


@dataclasses.dataclass
class _Call:
    id: Any
    notification: bool
    method: str
    params: Any


# -- pure validation ------------------------------------------------------------------------------------
def _envelope(payload: Any) -> _Call:
    """Check the JSON-RPC 2.0 request object; raise ``-32600`` for anything but a single request."""
    if isinstance(payload, list):
        raise _RpcError(INVALID_REQUEST, "Invalid request: batch requests not supported")
    if not isinstance(payload, dict):
        raise _RpcError(INVALID_REQUEST, "Invalid request: the body must be a JSON-RPC request object")
    if payload.get("jsonrpc") != "2.0":
        raise _RpcError(INVALID_REQUEST, 'Invalid request: "jsonrpc" must be "2.0"')
    method = payload.get("method")
    if not isinstance(method, str) or not method:
        raise _RpcError(INVALID_REQUEST, 'Invalid request: "method" must be a non-empty string')
    params = payload.get("params", {})
    if not isinstance(params, dict | list):
        raise _RpcError(INVALID_REQUEST, 'Invalid request: "params" must be an object or an array')
    request_id = payload.get("id")
    return _Call(id=request_id, notification=request_id is None, method=method, params=params)


def _request_id(payload: Any) -> Any:
    return payload.get("id") if isinstance(payload, dict) else None


def _param_names(method: str, version: str) -> tuple[str, ...]:
    if method == "integration.insert":
        return ("integration", "data")
    return ("integration", _SIGNALS_PARAM[version], "createOnly")


def _named_params(method: str, version: str, params: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """Map positional params to names and reject unknown ones."""
    names = _param_names(method, version)
    if isinstance(params, list):
        if len(params) > len(names):
            raise _invalid_params({"params": [f"at most {len(names)} positional parameters"]})
        return dict(zip(names, params, strict=False))
    unknown = {name: ["unknown parameter"] for name in params if name not in names}
    if method == "integration.saveSignals":
        other = "signalsByInput" if _SIGNALS_PARAM[version] == "inputs" else "inputs"
        if other in params:
            unknown[other] = [f"not a parameter in API version {version}; use {_SIGNALS_PARAM[version]}"]
    if unknown:
        raise _invalid_params(unknown)
    return params


def _check_integration(params: dict[str, Any], authenticated: str) -> str:
    integration = params.get("integration")
    if integration is None:
        raise _invalid_params({"integration": ["required"]})
    if not isinstance(integration, str) or not _INTEGRATION_RE.fullmatch(integration):
        raise _invalid_params({"integration": ["must match ^[a-v0-9]{20}$"]})
    if integration != authenticated:
        raise _RpcError(
            FORBIDDEN, "Forbidden", {"integration": ["not the integration of the credentials used"]}
        )
    return integration


def _timestamp_us(value: Any) -> int:
    """Microseconds since the epoch of an RFC 3339 timestamp; ``ValueError`` says what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    match = _TIME_RE.fullmatch(value)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if zulu is None and sign is None:
        # Whether the API accepts timestamps without an offset is unconfirmed: the sandbox rejects them.
        raise ValueError("missing UTC offset (Z or +hh:mm)")
    if fraction is not None and len(fraction) > 6:
        raise ValueError("more than 6 fractional second digits (times are stored to the microsecond)")
    offset_minutes = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError("invalid UTC offset")
        offset_minutes = (int(off_h) * 60 + int(off_m)) * (1 if sign == "+" else -1)
    micro = int(fraction.ljust(6, "0")) if fraction else 0
    try:
        wall = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro)
    except ValueError:
        raise ValueError("invalid date or time") from None
    return (wall - _EPOCH_NAIVE) // _ONE_US - offset_minutes * 60_000_000


def _bad_value(value: Any) -> str | None:
    """Why ``value`` is not a valid data frame value (a finite JSON number or null), else None."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return None
        if math.isnan(value):
            return "NaN is not a number (send null for no value)"
        return "Infinity is not allowed" if value > 0 else "-Infinity is not allowed"
    if kind is int:
        try:
            float(value)
        except OverflowError:
            return "number out of range"
        return None
    names = {bool: "a boolean", str: "a string", dict: "an object", list: "an array"}
    return f"must be a number or null, not {names.get(kind, kind.__name__)}"


def _first_bad_value(values: list[Any]) -> tuple[int, str] | None:
    for index, value in enumerate(values):
        if value is None or (type(value) is float and math.isfinite(value)):
            continue
        problem = _bad_value(value)
        if problem is not None:
            return index, problem
    return None


# -- fast paths: whole arrays at once; any doubt falls back to the exact per-item checks above -----------
_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)
_SEPARATORS = {4: ord("-"), 7: ord("-"), 10: ord("T"), 13: ord(":"), 16: ord(":")}
_NONE_TYPE = type(None)


def _utc_times_us(times: list[Any]) -> np.ndarray | None:
    """µs since the epoch of ``times`` when every one is valid, distinct and in the common form.

    The common form is ``YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z`` with the same width for all (what clients
    usually send). Returns None when any time is in another form, invalid or repeated: the caller then
    checks them one by one with :func:`_timestamp_us`, which names the first problem. So this function
    only ever accepts what :func:`_timestamp_us` accepts.
    """
    if not times or set(map(type, times)) != {str}:
        return None
    try:
        text = np.array(times, dtype=np.bytes_)
    except UnicodeEncodeError:
        return None
    width = text.dtype.itemsize
    if width != 20 and not 22 <= width <= 27:
        return None
    chars = text.view(np.uint8).reshape(len(times), width)  # shorter items are NUL-padded: rejected below
    digit_columns = list(_DIGITS) + list(range(20, width - 1))
    digits = chars[:, digit_columns].astype(np.int64) - ord("0")
    separators = dict(_SEPARATORS)
    separators[width - 1] = ord("Z")
    if width > 20:
        separators[19] = ord(".")
    columns = list(separators)
    expected = np.array(list(separators.values()), dtype=np.uint8)
    if ((digits < 0) | (digits > 9)).any() or (chars[:, columns] != expected).any():
        return None

    def number(first: int, count: int) -> np.ndarray:
        value = digits[:, first]
        for column in range(first + 1, first + count):
            value = value * 10 + digits[:, column]
        return value

    year, month, day = number(0, 4), number(4, 2), number(6, 2)
    hour, minute, second = number(8, 2), number(10, 2), number(12, 2)
    micro = number(14, width - 21) * 10 ** (27 - width) if width > 20 else 0
    if (year < 1).any() or ((month < 1) | (month > 12)).any() or (day < 1).any():
        return None
    months = (year - 1970) * 12 + month - 1
    first_day = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    month_days = (months + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) - first_day
    if (day > month_days).any() or (hour > 23).any() or (minute > 59).any() or (second > 59).any():
        return None
    seconds = (first_day + day - 1) * 86_400 + hour * 3600 + minute * 60 + second
    us: np.ndarray = seconds * 1_000_000 + micro
    if len(us) > 1 and not (us[1:] > us[:-1]).all() and len(np.unique(us)) != len(us):
        return None
    return us


def _times_us(times: list[Any], errors: dict[str, list[str]]) -> np.ndarray:
    """µs since the epoch of every time; the first invalid or repeated one is put into ``errors``."""
    fast = _utc_times_us(times)
    if fast is not None:
        return fast
    seen: dict[int, int] = {}
    for index, text in enumerate(times):
        try:
            micros = _timestamp_us(text)
        except ValueError as exc:
            errors[f"data.times[{index}]"] = [str(exc)]
            break
        if micros in seen:
            errors[f"data.times[{index}]"] = [
                f"duplicate timestamp (same instant as data.times[{seen[micros]}])"
            ]
            break
        seen[micros] = index
    return np.fromiter(seen, dtype=np.int64, count=len(seen))


def _floats(values: list[Any]) -> np.ndarray | None:
    """``values`` as float64 (NaN for null) when all are floats or null and finite, else None."""
    if not set(map(type, values)) <= {float, _NONE_TYPE}:
        return None
    array = np.array(values, dtype=np.float64)
    not_finite = ~np.isfinite(array)
    # Null is the only NaN allowed: a NaN literal (decoded by the fallback parser) is not.
    if not_finite.any() and (np.isinf(array).any() or np.count_nonzero(not_finite) != values.count(None)):
        return None
    return array


def _checked_floats(values: list[Any]) -> np.ndarray | tuple[int, str]:
    """``values`` as float64 (NaN for null), or (index, problem) of the first value that is not valid."""
    fast = _floats(values)
    if fast is not None:
        return fast
    bad = _first_bad_value(values)
    if bad is not None:
        return bad
    return np.array([math.nan if value is None else float(value) for value in values], dtype=np.float64)


def _validate_frame(data: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Check an insert data frame; return its times (µs since the epoch) and series (float64, NaN = null)."""
    if not isinstance(data, dict):
        raise _invalid_params({"data": ["required: an object with times and series"]})
    errors: dict[str, list[str]] = {
        f"data.{k}": ["unknown field"] for k in data if k not in ("times", "series")
    }
    times, series = data.get("times"), data.get("series")
    times_us = np.empty(0, dtype=np.int64)
    if not isinstance(times, list):
        errors["data.times"] = ["required: an array of RFC 3339 timestamps"]
    else:
        times_us = _times_us(times, errors)
    checked: dict[str, np.ndarray] = {}
    if not isinstance(series, dict):
        errors["data.series"] = ["required: an object of input key -> array of numbers or null"]
    else:
        for key, values in series.items():
            if len(errors) >= _MAX_ERRORS:
                break
            path = f"data.series.{key}"
            if not _INPUT_KEY_RE.fullmatch(key):
                errors[path] = ["invalid input key: 1-128 of letters, digits and - _ : . # + /"]
            elif not isinstance(values, list):
                errors[path] = ["must be an array of numbers or null"]
            elif isinstance(times, list) and len(values) != len(times):
                errors[path] = ["not same length as times"]
            elif isinstance(floats := _checked_floats(values), tuple):
                errors[f"{path}[{floats[0]}]"] = [floats[1]]
            else:
                checked[key] = floats
    if errors or not isinstance(series, dict):
        raise _invalid_params(errors)
    return times_us, checked


def _check_string(value: Any, minimum: int, maximum: int) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if not minimum <= len(value) <= maximum:
        return f"must be {minimum} to {maximum} characters long"
    return None


def _check_meta_map(value: Any, list_values: bool) -> str | None:
    if not isinstance(value, dict):
        return "must be an object"
    for key, item in value.items():
        if not _META_KEY_RE.fullmatch(key):
            return f"invalid key {key!r}: 1-40 of letters, digits and - _ /"
        if list_values:
            if not isinstance(item, list) or not all(isinstance(v, str) for v in item):
                return f"value of {key!r} must be an array of strings"
        elif not isinstance(item, str):
            return f"value of {key!r} must be a string"
    return None


def _check_enum_values(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be an object"
    for key, label in value.items():
        if not _ENUM_KEY_RE.fullmatch(key):
            return f"invalid key {key!r}: an integer 0-9999"
        if (problem := _check_string(label, 1, _ENUM_LABEL_MAX)) is not None:
            return f"value of {key!r} {problem}"
    return None


def _check_duration(value: Any) -> str | None:
    if value is None:
        return None
    if (
        isinstance(value, str)
        and _FIXED_DURATION_RE.fullmatch(value)
        and value not in ("P", "PT")
        and not value.endswith("T")
    ):
        return None
    return "must be null or a fixed RFC 3339 duration such as PT30S, PT2H or P1D (no years or months)"


def _check_choice(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


_FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "name": functools.partial(_check_string, minimum=1, maximum=_NAME_MAX),
    "description": functools.partial(_check_string, minimum=0, maximum=_DESCRIPTION_MAX),
    "engUnit": functools.partial(_check_string, minimum=0, maximum=_ENG_UNIT_MAX),
    "labels": functools.partial(_check_meta_map, list_values=True),
    "annotations": functools.partial(_check_meta_map, list_values=False),
    "valueType": _check_choice(_VALUE_TYPES),
    "type": _check_choice(_VALUE_TYPES),
    "enumValues": _check_enum_values,
    "sourceType": _check_choice(_SOURCE_TYPES),
    "sampleInterval": _check_duration,
    "gapDetection": _check_duration,
}


def _default_attributes(key: str) -> dict[str, Any]:
    """The save-view attributes of a signal when a request leaves them out."""
    return {
        "name": key,
        "description": "",
        "labels": {},
        "engUnit": "",
        "valueType": "numeric",
        "enumValues": {},
        "sourceType": "measurement",
        "sampleInterval": None,
        "gapDetection": None,
    }


def _validate_save_views(
    name: str, views: Any, errors: dict[str, list[str]]
) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Check ``signalsByInput``/``inputs``; return key -> (replaced attributes, annotations to merge)."""
    if not isinstance(views, dict):
        errors[name] = ["required: an object of input key -> signal save view"]
        return {}
    checked: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
    for key, view in views.items():
        if len(errors) >= _MAX_ERRORS:
            break
        path = f"{name}.{key}"
        if not _INPUT_KEY_RE.fullmatch(key):
            errors[path] = ["invalid input key: 1-128 of letters, digits and - _ : . # + /"]
            continue
        if not isinstance(view, dict):
            errors[path] = ["must be a signal save view object"]
            continue
        for field, value in view.items():
            check = _FIELD_CHECKS.get(field)
            problem = "unknown field" if check is None else check(value)
            if problem is not None:
                errors[f"{path}.{field}"] = [problem]
        if "type" in view and "valueType" in view and view["type"] != view["valueType"]:
            errors[f"{path}.type"] = ["differs from valueType (type is an alias of valueType)"]
        attributes = _default_attributes(key)
        attributes.update({k: v for k, v in view.items() if k not in ("annotations", "type")})
        if "type" in view and "valueType" not in view:
            attributes["valueType"] = view["type"]
        checked[key] = (attributes, view.get("annotations", {}))
    return checked


def _signal_id(integration: str, key: str) -> str:
    """A deterministic 20-character ``[a-v0-9]`` id for (integration, input key)."""
    digest = hashlib.sha256(f"{integration}\0{key}".encode()).digest()
    return base64.b32hexencode(digest).decode("ascii").lower()[:20]


def _trace_headers(version: str | None) -> tuple[str, dict[str, str]]:
    trace = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
    if version is not None:
        headers["X-API-Version"] = version
    return trace, headers


def _decode_json(body: bytes) -> Any:
    """The JSON value of a request body; ``ValueError`` (or ``RecursionError``) when it is not JSON.

    msgspec decodes strict UTF-8 JSON several times faster than :func:`json.loads` and gives the same
    result for it. Whatever it refuses goes to :func:`json.loads`, which decides as before: it turns
    ``NaN``/``Infinity`` literals and numbers beyond the float range into non-finite floats, which
    :func:`_bad_value` then rejects by name, and it rejects what is not JSON at all.
    """
    try:
        return msgspec.json.decode(body)
    except msgspec.MsgspecError:
        return json.loads(body)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None (after draining it unread) when it is larger than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    too_large = request.content_length is not None and request.content_length > limit
    async for chunk in request.content.iter_any():
        size += len(chunk)
        too_large = too_large or size > limit
        if not too_large:
            chunks.append(chunk)
    return None if too_large else b"".join(chunks)


class ClarifySandbox(SandboxServer):
    """An in-process Clarify API: JSON-RPC ``integration.insert``/``saveSignals``, Basic and OAuth auth.

    :param rate_limit: requests per second per (integration, method); excess requests are queued.
        ``None`` switches throttling off.
    :param max_body_bytes: larger request bodies are answered with HTTP 413 without being parsed.
    :param queue_timeout: a request that would wait longer than this in the throttling queue times out.
    :param total_timeout: a request whose total time (so far plus queueing) would exceed this times out.
    :param token_ttl: lifetime of OAuth access tokens in seconds.
    :param integration_id: the one integration the credentials belong to (20 characters of ``[a-v0-9]``).
    :param password: Basic Auth password (the user name is the integration id).
    :param client_id: OAuth client id.
    :param client_secret: OAuth client secret.
    """

    name = "clarify-sandbox"

    def __init__(
        self,
        *,
        rate_limit: float | None = 1.0,
        max_body_bytes: int = 8 * 1024 * 1024,
        queue_timeout: float = 10.0,
        total_timeout: float = 15.0,
        token_ttl: float = 3600.0,
        integration_id: str = DEFAULT_INTEGRATION_ID,
        password: str = DEFAULT_PASSWORD,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
    ) -> None:
        if not _INTEGRATION_RE.fullmatch(integration_id):
            raise ValueError(f"integration_id must match ^[a-v0-9]{{20}}$, got {integration_id!r}")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError(f"rate_limit must be > 0 or None, got {rate_limit!r}")
        super().__init__()
        self.rate_limit = rate_limit
        self.max_body_bytes = max_body_bytes
        self.queue_timeout = queue_timeout
        self.total_timeout = total_timeout
        self.token_ttl = token_ttl
        self.integration_id = integration_id
        self.password = password
        self.client_id = client_id
        self.client_secret = client_secret
        self._lock = threading.Lock()
        self._signals: dict[tuple[str, str], dict[str, Any]] = {}
        # (integration, key) -> chunks of (µs since the epoch, values), oldest insert first, nulls left out
        self._points: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (integration, monotonic expiry)
        self._token_requests = 0
        self._rpc_errors: list[list[Any]] = []  # [remaining, code, message]
        self._next_slot: dict[tuple[str, str], float] = {}  # only touched on the server's event loop

    # -- public helpers -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The API base URL, like ``https://api.clarify.io/v1/``: ``http://127.0.0.1:<port>/v1/``."""
        return f"{self.base_url}/v1/"

    @property
    def token_requests(self) -> int:
        """How many requests reached the OAuth token endpoint (injected faults not counted)."""
        with self._lock:
            return self._token_requests

    def connection(self, auth: Literal["basic", "oauth", "credentials"] = "basic") -> dict[str, Any]:
        """An Airflow connection (as a dict) that points at this sandbox.

        :param auth: ``basic`` (integration id and password), ``oauth`` (client id in the extra, client
            secret as password) or ``credentials`` (the credentials file of the Clarify admin panel).
        """
        if auth == "basic":
            return {
                "conn_type": "clarify",
                "host": self.url,
                "login": self.integration_id,
                "password": self.password,
            }
        if auth == "oauth":
            return {
                "conn_type": "clarify",
                "host": self.url,
                "login": self.integration_id,
                "password": self.client_secret,
                "extra": {"client_id": self.client_id},
            }
        if auth == "credentials":
            credentials = {
                "apiUrl": self.url,
                "integration": self.integration_id,
                "credentials": {
                    "type": "client-credentials",
                    "clientId": self.client_id,
                    "clientSecret": self.client_secret,
                },
            }
            return {"conn_type": "clarify", "extra": {"credentials": credentials}}
        raise ValueError(f"auth must be 'basic', 'oauth' or 'credentials', got {auth!r}")

    def connection_json(self, auth: Literal["basic", "oauth", "credentials"] = "basic") -> str:
        """:meth:`connection` as JSON, for an ``AIRFLOW_CONN_*`` environment variable.

        :param auth: see :meth:`connection`.
        """
        return json.dumps(self.connection(auth))

    def rpc_error_next(self, n: int = 1, *, code: int = -32015, message: str = "Try again") -> None:
        """Answer the next ``n`` ``/v1/rpc`` calls with HTTP 200 and this JSON-RPC error (nothing is stored).

        :param n: how many calls.
        :param code: the JSON-RPC error code.
        :param message: the error message.
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        with self._lock:
            self._rpc_errors.append([n, code, message])

    def expire_tokens(self) -> None:
        """Make every access token issued so far invalid (HTTP 401 when used)."""
        with self._lock:
            self._tokens.clear()

    def points(self, key: str, integration_id: str | None = None) -> dict[datetime, float]:
        """The stored points of a signal, oldest first, as UTC datetimes (µs) -> value.

        :param key: the signal's input key.
        :param integration_id: the integration; default the sandbox's.
        """
        with self._lock:
            chunks = list(self._points.get((integration_id or self.integration_id, key), ()))
        stored: dict[int, float] = {}
        for times, values in chunks:
            stored.update(zip(times.tolist(), values.tolist(), strict=True))  # the later insert wins
        return {_EPOCH + timedelta(microseconds=t): v for t, v in sorted(stored.items())}

    def signal(self, key: str, integration_id: str | None = None) -> dict[str, Any]:
        """A copy of a stored signal: ``id``, ``input``, ``created_at`` and its save-view attributes.

        :param key: the signal's input key.
        :param integration_id: the integration; default the sandbox's.
        """
        with self._lock:
            found = self._signals.get((integration_id or self.integration_id, key))
            if found is None:
                raise KeyError(f"no signal with input key {key!r}")
            return copy.deepcopy(found)

    def signals(self, integration_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Copies of all signals of an integration, by input key.

        :param integration_id: the integration; default the sandbox's.
        """
        integration = integration_id or self.integration_id
        with self._lock:
            return {
                key: copy.deepcopy(s) for (owner, key), s in self._signals.items() if owner == integration
            }

    def rpc_calls(self, method: str | None = None) -> list[RecordedRequest]:
        """Recorded ``/v1/rpc`` requests, optionally only those of one method (any letter case).

        :param method: e.g. ``integration.insert``; None for all.
        """
        calls = [r for r in self.requests if r.path == "/v1/rpc"]
        if method is None:
            return calls
        return [r for r in calls if str(r.info.get("method", "")).lower() == method.lower()]

    def reset(self) -> None:
        """Forget stored signals, points, tokens, recorded requests, pending faults and throttling state."""
        with self._lock:
            self._signals.clear()
            self._points.clear()
            self._tokens.clear()
            self._token_requests = 0
            self._rpc_errors.clear()
            self._next_slot = {}
        self.faults.clear()
        self.clear_requests()

    # -- server -------------------------------------------------------------------------------------
    def setup_routes(self, app: web.Application) -> None:
        """Serve ``POST /v1/rpc`` and ``POST /v1/oauth/token``.

        :param app: the application to add the routes to.
        """
        app.router.add_post("/v1/rpc", self._rpc)
        app.router.add_post("/v1/oauth/token", self._token)

    def fault_response(self, fault: _Fault, request: web.Request) -> web.StreamResponse:
        """An injected 5xx/429 as an HTTP-level failure: small JSON body, no JSON-RPC envelope.

        :param fault: the injected fault.
        :param request: the request it replaces the answer to.
        """
        if fault.body is None:
            try:
                reason = http.HTTPStatus(fault.status).phrase
            except ValueError:
                reason = "Error"
            fault = dataclasses.replace(fault, body={"code": fault.status, "message": f"{reason} (injected)"})
        response = super().fault_response(fault, request)
        response.headers.update(_trace_headers(None)[1])
        return response

    async def _offload(self, big: bool, func: Callable[..., _T], *args: Any) -> _T:
        """Run ``func`` in a worker thread for big bodies so the event loop keeps serving."""
        if not big:
            return func(*args)
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args))

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        record = request[RECORD]
        try:
            return await self._rpc_answer(request, record)
        finally:
            record.info["answered_at"] = time.time()

    async def _rpc_answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        version = request.headers.get("X-API-Version", DEFAULT_API_VERSION).strip()
        trace, headers = _trace_headers(version if version in API_VERSIONS else None)
        body = await _read_limited(request, self.max_body_bytes)
        if body is None:
            # Whether the service answers 413 (rather than an RPC error) is unconfirmed; ~8 MiB is the limit.
            message = f"request body larger than {self.max_body_bytes} bytes"
            return web.json_response({"code": 413, "message": message}, status=413, headers=headers)
        record.body_bytes = len(body)
        integration = self._authenticate(request.headers.get("Authorization"))
        if integration is None:
            message = "missing, invalid or expired credentials"
            return web.json_response({"code": 401, "message": message}, status=401, headers=headers)
        # The docs ask for exactly ``application/json``; parameters such as ``charset=utf-8`` are tolerated.
        if request.content_type != "application/json":
            message = "Content-Type must be application/json"
            return web.json_response({"code": 415, "message": message}, status=415, headers=headers)
        big = len(body) > _OFFLOAD_BYTES
        try:
            payload = await self._offload(big, _decode_json, body)
        except (ValueError, RecursionError):
            return self._rpc_response(
                None, _RpcError(PARSE_ERROR, "Parse error: invalid JSON"), trace, headers
            )
        try:
            call = _envelope(payload)
        except _RpcError as exc:
            return self._rpc_response(_request_id(payload), exc, trace, headers)
        method = _METHODS.get(call.method.lower())
        record.info.update(method=method or call.method, notification=call.notification, version=version)
        answer: dict[str, Any] | _RpcError
        injected = self._take_rpc_error()
        if injected is not None:
            record.fault = "rpc_error"
            answer = injected
        elif version not in API_VERSIONS:
            supported = ", ".join(API_VERSIONS)
            message = f"Invalid request: unsupported X-API-Version {version!r} (supported: {supported})"
            answer = _RpcError(INVALID_REQUEST, message)
        elif method is None:
            answer = _RpcError(METHOD_NOT_FOUND, f"Method not found: {call.method}")
        elif not await self._throttle((integration, method), record):
            # How a throttling time-out looks on the wire is unconfirmed; the sandbox answers HTTP 504.
            message = "request timed out in the rate-limit queue"
            return web.json_response({"code": 504, "message": message}, status=504, headers=headers)
        else:
            try:
                answer = await self._offload(
                    big, self._execute, method, version, integration, call.params, record
                )
            except _RpcError as exc:
                answer = exc
        if isinstance(answer, _RpcError):
            record.info["error"] = answer.code
        if call.notification:
            return web.Response(status=204, headers=headers)
        return self._rpc_response(call.id, answer, trace, headers)

    @staticmethod
    def _rpc_response(
        request_id: Any, answer: dict[str, Any] | _RpcError, trace: str, headers: dict[str, str]
    ) -> web.Response:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        if isinstance(answer, _RpcError):
            data = {"trace": trace, "params": answer.params}
            body["error"] = {"code": answer.code, "message": answer.message, "data": data}
        else:
            body["result"] = answer
        return web.json_response(body, headers=headers)

    def _take_rpc_error(self) -> _RpcError | None:
        with self._lock:
            if not self._rpc_errors:
                return None
            pending = self._rpc_errors[0]
            pending[0] -= 1
            if pending[0] == 0:
                self._rpc_errors.pop(0)
            return _RpcError(pending[1], pending[2])

    async def _throttle(self, key: tuple[str, str], record: RecordedRequest) -> bool:
        """Queue the request for its slot; False when it times out (then it uses no slot).

        Slot arithmetic on the event loop (no await between reading and writing ``_next_slot``): each
        admitted request books the slot after the last booked one, ``1 / rate_limit`` seconds apart. A
        request that would queue longer than ``queue_timeout``, or last longer than ``total_timeout`` in
        all, is held until the earlier of the two deadlines and then times out.
        """
        if self.rate_limit is None:
            return True
        now = time.monotonic()
        elapsed = max(0.0, time.time() - record.received_at)
        start = max(now, self._next_slot.get(key, now))
        wait = start - now
        if wait > self.queue_timeout or elapsed + wait > self.total_timeout:
            await asyncio.sleep(max(0.0, min(self.queue_timeout, self.total_timeout - elapsed)))
            record.info["timed_out"] = True
            return False
        self._next_slot[key] = start + 1.0 / self.rate_limit
        record.info["queued"] = wait
        if wait > 0:
            await asyncio.sleep(wait)
        return True

    def _authenticate(self, header: str | None) -> str | None:
        """The integration the ``Authorization`` header authenticates, or None."""
        scheme, _, credentials = (header or "").partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            if user == self.integration_id and hmac.compare_digest(password.encode(), self.password.encode()):
                return user
            return None
        if scheme.lower() == "bearer":
            with self._lock:
                entry = self._tokens.get(credentials)
            if entry is not None and time.monotonic() < entry[1]:
                return entry[0]
        return None

    async def _token(self, request: web.Request) -> web.Response:
        with self._lock:
            self._token_requests += 1
        headers = {"Cache-Control": "no-store"}

        def oauth_error(status: int, error: str, description: str) -> web.Response:
            body = {"error": error, "error_description": description}
            return web.json_response(body, status=status, headers=headers)

        if request.content_type != "application/x-www-form-urlencoded":
            return oauth_error(
                400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded"
            )
        form = await request.post()
        fields = {name: form.get(name) for name in ("grant_type", "client_id", "client_secret", "audience")}
        missing = [name for name, value in fields.items() if not isinstance(value, str) or not value]
        if missing:
            return oauth_error(400, "invalid_request", f"missing form fields: {', '.join(missing)}")
        if fields["grant_type"] != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
        secret_ok = hmac.compare_digest(str(fields["client_secret"]).encode(), self.client_secret.encode())
        if fields["client_id"] != self.client_id or not secret_ok:
            return oauth_error(401, "invalid_client", "Unauthorized: unknown client or wrong client secret")
        if str(fields["audience"]).rstrip("/") + "/" != self.url:
            return oauth_error(403, "access_denied", f"Service not found: audience must be {self.url}")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (self.integration_id, time.monotonic() + self.token_ttl)
        body = {
            "access_token": token,
            "scope": OAUTH_SCOPE,
            "expires_in": int(self.token_ttl),
            "token_type": "Bearer",
        }
        return web.json_response(body, headers=headers)

    # -- methods ------------------------------------------------------------------------------------
    def _execute(
        self, method: str, version: str, integration: str, params: Any, record: RecordedRequest
    ) -> dict[str, Any]:
        """Validate and apply one call (all or nothing); runs on the loop or in a worker thread."""
        named = _named_params(method, version, params)
        if isinstance(named.get("integration"), str):
            record.info["integration"] = named["integration"]
        if method == "integration.insert":
            data = named.get("data")
            if isinstance(data, dict):
                times, series = data.get("times"), data.get("series")
                if isinstance(times, list):
                    record.info["times"] = len(times)
                if isinstance(series, dict):
                    record.info["series"] = len(series)
                    record.info["points"] = sum(
                        len(v) - v.count(None) for v in series.values() if isinstance(v, list)
                    )
            _check_integration(named, integration)
            return self._insert(integration, *_validate_frame(data))
        views_param = _SIGNALS_PARAM[version]
        views = named.get(views_param)
        if isinstance(views, dict):
            record.info["signals"] = len(views)
        _check_integration(named, integration)
        errors: dict[str, list[str]] = {}
        checked = _validate_save_views(views_param, views, errors)
        create_only = named.get("createOnly", False)
        if not isinstance(create_only, bool):
            errors["createOnly"] = ["must be a boolean"]
        if errors:
            raise _invalid_params(errors)
        return self._save_signals(integration, checked, create_only)

    def _ensure_signal(self, integration: str, key: str) -> tuple[dict[str, Any], bool]:
        """The stored signal for (integration, key), created with defaults if new; call with the lock held."""
        found = self._signals.get((integration, key))
        if found is not None:
            return found, False
        signal = {
            "id": _signal_id(integration, key),
            "input": key,
            "created_at": datetime.now(UTC),
            **_default_attributes(key),
            "annotations": {},
        }
        self._signals[(integration, key)] = signal
        return signal, True

    def _insert(self, integration: str, times: np.ndarray, series: dict[str, np.ndarray]) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        with self._lock:
            for key, values in series.items():
                signal, created = self._ensure_signal(integration, key)
                # null = "no value at that time"; whether it deletes a stored value is unconfirmed, the
                # sandbox keeps the stored value. Chunks are kept in arrival order, so a later chunk's value
                # for a timestamp overwrites an earlier one when read back (unconfirmed upstream).
                kept = ~np.isnan(values)
                if kept.all():
                    self._points.setdefault((integration, key), []).append((times, values))
                elif kept.any():
                    self._points.setdefault((integration, key), []).append((times[kept], values[kept]))
                summary[key] = {"id": signal["id"], "created": created}
        return {"signalsByInput": summary}

    def _save_signals(
        self, integration: str, views: dict[str, tuple[dict[str, Any], dict[str, str]]], create_only: bool
    ) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        with self._lock:
            for key, (attributes, annotations) in views.items():
                existed = (integration, key) in self._signals
                signal, created = self._ensure_signal(integration, key)
                updated = False
                if created or not create_only:
                    before = copy.deepcopy(signal)
                    signal.update(attributes)  # every attribute is replaced ...
                    signal["annotations"] = {**signal["annotations"], **annotations}  # ... annotations merge
                    updated = existed and signal != before
                summary[key] = {"id": signal["id"], "created": created, "updated": updated}
        return {"signalsByInput": summary}
