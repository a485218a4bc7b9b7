"""Clarity's recent-measurements API as pure logic: request bodies, answers, frames and sync state.

Nothing here talks HTTP or imports Airflow. The hook sends what :func:`build_recent_query` returns and turns
the answer into a :class:`RecentAnswer` (:func:`parse_recent_answer`); the transfer operator turns the answer
into Clarify frames with :func:`recent_frames` and keeps its place in the stream in a :class:`SyncState`.

The API (reference/clarity-api.md §4), unlike reports, spends no quota:

* ``POST /v2/recent-datasource-measurements-query`` -- datasources only; body ``org``, ``datasourceIds`` or
  ``allDatasources``, ``outputFrequency``, ``format`` (``json-long`` | ``csv-wide``), ``startTime`` (no end),
  ``metricSelect``, ``qcAssessment``, ``qcFlags``, ``replyWithContinuationToken``. Served from a cache that
  reaches :data:`CACHE_WINDOWS` back: 24 h of minute data, 48 h of hourly, 10 days of daily data.
* ``POST /v2/recent-datasource-measurements-continuation`` -- body ``{org, continuationToken}``: only what
  is new since the previous call of the chain. Each answer carries the next token in the header
  :data:`TOKEN_HEADER`; a token is valid :data:`TOKEN_LIFETIME` after it was issued.

Rows become frames through the report parser (:class:`~.report_parsing.ReportParser`), so the input keys,
the QC rule (``qcAssessment == "invalid"`` dropped unless asked otherwise), the grouping per source and the
facts behind the signal metadata are exactly those of a report transfer:

* ``csv-wide`` answers have the layout of a report file (``datasourceId, sourceId, sourceType,
  outputFrequency``, then ``time`` or ``startOfPeriod, endOfPeriod``, then ``<metric>.<attribute>``) and are
  read by the parser as they are.
* ``json-long`` answers (one entry per datasource, time and metric) are pivoted into that wide layout
  (:func:`json_long_table`). They carry no ``sourceId``/``sourceType``, so key templates using
  ``{source_id}``/``{source_type}`` need ``csv-wide`` (:func:`check_key_template`). For hour and day data the
  entry's ``time`` is taken as the start of the period (unconfirmed upstream).
"""

from __future__ import annotations

