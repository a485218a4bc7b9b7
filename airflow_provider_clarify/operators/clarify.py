"""Operator that inserts data (in memory, or a CSV/Parquet file) into Clarify signals."""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from airflow.providers.common.compat.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_clarify.hooks.clarify import ClarifyHook, InsertSummary
from airflow_provider_clarify.utils.frames import TIME_COLUMN, to_frame, validate_key
from airflow_provider_clarify.utils.payload import DEFAULT_REQUEST_BYTES, check_budget, merge_signals_by_input
from airflow_provider_clarify.utils.signals import save_view
from airflow_provider_clarify.utils.urls import split_conn_id

if TYPE_CHECKING:
    from airflow.sdk import Context

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_COLUMN = re.compile(r"CSV column #(\d+)")


class ClarifyInsertOperator(BaseOperator):
    """Insert time series into Clarify, and optionally save the signals' metadata.

    ``data`` is validated completely before anything is sent (bad input fails the task with a
    :class:`ValueError` that names the key and position). A file is read twice in batches -- once to
    validate, once to send -- so memory stays bounded by ``batch_rows`` whatever the file size.

    Metadata in ``signals`` is saved after the insert, and only for signals whose metadata changed since
    this process last saved it or that the insert just created (see :meth:`ClarifyHook.save_signals`).

    Returns (XCom) ``{"signals": {key: signal id}, "created": [keys], "points": n, "requests": n}``:
    ``points`` are the values sent and ``requests`` the insert requests sent.

    :param data: (templated) a pandas DataFrame (``DatetimeIndex`` or ``time`` column), a pyarrow Table
        (``time`` column), a Clarify data frame dict ``{"times": [...], "series": {key: [...]}}``, or the
        path, URI or :class:`ObjectStoragePath` of a ``.csv``, ``.csv.gz`` or ``.parquet`` file with a
        ``time`` column and one column per input key.
    :param clarify_conn_id: the Clarify connection.
    :param integration_id: (templated) the integration to write to; default the connection's.
    :param signals: (templated) metadata per input key: ``name``, ``description``, ``labels``, ``engUnit``,
        ``sourceType``, ``valueType``, ``enumValues``, ``sampleInterval``, ``gapDetection``, ``annotations``.
    :param requests_per_second: client-side pacing per method (Clarify allows 1/s); None turns it off.
    :param max_request_bytes: byte budget per request (default 4 MiB, at most 8 MiB).
    :param batch_rows: rows per batch when reading a file.
    :param file_conn_id: connection for the file's object store (None: the scheme's default).
    """

    template_fields: Sequence[str] = ("data", "integration_id", "signals")

    def __init__(
        self,
        *,
        data: Any,
        clarify_conn_id: str = ClarifyHook.default_conn_name,
        integration_id: str | None = None,
        signals: Mapping[str, Mapping[str, Any]] | None = None,
        requests_per_second: float | None = 1.0,
        max_request_bytes: int = DEFAULT_REQUEST_BYTES,
        batch_rows: int = 100_000,
        file_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data = data
        self.clarify_conn_id = clarify_conn_id
        self.integration_id = integration_id
        self.signals = signals
        self.requests_per_second = requests_per_second
        self.max_request_bytes = max_request_bytes
        self.batch_rows = batch_rows
        self.file_conn_id = file_conn_id

    @cached_property
    def hook(self) -> ClarifyHook:
        """The Clarify hook."""
        return ClarifyHook(
            self.clarify_conn_id,
            requests_per_second=self.requests_per_second,
            max_request_bytes=self.max_request_bytes,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        """Validate, insert, save changed metadata; return the small summary dict.

        :param context: the task context.
        """
        check_budget(self.max_request_bytes)
        self._check_signals()
        if isinstance(self.data, str | os.PathLike | ObjectStoragePath):
            path = self._path(self.data)
            for start, table in self._file_tables(path):  # first pass: validation only, nothing is sent
                to_frame(table, param=f"data ({path.name}, rows from {start})")
            summary = self._merge(
                self.hook.insert_frame(to_frame(table), integration_id=self.integration_id)
                for _, table in self._file_tables(path)
            )
        else:
            frame = to_frame(self.data)
            summary = self.hook.insert_frame(frame, integration_id=self.integration_id)
        created = {k for k, v in summary.signals.items() if v.get("created")}
        ids = {k: str(v["id"]) for k, v in summary.signals.items()}
        if self.signals:
            saved = self.hook.save_signals(self.signals, integration_id=self.integration_id)
            created.update(k for k, v in saved.items() if v.get("created"))
            ids.update({k: str(v["id"]) for k, v in saved.items() if "id" in v and k not in ids})
        return {
            "signals": ids,
            "created": sorted(created),
            "points": summary.points,
            "requests": summary.requests,
        }

    def _check_signals(self) -> None:
        if self.signals is None:
            return
        if not isinstance(self.signals, Mapping):
            raise ValueError(
                f"signals must be a dict of input key -> metadata, not {type(self.signals).__name__}"
            )
        for key, metadata in self.signals.items():
            save_view(validate_key(key, param="signals"), metadata)

    def _path(self, data: str | os.PathLike[str] | ObjectStoragePath) -> ObjectStoragePath:
        if isinstance(data, ObjectStoragePath):
            return data
        text = os.fspath(data).strip()
        if not text:
            raise ValueError("data: the file path is empty")
        # Pass exactly one connection id: Airflow 3.1 drops a URI's own one when conn_id=None is given.
        uri, embedded = split_conn_id(text)
        conn_id = self.file_conn_id or embedded
        return ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)

    def _file_tables(self, path: ObjectStoragePath) -> Iterator[tuple[int, pa.Table]]:
        """The file's rows in batches as ``(index of the first row, pyarrow Table)`` (validated later)."""
        name = path.name.lower()
        if name.endswith(_PARQUET_SUFFIXES):
            batches: Iterator[pa.Table] = self._parquet_tables(path)
        elif name.endswith(_CSV_SUFFIXES):
            batches = self._csv_tables(path, gzipped=name.endswith(".gz"))
        else:
            raise ValueError(
                f"data: {path.name!r} is not a .csv, .csv.gz or .parquet file (the suffix decides the format)"
            )
        start = 0
        for table in batches:
            yield start, table
            start += table.num_rows

    def _parquet_tables(self, path: ObjectStoragePath) -> Iterator[pa.Table]:
        with path.open("rb") as stream:
            for batch in pq.ParquetFile(stream).iter_batches(batch_size=self.batch_rows):
                yield pa.Table.from_batches([batch])

    def _csv_tables(self, path: ObjectStoragePath, *, gzipped: bool) -> Iterator[pa.Table]:
        with path.open("rb") as raw:
            names = _csv_header(_decompressed(raw, gzipped))
        if TIME_COLUMN not in names:
            raise ValueError(f"data: {path.name!r} has no {TIME_COLUMN!r} column (columns: {names[:10]})")
        # Times as text (parsed like every other input: naive = UTC); values as float64 in every block.
        types = {n: (pa.string() if n == TIME_COLUMN else pa.float64()) for n in names}
        with path.open("rb") as raw:
            try:
                reader = pa_csv.open_csv(
                    _decompressed(raw, gzipped),
                    read_options=pa_csv.ReadOptions(block_size=1 << 22),
                    convert_options=pa_csv.ConvertOptions(column_types=types),
                )
                rows: list[pa.RecordBatch] = []
                count = 0
                for batch in reader:
                    rows.append(batch)
                    count += batch.num_rows
                    if count >= self.batch_rows:
                        yield pa.Table.from_batches(rows)
                        rows, count = [], 0
                if rows:
                    yield pa.Table.from_batches(rows)
            except pa.ArrowInvalid as exc:
                column = _CSV_COLUMN.search(str(exc))
                key = names[int(column.group(1))] if column else None
                text = _CSV_COLUMN.sub(lambda m: f"CSV column {names[int(m.group(1))]!r}", str(exc))
                found = self._first_non_number(path, gzipped=gzipped, key=key) if key else None
                if found is None:
                    raise ValueError(f"data: {path.name!r}: {text}") from None
                position, time, value = found
                raise ValueError(
                    f"data ({path.name!r}): series {key!r} position {position} (time {time}): "
                    f"value {value!r} is not a number"
                ) from None

    @staticmethod
    def _first_non_number(path: ObjectStoragePath, *, gzipped: bool, key: str) -> tuple[int, str, str] | None:
        """Where the CSV column ``key`` first holds text that is not a number: ``(row position counted from
        the first data row, its time, the text)``; ``None`` if every cell converts. Only used to explain an
        error, so the file is read once more, as text, with the same null markers as the float reading."""
        options = pa_csv.ConvertOptions(
            include_columns=[TIME_COLUMN, key],
            column_types={TIME_COLUMN: pa.string(), key: pa.string()},
            strings_can_be_null=True,
        )
        start = 0
        with path.open("rb") as raw:
            for batch in pa_csv.open_csv(_decompressed(raw, gzipped), convert_options=options):
                cells = batch.column(1)
                try:
                    cells.cast(pa.float64())
                except pa.ArrowInvalid:
                    for index, cell in enumerate(cells.to_pylist()):
                        try:
                            pa.array([cell], pa.string()).cast(pa.float64())
                        except pa.ArrowInvalid:
                            return start + index, str(batch.column(0)[index]), str(cell)
                start += batch.num_rows
        return None

    @staticmethod
    def _merge(summaries: Iterator[InsertSummary]) -> InsertSummary:
        signals: dict[str, dict[str, Any]] = {}
        requests = points = duplicates = 0
        for summary in summaries:
            merge_signals_by_input(signals, {"signalsByInput": summary.signals}, list(summary.signals))
            requests += summary.requests
            points += summary.points
            duplicates += summary.duplicates
        return InsertSummary(signals=signals, requests=requests, points=points, duplicates=duplicates)


def _decompressed(raw: IO[bytes], gzipped: bool) -> IO[bytes]:
    if not gzipped:
        return raw
    return cast("IO[bytes]", gzip.GzipFile(fileobj=raw, mode="rb"))


def _csv_header(stream: IO[bytes]) -> list[str]:
    """The column names of a CSV stream (its first line)."""
    line = stream.readline().decode("utf-8-sig")
    return next(csv.reader(io.StringIO(line)), [])
