"""Clarity report requests as pure logic: validation, the request body, its identity and the time window.

Nothing here talks HTTP or imports Airflow: the hook sends what :func:`build_report_request` returns, the
operator hashes it with :func:`report_identity` to find a report it already requested, and the sensor, the
trigger and the operator read a report record with :func:`report_outcome`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

#: Report type -> the body field holding the ids it needs.
REPORT_ID_FIELDS: dict[str, str] = {
    "datasource-measurements": "datasourceIds",
    "node-measurements": "nodeIds",
    "reference-site-measurements": "refSiteIds",
}
OUTPUT_FREQUENCIES = ("minute", "hour", "day")
METRIC_LABEL_STYLES = ("canonical", "english", "legacy")
#: Accepted ``file_format`` values -> the value sent. The short names are sent: they are valid in both the
#: older (``csv``/``parquet`` only) and the current (``csv-wide`` with alias ``csv``) versions of the docs.
FILE_FORMATS: dict[str, str] = {
    "csv": "csv",
    "csv-wide": "csv",
    "parquet": "parquet",
    "parquet-wide": "parquet",
}

STATUS_IN_PROGRESS = "in-progress"
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"

#: What a report record means for a waiting task.
ReportState = Literal["running", "succeeded", "failed", "invalid"]

_PARAM_FOR_FIELD = {"datasourceIds": "datasource_ids", "nodeIds": "node_ids", "refSiteIds": "ref_site_ids"}


def to_utc(value: datetime | str, *, param: str) -> datetime:
    """Read a time as an aware UTC datetime, cut to whole milliseconds (what Clarity's format carries).

    :param value: an ISO 8601 string (``Z`` or an offset; date-only and space-separated forms too) or a
        ``datetime`` (pendulum's included). A time without zone is UTC.
    :param param: the parameter name, for the error message.
    :raises ValueError: when the value is neither, or the string is not ISO 8601.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{param}: {value!r} is not an ISO 8601 time") from None
    else:
        raise ValueError(f"{param}: expected an ISO 8601 string or a datetime, got {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    utc = parsed.astimezone(UTC)
    # pendulum.DateTime is a datetime subclass; rebuild a plain datetime so formatting and hashing agree.
    return datetime(
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond // 1000 * 1000,
        tzinfo=UTC,
    )


def format_time(value: datetime) -> str:
    """Format an aware datetime the way Clarity writes times: ``2024-01-01T00:00:00.000Z`` (UTC).

    :param value: the time; a naive one is taken as UTC.
    """
    utc = to_utc(value, param="time")
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def resolve_window(
    start_time: datetime | str | None,
    end_time: datetime | str | None,
    *,
    interval_start: datetime | None,
    interval_end: datetime | None,
    lookback: timedelta,
) -> tuple[datetime, datetime]:
    """The report window ``[start, end)`` in UTC.

    Defaults: the data interval ``[interval_start, interval_end)`` when it is not empty; otherwise (Airflow
    3's default timetables give start == end) ``[interval_end - lookback, interval_end)``. When only
    ``end_time`` is given, the window is ``[end_time - lookback, end_time)``; when only ``start_time`` is
    given, it ends where the default window ends.

    :param start_time: the explicit start, or ``None``.
    :param end_time: the explicit end, or ``None``.
    :param interval_start: the run's data interval start (``None`` when the run has none).
    :param interval_end: the run's data interval end, or the time the run is for when it has no interval.
    :param lookback: the window length used when the data interval is empty.
    :raises ValueError: on unreadable times, a non-positive lookback, a missing default, or start >= end.
    """
    if not isinstance(lookback, timedelta) or lookback <= timedelta(0):
        raise ValueError(f"lookback: expected a positive timedelta, got {lookback!r}")
    start = None if start_time is None else to_utc(start_time, param="start_time")
    end = None if end_time is None else to_utc(end_time, param="end_time")
    if end is not None and start is None:
        start = end - lookback
    if start is None or end is None:
        if interval_end is None:
            raise ValueError(
                "start_time/end_time: not given and the run has no data interval or date to default to"
            )
        default_end = to_utc(interval_end, param="data_interval_end")
        default_start = (
            to_utc(interval_start, param="data_interval_start") if interval_start is not None else None
        )
        if default_start is None or default_start >= default_end:
            default_start = default_end - lookback
        start = default_start if start is None else start
        end = default_end if end is None else end
    _check_order(start, end)
    return start, end


def _check_order(start: datetime, end: datetime) -> None:
    if start >= end:
        raise ValueError(
            f"start_time/end_time: the start ({format_time(start)}) must be before the end "
            f"({format_time(end)})"
        )


def check_id_list(param: str, value: Any) -> list[str]:
    """A list of ids, stripped and without repeats; refuses a scalar, an empty list or an empty id.

    :param param: the parameter name, for the error message.
    :param value: the ids.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(
            f"{param}: expected a list of ids (a JSON array even for one id), got {type(value).__name__}"
        )
    ids: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{param}[{index}]: expected a non-empty id string, got {item!r}")
        if item.strip() not in ids:
            ids.append(item.strip())
    if not ids:
        raise ValueError(f"{param}: the list of ids is empty")
    return ids


def check_choice(param: str, value: Any, allowed: Iterable[str]) -> str:
    """``value`` when it is one of ``allowed``, else a ``ValueError`` naming the parameter and the options.

    :param param: the parameter name, for the error message.
    :param value: the value given.
    :param allowed: the accepted values.
    """
    options = list(allowed)
    if value not in options:
        raise ValueError(f"{param}: {value!r} is not one of {', '.join(options)}")
    return str(value)


def build_report_request(
    *,
    org: str,
    report: str,
    output_frequency: str,
    start: datetime | str,
    end: datetime | str,
    datasource_ids: Iterable[str] | None = None,
    all_datasources: bool = False,
    node_ids: Iterable[str] | None = None,
    ref_site_ids: Iterable[str] | None = None,
    metric_label_style: str = "canonical",
    file_format: str = "csv",
    metric_select: str | None = None,
    qc_assessment: bool = False,
    qc_flags: bool = False,
) -> dict[str, Any]:
    """Validate a report request and build the JSON body of ``POST /v2/report-requests``.

    ``fileFormat`` and ``metricLabelStyle`` are always sent (a real client saw a format other than the
    documented default when none was sent).

    :param org: the organization.
    :param report: ``datasource-measurements``, ``node-measurements`` or ``reference-site-measurements``.
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    :param start: the first time included.
    :param end: the first time excluded; must be after ``start``.
    :param datasource_ids: datasource ids (datasource report; unless ``all_datasources``).
    :param all_datasources: every datasource of the org (datasource report only).
    :param node_ids: node ids (node report).
    :param ref_site_ids: reference site ids (reference-site report).
    :param metric_label_style: ``canonical``, ``english`` or ``legacy``.
    :param file_format: ``csv`` (``csv-wide``) or ``parquet`` (``parquet-wide``).
    :param metric_select: Clarity's metric filter, e.g. ``"only pm2_5*"``.
    :param qc_assessment: add ``<metric>.qcAssessment`` columns.
    :param qc_flags: add ``<metric>.qcFlags`` columns.
    :raises ValueError: naming the parameter (and list position) that is wrong, before anything is sent.
    """
    if not isinstance(org, str) or not org.strip():
        raise ValueError("org: no organization given and the connection has no default org (login or extra)")
    report = check_choice("report", report, REPORT_ID_FIELDS)
    output_frequency = check_choice("output_frequency", output_frequency, OUTPUT_FREQUENCIES)
    label_style = check_choice("metric_label_style", metric_label_style, METRIC_LABEL_STYLES)
    file_format = check_choice("file_format", file_format, FILE_FORMATS)
    for name, flag in (
        ("all_datasources", all_datasources),
        ("qc_assessment", qc_assessment),
        ("qc_flags", qc_flags),
    ):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}: expected True or False, got {flag!r}")
    if metric_select is not None and (not isinstance(metric_select, str) or not metric_select.strip()):
        raise ValueError(f"metric_select: expected a non-empty filter string or None, got {metric_select!r}")
    start_utc = to_utc(start, param="start_time")
    end_utc = to_utc(end, param="end_time")
    _check_order(start_utc, end_utc)

    needed = REPORT_ID_FIELDS[report]
    given = {"datasourceIds": datasource_ids, "nodeIds": node_ids, "refSiteIds": ref_site_ids}
    for field, value in given.items():
        if field != needed and value is not None:
            raise ValueError(
                f"{_PARAM_FOR_FIELD[field]}: not used by report {report!r}; give {_PARAM_FOR_FIELD[needed]}"
            )
    if all_datasources and report != "datasource-measurements":
        raise ValueError(f"all_datasources: only datasource-measurements reports take it, not {report!r}")

    body: dict[str, Any] = {
        "org": org.strip(),
        "report": report,
        "outputFrequency": output_frequency,
        "startTime": format_time(start_utc),
        "endTime": format_time(end_utc),
        "metricLabelStyle": label_style,
        "fileFormat": FILE_FORMATS[file_format],
        "qcAssessment": qc_assessment,
        "qcFlags": qc_flags,
    }
    if metric_select is not None:
        body["metricSelect"] = metric_select.strip()
    if all_datasources:
        if datasource_ids is not None:
            raise ValueError("datasource_ids: give either datasource_ids or all_datasources=True, not both")
        body["allDatasources"] = True
    elif given[needed] is None:
        extra = " (or all_datasources=True)" if report == "datasource-measurements" else ""
        raise ValueError(f"{_PARAM_FOR_FIELD[needed]}: report {report!r} needs a list of ids{extra}")
    else:
        body[needed] = check_id_list(_PARAM_FOR_FIELD[needed], given[needed])
    return body


def report_identity(body: Mapping[str, Any], *, api_url: str) -> str:
    """A stable hash of everything that defines a report, to find one requested before.

    Id order and repeats do not matter; the API URL is included because the same org name on another
    endpoint (a sandbox, a staging API) is another namespace of report ids.

    :param body: the body from :func:`build_report_request`.
    :param api_url: the Clarity API base URL the report is requested from.
    :return: a 64-character hex SHA-256.
    """
    canonical: dict[str, Any] = {"apiUrl": api_url.rstrip("/")}
    for key, value in body.items():
        canonical[key] = sorted(set(value)) if key in _PARAM_FOR_FIELD else value
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ReportOutcome:
    """What a report record means for a task waiting on it.

    :param state: ``running``, ``succeeded``, ``failed`` (Clarity said so) or ``invalid`` (a status this
        provider does not know, or ``succeeded`` without any download url).
    :param message: a one-line explanation (Clarity's ``message`` when it sent one).
    """

    state: ReportState
    message: str


def _message_text(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return "" if value is None else str(value)


def report_outcome(record: Mapping[str, Any]) -> ReportOutcome:
    """Classify a report record (the response of a report request or poll).

    :param record: the record: ``reportId``, ``reportStatus``, ``message``, ``urls``...
    """
    status = record.get("reportStatus")
    message = _message_text(record.get("message"))
    if status == STATUS_IN_PROGRESS:
        return ReportOutcome("running", message or "in progress")
    if status == STATUS_FAILED:
        return ReportOutcome("failed", message or "Clarity gave no reason")
    if status == STATUS_SUCCEEDED:
        if not record.get("urls"):
            return ReportOutcome("invalid", "the report succeeded but has no download urls")
        return ReportOutcome("succeeded", message or "ready")
    known = ", ".join((STATUS_IN_PROGRESS, STATUS_SUCCEEDED, STATUS_FAILED))
    return ReportOutcome(
        "invalid", f"unknown reportStatus {status!r} (expected one of {known}); message: {message or '-'}"
    )


def report_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The small, URL-free summary of a report that tasks return to XCom.

    :param record: the report record.
    :return: ``{"report_id", "status", "report", "urls_expire_at"}``.
    """
    return {
        "report_id": record.get("reportId"),
        "status": record.get("reportStatus"),
        "report": record.get("report"),
        "urls_expire_at": record.get("urlsExpireAt"),
    }


def detect_file_kind(head: bytes) -> Literal["gzip", "parquet", "text"]:
    """What the first bytes of a report file say it is.

    :param head: the first bytes of the file (4 are enough).
    :return: ``gzip`` (magic ``1f 8b``), ``parquet`` (magic ``PAR1``) or ``text`` (anything else: CSV).
    """
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"PAR1":
        return "parquet"
    return "text"
