"""Hooks for the Clarity (clarity.io) Data API v2: historical reports and their files, recent measurements.

:class:`ClarityHook` (requests) requests reports, reads them and streams their files, and reads recent
measurements (no quota) with their continuation tokens, which are registered with the secrets masker;
:class:`ClarityAsyncHook` (aiohttp) reads reports from a trigger. Both take the connection ``clarity``
(SPEC §2): host = API URL (default ``https://clarity-data-api.clarity.io``), password = API key (header
``x-api-key``), login or extra ``org`` = default organization, extra ``timeout`` = seconds per request.

The API key goes only to the API host. Report files are downloaded from pre-signed object-store URLs with a
separate session that never carries the key, and with redirects off on the API session so the key cannot
follow a redirect elsewhere. Pre-signed URL signatures are registered with Airflow's secrets masker and only
URLs without query string are logged.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import aiohttp
import requests
import urllib3
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.providers.common.compat.sdk import AirflowException, BaseHook, mask_secret

from airflow_provider_clarify.exceptions import (
    ClarityAPIError,
    ClarityQuotaExceededError,
    ClarityReportFailedError,
    ClarityReportRequestUncertainError,
)
from airflow_provider_clarify.utils.forms import connection_form_widgets, ui_field_behaviour
from airflow_provider_clarify.utils.reports import (
    build_report_request,
    detect_file_kind,
    report_outcome,
)
from airflow_provider_clarify.utils.retries import (
    is_aiohttp_transient,
    is_requests_transient,
    is_retryable_status,
    is_unreceived,
    retrying,
    wait_retry_after_or_backoff,
)
from airflow_provider_clarify.utils.urls import join_url, strip_query, validate_base_url

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Mapping

    from airflow.sdk import Connection

    from airflow_provider_clarify.utils.recent import RecentAnswer

DEFAULT_HOST = "https://clarity-data-api.clarity.io"
DEFAULT_TIMEOUT = 30.0
#: How many times one file's download re-reads the report for fresh urls after an HTTP 403 (expired url).
MAX_URL_REFRESHES = 2
#: How many times one file's download resumes after the connection broke off (or the body ended early).
MAX_RESUMES = 3
#: Refresh urls before opening a file when they expire within this margin.
URL_EXPIRY_MARGIN = timedelta(seconds=30)
_CHUNK = 1024 * 1024
REPORT_REQUESTS_PATH = "/v2/report-requests"
_QUOTA_MESSAGE = (
    "Clarity's report quota is spent (HTTP 429): about 30 historical reports per organization per day, "
    "shared by every caller in org {org!r}. Not retried. Reuse an existing report id or wait for the quota "
    "to reset"
)
#: Query parameters of pre-signed URLs that are (part of) a credential.
_SIGNED_PARAM_HINTS = ("signature", "credential", "token", "key", "sig", "policy")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaritySettings:
    """The parts of a ``clarity`` connection the hooks use.

    :param conn_id: the connection id.
    :param base_url: the API base URL, without trailing slash.
    :param api_key: the API key (not shown in ``repr``).
    :param org: the default organization, if the connection names one.
    :param timeout: seconds per HTTP request.
    """

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    org: str | None
    timeout: float

    def resolve_org(self, org: str | None) -> str:
        """The organization to use: ``org`` when given, else the connection's default.

        :param org: the organization asked for, or ``None``.
        :raises ValueError: when neither is set.
        """
        chosen = org or self.org
        if not chosen:
            raise ValueError(
                f"org: not given, and connection {self.conn_id!r} has no default org (login or extra 'org')"
            )
        return chosen


def settings_from_connection(
    conn_id: str, *, host: str | None, login: str | None, password: str | None, extra: Mapping[str, Any]
) -> ClaritySettings:
    """Read and check a ``clarity`` connection.

    :param conn_id: the connection id (named in errors).
    :param host: the API URL (``https://`` is assumed when no scheme is given); empty means the default.
    :param login: the default organization (extra ``org`` wins over it).
    :param password: the API key.
    :param extra: the connection's extra.
    :raises ValueError: naming the connection and field that is wrong.
    """
    url = (host or "").strip() or DEFAULT_HOST
    if "://" not in url:
        url = "https://" + url
    base_url = validate_base_url(url, field="host", conn_id=conn_id).rstrip("/")
    if not password:
        raise ValueError(f"connection {conn_id!r} field 'password': the Clarity API key is missing")
    org = extra.get("org") or login or None
    raw_timeout = extra.get("timeout")
    try:
        timeout = DEFAULT_TIMEOUT if raw_timeout in (None, "") else float(raw_timeout)
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise ValueError(f"connection {conn_id!r} extra 'timeout': expected a positive number of seconds")
    return ClaritySettings(
        conn_id=conn_id,
        base_url=base_url,
        api_key=password,
        org=str(org).strip() if org else None,
        timeout=timeout,
    )


def api_error(
    status: int, body: bytes, url: str, *, org: str | None = None, quota: bool = False
) -> ClarityAPIError:
    """The exception for an HTTP error answer of the Clarity API.

    :param status: the HTTP status.
    :param body: the response body (Clarity sends ``{"message": [...]}``).
    :param url: the request URL (its query string is dropped).
    :param org: the organization, for the quota message.
    :param quota: whether a 429 here means the daily report quota (report requests).
    """
    message = body[:500].decode("utf-8", "replace").strip()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("message"):
        text = data["message"]
        message = "; ".join(str(m) for m in text) if isinstance(text, list) else str(text)
    if status == 429 and quota:
        full = _QUOTA_MESSAGE.format(org=org) + (f". Clarity said: {message}" if message else "")
        return ClarityQuotaExceededError(status=status, message=full, url=strip_query(url))
    return ClarityAPIError(status=status, message=message or "(no message)", url=strip_query(url))


def is_transient(exc: BaseException) -> bool:
    """Whether a failed Clarity call is worth another try: a transport failure or a retryable HTTP status.

    The report quota (429 on a report request) is never transient.

    :param exc: the exception of the failed call (requests, aiohttp or :class:`ClarityAPIError`).
    """
    if isinstance(exc, ClarityQuotaExceededError):
        return False
    if isinstance(exc, ClarityAPIError):
        return is_retryable_status(exc.status)
    return is_requests_transient(exc) or is_aiohttp_transient(exc)


def is_report_request_retryable(exc: BaseException) -> bool:
    """Whether a failed report request may be sent again: it is transient *and* certainly did not reach
    Clarity. A report request spends quota, so a request that may have arrived is never repeated.

    :param exc: the exception of the failed attempt.
    """
    return is_transient(exc) and is_unreceived(exc)


def may_have_created_report(exc: BaseException) -> bool:
    """Whether a failed report request may still have created a report: the request may have arrived and
    the answer says neither yes nor no (lost, cut short, a 2xx without a report id, 500/502/504).

    :param exc: the exception the report request ended with.
    """
    if isinstance(exc, ClarityAPIError):
        return (exc.status < 300 or exc.status >= 500) and not is_unreceived(exc)
    return isinstance(exc, requests.RequestException) and not is_unreceived(exc)


def mask_presigned_url(url: str) -> None:
    """Register the credential parts of a pre-signed URL with the secrets masker.

    :param url: the pre-signed URL.
    """
    query = urlsplit(url).query
    if not query:
        return
    mask_secret(query)
    for name, value in parse_qsl(query, keep_blank_values=True):
        if len(value) >= 5 and any(hint in name.lower() for hint in _SIGNED_PARAM_HINTS):
            mask_secret(value)
            if quote(value, safe="") != value:
                mask_secret(quote(value, safe=""))


def report_file_name(url: str, index: int) -> str:
    """The file name of a report file: the last segment of its url path, made safe to use as a file name.

    Separators (``/``, ``\\``, also when percent-encoded) and control characters become ``_``, so a name can
    never point outside the folder it is written to; an empty, ``.`` or ``..`` name becomes
    ``report-part-<index>``.

    :param url: the pre-signed url.
    :param index: the file's position in the report's ``urls``.
    """
    raw = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = "".join("_" if ch in "/\\" or ord(ch) < 32 or ch == "\x7f" else ch for ch in raw).strip()
    return name if name.strip(".") else f"report-part-{index}"


def _http_date(value: str | None) -> datetime | None:
    """An HTTP ``Date`` header as an aware UTC datetime, or ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Answer:
    """A successful (2xx) API answer, read completely."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    url: str


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


#: Exceptions of a download that broke off after its start (the rest can be fetched again).
_BROKEN_DOWNLOAD = (
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.IncompleteRead,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,
)


class _ResumableBody(io.RawIOBase):
    """The undecoded body of one report file, read from a streamed response.

    When the connection breaks off, or the body ends before its ``Content-Length``, the file is opened again
    (``reopen(offset)``: fresh urls on HTTP 403, ``Range`` from the offset) and reading goes on where it
    stopped, up to ``attempts`` times. A store that ignores ``Range`` answers 200 with the whole file: the
    bytes already delivered are then skipped. An ``ETag`` that changed between attempts fails the download:
    the pieces would not belong to the same file.
    """

    def __init__(
        self,
        response: requests.Response,
        *,
        reopen: Callable[[int], requests.Response],
        name: str,
        size: int | None,
        attempts: int,
    ) -> None:
        super().__init__()
        self._response = response
        self._reopen = reopen
        self._name = name
        self._size = size
        self._attempts_left = attempts
        self._etag = response.headers.get("ETag")
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            try:
                data = self._response.raw.read(len(view), decode_content=False)
            except _BROKEN_DOWNLOAD as exc:
                self._resume(f"{type(exc).__name__}: {exc}")
                continue
            if not data and self._size is not None and self._position < self._size and len(view):
                self._resume("the body ended early")
                continue
            view[: len(data)] = data
            self._position += len(data)
            return len(data)

    def _resume(self, why: str) -> None:
        where = f"at byte {self._position}" + (f" of {self._size}" if self._size is not None else "")
        if self._attempts_left <= 0:
            raise AirflowException(f"Download of report file {self._name} broke off {where}: {why}")
        self._attempts_left -= 1
        log.warning("Download of report file %s broke off %s (%s); resuming", self._name, where, why)
        self._response.close()
        response = self._reopen(self._position)
        etag = response.headers.get("ETag")
        if self._etag and etag and etag != self._etag:
            response.close()
            raise AirflowException(f"Report file {self._name} changed while it was downloaded (ETag)")
        if response.status_code != 206:  # the whole file again: skip what was delivered
            skip = self._position
            while skip:
                chunk = response.raw.read(min(skip, _CHUNK), decode_content=False)
                if not chunk:
                    break  # shorter than before: the read loop resumes again (or gives up)
                skip -= len(chunk)
        self._response = response

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()


@dataclass
class ReportFile:
    """One file of a report, opened for streaming. The bytes are exactly those the store holds: a gzip file
    stays gzip even when it is served with ``Content-Encoding: gzip``.

    :param index: position in the report's ``urls``.
    :param name: the file name from the url path (e.g. ``JBZZ6FQ8XX.csv.gz``).
    :param kind: what the magic bytes say: ``gzip``, ``parquet`` or ``text``.
    :param stream: a buffered binary stream of the stored bytes; closed when the iteration moves on.
    :param content_encoding: the ``Content-Encoding`` the store declared (not applied).
    :param size: the ``Content-Length`` in bytes, when the store sent one.
    """

    index: int
    name: str
    kind: Literal["gzip", "parquet", "text"]
    stream: BinaryIO
    content_encoding: str | None = None
    size: int | None = None


class ClarityHook(BaseHook):
    """Synchronous client of the Clarity Data API v2 (reports and recent measurements).

    :param clarity_conn_id: the ``clarity`` connection.
    :param retry_attempts: tries per HTTP call for connection errors, time-outs and 5xx (1 = no retry).
    :param retry_backoff: the first backoff in seconds; it doubles per retry, with jitter, up to 60 s.
    """

    conn_name_attr = "clarity_conn_id"
    default_conn_name = "clarity_default"
    conn_type = "clarity"
    hook_name = "Clarity"

    def __init__(
        self,
        clarity_conn_id: str = default_conn_name,
        *,
        retry_attempts: int = 5,
        retry_backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.clarity_conn_id = clarity_conn_id
        self.retry_attempts = retry_attempts
        self.retry_backoff = retry_backoff
        #: Server clock minus local clock, from the ``Date`` of the latest answer (see :meth:`server_time`).
        self._server_offset = timedelta(0)

    # -- connection form (Airflow 3.1; 3.2+ reads the same form from the provider info) --------------------
    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the ``clarity`` connection form (from ``CONNECTION_FORMS``)."""
        return connection_form_widgets(cls.conn_type)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields of the ``clarity`` connection form."""
        return ui_field_behaviour(cls.conn_type)

    # -- connection and sessions --------------------------------------------------------------------------
    @cached_property
    def settings(self) -> ClaritySettings:
        """The connection's settings (read once; the API key is registered with the secrets masker)."""
        conn = self.get_connection(self.clarity_conn_id)
        settings = settings_from_connection(
            self.clarity_conn_id,
            host=conn.host,
            login=conn.login,
            password=conn.password,
            extra=conn.extra_dejson,
        )
        mask_secret(settings.api_key)
        return settings

    @property
    def base_url(self) -> str:
        """The API base URL (no trailing slash)."""
        return self.settings.base_url

    @property
    def default_org(self) -> str | None:
        """The connection's default organization."""
        return self.settings.org

    def _org(self, org: str | None) -> str:
        return self.settings.resolve_org(org)

    @cached_property
    def _api_session(self) -> requests.Session:
        session = requests.Session()
        session.headers.update({"Accept": "application/json", "Accept-Encoding": "gzip"})
        return session

    @cached_property
    def _download_session(self) -> requests.Session:
        # Never carries x-api-key: the pre-signed URLs point at another host. "identity" asks the store not to
        # compress on the fly, so the bytes read are the bytes stored.
        session = requests.Session()
        session.headers.update({"Accept-Encoding": "identity"})
        return session

    def _retrying(
        self,
        what: str,
        attempts: int | None = None,
        retry_if: Callable[[BaseException], bool] = is_transient,
    ) -> Any:
        return retrying(
            retry_if,
            attempts=attempts or self.retry_attempts,
            wait=wait_retry_after_or_backoff(initial=self.retry_backoff, maximum=60.0),
            logger=log,
            what=what,
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        attempts: int | None = None,
        quota: bool = False,
        headers: Mapping[str, str] | None = None,
        retry_if: Callable[[BaseException], bool] = is_transient,
    ) -> _Answer:
        """Send one API call (retried while ``retry_if`` says so); return the 2xx answer, else raise
        ``api_error``."""
        settings = self.settings
        url = join_url(settings.base_url, path)

        def once() -> _Answer:
            response = self._api_session.request(
                method,
                url,
                params=params,
                json=body,
                headers={**(headers or {}), "x-api-key": settings.api_key},
                timeout=settings.timeout,
                allow_redirects=False,
            )
            with response:
                self._note_server_time(response.headers.get("Date"))
                if response.status_code >= 300:
                    org = (body or {}).get("org") if isinstance(body, dict) else None
                    raise api_error(response.status_code, response.content, url, org=org, quota=quota)
                return _Answer(response.status_code, response.headers, response.content, url)

        answer: _Answer = self._retrying(f"Clarity {method} {path}", attempts, retry_if)(once)
        return answer

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        attempts: int | None = None,
    ) -> Any:
        answer = self._request(method, path, params=params, body=body, attempts=attempts)
        try:
            return json.loads(answer.content)
        except ValueError:
            raise ClarityAPIError(
                status=answer.status, message="the response is not JSON", url=answer.url
            ) from None

    def _note_server_time(self, date: str | None) -> None:
        moment = _http_date(date)
        if moment is not None:
            self._server_offset = moment - datetime.now(UTC)

    def server_time(self) -> datetime:
        """The Clarity server's current time, estimated from the ``Date`` header of its latest answer to
        this hook (to the second); the local clock until there was one. Cache windows and token lifetimes
        are the server's, so decisions about them use its clock, not the worker's.
        """
        return datetime.now(UTC) + self._server_offset

    # -- reports ------------------------------------------------------------------------------------------
    def submit_report_request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Send a report request body as built by ``build_report_request`` and return the new report record.

        :param body: the body from :func:`~airflow_provider_clarify.utils.reports.build_report_request`.
        :raises ClarityQuotaExceededError: on HTTP 429 (the daily quota), at once, without retrying.
        :raises ClarityReportRequestUncertainError: when the request may have created a report but its answer
            was lost. Only failures that prove the request never reached Clarity (connection refused, connect
            time-out, HTTP 408/425/503) are retried.
        """
        url = join_url(self.settings.base_url, REPORT_REQUESTS_PATH)
        try:
            answer = self._request(
                "POST",
                REPORT_REQUESTS_PATH,
                body=dict(body),
                quota=True,
                retry_if=is_report_request_retryable,
            )
            try:
                record = json.loads(answer.content)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("reportId"), str):
                raise ClarityAPIError(
                    status=answer.status, message="the report request answer has no reportId", url=url
                )
        except (requests.RequestException, ClarityAPIError) as exc:
            if may_have_created_report(exc):
                raise ClarityReportRequestUncertainError(
                    cause=f"{type(exc).__name__}: {exc}", url=strip_query(url)
                ) from exc
            raise
        self.log.info(
            "Requested Clarity report %s: %s, %s, %s .. %s (status %s)",
            record["reportId"],
            body.get("report"),
            body.get("outputFrequency"),
            body.get("startTime"),
            body.get("endTime"),
            record.get("reportStatus"),
        )
        return record

    def request_report(
        self,
        *,
        output_frequency: str,
        start_time: datetime | str,
        end_time: datetime | str,
        report: str = "datasource-measurements",
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
    ) -> dict[str, Any]:
        """Validate and request a historical report; returns the new report record (``reportId``...).

        Every argument is checked before anything is sent (see ``build_report_request``); times may be ISO
        strings or datetimes (pendulum included) and are sent as UTC ``...T00:00:00.000Z``.

        :param output_frequency: ``minute``, ``hour`` or ``day``.
        :param start_time: first time included.
        :param end_time: first time excluded.
        :param report: ``datasource-measurements``, ``node-measurements`` or ``reference-site-measurements``.
        :param datasource_ids: datasource ids (datasource report).
        :param all_datasources: every datasource of the org instead of ``datasource_ids``.
        :param node_ids: node ids (node report).
        :param ref_site_ids: reference site ids (reference-site report).
        :param org: the organization; default: the connection's.
        :param metric_label_style: ``canonical``, ``english`` or ``legacy``.
        :param file_format: ``csv`` or ``parquet``.
        :param metric_select: Clarity's metric filter.
        :param qc_assessment: add ``qcAssessment`` columns.
        :param qc_flags: add ``qcFlags`` columns.
        :raises ValueError: on bad input, before any request.
        :raises ClarityQuotaExceededError: on HTTP 429, at once.
        :raises ClarityReportRequestUncertainError: when a report may exist but its answer was lost.
        """
        body = build_report_request(
            org=self._org(org),
            report=report,
            output_frequency=output_frequency,
            start=start_time,
            end=end_time,
            datasource_ids=datasource_ids,
            all_datasources=all_datasources,
            node_ids=node_ids,
            ref_site_ids=ref_site_ids,
            metric_label_style=metric_label_style,
            file_format=file_format,
            metric_select=metric_select,
            qc_assessment=qc_assessment,
            qc_flags=qc_flags,
        )
        return self.submit_report_request(body)

    def get_report(self, report_id: str, org: str | None = None) -> dict[str, Any]:
        """Read a report record (status, message, urls, urlsExpireAt).

        Uses the documented ``GET /v2/report-request/<id>`` and falls back to the plural path, which other
        clients use, on HTTP 404. The signatures of the record's pre-signed urls are registered with the
        secrets masker.

        :param report_id: the report id.
        :param org: the organization; default: the connection's.
        """
        if not isinstance(report_id, str) or not report_id.strip():
            raise ValueError(f"report_id: expected a non-empty report id, got {report_id!r}")
        params = {"org": self._org(org)}
        try:
            record = self._call(
                "GET", f"/v2/report-request/{quote(report_id.strip(), safe='')}", params=params
            )
        except ClarityAPIError as exc:
            if exc.status != 404:
                raise
            record = self._call(
                "GET", f"/v2/report-requests/{quote(report_id.strip(), safe='')}", params=params
            )
        if not isinstance(record, dict):
            raise ClarityAPIError(status=200, message="the report answer is not a JSON object")
        for url in record.get("urls") or []:
            if isinstance(url, str):
                mask_presigned_url(url)
        return record

    def _succeeded_record(self, report_id: str, org: str | None) -> dict[str, Any]:
        record = self.get_report(report_id, org)
        outcome = report_outcome(record)
        if outcome.state == "failed":
            raise ClarityReportFailedError(report_id=report_id, message=outcome.message)
        if outcome.state != "succeeded":
            raise AirflowException(f"Clarity report {report_id} has no files to download: {outcome.message}")
        return record

    def _open_download(self, url: str, start: int = 0) -> requests.Response:
        settings = self.settings
        headers = {"Range": f"bytes={start}-"} if start else None

        def once() -> requests.Response:
            response = self._download_session.get(url, stream=True, timeout=settings.timeout, headers=headers)
            if response.status_code >= 300:
                body = response.raw.read(2000, decode_content=False) or b""
                response.close()
                raise api_error(response.status_code, body, url)
            return response

        return self._retrying(f"download {strip_query(url)}")(once)

    def open_report_files(self, report_id: str, org: str | None = None) -> Generator[ReportFile, None, None]:
        """Open the files of a succeeded report one after the other, streaming.

        Each :class:`ReportFile` streams the bytes exactly as stored (gzip stays gzip; ``kind`` tells from the
        magic bytes). A file's stream is closed when the iteration moves to the next one. When the store
        answers HTTP 403 (an expired pre-signed url), the report is read again for fresh urls and the file is
        opened again, up to :data:`MAX_URL_REFRESHES` times; urls about to expire are renewed before use.
        Connection errors, time-outs and 5xx are retried with backoff, and a download that breaks off in the
        middle resumes where it stopped, up to :data:`MAX_RESUMES` times.

        :param report_id: the report id.
        :param org: the organization; default: the connection's.
        :raises ClarityReportFailedError: when the report failed.
        :raises AirflowException: when it is not (yet) succeeded or has no urls.
        """
        state = {"record": self._succeeded_record(report_id, org)}
        count = len(state["record"]["urls"])
        self.log.info("Clarity report %s has %d file(s)", report_id, count)
        for index in range(count):

            def open_at(start: int, index: int = index) -> requests.Response:
                state["record"], response = self._open_file(report_id, org, index, state["record"], start)
                return response

            response = open_at(0)
            report_file = self._report_file(index, state["record"]["urls"][index], response, open_at)
            try:
                yield report_file
            finally:
                report_file.stream.close()

    def _open_file(
        self, report_id: str, org: str | None, index: int, record: dict[str, Any], start: int
    ) -> tuple[dict[str, Any], requests.Response]:
        """Open one file of the report from byte ``start``; returns the (maybe re-read) record too."""
        count = len(record["urls"])
        expires = _parse_time(record.get("urlsExpireAt"))
        if expires is not None and expires - URL_EXPIRY_MARGIN <= datetime.now(UTC):
            self.log.info("Download urls of report %s expire at %s; reading fresh ones", report_id, expires)
            record = self._fresh_record(report_id, org, count)
        for refreshes in range(MAX_URL_REFRESHES + 1):
            url = record["urls"][index]
            try:
                return record, self._open_download(url, start)
            except ClarityAPIError as exc:
                if exc.status != 403 or refreshes == MAX_URL_REFRESHES:
                    raise
                self.log.warning(
                    "Download of %s refused (HTTP 403, expired url); reading report %s for fresh urls",
                    strip_query(url),
                    report_id,
                )
                record = self._fresh_record(report_id, org, count)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _fresh_record(self, report_id: str, org: str | None, count: int) -> dict[str, Any]:
        record = self._succeeded_record(report_id, org)
        if len(record["urls"]) != count:
            raise AirflowException(
                f"Clarity report {report_id} now has {len(record['urls'])} file(s) instead of {count}"
            )
        return record

    def _report_file(
        self,
        index: int,
        url: str,
        response: requests.Response,
        reopen: Callable[[int], requests.Response],
    ) -> ReportFile:
        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        name = report_file_name(url, index)
        body = _ResumableBody(response, reopen=reopen, name=name, size=size, attempts=MAX_RESUMES)
        stream = io.BufferedReader(body, buffer_size=_CHUNK)
        try:
            head = stream.peek(4)[:4]
        except BaseException:
            stream.close()
            raise
        self.log.info("Streaming file %d of the report from %s", index, strip_query(url))
        return ReportFile(
            index=index,
            name=name,
            kind=detect_file_kind(head),
            stream=stream,
            content_encoding=response.headers.get("Content-Encoding"),
            size=size,
        )

    def download_report(
        self, report_id: str, destination: str | os.PathLike[str], org: str | None = None
    ) -> list[Path]:
        """Download every file of a succeeded report into a local folder, byte for byte as stored.

        Each file is written to a temporary name and renamed when complete. Repeated file names get their
        index as prefix.

        :param report_id: the report id.
        :param destination: the folder (created when missing).
        :param org: the organization; default: the connection's.
        :return: the written paths, in ``urls`` order.
        """
        folder = Path(destination)
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for report_file in self.open_report_files(report_id, org):
            name = report_file.name
            if any(path.name == name for path in written):
                name = f"{report_file.index}-{name}"
            target = folder / name
            handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(handle, "wb") as out, report_file.stream as source:
                    shutil.copyfileobj(source, out, _CHUNK)
                os.replace(temp, target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            written.append(target)
        return written

    # -- recent measurements (no report quota) ------------------------------------------------------------
    def query_recent_measurements(
        self,
        *,
        datasource_ids: list[str] | None = None,
        all_datasources: bool = False,
        output_frequency: str = "minute",
        response_format: str = "json-long",
        start_time: datetime | str | None = None,
        metric_select: str | None = None,
        qc_assessment: bool = False,
        qc_flags: bool = False,
        continuation: bool = True,
        org: str | None = None,
    ) -> RecentAnswer:
        """Read recent measurements of datasources from Clarity's cache (no report quota is spent).

        ``POST /v2/recent-datasource-measurements-query``. The cache reaches 24 h back for minute data, 48 h
        for hourly and 10 days for daily data; there is no end time. With ``continuation`` the answer
        carries a token (:attr:`RecentAnswer.token`, registered with the secrets masker) for
        :meth:`continue_recent_measurements`. Sent with ``Accept-Encoding: gzip``; retried like every call.

        :param datasource_ids: the datasources (unless ``all_datasources``).
        :param all_datasources: every datasource of the org.
        :param output_frequency: ``minute``, ``hour`` or ``day``.
        :param response_format: ``json-long`` (entries in :attr:`RecentAnswer.rows`) or ``csv-wide`` (the
            report layout, in :attr:`RecentAnswer.csv`).
        :param start_time: the earliest measurement time wanted; ``None`` for all the cache holds.
        :param metric_select: Clarity's metric filter.
        :param qc_assessment: add each value's ``qcAssessment``.
        :param qc_flags: add each value's ``qcFlags``.
        :param continuation: ask for a continuation token.
        :param org: the organization; default: the connection's.
        :raises ValueError: on bad input, before any request.
        :raises ClarityAPIError: when Clarity refuses the query or its answer is malformed.
        """
        from airflow_provider_clarify.utils.recent import QUERY_PATH, build_recent_query  # see _recent

        body = build_recent_query(
            org=self._org(org),
            datasource_ids=datasource_ids,
            all_datasources=all_datasources,
            output_frequency=output_frequency,
            response_format=response_format,
            start_time=start_time,
            metric_select=metric_select,
            qc_assessment=qc_assessment,
            qc_flags=qc_flags,
            continuation=continuation,
        )
        what = "all datasources" if all_datasources else f"{len(body['datasourceIds'])} datasource(s)"
        self.log.info(
            "Querying Clarity recent measurements: %s, %s, %s, from %s",
            what,
            output_frequency,
            response_format,
            body.get("startTime", "the start of the cache"),
        )
        return self._recent(QUERY_PATH, body)

    def continue_recent_measurements(self, token: str, *, org: str | None = None) -> RecentAnswer:
        """Read what became available since the answer that issued ``token``.

        ``POST /v2/recent-datasource-measurements-continuation``. The answer has the query's format and a
        new token; a token is valid 24 h after it was issued. Whether an already used token keeps working
        is unconfirmed: use the newest one. An invalid, used or expired token raises
        :class:`ClarityAPIError` (HTTP 4xx); start again with :meth:`query_recent_measurements`.

        :param token: the token of the previous answer (registered with the secrets masker).
        :param org: the organization; default: the connection's.
        :raises ValueError: when ``token`` is empty, before any request.
        """
        from airflow_provider_clarify.utils.recent import CONTINUATION_PATH  # see _recent

        if not isinstance(token, str) or not token.strip():
            raise ValueError("token: expected the continuation token of an earlier answer")
        mask_secret(token.strip())
        self.log.info("Continuing Clarity recent measurements")
        return self._recent(CONTINUATION_PATH, {"org": self._org(org), "continuationToken": token.strip()})

    def _recent(self, path: str, body: dict[str, Any]) -> RecentAnswer:
        # utils.recent brings numpy and pyarrow (~200 ms): imported on first use, not with this module, which
        # the triggerer loads (for ClarityAsyncHook) inside its event loop.
        from airflow_provider_clarify.utils.recent import TOKEN_HEADER, parse_recent_answer

        # No quota here: a 429 is a rate limit, retried with Retry-After.
        answer = self._request("POST", path, body=body, headers={"Accept": "application/json, text/csv"})
        token = answer.headers.get(TOKEN_HEADER)
        if token:
            mask_secret(token)
        try:
            recent = parse_recent_answer(
                answer.content,
                content_type=answer.headers.get("Content-Type"),
                token=token,
                server_time=_http_date(answer.headers.get("Date")),
            )
        except ValueError as exc:
            raise ClarityAPIError(status=answer.status, message=str(exc), url=answer.url) from None
        size = (
            f"{len(recent.rows)} entries"
            if recent.response_format == "json-long"
            else f"{len(recent.csv)} bytes"
        )
        self.log.info(
            "Clarity answered %s (%s)%s",
            recent.response_format,
            size,
            "" if recent.token else " without a continuation token",
        )
        return recent

    def test_connection(self) -> tuple[bool, str]:
        """Check the connection with one cheap read (``GET /v2/datasources?org=``); never raises."""
        try:
            org = self._org(None)
            # One attempt: a connection test in the UI should answer quickly.
            answer = self._call("GET", "/v2/datasources", params={"org": org}, attempts=1)
            count = len(answer.get("datasources") or []) if isinstance(answer, dict) else 0
            return True, f"Connected to Clarity at {self.base_url}; org {org!r} has {count} datasource(s)"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"


class ClarityAsyncHook(BaseHook):
    """Asynchronous reads of Clarity reports, for triggers.

    The connection is resolved the async-safe way (``get_async_connection``); the caller owns the
    ``aiohttp`` session (one per trigger run, see :meth:`session`). Calls are single attempts: the
    trigger decides about retries, because it knows its deadline. ``aiohttp`` is imported with this module
    (the triggerer loads the trigger class once), not on the first session, where its ~110 ms would stall
    the triggerer's event loop while other triggers poll.

    :param clarity_conn_id: the ``clarity`` connection.
    """

    conn_name_attr = "clarity_conn_id"
    default_conn_name = "clarity_default"
    conn_type = "clarity"
    hook_name = "Clarity (async)"

    def __init__(self, clarity_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.clarity_conn_id = clarity_conn_id
        self._settings: ClaritySettings | None = None

    async def get_settings(self) -> ClaritySettings:
        """The connection's settings, looked up once without blocking the event loop."""
        if self._settings is None:
            conn: Connection = await get_async_connection(self.clarity_conn_id, hook=self)
            extra = await get_async_extra_dejson(conn)
            self._settings = settings_from_connection(
                self.clarity_conn_id, host=conn.host, login=conn.login, password=conn.password, extra=extra
            )
        return self._settings

    async def session(self) -> aiohttp.ClientSession:
        """A new ``aiohttp`` session with the connection's time-out; close it when done (``async with``)."""
        settings = await self.get_settings()
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
            headers={"Accept": "application/json"},
        )

    async def _get(self, session: aiohttp.ClientSession, path: str, params: dict[str, str]) -> Any:
        settings = await self.get_settings()
        url = join_url(settings.base_url, path)
        async with session.get(
            url, params=params, headers={"x-api-key": settings.api_key}, allow_redirects=False
        ) as response:
            body = await response.read()
            if response.status >= 300:
                raise api_error(response.status, body, url)
            try:
                return json.loads(body)
            except ValueError:
                raise ClarityAPIError(
                    status=response.status, message="the response is not JSON", url=url
                ) from None

    async def get_report(
        self, session: aiohttp.ClientSession, report_id: str, org: str | None = None
    ) -> dict[str, Any]:
        """Read a report record once (documented singular path, plural on HTTP 404).

        :param session: the caller's aiohttp session (from :meth:`session`).
        :param report_id: the report id.
        :param org: the organization; default: the connection's.
        """
        settings = await self.get_settings()
        chosen = settings.resolve_org(org)
        quoted = quote(report_id, safe="")
        try:
            record = await self._get(session, f"/v2/report-request/{quoted}", {"org": chosen})
        except ClarityAPIError as exc:
            if exc.status != 404:
                raise
            record = await self._get(session, f"/v2/report-requests/{quoted}", {"org": chosen})
        if not isinstance(record, dict):
            raise ClarityAPIError(status=200, message="the report answer is not a JSON object")
        return record
