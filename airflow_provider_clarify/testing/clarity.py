"""Sandbox of the Clarity Data API v2 report flow: an API server and an S3-like object store.

:class:`ClaritySandbox` runs two :class:`~airflow_provider_clarify.testing._server.SandboxServer`
instances on 127.0.0.1, written from ``reference/clarity-api.md``:

* the API (:attr:`ClaritySandbox.url`): ``x-api-key`` auth, ``org`` checks,
  ``POST /v2/report-requests`` with full validation and a per-org daily quota (HTTP 429), and
  the poll endpoint under both spellings, ``GET /v2/report-request/{id}`` (documented) and
  ``GET /v2/report-requests/{id}``; a report is ``in-progress`` until ``report_delay`` seconds
  after the request, then ``succeeded`` (or ``failed`` / an unknown status when armed);
* the object store (:attr:`ClaritySandbox.store_url`): pre-signed, expiring download URLs like
  ``/historical/<reportId>/<reportId>.csv.gz?X-Amz-...``, served in chunks as S3 does (a
  ``.csv.gz`` with ``Content-Encoding: gzip``, the stored gzip bytes as they are).

Report files come from :mod:`airflow_provider_clarify.testing.reports`: generated once, in a
worker thread, when a report first turns ``succeeded``, into a temporary folder that
:meth:`ClaritySandbox.stop` deletes.

Recent measurements come from the same generator, so a value is the same whether it is read from a
report or from the recent API. They "arrive" on the sandbox's recent clock: a reading taken at ``t`` (an
hour or day period: at its end) becomes visible at ``t + recent_ingest_lag``. Rules where the reference
is silent (unconfirmed upstream; chosen to be strict, so clients that pass here are safe):

* a query serves visible rows with time (period start) ``>= startTime``, never older than the cache window
  (minute 24 h, hour 48 h, day 10 days before the clock); an older ``startTime`` is trimmed silently;
* ``format`` defaults to ``json-long``; ``json-long`` entries are time-descending, one per datasource,
  time and measured metric, ``time`` being the period start for hour and day data; ``csv-wide`` has the
  report file layout;
* a continuation serves the rows that became visible since the call that issued its token (within the
  query's ``startTime`` and the cache window) and issues a new token;
* **each token works once**: a used, unknown or expired token (24 h after issue, or after
  :meth:`ClaritySandbox.expire_continuation_tokens`) is answered with HTTP 400 and a message saying which;
* recent answers carry the recent clock in their ``Date`` header.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import hmac
import json
import math
import secrets
import shutil
import string
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from aiohttp import web

from airflow_provider_clarify.testing._server import RECORD, TRUNCATE, RecordedRequest, SandboxServer
from airflow_provider_clarify.testing.reports import (
    CLARITY_NODE,
    FILE_FORMATS,
    LABEL_STYLES,
    OUTPUT_FREQUENCIES,
    REFERENCE_SITE,
    REPORT_TYPES,
    Datasource,
    MetricSelectError,
    ReportSpec,
    column_labels,
    csv_header,
    csv_rows,
    default_fleet,
    iter_report_batches,
    metric_attributes,
    parse_metric_select,
    read_report_table,
    to_text,
    write_report_files,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pyarrow as pa

    from airflow_provider_clarify.testing._server import _Fault

DEFAULT_API_KEY = "sandbox-clarity-key-5f1c2e9a7b3d4086"
DEFAULT_ORG = "sandboxOrg1A2B"
DEFAULT_OTHER_ORGS = ("sandboxOrg3C4D",)
#: Statuses documented for ``reportStatus``; :meth:`ClaritySandbox.unknown_status_next` needs another.
DOCUMENTED_STATUSES = ("in-progress", "succeeded", "failed")

_CHUNK = 256 * 1024
#: How long a poll waits for file generation before answering ``in-progress`` instead.
_GENERATION_WAIT = 5.0
_ID_FIELDS = {
    "datasource-measurements": "datasourceIds",
    "node-measurements": "nodeIds",
    "reference-site-measurements": "refSiteIds",
}
_FORMAT_ALIASES = {
    "csv-wide": "csv-wide",
    "csv": "csv-wide",
    "parquet-wide": "parquet-wide",
    "parquet": "parquet-wide",
}
_BOOLEAN_FIELDS = ("qcAssessment", "qcFlags", "allDatasources")
_KNOWN_FIELDS = frozenset(
    {
        "org",
        "report",
        "outputFrequency",
        "startTime",
        "endTime",
        "metricLabelStyle",
        "fileFormat",
        "format",
        "metricSelect",
        "locationRounding",  # accepted and ignored (whether reports honour it is unconfirmed)
        *_BOOLEAN_FIELDS,
        *_ID_FIELDS.values(),
    }
)


class ReportRequestError(ValueError):
    """A report request that Clarity would answer with HTTP 400; ``messages`` name the fields.

    :param messages: one message per problem.
    """

    def __init__(self, messages: Sequence[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = list(messages)


def iso_ms(moment: datetime) -> str:
    """``moment`` as Clarity writes times: UTC, milliseconds, ``Z`` (``2023-11-01T01:00:00.000Z``).

    :param moment: a timezone-aware datetime.
    """
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _parse_time(body: Mapping[str, Any], name: str, errors: list[str]) -> datetime | None:
    if name not in body:
        errors.append(f"{name} is required")
        return None
    value = body[name]
    if not isinstance(value, str):
        errors.append(f"{name} must be an ISO 8601 string, got {value!r}")
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        errors.append(f"{name} is not an ISO 8601 time: {value!r}")
        return None
    # Naive times are ambiguous; whether Clarity reads them as UTC is unconfirmed, so refuse them.
    if moment.tzinfo is None:
        errors.append(f"{name} must include a time zone (Z or an offset): {value!r}")
        return None
    return moment.astimezone(UTC)


def _choice(
    body: Mapping[str, Any], name: str, allowed: Sequence[str], default: str | None, errors: list[str]
) -> str:
    value = body.get(name, default)
    if value is None:
        errors.append(f"{name} is required")
        return ""
    if value not in allowed:
        errors.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return ""
    return str(value)


def _id_list(body: Mapping[str, Any], name: str, errors: list[str]) -> list[str] | None:
    """The ids under ``name`` (deduplicated, in order), ``None`` when absent or malformed."""
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, list):
        errors.append(f"{name} must be a JSON array of strings, got {type(value).__name__}")
        return None
    bad = [i for i, item in enumerate(value) if not isinstance(item, str)]
    if bad:
        errors.append(f"{name}[{bad[0]}] must be a string, got {value[bad[0]]!r}")
        return None
    return list(dict.fromkeys(value))


def _sources(
    body: Mapping[str, Any], report: str, org: str, fleet: Sequence[Datasource], errors: list[str]
) -> list[Datasource]:
    """The datasources a request names, checked against the report type and the org's fleet."""
    id_lists = {name: _id_list(body, name, errors) for name in _ID_FIELDS.values()}
    if not report:
        return []
    wanted = _ID_FIELDS[report]
    for name in _ID_FIELDS.values():
        if name != wanted and name in body:
            errors.append(f"{name} is not accepted by a {report} report (use {wanted})")
    all_datasources = body.get("allDatasources") is True
    if all_datasources:
        if report != "datasource-measurements":
            errors.append(
                f"allDatasources is only accepted by a datasource-measurements report, not {report}"
            )
        elif "datasourceIds" in body:
            errors.append("datasourceIds and allDatasources: true are mutually exclusive")
        return list(fleet)
    ids = id_lists[wanted]
    if ids is None:
        if wanted not in body:
            unless = " unless allDatasources is true" if report == "datasource-measurements" else ""
            errors.append(f"{wanted} is required for a {report} report{unless}")
        return []
    if not ids:
        errors.append(f"{wanted} must not be empty")
        return []
    if report == "datasource-measurements":
        known = {d.datasource_id: d for d in fleet}
    else:
        source_type = CLARITY_NODE if report == "node-measurements" else REFERENCE_SITE
        known = {d.source_id: d for d in fleet if d.source_type == source_type}
    unknown = [i for i in ids if i not in known]
    if unknown:
        errors.append(f"{wanted} contains ids unknown to org {org}: {', '.join(unknown)}")
        return []
    return [known[i] for i in ids]


