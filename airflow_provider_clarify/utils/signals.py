"""Signal metadata for ``integration.saveSignals``: complete save views and their content hash (pure logic).

Clarify *replaces* every attribute of a signal on save and only *merges* ``annotations``
(reference/clarify-api.md §4): a view that only sets ``name`` resets labels, unit and the rest. So
:func:`save_view` always returns the complete view, with Clarify's defaults for what the caller left out.

To skip signals whose metadata did not change, :func:`with_hash` stores a content hash of the view in the
annotation :data:`HASH_ANNOTATION`; comparing it with the hash saved last time tells whether a save is
needed (Node-RED's Clarify node does the same with a local hash cache).

Limits follow the safer side where sources disagree: names up to 100 characters, label and annotation keys
up to 40 characters of ``[A-Za-z0-9-_/]``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import msgspec

#: Annotation that carries the content hash of the rest of the view.
HASH_ANNOTATION = "clarify-airflow/metadata-hash"
#: The fields of a save view and Clarify's defaults (``name`` defaults to the input key).
DEFAULTS: dict[str, Any] = {
    "name": None,
    "description": "",
    "labels": {},
    "engUnit": "",
    "valueType": "numeric",
    "enumValues": {},
    "sourceType": "measurement",
    "sampleInterval": None,
    "gapDetection": None,
    "annotations": {},
}
VALUE_TYPES = ("numeric", "enum")
SOURCE_TYPES = ("measurement", "aggregation", "prediction")
NAME_MAX = 100
DESCRIPTION_MAX = 1000
ENG_UNIT_MAX = 255
ENUM_LABEL_MAX = 128
META_KEY_PATTERN = re.compile(r"[A-Za-z0-9\-_/]{1,40}", re.ASCII)
_ENUM_KEY = re.compile(r"0|[1-9][0-9]{0,3}", re.ASCII)
# Fixed RFC 3339 durations (no years or months, whose length varies).
_DURATION = re.compile(
    r"P(?:[0-9]+W|(?:[0-9]+D)?(?:T(?:[0-9]+H)?(?:[0-9]+M)?(?:[0-9]+(?:\.[0-9]{1,9})?S)?)?)", re.ASCII
)


def _fail(key: str, field: str, problem: str) -> ValueError:
    return ValueError(f"signals: {key!r} field {field!r} {problem}")


def format_duration(value: timedelta) -> str:
    """An RFC 3339 fixed duration for a positive timedelta, e.g. ``PT30S``, ``PT1H30M``, ``P1DT2H``.

    :param value: the duration; must be positive.
    """
    total_us = value // timedelta(microseconds=1)
    if total_us <= 0:
        raise ValueError(f"a duration must be positive, got {value}")
    days, rest = divmod(total_us, 86_400_000_000)
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, micros = divmod(rest, 1_000_000)
    text = "P" + (f"{days}D" if days else "")
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or micros:
        clock += f"{seconds}.{micros:06d}".rstrip("0").rstrip(".") + "S"
    return text + ("T" + clock if clock else "")


def _duration(key: str, field: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        try:
            return format_duration(value)
        except ValueError as exc:
            raise _fail(key, field, str(exc)) from None
    if isinstance(value, str) and _DURATION.fullmatch(value) and not value.endswith(("P", "T")):
        return value
    raise _fail(key, field, f"must be None, a timedelta or a fixed duration like 'PT30S', got {value!r}")


def _text(key: str, field: str, value: Any, minimum: int, maximum: int) -> str:
    if not isinstance(value, str) or not minimum <= len(value) <= maximum:
        raise _fail(key, field, f"must be a string of {minimum} to {maximum} characters")
    return value


def _choice(key: str, field: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _fail(key, field, f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _meta_key(key: str, field: str, name: Any) -> str:
    if not isinstance(name, str) or not META_KEY_PATTERN.fullmatch(name):
        raise _fail(key, field, f"key {name!r} must be 1-40 characters of letters, digits and - _ /")
    return name


def _labels(key: str, value: Any) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        raise _fail(key, "labels", "must be a dict of label -> list of strings")
    labels: dict[str, list[str]] = {}
    for name, items in value.items():
        _meta_key(key, "labels", name)
        values = [items] if isinstance(items, str) else items
        if not isinstance(values, Sequence) or not all(isinstance(v, str) for v in values):
            raise _fail(key, "labels", f"value of {name!r} must be a string or a list of strings")
        labels[name] = list(values)
    return labels


def _annotations(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _fail(key, "annotations", "must be a dict of key -> string")
    annotations: dict[str, str] = {}
    for name, item in value.items():
        _meta_key(key, "annotations", name)
        if not isinstance(item, str):
            raise _fail(key, "annotations", f"value of {name!r} must be a string")
        annotations[name] = item
    return annotations


def _enum_values(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _fail(key, "enumValues", "must be a dict of integer 0-9999 -> label")
    out: dict[str, str] = {}
    for number, label in value.items():
        text = str(number) if isinstance(number, int) and not isinstance(number, bool) else number
        if not isinstance(text, str) or not _ENUM_KEY.fullmatch(text):
            raise _fail(key, "enumValues", f"key {number!r} must be an integer 0-9999")
        out[text] = _text(key, "enumValues", label, 1, ENUM_LABEL_MAX)
    return out


def save_view(key: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The complete, validated save view of one signal.

    :param key: the signal's input key.
    :param metadata: any of ``name``, ``description``, ``labels`` (values: a string or a list of strings),
        ``engUnit``, ``valueType`` (alias ``type``), ``enumValues``, ``sourceType``, ``sampleInterval``,
        ``gapDetection`` (timedelta or fixed duration text) and ``annotations``.
    :raises ValueError: naming the key and the field for an unknown field or a bad value.
    """
    if not isinstance(metadata, Mapping):
        raise ValueError(f"signals: the metadata of {key!r} must be a dict, got {type(metadata).__name__}")
    fields = dict(metadata)
    if "type" in fields:
        alias = fields.pop("type")
        if "valueType" in fields and fields["valueType"] != alias:
            raise _fail(key, "type", "differs from valueType (type is an alias of valueType)")
        fields["valueType"] = alias
    unknown = sorted(set(fields) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"signals: {key!r} has unknown field(s) {unknown}; known: {sorted(DEFAULTS)}")
    # None means "the default" for every field (for the durations the default is null anyway).
    merged = {**DEFAULTS, "name": key, **{k: v for k, v in fields.items() if v is not None}}
    return {
        "name": _text(key, "name", merged["name"], 1, NAME_MAX),
        "description": _text(key, "description", merged["description"], 0, DESCRIPTION_MAX),
        "labels": _labels(key, merged["labels"]),
        "engUnit": _text(key, "engUnit", merged["engUnit"], 0, ENG_UNIT_MAX),
        "valueType": _choice(key, "valueType", merged["valueType"], VALUE_TYPES),
        "enumValues": _enum_values(key, merged["enumValues"]),
        "sourceType": _choice(key, "sourceType", merged["sourceType"], SOURCE_TYPES),
        "sampleInterval": _duration(key, "sampleInterval", merged["sampleInterval"]),
        "gapDetection": _duration(key, "gapDetection", merged["gapDetection"]),
        "annotations": _annotations(key, merged["annotations"]),
    }


def content_hash(view: Mapping[str, Any]) -> str:
    """A stable hash of a save view, ignoring :data:`HASH_ANNOTATION` itself.

    :param view: a complete save view (from :func:`save_view`).
    """
    annotations = {k: v for k, v in view.get("annotations", {}).items() if k != HASH_ANNOTATION}
    canonical = msgspec.json.encode({**view, "annotations": annotations}, order="sorted")
    return hashlib.sha256(canonical).hexdigest()[:32]


def with_hash(view: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``view`` with its content hash in the annotation :data:`HASH_ANNOTATION`.

    :param view: a complete save view.
    """
    digest = content_hash(view)
    return {**view, "annotations": {**view.get("annotations", {}), HASH_ANNOTATION: digest}}
