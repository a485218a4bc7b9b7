"""Operator that keeps Clarify signals in sync with Clarity's recent measurements, spending no report quota.

Clarity allows about 30 reports per organization per day, shared by everyone in it, so a DAG that runs every
15 minutes cannot be built on reports. The recent-measurements API has no quota: a query returns what the
cache holds from a start time on, together with a continuation token; a continuation with that token returns
only what arrived since, and a new token. This operator follows that stream run after run (see
:class:`ClarityRecentToClarifyOperator` for the guarantees and how they are kept).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator, mask_secret

from airflow_provider_clarify.exceptions import ClarityAPIError
from airflow_provider_clarify.hooks.clarify import ClarifyHook
from airflow_provider_clarify.hooks.clarity import ClarityHook
from airflow_provider_clarify.utils.coalesce import coalesce_frames
from airflow_provider_clarify.utils.payload import DEFAULT_REQUEST_BYTES, check_budget
from airflow_provider_clarify.utils.recent import (
    CACHE_WINDOWS,
    TOKEN_LIFETIME,
    SyncState,
    build_recent_query,
    check_key_template,
    lost_period,
    metric_select_for,
    query_options_hash,
    recent_frames,
    recovery_start,
    sync_identity,
    time_range,
)
from airflow_provider_clarify.utils.report_parsing import ReportParser, signal_metadata
from airflow_provider_clarify.utils.reports import format_time, to_utc

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_clarify.utils.recent import RecentAnswer

#: Variable key prefix (the word "token" makes Airflow hide the value in the UI and mask it in logs).
VARIABLE_PREFIX = "clarity_recent_token_"
#: First-run window when neither ``start_time`` nor a non-empty data interval gives a start.
DEFAULT_LOOKBACK = timedelta(hours=1)
#: A token this close to its 24 h limit is treated as expired (it could expire on the way).
TOKEN_EXPIRY_MARGIN = timedelta(minutes=1)
#: HTTP statuses with which Clarity refuses a continuation token (invalid, used or expired; which one it
#: sends is unconfirmed upstream, so every "not this token" answer leads to a query instead).
REFUSED_TOKEN_STATUSES = frozenset({400, 404, 410, 422})


class ClarityRecentToClarifyOperator(BaseOperator):
    """Load the Clarity measurements that arrived since the previous run into Clarify (no report quota).

    The first run queries Clarity's recent measurements from ``start_time``; every later run continues the
    stream with the continuation token of the run before, so each run loads exactly the measurements that
    arrived in between -- none twice, none missed -- however often the DAG runs (every 15 minutes is fine:
    the recent API has no daily quota, and this operator never requests a report). The data interval does
    not bound what is loaded: a run loads what is new.

    Key mapping, QC filtering and signal metadata are those of ``ClarityReportToClarifyOperator`` (the same
    parser): one signal per (datasource, metric[, attribute]) named by ``key_template`` (default
    ``"{id}.{metric}"``), values whose ``qcAssessment`` is ``invalid`` dropped unless ``include_invalid``
    (the operator asks Clarity for the assessment), readable names, units, labels and sample intervals.

    **Where the sync stands** is kept outside XCom (Airflow clears XCom before a retry), in the Airflow
    Variable ``clarity_recent_token_<hash>`` -- the hash covers DAG, task, API URL, org, datasources and
    frequency; the name makes Airflow hide the value. It holds the latest token and when Clarity issued
    it, ``last_loaded_time`` (the newest measurement time Clarify confirmed), ``origin`` (the first start)
    and ``pending_since``. Delete the Variable to start over from ``start_time``.

    **Retry safety.** The call that returns new measurements also moves the token chain on: with a strict
    server the old token is spent, with a lenient one it may continue *after* the data just returned. So
    the token is never the only record of what is loaded:

    1. After Clarity answered and before anything is inserted, the state is saved with the new token and
       ``pending_since`` = the earliest time of the fetched measurements. (If the answer cannot even be
       parsed, ``pending_since`` is the last loaded time.)
    2. The measurements are inserted and the metadata saved.
    3. Only then ``last_loaded_time`` advances and ``pending_since`` is cleared.

    A run that finds ``pending_since`` set (the previous try failed after step 1, e.g. after the insert)
    does not use the token: it queries again from ``min(pending_since, last_loaded_time)``. A run that
    finds no state change at all (the try died between Clarity's answer and step 1) uses the old token;
    Clarity refuses a spent token and the run queries from ``last_loaded_time``. Either way the retry sends
    the unconfirmed batch again, which is harmless: Clarify keeps one value per signal and time, so every
    point is stored exactly once, and nothing fetched is skipped.

    **Expired tokens.** A token is valid 24 h after it was issued. A token that is older (by the issue time
    Clarity's ``Date`` header gave), or that Clarity refuses (HTTP 400/404/410/422), is replaced by a query
    from ``last_loaded_time`` (minus ``recovery_overlap``, to catch readings that arrived late), which the
    log says. The cache reaches back 24 h for minute data, 48 h for hourly and 10 days for daily data: a
    period older than that cannot be recovered from the recent API, and the run logs a warning naming it
    and how to backfill it with ``ClarityRequestReportOperator`` and ``ClarityReportToClarifyOperator``
    (the XCom carries it as ``lost_period``). The cache edge is taken from the server's clock (the ``Date``
    of its answers); before the first answer of a run, from the worker's clock. A token that the worker's
    clock already sees expired is not sent.

    Changing the format, metrics, metric selection or QC options ends the token chain (the continuation
    would keep the old ones): the next run queries from ``last_loaded_time`` with the new options.

    Runs of one task must not overlap (they would share the token chain): ``max_active_tis_per_dag``
    defaults to 1.

    Returns (XCom) ``{"mode", "rows", "points", "signals", "created", "requests", "queried_from",
    "loaded_from", "loaded_through", "lost_period"}``: ``mode`` is ``query`` (first run), ``continuation``
    or ``recovery``; ``rows`` are (datasource, time) rows read; ``points`` values sent; ``queried_from``
    the start of a query (``None`` for a continuation); ``loaded_from``/``loaded_through`` the time range
    of the values sent; ``lost_period`` ``[start, end]`` or ``None``. Never the token.

    :param datasource_ids: (templated) the datasources to follow (recent measurements are served for
        datasources only); or ``all_datasources``.
    :param all_datasources: follow every datasource of the org.
    :param output_frequency: (templated) ``minute``, ``hour`` or ``day``.
    :param start_time: (templated) where the first run starts (ISO string or datetime); default the data
        interval start when the interval is not empty, else one hour before now. Only the first run uses it;
        a start older than the cache window is reported as a lost period, like a gap.
    :param response_format: ``csv-wide`` (the report layout, with source ids) or ``json-long``; with
        ``json-long``, key templates cannot use ``{source_id}``/``{source_type}``.
    :param metrics: (templated) canonical metric names to load; ``None`` loads all of them.
    :param metric_select: (templated) Clarity's ``metricSelect``; default ``only <metrics>`` when
        ``metrics`` is given, else every metric.
    :param attributes: ``value`` (calibrated), ``raw``, or both.
    :param include_invalid: keep values whose qcAssessment is ``invalid``.
    :param key_template: (templated) the input key template, as for the report transfer.
    :param timestamp: ``start`` or ``end`` of the period, for hour and day data.
    :param save_metadata: save each signal's name, unit, labels and sample interval.
    :param recovery_overlap: when the stream is re-established with a query, how far before the last loaded
        time it reaches back (never before the first start).
    :param org: (templated) the Clarity organization; default the connection's. Also the ``org`` label.
    :param integration_id: (templated) the Clarify integration; default the connection's.
    :param clarity_conn_id: the ``clarity`` connection.
    :param clarify_conn_id: the ``clarify`` connection.
    :param max_request_bytes: byte budget per insert request (default 4 MiB, at most 8 MiB).
    :param requests_per_second: client-side pacing of Clarify calls (Clarify allows 1/s); None turns it off.
    :param kwargs: the arguments of ``BaseOperator``.
    """

    template_fields: Sequence[str] = (
        "datasource_ids",
        "output_frequency",
        "start_time",
        "metrics",
        "metric_select",
        "key_template",
        "org",
        "integration_id",
    )
    ui_color = "#c9e4f2"

    def __init__(
        self,
        *,
        datasource_ids: Sequence[str] | None = None,
        all_datasources: bool = False,
        output_frequency: str = "minute",
        start_time: datetime | str | None = None,
        response_format: str = "csv-wide",
        metrics: Sequence[str] | str | None = None,
        metric_select: str | None = None,
        attributes: Sequence[str] | str = ("value",),
        include_invalid: bool = False,
        key_template: str | None = None,
        timestamp: str = "start",
        save_metadata: bool = True,
        recovery_overlap: timedelta = timedelta(minutes=15),
        org: str | None = None,
        integration_id: str | None = None,
        clarity_conn_id: str = ClarityHook.default_conn_name,
        clarify_conn_id: str = ClarifyHook.default_conn_name,
        max_request_bytes: int = DEFAULT_REQUEST_BYTES,
        requests_per_second: float | None = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("max_active_tis_per_dag", 1)
        super().__init__(**kwargs)
        self.datasource_ids = datasource_ids
        self.all_datasources = all_datasources
        self.output_frequency = output_frequency
        self.start_time = start_time
        self.response_format = response_format
        self.metrics = metrics
        self.metric_select = metric_select
        self.attributes = attributes
        self.include_invalid = include_invalid
        self.key_template = key_template
        self.timestamp = timestamp
        self.save_metadata = save_metadata
        self.recovery_overlap = recovery_overlap
        self.org = org
        self.integration_id = integration_id
        self.clarity_conn_id = clarity_conn_id
        self.clarify_conn_id = clarify_conn_id
        self.max_request_bytes = max_request_bytes
        self.requests_per_second = requests_per_second

    @cached_property
    def clarity_hook(self) -> ClarityHook:
        """The Clarity hook (recent-measurements queries and continuations)."""
        return ClarityHook(clarity_conn_id=self.clarity_conn_id)

    @cached_property
    def clarify_hook(self) -> ClarifyHook:
        """The Clarify hook (inserts and metadata)."""
        return ClarifyHook(
            self.clarify_conn_id,
            requests_per_second=self.requests_per_second,
            max_request_bytes=self.max_request_bytes,
        )

    # -- the run --------------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        """Check the options, fetch what is new (continuation, or a query), insert it, move the state on.

        :param context: the task context.
        """
        parser = self._parser()  # checks metrics, attributes, key_template, timestamp, frequency
        check_key_template(self.key_template, self.response_format)
        check_budget(self.max_request_bytes)
        if not isinstance(self.recovery_overlap, timedelta) or self.recovery_overlap < timedelta(0):
            raise ValueError(f"recovery_overlap: expected a timedelta >= 0, got {self.recovery_overlap!r}")
        first_start = self._first_start(context)
        org = self.clarity_hook.settings.resolve_org(self.org)
        body = build_recent_query(  # checks ids, frequency, format, metric selection
            org=org,
            datasource_ids=self.datasource_ids,
            all_datasources=self.all_datasources,
            output_frequency=self.output_frequency,
            response_format=self.response_format,
            metric_select=self.metric_select or metric_select_for(self.metrics),
            qc_assessment=not self.include_invalid,
        )
        self.clarify_hook._integration(self.integration_id)  # the Clarify connection, before any request
        options = query_options_hash(body)
        key = VARIABLE_PREFIX + self._identity(org)[:40]
        state = self._load_state(key)

        if state is None:
            mode, answer = "query", None
            state = SyncState(
                token=None, issued_at=None, last_loaded_time=first_start, origin=first_start, options=options
            )
            self.log.info("No earlier sync state in Variable %s: this is the first query", key)
        else:
            answer, why_not = self._continue(state, options, org)
            mode = "continuation" if answer is not None else "recovery"
        queried_from = lost = None
        if answer is None:  # a query: the first one, or one that re-establishes the stream
            needed_from = min(state.last_loaded_time, state.pending_since or state.last_loaded_time)
            queried_from = recovery_start(
                needed_from,
                origin=state.origin,
                overlap=self.recovery_overlap,
                server_now=self.clarity_hook.server_time(),
                output_frequency=self.output_frequency,
            )
            if mode == "recovery":
                self.log.warning(
                    "%s; querying from %s instead (last loaded measurement: %s)",
                    why_not,
                    format_time(queried_from),
                    format_time(state.last_loaded_time),
                )
            answer = self._query(body, queried_from)
            lost = lost_period(
                needed_from,
                requested_start=queried_from,
                answered_at=answer.server_time,
                output_frequency=self.output_frequency,
            )
            if lost is not None:
                self._warn_lost(lost, body)
        return self._load(key, replace(state, options=options), answer, parser, org, mode, queried_from, lost)

    def _load(
        self,
        key: str,
        state: SyncState,
        answer: RecentAnswer,
        parser: ReportParser,
        org: str,
        mode: str,
        queried_from: datetime | None,
        lost: tuple[datetime, datetime] | None,
    ) -> dict[str, Any]:
        """Insert an answer, saving the state before (pending) and after (loaded)."""
        issued_at = answer.server_time or self.clarity_hook.server_time()
        if not answer.token:
            self.log.warning("Clarity sent no continuation token; the next run will query again")
        try:
            frames = list(recent_frames(answer, parser))
        except BaseException:
            # The answer moved the token chain on but cannot be loaded: never continue past it.
            pending = state.pending(token=answer.token, issued_at=issued_at, since=state.last_loaded_time)
            self._save_state(key, pending)
            raise
        span = time_range(frames)
        points = signals = created = requests = 0
        if span is not None:
            self._save_state(key, state.pending(token=answer.token, issued_at=issued_at, since=span[0]))
            summary = self.clarify_hook.insert_frames(
                coalesce_frames(frames, max_request_bytes=self.max_request_bytes),
                integration_id=self.integration_id,
            )
            if self.save_metadata and parser.facts:
                views = signal_metadata(parser.facts, org=org)
                self.clarify_hook.save_signals(views, integration_id=self.integration_id)
            points, signals, requests = summary.points, len(summary.signals), summary.requests
            created = sum(1 for entry in summary.signals.values() if entry.get("created"))
        if parser.stats.invalid_dropped:
            self.log.info("Dropped %d value(s) whose qcAssessment is 'invalid'", parser.stats.invalid_dropped)
        loaded = state.loaded(token=answer.token, issued_at=issued_at, through=span[1] if span else None)
        self._save_state(key, loaded)
        result = {
            "mode": mode,
            "rows": parser.stats.rows,
            "points": points,
            "signals": signals,
            "created": created,
            "requests": requests,
            "queried_from": None if queried_from is None else format_time(queried_from),
            "loaded_from": None if span is None else format_time(span[0]),
            "loaded_through": None if span is None else format_time(span[1]),
            "lost_period": None if lost is None else [format_time(lost[0]), format_time(lost[1])],
        }
        self.log.info(
            "Clarity recent measurements loaded into Clarify (%s); last loaded measurement now %s",
            result,
            format_time(loaded.last_loaded_time),
        )
        return result

    def _continue(self, state: SyncState, options: str, org: str) -> tuple[RecentAnswer | None, str]:
        """The continuation answer, or ``(None, why the token cannot be used)``."""
        token = state.token
        issued = "unknown" if state.issued_at is None else format_time(state.issued_at)
        if state.pending_since is not None:
            return None, (
                f"The previous try fetched measurements from {format_time(state.pending_since)} on but "
                "Clarify did not confirm them (the try failed after fetching); they are fetched again, "
                "which is harmless (Clarify keeps one value per time)"
            )
        if token is None:
            return None, "No continuation token is stored"
        mask_secret(token)
        if state.options != options:
            return None, "The query options (format, metric selection, QC) changed since the token was issued"
        # The worker's clock against Clarity's issue time: a token it already sees as expired is not sent (a
        # skewed clock only costs a refused call, handled below).
        expiry = None if state.issued_at is None else state.issued_at + TOKEN_LIFETIME - TOKEN_EXPIRY_MARGIN
        if expiry is not None and datetime.now(UTC) >= expiry:
            return None, (
                f"The continuation token issued at {issued} has expired (tokens are valid "
                f"{TOKEN_LIFETIME / timedelta(hours=1):g} h)"
            )
        try:
            return self.clarity_hook.continue_recent_measurements(token, org=org), ""
        except ClarityAPIError as exc:
            if exc.status not in REFUSED_TOKEN_STATUSES:
                raise
            age = ""
            if state.issued_at is not None:
                hours = (self.clarity_hook.server_time() - state.issued_at) / timedelta(hours=1)
                age = f", {hours:.1f} h after it was issued"
                if hours >= TOKEN_LIFETIME / timedelta(hours=1):
                    age += " (older than 24 h: expired)"
            return None, (
                f"Clarity refused the continuation token issued at {issued}{age}: "
                f"HTTP {exc.status} {exc.message}"
            )

    def _query(self, body: dict[str, Any], start: datetime) -> RecentAnswer:
        return self.clarity_hook.query_recent_measurements(
            datasource_ids=body.get("datasourceIds"),
            all_datasources=bool(body.get("allDatasources")),
            output_frequency=body["outputFrequency"],
            response_format=body["format"],
            start_time=start,
            metric_select=body.get("metricSelect"),
            qc_assessment=body["qcAssessment"],
            qc_flags=body["qcFlags"],
            continuation=True,
            org=body["org"],
        )

    def _warn_lost(self, lost: tuple[datetime, datetime], body: dict[str, Any]) -> None:
        start, end = (format_time(t) for t in lost)
        window = f"{CACHE_WINDOWS[self.output_frequency] / timedelta(hours=1):g} h"
        ids = (
            "all_datasources=True"
            if body.get("allDatasources")
            else f"datasource_ids={body['datasourceIds']!r}"
        )
        self.log.warning(
            "Clarity measurements from %s to %s cannot be loaded by this sync: Clarity's cache of %s data "
            "reaches only %s back. Backfill the period from a report: ClarityRequestReportOperator("
            "output_frequency=%r, start_time=%r, end_time=%r, %s, org=%r, qc_assessment=True), then "
            "ClarityReportToClarifyOperator with the same key_template",
            start,
            end,
            self.output_frequency,
            window,
            self.output_frequency,
            start,
            end,
            ids,
            body["org"],
        )

    # -- options and state ----------------------------------------------------------------------------
    def _parser(self) -> ReportParser:
        return ReportParser(
            metrics=self.metrics,
            attributes=self.attributes,
            include_invalid=self.include_invalid,
            key_template=self.key_template,
            timestamp=self.timestamp,
            output_frequency=self.output_frequency,
        )

    def _first_start(self, context: Context) -> datetime:
        if self.start_time is not None:
            return to_utc(self.start_time, param="start_time")
        interval_start = context.get("data_interval_start")
        interval_end = context.get("data_interval_end")
        if interval_start is not None and interval_end is not None:
            start = to_utc(interval_start, param="data_interval_start")
            if start < to_utc(interval_end, param="data_interval_end"):
                return start
        return to_utc(datetime.now(UTC) - DEFAULT_LOOKBACK, param="start_time")

    def _identity(self, org: str) -> str:
        ids = None if self.datasource_ids is None else list(self.datasource_ids)
        return sync_identity(
            dag_id=self.dag_id,
            task_id=self.task_id,
            api_url=self.clarity_hook.base_url,
            org=org,
            datasource_ids=ids,
            all_datasources=self.all_datasources,
            output_frequency=self.output_frequency,
        )

    def _load_state(self, key: str) -> SyncState | None:
        from airflow.sdk import Variable

        try:
            value = Variable.get(key, default=None)
        except Exception as exc:
            # Starting over would load from start_time again or leave a gap: better stop here.
            raise AirflowException(
                f"Could not read the sync state in Variable {key} ({type(exc).__name__}: {exc})"
            ) from exc
        state = SyncState.from_json(value)
        if value is not None and state is None:
            raise AirflowException(
                f"Variable {key} does not hold a Clarity sync state; delete it to start over from start_time"
            )
        if state is not None and state.token:
            mask_secret(state.token)
        return state

    def _save_state(self, key: str, state: SyncState) -> None:
        from airflow.sdk import Variable

        description = (
            f"Clarity recent-measurements sync of {self.dag_id}.{self.task_id} ({self.output_frequency}): "
            "continuation token and last loaded time. Delete to start over."
        )
        try:
            Variable.set(key, state.to_json(), description=description)
        except Exception as exc:
            # The next try starts from the state before: it fetches again what this one fetched.
            raise AirflowException(
                f"Could not save the sync state in Variable {key} ({type(exc).__name__}: {exc})"
            ) from exc
