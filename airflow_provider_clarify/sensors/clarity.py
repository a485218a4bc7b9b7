"""Sensor that waits for a Clarity report to finish."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowSensorTimeout,
    BaseSensorOperator,
    PokeReturnValue,
)

from airflow_provider_clarify.exceptions import ClarityReportFailedError
from airflow_provider_clarify.hooks.clarity import ClarityHook
from airflow_provider_clarify.triggers.clarity import EVENT_STATUSES, ClarityReportTrigger
from airflow_provider_clarify.utils.reports import report_outcome, report_summary

if TYPE_CHECKING:
    from airflow.sdk import Context


def check_report(record: Mapping[str, Any], report_id: str) -> dict[str, Any] | None:
    """The XCom summary when a report is done, ``None`` while it runs; raises when it cannot succeed.

    :param record: the report record.
    :param report_id: the report id (for messages).
    :raises ClarityReportFailedError: when Clarity says ``failed`` (with Clarity's message).
    :raises AirflowException: on an unknown status, or ``succeeded`` without urls.
    """
    outcome = report_outcome(record)
    if outcome.state == "succeeded":
        return report_summary(record)
    if outcome.state == "failed":
        raise ClarityReportFailedError(report_id=report_id, message=outcome.message)
    if outcome.state == "invalid":
        raise AirflowException(f"Clarity report {report_id}: {outcome.message}")
    return None


def summary_from_event(
    event: Any, report_id: str, *, timeout_error: type[AirflowException] = AirflowSensorTimeout
) -> dict[str, Any]:
    """Check a trigger event and return the XCom summary of a succeeded report.

    :param event: the event payload given to ``execute_complete``.
    :param report_id: the report id the task waited for.
    :param timeout_error: what to raise on ``timeout`` (sensors: ``AirflowSensorTimeout``, which is not
        retried; operators pass ``AirflowException`` so a retry can wait for the same report again).
    :raises AirflowException: on a missing or malformed event, an unknown event status, or ``error``.
    :raises ClarityReportFailedError: on ``failed``.
    """
    if not isinstance(event, Mapping) or event.get("status") not in EVENT_STATUSES:
        raise AirflowException(f"Clarity report {report_id}: the trigger returned no valid event ({event!r})")
    status, message = event["status"], str(event.get("message") or "")
    if status == "failed":
        raise ClarityReportFailedError(report_id=report_id, message=message)
    if status == "timeout":
        raise timeout_error(message or f"Clarity report {report_id} did not finish in time")
    if status == "error":
        raise AirflowException(message or f"Clarity report {report_id}: the trigger failed")
    return {
        "report_id": event.get("report_id") or report_id,
        "status": event.get("report_status"),
        "report": event.get("report"),
        "urls_expire_at": event.get("urls_expire_at"),
    }


class ClarityReportSensor(BaseSensorOperator):
    """Wait until a Clarity report is ``succeeded``.

    Fails with Clarity's message when the report ``failed``, and clearly on a status it does not know.
    Deferrable by default: it checks once, then waits in the triggerer (no worker slot) with an absolute
    deadline of ``timeout`` seconds from the first check. With ``deferrable=False`` it pokes in ``poke`` or
    ``reschedule`` mode. A timeout raises ``AirflowSensorTimeout`` (skipped with ``soft_fail=True``).
    XCom return value: ``{"report_id", "status", "report", "urls_expire_at"}`` -- never the download urls.

    :param report_id: the report to wait for (templated; e.g. ``request.output``).
    :param org: the organization (templated); default: the connection's.
    :param poke_interval: seconds between checks.
    :param deferrable: wait in the triggerer.
    :param clarity_conn_id: the ``clarity`` connection.
    :param kwargs: the arguments of ``BaseSensorOperator`` (``timeout``, ``mode``, ``soft_fail``...).
    """

    template_fields: Sequence[str] = ("report_id", "org", "clarity_conn_id")
    ui_color = "#c9e4f2"

    def __init__(
        self,
        *,
        report_id: str,
        org: str | None = None,
        poke_interval: float = 60,
        deferrable: bool = True,
        clarity_conn_id: str = ClarityHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.report_id = report_id
        self.org = org
        self.deferrable = deferrable
        self.clarity_conn_id = clarity_conn_id

    @cached_property
    def hook(self) -> ClarityHook:
        """The Clarity hook."""
        return ClarityHook(clarity_conn_id=self.clarity_conn_id)

    def poke(self, context: Context) -> PokeReturnValue:
        """Read the report once.

        :param context: the task context.
        """
        record = self.hook.get_report(self.report_id, self.org)
        self.log.info("Clarity report %s: %s", self.report_id, record.get("reportStatus"))
        summary = check_report(record, self.report_id)
        return PokeReturnValue(is_done=summary is not None, xcom_value=summary)

    def execute(self, context: Context) -> Any:
        """Check once; when not done, defer (or poke as ``BaseSensorOperator`` does).

        :param context: the task context.
        """
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        self.defer(
            trigger=ClarityReportTrigger(
                report_id=self.report_id,
                org=self.org,
                clarity_conn_id=self.clarity_conn_id,
                poll_interval=self.poke_interval,
                end_time=time.time() + self.timeout,
            ),
            method_name="execute_complete",
            # A safety net only: the trigger's own timeout event comes first and carries a clearer message.
            timeout=timedelta(seconds=self.timeout + 2 * self.poke_interval + 60),
        )

    def execute_complete(self, context: Context, event: Any = None) -> dict[str, Any]:
        """Resume after the trigger: return the summary, or raise for failed/error/timeout/missing events.

        :param context: the task context.
        :param event: the trigger's event.
        """
        summary = summary_from_event(event, self.report_id)
        self.log.info("Clarity report %s succeeded", self.report_id)
        return summary