def _metric_select_and_flags(body: Mapping[str, Any], booleans: Sequence[str], errors: list[str]) -> Any:
    """Check ``metricSelect`` (a string that parses) and the boolean fields of a request body, adding each
    problem to ``errors``; return ``metricSelect`` as given (``None`` when absent)."""
    metric_select = body.get("metricSelect")
    if metric_select is not None:
        if not isinstance(metric_select, str):
            errors.append(f"metricSelect must be a string, got {metric_select!r}")
        else:
            try:
                parse_metric_select(metric_select)
            except MetricSelectError as exc:
                errors.append(str(exc))
    for name in booleans:
        if name in body and not isinstance(body[name], bool):
            errors.append(f"{name} must be a boolean, got {body[name]!r}")
    return metric_select


def parse_report_request(
    body: Mapping[str, Any], *, org: str, fleet: Sequence[Datasource]
) -> tuple[ReportSpec, dict[str, Any]]:
    """Validate a ``POST /v2/report-requests`` body the way the sandbox API does.

    :param body: the decoded JSON body (``org`` already checked by the caller).
    :param org: the organization the request is for.
    :param fleet: that organization's datasources.
    :returns: the report spec and the normalised ``query`` echo of the report record.
    :raises ReportRequestError: listing every problem found (HTTP 400).
    """
    errors: list[str] = []
    unknown_fields = sorted(set(body) - _KNOWN_FIELDS)
    if unknown_fields:
        errors.append(f"unknown field(s): {', '.join(unknown_fields)}")
    report = _choice(body, "report", REPORT_TYPES, None, errors)
    frequency = _choice(body, "outputFrequency", OUTPUT_FREQUENCIES, None, errors)
    start = _parse_time(body, "startTime", errors)
    end = _parse_time(body, "endTime", errors)
    if start is not None and end is not None and start >= end:
        errors.append(f"startTime ({body['startTime']}) must be before endTime ({body['endTime']})")
    label_style = _choice(body, "metricLabelStyle", LABEL_STYLES, "canonical", errors)
    formats = []
    for name in ("fileFormat", "format"):
        if name in body:
            if body[name] in _FORMAT_ALIASES:
                formats.append(_FORMAT_ALIASES[body[name]])
            else:
                errors.append(f"{name} must be one of {', '.join(_FORMAT_ALIASES)}, got {body[name]!r}")
    if len(set(formats)) > 1:
        errors.append(f"fileFormat {body['fileFormat']!r} and format {body['format']!r} disagree")
    file_format = formats[0] if formats else FILE_FORMATS[0]
    metric_select = _metric_select_and_flags(body, _BOOLEAN_FIELDS, errors)
    sources = _sources(body, report, org, fleet, errors)
    if errors:
        raise ReportRequestError(errors)
    assert start is not None
    assert end is not None
    spec = ReportSpec(
        report=report,
        output_frequency=frequency,
        start=start,
        end=end,
        sources=tuple(sources),
        metric_label_style=label_style,
        file_format=file_format,
        metric_select=metric_select,
        qc_assessment=body.get("qcAssessment", False),
        qc_flags=body.get("qcFlags", False),
    )
    query: dict[str, Any] = {
        "org": org,
        "report": report,
        "outputFrequency": frequency,
        "startTime": iso_ms(start),
        "endTime": iso_ms(end),
        "format": file_format,
        "metricLabelStyle": label_style,
        "qcAssessment": spec.qc_assessment,
        "qcFlags": spec.qc_flags,
    }
    if metric_select is not None:
        query["metricSelect"] = metric_select
    if body.get("allDatasources") is True:
        query["allDatasources"] = True
    # allDatasources is echoed expanded to the explicit id list, as the real service does.
    id_field = _ID_FIELDS[report]
    query[id_field] = [d.datasource_id if id_field == "datasourceIds" else d.source_id for d in sources]
    return spec, query


