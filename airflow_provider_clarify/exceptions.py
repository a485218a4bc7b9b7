"""Exceptions raised for service errors. Bad input raises :class:`ValueError` instead, before any request."""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException


class ClarifyRPCError(AirflowException):
    """Clarify answered a JSON-RPC request with an ``error`` object (or the transport failed for good).

    :param code: JSON-RPC error code (e.g. ``-32602``), or the HTTP status when the failure was at HTTP level.
    :param message: the error message from Clarify.
    :param params: ``error.data.params``: parameter path -> list of problems.
    :param trace: ``error.data.trace``, the id Clarify support asks for.
    :param method: the JSON-RPC method that failed.
    :param retry_after: seconds the server asked to wait (HTTP ``Retry-After``), if it said so.
    """

    def __init__(
        self,
        *,
        code: int,
        message: str,
        params: dict[str, Any] | None = None,
        trace: str | None = None,
        method: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.retry_after = retry_after
        self.message = message
        self.params = params or {}
        self.trace = trace
        self.method = method
        text = f"Clarify {method or 'RPC'} failed with code {code}: {message}"
        if self.params:
            text += f"; params: {self.params}"
        if trace:
            text += f" (trace {trace})"
        super().__init__(text)


class ClarityAPIError(AirflowException):
    """The Clarity API answered with an HTTP error.

    :param status: HTTP status code.
    :param message: the message from the response body (Clarity sends ``{"message": [...]}``).
    :param url: the request URL without query string (never a pre-signed URL's signature).
    """

    def __init__(self, *, status: int, message: str, url: str | None = None) -> None:
        self.status = status
        self.message = message
        self.url = url
        where = f" for {url}" if url else ""
        super().__init__(f"Clarity API returned HTTP {status}{where}: {message}")


class ClarityQuotaExceededError(ClarityAPIError):
    """HTTP 429 on a report request: the organization's daily report quota (about 30) is spent."""


class ClarityReportRequestUncertainError(AirflowFailException):
    """A report request may have reached Clarity, but its answer was lost, so its report id is unknown.

    Clarity may have created the report and spent one unit of the organization's daily quota. It has no
    endpoint to list reports, so the report cannot be found, and the request is not sent again: that could
    spend the quota twice. A task retry cannot help either, so this fails the task at once.

    :param cause: what happened to the answer (exception type and message, secrets removed).
    :param url: the request URL.
    :param advice: what the user can do next, appended to the message.
    """

    def __init__(self, *, cause: str, url: str, advice: str = "") -> None:
        self.cause = cause
        self.url = url
        text = (
            f"The Clarity report request to {url} may have created a report, but its answer was lost "
            f"({cause}), so the report id is unknown. It was not sent again, because that could spend a "
            "second unit of the daily report quota."
        )
        super().__init__(f"{text} {advice}" if advice else text)


class ClarityReportFailedError(AirflowException):
    """A Clarity report ended with ``reportStatus: failed``.

    :param report_id: the report id.
    :param message: Clarity's ``message`` for the failure.
    """

    def __init__(self, *, report_id: str, message: str) -> None:
        self.report_id = report_id
        self.message = message
        super().__init__(f"Clarity report {report_id} failed: {message}")