import hashlib
import io
import json
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from airflow_provider_clarify.utils.frames import times_to_us
from airflow_provider_clarify.utils.metrics import is_canonical_metric
from airflow_provider_clarify.utils.reports import (
    OUTPUT_FREQUENCIES,
    check_choice,
    check_id_list,
    format_time,
    to_utc,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from airflow_provider_clarify.utils.frames import Frame
    from airflow_provider_clarify.utils.report_parsing import ReportParser

QUERY_PATH = "/v2/recent-datasource-measurements-query"
CONTINUATION_PATH = "/v2/recent-datasource-measurements-continuation"
#: Response header that carries the next continuation token.
TOKEN_HEADER = "x-clarity-continuation-token"  # noqa: S105 - a header name, not a secret
RECENT_FORMATS = ("json-long", "csv-wide")
#: How far back the cache behind the recent API reaches, per output frequency.
CACHE_WINDOWS: dict[str, timedelta] = {
    "minute": timedelta(hours=24),
    "hour": timedelta(hours=48),
    "day": timedelta(days=10),
}
#: How long a continuation token stays valid after it was issued.
TOKEN_LIFETIME = timedelta(hours=24)
#: A query that must start at the edge of the cache starts this much later, so that the time the request
#: travels cannot push its start out of the cache (whether Clarity refuses or trims such a start is
#: unconfirmed; either way nothing older is served).
CACHE_EDGE_MARGIN = timedelta(minutes=2)
#: Length of an hour or day period (day periods start at UTC midnight; site-local days are unconfirmed).
PERIODS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
#: Key template fields a ``json-long`` answer cannot fill (it has no sourceId/sourceType).
_SOURCE_FIELDS = ("source_id", "source_type")


def build_recent_query(
    *,
    org: str,
    datasource_ids: Iterable[str] | None = None,
    all_datasources: bool = False,
    output_frequency: str = "minute",
    response_format: str = "json-long",
    start_time: datetime | str | None = None,
    metric_select: str | None = None,
    qc_assessment: bool = False,
    qc_flags: bool = False,
    continuation: bool = True,
) -> dict[str, Any]:
    """Validate a recent-measurements query and build its JSON body.

    ``outputFrequency`` and ``format`` are always sent (an early client saw requests fail without the
    frequency).

    :param org: the organization.
    :param datasource_ids: the datasources (unless ``all_datasources``); nodes and reference sites are
        served by reports only.
    :param all_datasources: every datasource of the org.
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    :param response_format: ``json-long`` or ``csv-wide``.
    :param start_time: the earliest measurement time wanted (ISO string or datetime); ``None`` for all the
        cache holds. Sent as UTC with milliseconds and ``Z``.
    :param metric_select: Clarity's metric filter, e.g. ``"only pm2_5ConcMassIndividual"``.
    :param qc_assessment: add each value's ``qcAssessment``.
    :param qc_flags: add each value's ``qcFlags``.
    :param continuation: ask for a continuation token (``replyWithContinuationToken``).
    :raises ValueError: naming the parameter (and list position) that is wrong, before anything is sent.
    """
    if not isinstance(org, str) or not org.strip():
        raise ValueError("org: no organization given and the connection has no default org (login or extra)")
    frequency = check_choice("output_frequency", output_frequency, OUTPUT_FREQUENCIES)
    fmt = check_choice("response_format", response_format, RECENT_FORMATS)
    for name, flag in (
        ("all_datasources", all_datasources),
        ("qc_assessment", qc_assessment),
        ("qc_flags", qc_flags),
        ("continuation", continuation),
    ):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}: expected True or False, got {flag!r}")
    if metric_select is not None and (not isinstance(metric_select, str) or not metric_select.strip()):
        raise ValueError(f"metric_select: expected a non-empty filter string or None, got {metric_select!r}")
    body: dict[str, Any] = {"org": org.strip()}
    if all_datasources:
        if datasource_ids is not None:
            raise ValueError("datasource_ids: give either datasource_ids or all_datasources=True, not both")
        body["allDatasources"] = True
    elif datasource_ids is None:
        raise ValueError(
            "datasource_ids: recent measurements need a list of datasource ids (or all_datasources=True); "
            "nodes and reference sites are only served by reports"
        )
    else:
        body["datasourceIds"] = check_id_list("datasource_ids", datasource_ids)
    body["outputFrequency"] = frequency
    body["format"] = fmt
    if start_time is not None:
        body["startTime"] = format_time(to_utc(start_time, param="start_time"))
    if metric_select is not None:
        body["metricSelect"] = metric_select.strip()
    body["qcAssessment"] = qc_assessment
    body["qcFlags"] = qc_flags
    body["replyWithContinuationToken"] = continuation
    return body


def metric_select_for(metrics: Sequence[str] | str | None) -> str | None:
    """The ``metricSelect`` that asks exactly for ``metrics`` (``only a + b``), or ``None`` for all metrics.

    :param metrics: canonical metric names, or ``None``.
    """
    if metrics is None:
        return None
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    return "only " + " + ".join(dict.fromkeys(names)) if names else None


def check_key_template(template: str | None, response_format: str) -> None:
    """Refuse a key template that a ``json-long`` answer cannot fill.

    :param template: the key template (``None``: the default, always fine).
    :param response_format: ``json-long`` or ``csv-wide``.
    :raises ValueError: when ``json-long`` is asked for with ``{source_id}`` or ``{source_type}`` in the key.
    """
    if template is None or response_format != "json-long":
        return
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError:
        return  # the parser names the broken template
    used = sorted(fields.intersection(_SOURCE_FIELDS))
    if used:
        raise ValueError(
            f"key_template {template!r} uses {', '.join('{' + f + '}' for f in used)}, which json-long "
            "answers do not carry (no sourceId/sourceType); use response_format='csv-wide'"
        )


# -- answers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecentAnswer:
    """One answer of the recent-measurements API.

    :param response_format: ``json-long`` or ``csv-wide`` (from the answer's content type, else its shape).
    :param rows: the ``data`` entries of a ``json-long`` answer (``[]`` for ``csv-wide``).
    :param csv: the body of a ``csv-wide`` answer (``b""`` for ``json-long``).
    :param locations: the ``locations`` of a ``json-long`` answer (absent when nothing is new: ``[]``).
    :param request: the request echo of a ``json-long`` answer (``{}`` otherwise).
    :param token: the next continuation token (a credential: not shown in ``repr``), if one was sent.
    :param server_time: the server's time of the answer (its ``Date`` header), if it sent one.
    """

    response_format: str
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    csv: bytes = field(default=b"", repr=False)
    locations: list[dict[str, Any]] = field(default_factory=list, repr=False)
    request: dict[str, Any] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)
    server_time: datetime | None = None

    @property
    def empty(self) -> bool:
        """Whether the answer holds no measurement."""
        if self.response_format == "json-long":
            return not self.rows
        return self.csv.strip().count(b"\n") == 0


