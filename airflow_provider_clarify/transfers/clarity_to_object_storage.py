"""Operator that copies a finished Clarity report's files, byte for byte, to any object storage.

The destination is an Airflow :class:`~airflow.sdk.ObjectStoragePath` folder: ``file://``, ``s3://`` (with
``apache-airflow-providers-amazon[s3fs]``), or any other fsspec scheme Airflow has a filesystem for. Each
file streams from its pre-signed URL to the store in chunks; no file is ever held in memory whole.

A file only appears under its final name once it is complete:

* on a local disk it is written to a hidden sibling ``.<name>.<random>.part`` and renamed when complete;
* elsewhere it is opened with fsspec's ``autocommit=False`` and committed when complete, discarded
  otherwise (on S3: one multipart upload that is completed, or aborted).

A plain ``with path.open("wb")`` would not do: fsspec closes -- and so commits -- the object on error too.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import secrets
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO

from airflow.providers.common.compat.sdk import (
    AirflowException,
    Asset,
    AssetAlias,
    BaseOperator,
    ObjectStoragePath,
    get_hook_lineage_collector,
)
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_clarify.hooks.clarity import ClarityHook, ReportFile, report_file_name
from airflow_provider_clarify.sensors.clarity import check_report
from airflow_provider_clarify.utils.urls import split_conn_id

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from airflow.sdk import Context

#: Bytes read from the download and written to the store at a time.
CHUNK_SIZE = 1024 * 1024


def output_name(name: str, *, decompress: bool) -> str:
    """The name a report file gets in the destination: its own, without ``.gz`` when decompressed.

    :param name: the report file's name (e.g. ``JB12345678.csv.gz``).
    :param decompress: whether gzip files are written decompressed.
    """
    if decompress and name.lower().endswith(".gz") and len(name) > 3:
        return name[:-3]
    return name


def target_names(names: Sequence[str], *, decompress: bool) -> list[str]:
    """The destination names of a report's files, in order.

    A repeated name gets its index as prefix. The names come from
    :func:`~airflow_provider_clarify.hooks.clarity.report_file_name`, which never lets a name leave the
    destination folder.

    :param names: the report files' names, in ``urls`` order.
    :param decompress: whether gzip files are written decompressed.
    """
    chosen: list[str] = []
    for index, name in enumerate(names):
        out = output_name(name, decompress=decompress)
        chosen.append(f"{index}-{out}" if out in chosen else out)
    return chosen


@contextlib.contextmanager
def open_for_atomic_write(target: ObjectStoragePath) -> Iterator[BinaryIO]:
    """Open ``target`` for writing so that it appears under its name only when the block succeeds.

    Local disks: a hidden ``.<name>.<random>.part`` sibling renamed onto ``target`` at the end. Other
    filesystems: fsspec's ``autocommit=False``, committed at the end and discarded on error (on S3 the
    multipart upload is completed or aborted). On error nothing is left under ``target``, and an object
    that was there before is left as it was.

    :param target: the file to write.
    """
    fs = target.fs
    if isinstance(fs, LocalFileSystem):
        folder, _, name = target.path.rpartition("/")
        part = f"{folder}/.{name}.{secrets.token_hex(4)}.part"
        try:
            with fs.open(part, "wb") as out:
                yield out
            fs.mv(part, target.path)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.rm_file(part)
            raise
        return
    out = fs.open(target.path, "wb", autocommit=False)
    try:
        yield out
        out.close()
        out.commit()
    except BaseException:
        # close() first: discard() leaves the file unusable, and a close() after it could start a new upload.
        with contextlib.suppress(Exception):
            out.close()
        with contextlib.suppress(Exception):
            out.discard()
        raise


class ClarityReportToObjectStorageOperator(BaseOperator):
    """Copy the files of a succeeded Clarity report to object storage; return the URIs written (XCom).

    Each file keeps the report's file name and is written byte for byte as the store holds it: a
    ``.csv.gz`` stays gzip even when it is served with ``Content-Encoding: gzip``. With
    ``decompress=True`` gzip files are written decompressed without the ``.gz`` suffix (``.csv``); Parquet
    is never touched. Files stream in 1 MiB chunks. Missing folders are created on local disks (object
    stores have none to create; buckets are never created).

    Before anything is downloaded, the report must be ``succeeded`` (``failed`` raises
    :class:`~airflow_provider_clarify.exceptions.ClarityReportFailedError`), and with ``overwrite=False``
    none of the targets may exist: a refusal names every existing object and writes nothing.

    A file appears under its name only once complete (see :func:`open_for_atomic_write`). The hook renews
    expired pre-signed URLs and resumes a download that breaks off part-way. If the transfer fails anyway
    and ``overwrite=False``, the files this try already wrote are removed again, so a retry of the task
    starts clean.

    Returned URIs are ``str(ObjectStoragePath)``: they carry the connection id as user info when one was
    given (``s3://aws_conn@bucket/key``), so ``ObjectStoragePath(uri)`` reads them back with the same
    connection; a connection id is a name, never a credential.

    Asset events: declare an :class:`~airflow.sdk.AssetAlias` in ``outlets`` (for example
    ``outlets=[AssetAlias("clarity-reports")]``) and every written file is added to it as an asset event
    with the plain URI (``s3://bucket/key``, no connection id) and extra ``{"report_id", "bytes"}``.
    Assets declared in ``outlets`` get their event from Airflow as for any task. Each written file is also
    reported to Airflow's hook-level lineage (OpenLineage picks it up when installed).

    :param report_id: (templated) the report to copy, e.g. ``ClarityRequestReportOperator(...).output``.
    :param destination: (templated) the folder: a URI such as ``s3://bucket/clarity/{{ ds }}/`` or
        ``file:///data/clarity/``, an absolute local path, or an :class:`ObjectStoragePath`. A connection id
        in the URI (``s3://conn@bucket/...``) is used unless ``dest_conn_id`` is set.
    :param dest_conn_id: (templated) the destination's connection; ``None``: the one in ``destination``,
        else the scheme's default (for example ``aws_default``).
    :param clarity_conn_id: the Clarity connection.
    :param org: (templated) the Clarity organization of the report; default the connection's.
    :param overwrite: replace existing objects; when False an existing target fails the task.
    :param decompress: write gzip files decompressed (``.csv`` instead of ``.csv.gz``).
    :param kwargs: the arguments of ``BaseOperator``.
    """

    template_fields: Sequence[str] = ("report_id", "destination", "dest_conn_id", "org")
    ui_color = "#c9e4f2"

    def __init__(
        self,
        *,
        report_id: str,
        destination: str | os.PathLike[str] | ObjectStoragePath,
        dest_conn_id: str | None = None,
        clarity_conn_id: str = ClarityHook.default_conn_name,
        org: str | None = None,
        overwrite: bool = False,
        decompress: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.report_id = report_id
        self.destination = destination
        self.dest_conn_id = dest_conn_id
        self.clarity_conn_id = clarity_conn_id
        self.org = org
        self.overwrite = overwrite
        self.decompress = decompress

    @cached_property
    def hook(self) -> ClarityHook:
        """The Clarity hook."""
        return ClarityHook(clarity_conn_id=self.clarity_conn_id)

    def folder(self) -> ObjectStoragePath:
        """The destination folder, its filesystem resolved (no request to the store).

        :raises ValueError: when ``destination`` is empty, relative or of the wrong type.
        """
        destination = self.destination
        if isinstance(destination, ObjectStoragePath):
            if destination.protocol and not self.dest_conn_id:
                destination.fs  # noqa: B018 - resolve the filesystem before any request
                return destination
            text = str(destination)  # a scheme-less local path, or a connection to replace
        elif isinstance(destination, str | os.PathLike):
            text = os.fspath(destination).strip()
        else:
            raise ValueError(
                "destination: expected a folder URI, path or ObjectStoragePath, "
                f"got {type(destination).__name__}"
            )
        if not text:
            raise ValueError("destination: the folder URI is empty")
        if "://" not in text:
            if not text.startswith("/"):
                raise ValueError(
                    f"destination: {text!r} is a relative path; use an absolute path or a URI such as "
                    "file:///data/clarity/"
                )
            text = "file://" + text
        # Airflow 3.1 and 3.3 disagree on whether conn_id= or the URI's user info wins: pass one, explicitly.
        uri, embedded = split_conn_id(text)
        conn_id = self.dest_conn_id or embedded
        path = ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)
        path.fs  # noqa: B018 - resolve the filesystem now: an unknown scheme fails before any request
        return path

    def execute(self, context: Context) -> list[str]:
        """Copy the report's files and return the URIs written.

        :param context: the task context.
        """
        if not isinstance(self.report_id, str) or not self.report_id.strip():
            raise ValueError(f"report_id: expected a non-empty report id, got {self.report_id!r}")
        report_id = self.report_id.strip()
        folder = self.folder()
        record = self.hook.get_report(report_id, self.org)
        if check_report(record, report_id) is None:
            raise AirflowException(
                f"Clarity report {report_id} is not finished (status {record.get('reportStatus')!r}); "
                "wait for it with ClarityReportSensor or wait_for_completion=True"
            )
        urls = record["urls"]
        names = target_names(
            [report_file_name(url, i) for i, url in enumerate(urls)], decompress=self.decompress
        )
        targets = [folder / name for name in names]
        self._prepare(folder, targets)
        sizes = self._copy_all(report_id, targets)
        uris = [str(target) for target in targets]
        self._add_asset_events(context, report_id, uris, sizes)
        return uris

    def _prepare(self, folder: ObjectStoragePath, targets: list[ObjectStoragePath]) -> None:
        if folder.is_file():
            raise ValueError(f"destination: {folder} is an existing file, not a folder")
        if not self.overwrite:
            existing = [str(target) for target in targets if target.exists()]
            if existing:
                raise FileExistsError(
                    f"{len(existing)} of the {len(targets)} target(s) already exist and overwrite=False; "
                    f"nothing was written: {', '.join(existing)}"
                )
        if isinstance(folder.fs, LocalFileSystem):
            folder.fs.makedirs(folder.path, exist_ok=True)

    def _copy_all(self, report_id: str, targets: list[ObjectStoragePath]) -> list[int]:
        """Stream every file to its target and return the bytes written per file."""
        sizes: list[int] = []
        try:
            with contextlib.closing(self.hook.open_report_files(report_id, self.org)) as files:
                for report_file in files:
                    sizes.append(self._copy(report_file, targets[report_file.index]))
            if len(sizes) != len(targets):
                raise AirflowException(
                    f"Clarity report {report_id} yielded {len(sizes)} of its {len(targets)} file(s)"
                )
        except BaseException:
            if not self.overwrite:
                self._remove(targets[: len(sizes)])
            raise
        return sizes

    def _copy(self, report_file: ReportFile, target: ObjectStoragePath) -> int:
        gunzip = self.decompress and report_file.kind == "gzip"
        reader: Any = gzip.GzipFile(fileobj=report_file.stream, mode="rb") if gunzip else report_file.stream
        written = 0
        with open_for_atomic_write(target) as out:
            while block := reader.read(CHUNK_SIZE):
                out.write(block)
                written += len(block)
        get_hook_lineage_collector().add_output_asset(context=target, uri=split_conn_id(str(target))[0])
        self.log.info(
            "Wrote %s (%d bytes%s) from report file %s",
            target,
            written,
            ", decompressed" if gunzip else "",
            report_file.name,
        )
        return written

    def _remove(self, written: list[ObjectStoragePath]) -> None:
        for target in written:
            try:
                target.fs.rm_file(target.path)
                self.log.info("Removed %s again: the transfer failed and overwrite=False", target)
            except OSError as exc:
                self.log.warning("Could not remove %s after the failed transfer: %s", target, exc)

    def _add_asset_events(self, context: Context, report_id: str, uris: list[str], sizes: list[int]) -> None:
        aliases = [outlet for outlet in self.outlets if isinstance(outlet, AssetAlias)]
        if not aliases:
            return
        events = context["outlet_events"]
        for alias in aliases:
            for uri, size in zip(uris, sizes, strict=True):
                events[alias].add(
                    Asset(uri=split_conn_id(uri)[0]), extra={"report_id": report_id, "bytes": size}
                )