# -- recent measurements -----------------------------------------------------------------------------
RECENT_QUERY_PATH = "/v2/recent-datasource-measurements-query"
RECENT_CONTINUATION_PATH = "/v2/recent-datasource-measurements-continuation"
#: Response header with the next continuation token.
CONTINUATION_HEADER = "x-clarity-continuation-token"
#: How far back the recent-measurements cache reaches, per output frequency.
RECENT_CACHE_WINDOWS = {"minute": timedelta(hours=24), "hour": timedelta(hours=48), "day": timedelta(days=10)}
RECENT_FORMATS = ("json-long", "csv-wide")
_PERIODS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
_ONE_MS = timedelta(milliseconds=1)
_RECENT_BOOLEANS = ("qcAssessment", "qcFlags", "allDatasources", "replyWithContinuationToken")
_RECENT_FIELDS = frozenset(
    {
        "org",
        "datasourceIds",
        "allDatasources",
        "outputFrequency",
        "format",
        "startTime",
        "metricSelect",
        "qcAssessment",
        "qcFlags",
        "replyWithContinuationToken",
        "locationRounding",  # accepted and ignored
    }
)


@dataclass(frozen=True)
class RecentQuery:
    """A validated ``POST /v2/recent-datasource-measurements-query``.

    :param org: the organization.
    :param sources: the datasources asked for.
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    :param response_format: ``json-long`` or ``csv-wide``.
    :param start: the earliest time asked for, or ``None`` (the whole cache).
    :param metric_select: the ``metricSelect`` expression, or ``None``.
    :param qc_assessment: add ``qcAssessment``.
    :param qc_flags: add ``qcFlags``.
    :param continuation: whether a continuation token was asked for.
    :param echo: the ``request`` echo of ``json-long`` answers.
    """

    org: str
    sources: tuple[Datasource, ...]
    output_frequency: str
    response_format: str
    start: datetime | None
    metric_select: str | None
    qc_assessment: bool
    qc_flags: bool
    continuation: bool
    echo: dict[str, Any] = field(hash=False, compare=False)


def parse_recent_query(body: Mapping[str, Any], *, org: str, fleet: Sequence[Datasource]) -> RecentQuery:
    """Validate a recent-measurements query body the way the sandbox API does.

    :param body: the decoded JSON body (``org`` already checked by the caller).
    :param org: the organization.
    :param fleet: that organization's datasources.
    :raises ReportRequestError: listing every problem found (HTTP 400).
    """
    errors: list[str] = []
    for name in ("nodeIds", "refSiteIds"):
        if name in body:
            errors.append(f"{name}: recent measurements are served for datasources only (use a report)")
    if "endTime" in body:
        errors.append("endTime is not accepted: recent measurements have no end time")
    unknown = sorted(set(body) - _RECENT_FIELDS - {"nodeIds", "refSiteIds", "endTime"})
    if unknown:
        errors.append(f"unknown field(s): {', '.join(unknown)}")
    frequency = _choice(body, "outputFrequency", OUTPUT_FREQUENCIES, "minute", errors)
    # The default format is unconfirmed upstream; json-long is the one the docs show first.
    response_format = _choice(body, "format", RECENT_FORMATS, "json-long", errors)
    start = _parse_time(body, "startTime", errors) if "startTime" in body else None
    metric_select = _metric_select_and_flags(body, _RECENT_BOOLEANS, errors)
    wanted = {k: v for k, v in body.items() if k not in ("nodeIds", "refSiteIds")}
    sources = _sources(wanted, "datasource-measurements", org, fleet, errors)
    if errors:
        raise ReportRequestError(errors)
    echo: dict[str, Any] = {"org": org}
    if body.get("allDatasources") is True:
        echo["allDatasources"] = True
    else:
        echo["datasourceIds"] = [d.datasource_id for d in sources]
    echo.update(outputFrequency=frequency, format=response_format)
    if start is not None:
        echo["startTime"] = iso_ms(start)
    if metric_select is not None:
        echo["metricSelect"] = metric_select
    echo.update(
        qcAssessment=body.get("qcAssessment", False),
        qcFlags=body.get("qcFlags", False),
        replyWithContinuationToken=body.get("replyWithContinuationToken", False),
    )
    return RecentQuery(
        org=org,
        sources=tuple(sources),
        output_frequency=frequency,
        response_format=response_format,
        start=start,
        metric_select=metric_select,
        qc_assessment=echo["qcAssessment"],
        qc_flags=echo["qcFlags"],
        continuation=echo["replyWithContinuationToken"],
        echo=echo,
    )


def recent_spec(
    query: RecentQuery, *, now: datetime, ready_from: datetime | None, ready_until: datetime
) -> ReportSpec | None:
    """The rows an answer holds, as a report spec for the generator (``None`` when there are none).

    A row is *ready* at its time (minute) or at the end of its period (hour, day). The answer holds the
    rows ready in ``[ready_from, ready_until)`` whose time (period start) is within the query's
    ``startTime`` and the cache window at ``now``.

    :param query: the query (or the query that started a continuation chain).
    :param now: the recent clock.
    :param ready_from: rows ready before this were served by an earlier call; ``None`` for a query.
    :param ready_until: rows ready from this time on are not visible yet.
    """
    oldest = now - RECENT_CACHE_WINDOWS[query.output_frequency]
    if query.start is not None:
        oldest = max(oldest, query.start)
    period = _PERIODS.get(query.output_frequency)
    if period is None:  # minute readings: ready at their time, [start, end) in the generator
        start = oldest if ready_from is None else max(oldest, ready_from)
        end = ready_until
    else:  # periods with start >= `start` and start + period <= `end` in the generator
        start = oldest if ready_from is None else max(oldest, ready_from - period)
        end = ready_until - _ONE_MS
    if start >= end or not query.sources:
        return None
    return ReportSpec(
        report="datasource-measurements",
        output_frequency=query.output_frequency,
        start=start,
        end=end,
        sources=query.sources,
        metric_select=query.metric_select,
        qc_assessment=query.qc_assessment,
        qc_flags=query.qc_flags,
    )