def parse_recent_answer(
    content: bytes, *, content_type: str | None, token: str | None, server_time: datetime | None
) -> RecentAnswer:
    """Read the body of a recent-measurements answer.

    :param content: the (already decompressed) body.
    :param content_type: the ``Content-Type`` header; without ``json`` or ``csv`` in it, the body's first
        character decides (``{`` is JSON).
    :param token: the value of :data:`TOKEN_HEADER`, if any.
    :param server_time: the answer's ``Date``, if any.
    :raises ValueError: when a JSON answer is not ``{"data": [...], ...}``.
    """
    kind = (content_type or "").lower()
    is_json = "json" in kind or ("csv" not in kind and content.lstrip()[:1] == b"{")
    if not is_json:
        return RecentAnswer("csv-wide", csv=content, token=token or None, server_time=server_time)
    try:
        document = json.loads(content) if content.strip() else {}
    except ValueError:
        raise ValueError("the recent-measurements answer is not valid JSON") from None
    if not isinstance(document, dict):
        raise ValueError(f"the recent-measurements answer is a JSON {type(document).__name__}, not an object")
    rows = document.get("data") or []
    locations = document.get("locations") or []
    request = document.get("request") or {}
    if not isinstance(rows, list) or not isinstance(locations, list) or not isinstance(request, dict):
        raise ValueError(
            "the recent-measurements answer has a 'data', 'locations' or 'request' of the wrong type"
        )
    return RecentAnswer(
        "json-long",
        rows=rows,
        locations=locations,
        request=request,
        token=token or None,
        server_time=server_time,
    )


def _number(value: Any, position: int, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"recent answer data[{position}]: {name!r} is {value!r}, not a number")
    return float(value)


def _text(row: Mapping[str, Any], name: str, position: int) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"recent answer data[{position}]: {name!r} is missing or not a string ({value!r})")
    return value.strip()


def json_long_table(
    rows: Sequence[Any], *, output_frequency: str, metrics: Sequence[str] | None = None
) -> pa.Table | None:
    """Pivot ``json-long`` entries into the wide layout of a report file, for the report parser.

    One row per (datasource, time), with empty ``sourceId``/``sourceType`` (json-long does not say); per
    metric the columns ``<metric>.raw``, ``<metric>.value`` and, when any entry carries it,
    ``<metric>.qcAssessment``. Metrics in ``metrics`` that no entry has get empty
    columns (nothing new for them is not an error). Minute data gets a ``time`` column; hour and day data
    ``startOfPeriod`` (the entry's ``time``) and ``endOfPeriod`` (one period later). An entry repeated for
    the same datasource, time and metric: the last one wins.

    :param rows: the answer's ``data`` entries.
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    :param metrics: the metrics the caller loads, or ``None``.
    :return: the table, or ``None`` when there are no entries.
    :raises ValueError: naming the entry (``data[i]``) and field that is malformed.
    """
    check_choice("output_frequency", output_frequency, OUTPUT_FREQUENCIES)
    index: dict[tuple[str, str], int] = {}
    ids: list[str] = []
    times: list[str] = []
    cells: dict[str, dict[int, Any]] = {}
    with_qc: set[str] = set()
    for position, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"recent answer data[{position}]: expected an object, got {type(row).__name__}")
        datasource, moment, metric = (
            _text(row, name, position) for name in ("datasourceId", "time", "metric")
        )
        if not is_canonical_metric(metric):
            raise ValueError(
                f"recent answer data[{position}]: metric {metric!r} is not a canonical Clarity metric name"
            )
        at = index.setdefault((datasource, moment), len(index))
        if at == len(ids):
            ids.append(datasource)
            times.append(moment)
        for name in ("raw", "value"):
            cells.setdefault(f"{metric}.{name}", {})[at] = _number(row.get(name), position, name)
        if "qcAssessment" in row:
            with_qc.add(metric)
            assessment = row["qcAssessment"]
            cells.setdefault(f"{metric}.qcAssessment", {})[at] = (
                None if assessment is None else str(assessment)
            )
    if not ids:
        return None
    count = len(ids)
    # Empty source columns: the parser then records no source for the signal (instead of the datasource).
    unknown = pa.nulls(count, pa.string())
    columns: dict[str, pa.Array] = {
        "datasourceId": pa.array(ids, pa.string()),
        "sourceId": unknown,
        "sourceType": unknown,
    }
    if output_frequency == "minute":
        columns["time"] = pa.array(times, pa.string())
    else:
        start_us = times_to_us(pa.array(times, pa.string()), param="recent answer data time")
        period_us = PERIODS[output_frequency] // timedelta(microseconds=1)
        stamp = pa.timestamp("us", tz="UTC")
        columns["startOfPeriod"] = pa.array(start_us, stamp)
        columns["endOfPeriod"] = pa.array(start_us + np.int64(period_us), stamp)
    seen = sorted({name.rpartition(".")[0] for name in cells})
    for metric in seen + sorted(set(metrics or ()) - set(seen)):
        for name, kind in (("qcAssessment", pa.string()), ("raw", pa.float64()), ("value", pa.float64())):
            column = f"{metric}.{name}"
            if name == "qcAssessment" and metric not in with_qc:
                continue
            found = cells.get(column, {})
            columns[column] = pa.array([found.get(i) for i in range(count)], kind)
    return pa.table(columns)


