"""Remember which Clarity report a task requested, outside XCom, so a retry does not spend quota again.

Airflow clears a task's XCom before a retry, and Clarity allows about 30 reports per organization per day.
The report id is therefore kept in an Airflow Variable named ``clarity_report_<hash>``, where the hash
(:func:`~airflow_provider_clarify.utils.reports.report_identity`) covers everything that defines the report.
The value is JSON: ``{"reportId": ..., "requested_at": <ISO time>}``; ``reportId`` is ``null`` when the
request's answer was lost, so the report may exist but its id is unknown (see :func:`save_ref`). Variables are
used rather than the task state store of Airflow 3.3 because they also work on 3.1/3.2 and let *another* run
asking for the same report reuse it.

Variables can only be read and written inside a task run. Remembering is best effort: a failure to read
or write is logged, never raised -- failing a task right after it spent quota would make its retry spend
quota again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

#: Variable key prefix; the rest is the first 40 hex digits of the report identity.
KEY_PREFIX = "clarity_report_"


@dataclass(frozen=True)
class ReportRef:
    """A report requested earlier.

    :param report_id: Clarity's ``reportId``; ``None`` when the request's answer was lost.
    :param requested_at: when it was requested (aware UTC).
    """

    report_id: str | None
    requested_at: datetime

    def is_fresh(self, *, now: datetime, max_age: timedelta) -> bool:
        """Whether the report is young enough to reuse.

        :param now: the current time (aware).
        :param max_age: the largest age that may be reused.
        """
        return timedelta(0) <= now - self.requested_at < max_age


def variable_key(identity: str) -> str:
    """The Variable key for a report identity.

    :param identity: the hex hash from ``report_identity``.
    """
    return KEY_PREFIX + identity[:40]


def parse_ref(value: Any) -> ReportRef | None:
    """Read a stored value; ``None`` when it is missing or not what this module writes.

    :param value: the Variable's value (JSON text or already decoded).
    """
    if value is None:
        return None
    try:
        data = json.loads(value) if isinstance(value, str) else value
        report_id = data["reportId"]
        requested_at = datetime.fromisoformat(data["requested_at"])
    except (TypeError, ValueError, KeyError):
        return None
    if report_id is not None and (not isinstance(report_id, str) or not report_id):
        return None
    if requested_at.tzinfo is None:
        return None
    return ReportRef(report_id=report_id, requested_at=requested_at.astimezone(UTC))


def load_ref(identity: str) -> ReportRef | None:
    """The report remembered for ``identity``, or ``None`` (also when the Variable cannot be read).

    :param identity: the report identity hash.
    """
    from airflow.sdk import Variable

    key = variable_key(identity)
    try:
        value = Variable.get(key, default=None)
    except Exception as exc:  # best effort, see the module docstring
        log.warning(
            "Could not read Variable %s to reuse a Clarity report (%s: %s)", key, type(exc).__name__, exc
        )
        return None
    return parse_ref(value)


def save_ref(identity: str, report_id: str | None, *, requested_at: datetime, description: str) -> bool:
    """Remember a report id for ``identity``.

    :param identity: the report identity hash.
    :param report_id: the new report's id; ``None`` records that a request was sent whose answer was lost.
    :param requested_at: when it was requested (aware).
    :param description: a human description of the report, shown with the Variable in the UI.
    :return: whether it was stored.
    """
    from airflow.sdk import Variable

    key = variable_key(identity)
    value = json.dumps({"reportId": report_id, "requested_at": requested_at.astimezone(UTC).isoformat()})
    try:
        Variable.set(key, value, description=description)
    except Exception as exc:  # best effort, see the module docstring
        log.warning(
            "Could not remember Clarity report %s in Variable %s (%s: %s); a retry may request it again",
            report_id or "(answer lost)",
            key,
            type(exc).__name__,
            exc,
        )
        return False
    return True
