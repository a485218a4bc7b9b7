"""Operator that requests a Clarity historical report (quota-safe), and optionally waits for it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator

from airflow_provider_clarify.exceptions import ClarityAPIError, ClarityReportRequestUncertainError
from airflow_provider_clarify.hooks.clarity import REPORT_REQUESTS_PATH, ClarityHook
from airflow_provider_clarify.sensors.clarity import check_report, summary_from_event
from airflow_provider_clarify.triggers.clarity import ClarityReportTrigger
from airflow_provider_clarify.utils.report_store import load_ref, save_ref, variable_key
from airflow_provider_clarify.utils.reports import (
    build_report_request,
    report_identity,
    report_outcome,
    resolve_window,
)
from airflow_provider_clarify.utils.urls import join_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


def _seconds(value: timedelta | float, *, param: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:
        raise ValueError(f"{param}: expected a positive duration, got {value!r}")
    return seconds


def _lost_answer_advice(identity: str) -> str:
    key = variable_key(identity)
    return (
        f"Variable {key} records this, so reruns for the same report stop here until you choose (or until "
        f"reuse_max_age has passed): if you know the report id, set the Variable to "
        f'{{"reportId": "<id>", "requested_at": "<ISO time>"}} and clear the task; to request a new report '
        f"(one more unit of the quota), delete the Variable and clear the task."
    )


class ClarityRequestReportOperator(BaseOperator):
    """Request a Clarity historical report and return its ``reportId`` (XCom).

    The request is validated before anything is sent (report type, frequency, ids, window). Clarity allows
    about 30 reports per organization per day, so the report id is remembered in an Airflow Variable keyed by
    a hash of everything that defines the report: a retried or cleared task, or another run asking for the
    same report, reuses it while it has not failed and is younger than ``reuse_max_age``. HTTP 429 fails at
    once with ``ClarityQuotaExceededError``.

    Window: ``start_time``/``end_time`` (ISO strings or datetimes); left ``None``, the run's data interval
    when not empty, else ``[end - lookback, end)``. Sent as UTC ``...T00:00:00.000Z``.

    :param report: ``datasource-measurements``, ``node-measurements`` or ``reference-site-measurements``
        (templated).
    :param output_frequency: ``minute``, ``hour`` or ``day`` (templated).
    :param start_time: first time included (templated); default from the data interval.
    :param end_time: first time excluded (templated); default from the data interval.
    :param lookback: window length when the data interval is empty.
    :param datasource_ids: datasource ids for a datasource report (templated).
    :param all_datasources: every datasource of the org instead of ``datasource_ids``.
    :param node_ids: node ids for a node report (templated).
    :param ref_site_ids: reference site ids for a reference-site report (templated).
    :param org: the organization (templated); default: the connection's.
    :param metric_label_style: ``canonical``, ``english`` or ``legacy``.
    :param file_format: ``csv`` or ``parquet``.
    :param metric_select: Clarity's metric filter, e.g. ``"only pm2_5*"`` (templated).
    :param qc_assessment: add ``<metric>.qcAssessment`` columns.
    :param qc_flags: add ``<metric>.qcFlags`` columns.
    :param wait_for_completion: wait until the report succeeded (fail when it failed).
    :param deferrable: wait in the triggerer rather than in a worker slot.
    :param poll_interval: seconds between status checks while waiting.
    :param timeout: how long to wait (timedelta or seconds); a timeout fails the try, a retry waits for the
        same report again.
    :param reuse_existing_report: reuse the report requested before for the same parameters.
    :param reuse_max_age: the oldest report that is reused (timedelta or seconds).
    :param clarity_conn_id: the ``clarity`` connection.
    :param kwargs: the arguments of ``BaseOperator``.
    """

    template_fields: Sequence[str] = (
        "report",
        "output_frequency",
        "start_time",
        "end_time",
        "datasource_ids",
        "node_ids",
        "ref_site_ids",
        "org",
        "metric_select",
    )
    ui_color = "#c9e4f2"

    def __init__(
        self,
        *,
        report: str = "datasource-measurements",
        output_frequency: str,
        start_time: datetime | str | None = None,
        end_time: datetime | str | None = None,
        lookback: timedelta = timedelta(days=1),
        datasource_ids: list[str] | None = None,
        all_datasources: bool = False,
        node_ids: list[str] | None = None,
        ref_site_ids: list[str] | None = None,
        org: str | None = None,
        metric_label_style: str = "canonical",
        file_format: str = "csv",
        metric_select: str | None = None,
        qc_assessment: bool = False,
        qc_flags: bool = False,
        wait_for_completion: bool = False,
        deferrable: bool = True,
        poll_interval: float = 60,
        timeout: timedelta | float = timedelta(hours=1),
        reuse_existing_report: bool = True,
        reuse_max_age: timedelta | float = timedelta(hours=24),
        clarity_conn_id: str = ClarityHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.report = report
        self.output_frequency = output_frequency
        self.start_time = start_time
        self.end_time = end_time
        self.lookback = lookback
        self.datasource_ids = datasource_ids
        self.all_datasources = all_datasources
        self.node_ids = node_ids
        self.ref_site_ids = ref_site_ids
        self.org = org
        self.metric_label_style = metric_label_style
        self.file_format = file_format
        self.metric_select = metric_select
        self.qc_assessment = qc_assessment
        self.qc_flags = qc_flags
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.reuse_existing_report = reuse_existing_report
        self.reuse_max_age = reuse_max_age
        self.clarity_conn_id = clarity_conn_id

    @cached_property
    def hook(self) -> ClarityHook:
        """The Clarity hook."""
        return ClarityHook(clarity_conn_id=self.clarity_conn_id)

    def build_request(self, context: Context) -> dict[str, Any]:
        """The validated request body for this run (window resolved from the context).

        :param context: the task context.
        """
        interval_end = context.get("data_interval_end")
        if interval_end is None:
            dag_run = context.get("dag_run")
            interval_end = getattr(dag_run, "run_after", None) or context.get("logical_date")
        start, end = resolve_window(
            self.start_time,
            self.end_time,
            interval_start=context.get("data_interval_start"),
            interval_end=interval_end or datetime.now(UTC),
            lookback=self.lookback,
        )
        return build_report_request(
            org=self.hook.settings.resolve_org(self.org),
            report=self.report,
            output_frequency=self.output_frequency,
            start=start,
            end=end,
            datasource_ids=self.datasource_ids,
            all_datasources=self.all_datasources,
            node_ids=self.node_ids,
            ref_site_ids=self.ref_site_ids,
            metric_label_style=self.metric_label_style,
            file_format=self.file_format,
            metric_select=self.metric_select,
            qc_assessment=self.qc_assessment,
            qc_flags=self.qc_flags,
        )

    def execute(self, context: Context) -> str:
        """Find or request the report; wait for it when asked.

        :param context: the task context.
        """
        body = self.build_request(context)
        timeout = _seconds(self.timeout, param="timeout")
        max_age = timedelta(seconds=_seconds(self.reuse_max_age, param="reuse_max_age"))
        identity = report_identity(body, api_url=self.hook.base_url)
        record = self._reusable_report(identity, body["org"], max_age) if self.reuse_existing_report else None
        if record is None:
            record = self._request_report(identity, body)
        report_id: str = record["reportId"]
        if not self.wait_for_completion or check_report(record, report_id) is not None:
            return report_id
        if self.deferrable:
            self.defer(
                trigger=ClarityReportTrigger(
                    report_id=report_id,
                    org=body["org"],
                    clarity_conn_id=self.clarity_conn_id,
                    poll_interval=float(self.poll_interval),
                    end_time=time.time() + timeout,
                ),
                method_name="execute_complete",
                # A safety net only: the trigger's own timeout event comes first with a clearer message.
                timeout=timedelta(seconds=timeout + 2 * float(self.poll_interval) + 60),
            )
        else:
            self._wait(report_id, body["org"], timeout)
        return report_id

    def _request_report(self, identity: str, body: dict[str, Any]) -> dict[str, Any]:
        requested_at = datetime.now(UTC)
        what = (
            f"({body['report']}, {body['outputFrequency']}, {body['startTime']}..{body['endTime']}, "
            f"org {body['org']}) requested by {self.dag_id}.{self.task_id}"
        )
        try:
            record = self.hook.submit_report_request(body)
        except ClarityReportRequestUncertainError as exc:
            # Remembered, so that a rerun does not request the report again without being told to.
            save_ref(
                identity,
                None,
                requested_at=requested_at,
                description=f"Clarity report request {what}; its answer was lost, the report id is unknown",
            )
            exc.add_note(_lost_answer_advice(identity))
            raise
        save_ref(
            identity,
            record["reportId"],
            requested_at=requested_at,
            description=f"Clarity report {record['reportId']} {what}; kept so retries do not spend quota",
        )
        return record

    def _reusable_report(self, identity: str, org: str, max_age: timedelta) -> dict[str, Any] | None:
        ref = load_ref(identity)
        if ref is None:
            return None
        if not ref.is_fresh(now=datetime.now(UTC), max_age=max_age):
            self.log.info(
                "Clarity report %s (requested %s) is older than reuse_max_age; requesting a new one",
                ref.report_id or "(answer lost)",
                ref.requested_at.isoformat(),
            )
            return None
        if ref.report_id is None:
            raise ClarityReportRequestUncertainError(
                cause=f"an earlier try sent it at {ref.requested_at.isoformat()}",
                url=join_url(self.hook.base_url, REPORT_REQUESTS_PATH),
                advice=_lost_answer_advice(identity),
            )
        try:
            record = self.hook.get_report(ref.report_id, org)
        except ClarityAPIError as exc:
            if exc.status != 404:
                raise
            self.log.info("Clarity no longer knows report %s; requesting a new one", ref.report_id)
            return None
        if report_outcome(record).state == "failed":
            self.log.info("Clarity report %s failed earlier; requesting a new one", ref.report_id)
            return None
        self.log.info(
            "Reusing Clarity report %s (requested %s, status %s) instead of spending report quota",
            ref.report_id,
            ref.requested_at.isoformat(),
            record.get("reportStatus"),
        )
        return record

    def _wait(self, report_id: str, org: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            record = self.hook.get_report(report_id, org)
            self.log.info("Clarity report %s: %s", report_id, record.get("reportStatus"))
            if check_report(record, report_id) is not None:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AirflowException(f"Clarity report {report_id} did not finish within {timeout:.0f} s")
            time.sleep(min(float(self.poll_interval), remaining))

    def execute_complete(self, context: Context, event: Any = None) -> str:
        """Resume after the trigger: return the report id, or raise for failed/error/timeout/missing events.

        :param context: the task context.
        :param event: the trigger's event.
        """
        report_id = event.get("report_id") if isinstance(event, dict) else None
        summary = summary_from_event(event, str(report_id), timeout_error=AirflowException)
        return str(summary["report_id"])