def recent_frames(answer: RecentAnswer, parser: ReportParser) -> Iterator[Frame]:
    """The answer's measurements as frames, with the report parser's keys, QC rule and facts.

    :param answer: the answer.
    :param parser: a parser made for the request (its ``output_frequency`` set: json-long hour and day
        answers have no frequency column).
    :raises ValueError: for malformed rows (see :func:`json_long_table` and the parser).
    """
    if answer.empty:
        return
    if answer.response_format == "csv-wide":
        yield from parser.iter_frames(io.BytesIO(answer.csv))
        return
    frequency = parser.output_frequency or "minute"
    table = json_long_table(answer.rows, output_frequency=frequency, metrics=parser.metrics)
    if table is not None:
        yield from parser.iter_table_frames(table)


def time_range(frames: Iterable[Frame]) -> tuple[datetime, datetime] | None:
    """The earliest and latest time of the frames (UTC), or ``None`` when they hold no time.

    :param frames: frames.
    """
    bounds = [(int(f.times[0]), int(f.times[-1])) for f in frames if len(f)]
    if not bounds:
        return None
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    low = min(b[0] for b in bounds)
    high = max(b[1] for b in bounds)
    return epoch + timedelta(microseconds=low), epoch + timedelta(microseconds=high)


# -- where the sync stands -------------------------------------------------------------------------------
def sync_identity(
    *,
    dag_id: str,
    task_id: str,
    api_url: str,
    org: str,
    datasource_ids: Sequence[str] | None,
    all_datasources: bool,
    output_frequency: str,
) -> str:
    """A stable hash of what one incremental sync follows (its token chain and position).

    :param dag_id: the DAG.
    :param task_id: the task.
    :param api_url: the Clarity API base URL.
    :param org: the organization.
    :param datasource_ids: the datasources (order and repeats do not matter), or ``None``.
    :param all_datasources: whether every datasource is followed.
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    :return: a 64-character hex SHA-256.
    """
    canonical = {
        "dag": dag_id,
        "task": task_id,
        "apiUrl": api_url.rstrip("/"),
        "org": org,
        "ids": sorted(set(datasource_ids or ())),
        "all": all_datasources,
        "frequency": output_frequency,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def query_options_hash(body: Mapping[str, Any]) -> str:
    """A short hash of the query options that a continuation keeps (format, metric selection, QC).

    :param body: a body from :func:`build_recent_query`.
    """
    options = {k: body.get(k) for k in ("format", "metricSelect", "qcAssessment", "qcFlags")}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def _time_or_none(value: Any) -> datetime | None:
    return None if value is None else to_utc(value, param="state")


@dataclass(frozen=True)
class SyncState:
    """Where an incremental sync stands, as stored between runs.

    :param token: the latest continuation token (a credential: not shown in ``repr``), or ``None``.
    :param issued_at: when Clarity issued it (server time), or ``None``.
    :param last_loaded_time: the newest measurement time Clarify has confirmed (at first: the start).
    :param origin: the start of the first query; nothing earlier is ever loaded.
    :param pending_since: set while measurements fetched with ``token``'s predecessor are not confirmed
        by Clarify: the earliest of their times. The token must then not be used (it would skip them).
    :param options: :func:`query_options_hash` of the query that started the token chain.
    """

    token: str | None = field(repr=False)
    issued_at: datetime | None
    last_loaded_time: datetime
    origin: datetime
    pending_since: datetime | None = None
    options: str = ""

    def to_json(self) -> str:
        """The state as JSON text (times as ISO 8601 UTC)."""
        return json.dumps(
            {
                "token": self.token,
                "issued_at": None if self.issued_at is None else format_time(self.issued_at),
                "last_loaded_time": format_time(self.last_loaded_time),
                "origin": format_time(self.origin),
                "pending_since": None if self.pending_since is None else format_time(self.pending_since),
                "options": self.options,
            }
        )

    @classmethod
    def from_json(cls, value: Any) -> SyncState | None:
        """Read a stored state; ``None`` when it is missing or not what :meth:`to_json` writes.

        :param value: the stored value (JSON text or already decoded).
        """
        if value is None:
            return None
        try:
            data = json.loads(value) if isinstance(value, str) else value
            token = data.get("token")
            state = cls(
                token=token if isinstance(token, str) and token else None,
                issued_at=_time_or_none(data.get("issued_at")),
                last_loaded_time=to_utc(data["last_loaded_time"], param="state"),
                origin=to_utc(data["origin"], param="state"),
                pending_since=_time_or_none(data.get("pending_since")),
                options=str(data.get("options") or ""),
            )
        except (AttributeError, TypeError, ValueError, KeyError):
            return None
        return state

    def pending(self, *, token: str | None, issued_at: datetime | None, since: datetime) -> SyncState:
        """The state while fetched measurements (earliest time ``since``) await Clarify's confirmation.

        :param token: the token that came with them.
        :param issued_at: its issue time.
        :param since: the earliest time among them.
        """
        earliest = since if self.pending_since is None else min(since, self.pending_since)
        return replace(self, token=token, issued_at=issued_at, pending_since=earliest)

    def loaded(self, *, token: str | None, issued_at: datetime | None, through: datetime | None) -> SyncState:
        """The state once Clarify confirmed everything fetched (newest time ``through``).

        :param token: the token to continue with.
        :param issued_at: its issue time.
        :param through: the newest time loaded now, or ``None`` when nothing was.
        """
        newest = self.last_loaded_time if through is None else max(self.last_loaded_time, through)
        return replace(self, token=token, issued_at=issued_at, last_loaded_time=newest, pending_since=None)


def cache_start(server_now: datetime, output_frequency: str) -> datetime:
    """The oldest time the cache still serves at ``server_now``.

    :param server_now: the server's current time.
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    """
    return server_now - CACHE_WINDOWS[output_frequency]


def recovery_start(
    needed_from: datetime,
    *,
    origin: datetime,
    overlap: timedelta,
    server_now: datetime,
    output_frequency: str,
) -> datetime:
    """Where a query that re-establishes the stream starts.

    ``overlap`` before ``needed_from`` (to catch readings that arrived late, with older times), never before
    ``origin``, and never before the cache edge (plus :data:`CACHE_EDGE_MARGIN`).

    :param needed_from: the earliest time that may not be in Clarify yet.
    :param origin: the start of the first query.
    :param overlap: how far to reach back before ``needed_from``.
    :param server_now: the server's current time (estimated).
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    """
    start = max(origin, needed_from - overlap)
    return max(start, cache_start(server_now, output_frequency) + CACHE_EDGE_MARGIN)


def lost_period(
    needed_from: datetime,
    *,
    requested_start: datetime,
    answered_at: datetime | None,
    output_frequency: str,
) -> tuple[datetime, datetime] | None:
    """The period a query could not serve because the cache no longer holds it, or ``None``.

    :param needed_from: the earliest time that was wanted.
    :param requested_start: the ``startTime`` that was sent.
    :param answered_at: the server's time of the answer (its cache edge follows from it), if known.
    :param output_frequency: ``minute``, ``hour`` or ``day``.
    """
    served_from = requested_start
    if answered_at is not None:
        served_from = max(served_from, cache_start(answered_at, output_frequency))
    return (needed_from, served_from) if needed_from < served_from else None
