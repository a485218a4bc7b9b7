"""Operator that streams a finished Clarity report into Clarify signals.

The pipeline is streamed end to end, so memory follows the batch and buffer sizes, never the report:
each report file is downloaded as a stream (:meth:`ClarityHook.open_report_files`, fresh urls when they
expire), parsed incrementally with Arrow (:class:`~.utils.report_parsing.ReportParser`: gzip CSV, CSV or
Parquet), re-cut into frames that fill requests (:func:`~.utils.coalesce.coalesce_frames`) and inserted
(:meth:`ClarifyHook.insert_frames`: byte budget per request, pacing, retries). Signal metadata (name, unit,
labels, sample interval) is saved afterwards from what the report said about each signal.

Running the transfer again is safe: Clarify keeps one value per signal and time, so the same points are
stored once, and the report is only read, never requested.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import requests
from airflow.providers.common.compat.sdk import AirflowException, BaseOperator

from airflow_provider_clarify.hooks.clarify import ClarifyHook
from airflow_provider_clarify.hooks.clarity import ClarityHook
from airflow_provider_clarify.sensors.clarity import check_report
from airflow_provider_clarify.utils.coalesce import coalesce_frames
from airflow_provider_clarify.utils.metrics import SAMPLE_INTERVALS
from airflow_provider_clarify.utils.payload import DEFAULT_REQUEST_BYTES, check_budget
from airflow_provider_clarify.utils.report_parsing import ReportParser, signal_metadata

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from airflow.sdk import Context

    from airflow_provider_clarify.utils.frames import Frame

#: Report rows parsed at a time. Smaller than the parser's default: with the other buffers of the transfer
#: (coalescing, request encoding) this keeps a worker's memory low; the cost in CPU time is small.
DEFAULT_BATCH_ROWS = 4096


class ClarityReportToClarifyOperator(BaseOperator):
    """Load every value of a finished Clarity report into Clarify, one signal per source and metric.

    The report must be ``succeeded`` (wait for it with ``ClarityReportSensor``); a ``failed`` report raises
    ``ClarityReportFailedError`` with Clarity's message. It needs canonical metric labels (the default of
    ``ClarityRequestReportOperator``); any report type, output frequency and file format works, and so do
    reports split over several files and reports without rows.

    * Input key per (source, metric[, attribute]): ``key_template`` over ``{id}`` (the row's
      ``datasourceId``, ``nodeId`` or reference-site id), ``{metric}``, ``{attribute}``, ``{source_id}``,
      ``{source_type}`` and ``{frequency}``; default ``"{id}.{metric}"``, or ``"{id}.{metric}.{attribute}"``
      when several attributes are loaded.
    * Time: ``time`` in minute reports; ``startOfPeriod`` (``timestamp="start"``) or ``endOfPeriod``
      (``timestamp="end"``) in hour and day reports.
    * Values: empty cells are missing (not zero); values whose ``<metric>.qcAssessment`` is ``invalid`` are
      dropped unless ``include_invalid`` (a report requested without ``qc_assessment`` cannot tell, which
      is logged).
    * Metadata (``save_metadata``): a readable name such as "PM2.5 mass concentration, 1-hour mean —
      DPZDB9185", the unit, labels ``org``, ``datasource``, ``source``, ``sourceType``, ``metric``,
      ``frequency`` and the sample interval; saved only when it changed.
    * Requests: values are buffered per source until they fill whole requests (see
      :mod:`~.utils.coalesce`); beyond a few MiB, buffered values wait in a temporary file, so memory stays
      bounded however many sources the report has.
    * Errors: a file that cannot be read fails the task naming the file (corrupt or truncated); a failure
      part-way says what Clarify already stored. Running the task again is safe.

    Returns (XCom) ``{"signals": n, "created": n, "points": n, "rows": n, "requests": n}``: distinct input
    keys written, of those newly created, values sent, report rows read, insert requests sent.

    :param report_id: (templated) the report id, e.g. ``request.output``; the summary dict that
        ``ClarityReportSensor`` returns is accepted too.
    :param clarity_conn_id: the ``clarity`` connection.
    :param clarify_conn_id: the ``clarify`` connection.
    :param integration_id: (templated) the Clarify integration to write to; default the connection's.
    :param metrics: (templated) canonical metric names to load; ``None`` loads every metric of the report.
    :param attributes: which attributes to load: ``value`` (calibrated), ``raw``, or both.
    :param include_invalid: keep values whose qcAssessment is ``invalid``.
    :param key_template: (templated) the input key template (see above).
    :param save_metadata: save each signal's name, unit, labels and sample interval.
    :param timestamp: ``start`` or ``end`` of the period, for hour and day reports.
    :param org: (templated) the Clarity organization; default the connection's. Also the ``org`` label.
    :param max_request_bytes: byte budget per insert request (default 4 MiB, at most 8 MiB).
    :param requests_per_second: client-side pacing of inserts (Clarify allows 1/s); None turns it off.
    :param batch_rows: report rows parsed at a time (memory grows with it).
    :param kwargs: the arguments of ``BaseOperator``.
    """

    template_fields: Sequence[str] = ("report_id", "metrics", "key_template", "integration_id", "org")
    ui_color = "#c9e4f2"

    def __init__(
        self,
        *,
        report_id: str | Mapping[str, Any],
        clarity_conn_id: str = ClarityHook.default_conn_name,
        clarify_conn_id: str = ClarifyHook.default_conn_name,
        integration_id: str | None = None,
        metrics: Sequence[str] | str | None = None,
        attributes: Sequence[str] | str = ("value",),
        include_invalid: bool = False,
        key_template: str | None = None,
        save_metadata: bool = True,
        timestamp: str = "start",
        org: str | None = None,
        max_request_bytes: int = DEFAULT_REQUEST_BYTES,
        requests_per_second: float | None = 1.0,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.report_id = report_id
        self.clarity_conn_id = clarity_conn_id
        self.clarify_conn_id = clarify_conn_id
        self.integration_id = integration_id
        self.metrics = metrics
        self.attributes = attributes
        self.include_invalid = include_invalid
        self.key_template = key_template
        self.save_metadata = save_metadata
        self.timestamp = timestamp
        self.org = org
        self.max_request_bytes = max_request_bytes
        self.requests_per_second = requests_per_second
        self.batch_rows = batch_rows

    @cached_property
    def clarity_hook(self) -> ClarityHook:
        """The Clarity hook (reads the report and streams its files)."""
        return ClarityHook(clarity_conn_id=self.clarity_conn_id)

    @cached_property
    def clarify_hook(self) -> ClarifyHook:
        """The Clarify hook (inserts and saves metadata)."""
        return ClarifyHook(
            self.clarify_conn_id,
            requests_per_second=self.requests_per_second,
            max_request_bytes=self.max_request_bytes,
        )

    def execute(self, context: Context) -> dict[str, int]:
        """Check the options, read the report, stream its files into Clarify, save the metadata.

        :param context: the task context.
        """
        report_id = self._report_id()
        self._parser(output_frequency=None)  # checks metrics, attributes, key_template, timestamp, batch_rows
        check_budget(self.max_request_bytes)
        rate = self.requests_per_second
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0):
            raise ValueError(
                f"requests_per_second must be a number >= 0, or None (None or 0: no pacing), got {rate!r}"
            )
        if self.org is not None and (not isinstance(self.org, str) or not self.org.strip()):
            raise ValueError(f"org must be a non-empty organization id or None, got {self.org!r}")
        # The Clarify connection and integration id are checked before anything is downloaded.
        self.clarify_hook._integration(self.integration_id)

        record = self.clarity_hook.get_report(report_id, self.org)
        if check_report(record, report_id) is None:
            raise AirflowException(
                f"Clarity report {report_id} is not finished (reportStatus {record.get('reportStatus')!r}); "
                "wait for it with ClarityReportSensor before transferring it"
            )
        query: Mapping[str, Any] = record["query"] if isinstance(record.get("query"), Mapping) else {}
        style = query.get("metricLabelStyle", "canonical")
        if style != "canonical":
            raise ValueError(
                f"metric_label_style: Clarity report {report_id} was requested with metric_label_style="
                f"{style!r}; only 'canonical' labels can be mapped to signals (english labels may change). "
                "Request the report again with metric_label_style='canonical'"
            )
        frequency = query.get("outputFrequency")
        known = isinstance(frequency, str) and frequency in SAMPLE_INTERVALS
        parser = self._parser(output_frequency=frequency if known else None)
        org = self.org or query.get("org") or self.clarity_hook.default_org

        frames = coalesce_frames(
            self._report_frames(report_id, parser), max_request_bytes=self.max_request_bytes
        )
        summary = self.clarify_hook.insert_frames(frames, integration_id=self.integration_id)
        stats = parser.stats
        if stats.invalid_dropped:
            self.log.info("Dropped %d value(s) whose qcAssessment is 'invalid'", stats.invalid_dropped)
        if stats.files_without_qc_assessment:
            self.log.warning(
                "%d report file(s) have no qcAssessment column for some metrics, so their invalid values "
                "could not be dropped; request the report with qc_assessment=True",
                stats.files_without_qc_assessment,
            )
        if self.save_metadata and parser.facts:
            views = signal_metadata(parser.facts, org=str(org) if org else None)
            self.clarify_hook.save_signals(views, integration_id=self.integration_id)
        result = {
            "signals": len(summary.signals),
            "created": sum(1 for entry in summary.signals.values() if entry.get("created")),
            "points": summary.points,
            "rows": stats.rows,
            "requests": summary.requests,
        }
        self.log.info("Clarity report %s loaded into Clarify: %s", report_id, result)
        return result

    def _report_id(self) -> str:
        value: Any = self.report_id
        if isinstance(value, Mapping):  # the XCom of ClarityReportSensor
            value = value.get("report_id")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"report_id must be a Clarity report id, got {self.report_id!r}")
        return value.strip()

    def _parser(self, *, output_frequency: str | None) -> ReportParser:
        return ReportParser(
            metrics=self.metrics,
            attributes=self.attributes,
            include_invalid=self.include_invalid,
            key_template=self.key_template,
            timestamp=self.timestamp,
            output_frequency=output_frequency,
            batch_rows=self.batch_rows,
        )

    def _report_frames(self, report_id: str, parser: ReportParser) -> Iterator[Frame]:
        """The frames of every file of the report, in file order, logging progress per file."""
        for report_file in self.clarity_hook.open_report_files(report_id, self.org):
            rows, points = parser.stats.rows, parser.stats.points
            size = f", {report_file.size} bytes" if report_file.size is not None else ""
            self.log.info(
                "Reading file %d of report %s: %s (%s%s)",
                report_file.index + 1,
                report_id,
                report_file.name,
                report_file.kind,
                size,
            )
            try:
                yield from parser.iter_frames(report_file.stream)
            except (ValueError, OSError) as exc:
                if isinstance(exc, requests.RequestException):  # the download, not the file's content
                    raise
                where = f"report file {report_file.name} ({report_file.kind}{size}) of report {report_id}"
                if isinstance(exc, pa.ArrowException | OSError):
                    problem = f"{type(exc).__name__}: {exc}"
                    raise AirflowException(f"{where} is corrupt or truncated: {problem}") from exc
                raise ValueError(f"{where}: {exc}") from exc
            self.log.info(
                "Read %s: %d rows, %d values",
                report_file.name,
                parser.stats.rows - rows,
                parser.stats.points - points,
            )