def _label_spec(query: RecentQuery) -> ReportSpec:
    """A spec with the query's columns (for the header of an answer without rows)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return ReportSpec(
        report="datasource-measurements",
        output_frequency=query.output_frequency,
        start=epoch,
        end=epoch + _ONE_MS,
        sources=query.sources,
        metric_select=query.metric_select,
        qc_assessment=query.qc_assessment,
        qc_flags=query.qc_flags,
    )


def json_long_entries(spec: ReportSpec) -> list[dict[str, Any]]:
    """The spec's rows as ``json-long`` entries, time-descending: one per datasource, time and metric
    with a reading (``raw`` present; ``value`` may be null, as when calibration is missing).

    :param spec: the rows (a datasource spec from :func:`recent_spec`).
    """
    attributes = metric_attributes(spec.qc_assessment, spec.qc_flags)
    time_column = "time" if spec.output_frequency == "minute" else "startOfPeriod"
    entries: list[dict[str, Any]] = []
    for batch in iter_report_batches(spec):
        ids = batch.column(0).to_pylist()
        times = to_text(batch.select([time_column])).column(0).to_pylist()
        for metric in spec.metrics:
            cells = {a: batch.column(f"{metric}.{a}").to_pylist() for a in attributes}
            for row, raw in enumerate(cells["raw"]):
                if raw is None:
                    continue
                entry = {
                    "datasourceId": ids[row],
                    "time": times[row],
                    "metric": metric,
                    "raw": raw,
                    "value": cells["value"][row],
                    "status": cells["status"][row],
                }
                if spec.qc_assessment:
                    entry["qcAssessment"] = cells["qcAssessment"][row]
                if spec.qc_flags:  # a real JSON array here (a JSON text inside CSV cells)
                    entry["qcFlags"] = json.loads(cells["qcFlags"][row] or "[]")
                entries.append(entry)
    entries.sort(key=lambda e: str(e["time"]), reverse=True)
    return entries


def recent_body(query: RecentQuery, spec: ReportSpec | None) -> tuple[bytes, str, int]:
    """The body of a recent answer: ``(bytes, content type, rows)``.

    :param query: the query (its format, echo and columns).
    :param spec: the rows, or ``None`` for none.
    """
    if query.response_format == "csv-wide":
        parts = [csv_header(column_labels(spec or _label_spec(query)))]
        rows = 0
        if spec is not None:
            for batch in iter_report_batches(spec):
                parts.append(csv_rows(batch).to_pybytes())
                rows += batch.num_rows
        return b"".join(parts), "text/csv", rows
    entries = json_long_entries(spec) if spec is not None else []
    document: dict[str, Any] = {"request": query.echo, "data": entries}
    if entries:  # "locations" is absent when there is no new data
        present = {e["datasourceId"] for e in entries}
        document["locations"] = [
            {"datasourceId": d.datasource_id, "lat": d.latitude, "lon": d.longitude}
            for d in query.sources
            if d.datasource_id in present
        ]
    return json.dumps(document).encode(), "application/json", len(entries)


@dataclass
class _Token:
    """A continuation token's server-side state."""

    query: RecentQuery
    ready_until: datetime  # rows ready before this were served
    issued_at: datetime
    used: bool = False
    revoked: bool = False  # expire_continuation_tokens()


@dataclass(frozen=True)
class StoredFile:
    """One file of a report, as the object store serves it.

    :param name: object name, e.g. ``JBX7K2M9QA.csv.gz``.
    :param path: where the bytes are on disk.
    :param size: length in bytes.
    :param etag: quoted MD5 of the bytes, like S3's ``ETag``.
    """

    name: str
    path: Path
    size: int
    etag: str


@dataclass
class _Report:
    report_id: str
    org: str
    spec: ReportSpec
    record: dict[str, Any]  # as the POST answered it
    created_at: float
    ready_at: float
    outcome: str  # the status once ready: "succeeded", "failed" or an armed unknown status
    outcome_message: str
    files_per_report: int
    generation: Future[list[StoredFile]] | None = None


def _error(status: int, *messages: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"message": list(messages)}, status=status, headers=headers)


def _s3_error(status: int, code: str, message: str, **extra: str) -> web.Response:
    fields = "".join(
        f"<{k}>{escape(v)}</{k}>" for k, v in {"Code": code, "Message": message, **extra}.items()
    )
    request_id = secrets.token_hex(8).upper()
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{fields}<RequestId>{request_id}</RequestId></Error>'
    )
    return web.Response(status=status, text=body, content_type="application/xml")


class ClarityApiServer(SandboxServer):
    """The Clarity API half of :class:`ClaritySandbox` (report request and poll).

    :param sandbox: the sandbox holding the state.
    """

    name = "clarity-api"

    def __init__(self, sandbox: ClaritySandbox) -> None:
        super().__init__()
        self._sandbox = sandbox

    def setup_routes(self, app: web.Application) -> None:
        """Add the report routes.

        :param app: the application to add them to.
        """
        app.router.add_post("/v2/report-requests", self._post_report)
        app.router.add_get("/v2/report-request/{report_id}", self._get_report)  # documented (singular)
        app.router.add_get("/v2/report-requests/{report_id}", self._get_report)  # used by clients too
        app.router.add_post(RECENT_QUERY_PATH, self._recent_query)
        app.router.add_post(RECENT_CONTINUATION_PATH, self._recent_continuation)

    def _authorised(self, request: web.Request) -> bool:
        return hmac.compare_digest(
            request.headers.get("x-api-key", "").encode(), self._sandbox.api_key.encode()
        )

    async def _post_report(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return _error(401, "Unauthorized user", headers={"access-control-allow-origin": "*"})
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "request body must be valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        org = body.get("org")
        if org is None or org == "":
            return _error(400, "org is required")
        if not isinstance(org, str):
            return _error(400, f"org must be a string, got {org!r}")
        if org not in self._sandbox.orgs:
            return _error(403, f"Forbidden: this API key has no access to org {org}")
        try:
            spec, query = parse_report_request(body, org=org, fleet=self._sandbox.fleet(org))
        except ReportRequestError as exc:
            return _error(400, *exc.messages)
        report = self._sandbox._create_report(org, spec, query)
        if report is None:
            quota = self._sandbox.quota_per_day
            return _error(
                429,
                f"Report quota exceeded: org {org} may request {quota} historical reports per UTC day",
            )
        request[RECORD].info["report_id"] = report.report_id
        return web.json_response(report.record, status=self._sandbox.post_status)

    async def _get_report(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return _error(401, "Unauthorized user", headers={"access-control-allow-origin": "*"})
        report_id = request.match_info["report_id"]
        request[RECORD].info["report_id"] = report_id
        org = request.query.get("org")  # optional here; must be permitted when given
        if org is not None and org not in self._sandbox.orgs:
            return _error(403, f"Forbidden: this API key has no access to org {org}")
        report = self._sandbox._find(report_id)
        if report is None or (org is not None and report.org != org):
            return _error(404, "Report not found")
        status, message = self._sandbox._status(report)
        files: list[StoredFile] = []
        if status == "succeeded":
            generation = asyncio.wrap_future(self._sandbox._generation(report))
            try:
                files = await asyncio.wait_for(asyncio.shield(generation), _GENERATION_WAIT)
            except TimeoutError:
                status, message = "in-progress", "Processing"  # big report: still being written
            except Exception as exc:
                return _error(500, f"report generation failed: {type(exc).__name__}")
        return web.json_response(self._sandbox._record(report, status, message, files))

    # -- recent measurements ----------------------------------------------------------------
    async def _recent_body(
        self, request: web.Request, headers: dict[str, str]
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        """The checked JSON body and org of a recent call, or the error answer."""
        if not self._authorised(request):
            headers["access-control-allow-origin"] = "*"
            return None, _error(401, "Unauthorized user", headers=headers)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return None, _error(400, "request body must be valid JSON", headers=headers)
        if not isinstance(body, dict):
            return None, _error(400, "request body must be a JSON object", headers=headers)
        org = body.get("org")
        if org is None or org == "":
            return None, _error(400, "org is required", headers=headers)
        if not isinstance(org, str):
            return None, _error(400, f"org must be a string, got {org!r}", headers=headers)
        if org not in self._sandbox.orgs:
            return None, _error(403, f"Forbidden: this API key has no access to org {org}", headers=headers)
        return body, None

    async def _recent_query(self, request: web.Request) -> web.StreamResponse:
        now = self._sandbox._recent_clock()
        request[RECORD].info["recent"] = "query"
        headers = {"Date": format_datetime(now, usegmt=True)}
        body, problem = await self._recent_body(request, headers)
        if body is None:
            assert problem is not None
            return problem
        try:
            query = parse_recent_query(body, org=body["org"], fleet=self._sandbox.fleet(body["org"]))
        except ReportRequestError as exc:
            return _error(400, *exc.messages, headers=headers)
        ready_until = now - self._sandbox.recent_ingest_lag
        spec = recent_spec(query, now=now, ready_from=None, ready_until=ready_until)
        if query.continuation:
            headers[CONTINUATION_HEADER] = self._sandbox._issue_token(query, ready_until, now)
        return await self._recent_answer(request, query, spec, headers)

    async def _recent_continuation(self, request: web.Request) -> web.StreamResponse:
        now = self._sandbox._recent_clock()
        request[RECORD].info["recent"] = "continuation"
        headers = {"Date": format_datetime(now, usegmt=True)}
        body, problem = await self._recent_body(request, headers)
        if body is None:
            assert problem is not None
            return problem
        unknown = sorted(set(body) - {"org", "continuationToken"})
        token = body.get("continuationToken")
        if unknown:
            return _error(400, f"unknown field(s): {', '.join(unknown)}", headers=headers)
        if not isinstance(token, str) or not token:
            return _error(400, "continuationToken is required", headers=headers)
        state, refusal = self._sandbox._use_token(token, body["org"], now)
        if state is None:
            request[RECORD].info["refused"] = refusal
            return _error(400, refusal, headers=headers)
        ready_until = max(state.ready_until, now - self._sandbox.recent_ingest_lag)
        spec = recent_spec(state.query, now=now, ready_from=state.ready_until, ready_until=ready_until)
        headers[CONTINUATION_HEADER] = self._sandbox._issue_token(state.query, ready_until, now)
        return await self._recent_answer(request, state.query, spec, headers)

    async def _recent_answer(
        self, request: web.Request, query: RecentQuery, spec: ReportSpec | None, headers: dict[str, str]
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        content, content_type, rows = await loop.run_in_executor(None, recent_body, query, spec)
        request[RECORD].info["rows"] = rows
        response = web.Response(body=content, content_type=content_type, headers=headers)
        # The docs strongly recommend Accept-Encoding: gzip for measurement queries.
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            request[RECORD].info["gzip"] = True
            response.enable_compression(web.ContentCoding.gzip)
        return response


class ClarityStoreServer(SandboxServer):
    """The S3-like object store half of :class:`ClaritySandbox` (pre-signed downloads).

    :param sandbox: the sandbox holding the state.
    """

    name = "clarity-store"

    def __init__(self, sandbox: ClaritySandbox) -> None:
        super().__init__()
        self._sandbox = sandbox

    def setup_routes(self, app: web.Application) -> None:
        """Add the download route.

        :param app: the application to add it to.
        """
        app.router.add_get("/historical/{report_id}/{name}", self._download)

    def fault_response(self, fault: _Fault, request: web.Request) -> web.StreamResponse:
        """Injected errors look like S3's XML errors (unless the fault brings its own body).

        :param fault: the fault being applied.
        :param request: the request it applies to.
        """
        if fault.body is not None:
            return super().fault_response(fault, request)
        codes = {
            429: "SlowDown",
            500: "InternalError",
            503: "SlowDown",
            403: "AccessDenied",
            404: "NoSuchKey",
        }
        response = _s3_error(fault.status, codes.get(fault.status, "ServiceUnavailable"), "injected fault")
        if fault.retry_after is not None:
            response.headers["Retry-After"] = str(int(fault.retry_after))
        return response

    async def _download(self, request: web.Request) -> web.StreamResponse:
        report_id, name = request.match_info["report_id"], request.match_info["name"]
        request[RECORD].info.update(report_id=report_id, file=name)
        problem = self._sandbox._check_signature(request.path, request.query)
        if problem is not None:
            return problem
        report = self._sandbox._find(report_id)
        generation = report.generation if report is not None else None
        files: list[StoredFile] = []
        if generation is not None and generation.done() and generation.exception() is None:
            files = generation.result()
        stored = next((f for f in files if f.name == name), None)
        if stored is None or not stored.path.exists():
            return _s3_error(
                404, "NoSuchKey", "The specified key does not exist.", Key=f"historical/{report_id}/{name}"
            )
        return await self._send(request, stored)

    async def _send(self, request: web.Request, stored: StoredFile) -> web.StreamResponse:
        headers = {"ETag": stored.etag, "Last-Modified": _http_date(stored.path.stat().st_mtime)}
        if stored.name.endswith(".csv.gz"):
            headers["Content-Type"] = "text/csv"
            if self._sandbox.gzip_content_encoding:
                # The stored bytes ARE gzip; S3 sends them as they are, with this header.
                headers["Content-Encoding"] = "gzip"
        else:
            headers["Content-Type"] = "application/octet-stream"
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = stored.size
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        truncate = bool(request.get(TRUNCATE))
        limit = stored.size // 2 if truncate else stored.size
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            with stored.path.open("rb") as source:
                while sent < limit:
                    chunk = await loop.run_in_executor(None, source.read, min(_CHUNK, limit - sent))
                    if not chunk:
                        break
                    await response.write(chunk)
                    sent += len(chunk)
        except ConnectionError:
            return response  # the client went away
        if truncate:
            request[RECORD].info["truncated_at"] = sent
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response


def _http_date(timestamp: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(timestamp))


class ClaritySandbox:
    """Local Clarity API + object store for report and recent-measurements tests (see the module
    docstring).

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Settings are plain
    attributes and may be changed while running; a report keeps the ``report_delay`` and
    ``files_per_report`` in force when it was requested. Recent measurements follow
    :attr:`recent_now` (set it, or move it with :meth:`advance_recent_clock`, to make readings
    arrive); :meth:`expire_continuation_tokens`, :attr:`continuation_tokens` and
    :meth:`recent_calls` are the switches and counters of the token flow. Recent calls never use
    the report quota.

    :param api_key: the only accepted ``x-api-key``.
    :param org: the default organization (the key may use it).
    :param other_orgs: more organizations the key may use, each with its own fleet and quota;
        any other org is answered with HTTP 403.
    :param report_delay: seconds from request until a report is ready.
    :param quota_per_day: reports per organization per UTC day; the next gets HTTP 429.
    :param url_ttl: lifetime of pre-signed download URLs, seconds (rounded up to whole seconds).
    :param files_per_report: split every report's rows across this many files.
    :param gzip_content_encoding: serve ``.csv.gz`` with ``Content-Encoding: gzip`` (as S3 does here).
    :param post_status: HTTP status of a successful POST (unconfirmed upstream; any 2xx).
    :param datasources: the default org's fleet; a generated one (:func:`default_fleet`) when ``None``.
    :param recent_ingest_lag: how long after its time (an hour or day period: after its end) a reading
        becomes visible to the recent-measurements API.
    :param continuation_token_ttl: how long a continuation token is valid after it was issued.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        org: str = DEFAULT_ORG,
        other_orgs: Sequence[str] = DEFAULT_OTHER_ORGS,
        report_delay: float = 1.0,
        quota_per_day: int = 30,
        url_ttl: float = 3600.0,
        files_per_report: int = 1,
        gzip_content_encoding: bool = True,
        post_status: int = 202,
        datasources: Sequence[Datasource] | None = None,
        recent_ingest_lag: timedelta = timedelta(minutes=2),
        continuation_token_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        if not 200 <= post_status < 300:
            raise ValueError(f"post_status must be a 2xx status, got {post_status}")
        if files_per_report < 1:
            raise ValueError(f"files_per_report must be >= 1, got {files_per_report}")
        if url_ttl <= 0:
            raise ValueError(f"url_ttl must be > 0, got {url_ttl}")
        self.api_key = api_key
        self.org = org
        self.report_delay = report_delay
        self.quota_per_day = quota_per_day
        self.url_ttl = url_ttl
        self.files_per_report = files_per_report
        self.gzip_content_encoding = gzip_content_encoding
        self.post_status = post_status
        if recent_ingest_lag < timedelta(0):
            raise ValueError(f"recent_ingest_lag must be >= 0, got {recent_ingest_lag}")
        if continuation_token_ttl <= timedelta(0):
            raise ValueError(f"continuation_token_ttl must be > 0, got {continuation_token_ttl}")
        self.recent_ingest_lag = recent_ingest_lag
        self.continuation_token_ttl = continuation_token_ttl
        self._recent_now: datetime | None = None
        self._tokens: dict[str, _Token] = {}
        self._fleets = {o: default_fleet(o) for o in other_orgs if o != org}
        self._fleets[org] = tuple(datasources) if datasources is not None else default_fleet(org)
        self.api = ClarityApiServer(self)
        self.store = ClarityStoreServer(self)
        self._lock = threading.RLock()
        self._reports: dict[str, _Report] = {}
        self._armed: list[tuple[str, str]] = []  # (status, message) for the next reports
        self._signing_key = secrets.token_bytes(32)
        self._retired_keys: list[bytes] = []
        self._cancel = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._directory: Path | None = None

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> ClaritySandbox:
        """Start both servers; returns ``self``."""
        self._directory = Path(tempfile.mkdtemp(prefix="clarity-sandbox-"))
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="clarity-reports")
        try:
            self.api.start()
            self.store.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers and delete the report files (idempotent)."""
        self._cancel.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self.api.stop()
        self.store.stop()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
        self._cancel = threading.Event()

    def __enter__(self) -> ClaritySandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget reports, quota use, armed outcomes, continuation tokens, the recent clock, faults and
        recorded requests; keep running."""
        with self._lock:
            self._cancel.set()
            for report in self._reports.values():
                if report.generation is not None:
                    report.generation.exception()  # wait; a cancelled generation raises, which is fine
            self._reports.clear()
            self._armed.clear()
            self._tokens.clear()
            self._recent_now = None
            self._cancel = threading.Event()
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory.mkdir()
        for server in (self.api, self.store):
            server.faults.clear()
            server.clear_requests()

    # -- addresses and connections ------------------------------------------------------
    @property
    def url(self) -> str:
        """API base URL, ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return self.api.base_url

    @property
    def store_url(self) -> str:
        """Object store base URL, ``http://127.0.0.1:PORT``."""
        return self.store.base_url

    def connection(self) -> dict[str, Any]:
        """An Airflow connection dict for the ``clarity`` connection type."""
        return {"conn_type": "clarity", "host": self.url, "password": self.api_key, "login": self.org}

    def connection_json(self) -> str:
        """:meth:`connection` as JSON, for ``AIRFLOW_CONN_*`` environment variables."""
        return json.dumps(self.connection())

    # -- fleet --------------------------------------------------------------------------
    @property
    def orgs(self) -> tuple[str, ...]:
        """Every organization the API key may use (the default org first)."""
        return (self.org, *(o for o in self._fleets if o != self.org))

    def fleet(self, org: str | None = None) -> tuple[Datasource, ...]:
        """The datasources of an organization.

        :param org: the organization; the default org when ``None``.
        """
        return self._fleets[org or self.org]

    @property
    def datasource_ids(self) -> list[str]:
        """Datasource ids of the default org."""
        return [d.datasource_id for d in self.fleet()]

    @property
    def node_ids(self) -> list[str]:
        """Node ids of the default org."""
        return [d.source_id for d in self.fleet() if d.source_type == CLARITY_NODE]

    @property
    def ref_site_ids(self) -> list[str]:
        """Reference-site ids of the default org."""
        return [d.source_id for d in self.fleet() if d.source_type == REFERENCE_SITE]

    # -- switches -----------------------------------------------------------------------
    def fail_next_reports(
        self, n: int = 1, *, message: str = "Report generation failed: internal error"
    ) -> None:
        """The next ``n`` requested reports end ``failed`` with ``message`` (after ``report_delay``).

        :param n: how many reports.
        :param message: the report's ``message``.
        """
        self._arm(n, "failed", message)

    def unknown_status_next(self, n: int = 1, *, status: str = "queued") -> None:
        """The next ``n`` requested reports end in an undocumented ``reportStatus``.

        :param n: how many reports.
        :param status: the status string; must not be a documented one.
        """
        if status in DOCUMENTED_STATUSES:
            raise ValueError(f"status must not be a documented status ({', '.join(DOCUMENTED_STATUSES)})")
        self._arm(n, status, f"Report is {status}")

    def _arm(self, n: int, status: str, message: str) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        with self._lock:
            self._armed.extend([(status, message)] * n)

    def set_ready(self, report_id: str) -> None:
        """Make a report reach its final status now instead of after ``report_delay``.

        :param report_id: the report.
        """
        with self._lock:
            report = self._get(report_id)
            report.ready_at = min(report.ready_at, time.time())

    def expire_urls_now(self) -> None:
        """Every pre-signed URL issued so far expires (a new poll mints working ones)."""
        with self._lock:
            self._retired_keys.append(self._signing_key)
            self._signing_key = secrets.token_bytes(32)

    # -- recent measurements: clock and tokens --------------------------------------------
    @property
    def recent_now(self) -> datetime:
        """The clock of the recent-measurements API (UTC, whole milliseconds).

        Real time until set; once set it stands still until set again or moved with
        :meth:`advance_recent_clock`, so tests decide when measurements arrive. Setting ``None`` returns
        to real time. Reports keep real time.
        """
        return self._recent_clock()

    @recent_now.setter
    def recent_now(self, value: datetime | None) -> None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"recent_now must be timezone-aware, got {value.isoformat()}")
        with self._lock:
            self._recent_now = None if value is None else _whole_ms(value.astimezone(UTC))

    def advance_recent_clock(self, delta: timedelta) -> datetime:
        """Move the recent clock forward (from real time when it was not set); returns the new time.

        :param delta: how far.
        """
        with self._lock:
            self._recent_now = _whole_ms(self._recent_clock() + delta)
            return self._recent_now

    def expire_continuation_tokens(self) -> None:
        """Every continuation token issued so far expires now (HTTP 400 when used)."""
        with self._lock:
            for state in self._tokens.values():
                state.revoked = True

    @property
    def continuation_tokens(self) -> list[str]:
        """Every continuation token issued so far, oldest first (to check that none leaks)."""
        with self._lock:
            return list(self._tokens)

    def recent_calls(self, kind: str | None = None) -> list[RecordedRequest]:
        """Recorded recent-measurements requests: ``kind`` ``"query"``, ``"continuation"`` or ``None``.

        :param kind: which endpoint; ``None`` for both.
        """
        paths = {"query": (RECENT_QUERY_PATH,), "continuation": (RECENT_CONTINUATION_PATH,)}.get(
            kind or "", (RECENT_QUERY_PATH, RECENT_CONTINUATION_PATH)
        )
        return [r for r in self.api.requests if r.path in paths]

    def _recent_clock(self) -> datetime:
        with self._lock:
            if self._recent_now is not None:
                return self._recent_now
        return _whole_ms(datetime.now(UTC))

    def _issue_token(self, query: RecentQuery, ready_until: datetime, now: datetime) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _Token(query=query, ready_until=ready_until, issued_at=now)
        return token

    def _use_token(self, token: str, org: str, now: datetime) -> tuple[_Token | None, str]:
        """Consume a token: ``(state, "")``, or ``(None, why it is refused)``. Never echoes the token."""
        with self._lock:
            state = self._tokens.get(token)
            if state is None or state.query.org != org:
                return None, f"continuationToken is not valid for org {org}"
            if state.used:
                return (
                    None,
                    "continuationToken was already used; continue with the token of the latest answer",
                )
            if state.revoked or now >= state.issued_at + self.continuation_token_ttl:
                hours = self.continuation_token_ttl / timedelta(hours=1)
                return None, (
                    f"continuationToken has expired (issued {iso_ms(state.issued_at)}, valid {hours:g} h); "
                    "start again with a query"
                )
            state.used = True
            return state, ""

    # -- inspection ---------------------------------------------------------------------
    @property
    def reports(self) -> list[dict[str, Any]]:
        """Every report record created (as the POST answered), oldest first."""
        with self._lock:
            return [json.loads(json.dumps(r.record)) for r in self._reports.values()]

    def report(self, report_id: str) -> dict[str, Any]:
        """The report record as a poll would answer now (generating the files if needed).

        :param report_id: the report.
        """
        report = self._get(report_id)
        status, message = self._status(report)
        files = self._generation(report).result() if status == "succeeded" else []
        return self._record(report, status, message, files)

    def report_files(self, report_id: str) -> list[Path]:
        """The files of a report, exactly the bytes its URLs serve (``[]`` unless it will succeed).

        :param report_id: the report.
        """
        report = self._get(report_id)
        if report.outcome != "succeeded":
            return []
        return [f.path for f in self._generation(report).result()]

    def report_table(self, report_id: str) -> pa.Table:
        """The report's rows read back from its files, every column as the CSV text (empty = null).

        :param report_id: the report.
        """
        paths = self.report_files(report_id)
        if not paths:
            raise ValueError(f"report {report_id} has no files (it ends {self._get(report_id).outcome!r})")
        return read_report_table(paths)

    # -- internals used by the servers --------------------------------------------------
    def _get(self, report_id: str) -> _Report:
        report = self._find(report_id)
        if report is None:
            raise KeyError(f"no report {report_id!r}")
        return report

    def _find(self, report_id: str) -> _Report | None:
        with self._lock:
            return self._reports.get(report_id)

    def _create_report(self, org: str, spec: ReportSpec, query: dict[str, Any]) -> _Report | None:
        """Register a report, or return ``None`` when the org's daily quota is spent."""
        now = time.time()
        today = time.gmtime(now)[:3]
        with self._lock:
            used = sum(
                1 for r in self._reports.values() if r.org == org and time.gmtime(r.created_at)[:3] == today
            )
            if used >= self.quota_per_day:
                return None
            report_id = _new_report_id(self._reports)
            outcome, message = self._armed.pop(0) if self._armed else ("succeeded", "Ready")
            record = {
                "reportId": report_id,
                "reportStatus": "in-progress",
                "message": "Processing",
                "report": spec.report,
                "urls": [],
                "query": query,
            }
            report = _Report(
                report_id=report_id,
                org=org,
                spec=spec,
                record=record,
                created_at=now,
                ready_at=now + self.report_delay,
                outcome=outcome,
                outcome_message=message,
                files_per_report=self.files_per_report,
            )
            self._reports[report_id] = report
            return report

    @staticmethod
    def _status(report: _Report) -> tuple[str, str]:
        if time.time() < report.ready_at:
            return "in-progress", "Processing"
        return report.outcome, report.outcome_message

    def _generation(self, report: _Report) -> Future[list[StoredFile]]:
        """The (started) generation of a report's files."""
        with self._lock:
            if report.generation is None:
                if self._executor is None or self._directory is None:
                    raise RuntimeError("the Clarity sandbox is not running")
                report.generation = self._executor.submit(
                    self._write_files, report, self._directory, self._cancel
                )
            return report.generation

    @staticmethod
    def _write_files(report: _Report, directory: Path, cancel: threading.Event) -> list[StoredFile]:
        folder = directory / report.report_id
        folder.mkdir()
        paths = write_report_files(
            report.spec, folder, report.report_id, files=report.files_per_report, cancel=cancel
        )
        stored = []
        for path in paths:
            digest = hashlib.md5(usedforsecurity=False)
            with path.open("rb") as data:
                while block := data.read(1 << 20):
                    digest.update(block)
            stored.append(StoredFile(path.name, path, path.stat().st_size, f'"{digest.hexdigest()}"'))
        return stored

    def _record(
        self, report: _Report, status: str, message: str, files: Sequence[StoredFile]
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "reportId": report.report_id,
            "reportStatus": status,
            "message": message,
            "report": report.spec.report,
            "urls": [],
            "query": json.loads(json.dumps(report.record["query"])),
        }
        if files:
            urls, expires_at = self._sign_urls(report.report_id, files)
            record["urls"] = urls
            record["urlsExpireAt"] = expires_at
        return record

    # -- pre-signed URLs ----------------------------------------------------------------
    def _sign_urls(self, report_id: str, files: Sequence[StoredFile]) -> tuple[list[str], str]:
        signed_at = int(time.time())
        expires = max(1, math.ceil(self.url_ttl))
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
        with self._lock:
            key = self._signing_key
        urls = []
        for stored in files:
            path = f"/historical/{report_id}/{stored.name}"
            query = {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Credential": f"SANDBOXACCESSKEY/{amz_date[:8]}/us-east-1/s3/aws4_request",
                "X-Amz-Date": amz_date,
                "X-Amz-Expires": str(expires),
                "X-Amz-SignedHeaders": "host",
                "X-Amz-Signature": _signature(key, path, amz_date, str(expires)),
            }
            urls.append(f"{self.store_url}{path}?{urlencode(query)}")
        return urls, iso_ms(datetime.fromtimestamp(signed_at + expires, UTC))

    def _check_signature(self, path: str, query: Mapping[str, str]) -> web.Response | None:
        """``None`` when the URL is validly signed and unexpired, else the S3-style 403."""
        signature, amz_date, expires = (
            query.get(k) for k in ("X-Amz-Signature", "X-Amz-Date", "X-Amz-Expires")
        )
        if not signature or not amz_date or not expires:
            return _s3_error(
                403,
                "AccessDenied",
                "Query-string authentication requires the X-Amz-Signature, X-Amz-Date and "
                "X-Amz-Expires parameters",
            )
        with self._lock:
            current, retired = self._signing_key, list(self._retired_keys)

        def signed_with(key: bytes) -> bool:
            return hmac.compare_digest(_signature(key, path, amz_date, expires), signature)

        if not signed_with(current):
            if any(signed_with(key) for key in retired):
                return _s3_error(403, "AccessDenied", "Request has expired", **{"X-Amz-Expires": expires})
            return _s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        expiry = signed_at + int(expires)
        if time.time() >= expiry:
            return _s3_error(
                403,
                "AccessDenied",
                "Request has expired",
                **{"X-Amz-Expires": expires, "Expires": iso_ms(datetime.fromtimestamp(expiry, UTC))},
                ServerTime=iso_ms(datetime.now(UTC)),
            )
        return None


def _whole_ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _signature(key: bytes, path: str, amz_date: str, expires: str) -> str:
    return hmac.new(key, f"GET\n{path}\n{amz_date}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _new_report_id(taken: Mapping[str, object]) -> str:
    alphabet = string.ascii_uppercase + string.digits
    while True:
        report_id = "JB" + "".join(secrets.choice(alphabet) for _ in range(8))
        if report_id not in taken:
            return report_id
